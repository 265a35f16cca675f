"""Every registered gradient algorithm against the oracle, `jax.grad` of a plain lax.scan.

Grid: algorithm × activation × {1, 2, 3} layers × T ∈ {1, 2, 3, 17} × m ∈ {1, 5} × with
and without a ragged mask × {float32, float64} (the default run a part of it, below); the gradients w.r.t. params, xs and
every h0 must agree with the oracle's to a relative error of 1e-4 (float32) or 1e-10
(float64). The algorithms are those of `dprnn_jax.backward.ALGORITHMS`, so a new one is
checked without editing this file; half of the cases pass the algorithm object, half
its name.

The grid's cost is compiling it, so each test compiles ONE program: for its
(activation, depth, dtype), every (T, m) problem and every algorithm, with the oracle's
gradient computed once per problem and shared by all algorithms, each vmapped over the
two masks (so every custom rule also runs under `vmap`). The problems are drawn with
NumPy, which compiles nothing.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import pytest
from helpers import (
    ALGORITHMS,
    CHEAP_COMPILE,
    RTOL,
    library_loss,
    make_problem,
    max_relative_error,
    no_mask_and,
    reference_loss,
)

import dprnn_jax as dj

ACTIVATIONS = tuple(dj.ACTIVATIONS)
DEPTHS = (1, 2, 3)
SHAPES = tuple(itertools.product((1, 2, 3, 17), (1, 5)))  # (T, m)
MASKS = ("no mask", "ragged mask")

# The default run checks every activation at depth 1 and, per dtype, two networks of 2
# layers, so that over both dtypes every activation is checked in a stack; the other
# (activation, depth) of each dtype, the 3-layer stacks among them, are marked `slow`
# (`python -m pytest -n 2 -m slow tests/test_gradients.py`). Deeper stacks only repeat
# the layer-to-layer cotangents (a layer's input cotangent handed to the layer below as
# its output cotangent) that depth 2 already checks in both directions, and each of them
# costs the suite 7-25 s of compilation.
DEEPER = {"float32": (("relu", 2), ("sigmoid", 2)), "float64": (("sigmoid", 2), ("tanh", 2))}


def default_cases(dtype: str) -> tuple[tuple[str, int], ...]:
    """The (activation, n_layers) checked for `dtype` by the default run, in order."""
    return tuple((activation, 1) for activation in ACTIVATIONS) + DEEPER[dtype]


# Each algorithm on all 8 (T, m) of every test adds about 10 s of CPU time to the suite,
# nearly all of it compilation. So each runs on a window of the (T, m) per test of the
# default run, a window that moves from test to test so that, per dtype, every algorithm
# is still checked at every (T, m), by name and as an object, and with every activation
# (see the last test): half of them for the Ω programme, BPTT and the naive expansion; two
# for "scan" and "rtrl", whose programs are the largest, and for "autodiff", which is
# `jax.grad` of the library's own plain scan, the oracle's computation on the library's
# forward. The slow tests check all of them everywhere.
NARROW = ("scan", "rtrl", "autodiff")
SUB_GRIDS = {name: 2 if name in NARROW else 4 for name in ALGORITHMS}


def shapes_checked(name: str, dtype: str, activation: str, n_layers: int):
    """The (T, m) at which the test of (dtype, activation, n_layers) checks `name`."""
    cases = default_cases(dtype)
    if name not in SUB_GRIDS or (activation, n_layers) not in cases:
        return SHAPES
    count = SUB_GRIDS[name]
    first = count * cases.index((activation, n_layers)) + 3 * list(SUB_GRIDS).index(name)
    return tuple(SHAPES[(first + k) % len(SHAPES)] for k in range(count))


def methods_at(T: int, m: int, dtype: str, activation: str, n_layers: int) -> tuple:
    """The `method=` arguments checked at (T, m): objects when m > 1, names when m = 1."""
    names = [
        name for name in ALGORITHMS if (T, m) in shapes_checked(name, dtype, activation, n_layers)
    ]
    return tuple(ALGORITHMS[name]() if m > 1 else name for name in names)


def problem_gradients(problem, mask, *, loss, activation, methods):
    """Gradients w.r.t. (params, xs, h0s) of every method, keyed by name, and of the
    oracle, keyed "oracle", with `mask` in place of the problem's own."""
    params, xs, targets, _, h0s = problem
    argnums, options = (0, 1, 4), dict(loss=loss, activation=activation)
    grads = {
        getattr(method, "name", method): jax.grad(library_loss, argnums)(
            params, xs, targets, mask, h0s, method=method, **options
        )
        for method in methods
    }
    grads["oracle"] = jax.grad(reference_loss, argnums)(params, xs, targets, mask, h0s, **options)
    return grads


