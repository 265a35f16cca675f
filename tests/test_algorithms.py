"""Gradient algorithms as values: construction, equality, the string form, the protocol.

Every algorithm in the registry computes Δ_i = P_i + Σ_{j>i} P_j Ω(j, i) through the
`StepJacobian` protocol alone, so it must give the same Δ for a Jacobian that is not an
Elman layer's: here explicit random matrices, against the sum written out directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE, assert_trees_close, random_inputs

import dprnn_jax as dj
from dprnn_jax.backward import ALGORITHMS, ElmanJacobian, StepJacobian

EXACT = {name: cls() for name, cls in ALGORITHMS.items()} | {
    "omega block=3": dj.Omega(block=3),
    "omega block=20": dj.Omega(block=20),
    "omega tol=0": dj.Omega(tol=0.0),
}


class DenseJacobian(StepJacobian, NamedTuple("_Dense", [("matrices_", jax.Array)])):
    """Ω(i+1, i) given as explicit (m, d, d) matrices per step: not an Elman layer."""

    __slots__ = ()

    @property
    def per_step(self):
        return self.matrices_

    def with_per_step(self, per_step):
        return DenseJacobian(per_step)

    def pull(self, cotangent, per_step):
        return jnp.einsum("...a,...ab->...b", cotangent, per_step)


def direct_sum(injected, matrices):
    """Δ_i = Σ_{j≥i} P_j Ω(j, i), every product written out (numpy, float64)."""
    P, A = np.asarray(injected, np.float64), np.asarray(matrices, np.float64)
    T = P.shape[0]
    delta = np.zeros_like(P)
    for i in range(T):
        for j in range(i, T):
            g = P[j]
            for t in range(j - 1, i - 1, -1):
                g = np.einsum("va,vab->vb", g, A[t])
            delta[i] += g
    return delta


@pytest.mark.parametrize("T", [1, 2, 7, 19])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_algorithm_through_the_protocol(T, dtype, x64):
    """Each exact algorithm, given a non-Elman Jacobian, reproduces the direct sum."""
    injected = random_inputs(T, (T, 2, 3), dtype)
    matrices = 0.6 * random_inputs(T + 100, (T, 2, 3, 3), dtype)
    expected = direct_sum(injected, matrices)
    rtol = {"float32": 1e-4, "float64": 1e-10}[dtype]

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def every_delta(injected, matrices):
        jacobian = DenseJacobian(matrices)
        return {label: a.error_flow(injected, jacobian).delta for label, a in EXACT.items()}

    for label, delta in every_delta(injected, matrices).items():
        assert delta.dtype == jnp.dtype(dtype), label
        scale = np.max(np.abs(expected))
        error = np.max(np.abs(np.asarray(delta, np.float64) - expected)) / scale
        assert error <= rtol, f"{label}: max relative error {error:.2e} > {rtol:.0e}"


def test_dense_and_elman_jacobians_agree(x64):
    """`ElmanJacobian.matrices` is S diag(σ'), and its `pull` is x ↦ x @ matrices."""
    k_s, k_d, k_g = jax.random.split(jax.random.key(1), 3)
    S = jax.random.normal(k_s, (4, 4), jnp.float64)
    sigma_prime = jax.random.uniform(k_d, (5, 2, 4), jnp.float64)
    g = jax.random.normal(k_g, (5, 2, 4), jnp.float64)
    elman = ElmanJacobian(S, sigma_prime)
    dense = elman.matrices(elman.per_step, g)
    chex.assert_trees_all_close(dense, S * sigma_prime[..., None, :], rtol=1e-15, atol=0)
    chex.assert_trees_all_close(
        elman.pull(g, sigma_prime), DenseJacobian(dense).pull(g, dense), rtol=1e-12, atol=0
    )
    # The protocol's generic `matrices` (pulling basis rows) matches the closed form.
    chex.assert_trees_all_close(
        StepJacobian.matrices(elman, sigma_prime, g), dense, rtol=1e-12, atol=1e-14
    )


def test_truncation_through_the_protocol(x64):
    """Truncated Ω and truncated BPTT keep exactly the lags ≤ K, for any Jacobian."""
    T, K = 9, 3
    k_p, k_a = jax.random.split(jax.random.key(3))
    injected = jax.random.normal(k_p, (T, 1, 2), jnp.float64)
    matrices = jax.random.normal(k_a, (T, 1, 2, 2), jnp.float64)
    P, A = np.asarray(injected), np.asarray(matrices)
    expected = np.zeros_like(P)
    for i in range(T):
        for j in range(i, min(i + K, T - 1) + 1):
            g = P[j]
            for t in range(j - 1, i - 1, -1):
                g = np.einsum("va,vab->vb", g, A[t])
            expected[i] += g
    for algorithm in (dj.Omega(truncation=K), dj.BPTT(truncation=K)):
        delta = algorithm.error_flow(injected, DenseJacobian(matrices)).delta
        np.testing.assert_allclose(delta, expected, rtol=1e-10, atol=1e-12, err_msg=str(algorithm))


# ------------------------------------------------------------------ values and options


def test_algorithms_are_frozen_hashable_values():
    a, b = dj.Omega(truncation=32), dj.Omega(truncation=32)
    assert a == b and hash(a) == hash(b)
    assert a != dj.Omega(truncation=31) and a != dj.BPTT(truncation=32)
    assert len({dj.Omega(), dj.Omega(), dj.BPTT(), dj.Naive()}) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.truncation = 3
    assert str(a) == "Omega(truncation=32)" and str(dj.BPTT()) == "BPTT()"
    # Static configuration of a compiled program: usable as a jit static argument.
    f = jax.jit(lambda x, algorithm: x * 2, static_argnums=1)
    assert float(f(1.0, a)) == 2.0


def test_registry_names_every_algorithm():
    assert dj.METHODS == tuple(ALGORITHMS) == dj.backward.METHODS
    assert set(dj.METHODS) == {"omega", "bptt", "naive", "scan", "rtrl", "autodiff"}
    for name, cls in ALGORITHMS.items():
        assert cls.name == name
        assert dj.backward.resolve_method(name) == cls()


@pytest.mark.parametrize(
    "algorithm",
    [
        dj.Omega(),
        dj.Omega(truncation=4, tol=1e-3),
        dj.Omega(block=8),
        dj.BPTT(truncation=0),
        dj.Naive(),
        dj.ParallelScan(),
        dj.RTRL(),
        dj.Autodiff(),
    ],
    ids=str,
)
def test_to_dict_round_trip(algorithm):
    record = json.loads(json.dumps(algorithm.to_dict()))
    assert dj.backward.algorithm_from_dict(record) == algorithm


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: dj.Omega(truncation=-1), "truncation must be a non-negative Python int"),
        (lambda: dj.Omega(truncation=1.5), "truncation must be a non-negative Python int"),
        (lambda: dj.BPTT(truncation=True), "truncation must be a non-negative Python int"),
        (lambda: dj.Omega(tol=-0.1), "tol must be a finite float ≥ 0"),
        (lambda: dj.Omega(tol=float("nan")), "tol must be a finite float ≥ 0"),
        (lambda: dj.Omega(tol="small"), "tol must be a non-negative Python float"),
        (lambda: dj.Omega(block=0), "block must be a positive int, got 0"),
        (lambda: dj.Omega(block=4, truncation=2), "block cannot be combined"),
        (lambda: dj.Omega(block=4, tol=0.1), "block cannot be combined"),
    ],
)
def test_invalid_options_fail_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_options_an_algorithm_does_not_take_are_type_errors():
    with pytest.raises(TypeError):
        dj.Naive(truncation=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="static Python int"):
        dj.Omega(block=jnp.int32(4))


