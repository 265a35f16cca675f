"""The custom VJP of a scan over any cell: the forward stores the carries and every
step's linearisation, the backward hands them to the gradient algorithm.

    cell_scan :: (algorithm, step) -> (params, xs, carry0) -> carries

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

from .base import GradientAlgorithm
from .cell_gradients import CellResiduals
from .cell_jacobian import input_row, is_differentiable, linearised_scan


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
        return (carry, x_next), carry

    _, carries = lax.scan(body, (carry0, input_row(xs, 0)), jnp.arange(T))
    return carries


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def cell_scan(algorithm: GradientAlgorithm, step, params, xs, carry0):
    """The carries of `step` over `xs`, differentiated by `algorithm` (static)."""
    del algorithm
    return plain_scan(step, params, xs, carry0)


def _cell_scan_fwd(algorithm, step, params, xs, carry0):
    del algorithm
    # The forward loop linearises every step as it runs it (docs/theory.md#any-cell);
    # θ's integer leaves are constants of the step, stored beside the residuals.
    floats, constants = StepConstants.split(params)
    carries, jacobian = linearised_scan(constants.bind(step), floats, xs, carry0)
    return carries, (CellResiduals(floats, xs, carry0, carries, jacobian), constants)


def _cell_scan_bwd(algorithm, step, residuals, carries_bar):
    # Δ from the cell's one-step Jacobians, then θ's and the inputs' cotangents from the
    # same linearisation (docs/theory.md#any-cell). Integer leaves of θ and of the
    # inputs have none (None).
    residuals, constants = residuals
    floats_bar, xs_bar, carry0_bar = algorithm.cell_cotangents(
        constants.bind(step), residuals, carries_bar
    )
    params_bar = _none_at_constants(constants.merge(floats_bar, constant=_no_cotangent))
    if xs_bar is not None:
        xs_bar = StepConstants.split(residuals.xs)[1].merge(xs_bar, constant=_no_cotangent)
        xs_bar = _none_at_constants(xs_bar)
    return params_bar, xs_bar, carry0_bar


def _none_at_constants(tree):
    return jax.tree.map(lambda leaf: None if leaf is _no_cotangent else leaf, tree)


cell_scan.defvjp(_cell_scan_fwd, _cell_scan_bwd)
