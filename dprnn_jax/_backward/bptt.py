"""Back-propagation through time: the first sub-diagonal only (docs/theory.md#corrections).

    Δ_{T-1} = P_{T-1},    Δ_i = P_i + Δ_{i+1} Ω(i+1, i)

One (m, d) × (d, d) product per step, T-1 in all, in a reverse `lax.scan`. With
`truncation=K` the carry becomes a window of the K+1 most recent lags
(`truncated_bptt.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .base import (
    GradientAlgorithm,
    check_checkpoint,
    check_exclusive,
    check_truncation,
    set_option,
)
from .error_flow import ErrorFlow
from .jacobian import StepJacobian
from .truncated_bptt import truncated_bptt_error_flow


def bptt_error_flow(injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
    """Δ by the O(T) reverse recurrence.

    scan :: Δ_{i+1} over i = T−2 … 0 -> Δ_i.

    Args:
        injected: P, shape (T, m, d).
        jacobian: the one-step Jacobians Ω(i+1, i).

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d).
    """

    def step(delta_next, inputs):
        p, per_step = inputs
        delta = p + jacobian.pull(delta_next, per_step)
        return delta, delta

    last = injected[-1]
    earlier_steps = jacobian.sliced(0, injected.shape[0] - 1).per_step
    _, earlier = lax.scan(step, last, (injected[:-1], earlier_steps), reverse=True)
    delta = jnp.concatenate([earlier, last[None]])
    products = jnp.asarray(injected.shape[0] - 1, jnp.int32)
    return ErrorFlow(delta, products, products)


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

    def closed_form_products(self, T: int) -> int:
        if self.truncation is None:
            return T - 1
        lags = min(self.truncation, T - 1)
        return lags * T - lags * (lags + 1) // 2
