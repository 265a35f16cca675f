"""Mixed precision: float32 parameters, bfloat16 inputs (docs/performance.md#mixed-precision).

The layers compute in bfloat16 (carries, Δ, products with float32 accumulation); the
parameters, their gradients, the readout and the loss stay float32. The oracle is the
float32 gradient of the same parameters at the same inputs (the bfloat16 inputs upcast,
so that rounding the inputs is not counted as an error), by `Autodiff()`.

Tolerances. bfloat16 keeps 8 significant bits: each rounding is off by at most
u = 2⁻⁸ ≈ 3.9e-3 relative. The gradient is a sum over T = 8 steps of products of
rounded states, Jacobians and errors, each carrying a few such roundings, which add like
a random walk: about c·u·√T, with c a small count of roundings per term. Measured at
these shapes over 20 draws per case (every cell and method; the larger shapes of
docs/performance.md#mixed-precision agree), the largest normwise error of an array was
4.2e-2 (≈ 3.8·u·√T) against float32 and 3.0e-2 between two methods. The bound used for
both, 8·u·√T ≈ 8.8e-2, leaves twice that; a pattern of SnAp's read in bfloat16 (which
loses entries where a gate saturates) gave 0.12 and fails it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, max_relative_error

import dprnn_jax as dj
from dprnn_jax.backward import ALGORITHMS

T, M, N, D, K = 8, 2, 3, 4, 3
U = 2.0**-8  # bfloat16's unit roundoff
RTOL = 8 * U * np.sqrt(T)  # against float32, and between two methods in mixed precision

# Rows per hidden unit of each kind's W (gates), and its parameters' fields.
KINDS = {
    "elman": (dj.LayerParams, 1, ("W", "S", "b")),
    "gru": (dj.GRUParams, 3, ("W", "S", "b_ih", "b_hh")),
    "lstm": (dj.LSTMParams, 4, ("W", "S", "b_ih", "b_hh")),
    "mingru": (dj.MinGRUParams, 2, ("W", "b")),
}


def _draw(rng, shape, scale=1.0, dtype=np.float32):
    """NumPy draws put on the device: building a problem compiles nothing."""
    return jax.device_put((scale * rng.standard_normal(shape)).astype(dtype))


def network(cell: str, seed: int = 0, dtype=np.float32) -> dj.RNNParams:
    """One layer of `cell` (entries N(0, 1/fan-in)) and a readout to K classes."""
    rng = np.random.default_rng(seed)
    params_type, gates, fields = KINDS[cell]
    shapes = {"W": (gates * D, N), "S": (gates * D, D)}
    layer = params_type(
        *[_draw(rng, shapes.get(f, (gates * D,)), 1 / np.sqrt(N + D), dtype) for f in fields]
    )
    readout = dj.ReadoutParams(
        _draw(rng, (K, D), 1 / np.sqrt(D), dtype), _draw(rng, (K,), 0.1, dtype)
    )
    return dj.RNNParams((layer,), readout)


def gated_step(params, carry, x):
    """A user's cell with a carry (h, c), for `scan_cell`; dtype-generic."""
    h, c = carry
    gate = jax.nn.sigmoid(x @ params["Wg"].T + h @ params["Sg"].T)
    c = gate * c + (1 - gate) * jnp.tanh(x @ params["Wc"].T + h @ params["Sc"].T)
    return (jnp.tanh(c), c)


def step_problem(seed: int = 0):
    """`scan_cell` of `gated_step`, its loss a fixed weighting of the carries (in float32,
    as a readout of the library's would be)."""
    rng = np.random.default_rng(seed)
    shapes = {"Wg": (D, N), "Sg": (D, D), "Wc": (D, N), "Sc": (D, D)}
    params = {name: _draw(rng, shape, 1 / np.sqrt(N + D)) for name, shape in shapes.items()}
    weights = _draw(rng, (T, M, D))

    def loss(params, xs, method):
        zeros = jnp.zeros((M, D), xs.dtype)
        hs, _ = dj.scan_cell(gated_step, params, xs, (zeros, zeros), method=method)
        return jnp.sum(weights * hs.astype(jnp.float32))

    return loss, params


