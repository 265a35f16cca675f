"""`BPTT(checkpoint=k)` and `Omega(checkpoint=k)` for stacks with GRU and LSTM layers:
the `jax.checkpoint`-ed segments give exactly the gradient of the plain loss
(docs/algorithms.md#checkpoint).

The oracle is `jax.grad` through the plain scan (`method="autodiff"`), in float64 to
1e-10 and float32 to 1e-4, with T not a multiple of k, k = 1, k ≥ T and "sqrt", lengths,
a mask, token inputs and every loss, and under `jax.vmap` (over an ensemble of
parameters, over the sequences); each comparison is one compiled program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    CHEAP_COMPILE,
    assert_trees_close,
    gradient_temporaries,
    loss_gradients,
    random_inputs,
    random_layer,
)

import dprnn_jax as dj

N_IN, N_TOKENS, N_OUT, M, D = 3, 5, 4, 2, 4
RTOL = {"float32": 1e-4, "float64": 1e-10}
CHECKPOINTED = [dj.BPTT, dj.Omega]
GATES = {"gru": (dj.GRUParams, 3), "lstm": (dj.LSTMParams, 4)}


def assert_close(tree, reference, dtype):
    """Leaf-wise error relative to the leaf's largest entry."""
    assert_trees_close(tree, reference, rtol=RTOL[dtype])


def gated_layer(seed, cell, n, d, dtype):
    """A `GRUParams` or `LSTMParams` of PyTorch's shapes, normal entries scaled as
    PyTorch's initialiser would scale them (so the gates are neither saturated nor off)."""
    params_type, gates = GATES[cell]
    shapes = ((gates * d, n), (gates * d, d), (gates * d,), (gates * d,))
    return params_type(
        *(random_inputs(seed + i, shape, dtype) / d**0.5 for i, shape in enumerate(shapes))
    )


def network(cells, dtype, *, seed=0, n=N_IN):
    """`RNNParams` with one layer of D units per entry of `cells` ("elman", "gru",
    "lstm") and random initial states (a pair (h, c) for an LSTM layer)."""
    layers, h0s, width = [], [], n
    for l, cell in enumerate(cells):
        layer_seed = seed + 10 * l
        if cell == "elman":
            layers.append(random_layer(layer_seed, width, D, dtype))
        else:
            layers.append(gated_layer(layer_seed, cell, width, D, dtype))
        h = 0.5 * random_inputs(layer_seed + 5, (M, D), dtype)
        h0s.append((h, 0.5 * random_inputs(layer_seed + 6, (M, D), dtype)) if cell == "lstm" else h)
        width = D
    readout = dj.ReadoutParams(
        random_inputs(seed + 100, (N_OUT, D), dtype) / D**0.5,
        0.3 * random_inputs(seed + 101, (N_OUT,), dtype),
    )
    return dj.RNNParams(tuple(layers), readout), tuple(h0s)


def inputs(T, dtype, *, tokens=False, seed=50):
    if tokens:
        return jax.device_put(np.random.default_rng(seed).integers(0, N_TOKENS, (T, M)))
    return random_inputs(seed, (T, M, N_IN), dtype)


@pytest.mark.parametrize(
    ("cells", "T", "checkpoint", "tokens", "padding", "dtype"),
    [
        (("gru",), 7, 3, False, "lengths", "float64"),  # T not a multiple of k
        (("lstm",), 6, 1, False, "mask", "float64"),  # k = 1
        (("elman", "lstm"), 10, "sqrt", False, "lengths", "float64"),  # k = 4, tail of 2
        (("gru", "lstm"), 5, 20, True, None, "float64"),  # k ≥ T, token inputs
        (("elman", "lstm"), 7, 3, False, "lengths", "float32"),
    ],
)
def test_sequence_loss_matches_the_oracle(cells, T, checkpoint, tokens, padding, dtype, x64):
    params, h0s = network(cells, dtype, seed=T, n=N_TOKENS if tokens else N_IN)
    xs = inputs(T, dtype, tokens=tokens)
    ys = jax.device_put(np.random.default_rng(9).integers(0, N_OUT, (T, M)))
    lengths = jnp.array([T, max(T - 4, 1)]) if padding == "lengths" else None
    mask = jnp.ones((T, M), dtype).at[2:4, 0].set(0) if padding == "mask" else None

    def loss(p, x, h, method):
        return dj.sequence_loss(p, x, ys, lengths=lengths, mask=mask, method=method, h0s=h)

    methods = [algorithm(checkpoint=checkpoint) for algorithm in CHECKPOINTED]
    expected, *results = loss_gradients(loss, ["autodiff", *methods], params, xs, h0s, tokens)
    for got in results:
        assert_close(got, expected, dtype)


