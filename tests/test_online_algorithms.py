"""The approximate online algorithms as `method=`: SnAp-n (every cell) and RFLO (Elman).

Oracles: the exact gradient (`jax.grad` through the plain scan, `Autodiff()`) where the
approximation is exact — SnAp-2 on a dense recurrence, SnAp-1 on a diagonal one (minGRU,
an Elman layer with diagonal S); `BPTT(truncation=0)` for RFLO with τ = 1; and, where
they approximate, SnAp-1 and RFLO written out in NumPy in this file, on one Elman layer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, random_inputs

import dprnn_jax as dj

T, M, N, D, K_OUT = 6, 2, 3, 4, 3


def problem(cell, dtype=jnp.float64, layers=1):
    params = dj.init_rnn(jax.random.key(0), N, (D,) * layers, K_OUT, cell=cell, dtype=dtype)
    xs = random_inputs(1, (T, M, N), dtype)
    targets = jax.random.randint(jax.random.key(2), (T, M), 0, K_OUT)
    return params, xs, targets


def gradients(params, xs, targets, methods, argnums=0):
    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def run(params, xs):
        return [
            jax.grad(dj.sequence_loss, argnums)(params, xs, targets, method=method)
            for method in methods
        ]

    return run(params, xs)


@pytest.mark.parametrize(
    ("cell", "dtype"),
    [("elman", "float64"), ("gru", "float64"), ("lstm", "float64"), ("elman", "float32")],
)
def test_snap2_on_a_dense_recurrence_is_rtrl(cell, dtype, x64):
    params, xs, targets = problem(cell, jnp.dtype(dtype))
    snap, exact = gradients(params, xs, targets, [dj.SnAp(n=2), dj.Autodiff()], (0, 1))
    assert_trees_close(snap, exact, rtol=1e-10 if dtype == "float64" else 1e-4)


def test_snap1_is_exact_on_a_diagonal_recurrence(x64):
    """minGRU's Jacobian is diag(1 − z); an Elman layer with a diagonal S too."""
    params, xs, targets = problem(("mingru", "mingru"), layers=2)
    snap, exact = gradients(params, xs, targets, [dj.SnAp(n=1), dj.Autodiff()])
    assert_trees_close(snap, exact, rtol=1e-10)
    params, xs, targets = problem("elman")
    layer = params.layers[0]
    params = params._replace(layers=(layer._replace(S=jnp.diag(jnp.diag(layer.S) + 0.5)),))
    snap, exact = gradients(params, xs, targets, [dj.SnAp(n=1), dj.Autodiff()])
    assert_trees_close(snap, exact, rtol=1e-10)


def output_error(params, hs, targets):
    """∂C/∂ŷ_t of the softmax cross-entropy: (softmax(ŷ_t) − onehot(y_t)) / m."""
    logits = hs @ np.asarray(params.readout.W).T + np.asarray(params.readout.b)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return (probabilities - np.eye(K_OUT)[np.asarray(targets)]) / M


def readout_cotangent(params, hs, targets):
    """∂C/∂h_t from the readout of a one-layer network: ε_t W_out."""
    return output_error(params, hs, targets) @ np.asarray(params.readout.W)


def elman_states(layer, xs):
    W, S, b = (np.asarray(a) for a in layer)
    hs, h = [], np.zeros((M, D))
    for x in np.asarray(xs):
        h = np.tanh(x @ W.T + h @ S.T + b)
        hs.append(h)
    return np.stack(hs)


