"""The public API: importable, shaped as documented, and composable with jit, vmap, grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, assert_trees_close

import dprnn_jax as dj


def test_public_names_are_exported():
    for name in dj.__all__:
        assert getattr(dj, name) is not None, name
    for name in (
        "LayerParams",
        "RNNParams",
        "ReadoutParams",
        "init_layer",
        "init_rnn",
        "rnn_layer",
        "rnn_apply",
        "sequence_loss",
        "omega_matrix",
    ):
        assert name in dj.__all__


def test_init_shapes_and_dtype(dtype):
    params = dj.init_rnn(jax.random.key(0), 3, (8, 5), 4, dtype=dtype)
    assert [layer.W.shape for layer in params.layers] == [(8, 3), (5, 8)]
    assert [layer.S.shape for layer in params.layers] == [(8, 8), (5, 5)]
    assert params.readout.W.shape == (4, 5) and params.readout.b.shape == (4,)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
    outputs = dj.rnn_apply(params, jnp.ones((7, 2, 3), dtype))
    assert outputs.shape == (7, 2, 4) and outputs.dtype == dtype


@pytest.mark.parametrize("method", ["omega", "bptt", "naive", "autodiff"])
def test_forward_value_is_the_same_for_every_method(method, dtype):
    layer = dj.init_layer(jax.random.key(0), 3, 4, dtype=dtype)
    xs = jax.random.normal(jax.random.key(1), (6, 2, 3), dtype)
    expected = dj.scan_layer(layer, xs, jnp.zeros((2, 4), dtype))
    assert_trees_close(
        dj.rnn_layer(layer, xs, method=method), expected, rtol=RTOL[jnp.dtype(dtype)]
    )


@pytest.mark.parametrize("method", ["omega", "bptt"])
def test_vmap_over_an_ensemble_of_parameters(method, dtype):
    """grad inside vmap over 3 parameter sets equals 3 separate gradients, eager and jitted."""
    keys = jax.random.split(jax.random.key(0), 3)
    ensemble = jax.vmap(lambda k: dj.init_rnn(k, 3, (4,), 2, dtype=dtype))(keys)
    xs = jax.random.normal(jax.random.key(1), (5, 2, 3), dtype)
    ys = jnp.array([[0, 1]] * 5)

    def grad(params, method=method):
        return jax.grad(dj.sequence_loss)(params, xs, ys, method=method)

    batched = jax.jit(jax.vmap(grad))(ensemble)
    single_grad = jax.jit(grad)
    reference_grad = jax.jit(lambda params: grad(params, "autodiff"))
    for member in range(3):
        params = jax.tree.map(lambda leaf, member=member: leaf[member], ensemble)
        single = single_grad(params)
        reference = reference_grad(params)
        got = jax.tree.map(lambda leaf, member=member: leaf[member], batched)
        assert_trees_close(got, reference, rtol=RTOL[jnp.dtype(dtype)])
        assert_trees_close(single, reference, rtol=RTOL[jnp.dtype(dtype)])


def test_mask_none_equals_mask_of_ones():
    params = dj.init_rnn(jax.random.key(0), 3, (4,), 2)
    xs = jax.random.normal(jax.random.key(1), (5, 2, 3))
    ys = jnp.zeros((5, 2), jnp.int32)
    without = jax.grad(dj.sequence_loss)(params, xs, ys)
    with_ones = jax.grad(dj.sequence_loss)(params, xs, ys, mask=jnp.ones((5, 2)))
    assert_trees_close(without, with_ones, rtol=0.0)


def test_second_order_gradients_through_omega(x64):
    """The Ω backward is itself made of differentiable JAX ops (fori_loop with static bounds)."""
    params = dj.init_rnn(jax.random.key(0), 2, (3,), 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (4, 1, 2), jnp.float64)
    ys = jnp.zeros((4, 1), jnp.int32)

    def grad_norm(params, method):
        grads = jax.grad(dj.sequence_loss)(params, xs, ys, method=method)
        return sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    assert_trees_close(
        jax.grad(grad_norm)(params, "omega"), jax.grad(grad_norm)(params, "autodiff"), rtol=1e-10
    )
