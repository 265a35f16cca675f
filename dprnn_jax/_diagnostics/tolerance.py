"""What `Omega(tol=ε)` did: how many diagonals the adaptive fill used
(docs/theory.md#adaptive-tolerance)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._algorithms.adaptive import adaptive_omega_error_flow
from .._algorithms.base import check_tol, check_truncation
from .._core.validation import check_shape
from .._model.bidirectional import BidirectionalParams, reverse_padded
from .._model.layer_kinds import hidden_size
from .trajectory import is_stack, layer_trajectory, state_cotangent, valid_steps


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
    """Runs the backward of `method=Omega(tol=tol)` on one layer and reports it.

    The fill is the one the layer's backward runs: over Z for an Elman layer
    (`rnn_layer`), over the carry for a GRU (`h`) or an LSTM (`(h, c)`, 2d wide, whose
    injected error is `[h̄, 0]`: the consumers read h only), as `gru_layer`,
    `lstm_layer` and `scan_cell` run it.

    Args:
        params: one layer: a `LayerParams`, `GRUParams` or `LSTMParams`, or a
            `BidirectionalParams` with `direction` (each direction runs its own adaptive
            fill). For a layer of an `RNNParams` stack pass `params.layers[l]`, its
            inputs and the cotangent of its output.
        xs: the layer's inputs (T, m, n), or integer tokens (T, m).
        hs_bar: the cotangent of the layer's output hs (T, m, d) — (T, m, d→ + d←) for a
            bidirectional layer — e.g. ∂C/∂hs from `jax.vjp` or, for the top layer,
            `∂C/∂outputs @ readout.W`.
        h0: initial state (m, d) of the layer (direction), the pair `(h0, c0)` for an
            LSTM; zeros if None.
        tol: as in `rnn_layer`.
        activation: "tanh", "sigmoid" or "relu" (of an Elman layer; gated cells fix theirs).
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
        >>> lstm = init_lstm_layer(jax.random.key(0), 3, 8)  # the fill over (h, c)
        >>> int(tolerance_report(lstm, xs, jnp.ones((9, 1, 8)), tol=0.0).diagonals)
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
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, direction=direction, lengths=lengths
    )
    T, m, d = trajectory.hs.shape
    width = d
    if isinstance(params, BidirectionalParams):
        width = hidden_size(params.forward) + hidden_size(params.backward)
    check_shape("hs_bar", hs_bar, (T, m, width), "(T, m, d) = (time, batch, layer outputs)")
    if isinstance(params, BidirectionalParams):
        d_forward = hidden_size(params.forward)
        if trajectory.backward:
            hs_bar = reverse_padded(hs_bar[..., d_forward:], trajectory.lengths)
        else:
            hs_bar = hs_bar[..., :d_forward]
    if trajectory.lengths is not None:
        # `where`: a NaN cotangent at a padded step must not survive as 0 · NaN.
        hs_bar = jnp.where(valid_steps(trajectory)[..., None], hs_bar, 0)
    injected = state_cotangent(trajectory, hs_bar)
    flow = adaptive_omega_error_flow(injected, trajectory.jacobian, tol=tol, max_lag=truncation)
    max_diagonals = T - 1 if truncation is None else min(truncation, T - 1)
    return ToleranceReport(flow.diagonals, max_diagonals, flow.last_relative_size)
