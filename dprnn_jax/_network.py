"""A stack of recurrent layers and a linear readout (DESIGN.md §1)."""

from __future__ import annotations

from collections.abc import Sequence

import jax

from ._layer import rnn_layer
from ._params import RNNParams
from ._validation import (
    check_layer_params,
    check_rank,
    check_same_dtype,
    check_sequence,
    check_shape,
)


def check_rnn_params(params: object) -> tuple[int, ...]:
    """Checks an `RNNParams` stack; returns the sizes (n, d_1, …, d_L, k)."""
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
        d, n = check_layer_params(f"params.layers[{l}]", layer)
        if sizes and n != sizes[-1]:
            raise ValueError(
                f"params.layers[{l}].W has shape {layer.W.shape}: it expects {n} inputs but "
                f"layer {l - 1} has {sizes[-1]} hidden units."
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
    dtype = layers[0].W.dtype
    for l, layer in enumerate(layers[1:], start=1):
        check_same_dtype(f"params.layers[{l}].W", layer.W, dtype, "params.layers[0].W")
    check_same_dtype("params.readout.W", W_out, dtype, "params.layers[0].W")
    check_same_dtype("params.readout.b", params.readout.b, dtype, "params.layers[0].W")
    return (*sizes, k)


def check_initial_states(
    h0s: Sequence[jax.Array | None] | None, layers: Sequence, m: int
) -> tuple[jax.Array | None, ...]:
    """Checks one (m, d_l) initial state (or None) per layer."""
    if h0s is None:
        return (None,) * len(layers)
    h0s = tuple(h0s)
    if len(h0s) != len(layers):
        raise ValueError(
            f"h0s must hold one initial state per layer ({len(layers)}), got {len(h0s)}."
        )
    for l, (h0, layer) in enumerate(zip(h0s, layers)):
        if h0 is not None:
            d = layer.S.shape[0]
            check_shape(f"h0s[{l}]", h0, (m, d), "(m, d_l) = (batch, hidden)")
            check_same_dtype(f"h0s[{l}]", h0, layer.W.dtype, f"params.layers[{l}].W")
    return h0s


def rnn_apply(
    params: RNNParams,
    xs: jax.Array,
    h0s: Sequence[jax.Array | None] | None = None,
    *,
    activation: str = "tanh",
    method: str = "omega",
) -> jax.Array:
    """Runs the recurrent stack and the readout; returns readout pre-activations.

    Args:
        params: `RNNParams(layers, readout)`, e.g. from `init_rnn`.
        xs: inputs (T, m, n), time-major.
        h0s: one initial state (m, d_l) per layer (or None for zeros), or None.
        activation: recurrent activation, "tanh", "sigmoid" or "relu".
        method: gradient method of every recurrent layer (see `rnn_layer`).

    Returns:
        Outputs (T, m, k): logits for softmax/logistic readouts, values for identity.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> rnn_apply(params, jnp.ones((5, 2, 3))).shape
        (5, 2, 4)
    """
    sizes = check_rnn_params(params)
    layers = tuple(params.layers)
    _, m, n = check_sequence("xs", xs)
    if n != sizes[0]:
        raise ValueError(
            f"xs has {n} features (shape {xs.shape}) but params.layers[0].W has shape "
            f"{layers[0].W.shape}, which expects {sizes[0]} input features."
        )
    check_same_dtype("xs", xs, layers[0].W.dtype, "params.layers[0].W")
    h0s = check_initial_states(h0s, layers, m)
    hs = xs
    for layer, h0 in zip(layers, h0s):
        hs = rnn_layer(layer, hs, h0, activation=activation, method=method)
    # The readout is time-parallel: one product for all steps.
    return hs @ params.readout.W.T + params.readout.b
