"""Per-step losses: the loss of every (step, sequence) pair of a readout's outputs.

`LOSSES` maps each name to its loss of one step:

    >>> sorted(LOSSES)
    ['mse', 'sigmoid_binary_cross_entropy', 'softmax_cross_entropy']
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from .._core.validation import check_choice, check_floating, check_rank, check_shape


def _softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    k = logits.shape[-1]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    # An out-of-range class cannot be caught at trace time: make it NaN, not a number.
    return jnp.where((targets >= 0) & (targets < k), loss, jnp.nan)


def _sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(axis=-1)


def _mean_squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    # ½‖ŷ − y‖², so that ∂loss/∂ŷ = ŷ − y, the readout error of docs/theory.md#psi-and-omega.
    return 0.5 * jnp.sum((outputs - targets) ** 2, axis=-1)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax_cross_entropy": _softmax_cross_entropy,
    "sigmoid_binary_cross_entropy": _sigmoid_binary_cross_entropy,
    "mse": _mean_squared_error,
}


def check_targets(loss: str, targets: object, outputs_shape: tuple[int, int, int]) -> None:
    T, m, k = outputs_shape
    if loss == "softmax_cross_entropy":
        check_shape("targets", targets, (T, m), "(T, m) integer class indices")
        if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
            raise TypeError(
                f"targets for softmax_cross_entropy must be integer class indices, got dtype "
                f"{jnp.result_type(targets)}."
            )
    else:
        check_shape("targets", targets, (T, m, k), "(T, m, k)")
        check_floating("targets", targets)


def per_step_losses(
    outputs: jax.Array, targets: jax.Array, *, mask: jax.Array | None = None, loss: str
) -> jax.Array:
    """Loss of every (step, sequence) pair, shape (T, m); masked entries are exactly 0.

    Example:
        >>> logits = jnp.zeros((3, 2, 4))  # a uniform guess over 4 classes: log 4 each
        >>> mask = jnp.array([[1, 1], [1, 0], [0, 0]])
        >>> losses = per_step_losses(
        ...     logits, jnp.zeros((3, 2), jnp.int32), mask=mask, loss="softmax_cross_entropy"
        ... )
        >>> [[round(loss, 3) for loss in row] for row in losses.tolist()]
        [[1.386, 1.386], [1.386, 0.0], [0.0, 0.0]]
    """
    check_choice("loss", loss, LOSSES)
    check_rank("outputs", outputs, 3, "(T, m, k)")
    check_targets(loss, targets, outputs.shape)
    losses = LOSSES[loss](outputs, targets)
    if mask is None:
        return losses
    check_shape("mask", mask, outputs.shape[:2], "(T, m)")
    # `where`, not a product: a NaN/inf loss at a padded step must not leak into C.
    return jnp.where(jnp.asarray(mask) != 0, losses, 0)


# An adding-problem prediction counts as correct within this distance of the target.
ADDING_TOLERANCE = 0.04


def per_step_hits(outputs: jax.Array, targets: jax.Array, *, loss: str) -> jax.Array:
    """Whether each (step, sequence) prediction is right, (T, m) booleans: the argmax for
    "softmax_cross_entropy", all k bits for "sigmoid_binary_cross_entropy", |ŷ − y| <
    0.04 in every output for "mse" (the adding problem's criterion)."""
    if loss == "softmax_cross_entropy":
        return jnp.argmax(outputs, axis=-1) == targets
    if loss == "sigmoid_binary_cross_entropy":
        return jnp.all((outputs > 0) == (targets > 0.5), axis=-1)
    return jnp.all(jnp.abs(outputs - targets) < ADDING_TOLERANCE, axis=-1)
