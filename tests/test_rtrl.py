"""Online RTRL (`rtrl_step`, `rtrl_gradient`): after every step, the exact gradient of
the cost seen so far; after the last, `jax.grad` of the whole sequence loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, make_problem, max_relative_error, reference_loss
from jax import lax

import dprnn_jax as dj

T, M, N_LAYERS = 5, 2, 2
OPTIONS = dict(loss="softmax_cross_entropy", activation="tanh")


@jax.jit
def online_and_oracle(params, xs, targets, mask, h0s):
    """RTRL's gradient after each step, and the oracle of every prefix cost, vmapped."""

    def step(state, inputs):
        x, target, step_mask = inputs
        state, _ = dj.rtrl_step(params, state, x, target, mask=step_mask, **OPTIONS)
        return state, (state.loss, state.gradient)

    _, (losses, gradients) = lax.scan(step, dj.rtrl_init(params, M, h0s), (xs, targets, mask))

    def prefix_oracle(t):
        prefix = mask * (jnp.arange(T) <= t)[:, None]
        return jax.value_and_grad(reference_loss)(params, xs, targets, prefix, h0s, **OPTIONS)

    oracle_losses, oracle_gradients = jax.vmap(prefix_oracle)(jnp.arange(T))
    # The full-sequence form is a scan of the same step; checked once, in float64.
    total = None
    if xs.dtype == jnp.float64:
        total = dj.rtrl_gradient(params, xs, targets, mask=mask, h0s=h0s, **OPTIONS)
    return (losses, gradients), (oracle_losses, oracle_gradients), total


def test_online_gradient_is_exact_at_every_step(dtype):
    params, xs, targets, mask, h0s = make_problem(jax.random.key(5), T, M, N_LAYERS, dtype)
    online, oracle, total = online_and_oracle(params, xs, targets, mask, h0s)
    rtol = RTOL[jnp.dtype(dtype)]
    assert max_relative_error(online, oracle) <= rtol
    if total is None:
        return
    # The full-sequence form equals the last step of the online one.
    total_loss, total_gradient = total
    last = jax.tree.map(lambda g: g[-1], oracle[1])
    assert max_relative_error(total_gradient, last) <= rtol
    assert max_relative_error(total_loss, oracle[0][-1]) <= rtol


def test_rtrl_rejects_what_it_cannot_do():
    params = dj.init_rnn(jax.random.key(0), 2, (3,), 2)
    bidirectional = params._replace(layers=(dj.init_bidirectional_layer(jax.random.key(1), 2, 3),))
    with pytest.raises(ValueError, match="bidirectional"):
        dj.rtrl_init(
            bidirectional._replace(readout=dj.ReadoutParams(jnp.zeros((2, 6)), jnp.zeros(2))), 1
        )
    state = dj.rtrl_init(params, 1)
    with pytest.raises(ValueError, match="x must have shape"):
        dj.rtrl_step(params, state, jnp.ones((2, 2)), jnp.array([0]))
    with pytest.raises(ValueError, match="batch_size"):
        dj.rtrl_init(params, 0)
    with pytest.raises(ValueError, match="token"):
        dj.rnn_layer(params.layers[0], jnp.zeros((3, 1), jnp.int32), method="rtrl")
