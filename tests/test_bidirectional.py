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
import optax
import pytest
from helpers import RTOL, max_relative_error, reference_layer

import dprnn_jax as dj

METHODS = ("omega", "bptt", "naive", "scan", "rtrl", "autodiff")
T, M, N, K = 6, 3, 2, 3
LENGTHS = ((6, 6, 6), (6, 3, 1))


def alone_states(params, x, activation):
    """Per-layer outputs of ONE unpadded sequence x (L, 1, n), plain scans."""
    hs, finals = x, []
    for layer in params.layers:
        if isinstance(layer, dj.BidirectionalParams):
            run = [
                reference_layer(*p, h, jnp.zeros((1, p.S.shape[0]), x.dtype), activation)
                for p, h in ((layer.forward, hs), (layer.backward, hs[::-1]))
            ]
            hs = jnp.concatenate([run[0], run[1][::-1]], axis=-1)
            finals.append(jnp.concatenate([run[0][-1], run[1][-1]], axis=-1))
        else:
            zeros = jnp.zeros((1, layer.S.shape[0]), x.dtype)
            hs = reference_layer(layer.W, layer.S, layer.b, hs, zeros, activation)
            finals.append(hs[-1])
    return hs, finals


def alone_loss(params, xs, targets, lengths, *, activation="tanh"):
    """(1/m) Σ_v Σ_{t < L_v} CE, each sequence v run alone on xs[:L_v, v]."""
    total = 0.0
    for v, length in enumerate(lengths):
        hs, _ = alone_states(params, xs[:length, v : v + 1], activation)
        logits = hs @ params.readout.W.T + params.readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(
            logits, targets[:length, v : v + 1]
        ).sum()
    return total / len(lengths)


def make_params(kinds, dtype, seed=0):
    """A stack with `kinds` ("bi"/"uni") layers of 3 units per direction."""
    keys = jax.random.split(jax.random.key(seed), len(kinds) + 1)
    layers, n = [], N
    for kind, k in zip(kinds, keys[:-1]):
        if kind == "bi":
            layers.append(dj.init_bidirectional_layer(k, n, 3, dtype=dtype))
            n = 6
        else:
            layers.append(dj.init_layer(k, n, 3, dtype=dtype))
            n = 3
    leaves, treedef = jax.tree.flatten(layers)
    noise = jax.random.split(keys[-1], len(leaves))
    layers = treedef.unflatten(
        [p + 0.3 * jax.random.normal(k, p.shape, dtype) for p, k in zip(leaves, noise)]
    )
    readout = dj.ReadoutParams(jax.random.normal(keys[-1], (K, n), dtype), jnp.zeros(K, dtype))
    return dj.RNNParams(tuple(layers), readout)


def make_data(dtype):
    k_x, k_y = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(k_x, (T, M, N), dtype)
    targets = jax.random.randint(k_y, (T, M), 0, K)
    return xs, targets


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
    params = make_params(kinds, dtype)
    xs, targets = make_data(dtype)
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
    params = make_params(("bi",), jnp.float64)
    xs, _ = make_data(jnp.float64)
    lengths = LENGTHS[1]
    out = dj.rnn_forward(params, xs, lengths=jnp.asarray(lengths))
    for v, length in enumerate(lengths):
        hs, finals = alone_states(params, xs[:length, v : v + 1], "tanh")
        np.testing.assert_allclose(out.final_states[0][v], finals[0][0], rtol=1e-12)
        logits = hs @ params.readout.W.T + params.readout.b
        np.testing.assert_allclose(out.outputs[:length, v], logits[:, 0], rtol=1e-12)


def test_bidirectional_errors():
    params = make_params(("bi",), jnp.float32)
    xs, _ = make_data(jnp.float32)
    with pytest.raises(TypeError, match="BidirectionalParams"):
        dj.bidirectional_layer(params.layers[0].forward, xs)
    with pytest.raises(ValueError, match="pair"):
        dj.rnn_apply(params, xs, [jnp.zeros((M, 3))])
    wrong = params.layers[0]._replace(backward=dj.init_layer(jax.random.key(0), N + 1, 3))
    with pytest.raises(ValueError, match="same number of input features"):
        dj.rnn_apply(params._replace(layers=(wrong,)), xs)