def test_snap1_on_a_dense_elman_layer_equals_snap1_written_out(x64):
    """SnAp-1 keeps ∂h_a/∂θ for the parameters of unit a only: with s = σ'(Z_t),
    M_W[a, e] ← s_a (S_aa M_W[a, e] + x_e), likewise for S with h_{t−1} and b with 1."""
    params, xs, targets = problem("elman")
    (library,) = gradients(params, xs, targets, [dj.SnAp(n=1)])
    layer = params.layers[0]
    W, S = np.asarray(layer.W), np.asarray(layer.S)
    hs = elman_states(layer, xs)
    hs_bar = readout_cotangent(params, hs, targets)
    M_W, M_S, M_b = np.zeros((M, D, N)), np.zeros((M, D, D)), np.zeros((M, D))
    grad = {"W": np.zeros_like(W), "S": np.zeros_like(S), "b": np.zeros(D)}
    previous = np.zeros((M, D))
    for t in range(T):
        s = 1 - hs[t] ** 2
        own = np.diag(S)[None, :]
        M_W = s[..., None] * (own[..., None] * M_W + np.asarray(xs)[t][:, None, :])
        M_S = s[..., None] * (own[..., None] * M_S + previous[:, None, :])
        M_b = s * (own * M_b + 1)
        grad["W"] += np.einsum("va,vae->ae", hs_bar[t], M_W)
        grad["S"] += np.einsum("va,vae->ae", hs_bar[t], M_S)
        grad["b"] += np.einsum("va,va->a", hs_bar[t], M_b)
        previous = hs[t]
    # The online form keeps the same sparse influence, m·|θ| numbers, step by step.
    state = dj.online_init(params, M, dj.SnAp(n=1))
    assert jax.tree.map(jnp.shape, state.traces["own"]) == jax.tree.map(
        lambda p: (M, *p.shape), layer
    )
    online = jax.jit(dj.online_gradient, static_argnums=3)(params, xs, targets, dj.SnAp(n=1))[1]
    for name in ("W", "S", "b"):
        np.testing.assert_allclose(getattr(library.layers[0], name), grad[name], rtol=1e-10)
        np.testing.assert_allclose(getattr(online.layers[0], name), grad[name], rtol=1e-10)


def test_rflo_with_tau_1_is_bptt_truncated_at_lag_0(x64):
    params, xs, targets = problem("elman", layers=2)
    rflo, truncated = gradients(
        params, xs, targets, [dj.RFLO(), dj.BPTT(truncation=0)], argnums=(0, 1)
    )
    assert_trees_close(rflo, truncated, rtol=1e-12)


def test_rflo_equals_its_traces_written_out(x64):
    """e_t = (1 − 1/τ) e_{t−1} + (1/τ) σ'(Z_t) r_t, θ̄[a, q] = Σ_t h̄_t[a] e_t[a, q]."""
    tau = 3.0
    params, xs, targets = problem("elman")
    (library,) = gradients(params, xs, targets, [dj.RFLO(tau=tau)])
    layer = params.layers[0]
    hs = elman_states(layer, xs)
    hs_bar = readout_cotangent(params, hs, targets)
    e_W, e_S, e_b = np.zeros((M, D, N)), np.zeros((M, D, D)), np.zeros((M, D))
    grad = {"W": 0.0, "S": 0.0, "b": 0.0}
    previous = np.zeros((M, D))
    for t in range(T):
        s = 1 - hs[t] ** 2
        e_W = (1 - 1 / tau) * e_W + s[..., None] * np.asarray(xs)[t][:, None, :] / tau
        e_S = (1 - 1 / tau) * e_S + s[..., None] * previous[:, None, :] / tau
        e_b = (1 - 1 / tau) * e_b + s / tau
        grad["W"] = grad["W"] + np.einsum("va,vae->ae", hs_bar[t], e_W)
        grad["S"] = grad["S"] + np.einsum("va,vae->ae", hs_bar[t], e_S)
        grad["b"] = grad["b"] + np.einsum("va,va->a", hs_bar[t], e_b)
        previous = hs[t]
    for name in ("W", "S", "b"):
        np.testing.assert_allclose(getattr(library.layers[0], name), grad[name], rtol=1e-10)


