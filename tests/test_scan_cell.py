"""`scan_cell`: any cell `carry_t = step(θ, carry_{t−1}, x_t)` under every algorithm.

The oracle is `jax.grad` through the plain `lax.scan` (`method="autodiff"`); the cell
has a two-part carry, like an LSTM, so the one-step Jacobian is a (2d × 2d) matrix that
no algorithm sees except through the vector-Jacobian products of the cell.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, random_inputs

import dprnn_jax as dj
from dprnn_jax.backward import ALGORITHMS

D, N, M = 3, 2, 2
RTOL = {"float32": 1e-4, "float64": 1e-10}


def gated_step(params, carry, x):
    """A small gated cell with carry (h, c)."""
    h, c = carry
    gate = jax.nn.sigmoid(x @ params["Wg"].T + h @ params["Sg"].T)
    c = gate * c + (1 - gate) * jnp.tanh(x @ params["Wc"].T + h @ params["Sc"].T)
    return (1.1 * jnp.tanh(c), c)


def problem(T, dtype, seed=0):
    """Weights, inputs, a two-part initial carry and loss weights, drawn with NumPy (so
    that building a problem compiles nothing)."""
    shapes = {"Wg": (D, N), "Sg": (D, D), "Wc": (D, N), "Sc": (D, D)}
    params = {
        name: random_inputs(10 * seed + i, shape, dtype)
        for i, (name, shape) in enumerate(shapes.items())
    }
    xs = random_inputs(10 * seed + 4, (T, M, N), dtype)
    carry0 = (random_inputs(10 * seed + 5, (M, D), dtype), 0.3 * jnp.ones((M, D), dtype))
    weights = random_inputs(10 * seed + 6, (T, M, D), dtype)
    return params, xs, carry0, weights


def loss(params, xs, carry0, weights, method):
    hs, cs = dj.scan_cell(gated_step, params, xs, carry0, method=method)
    return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(cs**2)


def assert_close(tree, reference, dtype):
    assert_trees_close(tree, reference, rtol=RTOL[dtype])


@functools.partial(jax.jit, static_argnames="methods", compiler_options=CHEAP_COMPILE)
def gradients(params, xs, carry0, weights, methods):
    """∂loss/∂(params, xs, carry0) for each method: ONE compiled program for all."""
    return [jax.grad(loss, (0, 1, 2))(params, xs, carry0, weights, m) for m in methods]


ALGORITHM_CASES = [cls() for name, cls in ALGORITHMS.items() if name != "autodiff"] + [
    dj.Omega(block=4),
    dj.Omega(tol=0.0),
]


@pytest.mark.parametrize(
    ("T", "dtype"),
    [
        (9, "float64"),
        (9, "float32"),
        (1, "float64"),
        pytest.param(1, "float32", marks=pytest.mark.slow),
    ],
)
def test_every_algorithm_matches_the_oracle_under_jit(T, dtype, x64):
    params, xs, carry0, weights = problem(T, dtype)
    reference, *results = gradients(params, xs, carry0, weights, ("autodiff", *ALGORITHM_CASES))
    for got in results:
        assert_close(got, reference, dtype)


def test_under_vmap_over_an_ensemble(x64):
    """vmap over two parameter sets: each member's gradient is its own."""
    T = 6
    (p0, xs, carry0, weights), (p1, *_) = problem(T, "float64"), problem(T, "float64", 1)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
    methods = (dj.Omega(), dj.BPTT(), "autodiff")

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def batched_and_single(stacked, p0, p1):
        batched = [
            jax.vmap(jax.grad(loss), in_axes=(0, None, None, None, None))(
                stacked, xs, carry0, weights, method
            )
            for method in methods[:2]
        ]
        single = [jax.grad(loss)(p, xs, carry0, weights, "autodiff") for p in (p0, p1)]
        return batched, single

    batched, single = batched_and_single(stacked, p0, p1)
    for grads in batched:
        for i, reference in enumerate(single):
            assert_close(jax.tree.map(lambda a, i=i: a[i], grads), reference, "float64")


def test_truncation_is_the_stop_gradient_gradient(x64):
    """Truncation K: each carry_t recomputed from stop_gradient(carry_{t−K−1})."""
    T, K = 8, 2
    params, xs, carry0, weights = problem(T, "float64")

    def oracle(params, xs, carry0):
        carries = dj.scan_cell(gated_step, params, xs, carry0, method="autodiff")
        outputs = []
        for t in range(T):
            start = t - K - 1
            carry = carry0
            if start >= 0:
                carry = jax.tree.map(lambda a, s=start: jax.lax.stop_gradient(a[s]), carries)
            for u in range(max(start + 1, 0), t + 1):
                carry = gated_step(params, carry, xs[u])
            outputs.append(carry)
        hs = jnp.stack([h for h, _ in outputs])
        cs = jnp.stack([c for _, c in outputs])
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(cs**2)

    algorithms = (dj.Omega(truncation=K), dj.BPTT(truncation=K))

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def truncated_and_oracle(params, xs, carry0):
        truncated = [
            jax.grad(loss, (0, 1, 2))(params, xs, carry0, weights, algorithm)
            for algorithm in algorithms
        ]
        return truncated, jax.grad(oracle, (0, 1, 2))(params, xs, carry0)

    truncated, reference = truncated_and_oracle(params, xs, carry0)
    for grads in truncated:
        assert_close(grads, reference, "float64")


