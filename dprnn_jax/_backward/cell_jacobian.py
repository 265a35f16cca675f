r"""The one-step Jacobian of any recurrent cell, linearised once for every step.

For a cell `carry_t = step(θ, carry_{t−1}, x_t)` the DP's transition is
`Ω(i+1, i) = ∂carry_{i+1}/∂carry_i`, taken at `(carry_i, x_{i+1})`
(docs/theory.md#any-cell). The algorithms only need `g ↦ g Ω(i+1, i)`, a vector–Jacobian
product of the cell. `jax.vjp` of one step returns its pullback as a pytree whose leaves
are the residuals of the linearisation (e.g. σ'(Z) and Sᵀ for an Elman step). Some of
them depend on the step's carry and input (they differ per step), the others only on θ
(Sᵀ). `linearise_cell` finds which is which by following the data dependencies in the
pullback's jaxpr, computes the per-step residuals for all steps at once with one
vmapped `jax.vjp` and the shared ones once, and `CellJacobian.pull` rebuilds each
step's pullback from them: the linearisation is computed once per backward pass, never
again per diagonal, and the θ-only residuals are stored once, not T times.

Carries are pytrees (`h`, or `(h, c)` for an LSTM); the algorithms see them flattened to
one (…, m, D) array, D the total width (`CarryLayout`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .jacobian import StepJacobian

Step = Callable[[Any, Any, jax.Array], Any]


class CarryLayout(NamedTuple):
    """How a carry pytree of (m, …) leaves maps to one (m, D) array and back."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]  # each leaf's shape after the batch axis

    @classmethod
    def of(cls, carry) -> CarryLayout:
        leaves, treedef = jax.tree.flatten(carry)
        return cls(treedef, tuple(tuple(leaf.shape[1:]) for leaf in leaves))

    @property
    def width(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes)

    def flatten(self, carry, batch_dims: int = 1) -> jax.Array:
        """(…, m, *leaf) leaves -> (…, m, D); `batch_dims` leading axes are kept."""
        leaves = jax.tree.leaves(carry)
        return jnp.concatenate(
            [leaf.reshape(*leaf.shape[:batch_dims], -1) for leaf in leaves], axis=-1
        )

    def unflatten(self, flat: jax.Array):
        """(…, D) -> the carry pytree with the same leading axes."""
        sizes = [int(np.prod(shape)) for shape in self.shapes]
        pieces = jnp.split(flat, np.cumsum(sizes)[:-1], axis=-1)
        leaves = [
            piece.reshape(*piece.shape[:-1], *shape) for piece, shape in zip(pieces, self.shapes)
        ]
        return jax.tree.unflatten(self.treedef, leaves)


def _depends_on_step(step: Step, params, carry, x) -> tuple[Any, list[bool]]:
    """The pullback's treedef, and for each of its leaves whether it depends on the
    step's carry or input (True: per step) or on the parameters only (False: shared)."""

    def residuals(params, carry, x):
        _, pullback = jax.vjp(lambda c: step(params, c, x), carry)
        return pullback

    shape = jax.eval_shape(residuals, params, carry, x)
    treedef = jax.tree.structure(shape)
    closed = jax.make_jaxpr(lambda *a: jax.tree.leaves(residuals(*a)))(params, carry, x)
    jaxpr = closed.jaxpr
    n_params = len(jax.tree.leaves(params))
    dependent = {id(var) for var in jaxpr.invars[n_params:]}
    for eqn in jaxpr.eqns:
        # Conservative: an output of an equation that reads a dependent value depends.
        if any(id(var) in dependent for var in eqn.invars if not _is_literal(var)):
            dependent.update(id(var) for var in eqn.outvars)
    per_step = [not _is_literal(var) and id(var) in dependent for var in jaxpr.outvars]
    return treedef, per_step


def _is_literal(var) -> bool:
    return type(var).__name__ == "Literal"


