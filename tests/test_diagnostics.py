"""The Ω diagnostics against brute force: per-loss gradients, norms of the full Ω
triangle, exact Lyapunov exponents, an independent QR estimate and the γ^k bound."""

from __future__ import annotations

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RTOL, SIGMAS, assert_trees_close

import dprnn_jax as dj
from dprnn_jax import LayerParams

T, M, N, K = 6, 2, 3, 3
HIDDEN = (4, 5)


def _network(dtype):
    params = dj.init_rnn(jax.random.key(0), N, HIDDEN, K, dtype=dtype)
    keys = jax.random.split(jax.random.key(1), 2)
    xs = jax.random.normal(keys[0], (T, M, N), dtype)
    targets = jax.random.randint(keys[1], (T, M), 0, K)
    mask = jnp.ones((T, M)).at[1, 0].set(0)  # a masked step must inject no error
    return params, xs, targets, mask


def _perturbed_states(params, xs, eps, layer):
    """States of every layer with `eps[t]` added to Z^layer_t (brute-force handle)."""
    states = []
    hs = xs
    for index, p in enumerate(params.layers):
        shift = eps if index == layer else jnp.zeros(hs.shape[:2] + p.b.shape, xs.dtype)

        def step(h, inputs, p=p):
            x, e = inputs
            h = SIGMAS["tanh"](x @ p.W.T + h @ p.S.T + p.b + e)
            return h, h

        h0 = jnp.zeros((xs.shape[1], p.S.shape[0]), xs.dtype)
        hs = jax.lax.scan(step, h0, (hs, shift))[1]
        states.append(hs)
    return states


def _per_step_losses(params, xs, targets, mask, eps, layer):
    """L_j = (1/m) Σ_rows loss(ŷ_j, y_j), computed by hand, one per step: (T,)."""
    hs = _perturbed_states(params, xs, eps, layer)[-1]
    logits = hs @ params.readout.W.T + params.readout.b
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask
    return losses.sum(axis=1) / xs.shape[1]


def test_gradient_flow_is_the_norm_of_each_per_loss_gradient(dtype):
    # Top layer: G(j, i) = ∂L_j/∂Z_i exactly; brute force = jacrev of every L_j at once.
    params, xs, targets, mask = _network(dtype)
    eps = jnp.zeros((T, M, HIDDEN[-1]), dtype)
    per_loss_gradients = jax.jit(jax.jacrev(_per_step_losses, argnums=4), static_argnums=5)
    jac = per_loss_gradients(params, xs, targets, mask, eps, 1)
    expected = jnp.sqrt(jnp.sum(jac**2, axis=(-2, -1)))  # (T_j, T_i)
    flow = jax.jit(functools.partial(dj.gradient_flow, mask=mask))(params, xs, targets)
    lower = np.tril(np.ones((T, T), bool))
    assert_trees_close(
        np.asarray(flow)[lower], np.asarray(expected)[lower], rtol=RTOL[jnp.dtype(dtype)]
    )
    assert np.all(np.isnan(np.asarray(flow)[~lower]))
    # Row sums of G rebuild Δ_i = ∂C/∂Z_i: C = Σ_j L_j, so Σ_j ∂L_j/∂Z_i = ∂C/∂Z_i.
    total = jax.jit(jax.grad(lambda e: _per_step_losses(params, xs, targets, mask, e, 1).sum()))(
        eps
    )
    assert_trees_close(jac.sum(axis=0), total, rtol=RTOL[jnp.dtype(dtype)])


