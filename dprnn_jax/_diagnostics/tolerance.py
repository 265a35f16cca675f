"""What `Omega(tol=ε)` did: how many diagonals the adaptive fill used
(docs/theory.md#adaptive-tolerance)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._backward.adaptive import adaptive_omega_error_flow
from .._backward.base import check_tol, check_truncation
from .._backward.jacobian import ElmanJacobian
from .._model.bidirectional import BidirectionalParams, reverse_padded
from .._validation import check_shape
from .trajectory import is_stack, layer_trajectory, require_elman, valid_steps


class ToleranceReport(NamedTuple):
    """What `tol` did in one layer's backward.

    Attributes:
        diagonals: K_eff, diagonals added (k ≥ 1).
        max_diagonals: what the exact (or truncated) fill would add: min(T−1, max_lag).
        last_relative_size: relative Frobenius size of the last diagonal added.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> report = tolerance_report(layer, jnp.ones((9, 1, 3)), jnp.ones((9, 1, 8)), tol=0.5)
        >>> 1 <= int(report.diagonals) <= report.max_diagonals
        True
    """

    diagonals: jax.Array
    max_diagonals: int
    last_relative_size: jax.Array


def tolerance_report(
    params,
    xs: jax.Array,
    hs_bar: jax.Array,
    h0: jax.Array | None = None,
    *,
    tol: float,
    activation: str = "tanh",
    truncation: int | None = None,
    direction: str | None = None,
    lengths: jax.Array | None = None,
) -> ToleranceReport:
    """Runs the backward of `rnn_layer(..., method=Omega(tol=tol))` and reports it.

    Args:
        params: one layer: a `LayerParams`, or a `BidirectionalParams` with `direction`
            (each direction runs its own adaptive fill). For a layer of an `RNNParams`
            stack pass `params.layers[l]`, its inputs and the cotangent of its output.
        xs: the layer's inputs (T, m, n), or integer tokens (T, m).
        hs_bar: the cotangent of the layer's output hs (T, m, d) — (T, m, d→ + d←) for a
            bidirectional layer — e.g. ∂C/∂hs from `jax.vjp` or, for the top layer,
            `∂C/∂outputs @ readout.W`.
        h0: initial state (m, d) of the layer (direction); zeros if None.
        tol: as in `rnn_layer`.
        activation: "tanh", "sigmoid" or "relu".
        truncation: as in `rnn_layer`.
        direction: for a bidirectional layer, "forward" or "backward" (required).
        lengths: valid steps per sequence (m,), or None: the padded inputs are zeroed
            and the backward direction reversed within each length, as in
            `bidirectional_layer`; the cotangent at padded steps is ignored.

    Returns:
        `ToleranceReport`.

    Raises:
        ValueError, TypeError: an `RNNParams` stack (pass one of its layers), bad
            shapes, dtypes, `tol`, `truncation` or `direction`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> xs = jnp.ones((9, 1, 3))
        >>> report = tolerance_report(layer, xs, jnp.ones((9, 1, 8)), tol=1e-3)
        >>> int(report.max_diagonals)
        8
    """
    if is_stack(params):
        raise ValueError(
            "tolerance_report looks at one layer's backward, got an RNNParams stack: pass "
            "params.layers[l] with that layer's inputs and the cotangent of its output."
        )
    if tol is None:
        raise ValueError("tol must be a non-negative float, got None.")
    tol, truncation = check_tol(tol), check_truncation(truncation)
    require_elman(params, "tolerance_report")
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, direction=direction, lengths=lengths
    )
    T, m, d = trajectory.hs.shape
    width = d
    if isinstance(params, BidirectionalParams):
        width = params.forward.S.shape[0] + params.backward.S.shape[0]
    check_shape("hs_bar", hs_bar, (T, m, width), "(T, m, d) = (time, batch, layer outputs)")
    if isinstance(params, BidirectionalParams):
        d_forward = params.forward.S.shape[0]
        if trajectory.backward:
            hs_bar = reverse_padded(hs_bar[..., d_forward:], trajectory.lengths)
        else:
            hs_bar = hs_bar[..., :d_forward]
    injected = hs_bar * trajectory.sigma_prime
    if trajectory.lengths is not None:
        # `where`: a NaN cotangent at a padded step must not survive as 0 · NaN.
        injected = jnp.where(valid_steps(trajectory)[..., None], injected, 0)
    flow = adaptive_omega_error_flow(
        injected,
        ElmanJacobian(trajectory.params.S, trajectory.sigma_prime),
        tol=tol,
        max_lag=truncation,
    )
    max_diagonals = T - 1 if truncation is None else min(truncation, T - 1)
    return ToleranceReport(flow.diagonals, max_diagonals, flow.last_relative_size)