def test_other_losses_and_the_mean(x64):
    """Sigmoid cross-entropy and mse with a mask, and `reduction="mean"`."""
    T = 9
    params, h0s = network(("lstm", "gru"), "float64", seed=3)
    xs = inputs(T, "float64")
    ys = jax.device_put(np.random.default_rng(5).uniform(size=(T, M, N_OUT)))
    mask = jnp.ones((T, M)).at[3:6, 0].set(0)

    def loss(p, x, h, method):
        return sum(
            dj.sequence_loss(p, x, ys, mask=mask, loss=name, method=method, h0s=h, reduction=r)
            for name, r in (("mse", "sum_over_steps"), ("sigmoid_binary_cross_entropy", "mean"))
        )

    methods = ["autodiff", dj.BPTT(checkpoint=4), dj.Omega(checkpoint=2)]
    expected, *results = loss_gradients(loss, methods, params, xs, h0s, False)
    for got in results:
        assert_close(got, expected, "float64")


def test_many_to_one_loss_matches_the_oracle(x64):
    """Including a sequence of length 0, whose loss is read from its initial h (an
    LSTM's state is the pair (h, c): the readout reads h)."""
    T = 8
    params, h0s = network(("gru", "lstm"), "float64", seed=1)
    xs = inputs(T, "float64")
    ys = jnp.array([1, 3])
    lengths = jnp.array([6, 0])

    def loss(p, x, h, method):
        return dj.many_to_one_loss(p, x, ys, lengths=lengths, method=method, h0s=h)

    methods = ["autodiff", *(algorithm(checkpoint=3) for algorithm in CHECKPOINTED)]
    expected, *results = loss_gradients(loss, methods, params, xs, h0s, False)
    for got in results:
        assert_close(got, expected, "float64")


def test_training_step_with_checkpoint(x64):
    """The optax step with checkpointed segments follows the plain step's trajectory."""
    T = 11
    params, _ = network(("elman", "gru"), "float64", seed=2)
    batch = dj.Batch(
        inputs(T, "float64"),
        jax.device_put(np.random.default_rng(4).integers(0, N_OUT, (T, M))),
        jnp.ones((T, M)).at[7:, 1].set(0),
    )
    optimizer = optax.adam(1e-2)
    results = []
    for method in (dj.BPTT(), dj.Omega(checkpoint="sqrt")):
        step = dj.make_train_step(optimizer, loss="softmax_cross_entropy", method=method)
        state, current, history = optimizer.init(params), params, []
        for _ in range(2):
            current, state, metrics = step(current, state, batch)
            history.append(metrics)
        results.append((current, history))
    assert_close(results[1], results[0], "float64")


def test_checkpoint_bounds_the_memory():
    """XLA's temporaries of the checkpointed gradient stay O(√T) while the plain one's
    are O(T), for a GRU layer."""
    T = 4096
    params = dj.RNNParams(
        (gated_layer(0, "gru", N_IN, 16, "float32"),),
        dj.ReadoutParams(jnp.zeros((N_OUT, 16)), jnp.zeros(N_OUT)),
    )
    xs = jnp.zeros((T, M, N_IN))
    ys = jnp.zeros((T, M), jnp.int32)

    plain, fused = (
        gradient_temporaries(params, xs, ys, method)
        for method in (dj.BPTT(), dj.BPTT(checkpoint="sqrt"))
    )
    # The plain gradient keeps each step's linearisation, O(T·m·d); the segments keep
    # ~√T carries and one segment's residuals.
    assert fused * 5 < plain, (fused, plain)