def test_the_microscope_sees_where_the_approximations_lose(x64):
    """SnAp-1 on minGRU keeps all of the gradient; on a dense Elman layer, and RFLO, they
    keep less than the exact methods (cosine < 1)."""
    params, xs, targets = problem("mingru")
    exact = dj.gradient_alignment(params, xs, targets, dj.SnAp(n=1))
    np.testing.assert_allclose(exact.kept_share, 1.0, rtol=1e-10)
    params, xs, targets = problem("elman")
    for method in (dj.SnAp(n=1), dj.RFLO(tau=2.0)):
        result = dj.gradient_alignment(params, xs, targets, method)
        assert 0 < float(result.cosine) < 1 - 1e-6, method


def test_options_and_refusals():
    with pytest.raises(ValueError, match="n must be 1 or 2"):
        dj.SnAp(n=3)
    with pytest.raises(ValueError, match="tau must be a finite Python float ≥ 1"):
        dj.RFLO(tau=0.5)
    with pytest.raises(ValueError, match="feedback must be one of"):
        dj.RFLO(feedback="sideways")
    params, xs, targets = problem("gru", jnp.float32)
    with pytest.raises(TypeError, match="RFLO is defined for Elman layers"):
        jax.grad(dj.sequence_loss)(params, xs, targets, method=dj.RFLO())
    tokens = jnp.zeros((T, M), jnp.int32)
    params = dj.init_rnn(jax.random.key(0), 5, (D,), K_OUT)
    for method in (dj.SnAp(), dj.RFLO()):
        with pytest.raises(ValueError, match="does not take integer token inputs"):
            jax.grad(dj.sequence_loss)(params, tokens, targets, method=method)


def test_records_rebuild_the_algorithms():
    """`to_dict` (what metrics.json and checkpoints record) and `algorithm_from_dict`."""
    for algorithm in (dj.SnAp(n=2), dj.RFLO(tau=2.0)):
        assert dj.backward.algorithm_from_dict(algorithm.to_dict()) == algorithm


def test_rflo_with_random_feedback_sends_the_output_error_through_b(x64):
    """`feedback="random"`: the top layer's learning signal is ε_t B, B (k, d) normal
    over √d from `jax.random.key(seed)`; the readout's own gradient stays exact."""
    params, xs, targets = problem("elman")
    random, readout = gradients(
        params, xs, targets, [dj.RFLO(feedback="random", seed=3), dj.RFLO()]
    )
    B = np.asarray(jax.random.normal(jax.random.key(3), (K_OUT, D), jnp.float64)) / np.sqrt(D)
    layer = params.layers[0]
    hs = elman_states(layer, xs)
    signal = output_error(params, hs, targets) @ B  # ε_t B in place of ε_t W_out
    P = signal * (1 - hs**2)  # τ = 1: the lag-0 errors of that signal
    previous = np.concatenate([np.zeros((1, M, D)), hs[:-1]])
    np.testing.assert_allclose(
        random.layers[0].W, np.einsum("tva,tve->ae", P, np.asarray(xs)), rtol=1e-10
    )
    np.testing.assert_allclose(
        random.layers[0].S, np.einsum("tva,tve->ae", P, previous), rtol=1e-10
    )
    assert_trees_close(random.readout, readout.readout, rtol=1e-12)


# --------------------------------------------------------------------------- online API


def test_online_rtrl_is_exact_for_a_stack_of_any_cells(x64):
    """The stack as one cell: RTRL on it carries the cross-layer influences."""
    params, xs, targets = problem(("gru", "elman", "lstm"), layers=3)
    mask = jnp.ones((T, M)).at[:2, 1].set(0.0)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def both(params):
        online = dj.online_gradient(params, xs, targets, dj.RTRL(), mask=mask)
        cost = dj.sequence_loss(params, xs, targets, mask=mask)
        return online, (cost, jax.grad(dj.sequence_loss)(params, xs, targets, mask=mask))

    (cost, grads), (expected_cost, expected) = both(params)
    np.testing.assert_allclose(cost, expected_cost, rtol=1e-12)
    assert_trees_close(grads, expected, rtol=1e-10)


