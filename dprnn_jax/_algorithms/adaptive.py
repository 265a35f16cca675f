r"""Adaptive Ω: fill diagonals of the error-flow triangle until the newest is negligible
(docs/theory.md#adaptive-tolerance).

The Ω DP (`omega.py`) adds the diagonals `D_k = {G(i+k, i)}_i` of the error-flow
triangle to the total error one at a time, `Δ = Σ_k D_k`. In a contractive network the
diagonals shrink geometrically with k, so the last ones change nothing. With `tol=ε`
the fill runs in a `lax.while_loop` and stops after the first diagonal K_eff with

.. math::

    \|D_{K_\mathrm{eff}}\|_F \le ε\, \Big\|\sum_{k \le K_\mathrm{eff}} D_k\Big\|_F

(Frobenius norms over the whole (T, m, d) diagonal, i.e. over the batch), or after
all T−1 diagonals (or `max_lag`) if that never happens.

What this guarantees. With `ρ = ‖S‖₂ · max_{t, v, a} |σ'(Z_t)[v, a]|`,
`‖D_{k+1}‖_F ≤ ρ ‖D_k‖_F` (each row of D_{k+1} is a row of D_k times S, scaled
elementwise by σ'), so the dropped tail obeys

.. math::

    \|Δ_\mathrm{tol} − Δ\|_F \le \frac{ρ}{1 − ρ}\, ε\, \|Δ_\mathrm{tol}\|_F
    \qquad \text{when } ρ < 1.

What it does not. When ρ ≥ 1 nothing bounds the tail: a small diagonal can be
followed by large ones, so `tol` is a heuristic there. Example: S = diag(0.1, 1.5),
σ' = 1 and errors P = (a, b) with |b| ≪ |a|: ‖D_k‖ ≈ 0.1^k |a| + 1.5^k |b| first
falls below ε‖Δ‖ and then grows without bound.
The stopping test is global over the batch, not per sequence; a NaN or inf anywhere
makes the test fail, so the fill runs to the end and the non-finite value propagates
into the gradient as it would without `tol`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._core.jacobian import StepJacobian


class AdaptiveErrorFlow(NamedTuple):
    """Δ from the adaptive fill and what it did.

    Attributes:
        delta: Δ, shape (T, m, d).
        products_useful: (m, d) × (d, d) products on active rows of the diagonals used.
        products_performed: products executed (every diagonal has T rows here).
        diagonals: K_eff, the number of diagonals k ≥ 1 added (0 when T = 1).
        last_relative_size: ‖D_{K_eff}‖_F / ‖Σ_{k≤K_eff} D_k‖_F (0 when no diagonal
            was added or the last one is exactly zero).
    """

    delta: jax.Array
    products_useful: jax.Array
    products_performed: jax.Array
    diagonals: jax.Array
    last_relative_size: jax.Array


def _frobenius(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(x * x))


def adaptive_omega_error_flow(
    injected: jax.Array,
    jacobian: StepJacobian,
    *,
    tol: float,
    max_lag: int | None = None,
) -> AdaptiveErrorFlow:
    """Δ by the Ω diagonal fill, stopped once the newest diagonal is below `tol`.

    Args:
        injected: P, shape (T, m, d).
        jacobian: the one-step Jacobians Ω(i+1, i).
        tol: ε ≥ 0, the relative size below which the fill stops (see module docs).
        max_lag: at most this many diagonals (K-step truncation); all T−1 if None.

    Returns:
        `AdaptiveErrorFlow`.
    """
    T = injected.shape[0]
    last = T - 1 if max_lag is None else min(max_lag, T - 1)
    zero = jnp.zeros((), jnp.int32)
    inf = jnp.asarray(jnp.inf, injected.dtype)

    def not_done(state):
        k, _, _, relative, _ = state
        # `~(relative <= tol)`, not `relative > tol`: a NaN keeps the loop going.
        return (k < last) & ~(relative <= tol)

    def next_diagonal(state):
        k, diagonal, delta, _, useful = state
        # Full-length rows (T): rows i ≥ T−1−k of the new diagonal are zero because the
        # shifted-in row is zero, so a fixed shape serves every k.
        shifted = jnp.concatenate([diagonal[1:], jnp.zeros_like(diagonal[:1])])
        # G(i+k+1, i) = G(i+k+1, i+1) Ω(i+1, i)
        new = jacobian.pull(shifted, jacobian.per_step)
        delta = delta + new
        size = _frobenius(new)
        relative = jnp.where(size == 0, jnp.zeros_like(size), size / _frobenius(delta))
        return k + 1, new, delta, relative, useful + (T - 1 - k)

    k, _, delta, relative, useful = lax.while_loop(
        not_done, next_diagonal, (zero, injected, injected, inf, zero)
    )
    relative = jnp.where(k == 0, jnp.zeros_like(relative), relative)
    return AdaptiveErrorFlow(delta, useful, k * T, k, relative)
