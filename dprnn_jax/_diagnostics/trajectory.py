"""The forward trajectory of one recurrent layer, as every Ω diagnostic reads it.

The diagnostics (`omega_norms`, `lyapunov_exponent`, `lyapunov_qr`, `decay_bound`,
`gradient_flow`) all look at one layer: either a `LayerParams` with its own inputs, or
layer `l` of an `RNNParams` stack, whose inputs are the states of the layer below.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._backward.jacobian import ElmanJacobian
from .._model.activations import ACTIVATIONS, get_activation
from .._model.forward import hoisted_layer
from .._model.network import check_rnn_params
from .._model.params import LayerParams
from .._validation import check_choice, check_layer_inputs, check_same_dtype, check_sequence


class Trajectory(NamedTuple):
    """One layer's parameters, inputs (T, m, n), initial state, states hs and σ'(Z)."""

    params: LayerParams
    xs: jax.Array
    h0: jax.Array
    hs: jax.Array
    sigma_prime: jax.Array


def check_layer_index(layer: object, num_layers: int) -> int:
    """Checks a layer index in [-L, L) (Python's convention); returns it in [0, L)."""
    if (
        not isinstance(layer, int)
        or isinstance(layer, bool)
        or not -num_layers <= layer < num_layers
    ):
        raise ValueError(
            f"layer must be an int in [-{num_layers}, {num_layers}) for a stack of "
            f"{num_layers} recurrent layer(s), got {layer!r}."
        )
    return layer % num_layers


def layer_trajectory(
    params, xs: jax.Array, h0: jax.Array | None = None, *, activation: str, layer: int = -1
) -> Trajectory:
    """Runs the forward pass up to one layer and records what its Ω depends on.

    Args:
        params: a `LayerParams` (then `layer` is ignored) or an `RNNParams` stack.
        xs: the network inputs (T, m, n).
        h0: the initial state (m, d) of the inspected layer; zeros if None. The layers
            below it (for a stack) start from zeros.
        activation: "tanh", "sigmoid" or "relu".
        layer: which layer of an `RNNParams` stack (default the top one).

    Returns:
        `Trajectory` of the inspected layer.

    Raises:
        ValueError, TypeError: as `rnn_layer` for bad shapes, dtypes or options, and for
            a `layer` index outside the stack.
    """
    if hasattr(params, "layers") and hasattr(params, "readout"):
        check_choice("activation", activation, ACTIVATIONS)
        check_rnn_params(params)
        layers = tuple(params.layers)
        index = check_layer_index(layer, len(layers))
        _, m, _ = check_sequence("xs", xs)
        check_same_dtype("xs", xs, layers[0].W.dtype, "params.layers[0].W")
        for below in layers[:index]:
            zeros = jnp.zeros((m, below.S.shape[0]), below.W.dtype)
            xs = hoisted_layer(below, xs, zeros, activation=activation)
        params = layers[index]
    _, _, _, h0 = check_layer_inputs(params, xs, h0, activation=activation)
    hs = hoisted_layer(params, xs, h0, activation=activation)
    sigma_prime = get_activation(activation).derivative_from_output(hs)
    return Trajectory(params, xs, h0, hs, sigma_prime)


def one_step_jacobians(trajectory: Trajectory) -> jax.Array:
    """Ω(i+1, i) = S · diag(σ'(Z_i)) for every step and sample: (T, m, d, d)."""
    jacobian = ElmanJacobian(trajectory.params.S, trajectory.sigma_prime)
    return jacobian.matrices(jacobian.per_step, trajectory.sigma_prime)
