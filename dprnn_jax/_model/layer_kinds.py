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
from .gate_projection import project_inputs
from .gru import gru_layer, gru_recurrence, gru_step
from .layer import rnn_layer
from .layer_checks import CELLS as CELLS
from .layer_checks import KINDS as KINDS
from .layer_checks import LayerKind as LayerKind
from .layer_checks import check_layer_state as check_layer_state
from .layer_checks import check_recurrent_layer as check_recurrent_layer
from .layer_checks import hidden_size as hidden_size
from .layer_checks import kind_of as kind_of
from .lstm import lstm_layer, lstm_recurrence, lstm_step


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
    pair `(h, c)`. `activation` applies to Elman layers (gated cells fix theirs). Every
    kind gets `lengths` itself and zeroes its own padded inputs.
    """
    kind = kind_of(layer)
    if kind.name == "elman":
        hs = rnn_layer(layer, xs, state0, lengths=lengths, activation=activation, method=method)
        return hs, final_state(hs, state0, lengths)
    if kind.name == "gru":
        hs = gru_layer(layer, xs, state0, lengths=lengths, method=method)
        return hs, final_state(hs, state0, lengths)
    h0, c0 = (None, None) if state0 is None else state0
    hs, cs = lstm_layer(layer, xs, state0, lengths=lengths, method=method)
    return hs, (final_state(hs, h0, lengths), final_state(cs, c0, lengths))
