r"""Norms of the Jacobian triangle Ω(j, i) = ∂Z_j/∂Z_i, one diagonal at a time.

`omega_matrix` stores the whole (T, T, m, d, d) triangle; when only its norms are
wanted, the diagonal-by-diagonal fill of the DP needs only the current diagonal
(T, m, d, d):

.. math::

    Ω(i+k, i) = Ω(i+k, i+1)\, Ω(i+1, i), \qquad Ω(i+1, i) = S \, \mathrm{diag}(σ'(Z_i)).

Over long lags Ω decays or grows geometrically and would under- or overflow, so every
matrix of the diagonal is kept divided by its Frobenius norm and the logarithm of the
scale is carried alongside: `log‖Ω(i+k, i)‖ = log c_k(i) + log‖Ω(i+k, i) / c_k(i)‖`,
`log c_k(i) = log c_{k-1}(i+1) + log‖Ω(i+k, i+1) Ω(i+1, i) / c_{k-1}(i+1)‖_F`.
The log-norms are therefore exact (to rounding) at any lag, even where the norm itself
is far below the smallest float.

For a GRU or LSTM layer, Ω(j, i) = ∂carry_j/∂carry_i is the Jacobian of the cell's
carry (`h`, or the concatenated `(h, c)` of an LSTM, 2d × 2d), and Ω(i+1, i) = J_{i+1} is
the cell's one-step Jacobian, built explicitly by pulling the D basis rows through the
stored linearisation of each step (`StepJacobian.matrices`); the fill is the same.

A bidirectional layer is inspected one direction at a time; the backward direction's
triangle is filled in the order in which it runs and reported at the network's time
steps (`trajectory.network_order`), where it is the upper triangle j ≤ i.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._algorithms.omega import diagonal_phases
from .._core.validation import check_positive_int
from .trajectory import compiled, layer_trajectory, network_order, one_step_jacobians


class OmegaNorms(NamedTuple):
    """‖Ω(j, i)‖ per sample, shape (T, T, m) indexed `[j, i, v]`: spectral and Frobenius.

    Example:
        >>> norms = omega_norms(init_layer(jax.random.key(0), 3, 8), jnp.ones((5, 2, 3)))
        >>> float(norms.spectral[2, 2, 0]), bool(jnp.isnan(norms.spectral[0, 2, 0]))
        (1.0, True)
    """

    spectral: jax.Array
    frobenius: jax.Array


def check_max_lag(max_lag: object, T: int) -> int:
    """Checks `max_lag` (a positive int or None); returns the last lag filled, ≤ T − 1."""
    if max_lag is None:
        return T - 1
    return min(check_positive_int("max_lag", max_lag), T - 1)


def omega_log_norms_from_jacobians(one_step: jax.Array, max_lag: int) -> OmegaNorms:
    """Natural logs of ‖Ω(j, i)‖ from the one-step Jacobians (T, m, d, d).

    Lags 1 … `max_lag` are filled; j < i and lags beyond `max_lag` are NaN (not
    computed, or not defined); the diagonal j = i holds the identity's norms. As in the
    Ω backward (`diagonal_phases`), the diagonals are filled in phases, each a loop over
    the rows still inside the triangle at its first lag, so that the SVDs of the rows
    past the triangle's edge (half of them over all lags) are mostly not computed.
    """
    T, m, d, _ = one_step.shape
    dtype = one_step.dtype
    steps = jnp.arange(T)
    eye = jnp.eye(d, dtype=dtype)
    log_spectral = jnp.full((T, T, m), jnp.nan, dtype).at[steps, steps].set(0.0)
    log_frobenius = log_spectral.at[steps, steps].set(0.5 * jnp.log(jnp.asarray(d, dtype)))

    def fill(k, state, rows):
        log_spectral, log_frobenius, diagonal, log_scale = state
        # diagonal[i] = Ω(i+k-1, i) / exp(log_scale[i]); shift to Ω(i+k, i+1). The row
        # past the end is padding (identity, scale 1) whose result is dropped below.
        shifted = jnp.concatenate([diagonal[1:], jnp.broadcast_to(eye, (1, m, d, d))])
        shifted_scale = jnp.concatenate([log_scale[1:], jnp.zeros_like(log_scale[:1])])
        product = shifted @ one_step[:rows]  # Ω(i+k, i) up to the scale: one batched product
        frobenius = jnp.sqrt(jnp.sum(product * product, axis=(-2, -1)))
        # A product that is exactly zero (relu with all units off) stays zero, log −inf.
        diagonal = product / jnp.where(frobenius > 0, frobenius, 1)[..., None, None]
        log_scale = shifted_scale + jnp.log(frobenius)
        spectral = jnp.linalg.svd(diagonal, compute_uv=False)[..., 0]
        # Rows i >= T-k fall outside the triangle; mode="drop" discards them.
        at = (steps[:rows] + k, steps[:rows])
        log_spectral = log_spectral.at[at].set(log_scale + jnp.log(spectral), mode="drop")
        log_frobenius = log_frobenius.at[at].set(log_scale, mode="drop")
        return log_spectral, log_frobenius, diagonal, log_scale

    diagonal = jnp.broadcast_to(eye, (T, m, d, d))
    state = (log_spectral, log_frobenius, diagonal, jnp.zeros((T, m), dtype))
    for first, stop, active in diagonal_phases(T, max_lag):
        # Lag `first` has `active` = T − first rows inside the triangle; each reads the
        # next row of the previous lag, so the phase keeps one more.
        rows = active + 1
        log_spectral, log_frobenius, diagonal, log_scale = state
        state = (log_spectral, log_frobenius, diagonal[:rows], log_scale[:rows])
        state = lax.fori_loop(first, stop, functools.partial(fill, rows=rows), state)
    log_spectral, log_frobenius, _, _ = state
    return OmegaNorms(log_spectral, log_frobenius)


@compiled("activation", "layer", "direction", "max_lag", "log")
def omega_norms(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    direction: str | None = None,
    lengths: jax.Array | None = None,
    max_lag: int | None = None,
    log: bool = False,
) -> OmegaNorms:
    r"""Spectral and Frobenius norms of Ω(j, i) = ∂Z_j/∂Z_i, without the full triangle.

    For a GRU layer Ω(j, i) = ∂h_j/∂h_i, for an LSTM layer ∂(h_j, c_j)/∂(h_i, c_i), the
    Jacobian of the concatenated 2d-wide carry (h first): the norms say how much a
    perturbation of the whole state at step i (hidden and cell) survives at step j.

    The triangle is filled diagonal by diagonal with the DP transition of `omega_matrix`,
    keeping only the current diagonal (T, m, d, d): memory O(T²·m + T·m·d²) instead of
    O(T²·m·d²). Each diagonal is one batched product and one batched SVD (for the
    spectral norm) over all T rows, so the cost is O(T²·m·D³) — a diagnostic for
    moderate D (d, or 2d for an LSTM).

    Args:
        params: a `LayerParams`, `GRUParams`, `LSTMParams` or `BidirectionalParams`, or
            an `RNNParams` stack (see `layer`), with any mix of cells and of
            unidirectional and bidirectional layers.
        xs: inputs (T, m, n) of the network (of the layer, for a lone layer), or integer
            tokens (T, m).
        h0: initial state (m, d) of the inspected layer (direction), the pair (h0, c0)
            for an LSTM; zeros if None.
        activation: "tanh", "sigmoid" or "relu" (of Elman layers; gated cells fix theirs).
        layer: for an `RNNParams`, which recurrent layer (default the top one). Its
            inputs are what the network's own forward computes (`rnn_forward`).
        direction: for a bidirectional layer, "forward" or "backward" (required): the
            direction whose Ω is reported. The backward direction's Ω(j, i) =
            ∂Z←_j/∂Z←_i is non-zero for j ≤ i, so it fills the upper triangle.
        lengths: valid steps per sequence (m,) of a right-padded batch, or None. The
            padding is zeroed and the backward direction reversed within each length,
            as in `rnn_forward`; entries at a padded step (j or i ≥ lengths[v]) are NaN.
        max_lag: fill only lags j − i ≤ max_lag (all T − 1 if None).
        log: return natural logarithms of the norms. They are computed with a running
            scale (see the module docstring), so they stay finite where the norms
            themselves under- or overflow.

    Returns:
        `OmegaNorms(spectral, frobenius)`, each (T, T, m) indexed `[j, i, v]` like
        `omega_matrix`: the diagonal holds the identity's norms (1 and √D); entries
        that do not depend on each other (j < i; j > i for the backward direction),
        lags beyond `max_lag` and padded steps are NaN (log-scale heat maps leave them
        blank). A product that is exactly zero (relu) has norm 0 (log
        −inf). Non-finite inputs or parameters give NaN entries, never a finite wrong
        number. Not meant to be differentiated (the SVD of a zero matrix has no gradient).

    Raises:
        ValueError, TypeError: bad shapes, dtypes, `activation`, `layer`, `direction`
            (missing for a bidirectional layer), `lengths` or `max_lag`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> norms = omega_norms(layer, jnp.ones((5, 2, 3)))
        >>> norms.spectral.shape
        (5, 5, 2)
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4, bidirectional=True)
        >>> xs, lengths = jnp.ones((5, 2, 3)), jnp.array([5, 2])
        >>> backward = omega_norms(params, xs, direction="backward", lengths=lengths)
        >>> # Z←_0 depends on Z←_4 (upper triangle); step 4 of the 2nd sequence is padding.
        >>> bool(backward.spectral[0, 4, 0] > 0), bool(jnp.isnan(backward.spectral[0, 4, 1]))
        (True, True)
        >>> lstm = init_rnn(jax.random.key(0), 3, (8,), 4, cell="lstm")
        >>> norms = omega_norms(lstm, xs)  # of the carry (h, c): D = 2d = 16
        >>> norms.spectral.shape, round(float(norms.frobenius[1, 1, 0]), 4)  # √D
        ((5, 5, 2), 4.0)
    """
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, layer=layer, direction=direction, lengths=lengths
    )
    T = trajectory.hs.shape[0]
    last = check_max_lag(max_lag, T)
    logs = omega_log_norms_from_jacobians(one_step_jacobians(trajectory), last)
    logs = OmegaNorms(
        network_order(logs.spectral, trajectory), network_order(logs.frobenius, trajectory)
    )
    if log:
        return logs
    return OmegaNorms(jnp.exp(logs.spectral), jnp.exp(logs.frobenius))
