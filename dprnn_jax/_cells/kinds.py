"""The registry of the kinds of recurrent layer (Elman, GRU, LSTM, minGRU), their
initialisers and the trace-time checks of their arguments.

Each cell module defines its `KIND` (`_cells/base.py`: `LayerKind`); registering a new
cell is one entry in `_KIND_LIST`. The network, the bidirectional layer, the losses, the
diagnostics and the CLI look kinds up here, by the layer's parameter type or by the
`cell=` name. Every check looks only at shapes and dtypes (and at the values of concrete
`lengths`), so it runs once per trace and works under `jit` and `vmap`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from .._core.padding import check_lengths
from .._core.params import (
    BidirectionalParams,
    ReadoutParams,
    RNNParams,
    check_float_dtype,
    check_size,
)
from .._core.validation import (
    check_floating,
    check_input_dtype,
    check_not_empty,
    check_rank,
    check_same_dtype,
    check_sequence,
    check_shape,
    check_state_dtype,
    describe,
)
from . import elman_linearisation, gru, lstm, mingru
from .base import LayerKind
from .tokens import is_token_input

_KIND_LIST: tuple[LayerKind, ...] = (
    elman_linearisation.KIND,
    gru.KIND,
    lstm.KIND,
    mingru.KIND,
)
KINDS: dict[type, LayerKind] = {kind.params_type: kind for kind in _KIND_LIST}
CELLS: dict[str, type] = {kind.name: kind.params_type for kind in _KIND_LIST}
_BY_NAME: dict[str, LayerKind] = {kind.name: kind for kind in _KIND_LIST}


def kind_of(layer: object) -> LayerKind | None:
    return KINDS.get(type(layer))


def hidden_size(layer) -> int:
    return layer.W.shape[0] // kind_of(layer).gates


def fill_carry0(layer, state0, m: int):
    """A layer's initial carry: `state0`, or zeros (m, d) (the pair of them for an LSTM)."""
    if state0 is not None:
        return tuple(state0) if kind_of(layer).paired_state else state0
    zeros = jnp.zeros((m, hidden_size(layer)), layer.W.dtype)
    return (zeros, zeros) if kind_of(layer).paired_state else zeros


def check_recurrent_layer(name: str, layer: object) -> tuple[int, int]:
    """Checks a `LayerParams`, `GRUParams` or `LSTMParams`; returns (d, n)."""
    kind = kind_of(layer)
    if kind is None:
        accepted = ", ".join(params_type.__name__ for params_type in KINDS)
        raise TypeError(
            f"{name} must be a {accepted} or BidirectionalParams, "
            f"got {type(layer).__name__}. Build one with dprnn_jax.init_rnn."
        )
    g = kind.gates
    rows, n = check_rank(f"{name}.W", layer.W, 2, f"({g}·d, n) = (gates·hidden, input)")
    if rows % g:
        raise ValueError(f"{name}.W has {rows} rows, not a multiple of {g} gates.")
    d = rows // g
    if kind.recurrent_weights:
        check_shape(f"{name}.S", layer.S, (g * d, d), f"({g}·d, d)")
    for bias in kind.biases:
        check_shape(f"{name}.{bias}", getattr(layer, bias), (g * d,), f"({g}·d,)")
    check_floating(f"{name}.W", layer.W)
    for field in (("S",) if kind.recurrent_weights else ()) + kind.biases:
        check_same_dtype(f"{name}.{field}", getattr(layer, field), layer.W.dtype, f"{name}.W")
    return d, n


def check_layer_state(
    name: str, state: object, layer, m: int, weight_name: str, inputs_dtype=None
) -> None:
    """A layer's initial state: None, an (m, d) array, or the pair (h, c) for an LSTM, in
    the layer's dtype or in the one it computes in with inputs of `inputs_dtype` (None:
    the layer's)."""
    if state is None:
        return
    d = hidden_size(layer)
    parts = [(name, state)]
    if kind_of(layer).paired_state:
        if not isinstance(state, tuple | list) or len(state) != 2:
            raise ValueError(
                f"{name} must be the pair (h0, c0), each (m, d) = ({m}, {d}), for an LSTM "
                f"layer, got {describe(state)}."
            )
        parts = [(f"{name}[0]", state[0]), (f"{name}[1]", state[1])]
    for part_name, part in parts:
        check_shape(part_name, part, (m, d), "(m, d_l) = (batch, hidden)")
        inputs = layer.W.dtype if inputs_dtype is None else inputs_dtype
        check_state_dtype(part_name, part, layer.W.dtype, inputs, weight_name)


def check_inputs(xs: object, W: jax.Array, weights: str) -> tuple[int, int]:
    """The inputs a layer (or a network's first layer) reads, checked against its input
    weight `W` (named `weights` in the messages): floats (T, m, n) in W's dtype (or a
    16-bit float for float32/float64 weights: mixed precision, `_core/precision.py`) with
    n = W.shape[1], or integer tokens (T, m); T, m ≥ 1. Returns (T, m)."""
    if is_token_input(xs):
        T, m = check_rank("xs", xs, 2, "(T, m) = (time, batch) integer token indices")
        check_not_empty("xs", (T, m))
        return T, m
    T, m, n = check_sequence("xs", xs)
    if n != W.shape[1]:
        raise ValueError(
            f"xs has {n} features (shape {xs.shape}) but {weights} has shape {W.shape}, "
            f"which expects {W.shape[1]} input features."
        )
    check_input_dtype("xs", xs, W.dtype, weights)
    return T, m


def check_gated_layer_inputs(
    params: object,
    xs: object,
    state0: object,
    lengths: object,
    *,
    params_type: type,
    state_name: str,
) -> tuple[int, int, jax.Array | None]:
    """Validates the arguments of `gru_layer` / `lstm_layer`; returns (T, m, lengths).

    `params` must be a `params_type` (`GRUParams` or `LSTMParams`); `xs` floats
    (T, m, n) with n = W.shape[1] and W's dtype, or integer tokens (T, m); T ≥ 1;
    `state0` (named `state_name`) None, (m, d), or for an LSTM the pair (h0, c0);
    `lengths` None or (m,) integers in [0, T].
    """
    if type(params) is not params_type:
        init = KINDS[params_type].init.__name__
        raise TypeError(
            f"params must be a {params_type.__name__}, got {type(params).__name__}. "
            f"Build one with dprnn_jax.{init}."
        )
    check_recurrent_layer("params", params)
    T, m = check_inputs(xs, params.W, "params.W")
    check_layer_state(state_name, state0, params, m, "params.W", jnp.result_type(xs))
    if lengths is not None:
        lengths = check_lengths(lengths, T, m)
    return T, m, lengths


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
    if cell not in _BY_NAME:
        raise ValueError(f"cell must be one of {list(_BY_NAME)}, got {cell!r}.")
    return _BY_NAME[cell].init


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
        cell: "elman" (`LayerParams`), "gru" (`GRUParams`), "lstm" (`LSTMParams`) or
            "mingru" (`MinGRUParams`), or one name per layer.

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
    check_size("output_size", output_size)
    dtype = check_float_dtype(dtype)
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
