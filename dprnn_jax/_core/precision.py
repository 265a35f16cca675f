r"""Mixed precision: float32 (or float64) parameters, bfloat16 (or float16) inputs.

The mode is chosen by the dtypes alone (docs/performance.md#mixed-precision): a layer
whose floating inputs are a 16-bit float and whose parameters are wider **computes in the
inputs' dtype**. Its parameters and initial state are cast to that dtype where the layer
starts (`to_compute_dtype`, as Flax's `param_dtype`/`dtype` and jmp's policies do), so the
cell, its linearisation and every gradient algorithm see one dtype, the one the
all-bfloat16 model runs in; the carries and Δ are bfloat16. Every product of the library's
own loops (`matmul`, `einsum`, `dot_general` below) accumulates in float32,
`preferred_element_type=float32`, and rounds its result once to the compute dtype. The
gradient of the parameters comes back through the cast, in their own dtype: float32
numbers that carry bfloat16's rounding (8 significant bits). The readout and the loss
run in the parameters' dtype (`_model/readout.py`).

Every other mix of dtypes (float64 inputs with float32 parameters, bfloat16 parameters
with float32 inputs, …) is refused by the checks that call `check_input_dtype`
(`validation.py`). Float32 and float64 programs are unchanged: each helper here is the
plain operation unless an operand is a 16-bit float. The loops' bfloat16 row buffers
(`stored`, `loaded`) and sums (`reduce_sum`) avoid two slow paths of XLA's CPU backend,
for the mixed mode and for models wholly in bfloat16 alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The compute dtypes of the mixed mode, and the parameter dtypes that may meet them.
LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
WIDE_PRECISION = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
ACCUMULATION = jnp.dtype(jnp.float32)


def is_low_precision(dtype) -> bool:
    """Whether `dtype` is a 16-bit float (bfloat16 or float16)."""
    return jnp.dtype(dtype) in LOW_PRECISION


def is_mixed(params_dtype, inputs_dtype) -> bool:
    """Whether parameters of `params_dtype` reading inputs of `inputs_dtype` are the
    mixed-precision mode: float32/float64 parameters, bfloat16/float16 inputs.

    Example:
        >>> is_mixed(jnp.float32, jnp.bfloat16), is_mixed(jnp.float32, jnp.float64)
        (True, False)
    """
    return jnp.dtype(params_dtype) in WIDE_PRECISION and is_low_precision(inputs_dtype)


def compute_dtype(params_dtype, inputs_dtype) -> np.dtype:
    """The dtype a layer computes in: its inputs' in the mixed mode, else its
    parameters' (integer token inputs: the parameters')."""
    if jnp.issubdtype(inputs_dtype, jnp.floating) and is_mixed(params_dtype, inputs_dtype):
        return jnp.dtype(inputs_dtype)
    return jnp.dtype(params_dtype)


def to_compute_dtype(tree, dtype):
    """`tree` with its floating leaves of another dtype cast to `dtype` (None leaves and
    integer leaves kept). Differentiable: the cotangents come back in the leaves' dtypes."""

    def cast(leaf):
        if leaf is None or not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == dtype:
            return leaf
        return leaf.astype(dtype)

    return jax.tree.map(cast, tree)


def accumulator_dtype(dtype) -> np.dtype:
    """The dtype a long sum of `dtype` values is kept in: float32 for a 16-bit float
    (each addition in bfloat16 would round to 8 bits), `dtype` itself otherwise."""
    return ACCUMULATION if is_low_precision(dtype) else jnp.dtype(dtype)


def _accumulation(*operands) -> np.dtype | None:
    """float32 when every operand is a 16-bit float (the products of a mixed-precision
    layer), else None: the operation as written."""
    if all(is_low_precision(x.dtype) for x in operands):
        return ACCUMULATION
    return None


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b`, accumulated in float32 when both are 16-bit floats."""
    accumulate = _accumulation(a, b)
    if accumulate is None:
        return a @ b
    return jnp.matmul(a, b, preferred_element_type=accumulate).astype(jnp.result_type(a, b))


def einsum(subscripts: str, *operands: jax.Array) -> jax.Array:
    """`jnp.einsum`, accumulated in float32 when every operand is a 16-bit float."""
    accumulate = _accumulation(*operands)
    if accumulate is None:
        return jnp.einsum(subscripts, *operands)
    result = jnp.einsum(subscripts, *operands, preferred_element_type=accumulate)
    return result.astype(jnp.result_type(*operands))


def dot_general(a: jax.Array, b: jax.Array, dimension_numbers) -> jax.Array:
    """`lax.dot_general`, accumulated in float32 when both are 16-bit floats."""
    accumulate = _accumulation(a, b)
    if accumulate is None:
        return lax.dot_general(a, b, dimension_numbers)
    result = lax.dot_general(a, b, dimension_numbers, preferred_element_type=accumulate)
    return result.astype(jnp.result_type(a, b))


def reduce_sum(x: jax.Array, axes) -> jax.Array:
    """`lax.reduce_sum` over `axes`, accumulated in float32 for a 16-bit float `x`: a raw
    bfloat16 sum is both less accurate and, on XLA's CPU backend, which rewrites it as a
    tree of reduce-windows, 100× slower (a bias's cotangent over 127·32 rows of 384: 22 ms
    against 0.2 ms)."""
    axes = tuple(axes)
    if not is_low_precision(x.dtype):
        return lax.reduce_sum(x, axes)
    return lax.reduce_sum(x.astype(ACCUMULATION), axes).astype(x.dtype)


# XLA's CPU backend writes no bfloat16 `dynamic_update_slice` in place: it converts the
# whole buffer to float32 and back around each write, so a loop that writes one row of a
# (T, m, d) bfloat16 buffer per step costs O(T·m·d) per step (T = 1024, m = 16, d = 32:
# 250 µs a step, against 0.1 µs for float32 or float16). The library's loops keep such
# buffers in float32 while they write them: exact (every bfloat16 is a float32), and
# differentiable, so `jax.grad` through a plain scan (`Autodiff()`) sees the identity.


def stored(x: jax.Array) -> jax.Array:
    """A loop's row buffer as it is kept while written: a bfloat16 array in float32,
    any other array as it is."""
    if x.dtype == jnp.bfloat16:
        return x.astype(jnp.float32)
    return x


def loaded(x: jax.Array, dtype) -> jax.Array:
    """The values of `stored(y)` for y of `dtype` (rows of it, or all of it)."""
    if jnp.dtype(dtype) == jnp.bfloat16:
        return x.astype(jnp.bfloat16)
    return x
