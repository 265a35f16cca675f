"""Bidirectional layers at any depth, every method, right-padded mixed lengths.

Oracle: every sequence run ALONE on its valid steps by a plain lax.scan network
(`alone_loss`), the backward direction on the flipped sequence, differentiated with
jax.grad; the batch cost is (1/m) Σ_v C_v.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    RTOL,
    alone_loss,
    alone_states,
    make_bidirectional_data,
    make_bidirectional_params,
    max_relative_error,
)

import dprnn_jax as dj

METHODS = ("omega", "bptt", "naive", "scan", "rtrl", "autodiff")
T, M, N, K = 6, 3, 2, 3
LENGTHS = ((6, 6, 6), (6, 3, 1))


@functools.partial(jax.jit, static_argnames=("methods",))
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
        pytest.param(("bi", "uni"), METHODS, marks=pytest.mark.slow),
    ],
)
def test_bidirectional_stack_matches_sequences_run_alone(kinds, methods, dtype):
    params = make_bidirectional_params(kinds, dtype)
    xs, targets = make_bidirectional_data(dtype)
    library, oracle = library_and_oracle(params, xs, targets, methods=methods)
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
    params = make_bidirectional_params(("bi",), jnp.float64)
    xs, _ = make_bidirectional_data(jnp.float64)
    lengths = LENGTHS[1]
    out = dj.rnn_forward(params, xs, lengths=jnp.asarray(lengths))
    for v, length in enumerate(lengths):
        hs, finals = alone_states(params, xs[:length, v : v + 1], "tanh")
        np.testing.assert_allclose(out.final_states[0][v], finals[0][0], rtol=1e-12)
        logits = hs @ params.readout.W.T + params.readout.b
        np.testing.assert_allclose(out.outputs[:length, v], logits[:, 0], rtol=1e-12)


def test_bidirectional_errors():
    params = make_bidirectional_params(("bi",), jnp.float32)
    xs, _ = make_bidirectional_data(jnp.float32)
    with pytest.raises(TypeError, match="BidirectionalParams"):
        dj.bidirectional_layer(params.layers[0].forward, xs)
    with pytest.raises(ValueError, match="pair"):
        dj.rnn_apply(params, xs, [jnp.zeros((M, 3))])
    wrong = params.layers[0]._replace(backward=dj.init_layer(jax.random.key(0), N + 1, 3))
    with pytest.raises(ValueError, match="same number of input features"):
        dj.rnn_apply(params._replace(layers=(wrong,)), xs)