def test_bidirectional_layers_are_refused():
    layer = gated_layer(0, "gru", N_IN, D, "float32")
    params = dj.RNNParams(
        (dj.BidirectionalParams(layer, gated_layer(1, "lstm", N_IN, D, "float32")),),
        dj.ReadoutParams(jnp.zeros((N_OUT, 2 * D)), jnp.zeros(N_OUT)),
    )
    with pytest.raises(ValueError, match="unidirectional layers only.*bidirectional"):
        dj.sequence_loss(
            params,
            jnp.ones((5, M, N_IN)),
            jnp.zeros((5, M), jnp.int32),
            method=dj.Omega(checkpoint=2),
        )


def test_vmap_over_an_ensemble_of_parameters(x64):
    """`jax.vmap` of the checkpointed gradient over two parameter sets of a
    GRU-then-LSTM stack equals each member's plain gradient, for both algorithms
    (T = 7, k = 3: two segments and a tail of one)."""
    T, members = 7, (0, 1)
    ensemble = [network(("gru", "lstm"), "float64", seed=seed) for seed in members]
    xs = inputs(T, "float64")
    ys = jax.device_put(np.random.default_rng(6).integers(0, N_OUT, (T, M)))
    lengths = jnp.array([T, 5])

    def grad(params, h0s, method):
        def loss(p, h):
            return dj.sequence_loss(p, xs, ys, lengths=lengths, method=method, h0s=h)

        return jax.grad(loss, (0, 1))(params, h0s)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(stacked, members):
        vmapped = [
            jax.vmap(functools.partial(grad, method=algorithm(checkpoint=3)))(*stacked)
            for algorithm in CHECKPOINTED
        ]
        return vmapped, [grad(*member, "autodiff") for member in members]

    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *ensemble)
    vmapped, expected = run(stacked, ensemble)
    for got in vmapped:
        for i, member in enumerate(expected):
            assert_close(jax.tree.map(lambda leaf, i=i: leaf[i], got), member, "float64")


def test_vmap_over_the_sequences_gives_per_sequence_gradients(x64):
    """`jax.vmap` over the batch axis, each sequence a batch of one with its own length
    (traced under vmap): each sequence's gradient equals its plain gradient alone."""
    T = 7
    params, h0s = network(("gru", "lstm"), "float64", seed=4)
    xs = inputs(T, "float64")
    ys = jax.device_put(np.random.default_rng(8).integers(0, N_OUT, (T, M)))
    lengths = jnp.array([T, 4])

    def grad(x, y, h, length, method):  # one sequence: x (T, n), y (T,), its carries
        def loss(p, x, h):
            one = jax.tree.map(lambda a: a[None], h)
            return dj.sequence_loss(
                p, x[:, None], y[:, None], lengths=length[None], method=method, h0s=one
            )

        return jax.grad(loss, (0, 1, 2))(params, x, h)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(xs, ys, h0s, lengths):
        method = dj.Omega(checkpoint=3)
        vmapped = jax.vmap(functools.partial(grad, method=method), (1, 1, 0, 0))(
            xs, ys, h0s, lengths
        )
        alone = [
            grad(xs[:, v], ys[:, v], jax.tree.map(lambda a, v=v: a[v], h0s), lengths[v], "autodiff")
            for v in range(M)
        ]
        return vmapped, alone

    vmapped, alone = run(xs, ys, h0s, lengths)
    for v, expected in enumerate(alone):
        assert_close(jax.tree.map(lambda leaf, v=v: leaf[v], vmapped), expected, "float64")
