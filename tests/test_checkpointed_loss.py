"""The O(√T)-memory checkpointed loss (docs/algorithms.md#checkpoint) for every kind of
stack: `BPTT(checkpoint=k)`, `Omega(checkpoint=k)` and `Checkpointed(algorithm, k)` give
exactly the gradient of the plain loss, whatever the cells of the stack (Elman, GRU,
LSTM, minGRU, mixed; the tests are parametrised over them).

The oracle is `jax.grad` through the plain scan (`method="autodiff"`), in float64 to
1e-10 and float32 to 1e-4, with T not a multiple of k, k = 1, k ≥ T and "sqrt", lengths,
a mask, token inputs, every loss and reduction, `many_to_one_loss`, the training step,
and under `jax.vmap` (over an ensemble of parameters, over the sequences); each
comparison is one compiled program. The segments' memory is O(√T), bidirectional layers
are refused, and a layer on its own is unaffected.
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
from dprnn_jax.backward import checkpoint_plan

N_IN, N_TOKENS, N_OUT, M, D = 3, 5, 4, 2, 4
RTOL = {"float32": 1e-4, "float64": 1e-10}
CHECKPOINTED = [dj.BPTT, dj.Omega]
GATES = {"gru": (dj.GRUParams, 3), "lstm": (dj.LSTMParams, 4)}


def assert_close(tree, reference, dtype):
    """Leaf-wise error relative to the leaf's largest entry."""
    assert_trees_close(tree, reference, rtol=RTOL[dtype])


def layer(seed, cell, n, d, dtype):
    """One layer of `cell` with n inputs and d units: an Elman layer as `random_layer`
    draws it; a GRU or LSTM layer of PyTorch's shapes, normal entries scaled as PyTorch's
    initialiser would scale them, and a minGRU layer (W (2d, n), b (2d,)), normal
    entries, W scaled by 1/√n (so that the gates are neither saturated nor off)."""
    if cell == "elman":
        return random_layer(seed, n, d, dtype)
    if cell == "mingru":
        return dj.MinGRUParams(
            random_inputs(seed, (2 * d, n), dtype) / n**0.5,
            0.5 * random_inputs(seed + 1, (2 * d,), dtype),
        )
    params_type, gates = GATES[cell]
    shapes = ((gates * d, n), (gates * d, d), (gates * d,), (gates * d,))
    return params_type(
        *(random_inputs(seed + i, shape, dtype) / d**0.5 for i, shape in enumerate(shapes))
    )


def network(cells, dtype, *, seed=0, n=N_IN, n_out=N_OUT, width=D):
    """`RNNParams` with one layer per entry of `cells` ("elman", "gru", "lstm",
    "mingru"), of unequal widths width, width + 1, … (so that a transposed weight cannot
    pass), and random initial states (a pair (h, c) for an LSTM layer)."""
    layers, h0s = [], []
    for l, cell in enumerate(cells):
        layer_seed, d = seed + 10 * l, width + l
        layers.append(layer(layer_seed, cell, n, d, dtype))
        h = 0.5 * random_inputs(layer_seed + 5, (M, d), dtype)
        h0s.append((h, 0.5 * random_inputs(layer_seed + 6, (M, d), dtype)) if cell == "lstm" else h)
        n = d
    readout = dj.ReadoutParams(
        random_inputs(seed + 100, (n_out, n), dtype) / n**0.5,
        0.3 * random_inputs(seed + 101, (n_out,), dtype),
    )
    return dj.RNNParams(tuple(layers), readout), tuple(h0s)


def draw_inputs(T, dtype, *, tokens=False, seed=50):
    """Inputs (T, m, n), or integer tokens (T, m) from a vocabulary of N_TOKENS."""
    if tokens:
        return jax.device_put(np.random.default_rng(seed).integers(0, N_TOKENS, (T, M)))
    return random_inputs(seed, (T, M, N_IN), dtype)


def classes(T, seed):
    """Integer class targets (T, m)."""
    return jax.device_put(np.random.default_rng(seed).integers(0, N_OUT, (T, M)))


def mask_of(T, dtype, *zeros):
    """(T, m) ones with 0 at the (steps, sequence) of each `zeros` entry (built on the
    host: an eager `.at[].set` would compile a program of its own)."""
    mask = np.ones((T, M))
    for steps, v in zeros:
        mask[steps, v] = 0
    return jax.device_put(mask.astype(dtype))


def bptt_omega(checkpoint):
    """`BPTT(checkpoint=k)` and `Omega(checkpoint=k)`."""
    return tuple(algorithm(checkpoint=checkpoint) for algorithm in CHECKPOINTED)


