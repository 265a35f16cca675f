"""Parameter pytrees and their initialisers.

Names follow the Ω note (docs/theory.md#model): `W` input weights, `S` recurrent
("memory") weights, `b` bias. Other derivations of BPTT call them U or W_in (input),
W or W_rec (recurrent) and V or W_out (output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LayerParams(NamedTuple):
    """One Elman layer: `z_t = x_t Wᵀ + h_{t-1} Sᵀ + b`; W (d, n), S (d, d), b (d,)."""

    W: jax.Array
    S: jax.Array
    b: jax.Array


class ReadoutParams(NamedTuple):
    """Linear readout `y_t = h_t Wᵀ + b`; W (k, d), b (k,)."""

    W: jax.Array
    b: jax.Array


class RNNParams(NamedTuple):
    """A stack of recurrent layers (a tuple of `LayerParams`) and a linear readout."""

    layers: tuple[LayerParams, ...]
    readout: ReadoutParams


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def _check_float_dtype(dtype: object) -> jnp.dtype:
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype such as float32, got {dtype}.")
    return dtype


def init_layer(
    key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32
) -> LayerParams:
    """Initialises one recurrent layer.

    `W` is LeCun-normal (variance 1/input_size), `S` is a random orthogonal matrix
    (spectral radius 1: gradients neither vanish nor explode through S alone at
    initialisation) and `b` is zero.

    Args:
        key: a PRNG key.
        input_size: n, the number of input features.
        hidden_size: d, the number of hidden units.
        dtype: a floating dtype for all three arrays.

    Returns:
        `LayerParams(W (d, n), S (d, d), b (d,))`.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> layer.S.shape
        (8, 8)
    """
    _check_size("input_size", input_size)
    _check_size("hidden_size", hidden_size)
    dtype = _check_float_dtype(dtype)
    w_key, s_key = jax.random.split(key)
    W = jax.random.normal(w_key, (hidden_size, input_size), dtype) / jnp.sqrt(
        jnp.asarray(input_size, dtype)
    )
    S = jax.nn.initializers.orthogonal()(s_key, (hidden_size, hidden_size), dtype)
    b = jnp.zeros((hidden_size,), dtype)
    return LayerParams(W, S, b)


def init_rnn(
    key: jax.Array,
    input_size: int,
    hidden_sizes: Sequence[int],
    output_size: int,
    *,
    dtype=jnp.float32,
) -> RNNParams:
    """Initialises a stack of recurrent layers followed by a linear readout.

    Args:
        key: a PRNG key.
        input_size: n, features per input step.
        hidden_sizes: (d_1, ..., d_L), one entry per recurrent layer (at least one).
        output_size: k, readout features (classes for softmax cross-entropy).
        dtype: a floating dtype for every array.

    Returns:
        `RNNParams(layers, readout)`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (16, 16), 5)
        >>> len(params.layers), params.readout.W.shape
        (2, (5, 16))
    """
    hidden_sizes = tuple(hidden_sizes)
    if not hidden_sizes:
        raise ValueError("hidden_sizes must name at least one recurrent layer, got ().")
    _check_size("output_size", output_size)
    dtype = _check_float_dtype(dtype)
    keys = jax.random.split(key, len(hidden_sizes) + 1)
    sizes = (input_size, *hidden_sizes)
    layers = tuple(
        init_layer(k, n, d, dtype=dtype) for k, n, d in zip(keys[:-1], sizes[:-1], sizes[1:])
    )
    W_out = jax.random.normal(keys[-1], (output_size, sizes[-1]), dtype) / jnp.sqrt(
        jnp.asarray(sizes[-1], dtype)
    )
    readout = ReadoutParams(W_out, jnp.zeros((output_size,), dtype))
    return RNNParams(layers, readout)
