"""Integer token inputs: `x_t W ᵀ` for a one-hot `x_t` is a column lookup of `W`.

A first layer fed with tokens `(T, m)` from a vocabulary of V words has `W` of shape
(d, V), exactly as if it were fed one-hot vectors; the one-hot vectors are never built:

* forward: `Z_t = W[:, token_t] + h_{t−1} Sᵀ + b` (a gather of columns),
* backward: `∂C/∂W[:, w] = Σ_{t, v : token_t[v] = w} Δ_t[v]` (a scatter-add of Δ).

Tokens outside [0, V) cannot be caught at trace time; their step's pre-activation is
NaN, so the outputs and the loss of that sequence are NaN rather than a wrong number,
and they add nothing to ∂C/∂W. (docs/theory.md#gradients-from-delta.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core.activations import ACTIVATIONS, get_activation
from .._core.params import LayerParams
from .._core.validation import (
    check_choice,
    check_layer_params,
    check_not_empty,
    check_rank,
    check_same_dtype,
    check_shape,
)
from .elman import recurrence


def is_token_input(xs: object) -> bool:
    """True for integer inputs of rank 2, which the layers read as token indices (T, m).

    Integer inputs of any other rank are not tokens: they fail the usual (T, m, n)
    floating-point checks.
    """
    return (
        hasattr(xs, "dtype")
        and jnp.issubdtype(jnp.result_type(xs), jnp.integer)
        and np.ndim(xs) == 2
    )


def token_projection(params: LayerParams, tokens: jax.Array) -> jax.Array:
    """`W[:, token_t] + b` for every step: (T, m) -> (T, m, d); NaN rows for bad tokens."""
    vocabulary = params.W.shape[1]
    valid = (tokens >= 0) & (tokens < vocabulary)
    columns = params.W.T[jnp.where(valid, tokens, 0)]
    return jnp.where(valid[..., None], columns, jnp.nan) + params.b


def token_weight_gradient(delta: jax.Array, tokens: jax.Array, vocabulary: int) -> jax.Array:
    """∂C/∂W (d, V) = scatter-add of Δ_t[v] into column token_t[v]; bad tokens dropped."""
    d = delta.shape[-1]
    valid = (tokens >= 0) & (tokens < vocabulary)
    rows = jnp.where(valid, tokens, vocabulary).reshape(-1)  # index V is dropped
    gradient = jnp.zeros((vocabulary, d), delta.dtype)
    return gradient.at[rows].add(delta.reshape(-1, d), mode="drop").T


def token_hoisted_layer(
    params: LayerParams, tokens: jax.Array, h0: jax.Array, *, activation: str = "tanh"
) -> jax.Array:
    """`hoisted_layer` for token inputs: the lookup of every step first, then the scan."""
    return recurrence(params.S, token_projection(params, tokens), h0, activation=activation)


def token_scan_layer(
    params: LayerParams, tokens: jax.Array, h0: jax.Array, *, activation: str = "tanh"
) -> jax.Array:
    """scan :: (h0 (m, d), tokens (T, m)) -> hs (T, m, d), the lookup inside each step."""
    sigma = get_activation(activation).fn

    def step(h, token):
        h = sigma(token_projection(params, token) + h @ params.S.T)
        return h, h

    _, hs = lax.scan(step, h0, tokens)
    return hs


def check_token_inputs(
    params: LayerParams, tokens: jax.Array, h0: jax.Array | None, *, activation: str
) -> tuple[int, int, int, jax.Array]:
    """Validates a token-fed layer's arguments; returns (T, m, d, h0) with h0 filled in."""
    check_choice("activation", activation, ACTIVATIONS)
    d, _ = check_layer_params("params", params)
    T, m = check_rank("xs", tokens, 2, "(T, m) = (time, batch) integer token indices")
    check_not_empty("xs", (T, m))
    if h0 is None:
        h0 = jnp.zeros((m, d), params.W.dtype)
    else:
        check_shape("h0", h0, (m, d), "(m, d) = (batch, hidden)")
        check_same_dtype("h0", h0, params.W.dtype, "params.W")
    return T, m, d, h0