def case(cells, T, methods, inputs, dtype, *, slow=False):
    """A `pytest.param` of the oracle comparison, named by its stack and options:
    `inputs` is "tokens", "lengths", "mask" or "dense"."""
    k = {getattr(checkpoint_plan(m), "segment", None) for m in methods}.pop()
    name = f"{'-'.join(cells)}-T{T}-k{k}-{inputs}-{dtype}"
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(cells, T, methods, inputs, dtype, id=name, marks=marks)


ORACLE_CASES = [
    # k ≥ T, token inputs (into an Elman layer; into a GRU layer)
    case(("elman",), 9, bptt_omega(20), "tokens", "float64"),
    case(("gru", "lstm"), 5, bptt_omega(20), "tokens", "float64"),
    # k = 1: two Elman layers with lengths; an LSTM layer with a mask
    case(("elman", "elman"), 7, bptt_omega(1), "lengths", "float64"),
    case(("lstm",), 6, bptt_omega(1), "mask", "float64"),
    # T not a multiple of k (T = 7, k = 3: a tail of 1), also spelled as the wrapper
    case(
        ("gru",), 7, (dj.Checkpointed(dj.BPTT(), 3), dj.Omega(checkpoint=3)), "lengths", "float64"
    ),
    case(("elman", "lstm"), 7, bptt_omega(3), "lengths", "float32"),
    # "sqrt": T = 10, k = 4, a tail of 2
    case(("elman", "lstm"), 10, bptt_omega("sqrt"), "lengths", "float64"),
    # "sqrt": T = 8, k = 3, a tail of 2, with the parallel scan in the segments (on a
    # minGRU layer's diagonal Jacobian and an LSTM layer's full one)
    case(
        ("mingru", "lstm"),
        8,
        (dj.Checkpointed(dj.ParallelScan(), "sqrt"), dj.BPTT(checkpoint="sqrt")),
        "mask",
        "float64",
    ),
    # Longer variants (deselected by default, `-m slow`).
    case(("elman",), 7, bptt_omega(3), "dense", "float32", slow=True),
    case(("elman",), 7, bptt_omega(3), "dense", "float64", slow=True),
    case(("elman",) * 3, 10, bptt_omega("sqrt"), "lengths", "float64", slow=True),
    case(("elman",), 1, bptt_omega("sqrt"), "dense", "float64", slow=True),
]


@pytest.mark.parametrize(("cells", "T", "methods", "inputs", "dtype"), ORACLE_CASES)
def test_sequence_loss_matches_the_oracle(cells, T, methods, inputs, dtype, x64):
    """The gradient of `sequence_loss` w.r.t. the parameters, the inputs (unless tokens)
    and the initial carries, and its value, equal the plain scan's, for every method."""
    tokens = inputs == "tokens"
    params, h0s = network(cells, dtype, seed=T, n=N_TOKENS if tokens else N_IN)
    xs = draw_inputs(T, dtype, tokens=tokens)
    ys = classes(T, 9)
    lengths = jnp.array([T, max(T - 4, 1)]) if inputs == "lengths" else None
    mask = mask_of(T, dtype, (slice(2, 4), 0)) if inputs == "mask" else None

    def loss(p, x, h, method):
        return dj.sequence_loss(p, x, ys, lengths=lengths, mask=mask, method=method, h0s=h)

    expected, *results = loss_gradients(loss, ["autodiff", *methods], params, xs, h0s, tokens)
    for got in results:
        assert_close(got, expected, dtype)


@pytest.mark.parametrize(
    ("cells", "T", "losses"),
    [
        # T = 11: the segments of 4 and of 2 steps end in tails of 3 and 1
        (("elman",), 11, (("mse", "mean"), ("sigmoid_binary_cross_entropy", "sum_over_steps"))),
        # T = 8: whole segments only (tails are the Elman case's, and the oracle test's)
        (("lstm", "gru"), 8, (("mse", "sum_over_steps"), ("sigmoid_binary_cross_entropy", "mean"))),
    ],
    ids=["elman-T11", "lstm-gru-T8"],
)
def test_other_losses_a_mask_and_the_mean(cells, T, losses, x64):
    """Mse and sigmoid cross-entropy with a mask (across a segment boundary), each loss
    under both reductions ("sum_over_steps" and "mean") over the two cases."""
    params, h0s = network(cells, "float64", seed=3)
    xs = draw_inputs(T, "float64")
    ys = jax.device_put(np.random.default_rng(5).uniform(size=(T, M, N_OUT)))
    mask = mask_of(T, "float64", (slice(3, 6), 0))

    def loss(p, x, h, method):
        return sum(
            dj.sequence_loss(p, x, ys, mask=mask, loss=kind, method=method, h0s=h, reduction=r)
            for kind, r in losses
        )

    methods = ["autodiff", dj.BPTT(checkpoint=4), dj.Omega(checkpoint=2)]
    expected, *results = loss_gradients(loss, methods, params, xs, h0s, False)
    for got in results:
        assert_close(got, expected, "float64")