def test_gradient_flow_of_a_lower_layer_propagates_its_injected_errors(x64):
    # Layer 0: G(j, i) = P_j Ω(j, i) with P_j the error from layer 1 at step j; brute
    # force = ⟨hs_bar_j, ∂h^0_j/∂ε_i⟩ with hs_bar from jax.grad of the layers above.
    params, xs, targets, mask = _network(jnp.float64)
    eps = jnp.zeros((T, M, HIDDEN[0]), jnp.float64)

    def cost_of_states(hs0):
        upper = params.layers[1]

        def step(h, x):
            h = jnp.tanh(x @ upper.W.T + h @ upper.S.T + upper.b)
            return h, h

        hs1 = jax.lax.scan(step, jnp.zeros((M, HIDDEN[1])), hs0)[1]
        logits = hs1 @ params.readout.W.T + params.readout.b
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask
        return losses.sum() / M

    hs0 = _perturbed_states(params, xs, eps, 0)[0]
    hs_bar = jax.jit(jax.grad(cost_of_states))(hs0)
    jac = jax.jit(jax.jacrev(lambda e: _perturbed_states(params, xs, e, 0)[0]))(eps)
    # Samples are independent: keep the (v, v) blocks only.
    blocks = jnp.einsum("jvetvc,jve->jtvc", jac, hs_bar)
    expected = jnp.sqrt(jnp.sum(blocks**2, axis=(-2, -1)))
    flows = jax.jit(
        lambda p: (
            dj.gradient_flow(p, xs, targets, mask=mask, layer=0),
            dj.gradient_flow(p, xs, targets, mask=mask, layer=-2, max_lag=2),
        )
    )
    flow, cut = flows(params)
    lower = np.tril(np.ones((T, T), bool))
    assert_trees_close(np.asarray(flow)[lower], np.asarray(expected)[lower], rtol=1e-10)
    # max_lag keeps the first diagonals exactly and leaves the rest undefined (NaN).
    lag = np.subtract.outer(np.arange(T), np.arange(T))
    kept = (lag >= 0) & (lag <= 2)
    # Two programs (a shorter fill and the full one): equal to rounding.
    assert_trees_close(np.asarray(cut)[kept], np.asarray(flow)[kept], rtol=1e-12)
    assert np.all(np.isnan(np.asarray(cut)[~kept]))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_omega_norms_are_the_norms_of_omega_matrix(dtype, activation):
    layer = dj.init_layer(jax.random.key(2), N, 5, dtype=dtype)
    layer = layer._replace(S=1.5 * layer.S, b=layer.b + 0.1)
    xs = jax.random.normal(jax.random.key(3), (7, M, N), dtype)
    triangle = dj.omega_matrix(layer, xs, activation=activation)
    run = jax.jit(
        lambda p, x: (
            dj.omega_norms(p, x, activation=activation),
            dj.omega_norms(p, x, activation=activation, log=True),
        )
    )
    norms, logs = run(layer, xs)
    lower = np.tril(np.ones((7, 7), bool))
    spectral = jnp.linalg.norm(triangle, ord=2, axis=(-2, -1))
    frobenius = jnp.linalg.norm(triangle, axis=(-2, -1))
    for actual, expected in ((norms.spectral, spectral), (norms.frobenius, frobenius)):
        assert_trees_close(
            np.asarray(actual)[lower], np.asarray(expected)[lower], rtol=RTOL[jnp.dtype(dtype)]
        )
        assert np.all(np.isnan(np.asarray(actual)[~lower]))
    np.testing.assert_allclose(
        np.exp(np.asarray(logs.spectral)[lower]),
        np.asarray(norms.spectral)[lower],
        rtol=RTOL[jnp.dtype(dtype)],
    )


def test_log_norms_stay_exact_where_the_norms_underflow():
    # relu with positive pre-activations and S = s·I: Ω(i+k, i) = s^k I exactly, so
    # log‖Ω(i+k, i)‖₂ = k log s; with s = 0.01 and k up to 39 the norm itself (1e-78)
    # underflows float32, its log must not. Two values of s at once, under vmap.
    d, scales = 3, jnp.array([0.01, 0.5])
    xs = jnp.zeros((40, 2, 1))

    def log_norms(s):
        layer = LayerParams(W=jnp.zeros((d, 1)), S=s * jnp.eye(d), b=jnp.ones(d))
        return dj.omega_norms(layer, xs, activation="relu", log=True)

    logs = jax.vmap(log_norms)(scales)
    lag = np.subtract.outer(np.arange(40), np.arange(40))
    lower = lag >= 0
    for index, s in enumerate(np.asarray(scales)):
        expected = np.broadcast_to((lag * np.log(s))[..., None], (40, 40, 2))
        spectral, frobenius = logs.spectral[index], logs.frobenius[index]
        assert_trees_close(np.asarray(spectral)[lower], expected[lower], rtol=1e-5)
        expected_frobenius = expected + 0.5 * np.log(d)
        assert_trees_close(np.asarray(frobenius)[lower], expected_frobenius[lower], rtol=1e-5)
    underflowed = LayerParams(W=jnp.zeros((d, 1)), S=0.01 * jnp.eye(d), b=jnp.ones(d))
    assert float(dj.omega_norms(underflowed, xs, activation="relu").spectral[39, 0, 0]) == 0.0


