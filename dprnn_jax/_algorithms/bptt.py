"""Back-propagation through time: the first sub-diagonal only (docs/theory.md#corrections).

    Δ_{T-1} = P_{T-1},    Δ_i = P_i + Δ_{i+1} Ω(i+1, i)

One (m, d) × (d, d) product per step, T-1 in all, in a reverse loop. With
`truncation=K` the carry becomes a window of the K+1 most recent lags
(`truncated_bptt.py`).

For an Elman layer the loop is fused (`elman_bptt_delta`): with P_i = h̄_i ⊙ σ'(Z_i) and
Ω(i+1, i) = S diag(σ'(Z_i)), the step is `Δ_i = (h̄_i + Δ_{i+1} S) ⊙ σ'(Z_i)`, σ'(Z_i)
computed from the stored h_i inside the step: neither P nor σ' is written out as a
(T, m, d) array first.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._cells.base import Linearisation
from .._cells.elman_linearisation import ElmanLinearisation
from .._core import precision
from .._core.activations import get_activation
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import (
    GradientAlgorithm,
    check_checkpoint,
    check_exclusive,
    check_truncation,
    set_option,
)
from .truncated_bptt import truncated_bptt_error_flow


def _row(x: jax.Array, i: jax.Array) -> jax.Array:
    # Loop indices are never negative: no wrap-around select in the loop body.
    return lax.dynamic_index_in_dim(x, i, keepdims=False, allow_negative_indices=False)


def _set_row(x: jax.Array, row: jax.Array, i: jax.Array) -> jax.Array:
    return lax.dynamic_update_index_in_dim(x, row, i, 0, allow_negative_indices=False)


def bptt_error_flow(injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
    """Δ by the O(T) reverse recurrence.

    loop :: Δ_{i+1} over i = T−2 … 0 -> Δ_i.

    Each Δ_i is written over the row P_i it has just read (the loop carries `injected`
    and fills it in place), so there is no output buffer to allocate and no last row to
    join on afterwards.

    Args:
        injected: P, shape (T, m, d).
        jacobian: the one-step Jacobians Ω(i+1, i).

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d).
    """
    T, dtype = injected.shape[0], injected.dtype
    per_step = jacobian.per_step

    def step(j, carry):
        delta_next, deltas = carry
        i = T - 2 - j
        steps_data = jax.tree.map(lambda x: _row(x, i), per_step)
        delta = precision.loaded(_row(deltas, i), dtype) + jacobian.pull(delta_next, steps_data)
        return delta, _set_row(deltas, precision.stored(delta), i)

    # A bfloat16 Δ is written in float32 (`precision.stored`): in place on a CPU.
    _, delta = lax.fori_loop(0, T - 1, step, (injected[-1], precision.stored(injected)))
    products = jnp.asarray(T - 1, jnp.int32)
    return ErrorFlow(precision.loaded(delta, dtype), products, products)


def elman_bptt_delta(hs: jax.Array, hs_bar: jax.Array, S: jax.Array, activation: str) -> jax.Array:
    """Δ of an Elman layer by the reverse recurrence, fused into one loop.

    loop :: Δ_{i+1} over i = T−2 … 0 -> Δ_i = (h̄_i + Δ_{i+1} S) ⊙ σ'(Z_i),
    from Δ_{T−1} = h̄_{T−1} ⊙ σ'(Z_{T−1}).

    The same Δ as `bptt_error_flow(h̄ ⊙ σ', ElmanJacobian(S, σ'))`
    (docs/theory.md#psi-and-omega: P_i = h̄_i ⊙ σ'(Z_i), Ω(i+1, i) = S diag(σ'(Z_i))),
    with σ'(Z_i) computed from h_i inside each step and each Δ_i written over h̄_i in
    place; T−1 products.

    Args:
        hs: the stored states h_i = σ(Z_i), shape (T, m, d).
        hs_bar: h̄, the cotangent of the states, shape (T, m, d).
        S: recurrent weights (d, d).
        activation: the activation's name (its derivative is read from h).

    Returns:
        Δ, shape (T, m, d).
    """
    derivative = get_activation(activation).derivative_from_output
    T, dtype = hs.shape[0], hs_bar.dtype

    def step(j, carry):
        delta_next, deltas = carry
        i = T - 2 - j
        incoming = precision.loaded(_row(deltas, i), dtype)
        delta = (incoming + precision.matmul(delta_next, S)) * derivative(_row(hs, i))
        return delta, _set_row(deltas, precision.stored(delta), i)

    last = hs_bar[-1] * derivative(hs[-1])
    # A bfloat16 Δ is written in float32 (`precision.stored`): in place on a CPU.
    deltas = precision.stored(_set_row(hs_bar, last, T - 1))
    _, delta = lax.fori_loop(0, T - 1, step, (last, deltas))
    return precision.loaded(delta, dtype)


@functools.singledispatch
def exact_delta(linearisation: Linearisation, carries_bar) -> jax.Array:
    """Δ of a scan by the reverse recurrence: `bptt_error_flow` on the cell's operator,
    or a cell's fused loop where its linearisation has one (dispatch on its type)."""
    return bptt_error_flow(*linearisation.error_problem(carries_bar)).delta


@exact_delta.register
def _(linearisation: ElmanLinearisation, hs_bar) -> jax.Array:
    # The Elman layer: one fused loop (`elman_bptt_delta`), σ' read inside each step.
    return elman_bptt_delta(
        linearisation.hs, hs_bar, linearisation.params.S, linearisation.activation
    )


@dataclasses.dataclass(frozen=True)
class BPTT(GradientAlgorithm):
    """Back-propagation through time: the O(T) reverse recurrence.

    T−1 products in T−1 sequential steps; O(m·d) carry.

    Args:
        truncation: K ≥ 0: keep only lags j − i ≤ K (K-step truncated BPTT,
            docs/theory.md#truncation), by a reverse scan over a window of K+1 lags;
            None for the exact gradient.
        checkpoint: k ≥ 1 or "sqrt" (k = ⌈√T⌉): with a fused loss (`sequence_loss`,
            `many_to_one_loss`, `make_train_step`), keep only every k-th state and
            recompute one segment at a time in the backward: O(√T) memory for one
            extra forward (docs/algorithms.md#checkpoint). Exact; excludes
            `truncation`. A layer on its own (`rnn_layer`) is unaffected: its states
            are its output.

    Raises:
        ValueError: an option of the wrong type or range, or both options.

    Example:
        >>> BPTT(truncation=8).options()
        {'truncation': 8}
    """

    truncation: int | None = None
    checkpoint: int | str | None = None

    name = "bptt"

    def __post_init__(self):
        set_option(self, "truncation", check_truncation(self.truncation))
        set_option(self, "checkpoint", check_checkpoint(self.checkpoint))
        check_exclusive(self, "checkpoint", ("truncation",))

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        if self.truncation is not None:
            return truncated_bptt_error_flow(injected, jacobian, max_lag=self.truncation)
        return bptt_error_flow(injected, jacobian)

    def cotangents(self, linearisation: Linearisation, carries_bar):
        if self.truncation is not None:
            return super().cotangents(linearisation, carries_bar)
        return linearisation.cotangents(exact_delta(linearisation, carries_bar))

    def closed_form_products(self, T: int) -> int:
        if self.truncation is None:
            return T - 1
        lags = min(self.truncation, T - 1)
        return lags * T - lags * (lags + 1) // 2
