"""Forward mode and higher derivatives, as docs/algorithms.md#forward-mode states them:
every method but `Autodiff()` is a `jax.custom_vjp`, so forward mode (`jax.jvp`,
`jax.jacfwd`) through it raises JAX's own error, and `method=Autodiff()` is the route for
forward mode; reverse over reverse (grad of grad) and `jax.hessian` (forward over
reverse) work and agree with `Autodiff()`'s."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dprnn_jax as dj
from dprnn_jax.backward import ALGORITHMS

T, M, N, D, K = 4, 2, 2, 3, 2
TOL = 1e-10  # float64, two programs that may sum in another order
JVP_ERROR = r"can't apply forward-mode autodiff \(jvp\) to a custom_vjp function"


def _problem():
    params = dj.init_rnn(jax.random.key(0), N, (D,), K)
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.float64), params)
    xs = jax.random.normal(jax.random.key(1), (T, M, N), jnp.float64)
    ys = jax.random.randint(jax.random.key(2), (T, M), 0, K)
    return params, xs, ys


def _loss_of_inputs(method, params, ys):
    return lambda xs: dj.sequence_loss(params, xs, ys, method=method)


@pytest.mark.parametrize("name", [name for name in ALGORITHMS if name != "autodiff"])
def test_forward_mode_through_a_custom_vjp_method_raises_jaxs_error(x64, name):
    params, xs, ys = _problem()
    loss = _loss_of_inputs(ALGORITHMS[name](), params, ys)
    with pytest.raises(TypeError, match=JVP_ERROR):
        jax.jacfwd(loss)(xs)
    with pytest.raises(TypeError, match=JVP_ERROR):
        jax.jvp(loss, (xs,), (jnp.ones_like(xs),))


def test_forward_mode_with_autodiff_gives_the_gradient(x64):
    params, xs, ys = _problem()
    forward = jax.jit(jax.jacfwd(_loss_of_inputs(dj.Autodiff(), params, ys)))(xs)
    reverse = jax.jit(jax.grad(_loss_of_inputs(dj.Omega(), params, ys)))(xs)
    np.testing.assert_allclose(forward, reverse, rtol=TOL, atol=TOL)


def test_hessian_and_grad_of_grad_through_omega_agree_with_autodiff(x64):
    params, xs, ys = _problem()
    omega, autodiff = (_loss_of_inputs(m, params, ys) for m in (dj.Omega(), dj.Autodiff()))

    def grad_of_grad(loss):
        return jax.grad(lambda xs: jnp.sum(jax.grad(loss)(xs) ** 2))

    for derivative in (jax.hessian, grad_of_grad):
        got = jax.jit(derivative(omega))(xs)
        expected = jax.jit(derivative(autodiff))(xs)
        assert got.shape == expected.shape
        assert np.abs(expected).max() > 1e-3  # a derivative that is not zero
        np.testing.assert_allclose(got, expected, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("method", [dj.Naive(), dj.Omega(tol=1e-3)], ids=str)
def test_grad_of_grad_is_refused_where_the_backward_loops_while(x64, method):
    # Their backward loops a number of times that is not static (how many diagonals are
    # needed, the lags of each step), which JAX's reverse mode refuses; jax.hessian
    # (forward over reverse) still works.
    params, xs, ys = _problem()
    loss = _loss_of_inputs(method, params, ys)
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for"):
        jax.jit(jax.grad(lambda xs: jnp.sum(jax.grad(loss)(xs) ** 2)))(xs)
    assert jax.jit(jax.hessian(loss))(xs).shape == (T, M, N, T, M, N)
