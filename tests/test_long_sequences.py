"""`BPTT(checkpoint=k)` and `Omega(checkpoint=k)`: the fused, segment-recomputed loss is
exactly the gradient of the plain loss (docs/algorithms.md#checkpoint).

The oracle is `jax.grad` through the plain scan (`method="autodiff"`), in float64 to
1e-10 and float32 to 1e-4, with T not a multiple of k, k = 1, k ≥ T and "sqrt".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, gradient_temporaries, loss_gradients

import dprnn_jax as dj

N_IN, N_OUT, M = 3, 4, 2
RTOL = {"float32": 1e-4, "float64": 1e-10}
CHECKPOINTED = [dj.BPTT, dj.Omega]


def assert_close(tree, reference, dtype):
    """Leaf-wise error relative to the leaf's largest entry."""
    assert_trees_close(tree, reference, rtol=RTOL[dtype])


def network(T, sizes, dtype, *, tokens=False, seed=0):
    n = 5 if tokens else N_IN
    params = dj.init_rnn(jax.random.key(seed), n, sizes, N_OUT, dtype=dtype)
    if tokens:
        xs = jax.random.randint(jax.random.key(seed + 1), (T, M), 0, n)
    else:
        xs = jax.random.normal(jax.random.key(seed + 1), (T, M, N_IN), dtype)
    h0s = tuple(
        0.5 * jax.random.normal(jax.random.key(seed + 2 + l), (M, d), dtype)
        for l, d in enumerate(sizes)
    )
    return params, xs, h0s


@pytest.mark.parametrize(
    ("T", "sizes", "checkpoint", "tokens", "ragged", "dtype"),
    [
        (7, (4,), 3, False, False, "float32"),  # T not a multiple of k
        (7, (4, 5), 1, False, True, "float64"),  # k = 1, two layers, lengths
        (9, (4,), 20, True, False, "float64"),  # k ≥ T, token inputs
        # Longer variants (deselected by default, `-m slow`).
        pytest.param(7, (4,), 3, False, False, "float64", marks=pytest.mark.slow),
        pytest.param(10, (3, 4, 3), "sqrt", False, True, "float64", marks=pytest.mark.slow),
        pytest.param(1, (4,), "sqrt", False, False, "float64", marks=pytest.mark.slow),
    ],
)
def test_sequence_loss_matches_the_oracle(T, sizes, checkpoint, tokens, ragged, dtype, x64):
    params, xs, h0s = network(T, sizes, dtype, tokens=tokens, seed=T)
    ys = jax.random.randint(jax.random.key(9), (T, M), 0, N_OUT)
    lengths = jnp.array([T, max(T - 3, 1)]) if ragged else None

    def loss(p, x, h, method):
        return dj.sequence_loss(p, x, ys, lengths=lengths, method=method, h0s=h)

    methods = [algorithm(checkpoint=checkpoint) for algorithm in CHECKPOINTED]
    expected, *results = loss_gradients(loss, ["autodiff", *methods], params, xs, h0s, tokens)
    for got in results:
        assert_close(got, expected, dtype)


@pytest.mark.parametrize("loss_name", ["mse", "sigmoid_binary_cross_entropy"])
def test_other_losses_and_a_mask(loss_name, x64):
    T = 11
    params, xs, h0s = network(T, (4,), "float64")
    ys = jax.random.uniform(jax.random.key(5), (T, M, N_OUT), jnp.float64)
    mask = jnp.ones((T, M)).at[3:6, 0].set(0)

    def loss(p, x, h, method):
        return dj.sequence_loss(p, x, ys, mask=mask, loss=loss_name, method=method, h0s=h)

    expected, got = loss_gradients(
        loss, ["autodiff", dj.BPTT(checkpoint=4)], params, xs, h0s, False
    )
    assert_close(got, expected, "float64")


def test_many_to_one_loss_matches_the_oracle(x64):
    """Including a sequence of length 0, whose loss is read from its initial state."""
    T = 10
    params, xs, h0s = network(T, (4, 3), "float64")
    ys = jnp.array([1, 3])
    for lengths in (jnp.array([7, 0]),):

        def loss(p, x, h, method, lengths=lengths):
            return dj.many_to_one_loss(p, x, ys, lengths=lengths, method=method, h0s=h)

        methods = ["autodiff", *(algorithm(checkpoint=3) for algorithm in CHECKPOINTED)]
        expected, *results = loss_gradients(loss, methods, params, xs, h0s, False)
        for got in results:
            assert_close(got, expected, "float64")


def test_checkpoint_bounds_the_memory():
    """XLA's temporaries of the fused gradient stay O(√T) while the plain one is O(T)."""
    params, xs, _ = network(1024, (32,), "float32")
    ys = jnp.zeros((1024, M), jnp.int32)

    plain, fused = (
        gradient_temporaries(params, xs, ys, method)
        for method in (dj.BPTT(), dj.BPTT(checkpoint="sqrt"))
    )
    # States alone are T·m·d·4 bytes = 256 KiB here; the fused loss keeps ~√T of them.
    assert fused * 8 < plain, (fused, plain)


def test_options_and_errors():
    assert dj.BPTT(checkpoint="sqrt").checkpoint == "sqrt"
    with pytest.raises(ValueError, match="checkpoint must be a positive int"):
        dj.BPTT(checkpoint=0)
    with pytest.raises(ValueError, match="checkpoint cannot be combined with truncation"):
        dj.BPTT(checkpoint=4, truncation=2)
    with pytest.raises(ValueError, match="checkpoint cannot be combined"):
        dj.Omega(checkpoint=4, block=2)
    bidirectional = dj.RNNParams(
        (dj.init_bidirectional_layer(jax.random.key(0), 3, 4),),
        dj.init_rnn(jax.random.key(1), 3, (8,), 2).readout,
    )
    with pytest.raises(ValueError, match="unidirectional layers only"):
        dj.sequence_loss(
            bidirectional,
            jnp.ones((5, 2, 3)),
            jnp.zeros((5, 2), jnp.int32),
            method=dj.BPTT(checkpoint=2),
        )


def test_a_layer_alone_is_unaffected(x64):
    """`rnn_layer` has no loss to fuse: checkpoint changes nothing in its gradient."""
    layer = dj.init_layer(jax.random.key(0), 3, 4, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (9, 2, 3), jnp.float64)

    def loss(p, method):
        return jnp.sum(jnp.sin(dj.rnn_layer(p, xs, method=method)))

    methods = ("autodiff", dj.BPTT(checkpoint=4), dj.Omega(checkpoint="sqrt"))

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(layer):
        return [jax.grad(loss)(layer, method) for method in methods]

    reference, *results = run(layer)
    for got in results:
        assert_close(got, reference, "float64")


def test_training_step_with_checkpoint(x64):
    """The optax step with a fused, checkpointed loss follows the plain step's trajectory."""
    import optax

    task = dj.make_task("adding", 12)
    params = dj.init_rnn(jax.random.key(0), task.input_size, (6,), task.output_size)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    batch = jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        task.sample(jax.random.key(1), 4),
    )
    optimizer = optax.adam(1e-2)
    results = []
    for method in (dj.BPTT(), dj.BPTT(checkpoint=5), dj.Omega(checkpoint="sqrt")):
        step = dj.make_train_step(optimizer, loss=task.loss, method=method)
        state, current, history = optimizer.init(params), params, []
        for _ in range(3):
            current, state, metrics = step(current, state, batch)
            history.append(metrics)
        results.append((current, history))
    for current, history in results[1:]:
        assert_close((current, history), results[0], "float64")
