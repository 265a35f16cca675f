"""Every gradient of a cell scan from its total errors Δ (docs/theory.md#any-cell).

Once `Δ_t = ∂C/∂carry_t` is known, θ's and every x_t's cotangents are step t's pullback
applied to Δ_t, summed over t for θ. The forward loop stored each step's pullback
(`linearised_scan`), so nothing is evaluated again. The pullbacks of all steps are
applied at once as the transpose of the map `(θ̇, ẋ) ↦ (J^θ_t θ̇ + J^x_t ẋ_t)_t`, itself
the transpose of the pullback vmapped over the steps with θ̇ shared: transposing the
broadcast of θ̇ sums the steps inside the products (a weight's cotangent is one
(·, T·m) × (T·m, ·) product, run as `rows_product`), where vmapping the pullback itself
would first build one θ-cotangent per step. The initial carry's cotangent is `Δ_0`
pulled through step 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .cell_jacobian import CarryLayout, CellJacobian, floating_leaves
from .contractions import with_rows_products


class CellResiduals(NamedTuple):
    """What a cell scan's backward needs: the inputs, the stacked carries and every
    step's linearisation."""

    params: Any
    xs: Any  # a pytree of (T, m, …) arrays
    carry0: Any
    carries: Any
    jacobian: CellJacobian


def previous_carries(residuals: CellResiduals):
    """carry_{t−1} for every t: carry0 then carries[:-1]."""
    return jax.tree.map(
        lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]]), residuals.carry0, residuals.carries
    )


def injected_and_jacobian(
    step: Callable, residuals: CellResiduals, carries_bar
) -> tuple[jax.Array, CellJacobian, CarryLayout]:
    """P_t = the cotangent delivered to carry_t, flattened to (T, m, D), and the
    Jacobians Ω(i+1, i) at (carry_i, x_{i+1}) (the last row is never used by Δ)."""
    del step
    layout = residuals.jacobian.layout
    return layout.flatten(carries_bar, batch_dims=2), residuals.jacobian, layout


def cotangents_from_delta(step: Callable, residuals: CellResiduals, delta, layout: CarryLayout):
    """`(∂C/∂params, ∂C/∂xs, ∂C/∂carry0)` from Δ (T, m, D), by the stored pullbacks;
    ∂C/∂xs is the list of the cotangents of xs's floating leaves, None when it has none."""
    del step
    params, xs, _, _, jacobian = residuals
    # Row i holds step i+1's pullback (step 0's in the last row): rows 0 … T−2 meet
    # Δ_1 … Δ_{T−1}, and step 0, pulled back on its own for the initial carry, gives
    # its θ and x cotangents too. Slices rather than a roll of Δ and of x̄, which XLA
    # writes out as copies of the (T, m, ·) arrays.
    # The inputs' cotangents are those of their floating leaves, a list (`step_vjp`).
    floats = floating_leaves(xs)
    first_step = [leaf[-1] for leaf in jacobian.per_step]
    first = jacobian.pullback(first_step)(layout.unflatten(delta[0]))
    params_bar, carry0_bar = first[0], first[1]
    xs_bar = [leaf[None] for leaf in first[2]] if jacobian.with_input else None
    if delta.shape[0] > 1:
        later = jacobian.with_per_step([leaf[:-1] for leaf in jacobian.per_step])
        later_params_bar, later_xs_bar = with_rows_products(
            functools.partial(
                _step_and_input_cotangents, later, params, [leaf[1:] for leaf in floats]
            ),
            layout.unflatten(delta[1:]),
        )
        params_bar = jax.tree.map(jnp.add, later_params_bar, params_bar)
        if jacobian.with_input:
            xs_bar = [jnp.concatenate(pair) for pair in zip(xs_bar, later_xs_bar)]
    return params_bar, xs_bar, carry0_bar


def _step_and_input_cotangents(jacobian: CellJacobian, params, xs, delta_by_row):
    """`(Σ_t θ̄_t, (x̄_t)_t)`: the rows' pullbacks applied to the rows of Δ, as the
    transpose of the vmapped tangent map (module docstring); `xs` and x̄ are the lists
    of the inputs' floating leaves, x̄ None when there are none."""
    row_cotangent = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), delta_by_row
    )

    def tangent_map(row, params_dot, x_dot):
        # J^θ θ̇ + J^x ẋ of one step: the transpose of its pullback without the carry.
        def pullback(carry_bar):
            bars = jacobian.pullback(row)(carry_bar)
            return (bars[0], bars[2]) if jacobian.with_input else bars[0]

        dots = (params_dot, x_dot) if jacobian.with_input else params_dot
        (carry_dot,) = jax.linear_transpose(pullback, row_cotangent)(dots)
        return carry_dot

    def all_steps(params_dot, xs_dot):
        return jax.vmap(tangent_map, in_axes=(0, None, 0))(jacobian.per_step, params_dot, xs_dot)

    xs_dot = _spec(xs) if jacobian.with_input else None
    return jax.linear_transpose(all_steps, _spec(params), xs_dot)(delta_by_row)


def _spec(tree):
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), tree)
