"""Test helpers: tolerances, a tree comparison with explicit tolerances, and the oracle.

The oracle is a plain `lax.scan` Elman network written here, independently of the
library, and differentiated with `jax.grad` (DESIGN.md §5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import dprnn_jax as dj

# DESIGN.md §5: max relative error of every gradient against jax.grad.
RTOL = {jnp.dtype("float32"): 1e-4, jnp.dtype("float64"): 1e-10}

SIGMAS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}


def max_relative_error(actual, expected) -> float:
    """Largest, over leaves, of max|actual − expected| / max|expected| (normwise, per leaf)."""
    worst = 0.0
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        assert a.shape == e.shape, (a.shape, e.shape)
        scale = np.max(np.abs(e)) if e.size else 0.0
        error = np.max(np.abs(a - e)) if e.size else 0.0
        worst = max(worst, error / scale if scale > 0 else error)
    return float(worst)


def assert_trees_close(actual, expected, *, rtol: float) -> None:
    """Asserts equal tree structure and max relative error ≤ rtol (no default on purpose)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    error = max_relative_error(actual, expected)
    assert error <= rtol, f"max relative error {error:.3e} exceeds {rtol:.0e}"


def reference_layer(W, S, b, xs, h0, activation):
    """h_t = σ(x_t Wᵀ + h_{t-1} Sᵀ + b) with a plain lax.scan."""
    sigma = SIGMAS[activation]

    def step(h, x):
        h = sigma(x @ W.T + h @ S.T + b)
        return h, h

    return lax.scan(step, h0, xs)[1]


def reference_loss(params, xs, targets, mask=None, h0s=None, *, loss, activation):
    """The model and cost of DESIGN.md §1, written out by hand."""
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


# ---------------------------------------------------------------------------------------
# Shared problems: the gradient grid's random networks, and bidirectional stacks with the
# oracle that runs every sequence alone. Test modules import these, never each other.

GRID_HIDDEN = {1: (4,), 2: (4, 3), 3: (4, 3, 5)}
GRID_INPUTS, GRID_CLASSES = 3, 4
BI_T, BI_M, BI_N, BI_K = 6, 3, 2, 3


def make_problem(key, T, m, n_layers, dtype, *, loss="softmax_cross_entropy"):
    """Random params, inputs, targets, a ragged mask and random initial states."""
    k_params, k_x, k_y, k_len, k_h = jax.random.split(key, 5)
    params = dj.init_rnn(k_params, GRID_INPUTS, GRID_HIDDEN[n_layers], GRID_CLASSES, dtype=dtype)
    # Random (not orthogonal) S and non-zero biases exercise every term of the gradient.
    leaves, treedef = jax.tree.flatten(params)
    noise_keys = jax.random.split(k_params, len(leaves))
    params = treedef.unflatten(
        [p + 0.3 * jax.random.normal(k, p.shape, dtype) for p, k in zip(leaves, noise_keys)]
    )
    xs = jax.random.normal(k_x, (T, m, GRID_INPUTS), dtype)
    if loss == "softmax_cross_entropy":
        targets = jax.random.randint(k_y, (T, m), 0, GRID_CLASSES)
    elif loss == "sigmoid_binary_cross_entropy":
        targets = jax.random.uniform(k_y, (T, m, GRID_CLASSES), dtype)
    else:
        targets = jax.random.normal(k_y, (T, m, GRID_CLASSES), dtype)
    lengths = jax.random.randint(k_len, (m,), 1, T + 1)
    mask = (jnp.arange(T)[:, None] < lengths[None, :]).astype(dtype)
    h0s = [
        0.5 * jax.random.normal(k, (m, d), dtype)
        for k, d in zip(jax.random.split(k_h, n_layers), GRID_HIDDEN[n_layers])
    ]
    return params, xs, targets, mask, h0s


def library_loss(params, xs, targets, mask, h0s, *, loss, activation, method):
    outputs = dj.rnn_apply(params, xs, h0s, activation=activation, method=method)
    return dj.per_step_losses(outputs, targets, mask=mask, loss=loss).sum() / xs.shape[1]


def alone_states(params, x, activation):
    """Per-layer outputs of ONE unpadded sequence x (L, 1, n), plain scans."""
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
    """(1/m) Σ_v Σ_{t < L_v} CE, each sequence v run alone on xs[:L_v, v]."""
    total = 0.0
    for v, length in enumerate(lengths):
        hs, _ = alone_states(params, xs[:length, v : v + 1], activation)
        logits = hs @ params.readout.W.T + params.readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(
            logits, targets[:length, v : v + 1]
        ).sum()
    return total / len(lengths)


def make_bidirectional_params(kinds, dtype, seed=0):
    """A stack with `kinds` ("bi"/"uni") layers of 3 units per direction."""
    keys = jax.random.split(jax.random.key(seed), len(kinds) + 1)
    layers, n = [], BI_N
    for kind, k in zip(kinds, keys[:-1]):
        if kind == "bi":
            layers.append(dj.init_bidirectional_layer(k, n, 3, dtype=dtype))
            n = 6
        else:
            layers.append(dj.init_layer(k, n, 3, dtype=dtype))
            n = 3
    leaves, treedef = jax.tree.flatten(layers)
    noise = jax.random.split(keys[-1], len(leaves))
    layers = treedef.unflatten(
        [p + 0.3 * jax.random.normal(k, p.shape, dtype) for p, k in zip(leaves, noise)]
    )
    readout = dj.ReadoutParams(
        jax.random.normal(keys[-1], (BI_K, n), dtype), jnp.zeros(BI_K, dtype)
    )
    return dj.RNNParams(tuple(layers), readout)


def make_bidirectional_data(dtype):
    k_x, k_y = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(k_x, (BI_T, BI_M, BI_N), dtype)
    targets = jax.random.randint(k_y, (BI_T, BI_M), 0, BI_K)
    return xs, targets
