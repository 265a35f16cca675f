"""One recurrent layer with a `jax.custom_vjp` whose backward is chosen by `method`.

The forward (`_forward.hoisted_layer`) is the same for every custom method. The
backward computes the total errors Δ_t = ∂C/∂Z_t with the selected algorithm
(`_omega`, `_bptt`, `_naive`, `_parallel_scan`, and with options `_truncated_bptt`,
`_adaptive`) and then every gradient with one contraction each (seed 000's full-matrix
table); `method="rtrl"` instead accumulates the parameter gradients forward in time
(`_rtrl`). `method="autodiff"` bypasses the custom rule and lets `jax.grad`
differentiate the plain `lax.scan`: the reference the others are tested against.

Integer inputs (T, m) are token indices (`_tokens`): the same rule with the input
projection a column lookup and ∂C/∂W a scatter-add.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._model.activations import get_activation
from .._model.forward import hoisted_layer, scan_layer
from .._model.params import LayerParams
from .._model.tokens import (
    check_token_inputs,
    is_token_input,
    token_hoisted_layer,
    token_scan_layer,
    token_weight_gradient,
)
from .._validation import check_choice, check_layer_inputs
from .adaptive import adaptive_omega_error_flow
from .blocked import blocked_error_flow, check_block_option
from .bptt import bptt_error_flow
from .error_flow import ErrorFlow, sum_over_steps
from .naive import naive_error_flow
from .omega import omega_error_flow
from .parallel_scan import scan_error_flow
from .rtrl import rtrl_layer_gradients
from .truncated_bptt import truncated_bptt_error_flow

ErrorFlowFn = Callable[[jax.Array, jax.Array, jax.Array], ErrorFlow]

ERROR_FLOWS: dict[str, ErrorFlowFn] = {
    "omega": omega_error_flow,
    "bptt": bptt_error_flow,
    "naive": naive_error_flow,
}
METHODS: tuple[str, ...] = (*ERROR_FLOWS, "scan", "rtrl", "autodiff")
# Which methods take which option (validated by `check_gradient_options`).
TRUNCATION_METHODS: tuple[str, ...] = ("omega", "bptt")
TOL_METHODS: tuple[str, ...] = ("omega",)


class LayerConfig(NamedTuple):
    """Static options of the custom backward; hashable, so they key the compiled program."""

    method: str
    activation: str
    truncation: int | None = None
    tol: float | None = None
    block: int | None = None


class _Residuals(NamedTuple):
    """What the backward needs: the primal inputs and the stored states h_t = σ(Z_t)."""

    params: LayerParams
    xs: jax.Array
    h0: jax.Array
    hs: jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer(config: LayerConfig, params: LayerParams, xs: jax.Array, h0: jax.Array) -> jax.Array:
    return _forward(config, params, xs, h0)


def _forward(config, params, xs, h0):
    forward = token_hoisted_layer if is_token_input(xs) else hoisted_layer
    return forward(params, xs, h0, activation=config.activation)


def _layer_fwd(config, params, xs, h0):
    hs = _forward(config, params, xs, h0)
    return hs, _Residuals(params, xs, h0, hs)


def total_error(
    config: LayerConfig, injected: jax.Array, sigma_prime: jax.Array, S: jax.Array
) -> jax.Array:
    """Δ_i = P_i + Σ_{0<j−i≤K} P_j Ω(j, i) by `config`'s method and options (DESIGN.md §3)."""
    method, truncation = config.method, config.truncation
    if method == "omega" and config.block is not None:
        flow = blocked_error_flow(injected, sigma_prime, S, block=config.block)
    elif method == "omega" and config.tol is not None:
        flow = adaptive_omega_error_flow(
            injected, sigma_prime, S, tol=config.tol, max_lag=truncation
        )
    elif method == "omega":
        flow = omega_error_flow(injected, sigma_prime, S, max_lag=truncation)
    elif method == "bptt" and truncation is not None:
        flow = truncated_bptt_error_flow(injected, sigma_prime, S, max_lag=truncation)
    elif method == "scan":
        flow = scan_error_flow(injected, sigma_prime, S)
    else:
        flow = ERROR_FLOWS[method](injected, sigma_prime, S)
    return flow.delta


