"""`jax.grad` through a plain `lax.scan`: the reference every other algorithm is tested
against.

A layer with `Autodiff()` is the textbook loop (`_model/forward.scan_layer`) with no
custom rule: JAX linearises and transposes it. `error_flow` is the same computation on
the DP's own terms: the tangent recurrence `t_{i+1} = t_i Ω(i+1, i)ᵀ…` is not written by
hand but obtained by transposing the one-step pull, and JAX transposes the resulting
scan back into one product per step — T−1 products, like BPTT.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import GradientAlgorithm


def autodiff_error_flow(injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
    """Δ as JAX's reverse mode computes it: the vjp of the forward tangent recurrence.

    The forward tangent map sends perturbations u_i of the pre-activations to
    `t_i = u_i + Ω(i, i−1) t_{i−1}`; Δ is its transpose applied to P.
    """
    T = injected.shape[0]
    earlier_steps = jacobian.sliced(0, T - 1).per_step

    def forward_tangents(perturbations):
        def step(t_previous, inputs):
            u, per_step = inputs
            # Ω(i, i−1) t: the transpose of the row-vector pull g ↦ g Ω(i, i−1).
            push = jax.linear_transpose(lambda g: jacobian.pull(g, per_step), t_previous)
            t = u + push(t_previous)[0]
            return t, t

        _, later = lax.scan(step, perturbations[0], (perturbations[1:], earlier_steps))
        return jnp.concatenate([perturbations[:1], later])

    _, transpose = jax.vjp(forward_tangents, jnp.zeros_like(injected))
    (delta,) = transpose(injected)
    products = jnp.asarray(T - 1, jnp.int32)
    return ErrorFlow(delta, products, products)


@dataclasses.dataclass(frozen=True)
class Autodiff(GradientAlgorithm):
    """`jax.grad` through a plain `lax.scan` (no custom rule): the reference.

    Example:
        >>> Autodiff().uses_custom_vjp
        False
    """

    name = "autodiff"
    uses_custom_vjp = False

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        return autodiff_error_flow(injected, jacobian)

    def closed_form_products(self, T: int) -> int:
        return T - 1
