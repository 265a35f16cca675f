"""omega_matrix against jax.jacrev of the pre-activations of a plain scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, SIGMAS, assert_trees_close

import dprnn_jax as dj


def preactivations(layer, xs, h0, shifts, activation):
    """z_t of a plain scan, with z_t shifted by shifts_t (so ∂z_j/∂shift_i = ∂z_j/∂z_i)."""
    sigma = SIGMAS[activation]

    def step(h, inputs):
        x, shift = inputs
        z = x @ layer.W.T + h @ layer.S.T + layer.b + shift
        return sigma(z), z

    return jax.lax.scan(step, h0, (xs, shifts))[1]


def jacobian_triangle(layer, xs, h0, activation):
    """(T, T, m, d, d) from jacrev: [j, i, v] = ∂z_j[v]/∂z_i[v]."""
    T, m, _ = xs.shape
    d = layer.S.shape[0]
    shifts = jnp.zeros((T, m, d), xs.dtype)
    full = jax.jacrev(preactivations, argnums=3)(layer, xs, h0, shifts, activation)
    # full[j, v, a, i, w, b]: keep the per-sample blocks v == w, indexed [v, j, a, i, b].
    samples = jnp.arange(m)
    return full[:, samples, :, :, samples, :].transpose(1, 3, 0, 2, 4)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_omega_matrix_matches_jacrev(activation, T, dtype):
    k_layer, k_x, k_h = jax.random.split(jax.random.key(T), 3)
    layer = dj.init_layer(k_layer, 2, 3, dtype=dtype)
    layer = layer._replace(S=layer.S * 1.5, b=jnp.array([0.3, -0.2, 0.1], dtype))
    xs = jax.random.normal(k_x, (T, 2, 2), dtype)
    h0 = jax.random.normal(k_h, (2, 3), dtype)
    omega = jax.jit(dj.omega_matrix, static_argnames="activation")(
        layer, xs, h0, activation=activation
    )
    assert omega.shape == (T, T, 2, 3, 3)
    expected = jacobian_triangle(layer, xs, h0, activation)
    assert_trees_close(omega, expected, rtol=RTOL[jnp.dtype(dtype)])


def test_omega_matrix_is_identity_on_and_zero_above_the_diagonal():
    layer = dj.init_layer(jax.random.key(0), 2, 3)
    omega = dj.omega_matrix(layer, jax.random.normal(jax.random.key(1), (4, 1, 2)))
    eye = jnp.eye(3)
    for j in range(4):
        assert jnp.array_equal(omega[j, j, 0], eye)
        for i in range(j + 1, 4):
            assert not jnp.any(omega[j, i])
