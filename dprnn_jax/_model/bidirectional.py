"""Bidirectional recurrent layers: a forward and a time-reversed layer (Elman, GRU or LSTM).

    h→_t = σ(x_t W→ᵀ + h→_{t−1} S→ᵀ + b→)        (t = 0 … L−1)
    h←_t = σ(x_t W←ᵀ + h←_{t+1} S←ᵀ + b←)        (t = L−1 … 0)
    output_t = [h→_t, h←_t]                       (concatenated, d→ + d← features)

with separate weights. The backward direction is the same kind of layer run on the sequence
reversed *within its own length* L (right padding stays at the end), so it starts at
the last valid step of every sequence, and each direction keeps whichever gradient
`method` (and options) the caller picked: its custom backward sees an ordinary
sequence. The reversal is a gather, differentiated by JAX
(docs/theory.md#lengths-and-bidirectional).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._cells.kinds import init_bidirectional_layer as init_bidirectional_layer
from .._core.padding import zero_padding
from .._core.params import BidirectionalParams as BidirectionalParams
from .layer_kinds import run_recurrent_layer


def reverse_padded(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """Reverses each sequence within its length along axis 0; padding stays in place.

    `xs` is (T, m, …); with `lengths` None every sequence has length T. The map is
    its own inverse, so it also brings the backward direction's outputs back to time
    order.
    """
    if lengths is None:
        return jnp.flip(xs, axis=0)
    T = xs.shape[0]
    steps = jnp.arange(T)[:, None]
    source = jnp.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
    source = source.reshape(source.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, source, axis=0)


def bidirectional_layer(
    params: BidirectionalParams,
    xs: jax.Array,
    h0: tuple[jax.Array | None, jax.Array | None] | None = None,
    *,
    lengths: jax.Array | None = None,
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    **options,
) -> jax.Array:
    """Runs a bidirectional layer; outputs `[h→_t, h←_t]`, shape (T, m, d→ + d←).

    Args:
        params: `BidirectionalParams(forward, backward)`.
        xs: inputs (T, m, n), or integer tokens (T, m), right-padded.
        h0: `(h0→, h0←)`, each (m, d) or None for zeros; or None. h0← is the state
            before the backward direction's first step, i.e. after the last valid one.
        lengths: valid steps per sequence (m,), or None for all T; as in `rnn_layer`
            (under `jit`, a length outside [0, T] gives that sequence NaN outputs).
        activation: "tanh", "sigmoid" or "relu".
        method: gradient algorithm of both directions, an object or its name (see
            `rnn_layer`).
        **options: `truncation`, `tol`, `block`, passed to `rnn_layer`.

    Returns:
        (T, m, d→ + d←). With `lengths`, the padded inputs are replaced by zeros before
        either direction reads them (as `rnn_layer(..., lengths=)` does), so NaN or inf
        padding reaches nothing; at padded steps (t ≥ L) each direction holds the states
        of a layer that kept running over that zero padding after its last valid step.
        They carry no gradient when the loss masks them.

    Raises:
        TypeError: if `params` is not a `BidirectionalParams`.
        ValueError: as `rnn_layer`.

    Example:
        >>> layer = init_bidirectional_layer(jax.random.key(0), 3, 4)
        >>> bidirectional_layer(layer, jnp.ones((5, 2, 3))).shape
        (5, 2, 8)
    """
    if not isinstance(params, BidirectionalParams):
        raise TypeError(
            f"params must be a BidirectionalParams(forward, backward), got "
            f"{type(params).__name__}; build one with init_bidirectional_layer."
        )
    return bidirectional_outputs_and_final(
        params,
        xs,
        h0,
        lengths=lengths,
        activation=activation,
        method=resolve_method(method, **options),
    )[0]


def bidirectional_outputs_and_final(
    params: BidirectionalParams,
    xs: jax.Array,
    h0,
    *,
    lengths: jax.Array | None,
    activation: str,
    method: GradientAlgorithm,
):
    """`(outputs (T, m, d→ + d←), final state)` of a bidirectional layer of any kind.

    The final state is `[h→_{L−1}, h←_0]`, each direction's state after its own last
    valid step (for LSTM directions the pair of such concatenations, `(h, c)`).
    """
    h0_forward, h0_backward = (None, None) if h0 is None else h0
    options = dict(lengths=lengths, activation=activation, method=method)
    if lengths is not None:
        xs = zero_padding(xs, lengths)
    forward, forward_final = run_recurrent_layer(params.forward, xs, h0_forward, **options)
    # Reversal within each length keeps the padding at the end, where `lengths` zeroes it.
    reversed_xs = reverse_padded(xs, lengths)
    backward, backward_final = run_recurrent_layer(
        params.backward, reversed_xs, h0_backward, **options
    )
    outputs = jnp.concatenate([forward, reverse_padded(backward, lengths)], axis=-1)
    final = jax.tree.map(
        lambda f, b: jnp.concatenate([f, b], axis=-1), forward_final, backward_final
    )
    return outputs, final
