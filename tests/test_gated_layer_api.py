"""The public GRU and LSTM layers take the Elman layer's API: `lengths=` and checked input.

* `gru_layer(..., lengths=)` / `lstm_layer(..., lengths=)` against each sequence run
  alone on its first L_v steps, and their gradients (`"omega"`, `"bptt"`) against
  `jax.grad` of a plain `lax.scan` of PyTorch's equations, written here, on the
  zero-padded inputs, while the library's padded inputs hold NaN;
* `lengths` is keyword-only and checked;
* every bad argument gives a ValueError or TypeError that names it;
* `jax.jit` and `jax.vmap` over parameter sets work with `lengths`.

Float64, rtol 1e-10; one jitted program per comparison.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close
from jax import lax

import dprnn_jax as dj

T, M, N, D = 5, 3, 3, 4
LENGTHS = (5, 2, 0)  # a full sequence, a short one, an empty one
RTOL = 1e-10
GATES = {"gru": 3, "lstm": 4}
PARAMS = {"gru": dj.GRUParams, "lstm": dj.LSTMParams}
LAYERS = {"gru": dj.gru_layer, "lstm": dj.lstm_layer}


def random_params(cell: str, seed: int = 0, *, as_numpy: bool = False):
    """Float64 NumPy draws (no eager JAX programs); NumPy arrays for the checks, which
    read only shapes and dtypes, so that building the bad inputs compiles nothing."""
    rng = np.random.default_rng(seed)
    g = GATES[cell]
    shapes = ((g * D, N), (g * D, D), (g * D,), (g * D,))
    convert = np.asarray if as_numpy else jnp.asarray
    return PARAMS[cell](*(convert(0.5 * rng.standard_normal(s)) for s in shapes))


def random_problem(cell: str, seed: int = 0):
    """(params, xs with NaN at every padded step, the same xs zero-padded, h0 / carry0,
    output weights (T, m, d)) in float64."""
    rng = np.random.default_rng(seed + 100)
    xs = rng.standard_normal((T, M, N))
    padded = np.arange(T)[:, None] >= np.array(LENGTHS)[None, :]
    nan_xs = np.where(padded[..., None], np.nan, xs)
    zero_xs = np.where(padded[..., None], 0.0, xs)
    state = (
        rng.standard_normal((M, D))
        if cell == "gru"
        else (rng.standard_normal((M, D)), rng.standard_normal((M, D)))
    )
    weights = rng.standard_normal((T, M, D))
    return (
        random_params(cell, seed),
        jnp.asarray(nan_xs),
        jnp.asarray(zero_xs),
        jax.tree.map(jnp.asarray, state),
        jnp.asarray(weights),
    )


# ---------------------------------------------------------------------------------------
# The reference: PyTorch's equations in a plain `lax.scan`, differentiated by JAX.


def reference_gru(params, xs, h0):
    """hs (T, m, d); gate order r, z, n."""
    W, S, b_ih, b_hh = params
    d = S.shape[1]

    def step(h, x):
        i = x @ W.T + b_ih
        u = h @ S.T + b_hh
        r = jax.nn.sigmoid(i[:, :d] + u[:, :d])
        z = jax.nn.sigmoid(i[:, d : 2 * d] + u[:, d : 2 * d])
        n = jnp.tanh(i[:, 2 * d :] + r * u[:, 2 * d :])
        h = (1 - z) * n + z * h
        return h, h

    return lax.scan(step, h0, xs)[1]


def reference_lstm(params, xs, carry0):
    """(hs, cs), each (T, m, d); gate order i, f, g, o."""
    W, S, b_ih, b_hh = params
    d = S.shape[1]

    def step(carry, x):
        h, c = carry
        a = x @ W.T + b_ih + h @ S.T + b_hh
        i = jax.nn.sigmoid(a[:, :d])
        f = jax.nn.sigmoid(a[:, d : 2 * d])
        g = jnp.tanh(a[:, 2 * d : 3 * d])
        o = jax.nn.sigmoid(a[:, 3 * d :])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), (h, c)

    return lax.scan(step, tuple(carry0), xs)[1]


REFERENCES = {"gru": reference_gru, "lstm": reference_lstm}


def first_steps(tree, v: int, L: int):
    """Sequence v's first L steps of every (T, m, ·) leaf, as a batch of one."""
    return jax.tree.map(lambda leaf: leaf[:L, v : v + 1], tree)


def sequence_state(state, v: int):
    """Sequence v's initial state (h0, or the pair (h0, c0)), as a batch of one."""
    return jax.tree.map(lambda leaf: leaf[v : v + 1], state)


