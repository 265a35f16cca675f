"""`method="omega", block=B`: Ω triangles of B steps chained by the BPTT recurrence.

Exact against jax.grad of the independent oracle (tests/helpers.py) for B = 1 (BPTT),
a divisor and a non-divisor of T, B = T and B > T, in float32 and float64, eagerly
compiled under `jit` and under `vmap`; the in-loop product counters against the closed
form; clear errors for invalid `block`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import CHEAP_COMPILE, RTOL, max_relative_error, reference_loss

import dprnn_jax as dj
from dprnn_jax.backward import ElmanJacobian

T, M, N_INPUTS, HIDDEN, N_CLASSES = 12, 3, 3, (4, 5), 4
# 1 is BPTT, 4 divides T, 5 does not (blocks 5, 5, 2), 20 ≥ T is the full triangle.
BLOCKS = (1, 4, 5, 20)


def make_problem(key, dtype):
    """Two layers, random (not orthogonal) S, non-zero biases, a ragged mask and h0s."""
    k_params, k_noise, k_x, k_y, k_h = jax.random.split(key, 5)
    params = dj.init_rnn(k_params, N_INPUTS, HIDDEN, N_CLASSES, dtype=dtype)
    leaves, treedef = jax.tree.flatten(params)
    noise = jax.random.split(k_noise, len(leaves))
    params = treedef.unflatten(
        [p + 0.3 * jax.random.normal(k, p.shape, dtype) for p, k in zip(leaves, noise, strict=True)]
    )
    xs = jax.random.normal(k_x, (T, M, N_INPUTS), dtype)
    targets = jax.random.randint(k_y, (T, M), 0, N_CLASSES)
    mask = (jnp.arange(T)[:, None] < jnp.array([T, 7, 1])[None, :]).astype(dtype)
    h0s = [
        0.5 * jax.random.normal(k, (M, d), dtype)
        for k, d in zip(jax.random.split(k_h), HIDDEN, strict=True)
    ]
    return params, xs, targets, mask, h0s


def library_loss(params, xs, targets, mask, h0s, *, block):
    outputs = dj.rnn_apply(params, xs, h0s, method="omega", block=block)
    losses = dj.per_step_losses(outputs, targets, mask=mask, loss="softmax_cross_entropy")
    return losses.sum() / xs.shape[1]


def oracle_loss(params, xs, targets, mask, h0s):
    return reference_loss(
        params, xs, targets, mask, h0s, loss="softmax_cross_entropy", activation="tanh"
    )


@functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
def all_gradients(params, xs, targets, mask, h0s):
    """Gradients w.r.t. (params, xs, h0s) for every B and the oracle, in one program."""
    grads = {
        f"block={block}": jax.grad(functools.partial(library_loss, block=block), (0, 1, 4))(
            params, xs, targets, mask, h0s
        )
        for block in BLOCKS
    }
    grads["oracle"] = jax.grad(oracle_loss, (0, 1, 4))(params, xs, targets, mask, h0s)
    return grads


def test_blocked_matches_oracle(dtype):
    grads = all_gradients(*make_problem(jax.random.key(0), dtype))
    errors = {
        name: max_relative_error(grad, grads["oracle"])
        for name, grad in grads.items()
        if name != "oracle"
    }
    assert len(errors) == len(BLOCKS)
    assert max(errors.values()) <= RTOL[jnp.dtype(dtype)], errors


def test_blocked_under_vmap(dtype):
    """Per-sequence gradients: the custom rule batched by `vmap`, inside `jit`."""
    params, xs, targets, mask, h0s = make_problem(jax.random.key(1), dtype)

    def per_sequence(loss_fn):
        def grad_one(x, y, w):
            # One sequence as a batch of one: (T, n) -> (T, 1, n).
            return jax.grad(loss_fn)(params, x[:, None], y[:, None], w[:, None], None)

        return jax.jit(jax.vmap(grad_one, in_axes=1), compiler_options=CHEAP_COMPILE)(
            xs, targets, mask
        )

    blocked = per_sequence(functools.partial(library_loss, block=5))
    oracle = per_sequence(oracle_loss)
    assert max_relative_error(blocked, oracle) <= RTOL[jnp.dtype(dtype)]


@pytest.mark.parametrize("T_", [1, 2, 9, 45])
def test_error_flow_and_counters(T_, x64):
    """Δ equals BPTT's; `useful` is Σ_b L_b(L_b−1)/2 + (#blocks − 1), ≤ `performed`.

    Blocks of up to 16 steps are unrolled; T = 45 with blocks of 20 and ≥ T also runs
    the phased Ω fill inside the chain.
    """
    k_p, k_s, k_S = jax.random.split(jax.random.key(2), 3)
    injected = jax.random.normal(k_p, (T_, 2, 3), jnp.float64)
    sigma_prime = jax.random.uniform(k_s, (T_, 2, 3), jnp.float64)
    S = jax.random.normal(k_S, (3, 3), jnp.float64)
    jacobian = ElmanJacobian(S, sigma_prime)
    expected = dj.BPTT().error_flow(injected, jacobian).delta
    for block in sorted({1, 2, 4, 20, T_, T_ + 3}):
        flow = dj.Omega(block=block).error_flow(injected, jacobian)
        assert max_relative_error(flow.delta, expected) <= RTOL[jnp.dtype("float64")], block
        B = min(block, T_)
        lengths = [B] * (T_ // B) + ([T_ % B] if T_ % B else [])
        useful = sum(L * (L - 1) // 2 for L in lengths) + len(lengths) - 1
        assert int(flow.products_useful) == useful, (block, lengths)
        assert useful <= int(flow.products_performed)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(block=0), ValueError, "block must be a positive int, got 0"),
        (dict(block=-2), ValueError, "block must be a positive int, got -2"),
        (dict(block=True), ValueError, "block must be a positive int, got True"),
        (dict(block=2.5), ValueError, "block must be a positive int, got 2.5"),
        (dict(block=jnp.int32(2)), TypeError, "block must be a static Python int"),
        (dict(block=2, method="bptt"), ValueError, 'applies only to method="omega"'),
        (dict(block=2, method="autodiff"), ValueError, "got method='autodiff'"),
    ],
)
def test_invalid_block(kwargs, error, match):
    layer = dj.init_layer(jax.random.key(0), 2, 3)
    with pytest.raises(error, match=match):
        dj.rnn_layer(layer, jnp.ones((4, 1, 2)), **kwargs)
