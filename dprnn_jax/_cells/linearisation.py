r"""The linearisation of any recurrent cell, taken once for every step by the forward loop.

For a cell `carry_t = step(θ, carry_{t−1}, x_t)` the DP's transition is
`Ω(i+1, i) = ∂carry_{i+1}/∂carry_i`, taken at `(carry_i, x_{i+1})`
(docs/theory.md#any-cell). The algorithms only need `g ↦ g Ω(i+1, i)`, a vector–Jacobian
product of the cell, and the gradients of θ and of the inputs need the rest of the same
product. `jax.vjp` of one step (w.r.t. θ, the carry and the input) returns its pullback
as a pytree whose leaves are the residuals of the linearisation (e.g. σ'(Z) and Sᵀ for an
Elman step). Some of them depend on the step's carry and input (they differ per step),
the others only on θ (Sᵀ). `_depends_on_step` finds which is which by following the data
dependencies in the pullback's jaxpr; `linearised_scan` runs the cell forward and keeps
the per-step residuals of every step as it goes, the shared ones once; `CellJacobian`
rebuilds each step's pullback from them. The cell is therefore evaluated once, in the
forward loop: neither the Jacobians nor the gradients of θ and of the inputs evaluate it
again, and the θ-only residuals are stored once, not T times.

Carries are pytrees (`h`, or `(h, c)` for an LSTM); the algorithms see them flattened to
one (…, m, D) array, D the total width (`CarryLayout`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._core import precision
from .._core.jacobian import StepJacobian

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


def is_differentiable(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def has_differentiable_leaf(tree) -> bool:
    return any(is_differentiable(leaf) for leaf in jax.tree.leaves(tree))


def floating_leaves(tree) -> list:
    """The floating leaves of an input pytree, in order: what has a cotangent."""
    return [leaf for leaf in jax.tree.leaves(tree) if is_differentiable(leaf)]


def step_vjp(step: Step, params, carry, x, with_input: bool):
    """`jax.vjp` of one step w.r.t. (θ, carry, the list of x's floating leaves), or
    (θ, carry) when x has none. x's other leaves (tokens, flags) are constants of the
    step."""
    if not with_input:
        return jax.vjp(lambda params, carry: step(params, carry, x), params, carry)
    leaves, treedef = jax.tree.flatten(x)

    def with_floats(params, carry, floats):
        floats = iter(floats)
        merged = [next(floats) if is_differentiable(leaf) else leaf for leaf in leaves]
        return step(params, carry, jax.tree.unflatten(treedef, merged))

    return jax.vjp(with_floats, params, carry, floating_leaves(x))


def _depends_on_step(step: Step, params, carry, x, with_input: bool) -> tuple[Any, list[bool]]:
    """The pullback's treedef, and for each of its leaves whether it depends on the
    step's carry or input (True: per step) or on the parameters only (False: shared)."""

    def residuals(params, carry, x):
        return step_vjp(step, params, carry, x, with_input)[1]

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
    """Ω(i+1, i) of a cell, and the whole pullback of each step, from the stored
    linearisation (see the module docstring).

    Row i of the per-step residuals is step i+1's (Ω(i+1, i) at `(carry_i, x_{i+1})`),
    as every algorithm expects; the last row, which Δ never uses, is step 0's (at
    `(carry0, x_0)`), for the initial carry's cotangent.

    Attributes:
        treedef: the structure of one step's pullback (static).
        per_step_mask: which of its leaves are per step (static).
        shared: the leaves that depend on θ only.
        per_step_leaves: the others, stacked over steps (leading axis T).
        layout: the carry's flattening.
        row_ranks: the rank of each per-step leaf for ONE step (static).
        with_input: whether the pullback gives the input's cotangent too (static).
    """

    def __init__(
        self, treedef, per_step_mask, shared, per_step_leaves, layout, row_ranks, with_input
    ):
        self.treedef = treedef
        self.per_step_mask = tuple(per_step_mask)
        self.shared = tuple(shared)
        self.per_step_leaves = tuple(per_step_leaves)
        self.layout = layout
        self.row_ranks = tuple(row_ranks)
        self.with_input = with_input

    # A pytree: the arrays are children, the structure is static.
    def tree_flatten(self):
        static = (self.treedef, self.per_step_mask, self.layout, self.row_ranks, self.with_input)
        return (self.shared, self.per_step_leaves), static

    @classmethod
    def tree_unflatten(cls, static, children):
        treedef, mask, layout, ranks, with_input = static
        shared, per_step_leaves = children
        return cls(treedef, mask, shared, per_step_leaves, layout, ranks, with_input)

    @property
    def per_step(self):
        return self.per_step_leaves

    def with_per_step(self, per_step) -> CellJacobian:
        return CellJacobian(
            self.treedef,
            self.per_step_mask,
            self.shared,
            per_step,
            self.layout,
            self.row_ranks,
            self.with_input,
        )

    def pullback(self, row_leaves) -> Callable:
        """One step's pullback `carry_bar ↦ (θ_bar, carry_bar_before[, x_bar])` from its
        row of per-step leaves."""
        shared, per_step = iter(self.shared), iter(row_leaves)
        leaves = [next(per_step) if mask else next(shared) for mask in self.per_step_mask]
        return jax.tree.unflatten(self.treedef, leaves)

    def _pull_row(self, cotangent, row_leaves):
        # θ's and the input's cotangents are computed too, and dropped: XLA removes them.
        carry_bar = self.pullback(row_leaves)(self.layout.unflatten(cotangent))[1]
        return self.layout.flatten(carry_bar)

    def pull(self, cotangent: jax.Array, per_step) -> jax.Array:
        # `per_step` holds zero or one leading axis of steps (a loop body sees one step,
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


def linearised_scan(step: Step, params, xs, carry0) -> tuple[Any, CellJacobian]:
    """The carries of `step` over `xs` and every step's linearisation, from one loop.

    loop :: (carry0, xs (T, m, …)) -> (carries stacked over T, the steps' residuals).

    Step 0 runs first, on its own: its carry and residuals fill the output buffers
    (every row of which the loop then overwrites but the last residual row, which keeps
    step 0's), so no buffer is filled with zeros and copied before the loop. Step t's
    per-step residuals are written to row t − 1, the layout of `CellJacobian`, so that
    no array is shifted afterwards. Each step reads its input from the loop state, as in
    `plain_scan`.

    Args:
        step: the cell, `step(params, carry, x) -> carry`.
        params: its parameters.
        xs: the inputs, a pytree of (T, m, …) arrays; floating leaves are linearised too.
        carry0: the initial carry.

    Returns:
        `(carries, jacobian)`.
    """
    T = jax.tree.leaves(xs)[0].shape[0]
    with_input = has_differentiable_leaf(xs)
    x0 = input_row(xs, 0)
    treedef, mask = _depends_on_step(step, params, carry0, x0, with_input)
    carry, first = _linearised_step(step, with_input, params, carry0, x0)
    shared = [leaf for leaf, m in zip(first, mask) if not m]
    rows = [jnp.broadcast_to(leaf, (T, *leaf.shape)) for leaf, m in zip(first, mask) if m]
    carries = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (T, *leaf.shape)), carry)
    # bfloat16 buffers are written in float32 (`precision.stored`): in place on a CPU.
    row_dtypes = [leaf.dtype for leaf in rows]
    carry_dtypes = jax.tree.map(lambda leaf: leaf.dtype, carry)

    def body(t, state):
        carry, x, carries, rows = state
        carry, leaves = _linearised_step(step, with_input, params, carry, x)
        leaves = [leaf for leaf, m in zip(leaves, mask) if m]
        rows = [_write_row(r, precision.stored(leaf), t - 1) for r, leaf in zip(rows, leaves)]
        carries = jax.tree.map(lambda cs, c: _write_row(cs, precision.stored(c), t), carries, carry)
        x_next = input_row(xs, jnp.minimum(t + 1, T - 1))
        return carry, x_next, carries, rows

    x1 = input_row(xs, min(1, T - 1))
    state = (carry, x1, jax.tree.map(precision.stored, carries), list(map(precision.stored, rows)))
    _, _, carries, rows = lax.fori_loop(1, T, body, state)
    rows = [precision.loaded(r, dtype) for r, dtype in zip(rows, row_dtypes)]
    carries = jax.tree.map(precision.loaded, carries, carry_dtypes)
    ranks = [leaf.ndim - 1 for leaf in rows]
    jacobian = CellJacobian(treedef, mask, shared, rows, CarryLayout.of(carry0), ranks, with_input)
    return carries, jacobian


@functools.partial(jax.jit, static_argnums=(0, 1))
def _linearised_step(step: Step, with_input: bool, params, carry, x):
    """One step's new carry and the leaves of its pullback.

    Jitted (and inlined into the caller's program) so that the leaves come in the order
    of a trace with distinct inputs, the order `_depends_on_step` saw: called directly,
    `jax.vjp` forwards an input that is also a residual, and two inputs that are one
    array (an LSTM's `(zeros, zeros)` initial carry) would reorder the leaves.
    """
    carry, pullback = step_vjp(step, params, carry, x, with_input)
    return carry, jax.tree.leaves(pullback)


def input_row(xs, t):
    """x_t: row t of every leaf of the inputs (`t` may be traced)."""
    return jax.tree.map(lambda leaf: lax.dynamic_index_in_dim(leaf, t, keepdims=False), xs)


def _write_row(rows: jax.Array, row: jax.Array, index) -> jax.Array:
    return lax.dynamic_update_index_in_dim(rows, row, index, 0)