def problem(case: str, seed: int = 0):
    """`(loss(params, xs, method), float32 params, float32 inputs that are bfloat16 values)`."""
    xs = _draw(np.random.default_rng(100 + seed), (T, M, N)).astype(jnp.bfloat16)
    if case == "step":
        loss, params = step_problem(seed)
    else:
        params = network(case, seed)
        ys = jax.device_put(np.random.default_rng(200 + seed).integers(0, K, (T, M)))

        def loss(params, xs, method):
            return dj.sequence_loss(params, xs, ys, method=method)

    return loss, params, xs


@pytest.mark.parametrize("case", [*KINDS, "step"])
def test_every_exact_method_gives_a_float32_gradient_close_to_float32(case):
    """For every algorithm of the registry: the gradient w.r.t. the float32 parameters is
    float32 and finite, the loss float32, within `RTOL` of the float32 gradient, and the
    methods agree with each other within `RTOL`. ONE compiled program per case."""
    loss, params, xs = problem(case)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(params, xs):
        oracle = jax.grad(loss)(params, xs.astype(jnp.float32), "autodiff")
        mixed = {name: jax.value_and_grad(loss)(params, xs, name) for name in ALGORITHMS}
        return oracle, mixed

    oracle, mixed = run(params, xs)
    for name, (value, gradient) in mixed.items():
        assert value.dtype == jnp.float32, name
        assert {leaf.dtype for leaf in jax.tree.leaves(gradient)} == {jnp.dtype(jnp.float32)}
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(gradient)), name
        assert_trees_close(gradient, oracle, rtol=RTOL)
        assert_trees_close(gradient, mixed["bptt"][1], rtol=RTOL)
    # Mixed precision is a real change of precision, not float32 under another name.
    assert max_relative_error(mixed["bptt"][1], oracle) > 1e-5


def test_a_stack_with_float32_initial_states_checkpointed_and_not():
    """Two layers (a GRU under an Elman layer) with float32 h0s: the states are bfloat16,
    the h0s' gradients float32; `BPTT(checkpoint=3)` (the fused, segmented loss, whose
    carries must keep one dtype) agrees with `BPTT()` and both with float32."""
    rng = np.random.default_rng(1)
    gru, elman = network("gru", 1).layers[0], network("elman", 2).layers[0]
    elman = elman._replace(W=_draw(rng, (D, D), 1 / np.sqrt(2 * D)))  # reads the GRU's D
    params = network("elman", 3)._replace(layers=(gru, elman))
    h0s = (_draw(rng, (M, D), 0.5), _draw(rng, (M, D), 0.5))
    xs = _draw(rng, (T, M, N)).astype(jnp.bfloat16)
    ys = jax.device_put(rng.integers(0, K, (T, M)))

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(params, xs, h0s):
        gradient = functools.partial(
            jax.grad(
                lambda p, h, xs, method: dj.sequence_loss(p, xs, ys, method=method, h0s=h),
                argnums=(0, 1),
            ),
            params,
            h0s,
        )
        return gradient(xs.astype(jnp.float32), "bptt"), [
            gradient(xs, method) for method in (dj.BPTT(), dj.BPTT(checkpoint=3))
        ]

    oracle, (plain, checkpointed) = run(params, xs, h0s)
    for gradient in (plain, checkpointed):
        assert {leaf.dtype for leaf in jax.tree.leaves(gradient)} == {jnp.dtype(jnp.float32)}
        assert_trees_close(gradient, oracle, rtol=RTOL)
    assert_trees_close(checkpointed, plain, rtol=RTOL)


