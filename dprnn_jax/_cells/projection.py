"""The input projections of the gated layers: `x_t Wᵀ` of every step as one product.

The GRU and LSTM layers project the inputs of all steps before their loop; the
recurrent step only adds the projected row. Under a gradient algorithm of the library
(whose backward is the library's own, not `jax.grad`'s) the projection's backward is
written out too (`_projection`): `W̄ = Σ_rows x̄_tᵀ x_t` contracts the leading T·m axis of
both operands, which XLA's CPU backend runs by first transposing the large (T·m, G·d)
cotangent with a slow strided copy; `rows_product` transposes the smaller operand, the
inputs, once instead and runs one ordinary matrix product
(docs/performance.md#gated-cells).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._core import precision
from .._core.contractions import rows_product


def project_inputs(W: jax.Array, xs: jax.Array, *, own_backward: bool) -> jax.Array:
    """`x_t Wᵀ` for every step: (T, m, n) -> (T, m, G·d); integer tokens (T, m) are a
    lookup of W's columns. `own_backward`: differentiate with `_projection`'s backward
    (reverse mode only) rather than JAX's."""
    if jnp.issubdtype(xs.dtype, jnp.integer):
        # NaN rows for tokens outside [0, n), as the Elman layer's lookup (`tokens.py`):
        # never a wrapped-around negative id or a clipped one.
        valid = (xs >= 0) & (xs < W.shape[1])
        columns = jnp.take(W.T, jnp.where(valid, xs, 0), axis=0)
        return jnp.where(valid[..., None], columns, jnp.nan)
    if own_backward:
        return _projection(W, xs)
    return precision.einsum("tmn,gn->tmg", xs, W)


@jax.custom_vjp
def _projection(W: jax.Array, xs: jax.Array) -> jax.Array:
    return precision.einsum("tmn,gn->tmg", xs, W)


def _projection_fwd(W, xs):
    return _projection(W, xs), (W, xs)


def _projection_bwd(residuals, projected_bar):
    W, xs = residuals
    return rows_product(projected_bar, xs), precision.matmul(projected_bar, W)


_projection.defvjp(_projection_fwd, _projection_bwd)
