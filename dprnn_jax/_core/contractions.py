"""Sums over the rows of two arrays, `Σ_r a_rᵀ b_r`, in the form XLA's CPU backend runs fast.

A weight's cotangent is such a sum over every step and sequence (`Σ_{t,v} ū_{t,v}ᵀ
h_{t,v}`): one product contracting the leading T·m axis of both operands. XLA's CPU
backend runs it by first transposing one operand into a (·, T·m) array, and it picks the
cotangent, usually the larger one, computed by a fused elementwise product and written
with a strided, unvectorised copy: at T = 1024, m = 16, d = 32 the product of a GRU's
recurrent weights took 48 ms that way against 4 ms after transposing the (T·m, d)
states once instead (docs/performance.md#gated-cells). `rows_product` does the latter;
`with_rows_products` applies it to every such product of a function that JAX built, such
as the transpose of a linearised cell vmapped over the steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax import lax
from jax.extend.core import Literal

from . import precision


def rows_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """`Σ_rows a_rᵀ b_r` over every leading axis: (…, p), (…, q) -> (p, q).

    On CPU the smaller operand is transposed once into a (·, rows) array (the
    optimisation barrier keeps XLA from folding the transpose back into the product),
    then one ordinary matrix product runs; other platforms contract directly. When the
    smaller operand is `b`, the product `bᵀ a` is (q, p) and is transposed afterwards,
    behind a barrier too: without it XLA folds that small transpose into the product,
    whose `a` operand is then contracted over its leading axis, and the product falls
    back to a generic kernel 1.4–2× slower (T·m = 16,384 rows, p = 128, q = 32).
    """
    p, q = a.shape[-1], b.shape[-1]
    a, b = a.reshape(-1, p), b.reshape(-1, q)

    def direct(a, b):
        return precision.dot_general(a, b, (((0,), (0,)), ((), ())))

    def transposed_once(a, b):
        if q <= p:
            return lax.optimization_barrier(precision.matmul(lax.optimization_barrier(b.T), a)).T
        return precision.matmul(lax.optimization_barrier(a.T), b)

    return lax.platform_dependent(a, b, cpu=transposed_once, default=direct)


def with_rows_products(fn: Callable, *args):
    """`fn(*args)`, with each `dot_general` that sums over the leading axes of both of
    its operands (seen through a `transpose` that produced either) run as `rows_product`,
    and each sum of a 16-bit float array accumulated in float32 (`precision.reduce_sum`:
    JAX's transpose of a broadcast, a bias's cotangent, sums in bfloat16 otherwise).

    `fn`'s jaxpr is evaluated equation by equation; equations inside nested jaxprs (a
    `jit` in `fn`) run unchanged.
    """
    closed = jax.make_jaxpr(fn)(*args)
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(jax.eval_shape(fn, *args)), outs)


def _evaluate(jaxpr, consts, args) -> list:
    env: dict = {}
    transposed: dict = {}  # an output of a `transpose`: (its operand, the permutation)

    def read(var):
        return var.val if isinstance(var, Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values = [read(var) for var in eqn.invars]
        if eqn.primitive is lax.transpose_p:
            transposed[eqn.outvars[0]] = (values[0], eqn.params["permutation"])
        out = None
        if eqn.primitive is lax.dot_general_p:
            out = _as_rows_product(eqn, values, transposed)
        elif eqn.primitive is lax.reduce_sum_p and precision.is_low_precision(values[0].dtype):
            out = precision.reduce_sum(values[0], eqn.params["axes"])
        if out is None:
            out = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
        outs = out if eqn.primitive.multiple_results else [out]
        env.update(zip(eqn.outvars, outs))
    return [read(var) for var in jaxpr.outvars]


def _as_rows_product(eqn, values, transposed):
    """The equation's result by `rows_product`, or None when it is not such a sum."""
    (lhs_contract, rhs_contract), batch = eqn.params["dimension_numbers"]
    if batch != ((), ()):
        return None
    operands = []
    for var, value, contract in zip(eqn.invars, values, (lhs_contract, rhs_contract)):
        permutation = tuple(range(value.ndim))
        if not isinstance(var, Literal) and var in transposed:
            value, permutation = transposed[var]
        # Dimension k of the operand is dimension permutation[k] of `value`.
        contract = tuple(permutation[k] for k in contract)
        free = [permutation[k] for k in range(len(permutation)) if k not in set(contract)]
        rows = len(contract)
        if contract != tuple(range(rows)) or free != sorted(free) or rows == value.ndim:
            return None
        operands.append((value, rows))
    (a, rows_a), (b, rows_b) = operands
    if rows_a != rows_b or a.shape[:rows_a] != b.shape[:rows_b]:
        return None
    free_a, free_b = a.shape[rows_a:], b.shape[rows_b:]
    product = rows_product(
        a.reshape(*a.shape[:rows_a], int(np.prod(free_a))),
        b.reshape(*b.shape[:rows_b], int(np.prod(free_b))),
    )
    dtype = eqn.params.get("preferred_element_type") or eqn.outvars[0].aval.dtype
    return product.reshape(*free_a, *free_b).astype(dtype)
