r"""How fast gradients vanish or explode: Lyapunov exponents and the γ^{t−k} bound.

The error at step i that comes from step j = i + k is `P_j Ω(i+k, i)`, a product of k
one-step Jacobians `Ω(t+1, t) = S diag(σ'(Z_t))`. Two ways to measure its growth:

* **Decay along the diagonals of Ω** (`lyapunov_exponent`): the mean over start steps
  i and samples of `log‖Ω(i+k, i)‖₂` grows like `λ₁ k + c` (Oseledets), so its slope in
  k estimates the largest Lyapunov exponent λ₁ (Pascanu, Mikolov & Bengio 2013 view
  vanishing/exploding gradients exactly this way). The per-lag estimate
  `(1/k) log‖Ω(i+k, i)‖₂` has the same limit but carries the offset c/k.
* **QR re-orthonormalisation** (`lyapunov_qr`), the textbook algorithm (Benettin et
  al. 1980; Eckmann & Ruelle 1985): propagate an orthonormal frame through the
  Jacobians, re-orthonormalise it with a QR factorisation at every step and average
  `log|R_kk|`. It never forms Ω, so it is an independent check of the diagonal fill.

A derivation of BPTT (docs/references.md#bptt-derivation, its section 6) bounds the same
product by `‖Ω(i+k, i)‖ ≤ γ^k`, `γ = ‖S‖₂ · max σ'` (`decay_bound`): γ < 1 guarantees
vanishing gradients; γ > 1 only allows explosion.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import check_sequence
from .omega_norms import check_max_lag, omega_log_norms_from_jacobians
from .trajectory import layer_trajectory, one_step_jacobians

# sup_z σ'(z) of each activation: the a-priori ξ of that derivation's bound.
SIGMA_PRIME_SUP: dict[str, float] = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}


class LyapunovEstimate(NamedTuple):
    """Largest Lyapunov exponent from the decay of ‖Ω(i+k, i)‖₂ along the diagonals.

    Attributes:
        exponent: λ₁, the least-squares slope of `mean_log_norm` over lags k ≥ `min_lag`.
        lags: the lags k = 1 … K, shape (K,).
        mean_log_norm: mean over i and samples of log‖Ω(i+k, i)‖₂, shape (K,).
        per_lag: the per-lag estimate `mean_log_norm / k`, shape (K,).
    """

    exponent: jax.Array
    lags: jax.Array
    mean_log_norm: jax.Array
    per_lag: jax.Array


class DecayBound(NamedTuple):
    """The decay bound ‖Ω(i+k, i)‖₂ ≤ γ^k, γ = ‖S‖₂ · max σ' (docs/diagnostics.md#lyapunov).

    Attributes:
        gamma: γ with the largest σ' observed on this trajectory (the tighter bound).
        gamma_a_priori: γ with sup σ' of the activation (1 for tanh and relu, 1/4 for
            sigmoid): holds for every input.
        spectral_norm_S: ‖S‖₂.
        max_sigma_prime: the largest σ'(Z_t) entry over steps, samples and units.
    """

    gamma: jax.Array
    gamma_a_priori: jax.Array
    spectral_norm_S: jax.Array
    max_sigma_prime: jax.Array


def mean_log_norm_per_lag(log_norms: jax.Array, max_lag: int) -> jax.Array:
    """Mean over i and samples of a (T, T, m) log-norm triangle, per lag k = 1 … max_lag."""
    T = log_norms.shape[0]
    j, i = jnp.meshgrid(jnp.arange(T), jnp.arange(T), indexing="ij")
    lag = j - i
    inside = (lag >= 1) & (lag <= max_lag)
    # One segment sum over lags instead of max_lag diagonal extractions.
    bucket = jnp.where(inside, lag, 0).reshape(-1)
    values = jnp.where(inside[..., None], log_norms, 0).sum(axis=-1).reshape(-1)
    sums = jnp.zeros(max_lag + 1, log_norms.dtype).at[bucket].add(values)
    counts = (T - jnp.arange(max_lag + 1)) * log_norms.shape[-1]
    return sums[1:] / counts[1:].astype(log_norms.dtype)


def lyapunov_exponent(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    max_lag: int | None = None,
    min_lag: int = 1,
) -> LyapunovEstimate:
    r"""Largest Lyapunov exponent of a layer from the decay of ‖Ω(i+k, i)‖₂ with k.

    .. math::

        \overline{\log‖Ω‖}(k) = \frac{1}{(T-k)\,m} \sum_{i, v} \log ‖Ω_v(i+k, i)‖_2
        \approx λ_1 k + c, \qquad λ_1 = \text{slope of } \overline{\log‖Ω‖}(k).

    λ₁ < 0: gradients vanish like e^{λ₁ k}; λ₁ > 0: they explode. The logs come from
    `omega_norms(..., log=True)`, so long lags neither under- nor overflow.

    Args:
        params: a `LayerParams`, or an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n).
        h0: initial state (m, d) of the inspected layer; zeros if None.
        activation: "tanh", "sigmoid" or "relu".
        layer: for an `RNNParams`, which recurrent layer (default the top one).
        max_lag: the largest lag K used (default T − 1). Long lags are averaged over
            fewer windows (T − k of them); K ≈ T/2 trades bias for noise well.
        min_lag: the smallest lag in the slope fit (default 1); raise it to skip an
            initial transient.

    Returns:
        `LyapunovEstimate`. With relu, a product that is exactly zero has log-norm −inf
        and so has every mean that includes it.

    Raises:
        ValueError: T < 3 (a slope needs two lags), `min_lag` not in [1, K − 1], and the
            errors of `omega_norms`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 2, 8)
        >>> xs = jax.random.normal(jax.random.key(1), (64, 4, 2))
        >>> estimate = lyapunov_exponent(layer, xs, max_lag=32)
        >>> estimate.per_lag.shape
        (32,)
    """
    # Options first (cheap, static): a mistake should not cost a forward pass.
    T = check_sequence("xs", xs)[0]
    if T < 3:
        raise ValueError(
            f"lyapunov_exponent needs T >= 3 steps to fit a slope over two lags, got T = {T}."
        )
    last = check_max_lag(max_lag, T)
    if not isinstance(min_lag, int) or isinstance(min_lag, bool) or not 1 <= min_lag < last:
        raise ValueError(
            f"min_lag must be an int in [1, {last - 1}] (below max_lag = {last}), got {min_lag!r}."
        )
    trajectory = layer_trajectory(params, xs, h0, activation=activation, layer=layer)
    log_norms = omega_log_norms_from_jacobians(one_step_jacobians(trajectory), last).spectral
    mean_log_norm = mean_log_norm_per_lag(log_norms, last)
    lags = jnp.arange(1, last + 1, dtype=mean_log_norm.dtype)
    fit_lags, fit_values = lags[min_lag - 1 :], mean_log_norm[min_lag - 1 :]
    centred = fit_lags - fit_lags.mean()
    slope = jnp.sum(centred * (fit_values - fit_values.mean())) / jnp.sum(centred * centred)
    return LyapunovEstimate(slope, lags, mean_log_norm, mean_log_norm / lags)


def lyapunov_qr(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    burn_in: int = 0,
) -> jax.Array:
    """Lyapunov spectrum of a layer by QR re-orthonormalisation (Benettin's algorithm).

    scan :: (Q_t (m, d, d), Ω(t+1, t)) -> Q_{t+1}, with `Ω(t+1, t) Q_t = Q_{t+1} R_t`
    and `λ_a = (1/(T−1−B)) Σ_{t ≥ B} log|R_t[a, a]|`, one trajectory per sample, then
    averaged over the batch. The frame stays orthonormal, so nothing under- or
    overflows. The first B = `burn_in` steps only align the frame with the growing
    directions: counting them biases the estimate by O(1/T) (the frame starts as the
    identity, not along the most expanding direction).

    Args:
        params: a `LayerParams`, or an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n).
        h0: initial state (m, d) of the inspected layer; zeros if None.
        activation: "tanh", "sigmoid" or "relu".
        layer: for an `RNNParams`, which recurrent layer (default the top one).
        burn_in: leading steps propagated but left out of the average (default 0).

    Returns:
        The d exponents, largest first, shape (d,); `[0]` is λ₁.

    Raises:
        ValueError: `burn_in` not in [0, T − 2] (at least one Jacobian must be
            averaged), and the errors of `omega_norms`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 2, 8)
        >>> lyapunov_qr(layer, jax.random.normal(jax.random.key(1), (64, 4, 2))).shape
        (8,)
    """
    T = check_sequence("xs", xs)[0]
    if not isinstance(burn_in, int) or isinstance(burn_in, bool) or not 0 <= burn_in <= T - 2:
        raise ValueError(
            f"lyapunov_qr averages the T - 1 - burn_in Jacobians after the burn-in, so it needs "
            f"0 <= burn_in <= T - 2 = {T - 2}; got burn_in = {burn_in!r} with T = {T}."
        )
    trajectory = layer_trajectory(params, xs, h0, activation=activation, layer=layer)
    _, m, d = trajectory.hs.shape
    # Ω(t+1, t) for t = 0 … T-2: the last step's σ' has no successor.
    jacobians = one_step_jacobians(trajectory)[:-1]

    def step(frame, jacobian):
        frame, r = jnp.linalg.qr(jacobian @ frame)
        return frame, jnp.log(jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1)))

    eye = jnp.broadcast_to(jnp.eye(d, dtype=jacobians.dtype), (m, d, d))
    _, log_growth = lax.scan(step, eye, jacobians)  # (T-1, m, d)
    exponents = log_growth[burn_in:].mean(axis=(0, 1))
    return jnp.sort(exponents)[::-1]


def decay_bound(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
) -> DecayBound:
    """γ of the decay bound `‖Ω(i+k, i)‖₂ ≤ γ^k` (hence `‖G(i+k, i)‖ ≤ ‖P_{i+k}‖ γ^k`).

    Each factor obeys `‖S diag(σ'(Z_t))‖₂ ≤ ‖S‖₂ max σ'(Z_t)`, and the norm of a
    product is at most the product of the norms. With the observed max σ' the bound
    holds for this trajectory; with the activation's sup it holds for every input.

    Args:
        params: a `LayerParams`, or an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n).
        h0: initial state (m, d) of the inspected layer; zeros if None.
        activation: "tanh", "sigmoid" or "relu".
        layer: for an `RNNParams`, which recurrent layer (default the top one).

    Returns:
        `DecayBound(gamma, gamma_a_priori, spectral_norm_S, max_sigma_prime)`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 2, 8)
        >>> bound = decay_bound(layer, jnp.ones((16, 1, 2)))
        >>> bool(bound.gamma <= bound.gamma_a_priori)
        True
    """
    trajectory = layer_trajectory(params, xs, h0, activation=activation, layer=layer)
    spectral_norm_S = jnp.linalg.norm(trajectory.params.S, ord=2)
    # Only steps 0 … T-2 enter a Jacobian Ω(t+1, t).
    sigma_prime = trajectory.sigma_prime[:-1]
    max_sigma_prime = sigma_prime.max() if sigma_prime.size else jnp.zeros_like(spectral_norm_S)
    return DecayBound(
        spectral_norm_S * max_sigma_prime,
        spectral_norm_S * SIGMA_PRIME_SUP[activation],
        spectral_norm_S,
        max_sigma_prime,
    )
