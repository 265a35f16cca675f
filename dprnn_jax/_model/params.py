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
    _check_size("input_size", input_size)
    _check_size("hidden_size", hidden_size)
    dtype = _check_float_dtype(dtype)
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


def init_bidirectional_layer(
    key: jax.Array,
    input_size: int,
    hidden_size: int,
    *,
    dtype=jnp.float32,
    cell: str = "elman",
) -> BidirectionalParams:
    """Two independent layers of one `cell` kind; the layer outputs 2·hidden_size features.

    Example:
        >>> layer = init_bidirectional_layer(jax.random.key(0), 3, 8)
        >>> layer.backward.S.shape
        (8, 8)
        >>> init_bidirectional_layer(jax.random.key(0), 3, 8, cell="gru").forward.S.shape
        (24, 8)
    """
    init = _initialiser(cell)
    forward_key, backward_key = jax.random.split(key)
    return BidirectionalParams(
        init(forward_key, input_size, hidden_size, dtype=dtype),
        init(backward_key, input_size, hidden_size, dtype=dtype),
    )


def _initialiser(cell: object):
    initialisers = {"elman": init_layer, "gru": init_gru_layer, "lstm": init_lstm_layer}
    if cell not in initialisers:
        raise ValueError(f"cell must be one of {list(initialisers)}, got {cell!r}.")
    return initialisers[cell]


def init_rnn(
    key: jax.Array,
    input_size: int,
    hidden_sizes: Sequence[int],
    output_size: int,
    *,
    bidirectional: bool | Sequence[bool] = False,
    dtype=jnp.float32,
    cell: str | Sequence[str] = "elman",
) -> RNNParams:
    """Initialises a stack of recurrent layers followed by a linear readout.

    Args:
        key: a PRNG key.
        input_size: n, features per input step.
        hidden_sizes: (d_1, ..., d_L), one entry per recurrent layer (at least one); for
            a bidirectional layer, the size of each direction.
        output_size: k, readout features (classes for softmax cross-entropy).
        bidirectional: True for a stack of `BidirectionalParams` layers (each outputs
            2·d_l features, which the next layer or the readout reads), or one bool per
            layer.
        dtype: a floating dtype for every array.
        cell: "elman" (`LayerParams`), "gru" (`GRUParams`) or "lstm" (`LSTMParams`),
            or one name per layer.

    Returns:
        `RNNParams(layers, readout)`.

    Raises:
        ValueError: no layer, a size that is not a positive int, or a `bidirectional`
            sequence whose length is not the number of layers.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8, 8), 4)
        >>> len(params.layers), params.readout.W.shape
        (2, (4, 8))
        >>> params = init_rnn(jax.random.key(0), 3, (8, 8), 4, bidirectional=True)
        >>> params.layers[1].forward.W.shape, params.readout.W.shape
        ((8, 16), (4, 16))
        >>> params = init_rnn(jax.random.key(0), 3, (16,), 5, cell="lstm")
        >>> type(params.layers[0]).__name__
        'LSTMParams'
    """
    hidden_sizes = tuple(hidden_sizes)
    if not hidden_sizes:
        raise ValueError("hidden_sizes must name at least one recurrent layer, got ().")
    _check_size("output_size", output_size)
    dtype = _check_float_dtype(dtype)
    if isinstance(bidirectional, bool):
        bidirectional = (bidirectional,) * len(hidden_sizes)
    flags = tuple(bidirectional) if isinstance(bidirectional, Sequence) else ()
    if len(flags) != len(hidden_sizes) or not all(isinstance(flag, bool) for flag in flags):
        raise ValueError(
            f"bidirectional must be a bool or one bool per layer ({len(hidden_sizes)}), got "
            f"{bidirectional!r}."
        )
    keys = jax.random.split(key, len(hidden_sizes) + 1)
    layers, n = [], input_size
    cells = (cell,) * len(hidden_sizes) if isinstance(cell, str) else tuple(cell)
    if len(cells) != len(hidden_sizes):
        raise ValueError(
            f"cell must be a name or one name per layer ({len(hidden_sizes)}), got {cell!r}."
        )
    for k, d, both, kind in zip(keys[:-1], hidden_sizes, flags, cells):
        if both:
            layers.append(init_bidirectional_layer(k, n, d, dtype=dtype, cell=kind))
        else:
            layers.append(_initialiser(kind)(k, n, d, dtype=dtype))
        n = 2 * d if both else d
    layers = tuple(layers)
    W_out = jax.random.normal(keys[-1], (output_size, n), dtype) / jnp.sqrt(jnp.asarray(n, dtype))
    readout = ReadoutParams(W_out, jnp.zeros((output_size,), dtype))
    return RNNParams(layers, readout)