@functools.partial(jax.jit, static_argnames=("activation", "plans"), compiler_options=CHEAP_COMPILE)
def gradients_and_oracle(problems, *, activation, plans):
    """`problem_gradients` of problem p with the (loss, methods) of `plans[p]`, vmapped
    over the masks (none, the problem's ragged one): ONE compiled program for all."""
    return [
        jax.vmap(
            functools.partial(
                problem_gradients, problem, loss=loss, activation=activation, methods=methods
            )
        )(no_mask_and(problem.mask))
        for problem, (loss, methods) in zip(problems, plans, strict=True)
    ]


def assert_every_method_matches_oracle(labels, results, dtype):
    """Fails listing every (case, mask, method) whose error exceeds the dtype's rtol."""
    rtol = RTOL[jnp.dtype(dtype)]
    errors = {}
    # On the host: indexing device arrays would compile one program per leaf shape.
    for label, grads in zip(labels, jax.device_get(results), strict=True):
        for index, mask in enumerate(MASKS):
            at = jax.tree.map(lambda g, i=index: g[i], grads)
            oracle = at.pop("oracle")
            for method, grad in at.items():
                errors[f"{label}, {mask}, {method}"] = max_relative_error(grad, oracle)
    failures = {case: error for case, error in errors.items() if not error <= rtol}
    assert not failures, f"{len(failures)} of {len(errors)} cases above rtol {rtol:.0e}:\n" + (
        "\n".join(f"  {case}: max relative error {error:.2e}" for case, error in failures.items())
    )


GRID = [
    pytest.param(
        dtype,
        activation,
        n_layers,
        marks=() if (activation, n_layers) in default_cases(dtype) else pytest.mark.slow,
    )
    for dtype in ("float32", "float64")
    for activation in ACTIVATIONS
    for n_layers in DEPTHS
]


@pytest.mark.parametrize("dtype_name, activation, n_layers", GRID)
def test_every_algorithm_matches_jax_grad(dtype_name, activation, n_layers):
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        shapes = [(T, m) for T, m in SHAPES if methods_at(T, m, dtype_name, activation, n_layers)]
        problems = [make_problem(T * 100 + m, T, m, n_layers, dtype) for T, m in shapes]
        plans = tuple(
            ("softmax_cross_entropy", methods_at(T, m, dtype_name, activation, n_layers))
            for T, m in shapes
        )
        results = gradients_and_oracle(problems, activation=activation, plans=plans)
        labels = [f"{activation}, {n_layers} layers, T={T}, m={m}" for T, m in shapes]
        assert_every_method_matches_oracle(labels, results, dtype)


def test_other_losses_match_jax_grad(dtype):
    losses = ("sigmoid_binary_cross_entropy", "mse")
    problems = [make_problem(7, 9, 3, 2, dtype, loss=loss) for loss in losses]
    methods = tuple(name for name in ALGORITHMS if name not in NARROW)
    plans = tuple((loss, methods) for loss in losses)
    results = gradients_and_oracle(problems, activation="tanh", plans=plans)
    labels = [f"{loss}, tanh, 2 layers, T=9, m=3" for loss in losses]
    assert_every_method_matches_oracle(labels, results, dtype)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_the_default_grid_checks_every_algorithm_at_every_shape(dtype_name):
    """Per dtype, the default tests together check every registered algorithm at every
    (T, m), by name and as an object, and every activation."""
    checked = {
        (getattr(method, "name", method), T, m, isinstance(method, str))
        for activation, n_layers in default_cases(dtype_name)
        for T, m in SHAPES
        for method in methods_at(T, m, dtype_name, activation, n_layers)
    }
    assert {(name, T, m) for name, T, m, _ in checked} == {
        (name, T, m) for name in ALGORITHMS for T, m in SHAPES
    }
    assert {(name, by_name) for name, _, _, by_name in checked} == {
        (name, by_name) for name in ALGORITHMS for by_name in (True, False)
    }
    assert {activation for activation, _ in default_cases(dtype_name)} == set(ACTIVATIONS)
    deeper = {activation for dtype in DEEPER for activation, _ in DEEPER[dtype]}
    assert deeper == set(ACTIVATIONS)
