"""omega_matrix against jax.jacrev of the pre-activations of a plain scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, SIGMAS, assert_trees_close, random_inputs, random_layer

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
    layer = jax.device_get(random_layer(T, 2, 3, dtype, noise=0.0))
    layer = jax.device_put(layer._replace(S=layer.S * 1.5, b=np.array([0.3, -0.2, 0.1], dtype)))
    xs = random_inputs(T + 10, (T, 2, 2), dtype)
    h0 = random_inputs(T + 20, (2, 3), dtype)

    @jax.jit
    def library_and_jacrev(layer, xs, h0):
        return (
            dj.omega_matrix(layer, xs, h0, activation=activation),
            jacobian_triangle(layer, xs, h0, activation),
        )

    omega, expected = library_and_jacrev(layer, xs, h0)
    assert omega.shape == (T, T, 2, 3, 3)
    assert_trees_close(omega, expected, rtol=RTOL[jnp.dtype(dtype)])


def test_omega_matrix_is_identity_on_and_zero_above_the_diagonal():
    """Exact values, not rounding: Ω(j, j) is put there as the identity, Ω(j, i > j) = 0."""
    layer = random_layer(0, 2, 3, np.float32)
    omega = np.asarray(dj.omega_matrix(layer, random_inputs(1, (4, 1, 2), np.float32)))
    for j in range(4):
        np.testing.assert_array_equal(omega[j, j, 0], np.eye(3))
        for i in range(j + 1, 4):
            assert not np.any(omega[j, i])