def test_resolve_method_errors():
    resolve = dj.backward.resolve_method
    assert resolve("omega", truncation=3, tol=None) == dj.Omega(truncation=3)
    with pytest.raises(ValueError, match=r"options belong inside it.*Omega\(truncation=3\)"):
        resolve(dj.Omega(), truncation=3)
    with pytest.raises(ValueError, match="method must be one of"):
        resolve("adjoint")
    with pytest.raises(TypeError, match=r"write method=Omega\(\)"):
        resolve(dj.Omega)
    with pytest.raises(TypeError, match="method must be a name"):
        resolve(3)
    with pytest.raises(ValueError, match="tol is an option of methods"):
        resolve("bptt", tol=0.1)


def test_object_and_string_forms_give_the_same_gradient(x64):
    """`method="omega", truncation=K` means `Omega(truncation=K)`: the same program."""
    params = dj.init_rnn(jax.random.key(0), 3, (5,), 4, dtype=jnp.float64)
    xs = random_inputs(1, (9, 2, 3), jnp.float64)
    ys = jnp.zeros((9, 2), jnp.int32)

    forms = [
        (dict(method="omega", truncation=3), dj.Omega(truncation=3)),
        (dict(method="omega", block=4), dj.Omega(block=4)),
        (dict(method="bptt", truncation=2), dj.BPTT(truncation=2)),
        (dict(method="scan"), dj.ParallelScan()),
    ]

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def both_forms(params):
        def grad(**kwargs):
            return jax.grad(dj.sequence_loss)(params, xs, ys, **kwargs)

        return [(grad(**options), grad(method=algorithm)) for options, algorithm in forms]

    for by_name, by_object in both_forms(params):
        assert_trees_close(by_name, by_object, rtol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 3, 8, 17])
def test_count_products_for_every_algorithm(T):
    """The in-loop counters equal each algorithm's closed form, options included."""
    algorithms = [cls() for cls in ALGORITHMS.values()] + [
        dj.Omega(truncation=2),
        dj.Omega(block=3),
        dj.BPTT(truncation=4),
    ]
    for algorithm in algorithms:
        count = dj.count_products(algorithm, T)
        assert count.useful == count.closed_form, algorithm
        assert count.useful <= count.performed, algorithm
    adaptive = dj.count_products(dj.Omega(tol=0.1), T)
    assert adaptive.closed_form is None and adaptive.useful <= T * (T - 1) // 2
