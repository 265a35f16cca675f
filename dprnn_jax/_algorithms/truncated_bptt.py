"""K-step truncated BPTT as a reverse scan with a lag window (docs/theory.md#truncation).

Truncation keeps only the diagonals k ≤ K of the error-flow triangle
`G(j, i) = P_j Ω(j, i)`: the error a loss at step j sends to step i is dropped when
j − i > K. Plain BPTT cannot drop it, because its carry `Δ_{i+1}` already mixes every
lag. This scan instead carries the K+1 most recent diagonals *separately*:

    window_i[0] = P_i,    window_i[k] = window_{i+1}[k−1] Ω(i+1, i)   (k = 1 … K),
    Δ_i = Σ_k window_i[k],

so each step costs one batched (K·m, d) × (d, d) product: O(T·K) work, T sequential
steps and O(K·m·d) carry. `Omega(truncation=K)` computes the same Δ with the same work in
only K sequential (time-parallel) steps; this form is the one to use when T·m·d is
too large to hold a whole diagonal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian


def truncated_bptt_error_flow(
    injected: jax.Array, jacobian: StepJacobian, *, max_lag: int
) -> ErrorFlow:
    """Δ_i = Σ_{j=i}^{min(i+K, T−1)} P_j Ω(j, i) by a reverse scan over a lag window.

    Args:
        injected: P, shape (T, m, d).
        jacobian: the one-step Jacobians Ω(i+1, i).
        max_lag: K ≥ 0, the largest lag j − i kept.

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d); equal to `omega_error_flow(...,
        max_lag=K)`.
    """
    T = injected.shape[0]
    lags = min(max_lag, T - 1)
    useful = jnp.asarray(lags * T - lags * (lags + 1) // 2, jnp.int32)
    if lags == 0:
        return ErrorFlow(injected, useful, useful)

    def step(window_next, inputs):
        p, per_step = inputs
        # window_next[k] = G(i+1+k, i+1); one step back turns lag k into lag k+1, and
        # the oldest lag (K) falls out of the window: that is the truncation.
        moved = jacobian.pull(window_next[:lags], per_step)
        window = jnp.concatenate([p[None], moved])
        # A bfloat16 Δ is stacked in float32 (`precision.stored`): in place on a CPU.
        return window, precision.stored(window.sum(axis=0))

    last = jnp.zeros((lags + 1, *injected.shape[1:]), injected.dtype).at[0].set(injected[-1])
    earlier_steps = jacobian.sliced(0, T - 1).per_step
    _, earlier = lax.scan(step, last, (injected[:-1], earlier_steps), reverse=True)
    delta = jnp.concatenate([precision.loaded(earlier, injected.dtype), injected[-1:]])
    performed = jnp.asarray((T - 1) * lags, jnp.int32)
    return ErrorFlow(delta, useful, performed)
