r"""The Ω dynamic programme: the error-flow triangle filled diagonal by diagonal.

For one recurrent layer, `Ω(j, i) = ∂Z_j/∂Z_i` is the state transition of the DP
(docs/theory.md#the-omega-dynamic-programme):

.. math::

    Ω(i+1, i) = S \, \mathrm{diag}(σ'(Z_i)), \qquad Ω(j, i) = Ω(j, i+1)\, Ω(i+1, i).

The backward pass never needs Ω itself, only the *error-flow triangle*
`G(j, i) = P_j Ω(j, i)` (the part of the error at step i that comes from the loss at
step j), which obeys the same transition applied to a row vector:

.. math::

    G(i, i) = P_i, \qquad G(j, i) = G(j, i+1)\, Ω(i+1, i), \qquad
    Δ_i = \sum_{j \ge i} G(j, i).

Diagonal k holds `G(i+k, i)` for `i = 0 … T-1-k`; each diagonal is ONE batched
(rows·m, d) × (d, d) product computed from the previous one, so the triangle is filled
in T-1 sequential steps, each parallel across time, and only the current diagonal and
the accumulator Δ are kept (O(T·m·d) memory). The active length of diagonal k is T-k:
to avoid multiplying the empty part, diagonals are processed in *phases* of equal
length, each a `lax.fori_loop` over a slice of static length: the rows still active at
the phase's first diagonal.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .adaptive import adaptive_omega_error_flow
from .base import (
    GradientAlgorithm,
    check_block,
    check_checkpoint,
    check_exclusive,
    check_tol,
    check_truncation,
    set_option,
)
from .blocked import blocked_closed_form, blocked_error_flow
from .checkpoint import segment_length

# A phase of L diagonals multiplies L(L−1)/2 rows that lie outside the triangle, however
# long its slice: the waste depends only on the phases' lengths. Splitting the T−1
# diagonals into about PHASES phases of EQUAL length wastes ≈ (T−1)²/(2·PHASES) of the
# ≈ T²/2 useful rows, i.e. ≈ 1/PHASES (5%); a geometric schedule of as many phases wastes
# twice that. Each phase is one more compiled loop, hence not more of them.
PHASES = 20
# ... but no phase shorter than this: below it, a few wasted rows cost less than one more
# compiled loop.
PHASE_MIN = 8
# Diagonals shorter than this go into one last phase, for the same reason.
PHASE_TAIL = 16


def diagonal_phases(T: int, max_lag: int | None = None) -> tuple[tuple[int, int, int], ...]:
    """Static schedule of the diagonal fill: `(first_k, stop_k, rows)` per phase.

    Diagonals `k ∈ [first_k, stop_k)` are computed with batched products of `rows`
    rows, `rows = T - first_k` being the active length of the first (longest) one.
    Only diagonals `k ≤ max_lag` are scheduled (all T-1 if None).
    """
    last = T - 1 if max_lag is None else min(max_lag, T - 1)
    length = max(PHASE_MIN, -(-(T - 1 - PHASE_TAIL) // PHASES))
    phases = []
    first = 1
    while first <= last:
        rows = T - first
        # The last diagonals, short, join the tail phase rather than start a new one.
        stop = T if rows <= PHASE_TAIL + length // 2 else first + length
        stop = min(stop, last + 1)
        phases.append((first, stop, rows))
        first = stop
    return tuple(phases)


def omega_error_flow(
    injected: jax.Array, jacobian: StepJacobian, *, max_lag: int | None = None
) -> ErrorFlow:
    """Δ by filling the error-flow triangle diagonal by diagonal.

    Args:
        injected: P, shape (T, m, d): errors injected at each step from above (Ψ).
        jacobian: the one-step Jacobians Ω(i+1, i) (e.g. `ElmanJacobian(S, σ')`).
        max_lag: fill only diagonals k ≤ max_lag (K-step truncation); all if None.

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d).
    """
    T, m, d = injected.shape
    phases = diagonal_phases(T, max_lag)
    count = jnp.zeros((), jnp.int32)
    if not phases:
        return ErrorFlow(injected, count, count)
    # Row r of a phase holds G(j, j-k) for the LATER step j = first + r, whatever the
    # diagonal k: moving to the next diagonal is then one `pull` in place, with no
    # shifted copy of the diagonal. The shift moves to the Jacobians' data and to the
    # accumulation into Δ, which read and write at row j - k through fused dynamic
    # slices. `pad` rows of zero data in front stand for steps i < 0: rows j < k lie
    # outside the triangle, are only ever multiplied into themselves (each row is pulled
    # on its own) and accumulate into the discarded padding of Δ, so they never reach Δ.
    pad = max(stop - 1 - first for first, stop, _ in phases)
    padded = jacobian.padded(pad)
    dtype = injected.dtype
    zeros = jnp.zeros((pad, m, d), dtype)
    # Diagonal 0 is P itself: G(i, i) = P_i. A bfloat16 Δ is accumulated in float32
    # (`precision.stored`), which the loops also update in place on a CPU.
    carry = (injected, precision.stored(jnp.concatenate([zeros, injected])), count, count)
    held = 0  # the first step j held by the carried diagonal
    for first, stop, rows in phases:
        diagonal, delta_padded, useful, performed = carry
        # Keep the active rows j ∈ [first, T) of the longest diagonal of this phase.
        diagonal = diagonal[first - held :]
        held = first

        def fill(k, state, first=first, rows=rows):
            diagonal, delta_padded, useful, performed = state
            start = pad + first - k  # padded row of i = j - k for j = first
            # G(j, j-k) = G(j, j-k+1) Ω(j-k+1, j-k): one batched product per diagonal.
            new = padded.pull(diagonal, padded.steps(start, rows))
            # Δ_i += G(i+k, i); the update is in place inside the loop.
            accumulated = lax.dynamic_slice_in_dim(delta_padded, start, rows) + new
            delta_padded = lax.dynamic_update_slice_in_dim(delta_padded, accumulated, start, 0)
            return new, delta_padded, useful + (T - k), performed + rows

        carry = lax.fori_loop(first, stop, fill, (diagonal, delta_padded, useful, performed))
    _, delta_padded, useful, performed = carry
    return ErrorFlow(precision.loaded(delta_padded[pad:], dtype), useful, performed)


@dataclasses.dataclass(frozen=True)
class Omega(GradientAlgorithm):
    """The Ω dynamic programme (docs/theory.md#the-omega-dynamic-programme).

    Fills the error-flow triangle diagonal by diagonal: T−1 sequential steps, each one
    batched product parallel across time; T(T−1)/2 products, O(T·m·d) memory.

    Args:
        truncation: K ≥ 0: keep only lags j − i ≤ K (the K-step truncated gradient,
            docs/theory.md#truncation); None for the exact gradient.
        tol: ε ≥ 0: stop filling once the newest diagonal's Frobenius norm is ≤ ε times
            the accumulated error's (docs/theory.md#adaptive-tolerance); exact when the
            network is contractive enough, a heuristic otherwise. Combines with
            `truncation` (at most K diagonals).
        block: B ≥ 1: Ω triangles of B steps chained by the BPTT recurrence
            (docs/theory.md#blocked-omega); 1 is BPTT, ≥ T the full triangle. Exact;
            excludes `truncation` and `tol`.
        checkpoint: k ≥ 1 or "sqrt" (k = ⌈√T⌉): with a fused loss (`sequence_loss`,
            `many_to_one_loss`, `make_train_step`), keep only every k-th state and, in
            the backward, recompute one segment at a time and fill its Ω triangle,
            segments chained by one BPTT step (the blocked Ω DP with recomputation,
            docs/algorithms.md#checkpoint): O(√T) memory. Exact; excludes the other
            options. A layer on its own (`rnn_layer`) computes `Omega(block=k)`.

    Raises:
        ValueError: an option of the wrong type or range, or `block` with
            `truncation`/`tol`.

    Example:
        >>> print(Omega(truncation=32))
        Omega(truncation=32)
        >>> Omega(truncation=32) == dj.backward.resolve_method("omega", truncation=32)
        True
    """

    truncation: int | None = None
    tol: float | None = None
    block: int | None = None
    checkpoint: int | str | None = None

    name = "omega"

    def __post_init__(self):
        set_option(self, "truncation", check_truncation(self.truncation))
        set_option(self, "tol", check_tol(self.tol))
        set_option(self, "block", check_block(self.block))
        set_option(self, "checkpoint", check_checkpoint(self.checkpoint))
        check_exclusive(self, "checkpoint", ("truncation", "tol", "block"))
        if self.block is not None and (self.truncation is not None or self.tol is not None):
            raise ValueError(
                f"block cannot be combined with truncation or tol, got block={self.block!r}, "
                f"truncation={self.truncation!r}, tol={self.tol!r}; pick one of them."
            )

    def _block(self, T: int) -> int | None:
        if self.checkpoint is not None:
            return segment_length(self.checkpoint, T)
        return self.block

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        block = self._block(injected.shape[0])
        if block is not None:
            return blocked_error_flow(injected, jacobian, block=block, fill=omega_error_flow)
        if self.tol is not None:
            return adaptive_omega_error_flow(
                injected, jacobian, tol=self.tol, max_lag=self.truncation
            )
        return omega_error_flow(injected, jacobian, max_lag=self.truncation)

    def closed_form_products(self, T: int) -> int | None:
        if self.tol is not None:
            return None  # how many diagonals are filled depends on the data
        if self._block(T) is not None:
            return blocked_closed_form(T, self._block(T))
        lags = T - 1 if self.truncation is None else min(self.truncation, T - 1)
        return lags * T - lags * (lags + 1) // 2
