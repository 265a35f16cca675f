"""The Elman step, on its own: the loop lives in `_forward.py`."""

from __future__ import annotations

import jax

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
    return sigma(x @ params.W.T + h @ params.S.T + params.b)
