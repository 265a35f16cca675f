"""Bad input raises ValueError/TypeError naming the argument, expected and received."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE, CUSTOM_METHODS, random_layer, random_rnn

import dprnn_jax as dj

T, M, N, D, K = 4, 2, 3, 5, 6


@pytest.fixture
def layer():
    return random_layer(0, N, D, np.float32)


@pytest.fixture
def params():
    return random_rnn(0, N, (D, D), K, np.float32)


def xs(shape=(T, M, N), dtype=np.float32):
    return np.ones(shape, dtype)


@pytest.mark.parametrize(
    "bad_xs, error, message",
    [
        (xs((T, N)), ValueError, r"xs must have rank 3 with shape \(T, m, n\).*got shape \(4, 3\)"),
        (xs((T, M, N + 1)), ValueError, r"xs has 4 features .* expects 3 input features"),
        (xs((0, M, N)), ValueError, r"xs must have at least one time step.*T = 0"),
        (np.ones((T, M, N), np.int32), TypeError, r"xs must have a floating dtype.*int32"),
        ([[1.0]], TypeError, r"xs must be an array of shape \(T, m, n\).*got list"),
    ],
)
def test_rnn_layer_rejects_bad_xs(layer, bad_xs, error, message):
    with pytest.raises(error, match=message):
        dj.rnn_layer(layer, bad_xs)


def test_an_empty_batch_raises_as_an_empty_sequence_does(params):
    """m = 0 gave a NaN loss (0 / 0) where T = 0 raised: every entry point raises, at
    trace time (under jit too), for float inputs and tokens alike."""
    empty, targets = xs((T, 0, N)), np.zeros((T, 0), np.int32)
    gru = dj.init_rnn(jax.random.key(0), N, (D,), K, cell="gru")
    calls = {
        "sequence_loss": lambda: dj.sequence_loss(params, empty, targets),
        "checkpointed": lambda: dj.sequence_loss(
            params, empty, targets, method=dj.BPTT(checkpoint="sqrt")
        ),
        "many_to_one_loss": lambda: dj.many_to_one_loss(gru, empty, np.zeros(0, np.int32)),
        "jit": lambda: jax.jit(dj.sequence_loss)(gru, empty, targets),
        "rnn_layer": lambda: dj.rnn_layer(params.layers[0], empty),
        "gru_layer": lambda: dj.gru_layer(gru.layers[0], empty),
        "tokens": lambda: dj.rnn_apply(params, targets),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r"xs must hold at least one sequence.*m = 0"):
            call()
            pytest.fail(f"{name} accepted an empty batch")


def test_rnn_layer_rejects_bad_h0(layer):
    with pytest.raises(ValueError, match=r"h0 must have shape \(m, d\).*= \(2, 5\), got \(3, 5\)"):
        dj.rnn_layer(layer, xs(), jnp.zeros((3, D)))
    with pytest.raises(ValueError, match=r"h0 must have rank 2.*got shape \(5,\)"):
        dj.rnn_layer(layer, xs(), jnp.zeros((D,)))


def test_rnn_layer_rejects_bad_params(layer, params):
    with pytest.raises(
        ValueError, match=r"params.S must have shape \(d, d\) = \(5, 5\), got \(5, 4\)"
    ):
        dj.rnn_layer(layer._replace(S=jnp.zeros((D, D - 1))), xs())
    with pytest.raises(ValueError, match=r"params.b must have shape \(d,\) = \(5,\), got \(4,\)"):
        dj.rnn_layer(layer._replace(b=jnp.zeros(D - 1)), xs())
    with pytest.raises(TypeError, match=r"params must be a LayerParams\(W, S, b\), got RNNParams"):
        dj.rnn_layer(params, xs())


def test_dtype_mixups_raise(layer, x64):
    with pytest.raises(TypeError, match=r"xs has dtype float64 but params.W has dtype float32"):
        dj.rnn_layer(layer, xs(dtype=np.float64))
    with pytest.raises(
        TypeError, match=r"params.S has dtype float64 but params.W has dtype float32"
    ):
        dj.rnn_layer(layer._replace(S=layer.S.astype(np.float64)), xs())


@pytest.mark.parametrize("name, value", [("method", "adjoint"), ("activation", "gelu")])
def test_unknown_options_raise(layer, params, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be one of .*got '{value}'"):
        dj.rnn_layer(layer, xs(), **{name: value})
    with pytest.raises(ValueError, match=rf"{name} must be one of .*got '{value}'"):
        dj.rnn_apply(params, xs(), **{name: value})


def test_rnn_apply_rejects_inconsistent_stack(params):
    layers = (params.layers[0], params.layers[1]._replace(W=jnp.zeros((D, D + 1))))
    with pytest.raises(ValueError, match=r"params.layers\[1\].W has shape \(5, 6\): it expects 6"):
        dj.rnn_apply(params._replace(layers=layers), xs())
    readout = params.readout._replace(W=jnp.zeros((K, D + 1)))
    with pytest.raises(
        ValueError, match=r"params.readout.W has shape \(6, 6\).*expected shape \(6, 5\)"
    ):
        dj.rnn_apply(params._replace(readout=readout), xs())
    with pytest.raises(ValueError, match=r"h0s must hold one initial state per layer \(2\), got 1"):
        dj.rnn_apply(params, xs(), [None])
    with pytest.raises(ValueError, match=r"h0s\[1\] must have shape .* = \(2, 5\), got \(2, 4\)"):
        dj.rnn_apply(params, xs(), [None, jnp.zeros((M, D - 1))])
    with pytest.raises(ValueError, match=r"xs has 4 features .*params.layers\[0\].W"):
        dj.rnn_apply(params, xs((T, M, N + 1)))


def test_sequence_loss_rejects_bad_targets_mask_and_loss(params):
    labels = jnp.zeros((T, M), jnp.int32)
    with pytest.raises(ValueError, match=r"loss must be one of .*got 'hinge'"):
        dj.sequence_loss(params, xs(), labels, loss="hinge")
    with pytest.raises(
        ValueError, match=r"targets must have shape \(T, m\).* = \(4, 2\), got \(4, 3\)"
    ):
        dj.sequence_loss(params, xs(), jnp.zeros((T, M + 1), jnp.int32))
    with pytest.raises(TypeError, match=r"targets for softmax_cross_entropy must be integer"):
        dj.sequence_loss(params, xs(), labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"targets must have shape \(T, m, k\) = \(4, 2, 6\)"):
        dj.sequence_loss(params, xs(), jnp.zeros((T, M, K - 1)), loss="mse")
    with pytest.raises(ValueError, match=r"mask must have shape \(T, m\) = \(4, 2\), got \(2, 4\)"):
        dj.sequence_loss(params, xs(), labels, mask=np.ones((M, T)))


def test_initialisers_reject_bad_sizes():
    with pytest.raises(ValueError, match=r"hidden_size must be a positive int, got 0"):
        dj.init_layer(jax.random.key(0), 3, 0)
    with pytest.raises(ValueError, match=r"hidden_sizes must name at least one recurrent layer"):
        dj.init_rnn(jax.random.key(0), 3, (), 2)
    with pytest.raises(TypeError, match=r"dtype must be a floating dtype.*int32"):
        dj.init_layer(jax.random.key(0), 3, 4, dtype=np.int32)


def test_out_of_range_class_gives_nan_not_a_number(params):
    labels = np.full((T, M), K, np.int32)  # K is one past the last class
    assert np.isnan(jax.jit(dj.sequence_loss)(params, xs(), labels))


# Module level: the "autodiff" reference compiles once for every method.
loss_and_grad = jax.jit(
    jax.value_and_grad(dj.sequence_loss, (0, 1)),
    static_argnames="method",
    compiler_options=CHEAP_COMPILE,
)


@pytest.mark.parametrize("method", CUSTOM_METHODS)
def test_nan_in_xs_propagates_like_jax_grad(params, method):
    """A NaN input poisons the states after it; gradients are NaN exactly where jax.grad's
    are (a pattern, not a rounding question: the two programs agree on it exactly)."""
    bad = xs()
    bad[2, 1, 0] = np.nan
    labels = np.zeros((T, M), np.int32)
    mask = np.ones((T, M), np.float32)
    mask[3:, 0] = 0
    value, grads = loss_and_grad(params, bad, labels, mask=mask, method=method)
    ref_value, ref_grads = loss_and_grad(params, bad, labels, mask=mask, method="autodiff")
    assert np.isnan(value) and np.isnan(ref_value)
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
        assert np.isnan(ours).any()
        np.testing.assert_allclose(ours[~np.isnan(ours)], ref[~np.isnan(ref)], rtol=1e-4, atol=1e-6)
