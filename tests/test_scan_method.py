"""Methods "scan" (Ω by doubling, `lax.associative_scan`) and "rtrl" (forward
sensitivities) of `rnn_layer`, against jax.grad of a plain lax.scan (DESIGN.md §5).

A representative sub-grid of test_gradients.py (which keeps its own method list, so
that its run time stays as it is): sigmoid, 2 layers, T = 9 by default; tanh with 1
layer and T = 1, relu with 3 layers and T = 5 under the `slow` marker; ragged and full
masks under vmap, float32 and float64; gradients w.r.t. params, xs and every h0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, library_loss, make_problem, max_relative_error, reference_loss

import dprnn_jax as dj

METHODS = ("scan", "rtrl")


@functools.partial(jax.jit, static_argnames=("activation",))
def gradients(params, xs, targets, masks, h0s, *, activation):
    def for_mask(mask):
        options = dict(loss="softmax_cross_entropy", activation=activation)
        grads = {
            method: jax.grad(library_loss, (0, 1, 4))(
                params, xs, targets, mask, h0s, method=method, **options
            )
            for method in METHODS
        }
        grads["oracle"] = jax.grad(reference_loss, (0, 1, 4))(
            params, xs, targets, mask, h0s, **options
        )
        return grads

    return jax.vmap(for_mask)(masks)


@pytest.mark.parametrize(
    "activation, n_layers, T, m",
    [
        ("sigmoid", 2, 9, 3),
        pytest.param("tanh", 1, 1, 1, marks=pytest.mark.slow),
        pytest.param("relu", 3, 5, 5, marks=pytest.mark.slow),
    ],
)
def test_scan_and_rtrl_match_jax_grad(activation, n_layers, T, m, dtype):
    params, xs, targets, ragged_mask, h0s = make_problem(
        jax.random.key(T * 100 + m), T, m, n_layers, dtype
    )
    masks = jnp.stack([jnp.ones_like(ragged_mask), ragged_mask])
    grads = gradients(params, xs, targets, masks, h0s, activation=activation)
    errors = {method: max_relative_error(grads[method], grads["oracle"]) for method in METHODS}
    rtol = RTOL[jnp.dtype(dtype)]
    assert all(error <= rtol for error in errors.values()), f"rtol {rtol:.0e}: {errors}"


@pytest.mark.parametrize("T", [1, 13])
def test_scan_composes_every_step_once_per_level(T):
    """The product counter: a prefix scan of T maps needs between T−1 and 2T compositions."""
    flow = dj.ParallelScan().count_products(T)
    compositions = int(flow.products_useful) // 2  # d + 1 = 2 units per composition
    assert T - 1 <= compositions <= 2 * T
