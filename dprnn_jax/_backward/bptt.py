"""Standard back-propagation through time: the first sub-diagonal only (DESIGN.md §3).

    Δ_{T-1} = P_{T-1},    Δ_i = P_i + (Δ_{i+1} S) ⊙ σ'(Z_i)

One (m, d) × (d, d) product per step, T-1 in all, in a reverse `lax.scan`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .error_flow import ErrorFlow


def bptt_error_flow(injected: jax.Array, sigma_prime: jax.Array, S: jax.Array) -> ErrorFlow:
    """Δ by the O(T) reverse recurrence (DESIGN.md §4, "bptt").

    Args:
        injected: P, shape (T, m, d).
        sigma_prime: σ'(Z), shape (T, m, d).
        S: recurrent weights (d, d).

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d).
    """

    def step(delta_next, inputs):
        p, sp = inputs
        delta = p + (delta_next @ S) * sp
        return delta, delta

    last = injected[-1]
    _, earlier = lax.scan(step, last, (injected[:-1], sigma_prime[:-1]), reverse=True)
    delta = jnp.concatenate([earlier, last[None]])
    products = jnp.asarray(injected.shape[0] - 1, jnp.int32)
    return ErrorFlow(delta, products, products)
