"""The public API: importable, shaped as documented, and composable with jit, vmap, grad."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ALGORITHMS,
    CHEAP_COMPILE,
    CUSTOM_METHODS,
    RTOL,
    assert_trees_close,
    method_forms,
    random_inputs,
)

import dprnn_jax as dj


def test_public_names_are_exported():
    for namespace in (dj, dj.backward, dj.diagnostics, dj.training):
        for name in namespace.__all__:
            assert getattr(namespace, name) is not None, (namespace.__name__, name)
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
    init = jax.jit(dj.init_rnn, static_argnums=(1, 2, 3), static_argnames="dtype")
    params = init(jax.random.key(0), 3, (8, 5), 4, dtype=dtype)
    assert [layer.W.shape for layer in params.layers] == [(8, 3), (5, 8)]
    assert [layer.S.shape for layer in params.layers] == [(8, 8), (5, 5)]
    assert params.readout.W.shape == (4, 5) and params.readout.b.shape == (4,)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
    outputs = jax.eval_shape(dj.rnn_apply, params, jax.ShapeDtypeStruct((7, 2, 3), dtype))
    assert outputs.shape == (7, 2, 4) and outputs.dtype == dtype


def test_half_precision_elman_stacks_initialise_and_run():
    """The orthogonal S has no half-precision QR: it is drawn in float32 and rounded, so
    it is orthogonal to that precision; the model runs forward in its own dtype."""

    @jax.jit
    def init_and_run():
        results = []
        for dtype in (jnp.bfloat16, jnp.float16):
            params = dj.init_rnn(jax.random.key(0), 3, (4,), 2, dtype=dtype)
            results.append((params, dj.rnn_apply(params, jnp.ones((5, 2, 3), dtype))))
        return results

    for dtype, (params, outputs) in zip((jnp.bfloat16, jnp.float16), init_and_run()):
        assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
        S = np.asarray(params.layers[0].S, np.float32)
        assert np.abs(S @ S.T - np.eye(4)).max() <= 2 * jnp.finfo(dtype).eps
        assert outputs.dtype == dtype and outputs.shape == (5, 2, 2)
        assert np.isfinite(np.asarray(outputs, np.float32)).all()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_forward_value_is_the_same_for_every_method(name, dtype):
    """Eagerly, by name and as an object: the custom rules change only the backward."""
    layer = dj.init_layer(jax.random.key(0), 3, 4, dtype=dtype)
    xs = random_inputs(1, (6, 2, 3), dtype)
    expected = dj.scan_layer(layer, xs, jnp.zeros((2, 4), dtype))
    for method in method_forms(name):
        assert_trees_close(
            dj.rnn_layer(layer, xs, method=method), expected, rtol=RTOL[jnp.dtype(dtype)]
        )


@jax.jit
def ensemble_and_reference(keys, xs, ys):
    """Three parameter sets from vmapped `init_rnn`, and their gradients by "autodiff"
    (shared by every method: one compiled program per dtype)."""
    ensemble = jax.vmap(lambda k: dj.init_rnn(k, 3, (4,), 2, dtype=xs.dtype))(keys)
    reference = jax.vmap(lambda p: jax.grad(dj.sequence_loss)(p, xs, ys, method="autodiff"))
    return ensemble, reference(ensemble)


@pytest.mark.parametrize("method", CUSTOM_METHODS)
def test_vmap_over_an_ensemble_of_parameters(method, dtype):
    """grad inside vmap over 3 parameter sets equals 3 separate gradients, under jit."""
    keys = jax.random.split(jax.random.key(0), 3)
    xs = random_inputs(1, (5, 2, 3), dtype)
    ys = np.array([[0, 1]] * 5, np.int32)
    ensemble, reference = ensemble_and_reference(keys, xs, ys)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def batched_and_single(ensemble):
        grad = functools.partial(jax.grad(dj.sequence_loss), xs=xs, targets=ys, method=method)
        members = [jax.tree.map(lambda leaf, i=i: leaf[i], ensemble) for i in range(3)]
        return jax.vmap(grad)(ensemble), [grad(params) for params in members]

    batched, single = jax.device_get(batched_and_single(ensemble))
    reference = jax.device_get(reference)
    for member in range(3):
        expected = jax.tree.map(lambda leaf, member=member: leaf[member], reference)
        got = jax.tree.map(lambda leaf, member=member: leaf[member], batched)
        assert_trees_close(got, expected, rtol=RTOL[jnp.dtype(dtype)])
        assert_trees_close(single[member], expected, rtol=RTOL[jnp.dtype(dtype)])


def test_mask_none_equals_mask_of_ones():
    params = dj.init_rnn(jax.random.key(0), 3, (4,), 2)
    xs = random_inputs(1, (5, 2, 3), np.float32)
    ys = np.zeros((5, 2), np.int32)
    without, with_ones = jax.jit(
        lambda params: (
            jax.grad(dj.sequence_loss)(params, xs, ys),
            jax.grad(dj.sequence_loss)(params, xs, ys, mask=np.ones((5, 2), np.float32)),
        )
    )(params)
    # Two programs (a mask of ones is multiplied in): equal up to float32 rounding.
    assert_trees_close(without, with_ones, rtol=1e-6)


def test_second_order_gradients_through_omega(x64):
    """The Ω backward is itself made of differentiable JAX ops (fori_loop with static bounds)."""
    params = dj.init_rnn(jax.random.key(0), 2, (3,), 2, dtype=jnp.float64)
    xs = random_inputs(1, (4, 1, 2), np.float64)
    ys = np.zeros((4, 1), np.int32)

    def grad_norm(params, method):
        grads = jax.grad(dj.sequence_loss)(params, xs, ys, method=method)
        return sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    second_order = jax.jit(jax.grad(grad_norm), static_argnums=1, compiler_options=CHEAP_COMPILE)
    assert_trees_close(second_order(params, "omega"), second_order(params, "autodiff"), rtol=1e-10)