def test_approximations_in_mixed_precision_stay_close_to_their_float32_values():
    """SnAp, UORO (a fixed key) and RFLO on an Elman layer, and SnAp on a GRU (whose
    structural pattern must not lose the entries that a saturated bfloat16 gate rounds
    to zero), against the same approximation in float32."""
    cases = [
        ("elman", dj.SnAp(n=1)),
        ("elman", dj.UORO(seed=0)),
        ("elman", dj.RFLO()),
        ("gru", dj.SnAp(n=1)),
    ]
    problems = [problem(cell, seed=3) for cell, _ in cases]

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(all_params, all_xs):
        results = []
        for (loss, _, _), (_, method), params, xs in zip(problems, cases, all_params, all_xs):
            reference = jax.grad(loss)(params, xs.astype(jnp.float32), method)
            results.append((reference, jax.grad(loss)(params, xs, method)))
        return results

    results = run([p for _, p, _ in problems], [xs for _, _, xs in problems])
    for (cell, method), (reference, mixed) in zip(cases, results):
        assert {leaf.dtype for leaf in jax.tree.leaves(mixed)} == {jnp.dtype(jnp.float32)}
        assert max_relative_error(mixed, reference) <= RTOL, (cell, method)


@pytest.mark.parametrize(
    "params_dtype, inputs_dtype, cell, method, seed",
    [
        # float64 is the other wide parameter dtype the mode takes.
        (jnp.float64, jnp.bfloat16, "lstm", "omega", 4),
        # float16 is the other 16-bit compute dtype: 11 significant bits (u = 2⁻¹¹), so
        # the same bound holds with room.
        (jnp.float32, jnp.float16, "gru", "bptt", 8),
    ],
    ids=["float64-params-bfloat16-inputs", "float32-params-float16-inputs"],
)
def test_the_other_wide_and_low_dtypes_take_the_same_path(
    params_dtype, inputs_dtype, cell, method, seed
):
    """The gradient comes back in the parameters' dtype, within `RTOL` of the gradient of
    the inputs upcast to it."""
    with jax.enable_x64(params_dtype == jnp.float64):
        params = network(cell, seed, np.dtype(params_dtype))
        xs = _draw(np.random.default_rng(seed + 1), (T, M, N)).astype(inputs_dtype)
        ys = jax.device_put(np.random.default_rng(seed + 2).integers(0, K, (T, M)))

        @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
        def run(params, xs):
            def gradient(xs):
                return jax.grad(lambda p: dj.sequence_loss(p, xs, ys, method=method))(params)

            return gradient(xs.astype(params_dtype)), gradient(xs)

        oracle, mixed = run(params, xs)
        assert {leaf.dtype for leaf in jax.tree.leaves(mixed)} == {jnp.dtype(params_dtype)}
        assert_trees_close(mixed, oracle, rtol=RTOL)


def test_other_mixes_of_dtypes_are_refused(x64):
    """Only wide parameters with 16-bit inputs are mixed precision; every other mix is a
    TypeError naming both dtypes and the mode that is taken. The diagnostics refuse the
    mode itself."""
    params32, params16 = network("elman"), network("gru", dtype=jnp.bfloat16)
    layer = params32.layers[0]
    f64 = _draw(np.random.default_rng(7), (T, M, N), dtype=np.float64)
    ys = jnp.zeros((T, M), jnp.int32)
    refused = [
        # float64 inputs with float32 parameters (a widening, not mixed precision)
        (lambda: dj.rnn_layer(layer, f64), r"xs has dtype float64 but params.W has dtype float32"),
        (
            lambda: dj.sequence_loss(params32, f64, ys),
            r"xs has dtype float64 but params.layers\[0\].W has dtype float32",
        ),
        # float32 inputs with bfloat16 parameters (the wrong way round)
        (
            lambda: dj.gru_layer(params16.layers[0], f64.astype(jnp.float32)),
            r"xs has dtype float32 but params.W has dtype bfloat16",
        ),
        # an initial state in neither the parameters' dtype nor the inputs'
        (
            lambda: dj.rnn_layer(layer, f64.astype(jnp.bfloat16), jnp.zeros((M, D), jnp.float64)),
            r"h0 has dtype float64 but params.W has dtype float32 and the inputs bfloat16",
        ),
        # the diagnostics, which inspect one dtype
        (
            lambda: dj.diagnostics.omega_norms(layer, f64.astype(jnp.bfloat16)),
            r"the diagnostics run in one dtype, got xs of dtype bfloat16",
        ),
    ]
    for call, message in refused:
        with pytest.raises(TypeError, match=message + r".*mixed precision"):
            call()
