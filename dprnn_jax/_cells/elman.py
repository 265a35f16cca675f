"""The Elman step and the forward passes of one Elman layer: a `lax.scan` over `cell`.

Two forms compute the same `hs`:

* `scan_layer` is the textbook loop (what a JAX user writes by hand); `method="autodiff"`
  differentiates it with `jax.grad`.
* `hoisted_layer` first computes the input projection `X_t Wᵀ` of all steps in ONE
  batched product, so the sequential loop only does `h_{t-1} Sᵀ`. Its `hs` are the
  residuals from which every custom backward recovers σ'(Z_t).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.activations import get_activation
from .._core.params import LayerParams


def cell(params: LayerParams, h: jax.Array, x: jax.Array, *, activation: str = "tanh") -> jax.Array:
    """One recurrent step `h_t = σ(x_t Wᵀ + h_{t-1} Sᵀ + b)` (docs/theory.md#model).

    Args:
        params: the layer's `LayerParams(W (d, n), S (d, d), b (d,))`.
        h: previous state `h_{t-1}`, shape (m, d).
        x: input `x_t`, shape (m, n).
        activation: "tanh", "sigmoid" or "relu".

    Returns:
        The new state `h_t`, shape (m, d).

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> cell(layer, jnp.zeros((2, 8)), jnp.ones((2, 3))).shape
        (2, 8)
    """
    sigma = get_activation(activation).fn
    return sigma(precision.matmul(x, params.W.T) + precision.matmul(h, params.S.T) + params.b)


def scan_layer(
    params: LayerParams, xs: jax.Array, h0: jax.Array, *, activation: str = "tanh"
) -> jax.Array:
    """scan :: (h0 (m, d), xs (T, m, n)) -> hs (T, m, d), one `cell` per step.

    Example:
        >>> layer, xs = init_layer(jax.random.key(0), 3, 8), jnp.ones((5, 2, 3))
        >>> hs = scan_layer(layer, xs, jnp.zeros((2, 8)))
        >>> hs.shape, bool(jnp.allclose(hs, rnn_layer(layer, xs)))
        ((5, 2, 8), True)
    """

    def step(h, x):
        h = cell(params, h, x, activation=activation)
        return h, h

    _, hs = lax.scan(step, h0, xs)
    return hs


def recurrence(
    S: jax.Array,
    projected: jax.Array,
    h0: jax.Array,
    *,
    activation: str = "tanh",
    bias: jax.Array | None = None,
) -> jax.Array:
    """loop :: (h0 (m, d), projected (T, m, d)) -> hs, with `h_t = σ(u_t + b + h_{t-1} Sᵀ)`.

    The sequential part of every hoisted forward: `projected` already holds the input
    term `u_t` (`X_t Wᵀ`, or its lookup for token inputs) of every step; `bias` (d,), if
    given, is added inside the step.

    Each h_t is written over the row u_t it has just been read from, so the states take
    no buffer of their own: a `lax.scan` stacking its outputs would first fill a
    (T, m, d) buffer with zeros, and adding `b` to `projected` beforehand would be one
    more pass over it (docs/performance.md#floor). Each step is one small product and
    one fused elementwise update.
    """
    sigma = get_activation(activation).fn
    S_T = S.T
    dtype = projected.dtype
    b = jnp.zeros((), dtype) if bias is None else bias

    def step(t, carry):
        h, states = carry
        u = lax.dynamic_index_in_dim(states, t, keepdims=False, allow_negative_indices=False)
        h = sigma(precision.loaded(u, dtype) + b + precision.matmul(h, S_T))
        row = precision.stored(h)
        return h, lax.dynamic_update_index_in_dim(states, row, t, 0, allow_negative_indices=False)

    # bfloat16 states are written in float32 (`precision.stored`): in place on a CPU.
    _, hs = lax.fori_loop(0, projected.shape[0], step, (h0, precision.stored(projected)))
    return precision.loaded(hs, dtype)


def hoisted_layer(
    params: LayerParams, xs: jax.Array, h0: jax.Array, *, activation: str = "tanh"
) -> jax.Array:
    """Same result as `scan_layer`, with the input projection hoisted out of the loop."""
    projected = precision.einsum("tmn,dn->tmd", xs, params.W)
    return recurrence(params.S, projected, h0, activation=activation, bias=params.b)
