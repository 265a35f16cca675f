"""The kinds of unidirectional recurrent layer a stack may hold: Elman, GRU, LSTM.

Each kind says how wide its weights are per hidden unit (1, 3 or 4 gates), what its
state is (`h`, or the pair `(h, c)` for an LSTM) and how to run it. The network, the
bidirectional layer and the losses go through these functions, so a stack may mix
kinds freely and every kind gets lengths, token inputs and every gradient algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._backward.base import GradientAlgorithm
from .._validation import check_floating, check_rank, check_same_dtype, check_shape
from .gate_projection import project_inputs
from .gru import GRUParams, gru_layer, gru_recurrence, gru_step
from .layer import rnn_layer
from .lstm import LSTMParams, lstm_layer, lstm_recurrence, lstm_step
from .padding import zero_padding
from .params import LayerParams


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
                f"layer, got {type(state).__name__}."
            )
        parts = [(f"{name}[0]", state[0]), (f"{name}[1]", state[1])]
    for part_name, part in parts:
        check_shape(part_name, part, (m, d), "(m, d_l) = (batch, hidden)")
        check_same_dtype(part_name, part, layer.W.dtype, weight_name)


def final_state(hs: jax.Array, h0, lengths: jax.Array | None) -> jax.Array:
    """The state after each sequence's last valid step (h0, or zeros, for length 0)."""
    if lengths is None:
        return hs[-1]
    T = hs.shape[0]
    last = jnp.take_along_axis(hs, jnp.clip(lengths - 1, 0, T - 1)[None, :, None], axis=0)[0]
    start = jnp.zeros_like(last) if h0 is None else h0
    final = jnp.where((lengths == 0)[:, None], start, last)
    # Lengths outside [0, T] (only possible under jit) give NaN, not a wrong state.
    return jnp.where(((lengths < 0) | (lengths > T))[:, None], jnp.nan, final)


class GatedCell(NamedTuple):
    """A gated layer as `scan_cell` runs it: `carries = scan_cell(step, params, inputs,
    carry0)`, with the input projections of all steps already applied (`inputs`)."""

    step: Callable
    params: Any
    inputs: jax.Array
    carry0: Any


def gated_cell(layer, xs: jax.Array, state0) -> GatedCell:
    """The cell of a `GRUParams` or `LSTMParams` layer on inputs `xs` (T, m, n) or tokens
    (T, m), from `state0` (h0, or the pair (h0, c0); zeros if None), exactly as
    `gru_layer`/`lstm_layer` run it. For a GRU the carry is `h`, for an LSTM `(h, c)`."""
    kind = kind_of(layer)
    projected = project_inputs(layer.W, xs, own_backward=False)
    zeros = jnp.zeros((projected.shape[1], hidden_size(layer)), layer.S.dtype)
    if kind.name == "gru":
        h0 = zeros if state0 is None else state0
        return GatedCell(gru_step, gru_recurrence(layer), projected, h0)
    carry0 = (zeros, zeros) if state0 is None else tuple(state0)
    return GatedCell(lstm_step, lstm_recurrence(layer), projected, carry0)


def run_recurrent_layer(
    layer,
    xs: jax.Array,
    state0,
    *,
    lengths: jax.Array | None,
    activation: str,
    method: GradientAlgorithm,
):
    """One unidirectional layer of any kind: `(hs (T, m, d), final state)`.

    The final state is taken at each sequence's last valid step; for an LSTM it is the
    pair `(h, c)`. `activation` applies to Elman layers (gated cells fix theirs).
    """
    kind = kind_of(layer)
    if kind.name == "elman":
        hs = rnn_layer(layer, xs, state0, lengths=lengths, activation=activation, method=method)
        return hs, final_state(hs, state0, lengths)
    if lengths is not None:
        xs = zero_padding(xs, lengths)
    if kind.name == "gru":
        hs = gru_layer(layer, xs, state0, method=method)
        return hs, final_state(hs, state0, lengths)
    h0, c0 = (None, None) if state0 is None else state0
    hs, cs = lstm_layer(layer, xs, state0, method=method)
    return hs, (final_state(hs, h0, lengths), final_state(cs, c0, lengths))
