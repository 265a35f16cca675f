"""The two corrections to seed 000 (DESIGN.md §3), pinned by hand-worked numbers.

T = 3, d = 1, one tanh unit with a linear loss L = Σ_t c_t h_t, so every quantity is a
scalar that can be written out by hand:

    P_t = c_t σ'_t                                   (error injected at z_t)
    Δ_2 = P_2
    Δ_1 = P_1 + P_2 s σ'_1
    Δ_0 = P_0 + P_1 s σ'_0 + P_2 s² σ'_1 σ'_0        (each path 2 → 0 counted once)

The seed's literal recurrence Δ_i = P_i + Σ_{j>i} Δ_j Ω(j, i) puts the TOTAL Δ_j inside
the sum; Δ_1 already contains the path 2 → 1, so Δ_0 picks up P_2 s² σ'_1 σ'_0 twice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ALGORITHMS, random_inputs, random_layer

import dprnn_jax as dj

W, S, B = 0.7, -1.3, 0.1
XS = (0.5, -1.0, 2.0)
C = (0.3, -0.8, 1.1)
H0 = 0.2


def forward_by_hand():
    h, hs, sigma_primes = H0, [], []
    for x in XS:
        h = np.tanh(W * x + S * h + B)
        hs.append(h)
        sigma_primes.append(1 - h * h)
    return hs, sigma_primes


def exact_deltas_by_hand():
    _, sp = forward_by_hand()
    P = [c * s for c, s in zip(C, sp)]
    delta_2 = P[2]
    delta_1 = P[1] + P[2] * S * sp[1]
    delta_0 = P[0] + P[1] * S * sp[0] + P[2] * S**2 * sp[1] * sp[0]
    return [delta_0, delta_1, delta_2]


def seed_literal_deltas_by_hand():
    """Δ_i = P_i + Σ_{j>i} Δ_j Ω(j, i) with the total Δ_j, as seed 000 writes it."""
    _, sp = forward_by_hand()
    P = [c * s for c, s in zip(C, sp)]
    omega = {(1, 0): S * sp[0], (2, 1): S * sp[1], (2, 0): S * sp[1] * S * sp[0]}
    delta_2 = P[2]
    delta_1 = P[1] + delta_2 * omega[2, 1]
    delta_0 = P[0] + delta_1 * omega[1, 0] + delta_2 * omega[2, 0]
    return [delta_0, delta_1, delta_2]


def loss_of_preactivation_shifts(eps, method):
    """L = Σ c_t h_t with z_t shifted by eps_t, so ∂L/∂eps_t = ∂L/∂z_t = Δ_t.

    The shift enters as a second input feature with weight 1: z_t = W x_t + 1·eps_t + S h + b.
    """
    layer = dj.LayerParams(W=jnp.array([[W, 1.0]]), S=jnp.array([[S]]), b=jnp.array([B]))
    xs = jnp.stack([jnp.array(XS), eps], axis=-1)[:, None, :]  # (T=3, m=1, n=2)
    hs = dj.rnn_layer(layer, xs, jnp.array([[H0]]), method=method)
    return jnp.sum(jnp.array(C) * hs[:, 0, 0])


@pytest.mark.parametrize("method", ALGORITHMS)
def test_hand_worked_example_matches_every_method(method, x64):
    deltas = jax.jit(jax.grad(loss_of_preactivation_shifts), static_argnums=1)(np.zeros(3), method)
    np.testing.assert_allclose(deltas, exact_deltas_by_hand(), rtol=1e-12)


def test_seed_literal_recurrence_double_counts_paths(x64):
    autodiff = jax.jit(jax.grad(loss_of_preactivation_shifts), static_argnums=1)(
        np.zeros(3), "autodiff"
    )
    literal = np.array(seed_literal_deltas_by_hand())
    exact = np.array(exact_deltas_by_hand())
    # Steps 1 and 2 agree; step 0 differs by exactly the doubly counted path 2 → 0.
    np.testing.assert_allclose(literal[1:], autodiff[1:], rtol=1e-12)
    _, sp = forward_by_hand()
    doubled_path = C[2] * sp[2] * S**2 * sp[1] * sp[0]
    np.testing.assert_allclose(literal[0] - exact[0], doubled_path, rtol=1e-12)
    assert abs(literal[0] - float(autodiff[0])) > 1e-3


def test_separated_powers_of_S_are_wrong_when_d_exceeds_one(x64):
    """Seed: Ω(j, i) = (Sᵀ)^{j−i} ⊙ ∏σ'. Exact: the ordered product S diag(σ'_{j−1}) ⋯ S diag(σ'_i)."""
    layer = jax.device_get(random_layer(0, 2, 3, np.float64, noise=0.0))
    layer = layer._replace(b=np.array([0.5, -0.4, 0.9]))
    xs = random_inputs(1, (4, 1, 2), np.float64)
    omega, hs = jax.device_get(
        jax.jit(lambda layer, xs: (dj.omega_matrix(layer, xs), dj.rnn_layer(layer, xs)))(layer, xs)
    )
    sp = 1 - hs[:, 0] ** 2  # (T, d)
    k, i = 3, 0
    ordered = np.eye(3)
    for t in range(i, i + k):
        ordered = layer.S @ np.diag(sp[t]) @ ordered
    np.testing.assert_allclose(omega[i + k, i, 0], ordered, rtol=1e-12)
    separated = np.linalg.matrix_power(layer.S, k) * np.prod(sp[i : i + k], axis=0)[None, :]
    assert np.max(np.abs(separated - ordered)) > 1e-2
