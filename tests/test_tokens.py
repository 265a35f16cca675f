"""Integer token inputs (T, m): the same gradients as one-hot inputs, never built."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, alone_loss, max_relative_error, reference_loss

import dprnn_jax as dj

T, M, VOCABULARY, K = 6, 3, 5, 3
METHODS = ("omega", "bptt", "scan", "autodiff")


def make_problem(dtype, layers=(4, 3)):
    k_params, k_tokens, k_y = jax.random.split(jax.random.key(2), 3)
    params = dj.init_rnn(k_params, VOCABULARY, layers, K, dtype=dtype)
    tokens = jax.random.randint(k_tokens, (T, M), 0, VOCABULARY)
    targets = jax.random.randint(k_y, (T, M), 0, K)
    return params, tokens, targets


@functools.partial(jax.jit, static_argnames=("methods",))
def token_and_one_hot_gradients(params, tokens, targets, *, methods):
    one_hot = jax.nn.one_hot(tokens, VOCABULARY, dtype=params.readout.W.dtype)
    grads = {
        method: jax.grad(dj.sequence_loss)(params, tokens, targets, method=method)
        for method in methods
    }
    grads["one_hot_oracle"] = jax.grad(reference_loss)(
        params, one_hot, targets, loss="softmax_cross_entropy", activation="tanh"
    )
    # Under vmap over two token batches (the second one reversed in time).
    both = jnp.stack([tokens, tokens[::-1]])
    grads["vmapped"] = jax.vmap(jax.grad(dj.sequence_loss), (None, 0, None))(params, both, targets)
    grads["vmapped_oracle"] = jax.vmap(
        lambda x: jax.grad(reference_loss)(
            params, x, targets, loss="softmax_cross_entropy", activation="tanh"
        )
    )(jax.nn.one_hot(both, VOCABULARY, dtype=one_hot.dtype))
    return grads


@pytest.mark.parametrize(
    "methods", [("omega", "autodiff"), pytest.param(METHODS, marks=pytest.mark.slow)]
)
def test_tokens_match_one_hot_inputs(methods, dtype):
    params, tokens, targets = make_problem(dtype)
    grads = token_and_one_hot_gradients(params, tokens, targets, methods=methods)
    rtol = RTOL[jnp.dtype(dtype)]
    errors = {m: max_relative_error(grads[m], grads["one_hot_oracle"]) for m in methods}
    errors["vmapped"] = max_relative_error(grads["vmapped"], grads["vmapped_oracle"])
    assert all(e <= rtol for e in errors.values()), errors


def test_tokens_in_a_bidirectional_padded_batch(x64):
    params = dj.RNNParams(
        (dj.init_bidirectional_layer(jax.random.key(0), VOCABULARY, 3, dtype=jnp.float64),),
        dj.ReadoutParams(
            jax.random.normal(jax.random.key(1), (K, 6), jnp.float64), jnp.zeros(K, jnp.float64)
        ),
    )
    _, tokens, targets = make_problem(jnp.float64)
    lengths = (6, 3, 1)
    # Padding holds an out-of-vocabulary id: it is never read.
    padded = jnp.where(jnp.arange(T)[:, None] < jnp.asarray(lengths), tokens, -1)
    grad = jax.jit(jax.grad(functools.partial(dj.sequence_loss, lengths=jnp.asarray(lengths))))(
        params, padded, targets
    )
    one_hot = jax.nn.one_hot(tokens, VOCABULARY, dtype=jnp.float64)
    expected = jax.jit(jax.grad(alone_loss), static_argnums=3)(params, one_hot, targets, lengths)
    assert max_relative_error(grad, expected) <= RTOL[jnp.dtype("float64")]


def test_out_of_vocabulary_token_gives_nan_not_a_number():
    params, tokens, targets = make_problem(jnp.float32)
    bad = tokens.at[2, 1].set(VOCABULARY)
    losses = dj.per_step_losses(
        jax.jit(dj.rnn_apply)(params, bad), targets, loss="softmax_cross_entropy"
    )
    assert np.isnan(losses[2:, 1]).all() and np.isfinite(losses[:, 0]).all()


def test_token_shape_errors():
    params, tokens, _ = make_problem(jnp.float32)
    # Integer inputs are tokens only with rank 2 (T, m).
    with pytest.raises(TypeError, match="floating dtype"):
        dj.rnn_layer(params.layers[0], tokens[..., None])
    with pytest.raises(ValueError, match="h0 must have shape"):
        dj.rnn_layer(params.layers[0], tokens, jnp.zeros((M + 1, 4)))
