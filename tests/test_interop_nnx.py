"""`dj.interop.nnx.RNN` is a drop-in for `flax.nnx.RNN` with the library's gradients.

The reference is `nnx.RNN` with the same cell (built from the same seed), differentiated
by `jax.grad`/`nnx.grad`: the same parameters, outputs, final carry and RNG state, and
the same gradients w.r.t. the parameters and the inputs, in float64, for `Omega()` and
`BPTT()`; a model with an LSTM layer trains under `nnx.jit` with `nnx.Optimizer` as the
reference model does. Flax's own NNX recurrent tests, with the class swapped, are in
test_interop_flax_contract.py.
"""

from __future__ import annotations

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from helpers import max_relative_error

import dprnn_jax as dj
from dprnn_jax import interop

T, M, N, D = 5, 2, 3, 4
METHODS = {"omega": dj.Omega(), "bptt": dj.BPTT()}
LENGTHS = jnp.array([5, 3])
F64 = dict(param_dtype=jnp.float64)


class ReadoutCell(nnx.RNNCellBase):
    """A user cell whose output is not part of its carry: `y = h Vᵀ`, of width 2."""

    def __init__(self, rngs: nnx.Rngs):
        self.input = nnx.Linear(N, D, **F64, rngs=rngs)
        self.recurrent = nnx.Linear(D, D, **F64, rngs=rngs)
        self.readout = nnx.Linear(D, 2, **F64, rngs=rngs)

    def __call__(self, carry, x):
        h = jnp.tanh(self.input(x) + self.recurrent(carry))
        return h, self.readout(h)

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (D,), jnp.float64)

    @property
    def num_feature_axes(self) -> int:
        return 1


class DropoutCell(nnx.RNNCellBase):
    """A GRU cell whose new carry goes through dropout (stream "dropout")."""

    def __init__(self, rngs: nnx.Rngs):
        self.gru = nnx.GRUCell(N, D, **F64, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, deterministic=False, rngs=rngs)

    def __call__(self, carry, x):
        h, _ = self.gru(carry, x)
        h = self.dropout(h)
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return self.gru.initialize_carry(input_shape, rngs)

    @property
    def num_feature_axes(self) -> int:
        return 1


CELLS = {
    "GRUCell": lambda: nnx.GRUCell(N, D, **F64, rngs=nnx.Rngs(0)),
    "LSTMCell": lambda: nnx.LSTMCell(N, D, **F64, rngs=nnx.Rngs(0)),
    "OptimizedLSTMCell": lambda: nnx.OptimizedLSTMCell(N, D, **F64, rngs=nnx.Rngs(0)),
    "SimpleCell": lambda: nnx.SimpleCell(N, D, dtype=jnp.float64, **F64, rngs=nnx.Rngs(0)),
    "ReadoutCell": lambda: ReadoutCell(nnx.Rngs(0)),
}
# One layout per cell, so that every option is met by some cell and each case compiles
# one program: (time_major, call options).
CASES = {
    "GRUCell": (False, {}),
    "LSTMCell": (True, dict(seq_lengths=LENGTHS, return_carry=True)),
    "OptimizedLSTMCell": (False, dict(seq_lengths=LENGTHS, reverse=True, keep_order=True)),
    "SimpleCell": (False, dict(return_carry=True)),  # and an initial carry
    "ReadoutCell": (True, dict(seq_lengths=LENGTHS, return_carry=True)),
}


def loss(outputs) -> jax.Array:
    """A scalar that reads every output and every leaf of a returned carry."""
    return sum(jnp.sum(jnp.sin(leaf) * (1 + leaf)) for leaf in jax.tree.leaves(outputs))


def gradients_and_outputs(module, x, **call):
    """∂loss/∂(parameters, inputs) and the outputs."""

    def value(module, x):
        outputs = module(x, **call)
        return loss(outputs), outputs

    return nnx.grad(value, argnums=(0, 1), has_aux=True)(module, x)


