"""A short optax run: the loss decreases and `omega` follows the `autodiff` trajectory."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import CHEAP_COMPILE, RTOL, assert_trees_close, random_inputs

import dprnn_jax as dj


def toy_task(seed, T=12, m=8):
    """Predict at every step whether the running sum of the inputs is positive."""
    xs = random_inputs(seed, (T, m, 1), np.float32)
    return xs, (np.cumsum(np.asarray(xs)[..., 0], axis=0) > 0).astype(np.int32)


def train(method, steps=15):
    params = dj.init_rnn(jax.random.key(0), 1, (8,), 2)
    xs, ys = toy_task(1)
    optimiser = optax.adam(3e-2)
    opt_state = optimiser.init(params)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(dj.sequence_loss)(params, xs, ys, method=method)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return params, losses


def test_omega_trains_like_autodiff():
    omega_params, omega_losses = train(dj.Omega())
    autodiff_params, autodiff_losses = train("autodiff")
    assert omega_losses[-1] < 0.7 * omega_losses[0]
    # Two programs, 15 Adam steps: the trajectories agree to float32 rounding.
    assert_trees_close(omega_params, autodiff_params, rtol=RTOL[jnp.dtype("float32")])
