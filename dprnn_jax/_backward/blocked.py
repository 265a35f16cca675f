r"""The blocked Ω programme: small error-flow triangles chained by the BPTT recurrence.

`method="omega", block=B` cuts the sequence into consecutive blocks of B steps (the
last block, processed first, holds the remaining `T mod B` steps when B does not divide
T). Inside a block the error-flow triangle is filled diagonal by diagonal as in
`_omega.py` (unrolled into B-1 static-shape products when B ≤ 16, so no row is
padding); between blocks the error is passed on by one step of the O(T) recurrence.
For a block covering steps `s … e`, with `Δ_{e+1}` the total error already known at the
first step of the next block,

.. math::

    P'_e = P_e + (Δ_{e+1} S) ⊙ σ'(Z_e), \qquad
    Δ_i = P'_i + \sum_{i < j \le e} P'_j \, Ω(j, i) \quad (s \le i \le e),

which is exact because every path from a later loss into the block enters it through
step e. `B = 1` is BPTT (T−1 products), `B ≥ T` is the full triangle (T(T−1)/2
products); in between it costs `(T/B)·B(B−1)/2 + T/B − 1 ≈ T·B/2` products in about T
sequential steps, each of up to B·m rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._validation import check_positive_int
from .error_flow import ErrorFlow
from .omega import omega_error_flow


def check_block(block: object) -> int:
    """`block` must be a positive Python int (a static size, never a traced value)."""
    if isinstance(block, jax.Array):
        raise TypeError(
            "block must be a static Python int (it sets the compiled loop shapes), got a "
            f"JAX array {block!r}; pass e.g. block=16."
        )
    return check_positive_int("block", block)


def check_block_option(method: str, block: object) -> int | None:
    """Validates `rnn_layer`'s `block=` option: None, or a positive int with "omega"."""
    if block is None:
        return None
    if method != "omega":
        raise ValueError(
            f'block={block!r} applies only to method="omega" (Ω triangles of block '
            f'steps), got method={method!r}; drop block or use method="omega".'
        )
    return check_block(block)


# Triangles of at most this many steps are unrolled: B-1 products of exactly B-k rows
# (no padding rows, no inner loop); longer ones use `omega_error_flow`'s phases.
UNROLL_MAX = 16


def unrolled_triangle(injected: jax.Array, sigma_prime: jax.Array, S: jax.Array) -> ErrorFlow:
    """The error-flow triangle of a short block, one static-shape product per diagonal."""
    steps = injected.shape[0]
    delta = diagonal = injected  # diagonal k holds G(i+k, i) for i < steps - k
    products = 0
    for k in range(1, steps):
        # G(i+k, i) = (G(i+k, i+1) S) ⊙ σ'(Z_i) for i = 0 … steps-1-k.
        diagonal = (diagonal[1:] @ S) * sigma_prime[: steps - k]
        delta = delta.at[: steps - k].add(diagonal)
        products += steps - k
    count = jnp.asarray(products, jnp.int32)
    return ErrorFlow(delta, count, count)


def _triangle(injected: jax.Array, sigma_prime: jax.Array, S: jax.Array) -> ErrorFlow:
    if injected.shape[0] <= UNROLL_MAX:
        return unrolled_triangle(injected, sigma_prime, S)
    return omega_error_flow(injected, sigma_prime, S)


def blocked_error_flow(
    injected: jax.Array, sigma_prime: jax.Array, S: jax.Array, *, block: int
) -> ErrorFlow:
    """Δ by Ω triangles of `block` steps chained by the BPTT recurrence.

    scan :: blocks in reverse, carry Δ at the first step of the next block.

    Args:
        injected: P, shape (T, m, d): errors injected at each step from above (Ψ).
        sigma_prime: σ'(Z), shape (T, m, d).
        S: recurrent weights (d, d).
        block: B ≥ 1, the number of steps per triangle (values ≥ T give one triangle).

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d); the counters add the chain products
        (one per block after the first processed) to the triangles' products.

    Raises:
        ValueError: `block` is not a positive int.
        TypeError: `block` is a JAX array.

    Example:
        >>> P = jnp.ones((5, 1, 2)); S = jnp.eye(2)
        >>> # blocks of 2, 2, 1 steps: 1 + 1 + 0 triangle products, 2 chain products
        >>> int(blocked_error_flow(P, P, S, block=2).products_useful)
        4
    """
    block = check_block(block)
    T, m, d = injected.shape
    block = min(block, T)
    # The last `tail` steps form the block processed first: it has no later block, so
    # it needs no chain product. The remaining steps split into whole blocks.
    tail = T - block * ((T - 1) // block)
    head = T - tail
    last = _triangle(injected[head:], sigma_prime[head:], S)
    if head == 0:
        return last

    def chain(carry, inputs):
        delta_next, useful, performed = carry
        p, sp = inputs
        # P'_e = P_e + (Δ_{e+1} S) ⊙ σ'(Z_e): one BPTT step across the block boundary.
        p = p.at[-1].add((delta_next @ S) * sp[-1])
        flow = _triangle(p, sp, S)
        carry = (
            flow.delta[0],
            useful + flow.products_useful + 1,
            performed + flow.products_performed + 1,
        )
        return carry, flow.delta

    blocks = (head // block, block, m, d)
    inputs = (injected[:head].reshape(blocks), sigma_prime[:head].reshape(blocks))
    init = (last.delta[0], last.products_useful, last.products_performed)
    (_, useful, performed), deltas = lax.scan(chain, init, inputs, reverse=True)
    delta = jnp.concatenate([deltas.reshape(head, m, d), last.delta])
    return ErrorFlow(delta, useful, performed)
