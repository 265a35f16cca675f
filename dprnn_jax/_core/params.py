"""Parameter pytrees and their initialisers.

Names follow the Ω note (docs/theory.md#model): `W` input weights, `S` recurrent
("memory") weights, `b` bias. Other derivations of BPTT call them U or W_in (input),
W or W_rec (recurrent) and V or W_out (output).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LayerParams(NamedTuple):
    """One Elman layer: `z_t = x_t Wᵀ + h_{t-1} Sᵀ + b`; W (d, n), S (d, d), b (d,).

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> layer.W.shape, layer.S.shape, layer.b.shape
        ((8, 3), (8, 8), (8,))
    """

    W: jax.Array
    S: jax.Array
    b: jax.Array


class ReadoutParams(NamedTuple):
    """Linear readout `y_t = h_t Wᵀ + b`; W (k, d), b (k,).

    Example:
        >>> readout = init_rnn(jax.random.key(0), 3, (8,), 4).readout
        >>> readout.W.shape, readout.b.shape
        ((4, 8), (4,))
    """

    W: jax.Array
    b: jax.Array


class BidirectionalParams(NamedTuple):
    """A bidirectional layer: `forward` reads t = 0 … L−1, `backward` reads t = L−1 … 0.

    Example:
        >>> layer = init_bidirectional_layer(jax.random.key(0), 3, 8)
        >>> layer.forward.W.shape, layer.backward.S.shape
        ((8, 3), (8, 8))
    """

    forward: LayerParams
    backward: LayerParams


class GRUParams(NamedTuple):
    """One GRU layer (PyTorch layout): W (3d, n), S (3d, d), b_ih (3d,), b_hh (3d,).

    Example:
        >>> layer = init_gru_layer(jax.random.key(0), 3, 8)
        >>> layer.W.shape, layer.S.shape
        ((24, 3), (24, 8))
    """

    W: jax.Array
    S: jax.Array
    b_ih: jax.Array
    b_hh: jax.Array


def init_gru_layer(
    key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32
) -> GRUParams:
    """PyTorch's initialisation: every entry uniform in [−1/√d, 1/√d].

    Example:
        >>> init_gru_layer(jax.random.key(0), 3, 8).b_hh.shape
        (24,)
    """
    return GRUParams(*_uniform_gates(key, input_size, hidden_size, 3, dtype))


def _uniform_gates(key, input_size: int, hidden_size: int, gates: int, dtype):
    """W, S, b_ih, b_hh of a gated layer, uniform in [−1/√d, 1/√d] as PyTorch draws them."""
    bound = 1.0 / jnp.sqrt(hidden_size)
    rows = gates * hidden_size
    shapes = ((rows, input_size), (rows, hidden_size), (rows,), (rows,))
    keys = jax.random.split(key, 4)
    return [jax.random.uniform(k, shape, dtype, -bound, bound) for k, shape in zip(keys, shapes)]


class LSTMParams(NamedTuple):
    """One LSTM layer (PyTorch layout): W (4d, n), S (4d, d), b_ih (4d,), b_hh (4d,).

    Example:
        >>> layer = init_lstm_layer(jax.random.key(0), 3, 8)
        >>> layer.W.shape, layer.S.shape
        ((32, 3), (32, 8))
    """

    W: jax.Array
    S: jax.Array
    b_ih: jax.Array
    b_hh: jax.Array


def init_lstm_layer(
    key: jax.Array, input_size: int, hidden_size: int, *, dtype=jnp.float32
) -> LSTMParams:
    """PyTorch's initialisation: every entry uniform in [−1/√d, 1/√d].

    Example:
        >>> init_lstm_layer(jax.random.key(0), 3, 8).b_ih.shape
        (32,)
    """
    return LSTMParams(*_uniform_gates(key, input_size, hidden_size, 4, dtype))


class RNNParams(NamedTuple):
    """A stack of recurrent layers (each a `LayerParams` or a `BidirectionalParams`) and
    a linear readout.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 2)
        >>> type(params.layers[0]).__name__, params.readout.W.shape
        ('LayerParams', (2, 8))
    """

    layers: tuple[LayerParams | BidirectionalParams, ...]
    readout: ReadoutParams


def check_size(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


def check_float_dtype(dtype: object) -> jnp.dtype:
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
    initialisation) and `b` is zero. In a half-precision dtype (bfloat16, float16) S is
    drawn in float32 and rounded, so it is orthogonal to that precision only.

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
    check_size("input_size", input_size)
    check_size("hidden_size", hidden_size)
    dtype = check_float_dtype(dtype)
    w_key, s_key = jax.random.split(key)
    W = jax.random.normal(w_key, (hidden_size, input_size), dtype) / jnp.sqrt(
        jnp.asarray(input_size, dtype)
    )
    # The QR behind the orthogonal draw has no half-precision kernel (bfloat16, float16):
    # draw S in float32 (or wider) and cast it.
    draw_dtype = jnp.promote_types(dtype, jnp.float32)
    S = jax.nn.initializers.orthogonal()(s_key, (hidden_size, hidden_size), draw_dtype)
    b = jnp.zeros((hidden_size,), dtype)
    return LayerParams(W, S.astype(dtype), b)
