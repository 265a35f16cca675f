"""`gradient_alignment`: how far a gradient is from the exact one, and at which lags.

Oracles, independent of the library's backward: the cosine and the relative error from
two gradients of the model written out (a plain `lax.scan`, `jax.grad`); the lag shares
of an Elman layer from the model truncated by stop-gradient written out (h_t recomputed
from `stop_gradient(h_{t−K−1})` for every K: the gradient of lags ≤ K). For every cell,
a truncated method keeps exactly the lags ≤ K (its `kept_share` is the sum of the lag
shares up to K), and the shares sum to 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import CHEAP_COMPILE, random_inputs

import dprnn_jax as dj

T, M, N, D, K_OUT = 6, 2, 3, 4, 3


def problem(cells, bidirectional=False):
    params = dj.init_rnn(
        jax.random.key(0),
        N,
        (D,) * len(cells),
        K_OUT,
        cell=cells,
        bidirectional=bidirectional,
        dtype=jnp.float64,
    )
    xs = random_inputs(1, (T, M, N), jnp.float64)
    targets = jax.random.randint(jax.random.key(2), (T, M), 0, K_OUT)
    return params, xs, targets


def elman_loss(params, xs, targets, K=None):
    """One Elman layer written out; with K, h_t is recomputed from stop_gradient(h_{t−K−1})
    (from h0 = 0 when t − K − 1 < 0): the gradient of the lags ≤ K."""
    layer, readout = params.layers[0], params.readout

    def step(h, x):
        return jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)

    states = [jnp.zeros((M, D), xs.dtype)]
    for x in xs:
        states.append(step(states[-1], x))
    total = 0.0
    for t in range(T):
        if K is None:
            h = states[t + 1]
        else:
            start = t - K
            h = states[0] if start <= 0 else jax.lax.stop_gradient(states[start])
            for s in range(max(start, 0), t + 1):
                h = step(h, xs[s])
        logits = h @ readout.W.T + readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(logits, targets[t]).sum()
    return total / M


def flat(tree):
    return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def test_whole_gradient_and_lag_shares_against_the_written_out_model(x64):
    params, xs, targets = problem(("elman",))
    method = dj.Omega(truncation=2)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def everything(params):
        exact = jax.grad(elman_loss)(params, xs, targets)
        truncated = [jax.grad(elman_loss)(params, xs, targets, K) for K in range(T)]
        return exact, truncated, dj.gradient_alignment(params, xs, targets, method)

    exact, truncated, result = everything(params)
    g, g2 = flat(exact), flat(truncated[2])
    np.testing.assert_allclose(result.cosine, g2 @ g / np.linalg.norm(g2) / np.linalg.norm(g))
    np.testing.assert_allclose(result.relative_error, np.linalg.norm(g2 - g) / np.linalg.norm(g))
    S, S2 = np.asarray(exact.layers[0].S), np.asarray(truncated[2].layers[0].S)
    np.testing.assert_allclose(
        result.leaf_cosine.layers[0].S, (S2 * S).sum() / np.linalg.norm(S2) / np.linalg.norm(S)
    )
    # The layer's lag-k part: the gradient of lags <= k minus that of lags <= k - 1.
    layer = [flat(gradient.layers[0]) for gradient in truncated]
    g_layer = flat(exact.layers[0])
    parts = [layer[0]] + [layer[k] - layer[k - 1] for k in range(1, T)]
    expected = [part @ g_layer / (g_layer @ g_layer) for part in parts]
    np.testing.assert_allclose(result.lag_share, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(result.kept_share, sum(expected[:3]), rtol=1e-10)


@pytest.mark.parametrize(
    ("cells", "bidirectional", "direction", "lengths"),
    [
        (("gru",), False, None, None),
        (("lstm",), False, None, (T, 4)),
        (("mingru",), True, "backward", (T, 3)),
        (("elman", "gru"), False, None, None),
    ],
)
def test_a_truncation_keeps_exactly_its_lags_for_every_cell(
    cells, bidirectional, direction, lengths, x64
):
    """kept_share of `BPTT(truncation=K)` = Σ_{k ≤ K} lag_share[k] on the top layer, the
    shares sum to 1, and an exact method keeps all of it."""
    params, xs, targets = problem(cells, bidirectional)
    lengths = None if lengths is None else jnp.array(lengths)
    run = functools.partial(
        dj.gradient_alignment, params, xs, targets, lengths=lengths, direction=direction
    )
    K = 2  # (every lag K of an Elman layer: the test above)
    result = run(dj.BPTT(truncation=K))
    np.testing.assert_allclose(result.lag_share.sum(), 1.0, rtol=1e-10)
    np.testing.assert_allclose(result.kept_share, result.lag_share[: K + 1].sum(), rtol=1e-10)
    assert float(result.relative_error) > 1e-6  # a truncation does lose something here
    if cells == ("gru",):  # an exact method keeps all of it
        exact = run(dj.Omega())
        np.testing.assert_allclose(exact.kept_share, 1.0, rtol=1e-10)
        np.testing.assert_allclose(exact.cosine, 1.0, rtol=1e-12)
        assert float(exact.relative_error) < 1e-12


def test_bad_arguments(x64):
    params, xs, targets = problem(("elman",))
    with pytest.raises(ValueError, match="key is for random methods"):
        dj.gradient_alignment(params, xs, targets, "bptt", key=jax.random.key(0))
    with pytest.raises(ValueError, match="method must be one of"):
        dj.gradient_alignment(params, xs, targets, "adjoint")


def test_a_random_method_is_measured_with_its_key(x64):
    """With `key`, UORO's estimate is the online API's with that key."""
    params, xs, targets = problem(("gru",))
    key = jax.random.key(4)
    result = dj.gradient_alignment(params, xs, targets, dj.UORO(), key=key)
    estimate = flat(dj.online_gradient(params, xs, targets, dj.UORO(), key=key)[1])
    exact = flat(jax.grad(dj.sequence_loss)(params, xs, targets, method=dj.BPTT()))
    np.testing.assert_allclose(
        result.relative_error, np.linalg.norm(estimate - exact) / np.linalg.norm(exact), rtol=1e-9
    )
