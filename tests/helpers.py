"""Shared test helpers: tolerances, a tree comparison with explicit tolerances, the
algorithms under test, the problem builders and the oracles.

* The algorithms come from the library's registry (`dprnn_jax.backward.ALGORITHMS`), so
  a new algorithm is tested against the oracle without editing any test.
* The builders draw their random numbers with NumPy, not `jax.random`: every eager JAX
  operation compiles a small program for each new shape (about 0.1 s on a CPU), which
  made building the problems of the gradient grid cost more than checking them.
* The oracles are a plain `lax.scan` Elman network written here, independently of the
  library, differentiated with `jax.grad`; `alone_loss` runs every sequence of a padded
  batch on its own.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import dprnn_jax as dj

# Max relative error (normwise, per leaf) of every gradient against the oracle.
RTOL = {jnp.dtype("float32"): 1e-4, jnp.dtype("float64"): 1e-10}

SIGMAS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}

# The algorithms under test, by name, from the library's one registry; the custom rules
# are all but "autodiff" (`jax.grad` through the library's plain `lax.scan`).
ALGORITHMS = dj.backward.ALGORITHMS
CUSTOM_METHODS = tuple(name for name, cls in ALGORITHMS.items() if cls.uses_custom_vjp)


def method_forms(name: str) -> tuple[str | dj.backward.GradientAlgorithm, ...]:
    """The two spellings of `method=` for a registered algorithm: its name and its object."""
    return name, ALGORITHMS[name]()


def _compile_options_if_known(options: dict[str, object]) -> dict[str, object]:
    """`options` where XLA on this backend, a CPU, knows them, else {}."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # an older or newer XLA without these options: compile as usual
        return {}
    return options