@pytest.mark.parametrize(
    ("cells", "T", "length"),
    [(("elman", "elman"), 10, 7), (("gru", "lstm"), 8, 6)],
    ids=["elman-elman", "gru-lstm"],
)
def test_many_to_one_loss_matches_the_oracle(cells, T, length, x64):
    """Including a sequence of length 0, whose loss is read from its initial h (an
    LSTM's state is the pair (h, c): the readout reads h)."""
    params, h0s = network(cells, "float64", seed=1)
    xs = draw_inputs(T, "float64")
    ys = jnp.array([1, 3])
    lengths = jnp.array([length, 0])

    def loss(p, x, h, method):
        return dj.many_to_one_loss(p, x, ys, lengths=lengths, method=method, h0s=h)

    expected, *results = loss_gradients(loss, ["autodiff", *bptt_omega(3)], params, xs, h0s, False)
    for got in results:
        assert_close(got, expected, "float64")


def training_data(task):
    """(inputs n, outputs k, a float64 batch, its loss): the adding task (T = 12, mse at
    the last step only); or classes at every step, T = 11, the second sequence's last
    steps masked."""
    if task == "adding":
        # Four sequences of its validation batch (`sample` would compile a program).
        adding = dj.make_task("adding", 12)
        batch = jax.tree.map(lambda x: np.asarray(x, np.float64)[:, :4], adding.validation)
        return adding.input_size, adding.output_size, jax.device_put(batch), adding.loss
    T = 11
    batch = dj.Batch(
        draw_inputs(T, "float64"), classes(T, 4), mask_of(T, "float64", (slice(7, None), 1))
    )
    return N_IN, N_OUT, batch, "softmax_cross_entropy"


@pytest.mark.parametrize(
    ("cells", "task", "methods"),
    [
        (("elman",), "adding", (dj.BPTT(checkpoint=5), dj.Omega(checkpoint="sqrt"))),
        (("elman", "gru"), "classes", (dj.Omega(checkpoint="sqrt"),)),
    ],
    ids=["elman-adding", "elman-gru-classes"],
)
def test_training_step_with_checkpoint(cells, task, methods, x64):
    """The optax step with a checkpointed loss follows the plain step's trajectory."""
    n_in, n_out, batch, loss = training_data(task)
    params, _ = network(cells, "float64", seed=2, n=n_in, n_out=n_out)
    optimizer = optax.adam(1e-2)
    results = []
    for method in (dj.BPTT(), *methods):
        step = dj.make_train_step(optimizer, loss=loss, method=method)
        state, current, history = optimizer.init(params), params, []
        for _ in range(3):
            current, state, metrics = step(current, state, batch)
            history.append(metrics)
        results.append((current, history))
    for got in results[1:]:
        assert_close(got, results[0], "float64")


@pytest.mark.parametrize(
    ("cell", "T", "d", "factor"),
    [("elman", 1024, 32, 8), ("gru", 4096, 16, 5)],
    ids=["elman", "gru"],
)
def test_checkpoint_bounds_the_memory(cell, T, d, factor):
    """XLA's temporaries of the checkpointed gradient stay O(√T) while the plain one's
    are O(T): the plain gradient keeps each step's state (an Elman layer: T·m·d·4 bytes =
    256 KiB) or linearisation (a GRU layer), O(T·m·d); the segments keep ~√T carries and
    one segment's residuals."""
    params, _ = network((cell,), "float32", width=d)
    xs = jax.device_put(np.zeros((T, M, N_IN), np.float32))
    ys = jax.device_put(np.zeros((T, M), np.int32))

    plain, fused = (
        gradient_temporaries(params, xs, ys, method)
        for method in (dj.BPTT(), dj.BPTT(checkpoint="sqrt"))
    )
    assert fused * factor < plain, (fused, plain)