def valid_loss(outputs, weights):
    """Σ over the valid steps t < L_v of the weighted outputs (h, or h and c)."""
    valid = (jnp.arange(T)[:, None] < jnp.array(LENGTHS)[None, :])[..., None]
    return sum(jnp.sum(jnp.where(valid, out * weights, 0)) for out in jax.tree.leaves(outputs))


# ---------------------------------------------------------------------------------------
# lengths= against each sequence alone, and the gradients against the reference


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("method", ["omega", "bptt"])
def test_lengths_match_each_sequence_alone_and_the_reference_gradient(x64, cell, method):
    params, nan_xs, zero_xs, state0, weights = random_problem(cell)
    layer, reference = LAYERS[cell], REFERENCES[cell]
    lengths = jnp.array(LENGTHS)

    def library_loss(params, xs, state0):
        return valid_loss(layer(params, xs, state0, lengths=lengths, method=method), weights)

    def reference_loss(params, xs, state0):
        return valid_loss(reference(params, xs, state0), weights)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def compare(params, nan_xs, zero_xs, state0):
        outputs = layer(params, nan_xs, state0, lengths=lengths, method=method)
        alone = [
            reference(params, first_steps(zero_xs, v, L), sequence_state(state0, v))
            for v, L in enumerate(LENGTHS)
            if L > 0
        ]
        gradients = jax.grad(library_loss, argnums=(0, 1, 2))(params, nan_xs, state0)
        expected = jax.grad(reference_loss, argnums=(0, 1, 2))(params, zero_xs, state0)
        return outputs, alone, gradients, expected

    outputs, alone, gradients, expected = compare(params, nan_xs, zero_xs, state0)

    # Every valid output is that of the sequence run alone on its first L_v steps; the
    # padded steps (NaN inputs) give finite states, from zero inputs.
    valid_outputs = [first_steps(outputs, v, L) for v, L in enumerate(LENGTHS) if L > 0]
    assert_trees_close(valid_outputs, alone, rtol=RTOL)
    assert all(bool(jnp.isfinite(out).all()) for out in jax.tree.leaves(outputs))
    # No NaN reaches a gradient; the padded inputs get exactly none.
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(gradients))
    padded = np.arange(T)[:, None] >= np.array(LENGTHS)[None, :]
    assert not np.asarray(gradients[1])[padded].any()
    assert_trees_close(gradients, expected, rtol=RTOL)


