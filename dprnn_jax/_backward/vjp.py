"""The custom VJP of one Elman layer: the forward stores the states, the backward hands
them to the gradient algorithm.

    elman_layer :: (algorithm, activation) -> (params, xs, h0) -> hs

The forward (`_model/forward.hoisted_layer`, or its token form) is the same for every
algorithm. The backward asks the algorithm object for the cotangents; by default it
computes the total errors Δ (`GradientAlgorithm.error_flow`) and contracts them
(`gradients.py`).
"""

from __future__ import annotations

import functools

import jax

from .._model.forward import hoisted_layer
from .._model.params import LayerParams
from .._model.tokens import is_token_input, token_hoisted_layer
from .base import GradientAlgorithm
from .gradients import Residuals


def _forward(activation: str, params: LayerParams, xs: jax.Array, h0: jax.Array) -> jax.Array:
    forward = token_hoisted_layer if is_token_input(xs) else hoisted_layer
    return forward(params, xs, h0, activation=activation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def elman_layer(
    algorithm: GradientAlgorithm,
    activation: str,
    params: LayerParams,
    xs: jax.Array,
    h0: jax.Array,
) -> jax.Array:
    """`hs` of one Elman layer, differentiated by `algorithm` (static, hashable)."""
    del algorithm  # the value does not depend on how it is differentiated
    return _forward(activation, params, xs, h0)


def _elman_layer_fwd(algorithm, activation, params, xs, h0):
    del algorithm
    hs = _forward(activation, params, xs, h0)
    return hs, Residuals(params, xs, h0, hs)


def _elman_layer_bwd(algorithm, activation, residuals, hs_bar):
    # Ψ (docs/theory.md#psi-and-omega): `hs_bar` is what the readout or the layer above
    # sends to h_t; the algorithm turns it into Δ and Δ into the cotangents of
    # (params, xs, h0), docs/theory.md#gradients-from-delta.
    return algorithm.layer_cotangents(residuals, hs_bar, activation)


elman_layer.defvjp(_elman_layer_fwd, _elman_layer_bwd)
