r"""The blocked Ω programme: small error-flow triangles chained by the BPTT recurrence.

`Omega(block=B)` (docs/theory.md#blocked-omega) cuts the sequence into consecutive
blocks of B steps (the last block, processed first, holds the remaining `T mod B` steps
when B does not divide T). Inside a block the error-flow triangle is filled diagonal by
diagonal as in
`omega.py` (unrolled into B-1 static-shape products when B ≤ 16, so no row is
padding); between blocks the error is passed on by one step of the O(T) recurrence.
For a block covering steps `s … e`, with `Δ_{e+1}` the total error already known at the
first step of the next block,

.. math::

    P'_e = P_e + Δ_{e+1}\, Ω(e+1, e), \qquad
    Δ_i = P'_i + \sum_{i < j \le e} P'_j \, Ω(j, i) \quad (s \le i \le e),

which is exact because every path from a later loss into the block enters it through
step e. `B = 1` is BPTT (T−1 products), `B ≥ T` is the full triangle (T(T−1)/2
products); in between it costs `(T/B)·B(B−1)/2 + T/B − 1 ≈ T·B/2` products in about T
sequential steps, each of up to B·m rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .._core import precision
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian

# Triangles of at most this many steps are unrolled: B-1 products of exactly B-k rows
# (no padding rows, no inner loop); longer ones use the phased Ω fill (`omega.py`).
UNROLL_MAX = 16

TriangleFill = Callable[[jax.Array, StepJacobian], ErrorFlow]


def blocked_closed_form(T: int, block: int) -> int:
    """Products of `blocked_error_flow`: each block's triangle plus one chain product per
    block boundary."""
    block = min(block, T)
    tail = T - block * ((T - 1) // block)
    lengths = [block] * ((T - tail) // block) + [tail]
    return sum(L * (L - 1) // 2 for L in lengths) + len(lengths) - 1


def unrolled_triangle(injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
    """The error-flow triangle of a short block, one static-shape product per diagonal."""
    steps = injected.shape[0]
    delta = diagonal = injected  # diagonal k holds G(i+k, i) for i < steps - k
    products = 0
    for k in range(1, steps):
        # G(i+k, i) = G(i+k, i+1) Ω(i+1, i) for i = 0 … steps-1-k.
        diagonal = jacobian.pull(diagonal[1:], jacobian.sliced(0, steps - k).per_step)
        delta = delta.at[: steps - k].add(diagonal)
        products += steps - k
    count = jnp.asarray(products, jnp.int32)
    return ErrorFlow(delta, count, count)


def blocked_error_flow(
    injected: jax.Array, jacobian: StepJacobian, *, block: int, fill: TriangleFill
) -> ErrorFlow:
    """Δ by Ω triangles of `block` steps chained by the BPTT recurrence.

    scan :: blocks in reverse, carry Δ at the first step of the next block.

    Args:
        injected: P, shape (T, m, d): errors injected at each step from above (Ψ).
        jacobian: the one-step Jacobians Ω(i+1, i).
        block: B ≥ 1, the number of steps per triangle (values ≥ T give one triangle).
        fill: the triangle fill for blocks longer than `UNROLL_MAX` (the Ω DP).

    Returns:
        `ErrorFlow` with Δ of shape (T, m, d); the counters add the chain products
        (one per block after the first processed) to the triangles' products.
    """
    T, m, d = injected.shape
    block = min(block, T)

    def triangle(injected, jacobian):
        if injected.shape[0] <= UNROLL_MAX:
            return unrolled_triangle(injected, jacobian)
        return fill(injected, jacobian)

    # The last `tail` steps form the block processed first: it has no later block, so
    # it needs no chain product. The remaining steps split into whole blocks.
    tail = T - block * ((T - 1) // block)
    head = T - tail
    last = triangle(injected[head:], jacobian.sliced(head, T))
    if head == 0:
        return last

    def chain(carry, inputs):
        delta_next, useful, performed = carry
        p, per_step = inputs
        # P'_e = P_e + Δ_{e+1} Ω(e+1, e): one BPTT step across the block boundary.
        last_step = jax.tree.map(lambda x: x[-1], per_step)
        p = p.at[-1].add(jacobian.pull(delta_next, last_step))
        flow = triangle(p, jacobian.with_per_step(per_step))
        carry = (
            flow.delta[0],
            useful + flow.products_useful + 1,
            performed + flow.products_performed + 1,
        )
        # A bfloat16 Δ is stacked in float32 (`precision.stored`): in place on a CPU.
        return carry, precision.stored(flow.delta)

    blocks = head // block
    per_step = jax.tree.map(
        lambda x: x[:head].reshape(blocks, block, *x.shape[1:]), jacobian.per_step
    )
    inputs = (injected[:head].reshape(blocks, block, m, d), per_step)
    init = (last.delta[0], last.products_useful, last.products_performed)
    (_, useful, performed), deltas = lax.scan(chain, init, inputs, reverse=True)
    deltas = precision.loaded(deltas, injected.dtype)
    delta = jnp.concatenate([deltas.reshape(head, m, d), last.delta])
    return ErrorFlow(delta, useful, performed)
