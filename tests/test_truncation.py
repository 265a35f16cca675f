"""`truncation=K`: exact K-step truncated BPTT (DESIGN.md §4–§5).

Definition pinned here (per layer): the loss at step t back-propagates through
Z_t, …, Z_{t−K} of each layer, i.e. the gradient is the exact gradient of a model in
which every layer's h_t is recomputed from `stop_gradient(h_{t−K−1})` over the inputs
x_{t−K..t}; when t−K−1 < 0 the window is clamped at the sequence start and begins at
h0 itself, which stays differentiable (h0 is an input of the layer, not a state it
computed). In a stack each layer applies this to the cotangent it receives, so the
inputs of a layer (the layer below's recomputed outputs) keep their gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import RTOL, SIGMAS, max_relative_error, reference_layer
from jax import lax

import dprnn_jax as dj

HIDDEN = (4, 3)
N_INPUTS, N_CLASSES, T, M = 3, 4, 7, 3


def truncated_reference_layer(W, S, b, xs, h0, activation, K):
    """Every h_t recomputed over K+1 steps from stop_gradient(h_{t−K−1}) (or from h0)."""
    sigma = SIGMAS[activation]
    hs = reference_layer(W, S, b, xs, h0, activation)
    t = jnp.arange(xs.shape[0])
    has_past = (t - K - 1 >= 0)[:, None, None]
    before = jnp.where(has_past, lax.stop_gradient(hs[jnp.clip(t - K - 1, 0)]), h0[None])

    def step(h, r):
        s = t - K + r  # the step recomputed for every t at once; s < 0: before the start
        new = sigma(xs[jnp.clip(s, 0)] @ W.T + h @ S.T + b)
        return jnp.where((s >= 0)[:, None, None], new, h), None

    return lax.scan(step, before, jnp.arange(K + 1))[0]


def truncated_reference_loss(params, xs, targets, mask, h0s, *, activation, K):
    hs = xs
    for layer, h0 in zip(params.layers, h0s, strict=True):
        hs = truncated_reference_layer(layer.W, layer.S, layer.b, hs, h0, activation, K)
    outputs = hs @ params.readout.W.T + params.readout.b
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs, targets) * mask
    return losses.sum() / xs.shape[1]


def make_problem(dtype, seed=0, bias=0.0):
    k_params, k_x, k_y, k_h, k_noise = jax.random.split(jax.random.key(seed), 5)
    params = dj.init_rnn(k_params, N_INPUTS, HIDDEN, N_CLASSES, dtype=dtype)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(k_noise, len(leaves))
    params = treedef.unflatten(
        [p + 0.3 * jax.random.normal(k, p.shape, dtype) for p, k in zip(leaves, keys)]
    )
    # A positive bias keeps ReLU units alive, so that gradients reach every step.
    params = params._replace(layers=tuple(l._replace(b=l.b + bias) for l in params.layers))
    xs = jax.random.normal(k_x, (T, M, N_INPUTS), dtype)
    targets = jax.random.randint(k_y, (T, M), 0, N_CLASSES)
    h0s = [
        0.5 * jax.random.normal(k, (M, d), dtype)
        for k, d in zip(jax.random.split(k_h, len(HIDDEN)), HIDDEN)
    ]
    lengths = jnp.array([T, 4, 1])
    ragged = (jnp.arange(T)[:, None] < lengths).astype(dtype)
    masks = jnp.stack([jnp.ones_like(ragged), ragged])
    return params, xs, targets, masks, h0s


def library_loss(params, xs, targets, mask, h0s, *, activation, method, K):
    outputs = dj.rnn_apply(params, xs, h0s, activation=activation, method=method, truncation=K)
    return dj.per_step_losses(outputs, targets, mask=mask, loss="softmax_cross_entropy").sum() / M


@functools.partial(jax.jit, static_argnames=("activation", "Ks"))
def truncated_gradients(params, xs, targets, masks, h0s, *, activation, Ks):
    """For every K in Ks: omega and bptt truncated gradients and the oracle; plus the
    exact gradient. Vmapped over `masks` (all-ones and ragged), so the custom rules
    also run under vmap; one compiled program for all Ks.
    """
    argnums = (0, 1, 4)

    def for_mask(mask):
        grads = {}
        for K in Ks:
            for method in ("omega", "bptt"):
                grads[f"{method} {K}"] = jax.grad(library_loss, argnums)(
                    params, xs, targets, mask, h0s, activation=activation, method=method, K=K
                )
            grads[f"oracle {K}"] = jax.grad(truncated_reference_loss, argnums)(
                params, xs, targets, mask, h0s, activation=activation, K=K
            )
        # The exact gradient (the grid of test_gradients.py checks it against jax.grad).
        grads["exact"] = jax.grad(library_loss, argnums)(
            params, xs, targets, mask, h0s, activation=activation, method="bptt", K=None
        )
        return grads

    return jax.vmap(for_mask)(masks)


def assert_truncation_exact(grads, Ks, dtype):
    rtol = RTOL[jnp.dtype(dtype)]
    for K in Ks:
        oracle = grads[f"oracle {K}"]
        errors = {m: max_relative_error(grads[f"{m} {K}"], oracle) for m in ("omega", "bptt")}
        assert all(e <= rtol for e in errors.values()), (K, errors)
        distance_to_exact = max_relative_error(oracle, grads["exact"])
        if K >= T - 1:
            # Nothing is cut: the truncated gradient is the exact one.
            assert distance_to_exact <= rtol, (K, distance_to_exact)
        else:
            # The oracle really truncates (the test could otherwise not tell K apart).
            assert distance_to_exact > 1e-3, (K, distance_to_exact)


def test_truncation_matches_stop_gradient_oracle(dtype):
    """K = 0 (local), K = 2 and K = T−1 (exact), two tanh layers, ragged and full masks."""
    Ks = (0, 2, T - 1)
    params, xs, targets, masks, h0s = make_problem(dtype)
    grads = truncated_gradients(params, xs, targets, masks, h0s, activation="tanh", Ks=Ks)
    assert_truncation_exact(grads, Ks, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("activation, K", [("relu", 1), ("sigmoid", 50)])
def test_truncation_other_activations(activation, K, dtype):
    relu = activation == "relu"
    params, xs, targets, masks, h0s = make_problem(dtype, seed=int(relu), bias=0.5 * relu)
    grads = truncated_gradients(params, xs, targets, masks, h0s, activation=activation, Ks=(K,))
    assert_truncation_exact(grads, (K,), dtype)


def test_truncation_zero_is_purely_local(x64):
    """K = 0, one layer: ∂C/∂W = Σ_t (h̄_t ⊙ σ'_t)ᵀ x_t with h̄_t the readout error only."""
    params, xs, targets, masks, h0s = make_problem(jnp.float64)
    layer = params.layers[0]
    readout_W = jax.random.normal(jax.random.key(1), (N_CLASSES, HIDDEN[0]), jnp.float64)
    params = dj.RNNParams((layer,), dj.ReadoutParams(readout_W, params.readout.b))

    def loss(p):
        outputs = dj.rnn_apply(p, xs, h0s[:1], truncation=0)
        return dj.per_step_losses(outputs, targets, loss="softmax_cross_entropy").sum() / M

    grads = jax.jit(jax.grad(loss))(params)
    hs = dj.rnn_layer(layer, xs, h0s[0])
    probs = jax.nn.softmax(hs @ params.readout.W.T + params.readout.b)
    error = (probs - jax.nn.one_hot(targets, N_CLASSES)) / M
    local = (error @ params.readout.W) * (1 - hs**2)
    expected_W = jnp.einsum("tmd,tmn->dn", local, xs)
    assert max_relative_error(grads.layers[0].W, expected_W) <= RTOL[jnp.dtype("float64")]


@pytest.mark.parametrize(
    "method, truncation, match",
    [
        ("omega", -1, "non-negative"),
        ("omega", 1.5, "non-negative"),
        ("omega", True, "non-negative"),
        ("bptt", "3", "non-negative"),
        ("naive", 2, "truncation is an option"),
        ("scan", 2, "truncation is an option"),
        ("rtrl", 2, "truncation is an option"),
        ("autodiff", 2, "truncation is an option"),
    ],
)
def test_invalid_truncation_is_rejected(method, truncation, match):
    layer = dj.init_layer(jax.random.key(0), 2, 3)
    with pytest.raises(ValueError, match=match):
        dj.rnn_layer(layer, jnp.ones((4, 1, 2)), method=method, truncation=truncation)
