"""The GRU layer, in PyTorch's layout, gate order and equations.

    r_t = σ(W_r x_t + b_ir + S_r h_{t−1} + b_hr)
    z_t = σ(W_z x_t + b_iz + S_z h_{t−1} + b_hz)
    n_t = tanh(W_n x_t + b_in + r_t ⊙ (S_n h_{t−1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1}

`W = [W_r; W_z; W_n]` (3d, n), `S = [S_r; S_z; S_n]` (3d, d), `b_ih`, `b_hh` (3d,): the
`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0` of `torch.nn.GRU`, which load
unchanged. The input projections of all steps are one product, outside the loop
(`projection.py`); the recurrent step, which adds the biases, is a cell for
`scan_cell`, so every algorithm differentiates it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.linear_terms import linear_terms
from .._core.params import GRUParams as GRUParams
from .._core.params import init_gru_layer as init_gru_layer
from .base import CellScan, LayerKind
from .generic import StepCell
from .projection import project_inputs


class GRURecurrence(NamedTuple):
    """What the recurrent step reads: Sᵀ (d, 3d), b_ih and b_hh (3d,)."""

    S_T: jax.Array
    b_ih: jax.Array
    b_hh: jax.Array


def gru_recurrence(params: GRUParams) -> GRURecurrence:
    """What `gru_step` reads of a layer's parameters (the input weights W are applied
    outside the loop)."""
    return GRURecurrence(params.S.T, params.b_ih, params.b_hh)


def _gru_forward(params: GRURecurrence, h: jax.Array, projected: jax.Array):
    """The step's new state and the gate values its derivative reads."""
    d = h.shape[-1]
    recurrent = precision.matmul(h, params.S_T) + params.b_hh
    inputs = projected + params.b_ih
    r = jax.nn.sigmoid(inputs[..., :d] + recurrent[..., :d])
    z = jax.nn.sigmoid(inputs[..., d : 2 * d] + recurrent[..., d : 2 * d])
    n = jnp.tanh(inputs[..., 2 * d :] + r * recurrent[..., 2 * d :])
    return (1 - z) * n + z * h, (r, z, n, recurrent[..., 2 * d :])


@jax.custom_jvp
def gru_step(params: GRURecurrence, h: jax.Array, projected: jax.Array) -> jax.Array:
    """One GRU step from the projected input `W x_t` (m, 3d): (m, d) -> (m, d).

    Differentiable in every argument, forward and reverse; its derivative is written
    out (`_gru_step_jvp`) so that a linearisation keeps few arrays per step.
    """
    return _gru_forward(params, h, projected)[0]


def _gru_step_jvp(primals, tangents):
    # The derivative of h' = (1 − z) n + z h through the gate pre-activations
    # a = (a_r, a_z, a_n), a_r = p_r + u_r, a_z = p_z + u_z, a_n = p_n + r ⊙ u_n with
    # p = W x + b_ih and u = h Sᵀ + b_hh:
    #     ḣ' = z ⊙ ḣ + c_r ⊙ ȧ_r + c_z ⊙ ȧ_z + c_n ⊙ ȧ_n,
    #     c_n = (1 − z)(1 − n²),  c_z = (h − n) z (1 − z),  c_r = c_n u_n r (1 − r),
    #     ȧ_r = ṗ_r + u̇_r,  ȧ_z = ṗ_z + u̇_z,  ȧ_n = ṗ_n + r ⊙ u̇_n.
    # Written with the coefficients of u̇, (c_r, c_z, c_n r), as one (m, 3d) array that
    # the r and z blocks of ṗ share, a linearisation keeps z and that array per step for
    # the state, and c_n and h besides for the inputs and weights: six (m, d) arrays
    # (JAX's own derivative of the step keeps nine for the state alone: σ and 1 − σ,
    # tanh and 1 − tanh, …). Tangents that are symbolically zero are skipped, so nothing
    # is kept for them. The state's term is written with S itself, so that its
    # transpose (the backward's one product per step) is `ū S`, not a product with a
    # transposed operand.
    params, h, projected = primals
    params_dot, h_dot, projected_dot = tangents
    h_new, (r, z, n, recurrent_n) = _gru_forward(params, h, projected)
    d = h.shape[-1]
    c_n = (1 - z) * (1 - n * n)
    c_z = (h - n) * (z * (1 - z))
    c_r = c_n * recurrent_n * (r * (1 - r))
    S = params.S_T.T
    recurrent_dot = linear_terms(
        (h_dot, lambda t: precision.dot_general(t, S, (((1,), (1,)), ((), ())))),
        (params_dot.S_T, lambda t: precision.matmul(h, t)),
        (params_dot.b_hh, lambda t: jnp.broadcast_to(t, projected.shape)),
    )
    inputs_dot = linear_terms(
        (projected_dot, lambda t: t),
        (params_dot.b_ih, lambda t: jnp.broadcast_to(t, projected.shape)),
    )
    # u̇ and the r, z blocks of ṗ share the coefficients c_r, c_z: one (m, 3d) product.
    shared_dot = linear_terms(
        (recurrent_dot, lambda t: t),
        (inputs_dot, lambda t: _only_update_and_reset(t)),
    )
    h_new_dot = linear_terms(
        (shared_dot, lambda t: _sum_gates(jnp.concatenate([c_r, c_z, c_n * r], -1) * t)),
        (inputs_dot, lambda t: c_n * t[..., 2 * d :]),
        (h_dot, lambda t: z * t),
    )
    return h_new, jnp.zeros_like(h_new) if h_new_dot is None else h_new_dot


gru_step.defjvp(_gru_step_jvp, symbolic_zeros=True)


def _only_update_and_reset(x: jax.Array) -> jax.Array:
    """(…, 3d) -> (…, 3d): the r and z blocks kept, the n block zero."""
    d = x.shape[-1] // 3
    padding = [(0, 0, 0)] * (x.ndim - 1) + [(0, d, 0)]
    return lax.pad(x[..., : 2 * d], jnp.zeros((), x.dtype), padding)


def _sum_gates(x: jax.Array) -> jax.Array:
    """(…, 3d) -> (…, d): the sum of the three gate blocks."""
    return x.reshape(*x.shape[:-1], 3, -1).sum(-2)


def gru_layer_step(layer: GRUParams, carry, x):
    """One step of the whole layer from its own parameters and the raw input row (the
    projection inside the step): the cell that forward-mode approximations see."""
    projected = project_inputs(layer.W, x[None], own_backward=False)[0]
    return gru_step(gru_recurrence(layer), carry, projected)


def _prepare(
    layer: GRUParams, xs, carry0, *, activation: str, own_backward: bool, whole_step: bool = False
) -> CellScan:
    del activation  # the gates fix their own
    if whole_step:
        return CellScan(StepCell(gru_layer_step), layer, xs, carry0)
    projected = project_inputs(layer.W, xs, own_backward=own_backward)
    return CellScan(StepCell(gru_step), gru_recurrence(layer), projected, carry0)


KIND = LayerKind(
    name="gru",
    params_type=GRUParams,
    gates=3,
    biases=("b_ih", "b_hh"),
    paired_state=False,
    recurrent_weights=True,
    init=init_gru_layer,
    prepare=_prepare,
)