def _layer_bwd(config, residuals, hs_bar):
    params, xs, h0, hs = residuals
    # σ'(Z_t) once per step, from the stored activations (seed 000's memoised σ').
    sigma_prime = get_activation(config.activation).derivative_from_output(hs)
    # Ψ, DESIGN.md §2: the error injected at Z_t by this step's consumers (the readout
    # or the layer above, whose Δ^{l+1} W^{l+1} JAX's chain rule delivers as hs_bar).
    injected = hs_bar * sigma_prime
    tokens = is_token_input(xs)
    if config.method == "rtrl":
        # Seed 002: parameter and h0 gradients accumulated forward in time. The input
        # cotangent Δ_t W needs the future of step t, which forward sensitivities give
        # only at O(T²) memory, so it comes from the BPTT recurrence; under `jit` that
        # scan is dead code unless something (the layer below, a grad w.r.t. xs) uses it.
        grad_params, grad_h0 = rtrl_layer_gradients(params, xs, h0, hs, hs_bar, sigma_prime)
        delta = bptt_error_flow(injected, sigma_prime, params.S).delta
        return grad_params, delta @ params.W, grad_h0
    # Δ_i = P_i + Σ_{j>i} P_j Ω(j, i), DESIGN.md §3, by the selected algorithm.
    delta = total_error(config, injected, sigma_prime, params.S)
    # Seed 000's full-matrix table: each gradient is ONE contraction over (T, m).
    hs_prev = jnp.concatenate([h0[None], hs[:-1]])
    if tokens:
        grad_W = token_weight_gradient(delta, xs, params.W.shape[1])
    else:
        grad_W = sum_over_steps(delta, xs)
    grad_params = LayerParams(
        W=grad_W,
        S=sum_over_steps(delta, hs_prev),
        b=delta.sum(axis=(0, 1)),
    )
    # Token indices are not differentiable: their cotangent is a symbolic zero.
    grad_xs = None if tokens else delta @ params.W
    grad_h0 = delta[0] @ params.S
    return grad_params, grad_xs, grad_h0


_layer.defvjp(_layer_fwd, _layer_bwd)


