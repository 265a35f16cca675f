"""jax.test_util.check_grads (reverse mode, float64) on every custom backward.

`custom_vjp` has no forward mode, so only modes=("rev",) applies; check_grads compares
the VJP with finite differences of the forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from helpers import CUSTOM_METHODS, random_inputs, random_layer
from jax.test_util import check_grads

import dprnn_jax as dj


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("method", CUSTOM_METHODS)
def test_check_grads_reverse_mode(method, activation, x64):
    layer = random_layer(3, 3, 4, jnp.float64)
    xs = random_inputs(4, (6, 2, 3), jnp.float64)
    h0 = random_inputs(5, (2, 4), jnp.float64)

    # Jitted: check_grads evaluates f and its VJP many times at the same shapes.
    @jax.jit
    def f(layer, xs, h0):
        hs = dj.rnn_layer(layer, xs, h0, activation=activation, method=method)
        return jnp.sum(jnp.sin(hs))  # a non-linear readout: every step gets its own error

    check_grads(f, (layer, xs, h0), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
