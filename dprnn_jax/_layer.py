"""One recurrent layer with a `jax.custom_vjp` whose backward is chosen by `method`.

The forward (`_forward.hoisted_layer`) is the same for every custom method. The
backward computes the total errors Δ_t = ∂C/∂Z_t with the selected algorithm
(`_omega`, `_bptt`, `_naive`) and then every gradient with one contraction each
(seed 000's full-matrix table). `method="autodiff"` bypasses the custom rule and lets
`jax.grad` differentiate the plain `lax.scan`: the reference the others are tested
against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._activations import get_activation
from ._bptt import bptt_error_flow
from ._error_flow import ErrorFlow
from ._forward import hoisted_layer, scan_layer
from ._naive import naive_error_flow
from ._omega import omega_error_flow
from ._params import LayerParams
from ._validation import check_choice, check_layer_inputs

ErrorFlowFn = Callable[[jax.Array, jax.Array, jax.Array], ErrorFlow]

ERROR_FLOWS: dict[str, ErrorFlowFn] = {
    "omega": omega_error_flow,
    "bptt": bptt_error_flow,
    "naive": naive_error_flow,
}
METHODS: tuple[str, ...] = (*ERROR_FLOWS, "autodiff")


class LayerConfig(NamedTuple):
    """Static options of the custom backward; hashable, so they key the compiled program."""

    method: str
    activation: str


class _Residuals(NamedTuple):
    """What the backward needs: the primal inputs and the stored states h_t = σ(Z_t)."""

    params: LayerParams
    xs: jax.Array
    h0: jax.Array
    hs: jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer(config: LayerConfig, params: LayerParams, xs: jax.Array, h0: jax.Array) -> jax.Array:
    return hoisted_layer(params, xs, h0, activation=config.activation)


def _layer_fwd(config, params, xs, h0):
    hs = hoisted_layer(params, xs, h0, activation=config.activation)
    return hs, _Residuals(params, xs, h0, hs)


def _layer_bwd(config, residuals, hs_bar):
    params, xs, h0, hs = residuals
    # σ'(Z_t) once per step, from the stored activations (seed 000's memoised σ').
    sigma_prime = get_activation(config.activation).derivative_from_output(hs)
    # Ψ, DESIGN.md §2: the error injected at Z_t by this step's consumers (the readout
    # or the layer above, whose Δ^{l+1} W^{l+1} JAX's chain rule delivers as hs_bar).
    injected = hs_bar * sigma_prime
    # Δ_i = P_i + Σ_{j>i} P_j Ω(j, i), DESIGN.md §3, by the selected algorithm.
    delta = ERROR_FLOWS[config.method](injected, sigma_prime, params.S).delta
    # Seed 000's full-matrix table: each gradient is ONE contraction over (T, m).
    hs_prev = jnp.concatenate([h0[None], hs[:-1]])
    grad_params = LayerParams(
        W=jnp.einsum("tmd,tmn->dn", delta, xs),
        S=jnp.einsum("tmd,tme->de", delta, hs_prev),
        b=delta.sum(axis=(0, 1)),
    )
    grad_xs = delta @ params.W
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
) -> jax.Array:
    """Runs one Elman layer over a time-major batch; differentiable by `method`.

    `h_t = σ(x_t Wᵀ + h_{t-1} Sᵀ + b)`. The value is the same for every method; the
    gradient (w.r.t. `params`, `xs` and `h0`) is computed by

    * `"omega"`: the error-flow triangle filled diagonal by diagonal (Ω DP),
    * `"bptt"`: the O(T) reverse recurrence,
    * `"naive"`: seed 000's O(T³) direct expansion (comparison only),
    * `"autodiff"`: `jax.grad` through a plain `lax.scan` (the reference).

    Args:
        params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs, shape (T, m, n), time-major, floating, same dtype as params.
        h0: initial state (m, d); zeros if None.
        activation: "tanh", "sigmoid" or "relu".
        method: "omega", "bptt", "naive" or "autodiff".

    Returns:
        hs, shape (T, m, d): the state after every step.

    Raises:
        ValueError: unknown `method`/`activation`, wrong ranks or sizes, T = 0.
        TypeError: non-floating `xs` or mixed dtypes.

    Example:
        >>> layer = init_layer(jax.random.key(0), input_size=3, hidden_size=8)
        >>> xs = jnp.ones((5, 2, 3))
        >>> rnn_layer(layer, xs).shape
        (5, 2, 8)
    """
    check_choice("method", method, METHODS)
    _, _, _, h0 = check_layer_inputs(params, xs, h0, activation=activation)
    if method == "autodiff":
        return scan_layer(params, xs, h0, activation=activation)
    return _layer(LayerConfig(method, activation), params, xs, h0)