class CellJacobian(StepJacobian):
    """Ω(i+1, i) of a cell, from its stored linearisation (see the module docstring).

    Attributes:
        treedef: the structure of one step's pullback (static).
        per_step_mask: which of its leaves are per step (static).
        shared: the leaves that depend on θ only.
        per_step_leaves: the others, stacked over steps (leading axis T).
        layout: the carry's flattening.
    """

    def __init__(self, treedef, per_step_mask, shared, per_step_leaves, layout, row_ranks):
        self.treedef = treedef
        self.per_step_mask = tuple(per_step_mask)
        self.shared = tuple(shared)
        self.per_step_leaves = tuple(per_step_leaves)
        self.layout = layout
        self.row_ranks = tuple(row_ranks)  # rank of each per-step leaf for ONE step

    # A pytree: the arrays are children, the structure is static.
    def tree_flatten(self):
        static = (self.treedef, self.per_step_mask, self.layout, self.row_ranks)
        return (self.shared, self.per_step_leaves), static

    @classmethod
    def tree_unflatten(cls, static, children):
        treedef, mask, layout, ranks = static
        shared, per_step_leaves = children
        return cls(treedef, mask, shared, per_step_leaves, layout, ranks)

    @property
    def per_step(self):
        return self.per_step_leaves

    def with_per_step(self, per_step) -> CellJacobian:
        return CellJacobian(
            self.treedef, self.per_step_mask, self.shared, per_step, self.layout, self.row_ranks
        )

    def _pullback(self, row_leaves):
        shared, per_step = iter(self.shared), iter(row_leaves)
        leaves = [next(per_step) if mask else next(shared) for mask in self.per_step_mask]
        return jax.tree.unflatten(self.treedef, leaves)

    def _pull_row(self, cotangent, row_leaves):
        (carry_bar,) = self._pullback(row_leaves)(self.layout.unflatten(cotangent))
        return self.layout.flatten(carry_bar)

    def pull(self, cotangent: jax.Array, per_step) -> jax.Array:
        # `per_step` holds zero or one leading axis of steps (a scan body sees one step,
        # a diagonal many); `cotangent` has those axes too, possibly after extra
        # leading axes that broadcast (the rows of a matrix), then (m, D).
        rows = jax.tree.leaves(per_step)
        step_axes = rows[0].ndim - self.row_ranks[0] if rows else 0
        fn = self._pull_row
        if step_axes:
            fn = jax.vmap(fn, in_axes=(0, 0))
        for _ in range(cotangent.ndim - 2 - step_axes):
            fn = jax.vmap(fn, in_axes=(0, None))
        return fn(cotangent, per_step)


jax.tree_util.register_pytree_node_class(CellJacobian)


def linearise_cell(step: Step, params, carries_before, xs_after) -> CellJacobian:
    """The Jacobians Ω(i+1, i) at `(carries_before[i], xs_after[i])` for every row i.

    Args:
        step: the cell, `step(params, carry, x) -> carry`.
        params: its parameters.
        carries_before: carry pytree with leading axis T (row i: carry_i).
        xs_after: inputs with leading axis T (row i: x_{i+1}).

    Returns:
        A `CellJacobian` whose per-step rows follow the rows given.
    """
    first = jax.tree.map(lambda leaf: leaf[0], carries_before)
    treedef, mask = _depends_on_step(step, params, first, xs_after[0])

    def residual_leaves(carry, x):
        _, pullback = jax.vjp(lambda c: step(params, c, x), carry)
        return jax.tree.leaves(pullback)

    per_step = [
        leaf
        for leaf, m in zip(jax.vmap(residual_leaves)(carries_before, xs_after), mask)
        if m
    ]
    shared = [leaf for leaf, m in zip(residual_leaves(first, xs_after[0]), mask) if not m]
    ranks = [leaf.ndim - 1 for leaf in per_step]
    return CellJacobian(treedef, mask, shared, per_step, CarryLayout.of(first), ranks)
