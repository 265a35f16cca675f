"""Right-padded variable-length batches: `lengths`, the mask of valid steps, and the
zeroing of padded inputs (docs/theory.md#lengths-and-bidirectional).

A batch of sequences of lengths L_v ≤ T is right-padded to T steps. Every layer that is
given `lengths` replaces its padded inputs by zeros before reading them, so whatever the
padding holds (even NaN) cannot reach a valid step, a state or a gradient.

Lengths outside [0, T] are refused when they are concrete (`check_lengths`); under `jit`
they cannot be, so they poison instead of being clamped: such a sequence reads NaN inputs
(token −1, outside every vocabulary) at every step, so its states, outputs and final
state are NaN, and every loss over a batch that holds one is NaN (`nan_unless_in_range`),
as for class indices or tokens out of range.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .validation import check_shape


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


def lengths_in_range(lengths: jax.Array, T: int) -> jax.Array:
    """(m,) booleans: whether each length lies in [0, T] (only a traced one can fail)."""
    return (lengths >= 0) & (lengths <= T)


def nan_unless_in_range(value: jax.Array, lengths: jax.Array | None, T: int) -> jax.Array:
    """`value` (a loss) when every length lies in [0, T], else NaN, and so its gradient.

    A product with 1, not a `where`: for valid lengths the value and every cotangent are
    exactly unchanged, and for an out-of-range length the gradient is NaN too (a `where`
    would give it a finite, wrong gradient).
    """
    if lengths is None:
        return value
    scale = jnp.where(lengths_in_range(jnp.asarray(lengths), T).all(), 1, jnp.nan)
    return value * scale.astype(value.dtype)


def mask_from_lengths(lengths: jax.Array, T: int) -> jax.Array:
    """(T, m) boolean mask, True at the valid steps t < lengths[v]."""
    return jnp.arange(T)[:, None] < lengths[None, :]


def zero_padding(xs: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """`xs` (T, m, …) with every padded step t ≥ lengths[v] replaced by zeros.

    Integer tokens (T, m) become token 0. `where`, not a product: NaN or inf padding
    must not survive as 0 · NaN, in the values or in the backward products. A sequence
    whose length lies outside [0, T] (possible only under `jit`) gets NaN inputs at
    every step (token −1 for integer tokens, which every layer reads as NaN), so that
    nothing computed from it is a number.
    """
    if lengths is None:
        return xs
    T, m = xs.shape[:2]
    trailing = (1,) * (xs.ndim - 2)
    in_range = lengths_in_range(lengths, T)
    poison = jnp.nan
    if jnp.issubdtype(xs.dtype, jnp.integer):  # a token outside every vocabulary
        poison = jnp.iinfo(xs.dtype).max if jnp.issubdtype(xs.dtype, jnp.unsignedinteger) else -1
    # One select, as without the poison: a valid step of a valid sequence keeps its
    # input, every other entry becomes its sequence's fill (0, or the poison).
    keep = mask_from_lengths(lengths, T) & in_range[None, :]
    fill = jnp.where(in_range, jnp.zeros((), xs.dtype), jnp.asarray(poison, xs.dtype))
    return jnp.where(keep.reshape((T, m, *trailing)), xs, fill.reshape((1, m, *trailing)))
