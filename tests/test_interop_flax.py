"""`dj.interop.FlaxRNN` is a drop-in for `flax.linen.RNN` with the library's gradients.

The reference is `nn.RNN` with the same cell, differentiated by `jax.grad`: the same
variables (structure and values), the same outputs and final carry, and the same
gradients w.r.t. the parameters and the inputs, in float64, for `Omega()` and `BPTT()`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from helpers import CHEAP_COMPILE, max_relative_error

import dprnn_jax as dj
from dprnn_jax import interop

T, M, N, D = 5, 2, 3, 4
METHODS = {"omega": dj.Omega(), "bptt": dj.BPTT()}
LENGTHS = jnp.array([5, 3])


class ReadoutCell(nn.RNNCellBase):
    """A user cell whose output is not part of its carry: `y = h Vᵀ + c`, of width 2."""

    features: int

    @nn.compact
    def __call__(self, carry, x):
        dense = dict(param_dtype=jnp.float64)
        h = jnp.tanh(nn.Dense(self.features, **dense)(x) + nn.Dense(self.features, **dense)(carry))
        return h, nn.Dense(2, **dense)(h)

    def initialize_carry(self, rng, input_shape):
        del rng
        return jnp.zeros(input_shape[:-1] + (self.features,), jnp.float64)

    @property
    def num_feature_axes(self) -> int:
        return 1


CELLS = {
    "GRUCell": lambda: nn.GRUCell(D, param_dtype=jnp.float64),
    "LSTMCell": lambda: nn.LSTMCell(D, param_dtype=jnp.float64),
    "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(D, param_dtype=jnp.float64),
    "SimpleCell": lambda: nn.SimpleCell(D, param_dtype=jnp.float64),
    "ReadoutCell": lambda: ReadoutCell(D),
}
# Flax's cells batch-major without lengths and time-major with lengths (and the final
# carry); the user cell, whose output rides along in an augmented carry, in the latter.
CASES = [(cell, False, False) for cell in CELLS if cell != "ReadoutCell"]
CASES += [(cell, True, True) for cell in CELLS]


def loss(outputs) -> jax.Array:
    """A scalar that reads every output and every leaf of a returned carry."""
    return sum(jnp.sum(jnp.sin(leaf) * (1 + leaf)) for leaf in jax.tree.leaves(outputs))


def compare(reference, modules, x, **call):
    """Max errors of our outputs and gradients against the reference's.

    The inits must agree exactly (so weights move both ways; the method does not enter
    the variables, so one of ours is enough); then the reference's variables are
    applied in every module, and the gradients w.r.t. the variables and the inputs come
    from one compiled function.
    """
    key = jax.random.key(0)

    def init(module):
        return jax.jit(functools.partial(module.init, **call), compiler_options=CHEAP_COMPILE)

    variables = init(reference)(key, x)
    ours = init(next(iter(modules.values())))(key, x)
    assert jax.tree.structure(ours) == jax.tree.structure(variables)
    assert max_relative_error(ours, variables) == 0.0

    def gradient_and_outputs(module):
        def value(variables, x):
            outputs = module.apply(variables, x, **call)
            return loss(outputs), outputs

        return jax.grad(value, (0, 1), has_aux=True)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(variables, x):
        expected = gradient_and_outputs(reference)(variables, x)
        ours = {name: gradient_and_outputs(m)(variables, x) for name, m in modules.items()}
        return expected, ours

    (expected_grads, expected), ours = run(variables, x)
    output_errors = {name: max_relative_error(out, expected) for name, (_, out) in ours.items()}
    grad_errors = {name: max_relative_error(g, expected_grads) for name, (g, _) in ours.items()}
    return output_errors, grad_errors


@pytest.mark.parametrize(("cell", "time_major", "with_lengths"), CASES)
def test_flax_rnn_matches_nn_rnn(cell, time_major, with_lengths, x64):
    shape = (T, M, N) if time_major else (M, T, N)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    call = dict(seq_lengths=LENGTHS, return_carry=True) if with_lengths else {}
    reference = nn.RNN(CELLS[cell](), time_major=time_major)
    modules = {
        name: interop.FlaxRNN(CELLS[cell](), time_major=time_major, method=method)
        for name, method in METHODS.items()
    }
    output_errors, grad_errors = compare(reference, modules, x, **call)
    assert max(output_errors.values()) <= 1e-12, output_errors
    assert max(grad_errors.values()) <= 1e-10, grad_errors


def test_bidirectional_of_flax_rnns_matches_nn_bidirectional(x64):
    # nn.Bidirectional calls the backward RNN with reverse, keep_order, return_carry and
    # the lengths: every override of the call signature at once, nested in a parent.
    def bidirectional(make):
        return nn.Bidirectional(make(CELLS["GRUCell"]()), make(CELLS["LSTMCell"]()))

    x = jax.random.normal(jax.random.key(2), (M, T, N), jnp.float64)
    reference = bidirectional(nn.RNN)
    modules = {"omega": bidirectional(lambda cell: interop.FlaxRNN(cell, method="omega"))}
    output_errors, grad_errors = compare(
        reference, modules, x, seq_lengths=LENGTHS, return_carry=True
    )
    assert output_errors["omega"] <= 1e-12
    assert grad_errors["omega"] <= 1e-10


def test_truncation_keeps_lags_up_to_k(x64):
    # Omega(truncation=K) is the exact gradient of the model in which every carry is
    # recomputed over K + 1 steps from stop_gradient of the carry before them.
    K = 1
    cell = CELLS["GRUCell"]()
    x = jax.random.normal(jax.random.key(3), (T, M, N), jnp.float64)
    exact = interop.FlaxRNN(cell, time_major=True, method=dj.BPTT())
    truncated = interop.FlaxRNN(cell, time_major=True, method=dj.Omega(truncation=K))
    variables = exact.init(jax.random.key(0), x)
    carry0 = cell.initialize_carry(jax.random.key(0), x.shape[1:])

    def truncated_model(variables, x):
        def step(carry, x_t):
            return cell.apply({"params": variables["params"]["cell"]}, carry, x_t)[0]

        carries, outputs = [carry0], []
        for t in range(T):
            start = t - K
            h = carry0 if start == 0 else jax.lax.stop_gradient(carries[start])
            for s in range(max(start, 0), t + 1):
                h = step(h, x[s])
            outputs.append(h)
            carries.append(step(carries[-1], x[t]))
        return jnp.stack(outputs)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def grads(variables, x):
        return {
            "oracle": jax.grad(lambda v: loss(truncated_model(v, x)))(variables),
            "truncated": jax.grad(lambda v: loss(truncated.apply(v, x)))(variables),
            "exact": jax.grad(lambda v: loss(exact.apply(v, x)))(variables),
        }

    result = grads(variables, x)
    assert max_relative_error(result["truncated"], result["oracle"]) <= 1e-10
    assert max_relative_error(result["exact"], result["oracle"]) > 1e-3


def test_unknown_method_is_refused_when_called():
    rnn = interop.FlaxRNN(nn.GRUCell(D), method="newton")
    with pytest.raises(ValueError, match="newton"):
        rnn.init(jax.random.key(0), jnp.ones((M, T, N)))


def test_an_nnx_cell_is_sent_to_interop_nnx_rnn():
    from flax import nnx

    with pytest.raises(TypeError, match=r"flax\.nnx module: use dprnn_jax\.interop\.nnx\.RNN"):
        interop.FlaxRNN(nnx.GRUCell(N, D, rngs=nnx.Rngs(0)))


def test_unroll_is_accepted_as_nn_rnn_accepts_it():
    # A hint, as in nn.RNN: the same program, the outputs of unroll=1.
    x = jnp.linspace(-1, 1, M * T * N).reshape(M, T, N)
    rnn, unrolled = interop.FlaxRNN(nn.GRUCell(D)), interop.FlaxRNN(nn.GRUCell(D), unroll=3)
    variables = rnn.init(jax.random.key(0), x)
    assert max_relative_error(unrolled.apply(variables, x), rnn.apply(variables, x)) == 0.0
