"""What `Omega(tol=ε)` did: how many diagonals the adaptive fill used
(docs/theory.md#adaptive-tolerance)."""

from __future__ import annotations

from typing import NamedTuple

import jax

from .._backward.adaptive import adaptive_omega_error_flow
from .._backward.base import check_tol, check_truncation
from .._backward.jacobian import ElmanJacobian
from .._model.activations import get_activation
from .._model.forward import hoisted_layer
from .._model.params import LayerParams
from .._validation import check_layer_inputs, check_shape


class ToleranceReport(NamedTuple):
    """What `tol` did in one layer's backward.

    Attributes:
        diagonals: K_eff, diagonals added (k ≥ 1).
        max_diagonals: what the exact (or truncated) fill would add: min(T−1, max_lag).
        last_relative_size: relative Frobenius size of the last diagonal added.
    """

    diagonals: jax.Array
    max_diagonals: int
    last_relative_size: jax.Array


def tolerance_report(
    params: LayerParams,
    xs: jax.Array,
    hs_bar: jax.Array,
    h0: jax.Array | None = None,
    *,
    tol: float,
    activation: str = "tanh",
    truncation: int | None = None,
) -> ToleranceReport:
    """Runs the backward of `rnn_layer(..., method=Omega(tol=tol))` and reports it.

    Args:
        params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs (T, m, n).
        hs_bar: the cotangent of the layer's output hs (T, m, d), e.g. ∂C/∂hs from
            `jax.vjp` or, for the top layer, `∂C/∂outputs @ readout.W`.
        h0: initial state (m, d); zeros if None.
        tol: as in `rnn_layer`.
        activation: "tanh", "sigmoid" or "relu".
        truncation: as in `rnn_layer`.

    Returns:
        `ToleranceReport`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 2, 4)
        >>> xs = jnp.ones((9, 1, 2))
        >>> report = tolerance_report(layer, xs, jnp.ones((9, 1, 4)), tol=1e-3)
        >>> int(report.max_diagonals)
        8
    """

    T, m, d, h0 = check_layer_inputs(params, xs, h0, activation=activation)
    if tol is None:
        raise ValueError("tol must be a non-negative float, got None.")
    tol, truncation = check_tol(tol), check_truncation(truncation)
    check_shape("hs_bar", hs_bar, (T, m, d), "(T, m, d) = (time, batch, hidden)")
    hs = hoisted_layer(params, xs, h0, activation=activation)
    sigma_prime = get_activation(activation).derivative_from_output(hs)
    flow = adaptive_omega_error_flow(
        hs_bar * sigma_prime, ElmanJacobian(params.S, sigma_prime), tol=tol, max_lag=truncation
    )
    max_diagonals = T - 1 if truncation is None else min(truncation, T - 1)
    return ToleranceReport(flow.diagonals, max_diagonals, flow.last_relative_size)