@pytest.mark.parametrize(
    ("cells", "method"),
    [
        ("elman", dj.SnAp(n=1)),
        ("gru", dj.SnAp(n=2)),
        ("lstm", dj.SnAp(n=1)),
        (("elman", "elman"), dj.RFLO(tau=2.0)),
        (("elman", "elman"), dj.RFLO(feedback="random", seed=1)),
    ],
    ids=["snap1-elman", "snap2-gru", "snap1-lstm", "rflo-stack", "rflo-random-stack"],
)
def test_online_and_whole_sequence_forms_agree(cells, method, x64):
    layers = 1 if isinstance(cells, str) else len(cells)
    params, xs, targets = problem(cells, layers=layers)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def both(params):
        online = dj.online_gradient(params, xs, targets, method)[1]
        return online, jax.grad(dj.sequence_loss)(params, xs, targets, method=method)

    assert_trees_close(*both(params), rtol=1e-10)


def test_uoro_is_unbiased_at_the_rate_its_variance_predicts(x64):
    """Over K = 2000 fixed keys the mean estimate's squared error is the estimates'
    total variance over K (a ratio near 1; a bias would make it grow with K), and one
    estimate alone is far off."""
    params, xs, targets = problem("elman")
    keys = jax.random.split(jax.random.key(7), 2000)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def estimates(keys):
        one = lambda key: dj.online_gradient(params, xs, targets, dj.UORO(), key=key)[1]  # noqa: E731
        return jax.vmap(one)(keys), jax.grad(dj.sequence_loss)(params, xs, targets)

    samples, exact = estimates(keys)
    flat_samples = np.concatenate(
        [np.asarray(leaf).reshape(len(keys), -1) for leaf in jax.tree.leaves(samples)], axis=1
    )
    flat_exact = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(exact)])
    error = np.sum((flat_samples.mean(0) - flat_exact) ** 2)
    predicted = np.sum(flat_samples.var(0, ddof=1)) / len(keys)
    assert 0.25 < error / predicted < 3.0, error / predicted
    single = np.linalg.norm(flat_samples[0] - flat_exact) / np.linalg.norm(flat_exact)
    assert single > 0.1  # each estimate is noisy: the test above is not trivially met


def test_online_step_is_jitted_once_and_vmaps_over_parameter_sets():
    params = jax.vmap(lambda k: dj.init_rnn(k, N, (D,), K_OUT, cell="mingru"))(
        jax.random.split(jax.random.key(0), 3)
    )
    xs = random_inputs(1, (T, M, N), jnp.float32)
    targets = jnp.zeros((T, M), jnp.int32)
    costs, grads = jax.jit(jax.vmap(lambda p: dj.online_gradient(p, xs, targets, dj.SnAp(n=1))))(
        params
    )
    assert costs.shape == (3,) and grads.layers[0].W.shape == (3, 2 * D, N)
    single = jax.tree.map(lambda leaf: leaf[0], params)
    state = dj.online_init(single, M, dj.RTRL())
    step = jax.jit(dj.online_step)
    for t in range(T):
        state, outputs = step(single, state, xs[t], targets[t])
    assert outputs.shape == (M, K_OUT)
    np.testing.assert_allclose(state.cost, costs[0], rtol=1e-5)


def test_online_refusals():
    params, xs, targets = problem("gru", jnp.float32)
    with pytest.raises(TypeError, match="RFLO is defined for Elman layers"):
        dj.online_init(params, M, dj.RFLO())
    with pytest.raises(ValueError, match="UORO draws random signs"):
        dj.online_init(params, M, dj.UORO())
    with pytest.raises(ValueError, match="key is for UORO's random signs"):
        dj.online_init(params, M, dj.RTRL(), key=jax.random.key(0))
    with pytest.raises(TypeError, match="must be an online algorithm"):
        dj.online_init(params, M, dj.BPTT())
    both = dj.init_rnn(jax.random.key(0), N, (D,), K_OUT, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        dj.online_init(both, M, dj.RTRL())
    state = dj.online_init(params, M, dj.RTRL())
    with pytest.raises(TypeError, match="x has dtype bfloat16 but the parameters"):
        dj.online_step(params, state, xs[0].astype(jnp.bfloat16), targets[0])