def test_integer_inputs_have_no_gradient(x64):
    def embedded(params, h, token):
        return jnp.tanh(params["E"][token] + h @ params["S"].T)

    params = {"E": jnp.linspace(-1, 1, 15).reshape(5, 3), "S": 0.5 * jnp.eye(3)}
    tokens = jnp.array([[0, 4], [2, 1], [3, 3]])
    h0 = jnp.zeros((2, 3))

    def f(params, method):
        return jnp.sum(dj.scan_cell(embedded, params, tokens, h0, method=method) ** 2)

    reference = jax.grad(f)(params, "autodiff")
    for algorithm in (dj.Omega(), dj.RTRL()):
        assert_close(jax.grad(f)(params, algorithm), reference, "float64")


def test_bad_cells_are_named():
    params, xs, carry0, _ = problem(4, "float32")
    with pytest.raises(ValueError, match=r"same structure, shapes and dtypes as carry0"):
        dj.scan_cell(lambda p, c, x: c[0], params, xs, carry0)
    with pytest.raises(ValueError, match=r"carry0 is .*float32\[2, 3\].*step returned"):
        dj.scan_cell(lambda p, c, x: (c[0][:, :2], c[1]), params, xs, carry0)
    with pytest.raises(ValueError, match=r"carry0\[0\] must lead with the batch axis"):
        dj.scan_cell(gated_step, params, xs, (jnp.zeros((3, D)), jnp.zeros((M, D))))
    with pytest.raises(TypeError, match="step must be a function"):
        dj.scan_cell("tanh", params, xs, carry0)
    with pytest.raises(ValueError, match="T ≥ 1"):
        dj.scan_cell(gated_step, params, xs[:0], carry0)


def test_integer_and_key_leaves_of_params_are_constants_of_the_step(x64):
    # An RNG key, a step counter and a flag in θ, and a pytree of inputs mixing floats and
    # tokens: the gradient is jax.grad's through a plain lax.scan, which gives the
    # integer leaves no gradient (float0).
    def step(params, h, x):
        key = jax.random.fold_in(params["key"], params["count"])
        mask = jnp.where(params["flag"], jax.random.bernoulli(key, 0.7, h.shape), 1.0)
        pre = x["features"] @ params["W"].T + h @ params["S"].T + params["E"][x["tokens"]]
        return jnp.tanh(pre) * mask

    params = {
        "W": random_inputs(0, (D, N), "float64"),
        "S": random_inputs(1, (D, D), "float64"),
        "E": random_inputs(2, (5, D), "float64"),
        "key": jax.random.key(0),
        "count": jnp.uint32(3),
        "flag": jnp.array(True),
    }
    T = 4
    xs = {
        "features": random_inputs(3, (T, M, N), "float64"),
        "tokens": jnp.array([[0, 4], [2, 1], [3, 3], [1, 0]]),
    }
    h0 = random_inputs(4, (M, D), "float64")
    weights = random_inputs(5, (T, M, D), "float64")

    def f(params, xs, h0, method):
        return jnp.sum(jnp.sin(dj.scan_cell(step, params, xs, h0, method=method)) * weights)

    methods = ("autodiff", dj.Omega(), dj.BPTT(), dj.RTRL())

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def all_gradients(params, xs, h0):
        return [jax.grad(f, (0, 1, 2), allow_int=True)(params, xs, h0, m) for m in methods]

    reference, *results = all_gradients(params, xs, h0)
    floating = lambda grads: jax.tree.map(  # noqa: E731
        lambda g: g if g.dtype != jax.dtypes.float0 else None, grads
    )
    for got in results:
        assert jax.tree.structure(got) == jax.tree.structure(reference)
        for name in ("key", "count", "flag"):
            assert got[0][name].dtype == jax.dtypes.float0
        assert got[1]["tokens"].dtype == jax.dtypes.float0
        assert_close(floating(got), floating(reference), "float64")


def test_pytree_inputs_reach_the_step_as_rows(x64):
    # A tuple of float inputs of two widths: the same gradient w.r.t. each as one
    # concatenated array gives.
    params, xs, carry0, weights = problem(5, "float64")
    parts = (xs[..., :1], xs[..., 1:])

    def split_step(params, carry, x):
        return gated_step(params, carry, jnp.concatenate(x, axis=-1))

    def f(parts, method):
        hs, cs = dj.scan_cell(split_step, params, parts, carry0, method=method)
        return jnp.sum(jnp.sin(hs) * weights) + jnp.sum(cs**2)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(parts, xs):
        whole = jax.grad(lambda xs: loss(params, xs, carry0, weights, "autodiff"))(xs)
        return whole, [jax.grad(f)(parts, m) for m in (dj.Omega(), dj.BPTT())]

    whole, results = run(parts, xs)
    for got in results:
        assert_close(jnp.concatenate(got, axis=-1), whole, "float64")


def test_pytree_inputs_must_agree_on_time_and_batch():
    params, xs, carry0, _ = problem(4, "float32")
    with pytest.raises(ValueError, match=r"agree on T and m.*'b'.*\(3, 2, 2\)"):
        dj.scan_cell(gated_step, params, {"a": xs, "b": xs[:3]}, carry0)
    with pytest.raises(TypeError, match="xs must be an array"):
        dj.scan_cell(gated_step, params, [1.0, 2.0], carry0)
