"""The kinds of unidirectional recurrent layer (Elman, GRU, LSTM) and the trace-time checks
of their arguments.

This module imports no layer, so the layers themselves (`gru_layer`, `lstm_layer`) can
validate their arguments with it; `layer_kinds.py`, which runs the layers, re-exports
every name here. Every check looks only at shapes and dtypes (and at the values of
concrete `lengths`), so it runs once per trace and works under `jit` and `vmap`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from .._validation import (
    check_floating,
    check_not_empty,
    check_rank,
    check_same_dtype,
    check_sequence,
    check_shape,
    describe,
)
from .padding import check_lengths
from .params import GRUParams, LayerParams, LSTMParams
from .tokens import is_token_input


class LayerKind(NamedTuple):
    """A kind of recurrent layer: its name, gates per unit and its bias fields."""

    name: str
    gates: int
    biases: tuple[str, ...]
    paired_state: bool


KINDS: dict[type, LayerKind] = {
    LayerParams: LayerKind("elman", 1, ("b",), False),
    GRUParams: LayerKind("gru", 3, ("b_ih", "b_hh"), False),
    LSTMParams: LayerKind("lstm", 4, ("b_ih", "b_hh"), True),
}
CELLS: dict[str, type] = {kind.name: params_type for params_type, kind in KINDS.items()}


def kind_of(layer: object) -> LayerKind | None:
    return KINDS.get(type(layer))


def hidden_size(layer) -> int:
    return layer.S.shape[1]


def check_recurrent_layer(name: str, layer: object) -> tuple[int, int]:
    """Checks a `LayerParams`, `GRUParams` or `LSTMParams`; returns (d, n)."""
    kind = kind_of(layer)
    if kind is None:
        raise TypeError(
            f"{name} must be a LayerParams, GRUParams, LSTMParams or BidirectionalParams, "
            f"got {type(layer).__name__}. Build one with dprnn_jax.init_rnn."
        )
    g = kind.gates
    rows, n = check_rank(f"{name}.W", layer.W, 2, f"({g}·d, n) = (gates·hidden, input)")
    if rows % g:
        raise ValueError(f"{name}.W has {rows} rows, not a multiple of {g} gates.")
    d = rows // g
    check_shape(f"{name}.S", layer.S, (g * d, d), f"({g}·d, d)")
    for bias in kind.biases:
        check_shape(f"{name}.{bias}", getattr(layer, bias), (g * d,), f"({g}·d,)")
    check_floating(f"{name}.W", layer.W)
    for field in ("S", *kind.biases):
        check_same_dtype(f"{name}.{field}", getattr(layer, field), layer.W.dtype, f"{name}.W")
    return d, n


def check_layer_state(name: str, state: object, layer, m: int, weight_name: str) -> None:
    """A layer's initial state: None, an (m, d) array, or the pair (h, c) for an LSTM."""
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
        check_same_dtype(part_name, part, layer.W.dtype, weight_name)


def check_inputs(xs: object, W: jax.Array, weights: str) -> tuple[int, int]:
    """The inputs a layer (or a network's first layer) reads, checked against its input
    weight `W` (named `weights` in the messages): floats (T, m, n) in W's dtype with
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
    check_same_dtype("xs", xs, W.dtype, weights)
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
        init = {GRUParams: "init_gru_layer", LSTMParams: "init_lstm_layer"}[params_type]
        raise TypeError(
            f"params must be a {params_type.__name__}, got {type(params).__name__}. "
            f"Build one with dprnn_jax.{init}."
        )
    check_recurrent_layer("params", params)
    T, m = check_inputs(xs, params.W, "params.W")
    check_layer_state(state_name, state0, params, m, "params.W")
    if lengths is not None:
        lengths = check_lengths(lengths, T, m)
    return T, m, lengths
