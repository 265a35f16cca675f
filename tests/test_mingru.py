"""minGRU (Feng et al., "Were RNNs All We Needed?", 2024): the cell added in one module.

Its checkpointed losses are checked with the other cells' in test_checkpointed_loss.py
(a minGRU layer under an LSTM layer); its diagnostics in test_diagnostics_cells.py.

Oracles, independent of the library: the equations written out in a Python loop over
steps (each sequence alone, cut to its length), differentiated by `jax.grad`; for
truncation the model with h_t recomputed from `stop_gradient(h_{t−K−1})`; for Ω the
product of the diagonals `1 − z` read off the equations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, random_inputs, sigmoid

import dprnn_jax as dj
from dprnn_jax.backward import ALGORITHMS

N, D, K_OUT = 3, 3, 2
T, M = 5, 2
LENGTHS = (T, 3)  # static for the oracle's Python loop


def mingru_equations(layer, h, x):
    """One minGRU step written out: rows [W_z; W_h] of W, [b_z; b_h] of b."""
    d = h.shape[-1]
    z = sigmoid(x @ layer.W[:d].T + layer.b[:d])
    h_tilde = x @ layer.W[d:].T + layer.b[d:]
    return (1 - z) * h + z * h_tilde


def elman_equations(layer, h, x):
    return jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)


def oracle_layer(layer, xs, h):
    step = mingru_equations if isinstance(layer, dj.MinGRUParams) else elman_equations
    hs = []
    for x in xs:
        h = step(layer, h, x)
        hs.append(h)
    return jnp.stack(hs)


def oracle_outputs(params, x):
    """The readout of ONE unpadded sequence x (L, 1, n) through the layers."""
    hs = x
    for layer in params.layers:
        directions = layer if isinstance(layer, dj.BidirectionalParams) else (layer,)
        results = []
        for k, direction in enumerate(directions):
            inputs = hs if k == 0 else hs[::-1]
            d = direction.W.shape[0] // (2 if isinstance(direction, dj.MinGRUParams) else 1)
            out = oracle_layer(direction, inputs, jnp.zeros((1, d), x.dtype))
            results.append(out if k == 0 else out[::-1])
        hs = jnp.concatenate(results, axis=-1)
    return hs @ params.readout.W.T + params.readout.b


def oracle_loss(params, xs, targets):
    total = 0.0
    for v, length in enumerate(LENGTHS):
        logits = oracle_outputs(params, xs[:length, v : v + 1])
        total += optax.softmax_cross_entropy_with_integer_labels(
            logits, targets[:length, v : v + 1]
        ).sum()
    return total / M


def problem(cells, bidirectional, dtype):
    params = dj.init_rnn(
        jax.random.key(0),
        N,
        (D,) * len(cells),
        K_OUT,
        cell=cells,
        bidirectional=bidirectional,
        dtype=dtype,
    )
    xs = random_inputs(1, (T, M, N), dtype)
    targets = jax.random.randint(jax.random.key(2), (T, M), 0, K_OUT)
    return params, xs, targets


EXACT = [cls() for name, cls in ALGORITHMS.items()] + [dj.Omega(block=2), dj.Omega(tol=0.0)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mixed_stack_is_exact_for_every_algorithm(dtype, x64):
    """A bidirectional minGRU layer under an Elman layer, ragged lengths: every exact
    algorithm's gradient equals the oracle's (f64 ≤ 1e-10; f32 Omega and BPTT)."""
    params, xs, targets = problem(("mingru", "elman"), (True, False), dtype)
    lengths = jnp.array(LENGTHS)
    algorithms = EXACT if dtype == "float64" else [dj.Omega(), dj.BPTT()]

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def everything(params):
        grads = [
            jax.grad(dj.sequence_loss)(params, xs, targets, lengths=lengths, method=a)
            for a in algorithms
        ]
        return (
            dj.rnn_apply(params, xs, lengths=lengths),
            grads,
            jax.grad(oracle_loss)(params, xs, targets),
        )

    outputs, grads, reference = everything(params)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    for v, length in enumerate(LENGTHS):
        expected = oracle_outputs(params, xs[:length, v : v + 1])[:, 0]
        assert_trees_close(outputs[:length, v], expected, rtol=rtol)
    for algorithm, got in zip(algorithms, grads):
        assert_trees_close(got, reference, rtol=rtol), algorithm


def truncated_oracle_loss(params, xs, targets, K):
    """One minGRU layer whose h_t is recomputed from stop_gradient(h_{t−K−1}) (from h0,
    still differentiable, when t−K−1 < 0): the model truncated BPTT differentiates."""
    layer = params.layers[0]
    h0 = jnp.zeros((M, D), xs.dtype)
    states = [h0]
    for x in xs:
        states.append(mingru_equations(layer, states[-1], x))
    total = 0.0
    for t in range(T):
        start = t - K  # recompute steps start … t from the state before `start`
        h = h0 if start <= 0 else jax.lax.stop_gradient(states[start])
        for s in range(max(start, 0), t + 1):
            h = mingru_equations(layer, h, xs[s])
        logits = h @ params.readout.W.T + params.readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(logits, targets[t]).sum()
    return total / M


@pytest.mark.parametrize("K", [0, 2])
def test_truncation_matches_the_stop_gradient_oracle(K, x64):
    params, xs, targets = problem(("mingru",), (False,), "float64")

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def everything(params):
        grads = [
            jax.grad(dj.sequence_loss)(params, xs, targets, method=a)
            for a in (dj.BPTT(truncation=K), dj.Omega(truncation=K))
        ]
        return grads, jax.grad(truncated_oracle_loss)(params, xs, targets, K)

    grads, reference = everything(params)
    for got in grads:
        assert_trees_close(got, reference, rtol=1e-10)


def test_omega_is_the_product_of_the_diagonals(x64):
    """Ω(j, i) = Π_{k=i+1..j} diag(1 − z_k) for a minGRU layer (docs/cells.md)."""
    params, xs, _ = problem(("mingru",), (False,), "float64")
    layer = params.layers[0]
    omega = dj.omega_matrix(layer, xs)  # (T, T, m, d, d)
    a = 1 - sigmoid(xs @ layer.W[:D].T + layer.b[:D])  # (T, m, d)
    for j in range(T):
        for i in range(j + 1):
            diagonal = jnp.prod(a[i + 1 : j + 1], axis=0) if j > i else jnp.ones((M, D))
            expected = jax.vmap(jnp.diag)(diagonal)
            assert_trees_close(omega[j, i], expected, rtol=1e-12)


def test_tokens_are_a_lookup_and_init_registers_the_cell(x64):
    params = dj.init_rnn(jax.random.key(0), 5, (D,), K_OUT, cell="mingru", dtype=jnp.float64)
    assert isinstance(params.layers[0], dj.MinGRUParams)
    assert params.layers[0].W.shape == (2 * D, 5) and params.layers[0].b.shape == (2 * D,)
    tokens = jnp.array([[0, 4], [2, 1], [3, 3]])
    targets = jnp.array([[0, 1], [1, 1], [0, 0]])
    one_hot = jax.nn.one_hot(tokens, 5, dtype=jnp.float64)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def both(params):
        return [
            jax.grad(dj.sequence_loss)(params, xs, targets, method=method)
            for xs in (tokens, one_hot)
            for method in (dj.Omega(), dj.RTRL())
        ]

    grads = both(params)
    for got in grads[1:]:
        assert_trees_close(got, grads[0], rtol=1e-10)


def test_parallel_scan_composes_vectors():
    """On a diagonal operator the parallel scan composes (T, m, d) vectors: its counters
    count 2 per composition, not d + 1 (no d × d matrix is formed)."""

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def both(P, a):
        dense = dj.backward.ElmanJacobian(jnp.diag(a), jnp.ones_like(P))
        diagonal = dj.backward.DiagonalJacobian(jnp.broadcast_to(a, P.shape))
        return dj.ParallelScan().error_flow(P, dense), dj.ParallelScan().error_flow(P, diagonal)

    flow_dense, flow_diagonal = both(jnp.ones((8, 1, 4)), jnp.array([0.5, 0.9, -0.3, 1.1]))
    assert_trees_close(flow_diagonal.delta, flow_dense.delta, rtol=1e-6)
    assert int(flow_dense.products_performed) == 5 * int(flow_diagonal.products_performed) // 2


def test_a_layer_without_recurrent_weights_is_checked():
    params = dj.init_rnn(jax.random.key(0), N, (D,), K_OUT, cell="mingru")
    bad = params._replace(layers=(params.layers[0]._replace(b=jnp.zeros((D,))),))
    with pytest.raises(ValueError, match=r"params.layers\[0\].b"):
        dj.rnn_apply(bad, jnp.ones((T, M, N)))
