"""A stack of recurrent layers and a linear readout (docs/theory.md#model), with right-padded
variable-length batches, bidirectional layers and integer token inputs.

Variable lengths. A batch of sequences of lengths L_v ≤ T is right-padded to T steps.
Given `lengths`, the padded inputs of every layer are replaced by zeros before the
layer reads them (so whatever the padding holds, even NaN, cannot reach a valid
step), the backward direction of a bidirectional layer is reversed within each
length, and the final state of every sequence is taken at its own last valid step.
The loss masks padded steps, so their injected error is exactly zero and every
gradient method stays exact with no special Jacobians (docs/theory.md#lengths-and-bidirectional).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._cells.kinds import check_inputs
from .._core.padding import check_lengths as check_lengths
from .._core.padding import mask_from_lengths as mask_from_lengths
from .._core.params import RNNParams
from .._core.validation import (
    check_rank,
    check_same_dtype,
    check_shape,
    describe,
)
from .bidirectional import BidirectionalParams, bidirectional_outputs_and_final
from .layer_kinds import check_layer_state, check_recurrent_layer, run_recurrent_layer
from .readout import apply_readout


class RNNOutput(NamedTuple):
    """What `rnn_forward` returns.

    Attributes:
        outputs: readout pre-activations (T, m, k) at every step.
        final_states: one (m, d_l) array per layer: the state after each sequence's own
            last valid step (for a bidirectional layer `[h→_{L−1}, h←_0]`, 2·d_l wide).

    Example:
        >>> out = rnn_forward(init_rnn(jax.random.key(0), 3, (8,), 4), jnp.ones((5, 2, 3)))
        >>> out.outputs.shape, [state.shape for state in out.final_states]
        ((5, 2, 4), [(2, 8)])
    """

    outputs: jax.Array
    final_states: tuple[jax.Array, ...]


def _layer_sizes(name: str, layer: object) -> tuple[int, int]:
    """(output features, input features) of a recurrent layer of any kind, or of a
    `BidirectionalParams` (both directions of any kinds, reading the same inputs)."""
    if isinstance(layer, BidirectionalParams):
        d_forward, n = check_recurrent_layer(f"{name}.forward", layer.forward)
        d_backward, n_backward = check_recurrent_layer(f"{name}.backward", layer.backward)
        if n_backward != n:
            raise ValueError(
                f"{name}.backward.W has shape {layer.backward.W.shape} but "
                f"{name}.forward.W has shape {layer.forward.W.shape}: both directions "
                "read the same inputs, so they need the same number of input features."
            )
        check_same_dtype(
            f"{name}.backward.W", layer.backward.W, layer.forward.W.dtype, f"{name}.forward.W"
        )
        return d_forward + d_backward, n
    return check_recurrent_layer(name, layer)


def first_weight(layer) -> jax.Array:
    """The input weight W of a layer (of its forward direction if bidirectional)."""
    return layer.forward.W if isinstance(layer, BidirectionalParams) else layer.W


def check_rnn_params(params: object) -> tuple[int, ...]:
    """Checks an `RNNParams` stack; returns the sizes (n, d_1, …, d_L, k).

    Layers are `LayerParams` or `BidirectionalParams` (whose d_l counts both
    directions).
    """
    if not (hasattr(params, "layers") and hasattr(params, "readout")):
        raise TypeError(
            f"params must be an RNNParams(layers, readout), got {type(params).__name__}. "
            "Build one with dprnn_jax.init_rnn (or use rnn_layer for a single LayerParams)."
        )
    layers = tuple(params.layers)
    if not layers:
        raise ValueError("params.layers must hold at least one LayerParams, got ().")
    sizes = []
    for l, layer in enumerate(layers):
        d, n = _layer_sizes(f"params.layers[{l}]", layer)
        if sizes and n != sizes[-1]:
            weight = "forward.W" if isinstance(layer, BidirectionalParams) else "W"
            raise ValueError(
                f"params.layers[{l}].{weight} has shape {first_weight(layer).shape}: it "
                f"expects {n} inputs but layer {l - 1} has {sizes[-1]} hidden units."
            )
        sizes = [*sizes, n, d] if not sizes else [*sizes, d]
    W_out = params.readout.W
    k, d_out = check_rank("params.readout.W", W_out, 2, "(k, d_L) = (outputs, hidden)")
    if d_out != sizes[-1]:
        raise ValueError(
            f"params.readout.W has shape {W_out.shape} but the last layer has {sizes[-1]} "
            f"hidden units: expected shape ({k}, {sizes[-1]})."
        )
    check_shape("params.readout.b", params.readout.b, (k,), "(k,)")
    dtype = first_weight(layers[0]).dtype
    for l, layer in enumerate(layers[1:], start=1):
        check_same_dtype(f"params.layers[{l}].W", first_weight(layer), dtype, "params.layers[0].W")
    check_same_dtype("params.readout.W", W_out, dtype, "params.layers[0].W")
    check_same_dtype("params.readout.b", params.readout.b, dtype, "params.layers[0].W")
    return (*sizes, k)


def check_initial_states(
    h0s: Sequence[jax.Array | None] | None, layers: Sequence, m: int, inputs_dtype=None
) -> tuple[jax.Array | None, ...]:
    """Checks one (m, d_l) initial state (or None) per layer; a pair for bidirectional.
    Each is in the layers' dtype or, for inputs of `inputs_dtype` (None: the layers'),
    in the dtype they compute in (mixed precision, `_core/precision.py`)."""
    if h0s is None:
        return (None,) * len(layers)
    h0s = tuple(h0s)
    if len(h0s) != len(layers):
        raise ValueError(
            f"h0s must hold one initial state per layer ({len(layers)}), got {len(h0s)}."
        )
    for l, (h0, layer) in enumerate(zip(h0s, layers)):
        if isinstance(layer, BidirectionalParams):
            if h0 is None:
                continue
            if not isinstance(h0, tuple | list) or len(h0) != 2:
                raise ValueError(
                    f"h0s[{l}] must be a pair (h0_forward, h0_backward) (or None) for a "
                    f"bidirectional layer, got {describe(h0)}."
                )
            check_layer_state(
                f"h0s[{l}][0]",
                h0[0],
                layer.forward,
                m,
                f"params.layers[{l}].forward.W",
                inputs_dtype,
            )
            check_layer_state(
                f"h0s[{l}][1]",
                h0[1],
                layer.backward,
                m,
                f"params.layers[{l}].backward.W",
                inputs_dtype,
            )
        else:
            check_layer_state(f"h0s[{l}]", h0, layer, m, f"params.layers[{l}].W", inputs_dtype)
    return h0s


def apply_layer(
    layer,
    hs: jax.Array,
    h0,
    *,
    lengths: jax.Array | None,
    activation: str,
    method: GradientAlgorithm,
) -> tuple[jax.Array, jax.Array]:
    """One layer of the stack as `rnn_forward` runs it: `(outputs, final state)`.

    `h0` is the layer's initial state (a pair for a bidirectional layer) or None. With
    `lengths` the layer zeroes its padded inputs itself, so NaN or inf padding stays out
    of the states and of the backward products.
    """
    options = dict(lengths=lengths, activation=activation, method=method)
    if isinstance(layer, BidirectionalParams):
        return bidirectional_outputs_and_final(layer, hs, h0, **options)
    return run_recurrent_layer(layer, hs, h0, **options)


def rnn_forward(
    params: RNNParams,
    xs: jax.Array,
    h0s: Sequence | None = None,
    *,
    lengths: jax.Array | None = None,
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    block: int | None = None,
    truncation: int | None = None,
    tol: float | None = None,
) -> RNNOutput:
    """Runs the recurrent stack and the readout; returns outputs and final states.

    Args:
        params: `RNNParams(layers, readout)`; each layer a `LayerParams` or a
            `BidirectionalParams`.
        xs: inputs (T, m, n), time-major, right-padded, in the parameters' dtype or, in
            mixed precision (float32 params, bfloat16 inputs), a 16-bit float: the layers
            then compute in it and the outputs are float32
            (docs/performance.md#mixed-precision); or integer token indices (T, m) into a
            vocabulary of n = layers[0].W.shape[1] words (one-hot never built).
        h0s: one initial state per layer ((m, d_l), a pair for a bidirectional layer,
            or None for zeros), or None.
        lengths: valid steps per sequence (m,) integers in [0, T]; None: all T.
            Concrete values outside [0, T] raise; under `jit`, where they cannot be
            checked, such a sequence's outputs (at every step) and final states are
            NaN, not those of a clamped length.
        activation: recurrent activation, "tanh", "sigmoid" or "relu".
        method: gradient algorithm of every recurrent layer(s): a `GradientAlgorithm`
            (`Omega(truncation=32)`, `BPTT()`, …) or its name (see `rnn_layer`).
        block: with the name "omega": Ω triangle size (see `rnn_layer`).
        truncation: with the names "omega", "bptt": K-step truncation (see `rnn_layer`).
        tol: with the name "omega": adaptive Ω tolerance (see `rnn_layer`).

    Returns:
        `RNNOutput(outputs (T, m, k), final_states)`.

    Raises:
        ValueError, TypeError: for inconsistent shapes, dtypes or options, an empty
            batch (m = 0) or T = 0, and concrete `lengths` outside [0, T].

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> out = rnn_forward(params, jnp.ones((5, 2, 3)), lengths=jnp.array([5, 2]))
        >>> out.outputs.shape, out.final_states[0].shape
        ((5, 2, 4), (2, 8))
    """
    check_rnn_params(params)
    layers = tuple(params.layers)
    T, m = check_inputs(xs, first_weight(layers[0]), "params.layers[0].W")
    h0s = check_initial_states(h0s, layers, m, jnp.result_type(xs))
    if lengths is not None:
        lengths = check_lengths(lengths, T, m)
    # Resolved once, so a bad option fails here, and every layer gets the same object.
    algorithm = resolve_method(method, block=block, truncation=truncation, tol=tol)
    hs, finals = xs, []
    for layer, h0 in zip(layers, h0s):
        hs, final = apply_layer(
            layer, hs, h0, lengths=lengths, activation=activation, method=algorithm
        )
        finals.append(final)
    # The readout is time-parallel: one product for all steps.
    outputs = apply_readout(params.readout, hs, algorithm)
    return RNNOutput(outputs, tuple(finals))


def rnn_apply(
    params: RNNParams,
    xs: jax.Array,
    h0s: Sequence | None = None,
    *,
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    block: int | None = None,
    truncation: int | None = None,
    tol: float | None = None,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """Runs the recurrent stack and the readout; returns readout pre-activations.

    `rnn_forward(...).outputs`; see `rnn_forward` for every argument.

    Args:
        params: `RNNParams(layers, readout)`, e.g. from `init_rnn`.
        xs: inputs (T, m, n), time-major, or integer tokens (T, m).
        h0s: one initial state (m, d_l) per layer (or None for zeros), or None.
        activation: recurrent activation, "tanh", "sigmoid" or "relu".
        method: gradient algorithm of every recurrent layer(s): a `GradientAlgorithm`
            (`Omega(truncation=32)`, `BPTT()`, …) or its name (see `rnn_layer`).
        block: with the name "omega": Ω triangle size (see `rnn_layer`).
        truncation: with the names "omega", "bptt": K-step truncation (see `rnn_layer`).
        tol: with the name "omega": adaptive Ω tolerance (see `rnn_layer`).
        lengths: valid steps per sequence (m,), or None (see `rnn_forward`).

    Returns:
        Outputs (T, m, k): logits for softmax/logistic readouts, values for identity;
        NaN at every step of a sequence whose length lies outside [0, T] (under `jit`).

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> rnn_apply(params, jnp.ones((5, 2, 3))).shape
        (5, 2, 4)
    """
    return rnn_forward(
        params,
        xs,
        h0s,
        lengths=lengths,
        activation=activation,
        method=method,
        block=block,
        truncation=truncation,
        tol=tol,
    ).outputs
