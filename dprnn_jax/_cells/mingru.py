"""The minimal GRU (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs All We
Needed?", 2024), in its sequential form:

    z_t = σ(W_z x_t + b_z),   h̃_t = W_h x_t + b_h,   h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

`W` (2d, n) = rows `[W_z; W_h]`, `b` (2d,) = `[b_z; b_h]`. The gates read the input only,
so the recurrence is `h_t = a_t ⊙ h_{t−1} + u_t` with `a_t = 1 − z_t`, `u_t = z_t ⊙ h̃_t`
computed for all steps at once, and its one-step Jacobian `∂h_{t+1}/∂h_t = diag(a_{t+1})`
is diagonal (`DiagonalJacobian`): the Ω fill is elementwise, O(T²·m·d) instead of
O(T²·m·d²), and the parallel scan composes vectors, O(T·m·d) per level.

The whole cell is this module: parameters, initialiser, forward, linearisation and its
registration (`KIND`, listed in `_cells/kinds.py`). Integer token inputs (T, m) are a
lookup of W's columns, as for the other kinds.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.jacobian import DiagonalJacobian
from .base import Cell, CellScan, LayerKind, Linearisation, StepProblem
from .projection import project_inputs


class MinGRUParams(NamedTuple):
    """One minGRU layer: W (2d, n) = `[W_z; W_h]`, b (2d,) = `[b_z; b_h]`.

    Example:
        >>> layer = init_mingru_layer(jax.random.key(0), 3, 8)
        >>> layer.W.shape, layer.b.shape
        ((16, 3), (16,))
    """

    W: jax.Array
    b: jax.Array


def init_mingru_layer(
    key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32
) -> MinGRUParams:
    """`torch.nn.Linear`'s initialisation, as the paper's reference code uses: every entry
    uniform in [−1/√n, 1/√n], n the input size.

    Example:
        >>> init_mingru_layer(jax.random.key(0), 3, 8).b.shape
        (16,)
    """
    bound = 1.0 / jnp.sqrt(input_size)
    w_key, b_key = jax.random.split(key)
    rows = 2 * hidden_size
    return MinGRUParams(
        jax.random.uniform(w_key, (rows, input_size), dtype, -bound, bound),
        jax.random.uniform(b_key, (rows,), dtype, -bound, bound),
    )


def coefficients(params: MinGRUParams, xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(a, u)` of every step, (T, m, d) each: `h_t = a_t ⊙ h_{t−1} + u_t`."""
    gates = project_inputs(params.W, xs, own_backward=False) + params.b
    d = gates.shape[-1] // 2
    z = jax.nn.sigmoid(gates[..., :d])
    return 1 - z, z * gates[..., d:]


def recurrence(a: jax.Array, u: jax.Array, h0: jax.Array) -> jax.Array:
    """loop :: h0 (m, d) -> hs (T, m, d), `h_t = a_t ⊙ h_{t−1} + u_t`."""

    def step(h, coefficients):
        a_t, u_t = coefficients
        h = a_t * h + u_t
        # bfloat16 states are stacked in float32 (`precision.stored`): in place on a CPU.
        return h, precision.stored(h)

    return precision.loaded(lax.scan(step, h0, (a, u))[1], h0.dtype)


def mingru_step(params: MinGRUParams, h: jax.Array, x: jax.Array) -> jax.Array:
    """One step `h_{t−1} (m, d) -> h_t` from the input row x_t (m, n) (or tokens (m,))."""
    a, u = coefficients(params, x[None])
    return a[0] * h + u[0]


@dataclasses.dataclass(frozen=True)
class MinGRUCell(Cell):
    """The minGRU cell (no options)."""

    def forward(self, params, xs, h0):
        return recurrence(*coefficients(params, xs), h0)

    def linearise(self, params, xs, h0):
        hs = self.forward(params, xs, h0)
        return hs, MinGRULinearisation(params, xs, h0, hs)


@dataclasses.dataclass
class MinGRULinearisation(Linearisation):
    """The inputs and the stored states; the coefficients (a, u), which read the inputs
    only, are computed again, for all steps at once, in the backward. A pytree."""

    params: MinGRUParams
    xs: jax.Array
    h0: jax.Array
    hs: jax.Array

    def error_problem(self, hs_bar):
        a, _ = coefficients(self.params, self.xs)
        # Row i is Ω(i+1, i) = diag(a_{i+1}); the last row is never read.
        diagonal = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
        return hs_bar, DiagonalJacobian(diagonal)

    def cotangents(self, delta):
        # Δ_t = ∂C/∂h_t, and h_t = a_t ⊙ h_{t−1} + u_t: ā_t = Δ_t ⊙ h_{t−1}, ū_t = Δ_t,
        # then one vjp of the (time-parallel) coefficients for W, b and the inputs.
        params, xs, h0, hs = self.params, self.xs, self.h0, self.hs
        previous = jnp.concatenate([h0[None], hs[:-1]])
        tokens = jnp.issubdtype(xs.dtype, jnp.integer)
        if tokens:
            (a, _), pullback = jax.vjp(lambda p: coefficients(p, xs), params)
            (params_bar,), xs_bar = pullback((delta * previous, delta)), None
        else:
            (a, _), pullback = jax.vjp(coefficients, params, xs)
            params_bar, xs_bar = pullback((delta * previous, delta))
        return params_bar, xs_bar, delta[0] * a[0]

    def step_problem(self) -> StepProblem:
        return StepProblem(mingru_step, self.params, self.xs, self.h0, self.hs, lambda g: g)


jax.tree_util.register_dataclass(
    MinGRULinearisation, data_fields=["params", "xs", "h0", "hs"], meta_fields=[]
)


def _prepare(
    layer: MinGRUParams, xs, h0, *, activation: str, own_backward: bool, whole_step: bool = False
) -> CellScan:
    del activation, own_backward, whole_step  # the whole step, its projection the cell's
    return CellScan(MinGRUCell(), layer, xs, h0)


KIND = LayerKind(
    name="mingru",
    params_type=MinGRUParams,
    gates=2,
    biases=("b",),
    paired_state=False,
    recurrent_weights=False,
    init=init_mingru_layer,
    prepare=_prepare,
)