# ---------------------------------------------------------------------------------------
# lengths: keyword-only and checked


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_lengths_is_keyword_only_and_checked(x64, cell):
    layer = LAYERS[cell]
    params = random_params(cell, as_numpy=True)
    xs = np.zeros((T, M, N))
    with pytest.raises(TypeError, match="positional"):
        layer(params, xs, None, np.array(LENGTHS))
    with pytest.raises(ValueError, match=r"lengths must have shape \(m,\).*= \(3,\), got \(2,\)"):
        layer(params, xs, lengths=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"lengths must have rank 1"):
        layer(params, xs, lengths=np.ones((M, 1), int))
    with pytest.raises(TypeError, match=r"lengths must be integers, got dtype float64"):
        layer(params, xs, lengths=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match=r"lengths must be an array"):
        layer(params, xs, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 5\].*6"):
        layer(params, xs, lengths=np.array([1, 6, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\].*-1"):
        layer(params, xs, lengths=np.array([1, -1, 3]))


# ---------------------------------------------------------------------------------------
# Every bad argument is named


def _bad_inputs(cell: str):
    """(arguments, exception, pattern) of every bad call."""
    params = random_params(cell, as_numpy=True)
    g = GATES[cell]
    xs = np.zeros((T, M, N))
    other = "lstm" if cell == "gru" else "gru"
    cases = [
        # params
        (
            (random_params(other, as_numpy=True), xs),
            TypeError,
            rf"params must be a {PARAMS[cell].__name__}",
        ),
        ((dj.LayerParams(params.W, params.S, params.b_ih), xs), TypeError, "params must be a"),
        ((params._replace(W=params.W[:-1]), xs), ValueError, rf"params\.W has {g * D - 1} rows"),
        ((params._replace(W=params.W[0]), xs), ValueError, r"params\.W must have rank 2"),
        ((params._replace(S=params.S[:, :-1]), xs), ValueError, r"params\.S must have shape"),
        ((params._replace(b_hh=params.b_hh[1:]), xs), ValueError, r"params\.b_hh must have"),
        (
            (params._replace(b_ih=params.b_ih.astype(np.float32)), xs),
            TypeError,
            r"params\.b_ih has dtype float32 but params\.W has dtype float64",
        ),
        (
            (params._replace(W=params.W.astype(np.int32)), xs),
            TypeError,
            r"params\.W must have a floating dtype",
        ),
        # xs
        ((params, np.zeros((T, M, N + 1))), ValueError, r"xs has 4 features .*params\.W"),
        ((params, np.zeros((T, M))), ValueError, r"xs must have rank 3 .*got shape \(5, 3\)"),
        ((params, np.zeros((T, 1, M, N))), ValueError, r"xs must have rank 3"),
        ((params, np.zeros((0, M, N))), ValueError, r"xs must have at least one time step"),
        ((params, np.zeros((0, M), int)), ValueError, r"xs must have at least one time step"),
        ((params, np.zeros((T, M, N), int)), TypeError, r"xs must have a floating dtype"),
        ((params, np.zeros((T, M, N), bool)), TypeError, r"xs must have a floating dtype"),
        (
            (params, np.zeros((T, M, N), np.float32)),
            TypeError,
            r"xs has dtype float32 but params\.W has dtype float64",
        ),
        ((params, [[[0.0] * N] * M] * T), TypeError, r"xs must be an array"),
    ]
    if cell == "gru":
        cases += [
            ((params, xs, np.zeros((M + 1, D))), ValueError, r"h0 must have shape .*\(3, 4\)"),
            ((params, xs, np.zeros((D,))), ValueError, r"h0 must have rank 2"),
            ((params, xs, np.zeros((M, D), np.float32)), TypeError, r"h0 has dtype float32"),
            ((params, xs, (np.zeros((M, D)),) * 2), TypeError, r"h0 must be an array"),
        ]
    else:
        zeros = np.zeros((M, D))
        cases += [
            ((params, xs, zeros), ValueError, r"carry0 must be the pair \(h0, c0\)"),
            ((params, xs, (zeros,) * 3), ValueError, r"carry0 must be the pair \(h0, c0\)"),
            ((params, xs, (zeros, zeros[1:])), ValueError, r"carry0\[1\] must have shape"),
            ((params, xs, (zeros[0], zeros)), ValueError, r"carry0\[0\] must have rank 2"),
            (
                (params, xs, (zeros, zeros.astype(np.float32))),
                TypeError,
                r"carry0\[1\] has dtype float32 but params\.W",
            ),
        ]
    return cases


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bad_inputs_are_named(x64, cell):
    layer = LAYERS[cell]
    for args, error, pattern in _bad_inputs(cell):
        with pytest.raises(error, match=pattern):
            layer(*args)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_checks_run_under_jit_and_vmap(x64, cell):
    """The checks read shapes and dtypes only, so they raise at trace time under `jit`
    and see one member's shapes under `vmap`."""
    layer = LAYERS[cell]
    params = random_params(cell)
    with pytest.raises(ValueError, match=r"xs has 4 features"):
        jax.jit(lambda xs: layer(params, xs))(jnp.zeros((T, M, N + 1)))
    with pytest.raises(ValueError, match=r"lengths must have shape"):
        jax.jit(lambda lengths: layer(params, jnp.zeros((T, M, N)), lengths=lengths))(
            jnp.zeros((M + 1,), int)
        )
    with pytest.raises(ValueError, match=r"xs must have rank 3"):
        jax.vmap(lambda xs: layer(params, xs))(jnp.zeros((2, T, M)))
    # Traced lengths are not range-checked: out-of-range values cannot be caught there.
    jax.eval_shape(
        jax.jit(lambda lengths: layer(params, jnp.zeros((T, M, N)), lengths=lengths)),
        jnp.array([T + 1, 0, -1]),
    )


# ---------------------------------------------------------------------------------------
# jit and vmap over parameter sets, with lengths


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_vmap_over_parameter_sets_with_lengths(x64, cell):
    layer = LAYERS[cell]
    members = [random_params(cell, seed) for seed in (1, 2)]
    batch = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    _, nan_xs, _, state0, weights = random_problem(cell)
    lengths = jnp.array(LENGTHS)

    def loss(params, xs, lengths):
        return valid_loss(layer(params, xs, state0, lengths=lengths, method="omega"), weights)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def compare(batch, members, xs, lengths):
        # Lengths traced (a jit argument), the parameter sets batched.
        vmapped = jax.vmap(jax.value_and_grad(loss), in_axes=(0, None, None))(batch, xs, lengths)
        one_by_one = [jax.value_and_grad(loss)(member, xs, lengths) for member in members]
        return vmapped, one_by_one

    vmapped, one_by_one = compare(batch, members, nan_xs, lengths)
    expected = jax.tree.map(lambda *leaves: jnp.stack(leaves), *one_by_one)
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(vmapped))
    assert_trees_close(vmapped, expected, rtol=RTOL)