def _positive_relu_layer(radius):
    # Entries of S, h and b positive: Z stays positive, σ' = 1, Ω(i+k, i) = S^k, and the
    # largest Lyapunov exponent is log ρ(S) = log radius (the Perron root).
    d = 6
    S = jax.random.uniform(jax.random.key(4), (d, d), jnp.float64)
    S = S / np.max(np.abs(np.linalg.eigvals(np.asarray(S)))) * radius
    W = 0.1 * jax.random.normal(jax.random.key(5), (d, 2), jnp.float64)
    return LayerParams(W=W, S=S, b=jnp.ones(d, jnp.float64))


@pytest.mark.parametrize("radius", [0.9, 1.05])
def test_lyapunov_exponents_on_a_network_with_a_known_answer(x64, radius):
    layer = _positive_relu_layer(radius)
    xs = jax.random.normal(jax.random.key(6), (64, 2, 2), jnp.float64)
    assert float(dj.decay_bound(layer, xs, activation="relu").max_sigma_prime) == 1.0
    estimate = dj.lyapunov_exponent(layer, xs, activation="relu", max_lag=32, min_lag=5)
    # ‖S^k‖₂ = c ρ^k (1 + O((|λ₂|/ρ)^k)), |λ₂|/ρ ≈ 0.25 here: from lag 5 on the slope
    # is log ρ to ~1e-6 (measured 3e-7).
    assert abs(float(estimate.exponent) - np.log(radius)) < 1e-5
    # The seed-style per-lag estimate (1/k) log‖Ω‖ has the same limit, with error c/k.
    per_lag_error = np.abs(np.asarray(estimate.per_lag) - np.log(radius))
    assert per_lag_error[-1] < per_lag_error[0] and per_lag_error[-1] < 0.02
    # QR: the frame must first align with the Perron vector; after a burn-in the
    # average growth is log ρ to ~1e-6 as well.
    qr = dj.lyapunov_qr(layer, xs, activation="relu", burn_in=16)
    assert abs(float(qr[0]) - np.log(radius)) < 1e-5


def test_lyapunov_diagonal_decay_agrees_with_qr_on_a_tanh_network(x64):
    # The test network of the report: d = 8, tanh, S orthogonal × 1.25, 4 sequences of
    # 128 random inputs. Both are finite-time estimates of the same λ₁ and differ by
    # finite-T effects, not by rounding: the QR estimates of the 4 single sequences
    # spread with a standard error ≈ 0.01, and the tolerance 0.04 is about 4 of those.
    layer = dj.init_layer(jax.random.key(0), 3, 8, dtype=jnp.float64)
    layer = layer._replace(S=1.25 * layer.S)
    xs = jax.random.normal(jax.random.key(1), (128, 4, 3), jnp.float64)
    diagonal = float(dj.lyapunov_exponent(layer, xs, max_lag=64).exponent)
    qr_spectrum = dj.lyapunov_qr(layer, xs, burn_in=16)
    qr = float(qr_spectrum[0])
    assert -1.0 < qr < 0.0  # contracting, not trivially so
    assert abs(diagonal - qr) < 0.04, (diagonal, qr)
    assert np.all(np.diff(np.asarray(qr_spectrum)) <= 0)
    bound = dj.decay_bound(layer, xs)
    assert qr <= np.log(float(bound.gamma))  # λ₁ ≤ log γ by the bound itself


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_decay_bound_holds(x64, activation):
    layer = dj.init_layer(jax.random.key(7), 3, 5, dtype=jnp.float64)
    layer = layer._replace(S=2.0 * layer.S)
    xs = jax.random.normal(jax.random.key(8), (24, 3, 3), jnp.float64)
    bound = dj.decay_bound(layer, xs, activation=activation)
    assert float(bound.gamma) <= float(bound.gamma_a_priori) * (1 + 1e-12)
    np.testing.assert_allclose(float(bound.spectral_norm_S), 2.0, rtol=1e-12)
    logs = np.asarray(dj.omega_norms(layer, xs, activation=activation, log=True).spectral)
    lag = np.subtract.outer(np.arange(24), np.arange(24))
    lower = lag >= 0
    # log‖Ω(i+k, i)‖₂ ≤ k log γ for every sample, up to rounding.
    excess = logs[lower] - (lag[lower] * np.log(float(bound.gamma)))[:, None]
    assert np.all(excess <= 1e-9), excess.max()
    assert excess.max() > -50  # the bound is not vacuous by orders of magnitude everywhere


