"""`tol=ε`: the adaptive Ω fill (`_adaptive.py`) and what it guarantees.

Contractive layer (ρ = ‖S‖₂ · max σ' < 1): the fill stops after K_eff ≪ T−1 diagonals
and ‖Δ_tol − Δ‖_F ≤ ρ/(1−ρ) · ε · ‖Δ_tol‖_F. Expanding layer: no diagonal is ever
negligible, the fill falls back to all T−1 diagonals and the gradient is exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import RTOL, max_relative_error

import dprnn_jax as dj
from dprnn_jax.backward import ElmanJacobian

T, M, D, N = 24, 2, 4, 3
TOL = 1e-3


def relu_layers(dtype):
    """Two ReLU layers with positive inputs and biases (σ' = 1 at every step):
    a contractive one (‖S‖₂ = 0.5) and an expanding one (S = 1.1 I + 0.05)."""
    k_w, k_s, k_x, k_y = jax.random.split(jax.random.key(0), 4)
    W = jnp.abs(jax.random.normal(k_w, (D, N), dtype))
    b = jnp.full((D,), 0.1, dtype)
    S = jax.random.normal(k_s, (D, D), dtype)
    contractive = dj.LayerParams(W, 0.5 * S / jnp.linalg.norm(S, 2), b)
    expanding = dj.LayerParams(W, 1.1 * jnp.eye(D, dtype=dtype) + 0.05, b)
    xs = jnp.abs(jax.random.normal(k_x, (T, M, N), dtype))
    hs_bar = jax.random.normal(k_y, (T, M, D), dtype)
    return contractive, expanding, xs, hs_bar


def layer_loss(params, xs, hs_bar, **options):
    return jnp.sum(dj.rnn_layer(params, xs, activation="relu", **options) * hs_bar)


@jax.jit
def adaptive_results(layers, xs, hs_bar):
    """Under jit and vmap (over the two layers): report, Δ_tol, Δ and gradients."""

    def one(params):
        report = dj.tolerance_report(params, xs, hs_bar, tol=TOL, activation="relu")
        hs = dj.rnn_layer(params, xs, activation="relu")
        sigma_prime = (hs > 0).astype(hs.dtype)
        injected = hs_bar * sigma_prime
        jacobian = ElmanJacobian(params.S, sigma_prime)
        adaptive = dj.Omega(tol=TOL).error_flow(injected, jacobian)
        exact = dj.Omega().error_flow(injected, jacobian).delta
        grad_tol = jax.grad(layer_loss)(params, xs, hs_bar, method="omega", tol=TOL)
        grad_exact = jax.grad(layer_loss)(params, xs, hs_bar, method="autodiff")
        grad_zero = jax.grad(layer_loss)(params, xs, hs_bar, method="omega", tol=0.0)
        return report, adaptive.delta, exact, grad_tol, grad_exact, grad_zero

    return jax.vmap(one)(layers)


def test_contractive_stops_early_within_bound_and_expanding_runs_to_the_end(dtype):
    contractive, expanding, xs, hs_bar = relu_layers(dtype)
    layers = jax.tree.map(lambda a, b: jnp.stack([a, b]), contractive, expanding)
    report, delta_tol, delta, grad_tol, grad_exact, grad_zero = adaptive_results(layers, xs, hs_bar)
    rtol = RTOL[jnp.dtype(dtype)]
    diagonals = np.asarray(report.diagonals)
    assert (np.asarray(report.max_diagonals) == T - 1).all()
    # Contractive: ρ = ‖S‖₂ · max σ' = 0.5, so K_eff ≈ log(ε)/log(ρ) ≪ T − 1.
    rho = 0.5
    assert 1 <= diagonals[0] < T - 1 - 10, diagonals
    assert report.last_relative_size[0] <= TOL
    error = np.linalg.norm(np.asarray(delta_tol[0] - delta[0], np.float64))
    bound = rho / (1 - rho) * TOL * np.linalg.norm(np.asarray(delta_tol[0], np.float64))
    assert 0 < error <= bound, (error, bound)
    # The layer's gradient with tol is exactly the one implied by Δ_tol: ∂C/∂W = Σ Δᵀ x.
    expected_W = jnp.einsum("tmd,tmn->dn", delta_tol[0], xs)
    assert max_relative_error(grad_tol.W[0], expected_W) <= rtol
    # Expanding: every diagonal matters; all T − 1 are filled and the gradient is exact.
    assert diagonals[1] == T - 1
    assert report.last_relative_size[1] > TOL
    exact_expanding = jax.tree.map(lambda g: g[1], grad_exact)
    assert max_relative_error(jax.tree.map(lambda g: g[1], grad_tol), exact_expanding) <= rtol
    # tol = 0 never stops early: exact on both layers.
    assert max_relative_error(grad_zero, grad_exact) <= rtol


def test_tol_and_truncation_combine(x64):
    contractive, expanding, xs, hs_bar = relu_layers(jnp.float64)
    report = dj.tolerance_report(expanding, xs, hs_bar, tol=TOL, activation="relu", truncation=5)
    assert int(report.diagonals) == 5 and report.max_diagonals == 5
    grads = [
        jax.jit(jax.grad(functools.partial(layer_loss, method="omega", truncation=5, **tol)))(
            expanding, xs, hs_bar
        )
        for tol in ({"tol": TOL}, {})
    ]
    assert max_relative_error(grads[0], grads[1]) <= RTOL[jnp.dtype("float64")]


@pytest.mark.parametrize(
    "method, tol, match",
    [
        ("omega", -1.0, "finite float"),
        ("omega", float("nan"), "finite float"),
        ("omega", float("inf"), "finite float"),
        ("omega", "0.1", "Python float"),
        ("omega", True, "Python float"),
        ("omega", jnp.asarray(0.1), "Python float"),
        ("bptt", 0.1, "tol is an option"),
        ("scan", 0.1, "tol is an option"),
        ("autodiff", 0.1, "tol is an option"),
    ],
)
def test_invalid_tol_is_rejected(method, tol, match):
    layer = dj.init_layer(jax.random.key(0), 2, 3)
    with pytest.raises(ValueError, match=match):
        dj.rnn_layer(layer, jnp.ones((4, 1, 2)), method=method, tol=tol)


def test_report_checks_its_arguments():
    layer = dj.init_layer(jax.random.key(0), 2, 3)
    with pytest.raises(ValueError, match="hs_bar"):
        dj.tolerance_report(layer, jnp.ones((4, 1, 2)), jnp.ones((4, 1, 2)), tol=0.1)
    with pytest.raises(ValueError, match="tol must"):
        dj.tolerance_report(layer, jnp.ones((4, 1, 2)), jnp.ones((4, 1, 3)), tol=-0.1)


def test_tol_is_only_a_heuristic_when_not_contractive(x64):
    """S = diag(0.1, 1.5), σ' = 1, one error (1, 1e-6) at the last step: the diagonals
    0.1^k and 1.5^k·1e-6 first shrink below tol, then grow; the fill stops early and
    misses a tail far larger than tol (documented: no guarantee when ρ ≥ 1)."""
    T = 30
    S = jnp.diag(jnp.array([0.1, 1.5]))
    sigma_prime = jnp.ones((T, 1, 2))
    injected = jnp.zeros((T, 1, 2)).at[-1, 0].set(jnp.array([1.0, 1e-6]))
    jacobian = ElmanJacobian(S, sigma_prime)
    flow = dj.Omega(tol=1e-2).error_flow(injected, jacobian)
    exact = dj.Omega().error_flow(injected, jacobian).delta
    assert int(flow.diagonals) == 2
    relative_error = jnp.linalg.norm(flow.delta - exact) / jnp.linalg.norm(flow.delta)
    assert relative_error > 10 * 1e-2
