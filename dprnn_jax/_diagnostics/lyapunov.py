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

`lyapunov_exponent` computes both, each with a standard error from the spread of its
per-sequence values over the batch, and says whether they agree (`consistent`, and
`LyapunovEstimate.caveat()` in words): finite-T estimates that disagree in sign, or by
more than two standard errors of their difference, had too few steps (or sequences) to
fit a decay rate. The default fit range is the same in the API and in `dprnn-jax omega`:
lags 1 … max(2, ⌊T/2⌋) (`default_max_lag`: longer lags are averaged over fewer
windows) and a QR burn-in of ⌊T/8⌋ steps (`default_burn_in`).

A derivation of BPTT (docs/references.md#bptt-derivation, its section 6) bounds the same
product by `‖Ω(i+k, i)‖ ≤ γ^k`, `γ = ‖S‖₂ · max σ'` (`decay_bound`): γ < 1 guarantees
vanishing gradients; γ > 1 only allows explosion.

For a GRU or LSTM layer the one-step Jacobians are the cell's, `J_{t+1} =
∂carry_{t+1}/∂carry_t` (`h`, or the concatenated `(h, c)` of an LSTM, 2d wide), so the
exponents are those of the carry and an LSTM has 2d of them. The decay bound of a gated
cell is the observed γ = max_t ‖J_t‖₂ (no bound of the form ‖S‖₂ · max σ' holds: the
gates multiply terms that depend on the state and the biases).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .omega_norms import omega_log_norms_from_jacobians
from .trajectory import (
    Trajectory,
    compiled,
    layer_trajectory,
    one_step_jacobians,
    time_and_batch,
    valid_steps,
)

# sup_z σ'(z) of each activation: the a-priori ξ of that derivation's bound.
SIGMA_PRIME_SUP: dict[str, float] = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0}

# Two estimates are consistent when they differ by at most this many standard errors of
# their difference (about a 95% interval for independent, normal errors).
AGREEMENT_STANDARD_ERRORS = 2.0


def default_max_lag(T: int) -> int:
    """The largest lag of the diagonal-decay fit when none is given: max(2, ⌊T/2⌋).

    Example:
        >>> default_max_lag(64), default_max_lag(3)
        (32, 2)
    """
    return max(2, T // 2)


def check_fit_lag(max_lag: object, T: int) -> int:
    """The largest lag K of the slope fit: `default_max_lag(T)` if None, else an int in
    [2, T − 1] (a slope needs two lags; a sequence of T steps has lags up to T − 1).

    Example:
        >>> check_fit_lag(None, 12), check_fit_lag(11, 12)
        (6, 11)
    """
    if max_lag is None:
        return default_max_lag(T)
    if (
        not isinstance(max_lag, int | np.integer)
        or isinstance(max_lag, bool)
        or not 2 <= max_lag <= T - 1
    ):
        raise ValueError(
            f"max_lag must be an int in [2, T - 1] = [2, {T - 1}]: a slope needs two lags and "
            f"T = {T} steps have lags up to {T - 1}; got max_lag = {max_lag!r}. Leave it out "
            f"for the default max(2, T // 2) = {default_max_lag(T)}."
        )
    return int(max_lag)


def default_burn_in(T: int) -> int:
    """The QR burn-in when none is given: ⌊T/8⌋ steps to align the frame.

    Example:
        >>> default_burn_in(64)
        8
    """
    return T // 8


class LyapunovEstimate(NamedTuple):
    """Largest Lyapunov exponent from the decay of ‖Ω(i+k, i)‖₂ along the diagonals, with
    the QR estimate of the same exponent and whether the two agree.

    Attributes:
        exponent: λ₁, the least-squares slope of `mean_log_norm` over lags k ≥ `min_lag`.
        lags: the lags k = 1 … K, shape (K,).
        mean_log_norm: mean over start steps i and samples of log‖Ω(i+k, i)‖₂ (valid
            steps only), shape (K,); NaN at a lag that no sequence is long enough for.
        per_lag: the per-lag estimate `mean_log_norm / k`, shape (K,).
        standard_error: of `exponent`: the standard deviation of the per-sequence slopes
            over √(number of sequences); NaN with fewer than two sequences.
        qr_exponent: λ₁ by QR re-orthonormalisation (`lyapunov_qr(...)[0]`, with the same
            `burn_in`).
        qr_standard_error: of `qr_exponent`, from the per-sequence QR averages likewise.
        consistent: True when both estimates have the same sign and differ by at most two
            standard errors of their difference; False otherwise, and when there is no
            standard error to judge by (one sequence). `caveat()` says why in words.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> xs = jax.random.normal(jax.random.key(1), (16, 2, 3))
        >>> estimate = lyapunov_exponent(layer, xs)
        >>> estimate.lags.shape, bool(estimate.consistent), estimate.caveat()
        ((8,), True, '')
    """

    exponent: jax.Array
    lags: jax.Array
    mean_log_norm: jax.Array
    per_lag: jax.Array
    standard_error: jax.Array
    qr_exponent: jax.Array
    qr_standard_error: jax.Array
    consistent: jax.Array

    def caveat(self) -> str:
        """Why the estimate should not be trusted, in one sentence; "" when the
        diagonal-decay and QR estimates agree (see the class's example). Reads concrete
        values (not under `jit`).
        """
        if bool(self.consistent):
            return ""
        diagonal, qr = float(self.exponent), float(self.qr_exponent)
        error, qr_error = float(self.standard_error), float(self.qr_standard_error)
        estimates = (
            f"λ₁ = {diagonal:.3g} ± {error:.2g} (diagonal decay) and {qr:.3g} ± {qr_error:.2g} (QR)"
        )
        if not (math.isfinite(diagonal) and math.isfinite(qr)):
            means = np.asarray(self.mean_log_norm, np.float64)
            if np.isnan(means).all():
                why = (
                    "no lag could be averaged: no sequence has two valid steps, or the "
                    "states are not finite"
                )
            elif np.isneginf(means).any() or qr == -math.inf:
                why = (
                    "some Ω(i+k, i) is exactly zero on this trajectory (every unit "
                    "saturated or switched off)"
                )
            else:
                why = "some Ω(i+k, i) is not finite on this trajectory (a diverged network)"
            return (
                f"λ₁ = {diagonal:.3g} (diagonal decay) and {qr:.3g} (QR) are not finite: "
                f"{why}, so no decay rate can be fitted."
            )
        if not (math.isfinite(error) and math.isfinite(qr_error)):
            estimates = f"λ₁ = {diagonal:.3g} (diagonal decay) and {qr:.3g} (QR)"
            return (
                f"{estimates} cannot be compared: no standard error with fewer than two "
                "sequences (or two fitted lags per sequence); analyse more sequences, or "
                "longer ones."
            )
        how = "in sign" if (diagonal > 0) != (qr > 0) else "by more than two standard errors"
        return (
            f"{estimates} disagree {how}: too few steps (or sequences) to fit a decay rate; "
            "use longer sequences, more of them, or a fit range that skips the transient "
            "(min_lag, burn_in)."
        )


class DecayBound(NamedTuple):
    """The decay bound ‖Ω(i+k, i)‖₂ ≤ γ^k, γ = ‖S‖₂ · max σ' (docs/diagnostics.md#lyapunov).

    Attributes:
        gamma: γ with the largest σ' observed on this trajectory (the tighter bound); for
            a GRU or LSTM layer, the largest one-step ‖J_t‖₂ observed.
        gamma_a_priori: γ with sup σ' of the activation (1 for tanh and relu, 1/4 for
            sigmoid): holds for every input. NaN for a gated layer (none is known).
        spectral_norm_S: ‖S‖₂; NaN for a gated layer, whose stacked gate blocks
            ((3d, d) or (4d, d)) enter no bound.
        max_sigma_prime: the largest σ'(Z_t) entry over steps, samples and units; NaN for
            a gated layer.

    `gamma` and `max_sigma_prime` are NaN when no Jacobian lies between two valid steps
    (T = 1, or every length ≤ 1): nothing is bounded there.

    Example:
        >>> bound = decay_bound(init_layer(jax.random.key(0), 3, 8), jnp.ones((5, 2, 3)))
        >>> round(float(bound.spectral_norm_S), 4), bool(bound.gamma_a_priori >= bound.gamma)
        (1.0, True)
    """

    gamma: jax.Array
    gamma_a_priori: jax.Array
    spectral_norm_S: jax.Array
    max_sigma_prime: jax.Array


def log_norm_sums_per_lag(
    log_norms: jax.Array, max_lag: int, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Sums and counts (K, m) of a run-order (T, T, m) log-norm triangle per lag
    k = 1 … K and sample, over the start steps i whose window i … i+k is valid."""
    T, _, m = log_norms.shape
    j, i = jnp.meshgrid(jnp.arange(T), jnp.arange(T), indexing="ij")
    lag = j - i
    inside = (lag >= 1) & (lag <= max_lag)
    # In run order the valid steps are a prefix, so a valid j makes every i < j valid.
    counted = inside[..., None] & valid[:, None, :]
    # One segment sum over lags instead of max_lag diagonal extractions.
    bucket = jnp.where(inside, lag, 0).reshape(-1)
    values = jnp.where(counted, log_norms, 0).reshape(-1, m)
    sums = jnp.zeros((max_lag + 1, m), log_norms.dtype).at[bucket].add(values)
    counts = (
        jnp.zeros((max_lag + 1, m), log_norms.dtype)
        .at[bucket]
        .add(counted.reshape(-1, m).astype(log_norms.dtype))
    )
    return sums[1:], counts[1:]


def _slope(x: jax.Array, y: jax.Array, fitted: jax.Array) -> jax.Array:
    """Least-squares slope of y over x on the entries where `fitted` (NaN below two)."""
    n = fitted.sum()
    x_mean = jnp.where(fitted, x, 0).sum() / n
    y_mean = jnp.where(fitted, y, 0).sum() / n
    centred = jnp.where(fitted, x - x_mean, 0)
    return jnp.sum(centred * jnp.where(fitted, y - y_mean, 0)) / jnp.sum(centred * centred)


def _standard_error(values: jax.Array, usable: jax.Array) -> jax.Array:
    """Standard error of the mean of `values` over the usable entries (NaN below two)."""
    n = usable.sum()
    mean = jnp.where(usable, values, 0).sum() / n
    variance = jnp.where(usable, (values - mean) ** 2, 0).sum() / (n - 1)
    return jnp.where(n >= 2, jnp.sqrt(variance / n), jnp.nan)


def _check_burn_in(burn_in: object, T: int) -> int:
    if burn_in is None:
        burn_in = default_burn_in(T)
    if not isinstance(burn_in, int) or isinstance(burn_in, bool) or not 0 <= burn_in <= T - 2:
        raise ValueError(
            f"lyapunov_qr averages the T - 1 - burn_in Jacobians after the burn-in, so it needs "
            f"0 <= burn_in <= T - 2 = {T - 2}; got burn_in = {burn_in!r} with T = {T}."
        )
    return burn_in


def qr_log_growth(
    trajectory: Trajectory, one_step: jax.Array, burn_in: int
) -> tuple[jax.Array, jax.Array]:
    """`log|R_t[a, a]|` (T−1, m, d) of Benettin's algorithm and the (T−1, m) mask of the
    steps averaged: after the burn-in, Jacobians Ω(t+1, t) between two valid steps."""
    m, d = one_step.shape[1], one_step.shape[-1]
    # Ω(t+1, t) for t = 0 … T-2: the last step's σ' has no successor.
    jacobians = one_step[:-1]

    def step(frame, jacobian):
        frame, r = jnp.linalg.qr(jacobian @ frame)
        return frame, jnp.log(jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1)))

    eye = jnp.broadcast_to(jnp.eye(d, dtype=jacobians.dtype), (m, d, d))
    _, log_growth = lax.scan(step, eye, jacobians)
    averaged = valid_steps(trajectory)[1:] & (jnp.arange(log_growth.shape[0]) >= burn_in)[:, None]
    return log_growth, averaged


def _weighted_mean(values: jax.Array, weights: jax.Array, axis) -> jax.Array:
    return jnp.where(weights, values, 0).sum(axis=axis) / weights.sum(axis=axis)


@compiled("activation", "layer", "direction", "max_lag", "min_lag", "burn_in")
def lyapunov_exponent(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    direction: str | None = None,
    lengths: jax.Array | None = None,
    max_lag: int | None = None,
    min_lag: int = 1,
    burn_in: int | None = None,
) -> LyapunovEstimate:
    r"""Largest Lyapunov exponent of a layer from the decay of ‖Ω(i+k, i)‖₂ with k.

    .. math::

        \overline{\log‖Ω‖}(k) = \frac{1}{(T-k)\,m} \sum_{i, v} \log ‖Ω_v(i+k, i)‖_2
        \approx λ_1 k + c, \qquad λ_1 = \text{slope of } \overline{\log‖Ω‖}(k).

    λ₁ < 0: gradients vanish like e^{λ₁ k}; λ₁ > 0: they explode. The logs come from
    `omega_norms(..., log=True)`, so long lags neither under- nor overflow. The QR
    estimate (`lyapunov_qr`) is computed alongside as an independent check; see
    `LyapunovEstimate.consistent`.

    Args:
        params: a `LayerParams`, `GRUParams`, `LSTMParams` or `BidirectionalParams`, or
            an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n), or integer tokens (T, m).
        h0: initial state (m, d) of the inspected layer (direction), the pair (h0, c0)
            for an LSTM; zeros if None.
        activation: "tanh", "sigmoid" or "relu" (of Elman layers; gated cells fix theirs).
        layer: for an `RNNParams`, which recurrent layer (default the top one).
        direction: for a bidirectional layer, "forward" or "backward" (required); the
            backward direction's lags run backward in time.
        lengths: valid steps per sequence (m,) of a right-padded batch, or None: only
            windows i … i+k inside a sequence's own length are averaged.
        max_lag: the largest lag K used, in [2, T − 1]; default `default_max_lag(T)` =
            max(2, ⌊T/2⌋),
            as in `dprnn-jax omega` (long lags are averaged over fewer windows, T − k of
            them, so they are noisy).
        min_lag: the smallest lag in the slope fit (default 1); raise it to skip an
            initial transient.
        burn_in: leading steps of the QR estimate left out of its average; default
            `default_burn_in(T)` = ⌊T/8⌋, as in `dprnn-jax omega`.

    Returns:
        `LyapunovEstimate`. With relu, a product that is exactly zero has log-norm −inf
        and so has every mean that includes it.

    Raises:
        ValueError: T < 3 (a slope needs two lags), `max_lag` not in [2, T − 1],
            `min_lag` not in [1, K − 1], `burn_in` not in [0, T − 2], and the errors of
            `omega_norms`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> xs = jax.random.normal(jax.random.key(1), (16, 2, 3))
        >>> estimate = lyapunov_exponent(layer, xs)  # lags 1 … 8 = T/2
        >>> estimate.per_lag.shape, bool(estimate.exponent < 0)
        ((8,), True)
    """
    # Options first (cheap, static): a mistake should not cost a forward pass.
    T = time_and_batch(xs)[0]
    if T < 3:
        raise ValueError(
            f"lyapunov_exponent needs T >= 3 steps to fit a slope over two lags, got T = {T}."
        )
    last = check_fit_lag(max_lag, T)
    if not isinstance(min_lag, int) or isinstance(min_lag, bool) or not 1 <= min_lag < last:
        raise ValueError(
            f"min_lag must be an int in [1, {last - 1}] (below max_lag = {last}), got {min_lag!r}."
        )
    burn_in = _check_burn_in(burn_in, T)
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, layer=layer, direction=direction, lengths=lengths
    )
    one_step = one_step_jacobians(trajectory)
    log_norms = omega_log_norms_from_jacobians(one_step, last).spectral
    return estimate_from_log_norms(
        trajectory, one_step, log_norms, last=last, min_lag=min_lag, burn_in=burn_in
    )


def estimate_from_log_norms(
    trajectory: Trajectory,
    one_step: jax.Array,
    log_norms: jax.Array,
    *,
    last: int,
    min_lag: int,
    burn_in: int,
) -> LyapunovEstimate:
    """`lyapunov_exponent`'s estimate from the run-order log-norms (T, T, m) of lags
    1 … `last` (longer lags, if filled, are ignored) and the one-step Jacobians, for a
    caller that has the norms already (`dprnn-jax omega`'s report). The caller checks
    `last`, `min_lag` and `burn_in` as `lyapunov_exponent` does."""
    sums, counts = log_norm_sums_per_lag(log_norms, last, valid_steps(trajectory))
    mean_log_norm = sums.sum(axis=-1) / counts.sum(axis=-1)
    lags = jnp.arange(1, last + 1, dtype=mean_log_norm.dtype)
    in_range = lags >= min_lag
    exponent = _slope(lags, mean_log_norm, in_range & (counts.sum(axis=-1) > 0))
    # The same fit per sequence: their spread over the batch gives the standard error.
    sample_fitted = in_range[:, None] & (counts > 0)
    sample_slopes = jax.vmap(_slope, in_axes=(None, 1, 1))(lags, sums / counts, sample_fitted)
    standard_error = _standard_error(sample_slopes, sample_fitted.sum(axis=0) >= 2)

    log_growth, averaged = qr_log_growth(trajectory, one_step, burn_in)
    spectrum = _weighted_mean(log_growth, averaged[..., None], axis=(0, 1))
    top = jnp.argmax(spectrum)
    qr_samples = _weighted_mean(log_growth[..., top], averaged, axis=0)
    qr_standard_error = _standard_error(qr_samples, averaged.sum(axis=0) >= 1)
    qr_exponent = spectrum[top]

    same_sign = jnp.sign(exponent) == jnp.sign(qr_exponent)
    difference = jnp.abs(exponent - qr_exponent)
    combined = jnp.sqrt(standard_error**2 + qr_standard_error**2)
    consistent = same_sign & (difference <= AGREEMENT_STANDARD_ERRORS * combined)
    return LyapunovEstimate(
        exponent,
        lags,
        mean_log_norm,
        mean_log_norm / lags,
        standard_error,
        qr_exponent,
        qr_standard_error,
        consistent,
    )


@compiled("activation", "layer", "direction", "burn_in")
def lyapunov_qr(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    direction: str | None = None,
    lengths: jax.Array | None = None,
    burn_in: int | None = None,
) -> jax.Array:
    """Lyapunov spectrum of a layer by QR re-orthonormalisation (Benettin's algorithm).

    scan :: (Q_t (m, d, d), Ω(t+1, t)) -> Q_{t+1}, with `Ω(t+1, t) Q_t = Q_{t+1} R_t`
    and `λ_a = mean over t ≥ B and samples of log|R_t[a, a]|`, one trajectory per
    sample. The frame stays orthonormal, so nothing under- or overflows. The first
    B = `burn_in` steps only align the frame with the growing directions: counting them
    biases the estimate by O(1/T) (the frame starts as the identity, not along the most
    expanding direction).

    Args:
        params: a `LayerParams`, `GRUParams`, `LSTMParams` or `BidirectionalParams`, or
            an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n), or integer tokens (T, m).
        h0: initial state (m, d) of the inspected layer (direction), the pair (h0, c0)
            for an LSTM; zeros if None.
        activation: "tanh", "sigmoid" or "relu" (of Elman layers; gated cells fix theirs).
        layer: for an `RNNParams`, which recurrent layer (default the top one).
        direction: for a bidirectional layer, "forward" or "backward" (required).
        lengths: valid steps per sequence (m,) of a right-padded batch, or None: only
            the Jacobians between two valid steps of a sequence are averaged.
        burn_in: leading steps propagated but left out of the average; default
            `default_burn_in(T)` = ⌊T/8⌋, as in `lyapunov_exponent` and `dprnn-jax omega`.

    Returns:
        The D exponents, largest first, shape (D,); `[0]` is λ₁. D = d, or 2d for an
        LSTM layer (the exponents of its carry (h, c)).

    Raises:
        ValueError: `burn_in` not in [0, T − 2] (at least one Jacobian must be
            averaged), and the errors of `omega_norms`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> lyapunov_qr(layer, jax.random.normal(jax.random.key(1), (16, 2, 3))).shape
        (8,)
    """
    burn_in = _check_burn_in(burn_in, time_and_batch(xs)[0])
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, layer=layer, direction=direction, lengths=lengths
    )
    log_growth, averaged = qr_log_growth(trajectory, one_step_jacobians(trajectory), burn_in)
    exponents = _weighted_mean(log_growth, averaged[..., None], axis=(0, 1))
    return jnp.sort(exponents)[::-1]


@compiled("activation", "layer", "direction")
def decay_bound(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    direction: str | None = None,
    lengths: jax.Array | None = None,
) -> DecayBound:
    """γ of the decay bound `‖Ω(i+k, i)‖₂ ≤ γ^k` (hence `‖G(i+k, i)‖ ≤ ‖P_{i+k}‖ γ^k`).

    Each factor obeys `‖S diag(σ'(Z_t))‖₂ ≤ ‖S‖₂ max σ'(Z_t)`, and the norm of a
    product is at most the product of the norms. With the observed max σ' the bound
    holds for this trajectory; with the activation's sup it holds for every input. For
    a GRU or LSTM layer γ is the largest one-step norm ‖J_t‖₂ observed on this
    trajectory (the bound holds for it), and the Elman-only fields (`gamma_a_priori`,
    `spectral_norm_S`, `max_sigma_prime`) are NaN.

    Args:
        params: a `LayerParams`, `GRUParams`, `LSTMParams` or `BidirectionalParams`, or
            an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n), or integer tokens (T, m).
        h0: initial state (m, d) of the inspected layer (direction), the pair (h0, c0)
            for an LSTM; zeros if None.
        activation: "tanh", "sigmoid" or "relu" (of Elman layers; gated cells fix theirs).
        layer: for an `RNNParams`, which recurrent layer (default the top one).
        direction: for a bidirectional layer, "forward" or "backward" (required).
        lengths: valid steps per sequence (m,), or None: the max σ' is taken over the
            steps that enter a Jacobian between two valid steps.

    Returns:
        `DecayBound(gamma, gamma_a_priori, spectral_norm_S, max_sigma_prime)`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> bound = decay_bound(layer, jnp.ones((5, 2, 3)))
        >>> bool(bound.gamma <= bound.gamma_a_priori)
        True
    """
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, layer=layer, direction=direction, lengths=lengths
    )
    if trajectory.sigma_prime is None:
        return _gated_decay_bound(trajectory)
    spectral_norm_S = jnp.linalg.norm(trajectory.params.S, ord=2)
    # Only steps t with a valid successor enter a Jacobian Ω(t+1, t); σ' ≥ 0, so 0 is
    # the neutral element of the max. With no Jacobian at all, nothing is bounded: NaN.
    entering = valid_steps(trajectory)[1:, :, None]
    sigma_prime = jnp.where(entering, trajectory.sigma_prime[:-1], 0)
    max_sigma_prime = _max_or_nan(sigma_prime, entering, spectral_norm_S)
    return DecayBound(
        spectral_norm_S * max_sigma_prime,
        spectral_norm_S * SIGMA_PRIME_SUP[activation],
        spectral_norm_S,
        max_sigma_prime,
    )


def _max_or_nan(values: jax.Array, entering: jax.Array, like: jax.Array) -> jax.Array:
    """The max of `values` (zeros where not `entering`), NaN when nothing enters."""
    if not values.size:
        return jnp.full_like(like, jnp.nan)
    return jnp.where(entering.any(), values.max(), jnp.nan).astype(like.dtype)


def _gated_decay_bound(trajectory: Trajectory) -> DecayBound:
    """γ = max_t ‖J_t‖₂ of a gated layer over the Jacobians between two valid steps; the
    fields of the Elman bound ‖S‖₂ · max σ' are NaN (‖S‖₂ of the stacked gate blocks
    bounds nothing)."""
    one_step = one_step_jacobians(trajectory)[:-1]
    nan = jnp.full((), jnp.nan, trajectory.params.W.dtype)
    if not one_step.size:  # T = 1: no Jacobian at all
        return DecayBound(nan, nan, nan, nan)
    norms = jnp.linalg.svd(one_step, compute_uv=False)[..., 0]
    entering = valid_steps(trajectory)[1:]
    # Norms are ≥ 0, so 0 is the neutral element of the max; no Jacobian at all: NaN.
    gamma = _max_or_nan(jnp.where(entering, norms, 0), entering, nan)
    return DecayBound(gamma, nan, nan, nan)
