"""The kinds of unidirectional recurrent layer a stack may hold: Elman, GRU, LSTM, minGRU.

Each kind (`_cells/kinds.py`) says how wide its weights are per hidden unit, what its
state is (`h`, or the pair `(h, c)` for an LSTM) and how to prepare its cell. The network, the
bidirectional layer and the losses go through these functions, so a stack may mix
kinds freely and every kind gets lengths, token inputs and every gradient algorithm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._cells.kinds import CELLS as CELLS
from .._cells.kinds import KINDS as KINDS
from .._cells.kinds import LayerKind as LayerKind
from .._cells.kinds import check_layer_state as check_layer_state
from .._cells.kinds import check_recurrent_layer as check_recurrent_layer
from .._cells.kinds import hidden_size as hidden_size
from .._cells.kinds import kind_of as kind_of
from .layers import run_layer


def final_state(hs: jax.Array, h0, lengths: jax.Array | None) -> jax.Array:
    """The state after each sequence's last valid step (h0, or zeros, for length 0)."""
    if lengths is None:
        return hs[-1]
    T = hs.shape[0]
    last = jnp.take_along_axis(hs, jnp.clip(lengths - 1, 0, T - 1)[None, :, None], axis=0)[0]
    start = jnp.zeros_like(last) if h0 is None else h0
    if start.dtype != last.dtype:  # a float32 h0 of a mixed-precision layer: its dtype
        start = start.astype(last.dtype)
    final = jnp.where((lengths == 0)[:, None], start, last)
    # Lengths outside [0, T] (only possible under jit) give NaN, not a wrong state.
    return jnp.where(((lengths < 0) | (lengths > T))[:, None], jnp.nan, final)


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
    carries = run_layer(layer, xs, state0, lengths=lengths, activation=activation, algorithm=method)
    if not kind_of(layer).paired_state:
        return carries, final_state(carries, state0, lengths)
    hs, cs = carries
    h0, c0 = (None, None) if state0 is None else state0
    return hs, (final_state(hs, h0, lengths), final_state(cs, c0, lengths))
