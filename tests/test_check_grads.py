"""jax.test_util.check_grads (reverse mode, float64) on every custom backward.

`custom_vjp` has no forward mode, so only modes=("rev",) applies; check_grads compares
the VJP with finite differences of the forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.test_util import check_grads

import dprnn_jax as dj


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("method", ["omega", "bptt", "naive"])
def test_check_grads_reverse_mode(method, activation, x64):
    k_layer, k_x, k_h, k_b = jax.random.split(jax.random.key(3), 4)
    layer = dj.init_layer(k_layer, 3, 4, dtype=jnp.float64)
    layer = layer._replace(b=0.5 * jax.random.normal(k_b, (4,), jnp.float64))
    xs = jax.random.normal(k_x, (6, 2, 3), jnp.float64)
    h0 = jax.random.normal(k_h, (2, 4), jnp.float64)

    def f(layer, xs, h0):
        hs = dj.rnn_layer(layer, xs, h0, activation=activation, method=method)
        return jnp.sum(jnp.sin(hs))  # a non-linear readout: every step gets its own error

    check_grads(f, (layer, xs, h0), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
