"""`dj.interop.equinox_scan`: Equinox cells under the library's algorithms.

The reference is a plain `lax.scan` of the cell vmapped over the batch, differentiated
by `jax.grad`; the gradient w.r.t. the cell is an Equinox module of the cell's
structure (`eqx.filter_grad`), alongside those w.r.t. the inputs and the initial carry.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import max_relative_error

import dprnn_jax as dj
from dprnn_jax import interop

T, M, N, D = 5, 2, 3, 4
METHODS = {"omega": dj.Omega(), "bptt": dj.BPTT()}


def reference_scan(cell, xs, carry0):
    def body(carry, x):
        carry = jax.vmap(cell)(x, carry)
        return carry, carry

    return jax.lax.scan(body, carry0, xs)[1]


def loss(carries) -> jax.Array:
    return sum(jnp.sum(jnp.sin(leaf) * (1 + leaf)) for leaf in jax.tree.leaves(carries))


@pytest.mark.parametrize("cell_name", ["GRUCell", "LSTMCell"])
def test_equinox_scan_matches_a_plain_scan_of_the_cell(cell_name, x64):
    keys = jax.random.split(jax.random.key(0), 3)
    cell = getattr(eqx.nn, cell_name)(N, D, dtype=jnp.float64, key=keys[0])
    xs = jax.random.normal(keys[1], (T, M, N), jnp.float64)
    h0 = 0.5 * jax.random.normal(keys[2], (M, D), jnp.float64)
    carry0 = (h0, jnp.cos(h0)) if cell_name == "LSTMCell" else h0

    @jax.jit
    def run(cell, xs, carry0):
        expected = reference_scan(cell, xs, carry0)
        expected_grads = eqx.filter_grad(lambda *a: loss(reference_scan(*a)))(cell, xs, carry0)
        carries = {
            name: interop.equinox_scan(cell, xs, carry0, method=method)
            for name, method in METHODS.items()
        }
        grads = {
            name: eqx.filter_grad(
                lambda *a, method=method: loss(interop.equinox_scan(*a, method=method))
            )(cell, xs, carry0)
            for name, method in METHODS.items()
        }
        return expected, expected_grads, carries, grads

    expected, expected_grads, carries, grads = run(cell, xs, carry0)
    for name in METHODS:
        assert max_relative_error(carries[name], expected) <= 1e-12
        # filter_grad differentiates the cell's floating arrays: the gradient is a module
        # of the same kind, with None where the cell holds no array.
        assert type(grads[name]) is type(cell)
        assert jax.tree.structure(grads[name]) == jax.tree.structure(expected_grads)
        error = max_relative_error(grads[name], expected_grads)
        assert error <= 1e-10, f"{name}: max relative error {error:.2e}"


def test_equinox_scan_refuses_a_non_callable_cell():
    with pytest.raises(TypeError, match="cell must be an Equinox module"):
        interop.equinox_scan(3.0, jnp.ones((T, M, N)), jnp.zeros((M, D)))


def test_cells_of_other_frameworks_and_non_cells_are_refused_with_the_fix():
    from flax import nnx

    xs, h0 = jnp.ones((T, M, N)), jnp.zeros((M, D))
    with pytest.raises(TypeError, match=r"flax\.nnx module: use dprnn_jax\.interop\.nnx\.RNN"):
        interop.equinox_scan(nnx.GRUCell(N, D, rngs=nnx.Rngs(0)), xs, h0)
    linear = eqx.nn.Linear(N, D, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"Linear failed on one sample's x float32\[3\].*GRUCell"):
        interop.equinox_scan(linear, xs, h0)


def test_a_carry_of_the_wrong_width_or_structure_is_named():
    key = jax.random.key(0)
    xs, h0 = jnp.ones((T, M, N)), jnp.zeros((M, D))
    gru, lstm = eqx.nn.GRUCell(N, D, key=key), eqx.nn.LSTMCell(N, D, key=key)
    with pytest.raises(ValueError, match=r"takes h0 of shape \(m, 4\).*carry0 float32\[2, 5\]"):
        interop.equinox_scan(gru, xs, jnp.zeros((M, D + 1)))
    with pytest.raises(ValueError, match=r"takes the pair \(h0, c0\).*carry0 float32\[2, 4\]"):
        interop.equinox_scan(lstm, xs, h0)
    with pytest.raises(ValueError, match=r"xs of shape \(T, m, 3\).*xs float32\[5, 2, 2\]"):
        interop.equinox_scan(gru, xs[..., :2], h0)