def test_options_the_wrapper_and_errors():
    """`BPTT(checkpoint=k)` and `Omega(checkpoint=k)` spell `Checkpointed(algorithm, k)`."""
    assert dj.BPTT(checkpoint="sqrt").checkpoint == "sqrt"
    assert checkpoint_plan(dj.BPTT(checkpoint=3)) == dj.Checkpointed(dj.BPTT(), 3)
    assert checkpoint_plan(dj.Omega(checkpoint="sqrt")) == dj.Checkpointed(dj.Omega(), "sqrt")
    wrapped = dj.Checkpointed(dj.ParallelScan())
    assert checkpoint_plan(wrapped) is wrapped and wrapped.segment == "sqrt"
    assert checkpoint_plan(dj.BPTT()) is None
    with pytest.raises(ValueError, match="checkpoint must be a positive int"):
        dj.BPTT(checkpoint=0)
    with pytest.raises(ValueError, match="checkpoint cannot be combined with truncation"):
        dj.BPTT(checkpoint=4, truncation=2)
    with pytest.raises(ValueError, match="checkpoint cannot be combined"):
        dj.Omega(checkpoint=4, block=2)
    with pytest.raises(ValueError, match="segment must be a positive int"):
        dj.Checkpointed(dj.BPTT(), 0)
    with pytest.raises(TypeError, match="algorithm must be a GradientAlgorithm"):
        dj.Checkpointed("bptt", 3)
    for checkpointing in (dj.Omega(checkpoint=2), dj.Checkpointed(dj.BPTT(), 2)):
        with pytest.raises(ValueError, match="checkpoints already"):
            dj.Checkpointed(checkpointing, 3)


@pytest.mark.parametrize(
    ("cells", "method"),
    [
        (("elman", "elman"), dj.BPTT(checkpoint=2)),
        (("gru", "lstm"), dj.Omega(checkpoint=2)),
        (("mingru", "elman"), dj.Checkpointed(dj.BPTT(), 2)),
    ],
    ids=["elman-elman", "gru-lstm", "mingru-elman"],
)
def test_bidirectional_layers_are_refused(cells, method):
    """A bidirectional layer (its two directions of the kinds `cells`) is refused: its
    backward direction needs the whole future of every step."""
    forward, backward = (layer(l, cell, N_IN, D, "float32") for l, cell in enumerate(cells))
    params = dj.RNNParams(
        (dj.BidirectionalParams(forward, backward),),
        dj.ReadoutParams(jnp.zeros((N_OUT, 2 * D)), jnp.zeros(N_OUT)),
    )
    with pytest.raises(ValueError, match="unidirectional layers only.*bidirectional"):
        dj.sequence_loss(
            params, jnp.ones((5, M, N_IN)), jnp.zeros((5, M), jnp.int32), method=method
        )


def test_a_layer_alone_is_unaffected(x64):
    """`rnn_layer` has no loss to fuse: checkpoint changes nothing in its gradient."""
    params = random_layer(0, N_IN, D, "float64")
    xs = random_inputs(1, (9, M, N_IN), "float64")

    def loss(p, method):
        return jnp.sum(jnp.sin(dj.rnn_layer(p, xs, method=method)))

    methods = ("autodiff", dj.BPTT(checkpoint=4), dj.Omega(checkpoint="sqrt"))

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(params):
        return [jax.grad(loss)(params, method) for method in methods]

    reference, *results = run(params)
    for got in results:
        assert_close(got, reference, "float64")


def test_vmap_over_an_ensemble_of_parameters(x64):
    """`jax.vmap` of the checkpointed gradient over two parameter sets of a
    GRU-then-LSTM stack equals each member's plain gradient, for both algorithms
    (T = 7, k = 3: two segments and a tail of one)."""
    T, members = 7, (0, 1)
    ensemble = [network(("gru", "lstm"), "float64", seed=seed) for seed in members]
    xs = draw_inputs(T, "float64")
    ys = classes(T, 6)
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

    stacked = jax.tree.map(lambda *leaves: jax.device_put(np.stack(leaves)), *ensemble)
    vmapped, expected = run(stacked, ensemble)
    for got in vmapped:
        for i, member in enumerate(expected):
            assert_close(jax.tree.map(lambda leaf, i=i: leaf[i], got), member, "float64")


def test_vmap_over_the_sequences_gives_per_sequence_gradients(x64):
    """`jax.vmap` over the batch axis, each sequence a batch of one with its own length
    (traced under vmap): each sequence's gradient equals its plain gradient alone."""
    T = 7
    params, h0s = network(("gru", "lstm"), "float64", seed=4)
    xs = draw_inputs(T, "float64")
    ys = classes(T, 8)
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
