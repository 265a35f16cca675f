"""Every gradient method against jax.grad of a plain lax.scan (DESIGN.md §5).

Grid: method × activation × {1, 2, 3} layers × T ∈ {1, 2, 3, 17} × m ∈ {1, 5} × with and
without mask × {float32, float64}; gradients w.r.t. params, xs and every h0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import RTOL, library_loss, make_problem, max_relative_error, reference_loss

METHODS = ["omega", "bptt", "naive", "autodiff"]
ACTIVATIONS = ["tanh", "sigmoid", "relu"]
HIDDEN = {1: (4,), 2: (4, 3), 3: (4, 3, 5)}
N_INPUTS, N_CLASSES = 3, 4


@functools.partial(jax.jit, static_argnames=("loss", "activation"))
def all_gradients(params, xs, targets, masks, h0s, *, loss, activation):
    """Gradients w.r.t. (params, xs, h0s) of every method and of the oracle.

    Vmapped over `masks` (all-ones and ragged), so one compiled program covers both
    and every custom rule is also exercised under `vmap`.
    """

    def for_mask(mask):
        grads = {
            method: jax.grad(library_loss, (0, 1, 4))(
                params, xs, targets, mask, h0s, loss=loss, activation=activation, method=method
            )
            for method in METHODS
        }
        grads["oracle"] = jax.grad(reference_loss, (0, 1, 4))(
            params, xs, targets, mask, h0s, loss=loss, activation=activation
        )
        return grads

    return jax.vmap(for_mask)(masks)


def assert_every_method_matches_oracle(grads, dtype):
    errors = {method: max_relative_error(grads[method], grads["oracle"]) for method in METHODS}
    rtol = RTOL[jnp.dtype(dtype)]
    assert all(error <= rtol for error in errors.values()), f"rtol {rtol:.0e}: {errors}"


@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("T", [1, 2, 3, 17])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_method_matches_jax_grad(activation, n_layers, T, m, dtype):
    params, xs, targets, ragged_mask, h0s = make_problem(
        jax.random.key(T * 100 + m), T, m, n_layers, dtype
    )
    masks = jnp.stack([jnp.ones_like(ragged_mask), ragged_mask])
    grads = all_gradients(
        params, xs, targets, masks, h0s, loss="softmax_cross_entropy", activation=activation
    )
    assert_every_method_matches_oracle(grads, dtype)


@pytest.mark.parametrize("loss", ["sigmoid_binary_cross_entropy", "mse"])
def test_other_losses_match_jax_grad(loss, dtype):
    params, xs, targets, ragged_mask, h0s = make_problem(
        jax.random.key(7), 9, 3, 2, dtype, loss=loss
    )
    masks = jnp.stack([jnp.ones_like(ragged_mask), ragged_mask])
    grads = all_gradients(params, xs, targets, masks, h0s, loss=loss, activation="tanh")
    assert_every_method_matches_oracle(grads, dtype)
