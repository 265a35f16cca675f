"""Integer token inputs (T, m): the same gradients as one-hot inputs, never built."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ALGORITHMS,
    CHEAP_COMPILE,
    RTOL,
    alone_loss,
    max_relative_error,
    random_rnn,
    random_stack,
    random_targets,
    reference_loss,
)

import dprnn_jax as dj

T, M, VOCABULARY, K = 6, 3, 5, 3
# Every algorithm that takes token inputs (RTRL does not: its sensitivity to W would
# hold m·d·d·V numbers per step).
TOKEN_METHODS = tuple(name for name, cls in ALGORITHMS.items() if cls.takes_token_inputs)


def make_problem(dtype, layers=(4, 3)):
    params = random_rnn(0, VOCABULARY, layers, K, dtype)
    tokens = random_targets(1, T, M, VOCABULARY, dtype)  # class indices are token ids too
    return params, tokens, random_targets(2, T, M, K, dtype)


@functools.partial(jax.jit, static_argnames=("methods",), compiler_options=CHEAP_COMPILE)
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
    "methods", [("omega", "autodiff"), pytest.param(TOKEN_METHODS, marks=pytest.mark.slow)]
)
def test_tokens_match_one_hot_inputs(methods, dtype):
    params, tokens, targets = make_problem(dtype)
    grads = jax.device_get(token_and_one_hot_gradients(params, tokens, targets, methods=methods))
    rtol = RTOL[jnp.dtype(dtype)]
    errors = {m: max_relative_error(grads[m], grads["one_hot_oracle"]) for m in methods}
    errors["vmapped"] = max_relative_error(grads["vmapped"], grads["vmapped_oracle"])
    assert all(e <= rtol for e in errors.values()), errors


def test_tokens_in_a_bidirectional_padded_batch(x64):
    params = random_stack(0, ("bi",), VOCABULARY, 3, K, jnp.float64)
    _, tokens, targets = make_problem(jnp.float64)
    lengths = (6, 3, 1)
    # Padding holds an out-of-vocabulary id: it is never read.
    padded = np.where(np.arange(T)[:, None] < np.asarray(lengths), tokens, -1)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def library_and_alone(params, padded, tokens, targets):
        grad = jax.grad(dj.sequence_loss)(params, padded, targets, lengths=jnp.asarray(lengths))
        one_hot = jax.nn.one_hot(tokens, VOCABULARY, dtype=jnp.float64)
        return grad, jax.grad(alone_loss)(params, one_hot, targets, lengths)

    grad, expected = library_and_alone(params, padded, tokens, targets)
    assert max_relative_error(grad, expected) <= RTOL[jnp.dtype("float64")]


def test_out_of_vocabulary_token_gives_nan_not_a_number():
    params, tokens, targets = make_problem(jnp.float32)
    bad = np.array(tokens)
    bad[2, 1] = VOCABULARY
    losses = jax.jit(
        lambda params, bad: dj.per_step_losses(
            dj.rnn_apply(params, bad), targets, loss="softmax_cross_entropy"
        )
    )(params, bad)
    assert np.isnan(losses[2:, 1]).all() and np.isfinite(losses[:, 0]).all()


@pytest.mark.parametrize("cell", ["elman", "gru", "lstm"])
@pytest.mark.parametrize("bad_token", [-1, VOCABULARY])
def test_a_token_outside_the_vocabulary_gives_nan_in_every_cell(cell, bad_token):
    # Never a wrapped-around (negative) or clipped lookup: that sequence's outputs from
    # the bad step on are NaN, the other sequence's are untouched.
    params = dj.init_rnn(jax.random.key(0), VOCABULARY, (4,), 3, cell=cell)
    tokens = np.zeros((5, 2), np.int32)
    tokens[2, 1] = bad_token
    outputs = jax.jit(dj.rnn_apply)(params, tokens)
    assert np.isnan(outputs[2:, 1]).all() and np.isfinite(outputs[:2, 1]).all()
    assert np.isfinite(outputs[:, 0]).all()


def test_token_shape_errors():
    params, tokens, _ = make_problem(jnp.float32)
    # Integer inputs are tokens only with rank 2 (T, m).
    with pytest.raises(TypeError, match="floating dtype"):
        dj.rnn_layer(params.layers[0], tokens[..., None])
    with pytest.raises(ValueError, match="h0 must have shape"):
        dj.rnn_layer(params.layers[0], tokens, jnp.zeros((M + 1, 4)))


def test_rtrl_refuses_tokens_in_a_layer_and_in_a_network():
    """RTRL's sensitivity to W would hold m·d·d·V numbers per step: the Elman layer, alone
    or in a network, refuses token inputs with the same message (not an indexing error)."""
    params, tokens, targets = make_problem(jnp.float32)
    with pytest.raises(ValueError, match=r"method=RTRL\(\) does not take integer token inputs"):
        dj.rnn_layer(params.layers[0], tokens, method=dj.RTRL())
    with pytest.raises(ValueError, match=r"method=RTRL\(\) does not take integer token inputs"):
        jax.grad(dj.sequence_loss)(params, tokens, targets, method=dj.RTRL())