def compare(reference, modules, x, **call):
    """Max relative errors of our outputs and gradients against the reference's, from
    one compiled program; the parameters must be the reference's exactly."""
    expected_params = nnx.state(reference, nnx.Param)
    for module in modules.values():
        assert max_relative_error(nnx.state(module, nnx.Param), expected_params) == 0.0

    @nnx.jit
    def run(reference, modules, x):
        expected = gradients_and_outputs(reference, x, **call)
        ours = {name: gradients_and_outputs(m, x, **call) for name, m in modules.items()}
        return expected, ours

    (expected_grads, expected), ours = run(reference, modules, x)
    output_errors = {name: max_relative_error(out, expected) for name, (_, out) in ours.items()}
    grad_errors = {name: max_relative_error(g, expected_grads) for name, (g, _) in ours.items()}
    return output_errors, grad_errors


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_matches_nnx_rnn(cell, x64):
    time_major, call = CASES[cell]
    if cell == "SimpleCell":
        call = {**call, "initial_carry": jnp.full((M, D), 0.1, jnp.float64)}
    x = jax.random.normal(jax.random.key(1), (T, M, N) if time_major else (M, T, N), jnp.float64)
    reference = nnx.RNN(CELLS[cell](), time_major=time_major)
    methods = dict(METHODS)
    if cell == "LSTMCell":
        methods["checkpoint"] = dj.BPTT(checkpoint="sqrt")
    modules = {
        name: interop.nnx.RNN(CELLS[cell](), time_major=time_major, method=method)
        for name, method in methods.items()
    }
    assert isinstance(modules["omega"], nnx.RNN)
    output_errors, grad_errors = compare(reference, modules, x, **call)
    assert max(output_errors.values()) <= 1e-12, output_errors
    assert max(grad_errors.values()) <= 1e-10, grad_errors


def test_bidirectional_matches_nnx_bidirectional(x64):
    # nnx.Bidirectional calls the backward RNN with reverse, keep_order, return_carry and
    # the lengths: every override of the call at once.
    def bidirectional(make_rnn, make_bidirectional):
        return make_bidirectional(make_rnn(CELLS["GRUCell"]()), make_rnn(CELLS["LSTMCell"]()))

    x = jax.random.normal(jax.random.key(2), (M, T, N), jnp.float64)
    reference = bidirectional(nnx.RNN, nnx.Bidirectional)
    ours = bidirectional(
        functools.partial(interop.nnx.RNN, method=dj.Omega(truncation=T)),
        interop.nnx.Bidirectional,
    )
    output_errors, grad_errors = compare(
        reference, {"omega": ours}, x, seq_lengths=LENGTHS, return_carry=True
    )
    assert output_errors["omega"] <= 1e-12
    assert grad_errors["omega"] <= 1e-10


@pytest.mark.parametrize("broadcast_rngs", [None, "dropout"])
def test_dropout_in_the_cell_draws_as_nnx_rnn_does(broadcast_rngs, x64):
    # Broadcast streams: the same mask at every step (recurrent dropout); the others a
    # new mask per step, the counter left advanced by T. Same numbers, same state.
    def make(cls, **options):
        return cls(DropoutCell(nnx.Rngs(0, dropout=1)), broadcast_rngs=broadcast_rngs, **options)

    reference, ours = make(nnx.RNN), make(interop.nnx.RNN, method=dj.Omega())
    x = jax.random.normal(jax.random.key(3), (M, T, N), jnp.float64)

    @nnx.jit
    def run(reference, ours, x):
        def value(module):
            return loss(module(x))

        return [nnx.value_and_grad(value)(module) for module in (reference, ours)]

    for _ in range(2):  # the second call draws from the state the first left
        (expected, expected_grads), (value, grads) = run(reference, ours, x)
        assert abs(value - expected) <= 1e-12 * abs(expected)
        assert max_relative_error(grads, expected_grads) <= 1e-10
        counts = [m.cell.dropout.rngs.count[...] for m in (reference, ours)]
        assert counts[0] == counts[1] > 0


class Tagger(nnx.Module):
    """An LSTM layer and a per-step readout: the model a user writes."""

    def __init__(self, rnn_class, rngs: nnx.Rngs, **options):
        self.lstm = rnn_class(nnx.LSTMCell(N, D, **F64, rngs=rngs), **options)
        self.readout = nnx.Linear(D, 2, **F64, rngs=rngs)

    def __call__(self, x):
        return self.readout(self.lstm(x))


