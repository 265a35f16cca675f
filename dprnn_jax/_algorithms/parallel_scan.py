r"""Ω by doubling: the backward recurrence as a parallel prefix
(docs/theory.md#parallel-scan).

BPTT's recurrence `Δ_i = P_i + Δ_{i+1} Ω(i+1, i)` is affine in the carry, so each step
is a map `e_i : x ↦ x A_i + P_i` with `A_i = Ω(i+1, i)` (row-vector convention), and
`Δ_i = (e_i ∘ e_{i+1} ∘ … ∘ e_{T−1})(0)`. Composition is associative:

.. math::

    (A_a, c_a) ⊕ (A_b, c_b) = (A_a A_b,\; c_a A_b + c_b)
    \quad\text{(a: the later steps, b: the earlier one)},

and the products `A_a A_b` are exactly Ω by doubling, `Ω(i+2k, i) = Ω(i+2k, i+k) Ω(i+k, i)`.
`lax.associative_scan` evaluates all suffix compositions in O(log T) sequential depth
(the BPPSA idea: Wang et al., "BPPSA: Scaling Back-propagation by Parallel Scan
Algorithm"). The price is that the Jacobians are composed as full matrices:
O(T·m·d³) work and O(T·m·d²) memory, against O(T·m·d²) work for BPTT.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import GradientAlgorithm


def scan_error_flow(injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
    """Δ by a reverse `lax.associative_scan` over the per-step affine maps (A_i, P_i).

    Args:
        injected: P, shape (T, m, d).
        jacobian: the one-step Jacobians Ω(i+1, i), composed here as explicit matrices.

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d). The product counters count, in units of
        one (m, d) × (d, d) product, every composition the scan performs: a
        matrix-matrix product (d units) plus a vector-matrix product (1 unit) each.
    """
    d = injected.shape[-1]
    # A_i in the operator's structure: (T, m, d, d) matrices, or (T, m, d) diagonals.
    one_step = jacobian.scan_elements(injected)
    compositions = []  # static leading sizes of every batched combine, read at trace time

    def compose(later, earlier):
        A_later, c_later = later
        A_earlier, c_earlier = earlier
        compositions.append(jax.tree.leaves(A_later)[0].shape[0])
        return (
            jacobian.compose_elements(A_later, A_earlier),
            jacobian.apply_elements(c_later, A_earlier) + c_earlier,
        )

    # reverse=True: element i receives the composition of steps i, i+1, …, T−1.
    _, delta = lax.associative_scan(compose, (one_step, injected), reverse=True)
    products = jnp.asarray(sum(compositions) * jacobian.composition_products(d), jnp.int32)
    return ErrorFlow(delta, products, products)


@dataclasses.dataclass(frozen=True)
class ParallelScan(GradientAlgorithm):
    """Ω by doubling in a reverse `lax.associative_scan`: O(log T) sequential depth for
    O(T·m·d³) work (the Jacobians composed as matrices). Exact. Selected by the string
    `"scan"`.

    Example:
        >>> ParallelScan().name
        'scan'
    """

    name = "scan"

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        return scan_error_flow(injected, jacobian)

    def closed_form_products(self, T: int) -> int:
        # At d = 1 each composition costs 2 units; `lax.associative_scan` composes
        # adjacent pairs, recurses on the T // 2 results, then fills the other half.
        return 2 * scan_compositions(T)


def scan_compositions(n: int) -> int:
    """Compositions `lax.associative_scan` performs on n elements."""
    if n < 2:
        return 0
    return n // 2 + scan_compositions(n // 2) + (n + 1) // 2 - 1
