"""Right-padded variable-length batches: `lengths`, the mask of valid steps, and the
zeroing of padded inputs (docs/theory.md#lengths-and-bidirectional).

A batch of sequences of lengths L_v ≤ T is right-padded to T steps. Every layer that is
given `lengths` replaces its padded inputs by zeros before reading them, so whatever the
padding holds (even NaN) cannot reach a valid step, a state or a gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_shape


def check_lengths(lengths: object, T: int, m: int) -> jax.Array:
    """Checks `lengths` (m,) integer; concrete values must lie in [0, T]."""
    check_shape("lengths", lengths, (m,), "(m,) = valid steps per sequence")
    if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {jnp.result_type(lengths)}.")
    try:
        values = np.asarray(lengths)
    except jax.errors.TracerArrayConversionError:
        values = None  # traced: out-of-range values give NaN final states (`rnn_forward`)
    if values is not None and values.size and (values.min() < 0 or values.max() > T):
        raise ValueError(
            f"lengths must lie in [0, T] = [0, {T}], got values from {values.min()} to "
            f"{values.max()}."
        )
    return jnp.asarray(lengths)


def mask_from_lengths(lengths: jax.Array, T: int) -> jax.Array:
    """(T, m) boolean mask, True at the valid steps t < lengths[v]."""
    return jnp.arange(T)[:, None] < lengths[None, :]


def zero_padding(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """`xs` (T, m, …) with every padded step t ≥ lengths[v] replaced by zeros.

    Integer tokens (T, m) become token 0. `where`, not a product: NaN or inf padding
    must not survive as 0 · NaN, in the values or in the backward products.
    """
    if lengths is None:
        return xs
    valid = mask_from_lengths(lengths, xs.shape[0])
    valid = valid.reshape(valid.shape + (1,) * (xs.ndim - 2))
    return jnp.where(valid, xs, jnp.zeros_like(xs))
