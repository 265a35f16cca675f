"""Bidirectional layers at any depth, every method, right-padded mixed lengths.

Oracle: every sequence run ALONE on its valid steps by a plain lax.scan network
(`helpers.alone_loss`), the backward direction on the flipped sequence, differentiated
with jax.grad; the batch cost is (1/m) Σ_v C_v.
"""

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
    alone_states,
    max_relative_error,
    random_inputs,
    random_layer,
    random_stack,
    random_targets,
)

import dprnn_jax as dj

T, M, N, K = 6, 3, 2, 3
LENGTHS = ((6, 6, 6), (6, 3, 1))


def make_problem(kinds, dtype):
    """A stack of `kinds` ("bi"/"uni") layers of 3 units per direction, inputs, targets."""
    params = random_stack(0, kinds, N, 3, K, dtype)
    return params, random_inputs(1, (T, M, N), dtype), random_targets(2, T, M, K, dtype)


@functools.partial(jax.jit, static_argnames=("methods",), compiler_options=CHEAP_COMPILE)
def library_and_oracle(params, xs, targets, *, methods):
    """Gradients of every method, vmapped over the two `LENGTHS`, and the oracle's."""

    def for_lengths(lengths):
        return {
            method: jax.grad(dj.sequence_loss, (0, 1))(
                params, xs, targets, lengths=lengths, method=method
            )
            for method in methods
        }

    library = jax.vmap(for_lengths)(jnp.asarray(LENGTHS))
    oracle = [jax.grad(alone_loss, (0, 1))(params, xs, targets, lengths) for lengths in LENGTHS]
    return library, oracle


@pytest.mark.parametrize(
    "kinds, methods",
    [
        # By default the custom rule and autodiff (the reversal wiring is the same for
        # every method, and each method is checked against jax.grad on its own).
        (("bi", "bi"), ("omega", "autodiff")),
        pytest.param(("bi", "uni"), tuple(ALGORITHMS), marks=pytest.mark.slow),
    ],
)
def test_bidirectional_stack_matches_sequences_run_alone(kinds, methods, dtype):
    params, xs, targets = make_problem(kinds, dtype)
    library, oracle = jax.device_get(library_and_oracle(params, xs, targets, methods=methods))
    rtol = RTOL[jnp.dtype(dtype)]
    errors = {
        (method, lengths): max_relative_error(
            jax.tree.map(lambda g, i=i: g[i], library[method]), oracle[i]
        )
        for method in methods
        for i, lengths in enumerate(LENGTHS)
    }
    assert all(error <= rtol for error in errors.values()), errors


def test_bidirectional_outputs_and_final_states(x64):
    params, xs, _ = make_problem(("bi",), jnp.float64)
    lengths = LENGTHS[1]

    @jax.jit
    def batch_and_alone(params, xs):
        out = dj.rnn_forward(params, xs, lengths=jnp.asarray(lengths))
        alone = [
            alone_states(params, xs[:length, v : v + 1], "tanh") for v, length in enumerate(lengths)
        ]
        logits = [hs @ params.readout.W.T + params.readout.b for hs, _ in alone]
        return out, logits, [finals[0][0] for _, finals in alone]

    out, logits, finals = batch_and_alone(params, xs)
    for v, length in enumerate(lengths):
        np.testing.assert_allclose(out.final_states[0][v], finals[v], rtol=1e-12)
        np.testing.assert_allclose(out.outputs[:length, v], logits[v][:, 0], rtol=1e-12)


def test_bidirectional_errors():
    params, xs, _ = make_problem(("bi",), jnp.float32)
    with pytest.raises(TypeError, match="BidirectionalParams"):
        dj.bidirectional_layer(params.layers[0].forward, xs)
    with pytest.raises(ValueError, match="pair"):
        dj.rnn_apply(params, xs, [jnp.zeros((M, 3))])
    wrong = params.layers[0]._replace(backward=random_layer(0, N + 1, 3, jnp.float32))
    with pytest.raises(ValueError, match="same number of input features"):
        dj.rnn_apply(params._replace(layers=(wrong,)), xs)
