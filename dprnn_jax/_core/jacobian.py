r"""The one-step Jacobians of a recurrence, applied to row vectors: the DP's transition.

Every backward algorithm of the library organises the same sum (docs/theory.md#error-flow-triangle)

.. math::

    G(i, i) = P_i, \qquad G(j, i) = G(j, i+1)\, Ω(i+1, i), \qquad Δ_i = \sum_{j \ge i} G(j, i),

and needs the one-step Jacobian `Ω(i+1, i) = ∂Z_{i+1}/∂Z_i` only through row vectors
`g ↦ g Ω(i+1, i)`: a vector-Jacobian product. `StepJacobian` is that interface. The
algorithms see only its `per_step` data (a pytree whose leaves lead with the time axis,
which they slice, pad and scan over) and its `pull`: one diagonal step of the DP, for
any batch of rows at once. An Elman layer's Jacobian is `S diag(σ'(Z_i))`
(`ElmanJacobian`); any other cell plugs in by defining its own `pull`.

Convention: row i of `per_step` holds what `Ω(i+1, i)` needs, so `pull(g, per_step[i])`
moves a cotangent from step i+1 back to step i. Row T−1 is never used by Δ.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import precision

PerStep = Any  # a pytree whose leaves all lead with the time axis


class StepJacobian(abc.ABC):
    """The per-step Jacobians Ω(i+1, i) of one layer, seen through vector products.

    Example:
        >>> issubclass(ElmanJacobian, StepJacobian)  # any cell plugs in the same way
        True
    """

    @property
    @abc.abstractmethod
    def per_step(self) -> PerStep:
        """Per-step data, leaves with leading axis T (row i defines Ω(i+1, i))."""

    @abc.abstractmethod
    def with_per_step(self, per_step: PerStep) -> StepJacobian:
        """The same Jacobian with other per-step data (sliced, padded, reshaped)."""

    @abc.abstractmethod
    def pull(self, cotangent: jax.Array, per_step: PerStep) -> jax.Array:
        """`g Ω(i+1, i)` for rows `g` (…, m, d) and their steps' data `per_step`.

        Leading axes of `cotangent` beyond those of `per_step` broadcast (several rows
        of one step, e.g. the rows of a matrix).
        """

    def matrices(self, per_step: PerStep, like: jax.Array) -> jax.Array:
        """The explicit Jacobians (…, m, d, d), `x Ω = x @ matrices`, for cotangents shaped
        and typed like `like` (…, m, d): for the parallel scan and the diagnostics, which
        compose them as matrices."""
        d = like.shape[-1]
        # Row a of the matrix is e_a Ω: pull every basis row, one vmapped vjp.
        rows = jax.vmap(lambda e: self.pull(jnp.broadcast_to(e, like.shape), per_step))(
            jnp.eye(d, dtype=like.dtype)
        )  # (d, …, m, d)
        return jnp.moveaxis(rows, 0, -2)

    # The parallel scan composes the steps' maps `x ↦ x A_i` (`_algorithms/parallel_scan.py`)
    # in the operator's own structure: explicit matrices by default, vectors for a
    # diagonal operator.

    def scan_elements(self, like: jax.Array):
        """Every step's A_i in the structure the parallel scan composes (default: the
        explicit (T, m, d, d) matrices)."""
        return self.matrices(self.per_step, like)

    def compose_elements(self, later, earlier):
        """A_later A_earlier (row-vector convention: `later` acts first)."""
        return precision.matmul(later, earlier)

    def apply_elements(self, rows: jax.Array, elements) -> jax.Array:
        """`rows A` for rows (…, m, d) and elements of the same leading axes."""
        return precision.einsum("...a,...ab->...b", rows, elements)

    def composition_products(self, d: int) -> int:
        """Products one composition costs, in units of one (m, d) × (d, d) product (or
        of one application of the operator to (m, d) rows, for a structured one)."""
        return d + 1

    @property
    def num_steps(self) -> int:
        return jax.tree.leaves(self.per_step)[0].shape[0]

    def steps(self, start: int | jax.Array, length: int) -> PerStep:
        """Per-step data of steps [start, start + length); `start` may be traced."""
        return jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, start, length), self.per_step)

    def padded(self, front: int) -> StepJacobian:
        """`front` steps of zero data before step 0 (rows an algorithm never reads back)."""
        return self.with_per_step(
            jax.tree.map(
                lambda x: jnp.concatenate([jnp.zeros((front, *x.shape[1:]), x.dtype), x]),
                self.per_step,
            )
        )

    def sliced(self, start: int, stop: int) -> StepJacobian:
        """The Jacobians of steps [start, stop) (static bounds)."""
        return self.with_per_step(jax.tree.map(lambda x: x[start:stop], self.per_step))


class ElmanJacobian(StepJacobian, NamedTuple("_Elman", [("S", Any), ("sigma_prime", Any)])):
    """Ω(i+1, i) = S diag(σ'(Z_i)) of an Elman layer, docs/theory.md#psi-and-omega.

    Attributes:
        S: recurrent weights (d, d).
        sigma_prime: σ'(Z_i), shape (T, m, d): the per-step data.

    Example:
        >>> S = jnp.array([[0.0, 1.0], [1.0, 0.0]])
        >>> jacobian = ElmanJacobian(S, jnp.array([[0.5, 1.0]]))  # σ'(Z) of one sample
        >>> jacobian.pull(jnp.array([[1.0, 0.0]]), jacobian.per_step).tolist()  # (g S) ⊙ σ'
        [[0.0, 1.0]]
    """

    __slots__ = ()

    @property
    def per_step(self) -> jax.Array:
        return self.sigma_prime

    def with_per_step(self, per_step: jax.Array) -> ElmanJacobian:
        return ElmanJacobian(self.S, per_step)

    def pull(self, cotangent: jax.Array, per_step: jax.Array) -> jax.Array:
        # One step of the DP for every row at once: G(j, i) = (G(j, i+1) S) ⊙ σ'(Z_i).
        return precision.matmul(cotangent, self.S) * per_step

    def matrices(self, per_step: jax.Array, like: jax.Array) -> jax.Array:
        del like
        # Ω(i+1, i)[a, b] = S[a, b] σ'(Z_i)[b]: no products needed.
        return self.S * per_step[..., None, :]


class DiagonalJacobian(StepJacobian, NamedTuple("_Diagonal", [("diagonal", Any)])):
    """Ω(i+1, i) = diag(a_i): a recurrence that acts on each unit alone (minGRU's
    `1 − z`, a diagonal S). One step of the DP is an elementwise product, O(m·d), and
    the parallel scan composes vectors, not matrices.

    Attributes:
        diagonal: a_i, shape (T, m, d): the per-step data.

    Example:
        >>> jacobian = DiagonalJacobian(jnp.array([[[0.5, 2.0]]]))
        >>> jacobian.pull(jnp.array([[1.0, 1.0]]), jacobian.per_step[0]).tolist()
        [[0.5, 2.0]]
    """

    __slots__ = ()

    @property
    def per_step(self) -> jax.Array:
        return self.diagonal

    def with_per_step(self, per_step: jax.Array) -> DiagonalJacobian:
        return DiagonalJacobian(per_step)

    def pull(self, cotangent: jax.Array, per_step: jax.Array) -> jax.Array:
        return cotangent * per_step

    def matrices(self, per_step: jax.Array, like: jax.Array) -> jax.Array:
        del like
        return per_step[..., :, None] * jnp.eye(per_step.shape[-1], dtype=per_step.dtype)

    def scan_elements(self, like: jax.Array) -> jax.Array:
        del like
        return self.per_step

    def compose_elements(self, later, earlier):
        return later * earlier

    def apply_elements(self, rows: jax.Array, elements) -> jax.Array:
        return rows * elements

    def composition_products(self, d: int) -> int:
        return 2
