"""GRU and LSTM layers (PyTorch's layout and equations) under every algorithm.

The oracle is the equations written out in helpers.py, independently of the library, in
a plain Python loop over steps, differentiated by `jax.grad`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, gru_equations, lstm_equations, random_inputs

import dprnn_jax as dj
from dprnn_jax.backward import ALGORITHMS

N, D, M = 3, 4, 2
RTOL = {"float32": 1e-4, "float64": 1e-10}
ALGORITHM_CASES = [cls() for name, cls in ALGORITHMS.items() if name != "autodiff"] + [
    dj.Omega(block=2)
]


def gru_oracle(params, xs, h):
    hs = []
    for x in xs:
        h = gru_equations(params, h, x)
        hs.append(h)
    return jnp.stack(hs)


def lstm_oracle(params, xs, carry):
    hs, cs = [], []
    for x in xs:
        carry = lstm_equations(params, carry, x)
        hs.append(carry[0])
        cs.append(carry[1])
    return jnp.stack(hs), jnp.stack(cs)


def assert_close(tree, reference, dtype):
    assert_trees_close(tree, reference, rtol=RTOL[dtype])


@pytest.mark.parametrize(
    ("cell", "dtype"),
    [
        ("gru", "float64"),
        ("lstm", "float64"),
        ("lstm", "float32"),
        pytest.param("gru", "float32", marks=pytest.mark.slow),
    ],
)
def test_layer_matches_the_equations_for_every_algorithm(cell, dtype, x64):
    T = 5
    key = jax.random.key(0)
    xs = random_inputs(1, (T, M, N), dtype)
    weights = random_inputs(2, (T, M, D), dtype)
    h0 = 0.5 * random_inputs(3, (M, D), dtype)
    if cell == "gru":
        params = dj.init_gru_layer(key, N, D, dtype=dtype)
        state = h0

        def run(params, xs, state, method):
            return dj.gru_layer(params, xs, state, method=method)

        oracle = gru_oracle
    else:
        params = dj.init_lstm_layer(key, N, D, dtype=dtype)
        state = (h0, jnp.cos(h0))

        def run(params, xs, state, method):
            return dj.lstm_layer(params, xs, state, method=method)[0]

        def oracle(params, xs, state):
            return lstm_oracle(params, xs, state)[0]

    def loss(params, xs, state, method=None):
        hs = oracle(params, xs, state) if method is None else run(params, xs, state, method)
        return jnp.sum(jnp.sin(hs) * weights)

    # float32 checks the rounding of the two main algorithms; float64 checks them all.
    algorithms = ALGORITHM_CASES if dtype == "float64" else [dj.Omega(), dj.BPTT()]

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def outputs_and_gradients(params, xs, state):
        outputs = run(params, xs, state, "omega"), oracle(params, xs, state)
        grads = [jax.grad(loss, (0, 1, 2))(params, xs, state, a) for a in algorithms]
        return outputs, grads, jax.grad(loss, (0, 1, 2))(params, xs, state)

    (outputs, expected), grads, reference = outputs_and_gradients(params, xs, state)
    assert_close(outputs, expected, dtype)
    for got in grads:
        assert_close(got, reference, dtype)


def test_token_inputs_are_a_lookup(x64):
    """Integer inputs read columns of W, as one-hot vectors would."""
    params = dj.init_gru_layer(jax.random.key(0), 5, D, dtype=jnp.float64)
    tokens = jnp.array([[0, 4], [2, 1], [3, 3]])
    one_hot = jax.nn.one_hot(tokens, 5, dtype=jnp.float64)

    def loss(params, xs):
        return jnp.sum(dj.gru_layer(params, xs, method=dj.Omega()) ** 2)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def both(params):
        return jax.grad(loss)(params, tokens), jax.grad(loss)(params, one_hot)

    assert_close(*both(params), "float64")


def test_lstm_state_must_be_a_pair():
    params = dj.init_lstm_layer(jax.random.key(0), N, D)
    with pytest.raises(ValueError, match=r"the pair \(h0, c0\)"):
        dj.lstm_layer(params, jnp.ones((3, M, N)), jnp.zeros((M, D)))


def oracle_network(params, xs, lengths):
    """Each sequence alone, cut to its length, through oracle layers; returns the
    readout at the valid steps (a list per sequence)."""
    outputs = []
    for v in range(xs.shape[1]):
        L = lengths[v]
        hs = xs[:L, v : v + 1]
        for layer in params.layers:
            directions = layer if isinstance(layer, dj.BidirectionalParams) else (layer,)
            results = []
            for k, direction in enumerate(directions):
                inputs = hs if k == 0 else hs[::-1]
                if isinstance(direction, dj.GRUParams):
                    out = gru_oracle(direction, inputs, jnp.zeros((1, D), xs.dtype))
                else:
                    zeros = jnp.zeros((1, D), xs.dtype)
                    out = lstm_oracle(direction, inputs, (zeros, zeros))[0]
                results.append(out if k == 0 else out[::-1])
            hs = jnp.concatenate(results, axis=-1)
        outputs.append(hs @ params.readout.W.T + params.readout.b)
    return outputs


def test_network_of_gated_layers_matches_each_sequence_alone(x64):
    """A GRU then a bidirectional LSTM layer, ragged lengths: the network's outputs at
    the valid steps, and the gradient of the masked loss, equal each sequence run alone."""
    T = 4
    params = dj.init_rnn(
        jax.random.key(0),
        N,
        (D, D),
        3,
        cell=("gru", "lstm"),
        bidirectional=(False, True),
        dtype=jnp.float64,
    )
    xs = random_inputs(1, (T, M, N), jnp.float64)
    targets = jnp.array([[0, 2], [1, 1], [2, 0], [1, 2]])
    lengths = (T, 2)  # static for the oracle's Python loop

    def oracle_loss(params):
        total = 0.0
        for v, out in enumerate(oracle_network(params, xs, lengths)):
            logp = jax.nn.log_softmax(out[:, 0])
            total -= jnp.sum(jnp.take_along_axis(logp, targets[: out.shape[0], v, None], 1))
        return total / M

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def everything(params):
        outputs = dj.rnn_apply(params, xs, lengths=jnp.array(lengths))
        grads = [
            jax.grad(dj.sequence_loss)(
                params, xs, targets, lengths=jnp.array(lengths), method=algorithm
            )
            for algorithm in (dj.Omega(), dj.BPTT())
        ]
        return outputs, oracle_network(params, xs, lengths), grads, jax.grad(oracle_loss)(params)

    outputs, expected_outputs, grads, reference = everything(params)
    for v, expected in enumerate(expected_outputs):
        assert_trees_close(outputs[: lengths[v], v], expected[:, 0], rtol=1e-12)
    for got in grads:
        assert_close(got, reference, "float64")
