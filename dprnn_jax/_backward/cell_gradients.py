"""Every gradient of a cell scan from its total errors Δ (docs/theory.md#any-cell).

Once `Δ_t = ∂C/∂carry_t` is known, the cotangents of θ and of every x_t are ONE vmapped
vjp of the cell over all steps, taken at `(carry_{t−1}, x_t)` with cotangent Δ_t; the
θ-cotangents of the steps are summed by the transpose of the broadcast itself. The
initial carry's cotangent is `Δ_0` pulled through step 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .cell_jacobian import CarryLayout, CellJacobian, linearise_cell


class CellResiduals(NamedTuple):
    """What a cell scan's backward needs: the inputs and the stacked carries."""

    params: Any
    xs: jax.Array
    carry0: Any
    carries: Any


def previous_carries(residuals: CellResiduals):
    """carry_{t−1} for every t: carry0 then carries[:-1]."""
    return jax.tree.map(
        lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]]), residuals.carry0, residuals.carries
    )


def is_differentiable(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def injected_and_jacobian(
    step: Callable, residuals: CellResiduals, carries_bar
) -> tuple[jax.Array, CellJacobian, CarryLayout]:
    """P_t = the cotangent delivered to carry_t, flattened to (T, m, D), and the
    Jacobians Ω(i+1, i) at (carry_i, x_{i+1}) (the last row is never used by Δ)."""
    params, xs, _, carries = residuals
    layout = CarryLayout.of(jax.tree.map(lambda leaf: leaf[0], carries))
    injected = layout.flatten(carries_bar, batch_dims=2)
    xs_after = jnp.concatenate([xs[1:], xs[-1:]])
    return injected, linearise_cell(step, params, carries, xs_after), layout


def cotangents_from_delta(step: Callable, residuals: CellResiduals, delta, layout: CarryLayout):
    """`(∂C/∂params, ∂C/∂xs, ∂C/∂carry0)` from Δ (T, m, D): one vmapped vjp."""
    params, xs, carry0, _ = residuals
    before = previous_carries(residuals)
    delta = layout.unflatten(delta)
    if is_differentiable(xs):

        def all_steps(params, before, xs):
            return jax.vmap(step, in_axes=(None, 0, 0))(params, before, xs)

        _, pullback = jax.vjp(all_steps, params, before, xs)
        params_bar, before_bar, xs_bar = pullback(delta)
    else:  # integer inputs (tokens) have no cotangent

        def all_steps(params, before):
            return jax.vmap(step, in_axes=(None, 0, 0))(params, before, xs)

        _, pullback = jax.vjp(all_steps, params, before)
        (params_bar, before_bar), xs_bar = pullback(delta), None
    carry0_bar = jax.tree.map(lambda leaf: leaf[0], before_bar)
    del carry0
    return params_bar, xs_bar, carry0_bar
