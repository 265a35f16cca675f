"""What every backward algorithm returns, and the per-step quantities they share.

All custom backward passes of a recurrent layer solve the same problem
(docs/theory.md#psi-and-omega):
given the injected errors `P_t = ∂C/∂h_t|_direct ⊙ σ'(Z_t)` (the Ψ term) and the
stored derivatives `σ'(Z_t)`, find the total errors

    Δ_i = ∂C/∂Z_i = P_i + Σ_{j>i} P_j Ω(j, i).

They differ only in how they organise the sum. Each one also counts the (m, d) × (d, d)
products it performs, inside its own loops, so the complexity table can be checked
against the implementation rather than against a formula.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from jax import lax

from . import precision


class ErrorFlow(NamedTuple):
    """Result of a backward algorithm over one layer.

    Attributes:
        delta: Δ, shape (T, m, d): the total error ∂C/∂Z_t at every step.
        products_useful: number of (m, d) × (d, d) products the algorithm needs.
        products_performed: number actually executed, including padding rows of
            fixed-shape batched products (equal to `products_useful` except for
            `omega`, whose diagonals are processed in phases of static length).

    Example:
        >>> P = jnp.ones((4, 1, 2))  # an error of 1 injected at every step
        >>> flow = BPTT().error_flow(P, ElmanJacobian(0.5 * jnp.eye(2), jnp.ones((4, 1, 2))))
        >>> flow.delta[:, 0, 0].tolist(), int(flow.products_useful)  # Δ_i = Σ_j 0.5^(j−i)
        ([1.875, 1.75, 1.5, 1.0], 3)
    """

    delta: jax.Array
    products_useful: jax.Array
    products_performed: jax.Array


def sum_over_steps(delta: jax.Array, inputs: jax.Array) -> jax.Array:
    """`Σ_t δ_tᵀ x_t` over every (step, row): (T, m, d), (T, m, n) -> (d, n).

    `contract_over_steps` with one input.
    """
    return contract_over_steps(delta, (inputs,))[0]


def contract_over_steps(delta: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """`Σ_t δ_tᵀ x_t` for each x in `inputs`: (T, m, d), ((T, m, n_k), …) -> ((d, n_k), …).

    Each is one 2-D product contracting the flattened T·m axis. On CPU, Δ is first
    transposed ONCE into a (d, T·m) array shared by all the products: XLA's CPU backend
    gives a product contracting the leading axis of both operands to a generic kernel,
    1.5–1.8× slower than the ordinary (d, K) × (K, n) matrix product it gets after the
    transpose, which costs one pass over Δ (docs/performance.md#floor). The
    optimisation barrier keeps XLA from folding the transpose back into the products;
    other platforms contract directly.
    """
    d = delta.shape[-1]
    rows = delta.reshape(-1, d)
    flat = tuple(x.reshape(-1, x.shape[-1]) for x in inputs)

    def direct(rows, flat):
        return tuple(precision.dot_general(rows, x, (((0,), (0,)), ((), ()))) for x in flat)

    def transposed_once(rows, flat):
        columns = lax.optimization_barrier(rows.T)
        return tuple(precision.matmul(columns, x) for x in flat)

    return lax.platform_dependent(rows, flat, cpu=transposed_once, default=direct)
