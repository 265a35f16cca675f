"""Seed 000's direct expansion, every Ω(j, i) recomputed from scratch. Comparison only.

    Δ_i = P_i + Σ_{j>i} P_j Ω(j, i),   Ω(j, i) P-applied as  (((P_j S) ⊙ σ'_{j-1}) S ⊙ … ) ⊙ σ'_i

Each pair (j, i) costs j - i products, (T³ - T)/6 in all: O(T³) work that the Ω DP
(`_omega.py`) reduces to O(T²) and BPTT (`_bptt.py`) to O(T). The sum is over the
injected errors P, not the total errors Δ (the seed's literal recurrence double-counts
paths, DESIGN.md §3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .error_flow import ErrorFlow


def naive_error_flow(injected: jax.Array, sigma_prime: jax.Array, S: jax.Array) -> ErrorFlow:
    """Δ by the O(T³) direct expansion (DESIGN.md §4, "naive").

    Args:
        injected: P, shape (T, m, d).
        sigma_prime: σ'(Z), shape (T, m, d).
        S: recurrent weights (d, d).

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
                return (g @ S) * sigma_prime[t], count + 1

            g, count = lax.fori_loop(i, j, back_one_step, (injected[j], count))
            return total + g, count

        total, count = lax.fori_loop(i + 1, T, add_path_from, (injected[i], count))
        return delta.at[i].set(total), count

    delta, count = lax.fori_loop(
        0, T, error_at, (jnp.zeros_like(injected), jnp.zeros((), jnp.int32))
    )
    return ErrorFlow(delta, count, count)
