"""Online learning with RTRL (docs/theory.md#rtrl): the gradient of the cost so far, step by step.

For streaming data the future is not available, so back-propagation through time is
not an option; real-time recurrent learning carries the sensitivities of every
layer's state to every parameter below it forward in time (`_rtrl.py`),

    M^l_t[θ^l]  = σ'(Z^l_t) ⊙ (S^l M^l_{t−1}[θ^l]  + ∂Z^l_t/∂θ^l |direct),
    M^l_t[θ^l'] = σ'(Z^l_t) ⊙ (S^l M^l_{t−1}[θ^l'] + W^l M^{l−1}_t[θ^l'])   (l' < l),

and turns the error of each step's loss into a gradient at once:
`∂ℓ_t/∂θ^l' = (∂ℓ_t/∂h^L_t) · M^L_t[θ^l']`. After step t the state holds the exact
gradient of `C_t = (1/m) Σ_{s≤t} Σ_rows loss(ŷ_s, y_s)`; after the last step it equals
`jax.grad(sequence_loss)`. The initial states are constants (no gradient w.r.t. h0).
Cost O(m·d⁴) per step and O(m·d·|θ|) memory (see `_rtrl.py`): small models only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._algorithms.rtrl import (
    contract,
    direct_drive,
    propagate,
    through_recurrence,
    zero_sensitivity,
)
from .._core.activations import get_activation
from .._core.params import LayerParams, ReadoutParams, RNNParams
from .._core.validation import (
    check_choice,
    check_floating,
    check_positive_int,
    check_sequence,
    check_shape,
)
from .bidirectional import BidirectionalParams
from .loss import LOSSES, per_step_losses
from .network import check_initial_states, check_rnn_params


class RTRLState(NamedTuple):
    """What online RTRL carries from step to step.

    Attributes:
        hidden: h^l_t per layer, (m, d_l).
        sensitivities: `[l][l']` = ∂h^l_t/∂θ^{l'} for l' ≤ l, a `LayerParams` of
            arrays (m, d_l, *shape of θ^{l'}'s leaf).
        gradient: ∂C_t/∂θ, an `RNNParams` like the parameters.
        loss: C_t, the cost of the steps seen so far.

    Example:
        >>> state = rtrl_init(init_rnn(jax.random.key(0), 2, (3,), 2), 4)
        >>> state.hidden[0].shape, float(state.loss)
        ((4, 3), 0.0)
    """

    hidden: tuple[jax.Array, ...]
    sensitivities: tuple[tuple, ...]
    gradient: RNNParams
    loss: jax.Array


def _check_unidirectional(params: RNNParams) -> None:
    for l, layer in enumerate(params.layers):
        if isinstance(layer, BidirectionalParams):
            raise ValueError(
                f"params.layers[{l}] is bidirectional: its backward direction reads the "
                "future, so it cannot be learned online with RTRL. Use rnn_layer with "
                "method='rtrl' on the whole sequence, or a unidirectional stack."
            )
        if not isinstance(layer, LayerParams):
            raise ValueError(
                f"params.layers[{l}] is a {type(layer).__name__}: online RTRL (rtrl_init, "
                "rtrl_step) is written for Elman layers. Use method=RTRL() on whole "
                "sequences for GRU and LSTM layers."
            )


def rtrl_init(
    params: RNNParams, batch_size: int, h0s: Sequence[jax.Array | None] | None = None
) -> RTRLState:
    """The state before the first step: h0 (zeros if None), zero sensitivities and gradient.

    Args:
        params: a unidirectional `RNNParams`.
        batch_size: m, the number of streams processed together.
        h0s: one initial state (m, d_l) per layer (None for zeros), or None.

    Returns:
        `RTRLState`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
        >>> rtrl_init(params, 4).sensitivities[0][0].S.shape
        (4, 3, 3, 3)
    """
    check_rnn_params(params)
    _check_unidirectional(params)
    m = check_positive_int("batch_size", batch_size)
    layers = tuple(params.layers)
    h0s = check_initial_states(h0s, layers, m)
    hidden = tuple(
        jnp.zeros((m, layer.S.shape[0]), layer.W.dtype) if h0 is None else h0
        for layer, h0 in zip(layers, h0s)
    )
    sensitivities = tuple(
        tuple(zero_sensitivity(below, m, layer.S.shape[0]) for below in layers[: l + 1])
        for l, layer in enumerate(layers)
    )
    gradient = jax.tree.map(jnp.zeros_like, params)
    return RTRLState(hidden, sensitivities, gradient, jnp.zeros((), params.readout.W.dtype))


def rtrl_step(
    params: RNNParams,
    state: RTRLState,
    x: jax.Array,
    target: jax.Array,
    *,
    mask: jax.Array | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
) -> tuple[RTRLState, jax.Array]:
    """Advances every stream by one step and adds this step's loss and gradient.

    Args:
        params: a unidirectional `RNNParams`.
        state: the `RTRLState` after the previous step (`rtrl_init` at the start).
        x: this step's inputs (m, n).
        target: this step's targets: classes (m,) or floats (m, k), as in
            `per_step_losses`.
        mask: optional (m,); 0 marks a stream with no loss at this step.
        loss: as in `sequence_loss`.
        activation: "tanh", "sigmoid" or "relu".

    Returns:
        `(new_state, outputs (m, k))`; `new_state.gradient` is ∂C_t/∂θ and
        `new_state.sensitivities` the new ∂h_t/∂θ.

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
        >>> state = rtrl_init(params, 1)
        >>> state, y = jax.jit(rtrl_step)(params, state, jnp.ones((1, 2)), jnp.array([1]))
    """
    check_choice("loss", loss, LOSSES)
    sigma = get_activation(activation)
    sizes = check_rnn_params(params)
    _check_unidirectional(params)
    m = state.hidden[0].shape[0]
    check_shape("x", x, (m, sizes[0]), "(m, n) = (batch, features) of one step")
    check_floating("x", x)
    layers = tuple(params.layers)
    hidden, sensitivities = [], []
    inputs = x
    for l, layer in enumerate(layers):
        h_previous = state.hidden[l]
        h = sigma.fn(inputs @ layer.W.T + h_previous @ layer.S.T + layer.b)
        sigma_prime = sigma.derivative_from_output(h)
        row = []
        for below in range(l):
            # Parameters of layer `below` reach Z^l_t through this step's input h^{l−1}_t.
            drive = jax.tree.map(
                lambda M, W=layer.W: through_recurrence(W, M), sensitivities[l - 1][below]
            )
            row.append(propagate(sigma_prime, layer.S, state.sensitivities[l][below], drive))
        own = direct_drive(inputs, h_previous)
        row.append(propagate(sigma_prime, layer.S, state.sensitivities[l][l], own))
        hidden.append(h)
        sensitivities.append(tuple(row))
        inputs = h
    outputs = inputs @ params.readout.W.T + params.readout.b
    step_mask = None if mask is None else jnp.asarray(mask)[None]

    def step_cost(outputs):
        return per_step_losses(outputs[None], target[None], mask=step_mask, loss=loss).sum() / m

    cost, error = jax.value_and_grad(step_cost)(outputs)  # ∂ℓ_t/∂ŷ_t: local, no time
    h_bar = error @ params.readout.W
    layer_gradients = tuple(
        jax.tree.map(jnp.add, old, contract(h_bar, M))
        for old, M in zip(state.gradient.layers, sensitivities[-1])
    )
    readout_gradient = ReadoutParams(
        state.gradient.readout.W + error.T @ inputs,
        state.gradient.readout.b + error.sum(axis=0),
    )
    new_state = RTRLState(
        tuple(hidden),
        tuple(sensitivities),
        RNNParams(layer_gradients, readout_gradient),
        state.loss + cost,
    )
    return new_state, outputs


def rtrl_gradient(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    mask: jax.Array | None = None,
    h0s: Sequence[jax.Array | None] | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
) -> tuple[jax.Array, RNNParams]:
    """`(sequence_loss, its gradient w.r.t. params)` by RTRL: `rtrl_step` in a `lax.scan`.

    Args:
        params: a unidirectional `RNNParams`.
        xs: inputs (T, m, n).
        targets: (T, m) classes or (T, m, k) floats, as in `sequence_loss`.
        mask: optional (T, m).
        h0s: initial states (constants), or None for zeros.
        loss: as in `sequence_loss`.
        activation: as in `sequence_loss`.

    Returns:
        `(C, ∂C/∂params)`, equal to `jax.value_and_grad(sequence_loss)`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
        >>> cost, grads = rtrl_gradient(params, jnp.ones((4, 1, 2)), jnp.ones((4, 1), int))
    """
    sizes = check_rnn_params(params)
    T, m, n = check_sequence("xs", xs)
    if n != sizes[0]:
        raise ValueError(
            f"xs has {n} features (shape {xs.shape}) but params.layers[0].W expects {sizes[0]}."
        )
    if mask is not None:
        check_shape("mask", mask, (T, m), "(T, m)")

    def step(state, inputs):
        x, target, step_mask = inputs
        state, _ = rtrl_step(
            params, state, x, target, mask=step_mask, loss=loss, activation=activation
        )
        return state, None

    ones = jnp.ones((T, m), xs.dtype) if mask is None else jnp.asarray(mask)
    state, _ = lax.scan(step, rtrl_init(params, m, h0s), (xs, targets, ones))
    return state.loss, state.gradient
