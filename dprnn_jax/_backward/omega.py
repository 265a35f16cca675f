r"""The Ω dynamic programme (seed 000, corrected as in DESIGN.md §3).

For one recurrent layer, `Ω(j, i) = ∂Z_j/∂Z_i` is the state transition of the DP:

.. math::

    Ω(i+1, i) = S \, \mathrm{diag}(σ'(Z_i)), \qquad Ω(j, i) = Ω(j, i+1)\, Ω(i+1, i).

The backward pass never needs Ω itself, only the *error-flow triangle*
`G(j, i) = P_j Ω(j, i)` (the part of the error at step i that comes from the loss at
step j), which obeys the same transition applied to a row vector:

.. math::

    G(i, i) = P_i, \qquad G(j, i) = (G(j, i+1)\, S) ⊙ σ'(Z_i), \qquad
    Δ_i = \sum_{j \ge i} G(j, i).

Diagonal k holds `G(i+k, i)` for `i = 0 … T-1-k`; each diagonal is ONE batched
(rows·m, d) × (d, d) product computed from the previous one, so the triangle is filled
in T-1 sequential steps, each parallel across time, and only the current diagonal and
the accumulator Δ are kept (O(T·m·d) memory). The active length of diagonal k is T-k:
to avoid multiplying the empty part, diagonals are processed in *phases*, each a
`lax.fori_loop` over a slice of static length that shrinks geometrically.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._model.activations import get_activation
from .._model.forward import hoisted_layer
from .._model.params import LayerParams
from .._validation import check_layer_inputs
from .error_flow import ErrorFlow

# Each phase's slice is at most 1/PHASE_SHRINK times longer than the shortest diagonal
# it holds, so at least (1 + PHASE_SHRINK) / 2 ≈ 90% of the rows multiplied are useful.
PHASE_SHRINK = 0.8
# Diagonals shorter than this go into one last phase: a few wasted rows cost less
# than one more compiled loop.
PHASE_TAIL = 16


def diagonal_phases(T: int, max_lag: int | None = None) -> tuple[tuple[int, int, int], ...]:
    """Static schedule of the diagonal fill: `(first_k, stop_k, rows)` per phase.

    Diagonals `k ∈ [first_k, stop_k)` are computed with batched products of `rows`
    rows, `rows = T - first_k` being the active length of the first (longest) one.
    Only diagonals `k ≤ max_lag` are scheduled (all T-1 if None).
    """
    last = T - 1 if max_lag is None else min(max_lag, T - 1)
    phases = []
    first = 1
    while first <= last:
        rows = T - first
        if rows <= PHASE_TAIL:
            stop = T
        else:
            stop = max(first + 1, T - int(PHASE_SHRINK * rows))
        stop = min(stop, last + 1)
        phases.append((first, stop, rows))
        first = stop
    return tuple(phases)


def omega_error_flow(
    injected: jax.Array, sigma_prime: jax.Array, S: jax.Array, *, max_lag: int | None = None
) -> ErrorFlow:
    """Δ by filling the error-flow triangle diagonal by diagonal (DESIGN.md §4, "omega").

    Args:
        injected: P, shape (T, m, d): errors injected at each step from above (Ψ).
        sigma_prime: σ'(Z), shape (T, m, d), evaluated once per step.
        S: recurrent weights (d, d).
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
    # diagonal k: moving to the next diagonal is then `diagonal @ S` in place, with no
    # shifted copy of the diagonal. The shift moves to σ' and to the accumulation into Δ,
    # which read and write at row j - k through fused dynamic slices. `pad` zero rows in
    # front give σ'(Z_i) = 0 and a discarded Δ_i for i < 0, so rows j < k (outside the
    # triangle) are exactly zero and never reach Δ.
    pad = max(stop - 1 - first for first, stop, _ in phases)
    zeros = jnp.zeros((pad, m, d), injected.dtype)
    sigma_padded = jnp.concatenate([zeros, sigma_prime])
    # Diagonal 0 is P itself: G(i, i) = P_i.
    carry = (injected, jnp.concatenate([zeros, injected]), count, count)
    held = 0  # the first step j held by the carried diagonal
    for first, stop, rows in phases:
        diagonal, delta_padded, useful, performed = carry
        # Keep the active rows j ∈ [first, T) of the longest diagonal of this phase.
        diagonal = diagonal[first - held :]
        held = first

        def fill(k, state, first=first, rows=rows):
            diagonal, delta_padded, useful, performed = state
            start = pad + first - k  # padded row of i = j - k for j = first
            # G(j, j-k) = (G(j, j-k+1) S) ⊙ σ'(Z_{j-k}): one batched product per diagonal.
            new = (diagonal @ S) * lax.dynamic_slice_in_dim(sigma_padded, start, rows)
            # Δ_i += G(i+k, i); the update is in place inside the loop.
            accumulated = lax.dynamic_slice_in_dim(delta_padded, start, rows) + new
            delta_padded = lax.dynamic_update_slice_in_dim(delta_padded, accumulated, start, 0)
            return new, delta_padded, useful + (T - k), performed + rows

        carry = lax.fori_loop(first, stop, fill, (diagonal, delta_padded, useful, performed))
    _, delta_padded, useful, performed = carry
    return ErrorFlow(delta_padded[pad:], useful, performed)


def omega_matrix(
    layer_params: LayerParams,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
) -> jax.Array:
    """The Jacobian triangle Ω(j, i) = ∂Z_j/∂Z_i of one recurrent layer.

    Filled diagonal by diagonal with the state transition
    `Ω(j, i) = Ω(j, i+1) · Ω(i+1, i)`, `Ω(i+1, i) = S · diag(σ'(Z_i))`. Memory is
    O(T²·m·d²): a diagnostic for small models, not part of any backward pass.

    Args:
        layer_params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs (T, m, n).
        h0: initial state (m, d); zeros if None.
        activation: "tanh", "sigmoid" or "relu".

    Returns:
        Array (T, T, m, d, d): `[j, i, v]` is Ω(j, i) for sample v; zero above the
        diagonal (j < i) and the identity on it.

    Example:
        >>> omega = omega_matrix(init_layer(jax.random.key(0), 2, 3), jnp.ones((4, 1, 2)))
        >>> omega.shape
        (4, 4, 1, 3, 3)
    """
    T, m, d, h0 = check_layer_inputs(layer_params, xs, h0, activation=activation)
    hs = hoisted_layer(layer_params, xs, h0, activation=activation)
    sigma_prime = get_activation(activation).derivative_from_output(hs)
    # One step: Ω(i+1, i)[a, b] = S[a, b] σ'(Z_i)[b], for every i and sample.
    one_step = layer_params.S * sigma_prime[..., None, :]  # (T, m, d, d)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=hs.dtype), (T, m, d, d))
    triangle = jnp.zeros((T, T, m, d, d), hs.dtype)
    steps = jnp.arange(T)
    triangle = triangle.at[steps, steps].set(eye)

    def fill(k, state):
        triangle, diagonal = state  # diagonal[i] = Ω(i+k-1, i)
        shifted = jnp.concatenate([diagonal[1:], jnp.zeros_like(diagonal[:1])])
        diagonal = shifted @ one_step  # Ω(i+k, i) = Ω(i+k, i+1) Ω(i+1, i)
        # Rows i >= T-k fall outside the triangle; mode="drop" discards them.
        triangle = triangle.at[steps + k, steps].set(diagonal, mode="drop")
        return triangle, diagonal

    triangle, _ = lax.fori_loop(1, T, fill, (triangle, eye))
    return triangle