def test_bad_input_is_named():
    layer = dj.init_layer(jax.random.key(0), 2, 3)
    params = dj.init_rnn(jax.random.key(0), 2, (3,), 2)
    xs = jnp.ones((5, 1, 2))
    targets = jnp.zeros((5, 1), jnp.int32)
    with pytest.raises(ValueError, match="layer must be an int in \\[-1, 1\\)"):
        dj.omega_norms(params, xs, layer=1)
    with pytest.raises(ValueError, match="max_lag must be a positive int"):
        dj.omega_norms(layer, xs, max_lag=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        dj.omega_norms(layer, xs, activation="gelu")
    with pytest.raises(ValueError, match="xs has 3 features"):
        dj.omega_norms(layer, jnp.ones((5, 1, 3)))
    with pytest.raises(ValueError, match="needs T >= 3"):
        dj.lyapunov_exponent(layer, xs[:2])
    with pytest.raises(ValueError, match="min_lag must be an int in \\[1, 3\\]"):
        dj.lyapunov_exponent(layer, xs, min_lag=4, max_lag=4)
    with pytest.raises(ValueError, match="burn_in = 4 with T = 5"):
        dj.lyapunov_qr(layer, xs, burn_in=4)
    with pytest.raises(TypeError, match="params must be an RNNParams"):
        dj.gradient_flow(layer, xs, targets)
    with pytest.raises(ValueError, match="targets must have shape"):
        dj.gradient_flow(params, xs, targets[:4])
    with pytest.raises(ValueError, match="sigma_prime must have shape"):
        dj.error_flow_norms(jnp.ones((5, 1, 3)), jnp.ones((5, 1, 2)), jnp.eye(3))
    with pytest.raises(ValueError, match="norms must be a square"):
        dj.plot_triangle(jnp.ones((3, 4)))
    # A NaN input at step 2 poisons exactly the Ω(j, i) that pass through σ'(Z_2).
    spectral = np.asarray(dj.omega_norms(layer, xs.at[2, 0, 0].set(jnp.nan)).spectral[..., 0])
    lag = np.subtract.outer(np.arange(5), np.arange(5))
    reaches_step_2 = (lag > 0) & (np.arange(5)[:, None] > 2)
    assert np.all(np.isnan(spectral[reaches_step_2]))
    assert np.all(np.isfinite(spectral[(lag >= 0) & ~reaches_step_2]))


def test_plots_are_written_without_a_display(tmp_path):
    flow = np.tril(np.exp(-np.subtract.outer(np.arange(8), np.arange(8)) / 3.0))
    figures = {
        "triangles.png": dj.plot_omega_triangles(flow, flow, title="test"),
        "decay.png": dj.plot_decay(
            -0.3 * np.arange(1, 6), gamma=1.1, exponent=-0.3, qr_exponent=-0.31
        ),
        "curves.png": dj.plot_training_curves({"omega": [3, 2, 1], "bptt": [3, 2, 1]}),
    }
    for name, figure in figures.items():
        path = tmp_path / name
        figure.savefig(path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_library_does_not_import_matplotlib():
    code = "import sys, dprnn_jax; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
