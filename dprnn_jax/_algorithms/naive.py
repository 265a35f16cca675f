"""The direct expansion, every Ω(j, i) recomputed from scratch. Comparison only.

    Δ_i = P_i + Σ_{j>i} P_j Ω(j, i),   P_j Ω(j, i) = P_j Ω(j, j−1) ⋯ Ω(i+1, i)

Each pair (j, i) costs j − i products, (T³ − T)/6 in all: the O(T³) work that the Ω DP
(`omega.py`) reduces to O(T²) and BPTT (`bptt.py`) to O(T). The sum is over the
injected errors P, not the total errors Δ (the source derivation's recurrence
double-counts paths, docs/theory.md#corrections).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import GradientAlgorithm


def naive_error_flow(injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
    """Δ by the O(T³) direct expansion.

    Args:
        injected: P, shape (T, m, d).
        jacobian: the one-step Jacobians Ω(i+1, i).

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d).
    """
    T = injected.shape[0]

    def error_at(i, state):
        delta, count = state

        def add_path_from(j, state):
            total, count = state

            def back_one_step(n, state):
                g, count = state
                t = j - 1 - (n - i)  # walk t = j-1, j-2, …, i
                return jacobian.pull(g, jacobian.steps(t, 1)), count + 1

            g, count = lax.fori_loop(i, j, back_one_step, (injected[j][None], count))
            return total + g[0], count

        total, count = lax.fori_loop(i + 1, T, add_path_from, (injected[i], count))
        return delta.at[i].set(total), count

    delta, count = lax.fori_loop(
        0, T, error_at, (jnp.zeros_like(injected), jnp.zeros((), jnp.int32))
    )
    return ErrorFlow(delta, count, count)


@dataclasses.dataclass(frozen=True)
class Naive(GradientAlgorithm):
    """The direct O(T³) expansion of Δ_i = P_i + Σ_{j>i} P_j Ω(j, i): a baseline that
    shows what the Ω DP saves; never the method to train with.

    Example:
        >>> Naive().closed_form_products(8)
        84
    """

    name = "naive"

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        return naive_error_flow(injected, jacobian)

    def closed_form_products(self, T: int) -> int:
        return (T**3 - T) // 6