# XLA:CPU's other code generation: the legacy elemental emitters at LLVM -O0.
LEGACY_COMPILE = _compile_options_if_known(
    {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
)

# XLA options for the large comparison programs of the tests, or {} where unknown.
#
# Those programs are compiled once and run for milliseconds, so nearly all their cost is
# XLA optimising machine code: on a CPU, the legacy elemental emitters at LLVM -O0
# compile them four to five times faster. They change how XLA emits code, not which
# operations it computes (results agree to rounding, within every tolerance here). A
# test run sets the same options for every program through XLA_FLAGS (conftest.py);
# these per-program ones keep the large programs cheap where it could not (a JAX that
# started before the run configured it), and are off where the run asks for XLA's
# defaults (DPRNN_JAX_TEST_XLA_DEFAULTS=1).
CHEAP_COMPILE = {} if os.environ.get("DPRNN_JAX_TEST_XLA_DEFAULTS") else LEGACY_COMPILE


# XLA options that give a program the default CPU pipeline, the one users' programs get,
# whatever `XLA_FLAGS` this run set (per-program options override the flags); {} off the
# CPU or where XLA does not know them: XLA's defaults of the two flags that conftest.py
# turns off for speed. That they are the defaults is checked by test_default_compiler.py
# against a process without flags.
DEFAULT_COMPILE = _compile_options_if_known(
    {"xla_cpu_use_fusion_emitters": True, "xla_backend_optimization_level": 3}
)


# ---------------------------------------------------------------------------------------
# Comparisons


def max_relative_error(actual, expected) -> float:
    """Largest, over leaves, of max|actual − expected| / max|expected| (normwise, per leaf).

    A leaf whose expected values are all zero contributes its absolute error.
    """
    return max((error for _, error in _leaf_errors(actual, expected)), default=0.0)


def _leaf_errors(actual, expected):
    """(path, normwise relative error) for every leaf, in tree order."""
    actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
    expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
    assert actual_tree == expected_tree, f"tree structures differ: {actual_tree} vs {expected_tree}"
    for (path, a), (_, e) in zip(actual_leaves, expected_leaves, strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert a.shape == e.shape, f"{jax.tree_util.keystr(path)}: shape {a.shape} vs {e.shape}"
        scale = np.max(np.abs(e)) if e.size else 0.0
        error = np.max(np.abs(a - e)) if e.size else 0.0
        yield jax.tree_util.keystr(path), float(error / scale if scale > 0 else error)


def assert_trees_close(actual, expected, *, rtol: float, atol: float = 0.0) -> None:
    """Asserts the same tree structure and, for every leaf, max|a − e| ≤ atol + rtol·max|e|
    (normwise; a leaf whose expected values are all zero is held to atol + rtol).

    `rtol` has no default on purpose: tight for float64 (1e-10 for gradients), looser for
    float32 (1e-4). Use it for any two values computed by two different programs (jit and
    eager, vmapped and not, one method and another), which XLA may sum in another order;
    bitwise equality is only for claims about the same program. NaNs never compare close.
    """
    actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
    expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
    assert actual_tree == expected_tree, f"tree structures differ: {actual_tree} vs {expected_tree}"
    failures = []
    for (path, a), (_, e) in zip(actual_leaves, expected_leaves, strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        name = jax.tree_util.keystr(path) or "value"
        assert a.shape == e.shape, f"{name}: shape {a.shape} vs {e.shape}"
        if not a.size:
            continue
        error, scale = np.max(np.abs(a - e)), np.max(np.abs(e))
        if not error <= atol + rtol * (scale if scale > 0 else 1.0):
            failures.append(f"{name}: max|error| {error:.3e}, max|expected| {scale:.3e}")
    assert not failures, f"not close with rtol={rtol:.0e}, atol={atol:.0e}:\n" + "\n".join(failures)


def loss_gradients(loss_fn, methods, params, xs, h0s, tokens):
    """`(loss, gradient)` of `loss_fn(params, xs, h0s, method)` for each method, w.r.t.
    params, xs (unless integer `tokens`) and h0s: ONE compiled program for all."""
    argnums = (0, 2) if tokens else (0, 1, 2)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(params, xs, h0s):
        return [
            jax.value_and_grad(lambda p, x, h, m=m: loss_fn(p, x, h, m), argnums)(params, xs, h0s)
            for m in methods
        ]

    return run(params, xs, h0s)


def gradient_temporaries(params, xs, ys, method) -> int:
    """XLA's temporary bytes of the compiled gradient of `sequence_loss` under `method`
    (its memory, not its arguments or result)."""

    def loss(p):
        return dj.sequence_loss(p, xs, ys, method=method)

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


# ---------------------------------------------------------------------------------------
# Builders

# The gradient problems: n inputs, k classes, hidden sizes by depth (unequal, so that a
# transposed weight cannot pass).
N_INPUTS, N_CLASSES = 3, 4
HIDDEN = {1: (4,), 2: (4, 3), 3: (4, 3, 5)}


class Problem(NamedTuple):
    """A random network, a batch and its targets, a ragged mask and initial states."""

    params: dj.RNNParams
    xs: jax.Array
    targets: jax.Array
    mask: jax.Array
    h0s: tuple[jax.Array, ...]


def _rng(seed) -> np.random.Generator:
    """A NumPy generator from an int, or from a JAX key (its raw bits)."""
    if isinstance(seed, jax.Array):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            seed = jax.random.key_data(seed)
        seed = np.asarray(seed).ravel().tolist()
    return np.random.default_rng(seed)


def _array(values: np.ndarray, dtype) -> jax.Array:
    """A device array of `dtype` made on the host: `device_put` compiles nothing, where
    `jnp.asarray` compiles a conversion for every new shape."""
    return jax.device_put(np.asarray(values).astype(jnp.dtype(dtype)))


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_layer(seed, n: int, d: int, dtype, *, noise: float = 0.3) -> dj.LayerParams:
    """`LayerParams` distributed as `init_layer`'s plus `noise`·N(0, 1) on every entry, so
    that S is not orthogonal and the bias is not zero: every term of the gradient counts.

    `seed` is an int or a NumPy generator (drawn from, for the builders below).
    """
    rng = _rng(seed)
    W = rng.standard_normal((d, n)) / np.sqrt(n) + noise * rng.standard_normal((d, n))
    S = _orthogonal(rng, d) + noise * rng.standard_normal((d, d))
    b = noise * rng.standard_normal(d)
    return dj.LayerParams(_array(W, dtype), _array(S, dtype), _array(b, dtype))


def random_readout(seed, d: int, k: int, dtype, *, noise: float = 0.3) -> dj.ReadoutParams:
    """`ReadoutParams` (k, d), drawn as by `random_layer`."""
    rng = _rng(seed)
    W = rng.standard_normal((k, d)) / np.sqrt(d) + noise * rng.standard_normal((k, d))
    return dj.ReadoutParams(_array(W, dtype), _array(noise * rng.standard_normal(k), dtype))


def random_rnn(seed, n_inputs: int, hidden: Sequence[int], n_outputs: int, dtype):
    """`RNNParams` of unidirectional layers `hidden`, drawn as by `random_layer`."""
    rng = _rng(seed)
    sizes = (n_inputs, *hidden)
    layers = tuple(random_layer(rng, n, d, dtype) for n, d in zip(sizes[:-1], sizes[1:]))
    return dj.RNNParams(layers, random_readout(rng, sizes[-1], n_outputs, dtype))


def random_stack(seed, kinds: Sequence[str], n_inputs: int, hidden: int, n_outputs: int, dtype):
    """`RNNParams` with one layer per entry of `kinds`: "bi" (bidirectional, `hidden`
    units per direction) or "uni" (`hidden` units)."""
    rng = _rng(seed)
    layers, n = [], n_inputs
    for kind in kinds:
        if kind == "bi":
            pair = [random_layer(rng, n, hidden, dtype) for _ in range(2)]
            layers.append(dj.BidirectionalParams(*pair))
            n = 2 * hidden
        else:
            layers.append(random_layer(rng, n, hidden, dtype))
            n = hidden
    return dj.RNNParams(tuple(layers), random_readout(rng, n, n_outputs, dtype))


def random_inputs(seed, shape: Sequence[int], dtype) -> jax.Array:
    """Standard normal inputs of `shape`."""
    return _array(_rng(seed).standard_normal(tuple(shape)), dtype)


def random_targets(seed, T: int, m: int, k: int, dtype, *, loss: str = "softmax_cross_entropy"):
    """Targets for `loss`: class indices (T, m), or values (T, m, k) in [0, 1] for
    sigmoid cross-entropy, or normal values for mse."""
    rng = _rng(seed)
    if loss == "softmax_cross_entropy":
        return _array(rng.integers(0, k, (T, m)), jnp.int32)
    if loss == "sigmoid_binary_cross_entropy":
        return _array(rng.uniform(size=(T, m, k)), dtype)
    return _array(rng.standard_normal((T, m, k)), dtype)


def length_mask(lengths: Sequence[int], T: int, dtype) -> jax.Array:
    """(T, m) mask, 1 at the steps t < lengths[v] of each sequence v."""
    return _array(np.arange(T)[:, None] < np.asarray(lengths)[None, :], dtype)


def make_problem(
    seed,
    T: int,
    m: int,
    n_layers: int,
    dtype,
    *,
    loss: str = "softmax_cross_entropy",
    lengths: Sequence[int] | None = None,
) -> Problem:
    """A `Problem` with `n_layers` layers of sizes `HIDDEN[n_layers]`.

    The mask is ragged: sequence v is valid for `lengths[v]` steps, random in [1, T] if
    not given. The initial states are random, so that their gradients are checked too.
    """
    rng = _rng(seed)
    params = random_rnn(rng, N_INPUTS, HIDDEN[n_layers], N_CLASSES, dtype)
    xs = random_inputs(rng, (T, m, N_INPUTS), dtype)
    targets = random_targets(rng, T, m, N_CLASSES, dtype, loss=loss)
    if lengths is None:
        lengths = rng.integers(1, T + 1, m)
    h0s = tuple(_array(0.5 * rng.standard_normal((m, d)), dtype) for d in HIDDEN[n_layers])
    return Problem(params, xs, targets, length_mask(lengths, T, dtype), h0s)


def no_mask_and(mask: jax.Array) -> jax.Array:
    """(2, T, m): all ones, then `mask`; a test vmaps over it to check both at once."""
    return jnp.stack([jnp.ones_like(mask), mask])


# ---------------------------------------------------------------------------------------
# The library's loss and the oracles


def library_loss(params, xs, targets, mask, h0s, *, loss, activation, method, **options):
    """The library's network and cost, in the form of `reference_loss`."""
    outputs = dj.rnn_apply(params, xs, h0s, activation=activation, method=method, **options)
    return dj.per_step_losses(outputs, targets, mask=mask, loss=loss).sum() / xs.shape[1]


def sigmoid(x):
    """1 / (1 + e^(−x)), written out rather than jax.nn's."""
    return 1 / (1 + jnp.exp(-x))


def gru_equations(layer, h, x):
    """One step of PyTorch's GRU, written out: gates [r; z; n] in the rows of W and S."""
    W, S, b_ih, b_hh = layer
    a_r, a_z, a_n = jnp.split(x @ W.T + b_ih, 3, axis=-1)
    s_r, s_z, s_n = jnp.split(h @ S.T + b_hh, 3, axis=-1)
    r, z = sigmoid(a_r + s_r), sigmoid(a_z + s_z)
    return (1 - z) * jnp.tanh(a_n + r * s_n) + z * h


def lstm_equations(layer, carry, x):
    """One step of PyTorch's LSTM, written out: gates [i; f; g; o], carry (h, c)."""
    W, S, b_ih, b_hh = layer
    h, c = carry
    i, f, g, o = jnp.split(x @ W.T + b_ih + h @ S.T + b_hh, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
    return sigmoid(o) * jnp.tanh(c), c


def reference_layer(W, S, b, xs, h0, activation):
    """h_t = σ(x_t Wᵀ + h_{t-1} Sᵀ + b) with a plain lax.scan."""
    sigma = SIGMAS[activation]

    def step(h, x):
        h = sigma(x @ W.T + h @ S.T + b)
        return h, h

    return lax.scan(step, h0, xs)[1]


def reference_loss(params, xs, targets, mask=None, h0s=None, *, loss, activation):
    """The model and cost of docs/theory.md, written out by hand."""
    hs = xs
    h0s = h0s if h0s is not None else [None] * len(params.layers)
    for layer, h0 in zip(params.layers, h0s, strict=True):
        if h0 is None:
            h0 = jnp.zeros((xs.shape[1], layer.S.shape[0]), xs.dtype)
        hs = reference_layer(layer.W, layer.S, layer.b, hs, h0, activation)
    outputs = hs @ params.readout.W.T + params.readout.b
    if loss == "softmax_cross_entropy":
        losses = optax.softmax_cross_entropy_with_integer_labels(outputs, targets)
    elif loss == "sigmoid_binary_cross_entropy":
        losses = optax.sigmoid_binary_cross_entropy(outputs, targets).sum(-1)
    else:
        losses = 0.5 * ((outputs - targets) ** 2).sum(-1)
    if mask is not None:
        losses = losses * mask
    return losses.sum() / xs.shape[1]


def alone_states(params, x, activation):
    """Per-layer outputs and final states of ONE unpadded sequence x (L, 1, n), by plain
    scans; a bidirectional layer runs its backward direction on the flipped sequence."""
    hs, finals = x, []
    for layer in params.layers:
        if isinstance(layer, dj.BidirectionalParams):
            run = [
                reference_layer(*p, h, jnp.zeros((1, p.S.shape[0]), x.dtype), activation)
                for p, h in ((layer.forward, hs), (layer.backward, hs[::-1]))
            ]
            hs = jnp.concatenate([run[0], run[1][::-1]], axis=-1)
            finals.append(jnp.concatenate([run[0][-1], run[1][-1]], axis=-1))
        else:
            zeros = jnp.zeros((1, layer.S.shape[0]), x.dtype)
            hs = reference_layer(layer.W, layer.S, layer.b, hs, zeros, activation)
            finals.append(hs[-1])
    return hs, finals


def alone_loss(params, xs, targets, lengths, *, activation="tanh"):
    """(1/m) Σ_v Σ_{t < L_v} CE, each sequence v run alone on xs[:L_v, v] (lengths static)."""
    total = 0.0
    for v, length in enumerate(lengths):
        hs, _ = alone_states(params, xs[:length, v : v + 1], activation)
        logits = hs @ params.readout.W.T + params.readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(
            logits, targets[:length, v : v + 1]
        ).sum()
    return total / len(lengths)