def test_a_model_trains_under_nnx_jit_with_nnx_optimizer_as_the_reference(x64):
    x = jax.random.normal(jax.random.key(4), (M, T, N), jnp.float64)
    labels = (x[..., 0] > 0).astype(jnp.int32)
    reference = Tagger(nnx.RNN, nnx.Rngs(0))
    model = Tagger(interop.nnx.RNN, nnx.Rngs(0), method=dj.Omega())
    optimizers = [nnx.Optimizer(m, optax.adam(1e-2), wrt=nnx.Param) for m in (reference, model)]

    def cross_entropy(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @nnx.jit
    def train_step(models, optimizers):
        results = []
        for model, optimizer in zip(models, optimizers):
            value, grads = nnx.value_and_grad(cross_entropy)(model)
            optimizer.update(model, grads)
            results.append((value, grads))
        return results

    values = []
    for _ in range(3):
        (expected, expected_grads), (value, grads) = train_step((reference, model), optimizers)
        assert max_relative_error(grads, expected_grads) <= 1e-10
        values.append(value)
    assert values[-1] < values[0]
    params = [nnx.state(m, nnx.Param) for m in (model, reference)]
    assert max_relative_error(*params) <= 1e-10


def test_composes_with_nnx_vmap_and_nnx_grad(x64):
    # An ensemble of layers made by nnx.vmap (each member its own weights), run by
    # nnx.vmap over the members on shared inputs; nnx.grad gives each member's gradient.
    def ensemble(rnn_class, **options):
        @nnx.vmap(in_axes=0, out_axes=0)
        def make(key):
            cell = nnx.GRUCell(N, D, **F64, rngs=nnx.Rngs(key))
            return rnn_class(cell, **options)

        return make(jax.random.split(jax.random.key(0), 2))

    reference, ours = ensemble(nnx.RNN), ensemble(interop.nnx.RNN, method=dj.BPTT())
    x = jax.random.normal(jax.random.key(5), (M, T, N), jnp.float64)

    @nnx.jit
    def run(reference, ours):
        def value(members):
            outputs = nnx.vmap(lambda member: member(x), in_axes=0)(members)
            return loss(outputs)

        return [nnx.grad(value)(members) for members in (reference, ours)]

    expected, grads = run(reference, ours)
    assert jax.tree.leaves(grads)[0].shape[0] == 2
    assert max_relative_error(grads, expected) <= 1e-10


def test_cells_of_other_frameworks_are_sent_to_their_wrapper(x64):
    with pytest.raises(TypeError, match=r"flax\.linen module: use dprnn_jax\.interop\.FlaxRNN"):
        interop.nnx.RNN(nn.GRUCell(D))
    with pytest.raises(TypeError, match=r"Equinox module: use dprnn_jax\.interop\.equinox_scan"):
        interop.nnx.RNN(eqx.nn.GRUCell(N, D, key=jax.random.key(0)))
    with pytest.raises(TypeError, match=r"cell must be a flax\.nnx recurrent cell.*Linear"):
        interop.nnx.RNN(nnx.Linear(N, D, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"only the default state_axes"):
        interop.nnx.RNN(CELLS["GRUCell"](), state_axes={...: nnx.Carry})
    with pytest.raises(ValueError, match="newton"):
        interop.nnx.RNN(CELLS["GRUCell"](), method="newton")
    with pytest.raises(TypeError, match=r"forward_rnn must be an RNN module.*RNN\(cell"):
        interop.nnx.Bidirectional(CELLS["GRUCell"](), interop.nnx.RNN(CELLS["GRUCell"]()))


def test_a_cell_that_writes_a_variable_in_each_step_is_refused():
    class CountingCell(nnx.Module):
        def __init__(self):
            self.gru = nnx.GRUCell(N, D, rngs=nnx.Rngs(0))
            self.steps = nnx.BatchStat(jnp.zeros(()))

        def __call__(self, carry, x):
            self.steps[...] += 1
            return self.gru(carry, x)

        def initialize_carry(self, input_shape, rngs=None):
            return self.gru.initialize_carry(input_shape, rngs)

        num_feature_axes = 1

    rnn = interop.nnx.RNN(CountingCell())
    with pytest.raises(ValueError, match=r"writes its variable steps \(BatchStat\)"):
        rnn(jnp.ones((M, T, N)))


def test_dir_of_interop_lists_every_public_name():
    # Tab completion offers the names that are imported on first use (they import flax).
    assert set(interop.__all__) <= set(dir(interop))
    assert {"FlaxRNN", "nnx", "to_torch"} <= set(interop.__all__)
    assert interop.nnx.__all__ == ["Bidirectional", "RNN"]
