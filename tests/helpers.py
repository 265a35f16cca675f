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
