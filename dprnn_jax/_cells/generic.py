"""Any cell, known only by its step: the generic linearisation (docs/theory.md#any-cell).

    StepCell(step) :: (params, xs (T, m, …), carry0) -> carries

`carry_t = step(params, carry_{t−1}, x_t)` for any pure, batched `step`. The forward loop
linearises every step as it runs it (`linearised_scan`: `jax.vjp` of the step, its
per-step residuals stored, those that depend on θ only stored once), so the Jacobians
`Ω(i+1, i) = ∂carry_{i+1}/∂carry_i` are the stored pullbacks (`CellJacobian`) and nothing
is evaluated again in the backward.

Once `Δ_t = ∂C/∂carry_t` is known, θ's and every x_t's cotangents are step t's pullback
applied to Δ_t, summed over t for θ. The pullbacks of all steps are applied at once as
the transpose of the map `(θ̇, ẋ) ↦ (J^θ_t θ̇ + J^x_t ẋ_t)_t`, itself the transpose of the
pullback vmapped over the steps with θ̇ shared: transposing the broadcast of θ̇ sums the
steps inside the products (a weight's cotangent is one (·, T·m) × (T·m, ·) product, run
as `rows_product`), where vmapping the pullback itself would first build one
θ-cotangent per step. The initial carry's cotangent is `Δ_0` pulled through step 0.

θ (`params`) and the inputs are pytrees whose non-floating leaves (step counters, RNG
keys, flags; tokens) are constants of the step and get no cotangent, as in `jax.grad`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.contractions import with_rows_products
from .base import Cell, Linearisation, StepProblem
from .linearisation import (
    CellJacobian,
    floating_leaves,
    input_row,
    is_differentiable,
    linearised_scan,
)


@dataclasses.dataclass(frozen=True)
class StepCell(Cell):
    """The cell of a step function `step(params, carry, x) -> carry` (hashable: equal
    for the same function)."""

    step: Callable

    def forward(self, params, xs, carry0):
        return plain_scan(self.step, params, xs, carry0)

    def linearise(self, params, xs, carry0):
        # θ's integer leaves are constants of the step, stored beside the residuals.
        floats, constants = StepConstants.split(params)
        carries, jacobian = linearised_scan(constants.bind(self.step), floats, xs, carry0)
        return carries, GenericLinearisation(
            self.step, floats, xs, carry0, carries, jacobian, constants
        )


def plain_scan(step, params, xs, carry0):
    """scan :: (carry0, xs (T, m, …)) -> carries stacked over T.

    Each step reads its input from the loop state, where the step before put it
    (`x_{t+1}` is fetched while `x_t` is used). XLA's CPU backend does not vectorise an
    elementwise fusion that reads several slices of the row a scan hands to the step
    straight out of `xs` (a GRU reads three gate blocks of its projected input: 2× slower
    at T = 128, m = 32, d = 128, docs/performance.md#gated-cells), but does when the row
    is a buffer of its own.
    """
    T = jax.tree.leaves(xs)[0].shape[0]

    def body(state, t):
        carry, x = state
        carry = step(params, carry, x)
        x_next = input_row(xs, jnp.minimum(t + 1, T - 1))
        # bfloat16 carries are stacked in float32 (`precision.stored`): in place on a CPU.
        return (carry, x_next), jax.tree.map(precision.stored, carry)

    _, carries = lax.scan(body, (carry0, input_row(xs, 0)), jnp.arange(T))
    dtypes = jax.tree.map(lambda leaf: leaf.dtype, carry0)
    return jax.tree.map(precision.loaded, carries, dtypes)


class StepConstants:
    """The leaves of θ that are not floating (step counters, RNG keys, flags): constants
    of the step, as `jax.grad` treats them. The algorithms see θ's floating leaves
    alone, a list, and the step with these bound (`bind`); `merge` puts a list of
    floating leaves back into θ's structure, None (no cotangent) at the constants.
    A pytree: the constants are its children, the structure is static."""

    def __init__(self, treedef, floating_mask, constants):
        self.treedef = treedef
        self.floating_mask = tuple(floating_mask)
        self.constants = tuple(constants)

    @classmethod
    def split(cls, params) -> tuple[list, StepConstants]:
        leaves, treedef = jax.tree.flatten(params)
        mask = [is_differentiable(leaf) for leaf in leaves]
        floats = [leaf for leaf, floating in zip(leaves, mask) if floating]
        constants = [leaf for leaf, floating in zip(leaves, mask) if not floating]
        return floats, cls(treedef, mask, constants)

    def merge(self, floats, constant=None):
        floats, constants = iter(floats), iter(self.constants)
        leaves = [
            next(floats) if floating else (next(constants) if constant is None else constant)
            for floating in self.floating_mask
        ]
        return jax.tree.unflatten(self.treedef, leaves)

    def bind(self, step):
        if not self.constants:
            # Equal for equal steps and structures: the jitted linearised step is reused.
            return _FloatStep(step, self.treedef)
        return lambda floats, carry, x: step(self.merge(floats), carry, x)

    def tree_flatten(self):
        return self.constants, (self.treedef, self.floating_mask)

    @classmethod
    def tree_unflatten(cls, static, constants):
        return cls(*static, constants)


jax.tree_util.register_pytree_node_class(StepConstants)


@dataclasses.dataclass(frozen=True)
class _FloatStep:
    """`step` taking θ as the list of its leaves (all floating)."""

    step: Callable
    treedef: Any

    def __call__(self, floats, carry, x):
        return self.step(jax.tree.unflatten(self.treedef, floats), carry, x)


def _no_cotangent(leaf):
    """The sentinel `merge` puts at a constant; the cotangent's leaf becomes None."""


class GenericLinearisation(Linearisation):
    """A step's linearisation at every step: the inputs, the stacked carries, every
    step's pullback (`CellJacobian`) and θ's constant leaves. A pytree (the step is
    static)."""

    def __init__(self, step, params, xs, carry0, carries, jacobian: CellJacobian, constants):
        self.step = step
        self.params = params  # θ's floating leaves, a list
        self.xs = xs
        self.carry0 = carry0
        self.carries = carries
        self.jacobian = jacobian
        self.constants = constants

    def tree_flatten(self):
        children = (self.params, self.xs, self.carry0, self.carries, self.jacobian, self.constants)
        return children, self.step

    @classmethod
    def tree_unflatten(cls, step, children):
        return cls(step, *children)

    def error_problem(self, carries_bar):
        # P_t = the cotangent delivered to carry_t, flattened to (T, m, D); the
        # Jacobians Ω(i+1, i) at (carry_i, x_{i+1}) (the last row is never used by Δ).
        return self.jacobian.layout.flatten(carries_bar, batch_dims=2), self.jacobian

    def cotangents(self, delta):
        floats_bar, xs_bar, carry0_bar = cotangents_from_delta(self, delta)
        params_bar = self.params_cotangent(floats_bar)
        if xs_bar is not None:
            xs_bar = StepConstants.split(self.xs)[1].merge(xs_bar, constant=_no_cotangent)
            xs_bar = _none_at_constants(xs_bar)
        return params_bar, xs_bar, carry0_bar

    def params_cotangent(self, floats_bar):
        """θ's cotangent from that of its floating leaves: None at the constants."""
        return _none_at_constants(self.constants.merge(floats_bar, constant=_no_cotangent))

    def step_problem(self) -> StepProblem:
        return StepProblem(
            self.constants.bind(self.step),
            self.params,
            self.xs,
            self.carry0,
            self.carries,
            self.params_cotangent,
        )


jax.tree_util.register_pytree_node_class(GenericLinearisation)


def previous_carries(residuals: GenericLinearisation):
    """carry_{t−1} for every t: carry0 then carries[:-1]."""
    return jax.tree.map(
        lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]]), residuals.carry0, residuals.carries
    )


def cotangents_from_delta(residuals: GenericLinearisation, delta):
    """`(∂C/∂params, ∂C/∂xs, ∂C/∂carry0)` from Δ (T, m, D), by the stored pullbacks;
    ∂C/∂xs is the list of the cotangents of xs's floating leaves, None when it has none."""
    params, xs, jacobian = residuals.params, residuals.xs, residuals.jacobian
    layout = jacobian.layout
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


def _none_at_constants(tree):
    return jax.tree.map(lambda leaf: None if leaf is _no_cotangent else leaf, tree)
