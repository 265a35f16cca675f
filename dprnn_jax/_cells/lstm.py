"""The LSTM layer, in PyTorch's layout, gate order (i, f, g, o) and equations.

    i_t = σ(W_i x_t + b_ii + S_i h_{t−1} + b_hi)      f_t = σ(W_f x_t + … )
    g_t = tanh(W_g x_t + b_ig + S_g h_{t−1} + b_hg)    o_t = σ(W_o x_t + … )
    c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t                    h_t = o_t ⊙ tanh(c_t)

`W` (4d, n), `S` (4d, d), `b_ih`, `b_hh` (4d,) are `torch.nn.LSTM`'s `weight_ih_l0`,
`weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`. The carry is the pair `(h, c)`; the input
projections of all steps are one product, outside the loop (`projection.py`), and
the recurrent step adds the biases.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._core import precision
from .._core.linear_terms import linear_terms
from .._core.params import LSTMParams as LSTMParams
from .._core.params import init_lstm_layer as init_lstm_layer
from .base import CellScan, LayerKind
from .generic import StepCell
from .projection import project_inputs


class LSTMRecurrence(NamedTuple):
    """What the recurrent step reads: Sᵀ (d, 4d) and the summed bias b_ih + b_hh (4d,)."""

    S_T: jax.Array
    b: jax.Array


def lstm_recurrence(params: LSTMParams) -> LSTMRecurrence:
    """What `lstm_step` reads of a layer's parameters (the input weights W are applied
    outside the loop)."""
    return LSTMRecurrence(params.S.T, params.b_ih + params.b_hh)


def _lstm_forward(params: LSTMRecurrence, carry, projected: jax.Array):
    """The step's new carry and the values its derivative reads."""
    h, c = carry
    d = h.shape[-1]
    gates = projected + precision.matmul(h, params.S_T) + params.b
    i = jax.nn.sigmoid(gates[..., :d])
    f = jax.nn.sigmoid(gates[..., d : 2 * d])
    g = jnp.tanh(gates[..., 2 * d : 3 * d])
    o = jax.nn.sigmoid(gates[..., 3 * d :])
    c = f * c + i * g
    tanh_c = jnp.tanh(c)
    return (o * tanh_c, c), (i, f, g, o, tanh_c)


@jax.custom_jvp
def lstm_step(params: LSTMRecurrence, carry, projected: jax.Array):
    """One LSTM step from the projected input `W x_t` (m, 4d): `(h, c) -> (h, c)`.

    Differentiable in every argument, forward and reverse; its derivative is written
    out (`_lstm_step_jvp`) so that a linearisation keeps few arrays per step.
    """
    return _lstm_forward(params, carry, projected)[0]


def _lstm_step_jvp(primals, tangents):
    # Through the gate pre-activations a = p + h Sᵀ + b (p = W x), with c' = f c + i g
    # and h' = o tanh(c'):
    #     ċ' = f ⊙ ċ + k_i ⊙ ȧ_i + k_f ⊙ ȧ_f + k_g ⊙ ȧ_g,
    #     ḣ' = k_o ⊙ ȧ_o + o (1 − tanh² c') ⊙ ċ',
    #     k_i = g i (1 − i),  k_f = c f (1 − f),  k_g = i (1 − g²),  k_o = tanh(c') o (1 − o).
    # A linearisation keeps f, o (1 − tanh² c') and one (m, 4d) array of the k per step,
    # and h besides for the weights: seven (m, d) arrays (JAX's own derivative of the
    # step keeps eleven for the state alone). Tangents that are symbolically zero are
    # skipped. The state's term is written with S itself, so that its transpose is
    # `ā S`, not a product with a transposed operand.
    params, (h, c), projected = primals
    params_dot, (h_dot, c_dot), projected_dot = tangents
    (h_new, c_new), (i, f, g, o, tanh_c) = _lstm_forward(params, (h, c), projected)
    d = h.shape[-1]
    k = jnp.concatenate(
        [g * (i * (1 - i)), c * (f * (1 - f)), i * (1 - g * g), tanh_c * (o * (1 - o))],
        axis=-1,
    )
    through_c = o * (1 - tanh_c * tanh_c)
    S = params.S_T.T
    gates_dot = linear_terms(
        (projected_dot, lambda t: t),
        (h_dot, lambda t: precision.dot_general(t, S, (((1,), (1,)), ((), ())))),
        (params_dot.S_T, lambda t: precision.matmul(h, t)),
        (params_dot.b, lambda t: jnp.broadcast_to(t, projected.shape)),
    )
    # Split (not sliced) so that the transpose joins the gates' cotangents with one
    # concatenation; the i, f, g blocks are summed as one (m, 3, d) array.
    scaled = None if gates_dot is None else jnp.split(k * gates_dot, [3 * d], axis=-1)
    c_new_dot = linear_terms(
        (scaled, lambda t: t[0].reshape(*t[0].shape[:-1], 3, d).sum(-2)),
        (c_dot, lambda t: f * t),
    )
    h_new_dot = linear_terms(
        (scaled, lambda t: t[1]),
        (c_new_dot, lambda t: through_c * t),
    )
    zero = jnp.zeros_like(h_new)
    return (h_new, c_new), (
        zero if h_new_dot is None else h_new_dot,
        zero if c_new_dot is None else c_new_dot,
    )


lstm_step.defjvp(_lstm_step_jvp, symbolic_zeros=True)


def lstm_layer_step(layer: LSTMParams, carry, x):
    """One step of the whole layer from its own parameters and the raw input row (the
    projection inside the step): the cell that forward-mode approximations see."""
    projected = project_inputs(layer.W, x[None], own_backward=False)[0]
    return lstm_step(lstm_recurrence(layer), carry, projected)


def _prepare(
    layer: LSTMParams, xs, carry0, *, activation: str, own_backward: bool, whole_step: bool = False
) -> CellScan:
    del activation  # the gates fix their own
    if whole_step:
        return CellScan(StepCell(lstm_layer_step), layer, xs, carry0)
    projected = project_inputs(layer.W, xs, own_backward=own_backward)
    return CellScan(StepCell(lstm_step), lstm_recurrence(layer), projected, carry0)


KIND = LayerKind(
    name="lstm",
    params_type=LSTMParams,
    gates=4,
    biases=("b_ih", "b_hh"),
    paired_state=True,
    recurrent_weights=True,
    init=init_lstm_layer,
    prepare=_prepare,
)
