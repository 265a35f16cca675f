r"""UORO: an unbiased rank-one estimate of RTRL's influence matrix (Tallec & Ollivier,
"Unbiased Online Recurrent Optimization", ICLR 2018).

Per sequence, UORO carries a vector `s̃` (the carry's width D) and a vector `θ̃` (|θ|)
whose outer product `s̃ θ̃ᵀ` is an unbiased estimate of `M_t = ∂carry_t/∂θ`. With the
one-step Jacobian `J_t` and immediate influence `I_t = ∂carry_t/∂θ|direct`, and random
signs ν (each entry ±1):

.. math::

    s̃_t = ρ_0\, J_t s̃_{t-1} + ρ_1\, ν, \qquad
    θ̃_t = θ̃_{t-1} / ρ_0 + (νᵀ I_t) / ρ_1,

    ρ_0 = \sqrt{‖θ̃_{t-1}‖ / ‖J_t s̃_{t-1}‖}, \quad ρ_1 = \sqrt{‖νᵀ I_t‖ / ‖ν‖}

(the scalings that minimise the variance), so that `E[s̃_t θ̃_tᵀ] = M_t`; the gradient of
step t's loss is estimated by `(h̄_t · s̃_t) θ̃_t`. Per step: one forward-mode product of
the cell (`J s̃`) and one reverse-mode product per sequence (`νᵀ I`): the cost of a few
forward steps, O(D + |θ|) memory per sequence. Every cell.

As `method=` (the whole-sequence gradient it accumulates), the signs of step t come from
`jax.random.fold_in(jax.random.key(seed), t)`: the same estimate at every call with the
same seed. To train, use the online API with a fresh key per sequence
(`dj.online_gradient(..., UORO(), key=…)`, `_model/online.py`). The cotangents of a
layer's inputs and initial carry come from the BPTT recurrence, as RTRL's inputs do.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from .._cells.base import Linearisation
from .._cells.linearisation import CarryLayout
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import GradientAlgorithm
from .bptt import bptt_error_flow

# Keeps the scalings finite when a norm is zero (the first step, a dead unit).
EPSILON = 1e-7


def random_signs(key: jax.Array, shape, dtype) -> jax.Array:
    """±1 entries, each with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def uoro_update(step, theta, carry, x, s_tilde, theta_tilde, signs):
    """One UORO step for every sequence of a batch.

    Args:
        step: `step(theta, carry (m, D), x) -> carry (m, D)`, rows independent.
        theta: the flat parameters (|θ|,).
        carry: the carries before the step (m, D).
        x: the step's inputs (a pytree of (m, …) rows).
        s_tilde: s̃ (m, D); theta_tilde: θ̃ (m, |θ|); signs: ν (m, D).

    Returns:
        `(new carry, s̃_t, θ̃_t)`.
    """
    new_carry, pushed = jax.jvp(lambda c: step(theta, c, x), (carry,), (s_tilde,))

    # νᵀ I_t per sequence: the batch's pullback of each sequence's signs placed in its
    # own row (the step differentiated on the whole batch, as it runs).
    _, pullback = jax.vjp(lambda th: step(th, carry, x), theta)
    placed = jnp.eye(carry.shape[0], dtype=signs.dtype)[:, :, None] * signs[None]
    projected = jax.vmap(lambda cotangent: pullback(cotangent)[0])(placed)  # (m, |θ|)
    norm = lambda a: jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True))  # noqa: E731
    rho0 = jnp.sqrt((norm(theta_tilde) + EPSILON) / (norm(pushed) + EPSILON))
    rho1 = jnp.sqrt((norm(projected) + EPSILON) / (norm(signs) + EPSILON))
    return new_carry, rho0 * pushed + rho1 * signs, theta_tilde / rho0 + projected / rho1


def uoro_gradient(problem, carries_bar, key: jax.Array):
    """The whole-sequence UORO estimate of `(∂C/∂params)` from the stored carries,
    forward in time; step t's signs from `fold_in(key, t)`."""
    flat, unravel = ravel_pytree(problem.params)
    layout = CarryLayout.of(problem.carry0)
    previous = jax.tree.map(
        lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]]), problem.carry0, problem.carries
    )
    bars = layout.flatten(carries_bar, batch_dims=2)
    m, width = bars.shape[1:]

    def step(theta, carry, x):
        return layout.flatten(problem.step(unravel(theta), layout.unflatten(carry), x))

    def one_step(state, inputs):
        s_tilde, theta_tilde, gradient = state
        t, carry, x, bar = inputs
        signs = random_signs(jax.random.fold_in(key, t), (m, width), bars.dtype)
        _, s_tilde, theta_tilde = uoro_update(step, flat, carry, x, s_tilde, theta_tilde, signs)
        gradient = gradient + jnp.einsum("v,vp->p", jnp.sum(bar * s_tilde, -1), theta_tilde)
        return (s_tilde, theta_tilde, gradient), None

    T = bars.shape[0]
    initial = (
        jnp.zeros((m, width), bars.dtype),
        jnp.zeros((m, flat.size), bars.dtype),
        jnp.zeros_like(flat),
    )
    inputs = (jnp.arange(T), layout.flatten(previous, batch_dims=2), problem.xs, bars)
    (_, _, gradient), _ = lax.scan(one_step, initial, inputs)
    return unravel(gradient)


@dataclasses.dataclass(frozen=True)
class UORO(GradientAlgorithm):
    """Unbiased Online Recurrent Optimization (Tallec & Ollivier 2018): a rank-one
    unbiased estimate of RTRL's influence matrix, for every cell; random, unbiased,
    of variance that grows with the network. As `method=` the signs come from `seed`
    (the same estimate at every call); the online API takes a key instead.

    Args:
        seed: the signs' seed in the `method=` form.

    Example:
        >>> UORO().name, UORO(seed=3).options()
        ('uoro', {'seed': 3})
    """

    seed: int = 0

    name = "uoro"
    takes_token_inputs = False
    sees_the_whole_step = True

    def __post_init__(self):
        if not isinstance(self.seed, int | np.integer) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be a Python int, got {self.seed!r}.")

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        # Δ itself (for the inputs' cotangents) by the BPTT recurrence, as RTRL.
        return bptt_error_flow(injected, jacobian)

    def cotangents(self, linearisation: Linearisation, carries_bar):
        problem = linearisation.step_problem()
        params_bar = uoro_gradient(problem, carries_bar, jax.random.key(self.seed))
        delta = self.error_flow(*linearisation.error_problem(carries_bar)).delta
        _, xs_bar, carry0_bar = linearisation.cotangents(delta)
        return problem.params_cotangent(params_bar), xs_bar, carry0_bar
