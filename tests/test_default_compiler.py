"""The compiler users get: a core correctness subset compiled by XLA's default CPU pipeline.

The suite compiles with XLA's cheap CPU code generation for speed (conftest.py), but
users' programs go through XLA's default pipeline, which miscompiles some gradients on
this kind of machine (docs/algorithms.md#the-compiler-users-get). So this module
compiles every algorithm on every kind of cell with the default pipeline
(`helpers.DEFAULT_COMPILE`, per program, whatever `XLA_FLAGS` the run set) and compares
it with an oracle that never goes through `lax.scan`'s own gradient: the same model
unrolled in a Python loop, differentiated with `jax.grad` and compiled by the other code
generator (`helpers.LEGACY_COMPILE`). A method that is off under the default pipeline
but exact under the other is the compiler's error, reported as an expected failure
(`assert_exact_or_miscompiled`); one that is off under both fails. Small shapes,
float64, one compiled program per cell for all the algorithms.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    DEFAULT_COMPILE,
    LEGACY_COMPILE,
    assert_trees_close,
    gru_equations,
    lstm_equations,
    max_relative_error,
    reference_loss,
)

import dprnn_jax as dj

T, M, N, D, K = 3, 4, 3, 5, 2
RTOL = 1e-10

# Every registered algorithm with its defaults, and the options that change its program.
ALGORITHM_CASES = [cls() for cls in dj.backward.ALGORITHMS.values()] + [
    dj.Omega(block=2),
    dj.Omega(tol=0.0),
    dj.Omega(truncation=1),
    dj.BPTT(truncation=1),
    dj.BPTT(checkpoint="sqrt"),
]


def _truncation(method) -> int | None:
    return getattr(method, "truncation", None)


def assert_exact_or_miscompiled(methods, gradients, args, expected):
    """Every method's gradient equals the oracle's, compiled with the default pipeline;
    `expected[i]` is the oracle of `methods[i]`, `gradients(*args)` their gradients.

    A method that is off is compiled again by the other code generator: if it is exact
    there, the program is right and XLA's default pipeline miscompiled it (seen on this
    kind of machine, docs/algorithms.md#the-compiler-users-get), which the test reports
    as an expected failure listing the methods and errors, since the library cannot fix
    the compiler; if it is off there too, the library is wrong and the test fails.
    """
    results = jax.jit(gradients, compiler_options=DEFAULT_COMPILE)(*args)
    errors = {m: max_relative_error(g, e) for m, g, e in zip(methods, results, expected)}
    off = {m: error for m, error in errors.items() if not error <= RTOL}
    if not off:
        return
    again = jax.jit(gradients, compiler_options=LEGACY_COMPILE)(*args)
    for method, got, oracle in zip(methods, again, expected):
        if method in off:
            assert_trees_close(got, oracle, rtol=RTOL)
    if LEGACY_COMPILE:  # a second code generator, and it computed them right
        pytest.xfail(
            "XLA's default CPU pipeline miscompiles these gradients, which the other code "
            "generator computes exactly (max relative error under the default pipeline): "
            + ", ".join(f"{m} {error:.1e}" for m, error in off.items())
        )
    pytest.fail(f"off under XLA's only pipeline here: {off}")


def elman_equations(layer, h, x):
    return jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)


CELLS = {"elman": elman_equations, "gru": gru_equations, "lstm": lstm_equations}


def unrolled_sequence_loss(params, xs, targets, truncation=None):
    """`sequence_loss` of a one-layer network, unrolled in Python. With `truncation=K` the
    loss of step t sees the state before step t − K as a constant (or the initial state,
    at the start): the definition of K-step truncated BPTT (docs/theory.md#truncation)."""
    layer, step = params.layers[0], CELLS[params_cell(params)]
    zeros = jnp.zeros((xs.shape[1], D), xs.dtype)
    states = [(zeros, zeros) if params_cell(params) == "lstm" else zeros]
    for t in range(xs.shape[0]):
        states.append(step(layer, states[-1], xs[t]))
    total = 0.0
    for t in range(xs.shape[0]):
        state = states[t + 1]
        if truncation is not None:
            start = max(t - truncation, 0)
            state = states[start] if start == 0 else jax.lax.stop_gradient(states[start])
            for s in range(start, t + 1):
                state = step(layer, state, xs[s])
        h = state[0] if isinstance(state, tuple) else state
        logits = h @ params.readout.W.T + params.readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(logits, targets[t]).sum()
    return total / xs.shape[1]


def params_cell(params) -> str:
    return {dj.LayerParams: "elman", dj.GRUParams: "gru", dj.LSTMParams: "lstm"}[
        type(params.layers[0])
    ]


def problem(cell: str):
    """A one-layer network of `cell` with noise on every weight, inputs and classes."""
    rng = np.random.default_rng(0)
    params = dj.init_rnn(jax.random.key(0), N, (D,), K, cell=cell, dtype=jnp.float64)
    params = jax.tree.map(lambda a: a + 0.3 * rng.standard_normal(a.shape), params)
    xs = jnp.asarray(rng.standard_normal((T, M, N)))
    return params, xs, jnp.asarray(rng.integers(0, K, (T, M)))


@pytest.mark.parametrize("cell", list(CELLS))
def test_every_algorithm_on_a_built_in_cell_under_the_default_pipeline(cell, x64):
    params, xs, targets = problem(cell)

    def gradients(params):
        return [
            jax.grad(lambda p, m=m: dj.sequence_loss(p, xs, targets, method=m))(params)
            for m in ALGORITHM_CASES
        ]

    truncations = tuple(dict.fromkeys(_truncation(m) for m in ALGORITHM_CASES))

    def oracles(params):
        return [jax.grad(unrolled_sequence_loss)(params, xs, targets, K) for K in truncations]

    expected = jax.jit(oracles, compiler_options=LEGACY_COMPILE)(params)
    expected = [expected[truncations.index(_truncation(m))] for m in ALGORITHM_CASES]
    assert_exact_or_miscompiled(ALGORITHM_CASES, gradients, (params,), expected)


# ---------------------------------------------------------------------------------------
# User cells through scan_cell, including the cases seen to be miscompiled


def two_part_step(params, carry, x):
    """A user cell with carry (h, c), batched over rows."""
    h, c = carry
    gate = jax.nn.sigmoid(x @ params["Wg"].T + h @ params["Sg"].T)
    c = gate * c + (1 - gate) * jnp.tanh(x @ params["Wc"].T + h @ params["Sc"].T)
    return 1.1 * jnp.tanh(c), c


def per_sample_gru(params, h, x):
    """A GRU cell for ONE sample, h (d,) and x (n,); `jax.vmap` batches it."""
    inputs, recurrent = params["W_ih"] @ x + params["b"], params["W_hh"] @ h
    r = jax.nn.sigmoid(inputs[:D] + recurrent[:D])
    z = jax.nn.sigmoid(inputs[D : 2 * D] + recurrent[D : 2 * D])
    n = jnp.tanh(inputs[2 * D :] + r * recurrent[2 * D :])
    return (1 - z) * n + z * h


def split_gru(params, h, x):
    """A GRU cell as users write it: `jnp.split` of the gates, the sigmoid written out."""
    a_r, a_z, a_n = jnp.split(x @ params["W_ih"].T + params["b"], 3, axis=-1)
    s_r, s_z, s_n = jnp.split(h @ params["W_hh"].T, 3, axis=-1)
    r, z = 1 / (1 + jnp.exp(-(a_r + s_r))), 1 / (1 + jnp.exp(-(a_z + s_z)))
    return (1 - z) * jnp.tanh(a_n + r * s_n) + z * h


GRU_SHAPES = {"W_ih": (3 * D, N), "W_hh": (3 * D, D), "b": (3 * D,)}
USER_CELLS = {
    "two_part": (
        two_part_step,
        {"Wg": (D, N), "Sg": (D, D), "Wc": (D, N), "Sc": (D, D)},
        lambda rng: (rng.standard_normal((M, D)), 0.3 * np.ones((M, D))),
    ),
    # The case reported to be miscompiled on another machine (T = 2, m = 4, d = 5).
    "vmapped_per_sample_gru": (
        jax.vmap(per_sample_gru, in_axes=(None, 0, 0)),
        GRU_SHAPES,
        lambda rng: rng.standard_normal((M, D)),
    ),
    # The case miscompiled on this kind of machine (docs/algorithms.md#the-compiler-users-get).
    "split_gru": (split_gru, GRU_SHAPES, lambda rng: rng.standard_normal((M, D))),
}


@pytest.mark.parametrize(
    ("name", "T_steps"), [("two_part", 3), ("vmapped_per_sample_gru", 2), ("split_gru", 3)]
)
def test_every_algorithm_on_a_user_cell_under_the_default_pipeline(name, T_steps, x64):
    step, shapes, draw_carry = USER_CELLS[name]
    rng = np.random.default_rng(1)
    params = {key: jnp.asarray(rng.standard_normal(shape)) for key, shape in shapes.items()}
    xs = jnp.asarray(rng.standard_normal((T_steps, M, N)))
    carry0 = jax.tree.map(jnp.asarray, draw_carry(rng))
    weights = jnp.asarray(rng.standard_normal((T_steps, M, D)))
    methods = [m for m in ALGORITHM_CASES if _truncation(m) is None]

    def read(carries):
        hs = carries[0] if isinstance(carries, tuple) else carries
        return jnp.sum(jnp.sin(hs) * weights)

    def gradients(params, xs, carry0):
        return [
            jax.grad(lambda *a, m=m: read(dj.scan_cell(step, *a, method=m)), (0, 1, 2))(
                params, xs, carry0
            )
            for m in methods
        ]

    def unrolled(params, xs, carry0):
        carry, total = carry0, 0.0
        for t in range(T_steps):
            carry = step(params, carry, xs[t])
            h = carry[0] if isinstance(carry, tuple) else carry
            total += jnp.sum(jnp.sin(h) * weights[t])
        return total

    expected = jax.jit(jax.grad(unrolled, (0, 1, 2)), compiler_options=LEGACY_COMPILE)(
        params, xs, carry0
    )
    args = (params, xs, carry0)
    assert_exact_or_miscompiled(methods, gradients, args, [expected] * len(methods))


def test_the_suites_scan_oracle_agrees_with_an_unrolled_loop_under_the_default_pipeline(x64):
    """`helpers.reference_loss` (`jax.grad` through `lax.scan`), the oracle of most of the
    suite, against the same network unrolled, both with XLA's default pipeline."""
    params, xs, targets = problem("elman")
    oracle = jax.jit(
        jax.grad(
            lambda p: reference_loss(
                p, xs, targets, loss="softmax_cross_entropy", activation="tanh"
            )
        ),
        compiler_options=DEFAULT_COMPILE,
    )(params)
    unrolled = jax.jit(
        jax.grad(lambda p: unrolled_sequence_loss(p, xs, targets)),
        compiler_options=DEFAULT_COMPILE,
    )(params)
    assert_trees_close(oracle, unrolled, rtol=RTOL)


# A program compiled here and in a process without XLA_FLAGS, from the same source (so
# that the source locations in the compiled text agree).
PROBE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp

    def loss(W, xs):
        def step(h, x):
            h = jnp.tanh(h @ W + x)
            return h, h
        return jnp.sum(jax.lax.scan(step, jnp.zeros(4), xs)[1] ** 2)

    def compiled_text(options):
        compiled = jax.jit(jax.grad(loss), compiler_options=options)
        return compiled.lower(jnp.eye(4), jnp.ones((3, 4))).compile().as_text()
    """
)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the pipelines compared are XLA:CPU's")
def test_default_compile_is_the_pipeline_of_a_program_without_xla_flags():
    """The per-program options of this module give the machine code a user's program gets
    (a process without XLA_FLAGS), not the suite's cheap one."""
    clean = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    users = subprocess.run(
        [sys.executable, "-c", PROBE + "import sys; sys.stdout.write(compiled_text({}))"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    here: dict = {}
    exec(compile(PROBE, "<string>", "exec"), here)
    users = without_source_locations(users)
    assert users == without_source_locations(here["compiled_text"](DEFAULT_COMPILE))
    if LEGACY_COMPILE:
        assert users != without_source_locations(here["compiled_text"](LEGACY_COMPILE))


def without_source_locations(hlo: str) -> str:
    """Compiled HLO text less what names the caller's source: the tables of files,
    functions, locations and stack frames, and each instruction's metadata."""
    tables = r"\n(FileNames|FunctionNames|FileLocations|StackFrames)\n(.+\n)*"
    return re.sub(r", metadata=\{[^}]*\}", "", re.sub(tables, "", hlo))
