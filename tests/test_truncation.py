"""`truncation=K`: exact K-step truncated BPTT (docs/theory.md#truncation).

Definition pinned here (per layer): the loss at step t back-propagates through
Z_t, …, Z_{t−K} of each layer, i.e. the gradient is the exact gradient of a model in
which every layer's h_t is recomputed from `stop_gradient(h_{t−K−1})` over the inputs
x_{t−K..t}; when t−K−1 < 0 the window is clamped at the sequence start and begins at
h0 itself, which stays differentiable (h0 is an input of the layer, not a state it
computed). In a stack each layer applies this to the cotangent it receives, so the
inputs of a layer (the layer below's recomputed outputs) keep their gradient.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import (
    ALGORITHMS,
    CHEAP_COMPILE,
    N_CLASSES,
    RTOL,
    SIGMAS,
    library_loss,
    make_problem,
    max_relative_error,
    no_mask_and,
    random_readout,
    reference_layer,
)
from jax import lax

import dprnn_jax as dj

T, M, N_LAYERS = 7, 3, 2
# The algorithms that take `truncation=`, from the registry.
TRUNCATING = tuple(
    name
    for name, cls in ALGORITHMS.items()
    if "truncation" in {field.name for field in dataclasses.fields(cls)}
)


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


def truncation_problem(dtype, seed=0, bias=0.0):
    """Two layers, T = 7, lengths (7, 4, 1); `bias` added to every layer's b (a positive
    one keeps ReLU units alive, so that gradients reach every step)."""
    problem = make_problem(seed, T, M, N_LAYERS, dtype, lengths=(T, 4, 1))
    layers = tuple(layer._replace(b=layer.b + bias) for layer in problem.params.layers)
    return problem._replace(params=problem.params._replace(layers=layers))


@functools.partial(jax.jit, static_argnames=("activation", "Ks"), compiler_options=CHEAP_COMPILE)
def truncated_gradients(problem, *, activation, Ks):
    """For every K in Ks: the truncated gradients of every truncating algorithm (named
    and as an object) and the oracle; plus the exact gradient. Vmapped over the masks
    (none, ragged), so the custom rules also run under vmap; one program for all Ks.
    """
    params, xs, targets, mask, h0s = problem
    argnums = (0, 1, 4)
    options = dict(loss="softmax_cross_entropy", activation=activation)

    def for_mask(mask):
        grads = {}
        for K in Ks:
            for index, name in enumerate(TRUNCATING):
                # Half the algorithms by name and option, half as objects.
                method = dict(method=name, truncation=K)
                if (index + K) % 2:
                    method = dict(method=ALGORITHMS[name](truncation=K))
                grads[f"{name} {K}"] = jax.grad(library_loss, argnums)(
                    params, xs, targets, mask, h0s, **method, **options
                )
            grads[f"oracle {K}"] = jax.grad(truncated_reference_loss, argnums)(
                params, xs, targets, mask, h0s, activation=activation, K=K
            )
        # The exact gradient (the grid of test_gradients.py checks it against jax.grad).
        grads["exact"] = jax.grad(library_loss, argnums)(
            params, xs, targets, mask, h0s, method="bptt", **options
        )
        return grads

    return jax.vmap(for_mask)(no_mask_and(mask))


def assert_truncation_exact(grads, Ks, dtype):
    rtol = RTOL[jnp.dtype(dtype)]
    grads = jax.device_get(grads)
    for K in Ks:
        oracle = grads[f"oracle {K}"]
        errors = {m: max_relative_error(grads[f"{m} {K}"], oracle) for m in TRUNCATING}
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
    grads = truncated_gradients(truncation_problem(dtype), activation="tanh", Ks=Ks)
    assert_truncation_exact(grads, Ks, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("activation, K", [("relu", 1), ("sigmoid", 50)])
def test_truncation_other_activations(activation, K, dtype):
    relu = activation == "relu"
    problem = truncation_problem(dtype, seed=int(relu), bias=0.5 * relu)
    grads = truncated_gradients(problem, activation=activation, Ks=(K,))
    assert_truncation_exact(grads, (K,), dtype)


def test_truncation_zero_is_purely_local(x64):
    """K = 0, one layer: ∂C/∂W = Σ_t (h̄_t ⊙ σ'_t)ᵀ x_t with h̄_t the readout error only."""
    stack, xs, targets, _, h0s = truncation_problem(jnp.float64)
    layer = stack.layers[0]
    params = dj.RNNParams((layer,), random_readout(1, layer.S.shape[0], N_CLASSES, jnp.float64))

    @jax.jit
    def truncated_and_by_hand(params):
        def loss(p):
            outputs = dj.rnn_apply(p, xs, h0s[:1], truncation=0)
            return dj.per_step_losses(outputs, targets, loss="softmax_cross_entropy").sum() / M

        hs = dj.rnn_layer(layer, xs, h0s[0])
        probs = jax.nn.softmax(hs @ params.readout.W.T + params.readout.b)
        error = (probs - jax.nn.one_hot(targets, N_CLASSES)) / M
        local = (error @ params.readout.W) * (1 - hs**2)
        return jax.grad(loss)(params).layers[0].W, jnp.einsum("tmd,tmn->dn", local, xs)

    grad_W, expected_W = truncated_and_by_hand(params)
    assert max_relative_error(grad_W, expected_W) <= RTOL[jnp.dtype("float64")]


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
    layer = dj.LayerParams(jnp.zeros((3, 2)), jnp.zeros((3, 3)), jnp.zeros(3))
    with pytest.raises(ValueError, match=match):
        dj.rnn_layer(layer, jnp.ones((4, 1, 2)), method=method, truncation=truncation)