def rnn_layer(
    params: LayerParams,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    method: str = "omega",
    block: int | None = None,
    truncation: int | None = None,
    tol: float | None = None,
) -> jax.Array:
    """Runs one Elman layer over a time-major batch; differentiable by `method`.

    `h_t = σ(x_t Wᵀ + h_{t-1} Sᵀ + b)`. The value is the same for every method; the
    gradient (w.r.t. `params`, `xs` and `h0`) is computed by

    * `"omega"`: the error-flow triangle filled diagonal by diagonal (Ω DP),
    * `"bptt"`: the O(T) reverse recurrence,
    * `"naive"`: seed 000's O(T³) direct expansion (comparison only),
    * `"scan"`: Ω by doubling, a `lax.associative_scan` of depth O(log T) and
      O(T·m·d³) work,
    * `"rtrl"`: forward-mode sensitivities (seed 002), O(m·d⁴) work per step; the
      input cotangent (for the layer below) comes from the BPTT recurrence,
    * `"autodiff"`: `jax.grad` through a plain `lax.scan` (the reference).

    With `truncation=K` the gradient is K-step truncated BPTT: the loss at step t
    back-propagates through Z_t, …, Z_{t−K} of this layer only, i.e. it is the exact
    gradient of a model in which h_t is recomputed from `stop_gradient(h_{t−K−1})`
    (from h0 itself, which stays differentiable, when t−K−1 < 0). In a stack every
    layer truncates the cotangent it receives on its own.

    Args:
        params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs, shape (T, m, n), time-major, floating, same dtype as params; or
            integer token indices (T, m) into a vocabulary of n = W.shape[1] words, read
            as one-hot vectors without building them (`W x_t` is a column lookup).
        h0: initial state (m, d); zeros if None.
        activation: "tanh", "sigmoid" or "relu".
        method: "omega", "bptt", "naive", "scan", "rtrl" or "autodiff".
        block: with `method="omega"` only: fill Ω triangles of `block` steps chained
            by the BPTT recurrence (`_blocked.py`; 1 is BPTT, ≥ T the full triangle).
        truncation: K ≥ 0, keep only lags j − i ≤ K (methods "omega" and "bptt");
            None for the exact gradient. K ≥ T−1 is exact, K = 0 purely local.
        tol: ε ≥ 0 (method "omega"): stop filling diagonals once the newest one's
            Frobenius norm is ≤ ε times the accumulated error's; exact when the network
            is contractive enough, a heuristic otherwise (see `_adaptive.py`).
            Combine with `truncation` to cap the number of diagonals.

    Returns:
        hs, shape (T, m, d): the state after every step.

    Raises:
        ValueError: unknown `method`/`activation`, an option the method does not take,
            a negative or non-integer `truncation`, a negative or non-finite `tol`,
            wrong ranks or sizes, T = 0.
        TypeError: non-floating, non-integer `xs` or mixed dtypes.

    Example:
        >>> layer = init_layer(jax.random.key(0), input_size=3, hidden_size=8)
        >>> xs = jnp.ones((5, 2, 3))
        >>> rnn_layer(layer, xs).shape
        (5, 2, 8)
    """
    check_choice("method", method, METHODS)
    truncation, tol = check_gradient_options(method, truncation, tol)
    if is_token_input(xs):
        if method == "rtrl":
            raise ValueError(
                "method='rtrl' does not take integer token inputs: its sensitivity to W "
                "would hold m·d·d·V numbers per step (V the vocabulary size). Use "
                "method='bptt' or 'omega' for token inputs, or embed the tokens first."
            )
        _, _, _, h0 = check_token_inputs(params, xs, h0, activation=activation)
    else:
        _, _, _, h0 = check_layer_inputs(params, xs, h0, activation=activation)
    block = check_block_option(method, block)
    if block is not None and (truncation is not None or tol is not None):
        raise ValueError(
            f"block cannot be combined with truncation or tol, got block={block!r}, "
            f"truncation={truncation!r}, tol={tol!r}; pick one of them."
        )
    if method == "autodiff":
        forward = token_scan_layer if is_token_input(xs) else scan_layer
        return forward(params, xs, h0, activation=activation)
    config = LayerConfig(method, activation, truncation=truncation, tol=tol, block=block)
    return _layer(config, params, xs, h0)


def check_gradient_options(
    method: str, truncation: object, tol: object, *, require_tol: bool = False
) -> tuple[int | None, float | None]:
    """Validates `truncation` and `tol` for `method`; returns them as (int, float) or None.

    They are static (they change the compiled program), so they must be Python
    numbers, not traced arrays.
    """
    if truncation is not None:
        if method not in TRUNCATION_METHODS:
            raise ValueError(
                f"truncation is an option of methods {list(TRUNCATION_METHODS)}, got "
                f"method={method!r} with truncation={truncation!r}; use method='omega'."
            )
        if (
            not isinstance(truncation, int | np.integer)
            or isinstance(truncation, bool)
            or truncation < 0
        ):
            raise ValueError(
                f"truncation must be a non-negative Python int K (the largest lag kept) or "
                f"None, got {truncation!r}."
            )
        truncation = int(truncation)
    if tol is None:
        if require_tol:
            raise ValueError("tol must be a non-negative float, got None.")
        return truncation, None
    if method not in TOL_METHODS:
        raise ValueError(
            f"tol is an option of methods {list(TOL_METHODS)}, got method={method!r} with "
            f"tol={tol!r}; use method='omega'."
        )
    if not isinstance(tol, float | int | np.floating | np.integer) or isinstance(tol, bool):
        raise ValueError(
            f"tol must be a non-negative Python float (static, not a traced array), got "
            f"{type(tol).__name__} {tol!r}."
        )
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite float ≥ 0, got {tol!r}.")
    return truncation, float(tol)
