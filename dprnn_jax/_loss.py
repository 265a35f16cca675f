"""Per-step losses and the sequence cost C = (1/m) Σ_t Σ_rows loss (DESIGN.md §1)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from ._network import rnn_apply
from ._params import RNNParams
from ._validation import check_choice, check_floating, check_rank, check_shape


def _softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    k = logits.shape[-1]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    # An out-of-range class cannot be caught at trace time: make it NaN, not a number.
    return jnp.where((targets >= 0) & (targets < k), loss, jnp.nan)


def _sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(axis=-1)


def _mean_squared_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    # ½‖ŷ − y‖², so that ∂loss/∂ŷ = ŷ − y as in seed 000's Δ^L = A^L − Y.
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
    outputs: jax.Array, targets: jax.Array, mask: jax.Array | None = None, *, loss: str
) -> jax.Array:
    """Loss of every (step, sequence) pair, shape (T, m); masked entries are exactly 0."""
    check_choice("loss", loss, LOSSES)
    check_rank("outputs", outputs, 3, "(T, m, k)")
    check_targets(loss, targets, outputs.shape)
    losses = LOSSES[loss](outputs, targets)
    if mask is None:
        return losses
    check_shape("mask", mask, outputs.shape[:2], "(T, m)")
    # `where`, not a product: a NaN/inf loss at a padded step must not leak into C.
    return jnp.where(jnp.asarray(mask) != 0, losses, 0)


def sequence_loss(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    mask: jax.Array | None = None,
    *,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
    method: str = "omega",
) -> jax.Array:
    """Sequence cost `C = (1/m) Σ_t Σ_rows loss(ŷ_t, y_t)`, masked steps contributing 0.

    Args:
        params: `RNNParams`.
        xs: inputs (T, m, n).
        targets: integer classes (T, m) for "softmax_cross_entropy"; floats (T, m, k)
            in [0, 1] for "sigmoid_binary_cross_entropy"; floats (T, m, k) for "mse".
        mask: optional (T, m); entries equal to 0 (or False) mark padded steps.
        loss: "softmax_cross_entropy" (softmax readout), "sigmoid_binary_cross_entropy"
            (logistic readout, summed over the k outputs) or "mse" (identity readout,
            ½‖ŷ − y‖²).
        activation: recurrent activation.
        method: gradient method of the recurrent layers (see `rnn_layer`).

    Returns:
        A scalar. Class indices outside [0, k) give NaN rather than a wrong number.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs, ys = jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32)
        >>> grads = jax.grad(sequence_loss)(params, xs, ys)
    """
    check_choice("loss", loss, LOSSES)
    outputs = rnn_apply(params, xs, activation=activation, method=method)
    losses = per_step_losses(outputs, targets, mask, loss=loss)
    return losses.sum() / xs.shape[1]
