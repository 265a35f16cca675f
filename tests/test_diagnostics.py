"""The Ω diagnostics against brute force: per-loss gradients, norms of the full Ω
triangle, exact Lyapunov exponents, an independent QR estimate and the γ^k bound.

Every diagnostic runs under `jit` (its options are static): eagerly, each of its
operations would compile on its own.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    CHEAP_COMPILE,
    RTOL,
    SIGMAS,
    assert_trees_close,
    random_inputs,
    random_layer,
    random_rnn,
    random_targets,
)

import dprnn_jax as dj

T, M, N, K = 6, 2, 3, 3
HIDDEN = (4, 5)
LOWER = np.tril(np.ones((T, T), bool))


def _network(dtype):
    params = random_rnn(0, N, HIDDEN, K, dtype)
    xs = random_inputs(1, (T, M, N), dtype)
    targets = random_targets(2, T, M, K, dtype)
    mask = np.ones((T, M), dtype)
    mask[1, 0] = 0  # a masked step must inject no error
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
    eps = np.zeros((T, M, HIDDEN[-1]), dtype)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def brute_force_and_flow(params, xs, targets, mask, eps):
        jac = jax.jacrev(_per_step_losses, argnums=4)(params, xs, targets, mask, eps, 1)
        total = jax.grad(lambda e: _per_step_losses(params, xs, targets, mask, e, 1).sum())(eps)
        return jac, total, dj.diagnostics.gradient_flow(params, xs, targets, mask=mask)

    jac, total, flow = jax.device_get(brute_force_and_flow(params, xs, targets, mask, eps))
    expected = np.sqrt(np.sum(jac**2, axis=(-2, -1)))  # (T_j, T_i)
    assert_trees_close(flow[LOWER], expected[LOWER], rtol=RTOL[jnp.dtype(dtype)])
    assert np.all(np.isnan(flow[~LOWER]))
    # Row sums of G rebuild Δ_i = ∂C/∂Z_i: C = Σ_j L_j, so Σ_j ∂L_j/∂Z_i = ∂C/∂Z_i.
    assert_trees_close(jac.sum(axis=0), total, rtol=RTOL[jnp.dtype(dtype)])


def test_gradient_flow_of_a_lower_layer_propagates_its_injected_errors(x64):
    # Layer 0: G(j, i) = P_j Ω(j, i) with P_j the error from layer 1 at step j; brute
    # force = ⟨hs_bar_j, ∂h^0_j/∂ε_i⟩ with hs_bar from jax.grad of the layers above.
    params, xs, targets, mask = _network(np.float64)
    eps = np.zeros((T, M, HIDDEN[0]), np.float64)

    def cost_of_states(hs0):
        upper = params.layers[1]

        def step(h, x):
            h = jnp.tanh(x @ upper.W.T + h @ upper.S.T + upper.b)
            return h, h

        hs1 = jax.lax.scan(step, jnp.zeros((M, HIDDEN[1])), hs0)[1]
        logits = hs1 @ params.readout.W.T + params.readout.b
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * mask
        return losses.sum() / M

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def brute_force_and_flows(params, eps):
        hs0 = _perturbed_states(params, xs, eps, 0)[0]
        hs_bar = jax.grad(cost_of_states)(hs0)
        jac = jax.jacrev(lambda e: _perturbed_states(params, xs, e, 0)[0])(eps)
        flow = dj.diagnostics.gradient_flow(params, xs, targets, mask=mask, layer=0)
        cut = dj.diagnostics.gradient_flow(params, xs, targets, mask=mask, layer=-2, max_lag=2)
        return hs_bar, jac, flow, cut

    hs_bar, jac, flow, cut = jax.device_get(brute_force_and_flows(params, eps))
    # Samples are independent: keep the (v, v) blocks only.
    blocks = np.einsum("jvetvc,jve->jtvc", jac, hs_bar)
    expected = np.sqrt(np.sum(blocks**2, axis=(-2, -1)))
    assert_trees_close(flow[LOWER], expected[LOWER], rtol=1e-10)
    # max_lag keeps the first diagonals (up to rounding: it fills fewer of them, in
    # another program) and leaves the rest undefined (NaN).
    lag = np.subtract.outer(np.arange(T), np.arange(T))
    kept = (lag >= 0) & (lag <= 2)
    assert_trees_close(cut[kept], flow[kept], rtol=1e-12)
    assert np.all(np.isnan(cut[~kept]))


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_omega_norms_are_the_norms_of_omega_matrix(dtype, activation):
    layer = jax.device_get(random_layer(2, N, 5, dtype, noise=0.0))
    layer = jax.device_put(layer._replace(S=1.5 * layer.S, b=layer.b + 0.1))
    xs = random_inputs(3, (7, M, N), dtype)

    @jax.jit
    def triangle_and_norms(layer, xs):
        return (
            dj.diagnostics.omega_matrix(layer, xs, activation=activation),
            dj.diagnostics.omega_norms(layer, xs, activation=activation),
            dj.diagnostics.omega_norms(layer, xs, activation=activation, log=True),
        )

    triangle, norms, logs = jax.device_get(triangle_and_norms(layer, xs))
    lower = np.tril(np.ones((7, 7), bool))
    spectral = np.linalg.norm(triangle, ord=2, axis=(-2, -1))
    frobenius = np.linalg.norm(triangle, axis=(-2, -1))
    for actual, expected in ((norms.spectral, spectral), (norms.frobenius, frobenius)):
        assert_trees_close(actual[lower], expected[lower], rtol=RTOL[jnp.dtype(dtype)])
        assert np.all(np.isnan(actual[~lower]))
    np.testing.assert_allclose(
        np.exp(logs.spectral[lower]), norms.spectral[lower], rtol=RTOL[jnp.dtype(dtype)]
    )


def test_omega_norms_of_a_long_sequence_are_filled_in_phases(x64):
    # T = 40: the fill runs in several phases of shrinking row counts (as the Ω
    # backward); each lag, the phase boundaries and a max_lag inside a phase must give
    # the norms of omega_matrix's triangle.
    T = 40
    layer = random_layer(4, N, 3, jnp.float64, noise=0.0)
    layer = layer._replace(S=1.2 * layer.S)
    xs = random_inputs(5, (T, M, N), jnp.float64)

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def triangle_and_norms(layer, xs):
        return (
            dj.diagnostics.omega_matrix(layer, xs),
            dj.diagnostics.omega_norms(layer, xs),
            dj.diagnostics.omega_norms(layer, xs, max_lag=13),
        )

    triangle, norms, cut = jax.device_get(triangle_and_norms(layer, xs))
    lag = np.subtract.outer(np.arange(T), np.arange(T))
    spectral = np.linalg.norm(triangle, ord=2, axis=(-2, -1))
    frobenius = np.linalg.norm(triangle, axis=(-2, -1))
    for actual, expected in ((norms.spectral, spectral), (norms.frobenius, frobenius)):
        np.testing.assert_allclose(actual[lag >= 0], expected[lag >= 0], rtol=1e-10)
        assert np.all(np.isnan(actual[lag < 0]))
    kept = (lag >= 0) & (lag <= 13)
    np.testing.assert_allclose(cut.spectral[kept], spectral[kept], rtol=1e-10)
    assert np.all(np.isnan(cut.spectral[~kept]))


def test_log_norms_stay_exact_where_the_norms_underflow():
    # relu with positive pre-activations and S = s·I: Ω(i+k, i) = s^k I exactly, so
    # log‖Ω(i+k, i)‖₂ = k log s; with s = 0.01 and k up to 39 the norm itself (1e-78)
    # underflows float32, its log must not. Two values of s at once, under vmap.
    d, scales = 3, np.array([0.01, 0.5], np.float32)
    xs = np.zeros((40, 2, 1), np.float32)

    def layer(s):
        return dj.LayerParams(W=jnp.zeros((d, 1)), S=s * jnp.eye(d), b=jnp.ones(d))

    @jax.jit
    def log_norms_and_norm(scales):
        logs = jax.vmap(
            lambda s: dj.diagnostics.omega_norms(layer(s), xs, activation="relu", log=True)
        )(scales)
        return logs, dj.diagnostics.omega_norms(layer(scales[0]), xs, activation="relu")

    logs, norms = jax.device_get(log_norms_and_norm(scales))
    lag = np.subtract.outer(np.arange(40), np.arange(40))
    lower = lag >= 0
    for index, s in enumerate(scales):
        expected = np.broadcast_to((lag * np.log(s))[..., None], (40, 40, 2))
        spectral, frobenius = logs.spectral[index], logs.frobenius[index]
        assert_trees_close(spectral[lower], expected[lower], rtol=1e-5)
        expected_frobenius = expected + 0.5 * np.log(d)
        assert_trees_close(frobenius[lower], expected_frobenius[lower], rtol=1e-5)
    assert norms.spectral[39, 0, 0] == 0.0  # s = 0.01: the norm itself underflows


def _positive_relu_layer(radius):
    # Entries of S, h and b positive: Z stays positive, σ' = 1, Ω(i+k, i) = S^k, and the
    # largest Lyapunov exponent is log ρ(S) = log radius (the Perron root).
    d = 6
    rng = np.random.default_rng(4)
    S = rng.uniform(size=(d, d))
    S = S / np.max(np.abs(np.linalg.eigvals(S))) * radius
    W = 0.1 * rng.standard_normal((d, 2))
    return jax.device_put(dj.LayerParams(W=W, S=S, b=np.ones(d)))


@pytest.mark.parametrize("radius", [0.9, 1.05])
def test_lyapunov_exponents_on_a_network_with_a_known_answer(x64, radius):
    layer = _positive_relu_layer(radius)
    xs = random_inputs(6, (64, 2, 2), np.float64)
    bound, estimate, qr = jax.device_get(
        jax.jit(
            lambda layer, xs: (
                dj.diagnostics.decay_bound(layer, xs, activation="relu"),
                dj.diagnostics.lyapunov_exponent(
                    layer, xs, activation="relu", max_lag=32, min_lag=5
                ),
                dj.diagnostics.lyapunov_qr(layer, xs, activation="relu", burn_in=16),
            )
        )(layer, xs)
    )
    assert float(bound.max_sigma_prime) == 1.0
    # ‖S^k‖₂ = c ρ^k (1 + O((|λ₂|/ρ)^k)), |λ₂|/ρ ≈ 0.25 here: from lag 5 on the slope
    # is log ρ to ~1e-6 (measured 3e-7).
    assert abs(float(estimate.exponent) - np.log(radius)) < 1e-5
    # The per-lag estimate (1/k) log‖Ω‖ has the same limit, with error c/k.
    per_lag_error = np.abs(estimate.per_lag - np.log(radius))
    assert per_lag_error[-1] < per_lag_error[0] and per_lag_error[-1] < 0.02
    # QR: the frame must first align with the Perron vector; after a burn-in the
    # average growth is log ρ to ~1e-6 as well.
    assert abs(float(qr[0]) - np.log(radius)) < 1e-5


def test_lyapunov_diagonal_decay_agrees_with_qr_on_a_tanh_network(x64):
    # The test network of the report: d = 8, tanh, S orthogonal × 1.25, 4 sequences of
    # 128 random inputs. Both are finite-time estimates of the same λ₁ and differ by
    # finite-T effects, not by rounding: the QR estimates of the 4 single sequences
    # spread with a standard error ≈ 0.01, and the tolerance 0.04 is about 4 of those.
    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def estimates():
        layer = dj.init_layer(jax.random.key(0), 3, 8, dtype=jnp.float64)
        layer = layer._replace(S=1.25 * layer.S)
        xs = jax.random.normal(jax.random.key(1), (128, 4, 3), jnp.float64)
        return (
            dj.diagnostics.lyapunov_exponent(layer, xs, max_lag=64).exponent,
            dj.diagnostics.lyapunov_qr(layer, xs, burn_in=16),
            dj.diagnostics.decay_bound(layer, xs),
        )

    diagonal, qr_spectrum, bound = jax.device_get(estimates())
    qr = float(qr_spectrum[0])
    assert -1.0 < qr < 0.0  # contracting, not trivially so
    assert abs(float(diagonal) - qr) < 0.04, (diagonal, qr)
    assert np.all(np.diff(qr_spectrum) <= 0)
    assert qr <= np.log(float(bound.gamma))  # λ₁ ≤ log γ by the bound itself


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_decay_bound_holds(x64, activation):
    layer = jax.device_get(random_layer(7, 3, 5, np.float64, noise=0.0))  # S orthogonal
    layer = jax.device_put(layer._replace(S=2.0 * layer.S))
    xs = random_inputs(8, (24, 3, 3), np.float64)
    bound, logs = jax.device_get(
        jax.jit(
            lambda layer, xs: (
                dj.diagnostics.decay_bound(layer, xs, activation=activation),
                dj.diagnostics.omega_norms(layer, xs, activation=activation, log=True).spectral,
            )
        )(layer, xs)
    )
    assert float(bound.gamma) <= float(bound.gamma_a_priori) * (1 + 1e-12)
    np.testing.assert_allclose(float(bound.spectral_norm_S), 2.0, rtol=1e-12)
    lag = np.subtract.outer(np.arange(24), np.arange(24))
    lower = lag >= 0
    # log‖Ω(i+k, i)‖₂ ≤ k log γ for every sample, up to rounding.
    excess = logs[lower] - (lag[lower] * np.log(float(bound.gamma)))[:, None]
    assert np.all(excess <= 1e-9), excess.max()
    assert excess.max() > -50  # the bound is not vacuous by orders of magnitude everywhere


def test_what_is_undefined_is_nan_and_the_caveat_says_why(x64):
    # No Jacobian between two valid steps: nothing is bounded.
    layer = random_layer(9, 3, 4, np.float64)
    xs = random_inputs(10, (5, 3, 3), np.float64)
    empty = dj.diagnostics.decay_bound(layer, xs, lengths=jnp.array([0, 1, 1]))
    assert np.isnan(empty.gamma) and np.isnan(empty.max_sigma_prime)
    assert np.isfinite(dj.diagnostics.decay_bound(layer, xs, lengths=jnp.array([0, 2, 1])).gamma)
    # relu with every unit off (σ' = 0): Ω(i+k, i) = 0 exactly, no decay rate exists, and
    # the caveat says that rather than blaming the number of sequences.
    off = layer._replace(b=jnp.full_like(layer.b, -100.0))
    estimate = dj.diagnostics.lyapunov_exponent(off, xs, activation="relu")
    assert not bool(estimate.consistent)
    assert "are not finite: some Ω(i+k, i) is exactly zero" in estimate.caveat()
    # No sequence with two valid steps: nothing to average, and the caveat says so.
    empty = dj.diagnostics.lyapunov_exponent(layer, xs, lengths=jnp.array([1, 0, 1]))
    assert "no lag could be averaged: no sequence has two valid steps" in empty.caveat()
    # A gated layer over one step has no Jacobian either.
    gru = dj.init_rnn(jax.random.key(0), 3, (4,), 2, cell="gru", dtype=jnp.float64)
    assert np.isnan(dj.diagnostics.decay_bound(gru, xs[:1]).gamma)


def test_bad_input_is_named():
    layer = random_layer(0, 2, 3, np.float32)
    params = random_rnn(0, 2, (3,), 2, np.float32)
    xs = np.ones((5, 1, 2), np.float32)
    targets = np.zeros((5, 1), np.int32)
    with pytest.raises(ValueError, match="layer must be an int in \\[-1, 1\\)"):
        dj.diagnostics.omega_norms(params, xs, layer=1)
    with pytest.raises(ValueError, match="max_lag must be a positive int"):
        dj.diagnostics.omega_norms(layer, xs, max_lag=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        dj.diagnostics.omega_norms(layer, xs, activation="gelu")
    with pytest.raises(ValueError, match="xs has 3 features"):
        dj.diagnostics.omega_norms(layer, np.ones((5, 1, 3), np.float32))
    with pytest.raises(ValueError, match="needs T >= 3"):
        dj.diagnostics.lyapunov_exponent(layer, xs[:2])
    for max_lag in (1000, 5, 1):  # lags of T = 5 steps: 1 … 4, and a slope needs two
        with pytest.raises(
            ValueError,
            match=rf"max_lag must be an int in \[2, T - 1\] = \[2, 4\].*got max_lag = {max_lag}\. Leave it out",
        ):
            dj.diagnostics.lyapunov_exponent(layer, xs, max_lag=max_lag)
    with pytest.raises(
        ValueError, match=r"min_lag must be an int in \[1, 3\] \(below max_lag = 4\)"
    ):
        dj.diagnostics.lyapunov_exponent(layer, xs, max_lag=4, min_lag=4)
    with pytest.raises(ValueError, match="burn_in = 4 with T = 5"):
        dj.diagnostics.lyapunov_qr(layer, xs, burn_in=4)
    with pytest.raises(TypeError, match="params must be an RNNParams"):
        dj.diagnostics.gradient_flow(layer, xs, targets)
    with pytest.raises(ValueError, match="targets must have shape"):
        dj.diagnostics.gradient_flow(params, xs, targets[:4])
    with pytest.raises(ValueError, match="sigma_prime must have shape"):
        dj.diagnostics.error_flow_norms(jnp.ones((5, 1, 3)), jnp.ones((5, 1, 2)), jnp.eye(3))
    with pytest.raises(ValueError, match="norms must be a square"):
        dj.diagnostics.plot_triangle(np.ones((3, 4)))
    # A NaN input at step 2 poisons exactly the Ω(j, i) that pass through σ'(Z_2).
    xs[2, 0, 0] = np.nan
    spectral = np.asarray(jax.jit(dj.diagnostics.omega_norms)(layer, xs).spectral[..., 0])
    lag = np.subtract.outer(np.arange(5), np.arange(5))
    reaches_step_2 = (lag > 0) & (np.arange(5)[:, None] > 2)
    assert np.all(np.isnan(spectral[reaches_step_2]))
    assert np.all(np.isfinite(spectral[(lag >= 0) & ~reaches_step_2]))


def test_plots_are_written_without_a_display(tmp_path):
    flow = np.tril(np.exp(-np.subtract.outer(np.arange(8), np.arange(8)) / 3.0))
    figures = {
        "triangles.png": dj.diagnostics.plot_omega_triangles(flow, flow, title="test"),
        "decay.png": dj.diagnostics.plot_decay(
            -0.3 * np.arange(1, 6), gamma=1.1, exponent=-0.3, qr_exponent=-0.31
        ),
        "curves.png": dj.diagnostics.plot_training_curves({"omega": [3, 2, 1], "bptt": [3, 2, 1]}),
    }
    for name, figure in figures.items():
        figure.savefig(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_library_does_not_import_matplotlib():
    code = "import sys, dprnn_jax; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
