"""One optax training step and one evaluation, as pure jit-compiled functions.

    train_step :: (params, opt_state, batch) -> (params, opt_state, StepMetrics)

The gradient comes from any `method` (the recurrent layers' custom backward), is clipped
by global norm (the remedy for exploding gradients of Pascanu, Mikolov & Bengio 2013) and fed
to any optax optimiser. A step whose loss or gradient is not finite leaves the
parameters and the optimiser state untouched and says so in its metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._core.params import RNNParams
from .._model.checkpointed_loss import checkpointed_sequence_loss, uses_checkpoint
from .._model.loss import per_step_losses
from .._model.network import rnn_apply
from .._model.per_step_loss import per_step_hits
from .tasks import Batch


class Metrics(NamedTuple):
    """Mean loss and accuracy over the supervised (mask ≠ 0) steps of a batch.

    Example:
        >>> Metrics(loss=0.69, accuracy=0.5).accuracy
        0.5
    """

    loss: jax.Array
    accuracy: jax.Array


class StepMetrics(NamedTuple):
    """One training step: loss and accuracy before the update, the gradient's global norm
    before clipping, and `skipped` (1 when a non-finite loss or gradient was discarded).

    Example:
        >>> StepMetrics._fields
        ('loss', 'accuracy', 'grad_norm', 'skipped')
    """

    loss: jax.Array
    accuracy: jax.Array
    grad_norm: jax.Array
    skipped: jax.Array


def batch_metrics(
    params: RNNParams,
    batch: Batch,
    *,
    loss: str,
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
) -> Metrics:
    """Loss and accuracy of a batch, averaged over its supervised steps.

    The loss is `Σ mask · loss(ŷ_t, y_t) / Σ mask`: per character for a language model,
    per sequence for a many-to-one task; `sequence_loss(..., reduction="mean")` on the
    same batch (whose default sums over the steps instead). Accuracy is the argmax hit rate for
    "softmax_cross_entropy", the rate of all k bits right for
    "sigmoid_binary_cross_entropy", and the rate of |ŷ − y| < 0.04 for "mse" (the
    adding problem's criterion). A batch whose mask is all zero has no supervised step:
    its loss and accuracy are NaN.

    Args:
        params: `RNNParams`.
        batch: a `Batch` (time-major, with a (T, m) mask).
        loss: a name in `LOSSES`.
        activation: recurrent activation.
        method: gradient method of the recurrent layers.

    Returns:
        `Metrics(loss, accuracy)`, scalars; differentiable in `params` by `method`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> batch = Batch(jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32), jnp.ones((5, 2)))
        >>> metrics = batch_metrics(params, batch, loss="softmax_cross_entropy")
        >>> mean = sequence_loss(params, batch.inputs, batch.targets, reduction="mean")
        >>> bool(jnp.isclose(metrics.loss, mean))
        True
    """
    algorithm = resolve_method(method)
    if uses_checkpoint(algorithm):
        # Readout and loss fused into the recomputed segments: O(√T) memory.
        return Metrics(
            *checkpointed_sequence_loss(
                params,
                batch.inputs,
                batch.targets,
                algorithm=algorithm,
                loss=loss,
                activation=activation,
                mask=batch.mask,
                normalise="supervised",
            )
        )
    outputs = rnn_apply(params, batch.inputs, activation=activation, method=algorithm)
    losses = per_step_losses(outputs, batch.targets, mask=batch.mask, loss=loss)
    weight = jnp.sum(batch.mask)
    hits = per_step_hits(outputs, batch.targets, loss=loss)
    accuracy = jnp.sum(jnp.where(batch.mask != 0, hits, False)) / weight
    return Metrics(jnp.sum(losses) / weight, accuracy)


def global_norm(tree) -> jax.Array:
    """√(Σ x²) over every leaf: the norm `optax.clip_by_global_norm` clips."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def _select(take_new: jax.Array, new, old):
    # `where`, not arithmetic: a NaN in `new` must not leak into the kept values.
    return jax.tree.map(lambda n, o: jnp.where(take_new, n, o), new, old)


def make_train_step(
    optimizer: optax.GradientTransformation,
    *,
    loss: str,
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    max_grad_norm: float | None = 1.0,
) -> Callable[[RNNParams, optax.OptState, Batch], tuple[RNNParams, optax.OptState, StepMetrics]]:
    """Builds the jit-compiled training step for any optax optimiser and gradient method.

    Args:
        optimizer: any `optax.GradientTransformation` (its state comes from
            `optimizer.init(params)`).
        loss: a name in `LOSSES`, e.g. a task's `task.loss`.
        activation: recurrent activation.
        method: gradient algorithm of the recurrent layers: a `GradientAlgorithm`
            (`Omega(truncation=32)`, `BPTT()`, …) or a name in `METHODS`.
        max_grad_norm: clip the gradient to this global norm before the optimiser
            (`optax.clip_by_global_norm`); None disables clipping.

    Returns:
        `train_step(params, opt_state, batch) -> (params, opt_state, StepMetrics)`, pure
        and jitted. When the loss or the gradient is not finite (NaN, ±inf, or a norm
        that overflows), the update is skipped: params and opt_state come back
        unchanged and `metrics.skipped` is 1.

    Raises:
        ValueError: unknown `method` or a non-positive `max_grad_norm`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> batch = Batch(jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32), jnp.ones((5, 2)))
        >>> optimizer = optax.adam(1e-3)
        >>> step = make_train_step(optimizer, loss="softmax_cross_entropy")
        >>> opt_state = optimizer.init(params)
        >>> params, opt_state, metrics = step(params, opt_state, batch)
        >>> int(metrics.skipped)
        0
    """
    method = resolve_method(method)
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}.")
    clip = optax.identity() if max_grad_norm is None else optax.clip_by_global_norm(max_grad_norm)

    def objective(params, batch):
        metrics = batch_metrics(params, batch, loss=loss, activation=activation, method=method)
        return metrics.loss, metrics

    @jax.jit
    def train_step(params, opt_state, batch):
        grads, metrics = jax.grad(objective, has_aux=True)(params, batch)
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(metrics.loss)
        # The clip is stateless: its state is never kept, so opt_state is exactly the
        # user's `optimizer.init(params)`.
        clipped, _ = clip.update(grads, clip.init(params))
        updates, new_opt_state = optimizer.update(clipped, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        step_metrics = StepMetrics(
            metrics.loss, metrics.accuracy, grad_norm, jnp.logical_not(finite).astype(jnp.int32)
        )
        return (
            _select(finite, new_params, params),
            _select(finite, new_opt_state, opt_state),
            step_metrics,
        )

    return train_step


def make_eval_step(
    *,
    loss: str,
    activation: str = "tanh",
    method: str | GradientAlgorithm | None = None,
) -> Callable[[RNNParams, Batch], Metrics]:
    """Builds the jit-compiled evaluation `eval_step(params, batch) -> Metrics`.

    No gradient is taken, so the method only matters for its memory: with an algorithm
    that has `checkpoint=k` the forward runs in fused segments and keeps O(√T) states,
    otherwise it is the plain forward scan.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> batch = Batch(jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32), jnp.ones((5, 2)))
        >>> eval_step = make_eval_step(loss="softmax_cross_entropy")
        >>> float(eval_step(params, batch).accuracy) in (0.0, 1.0)
        True
    """
    algorithm = resolve_method("autodiff" if method is None else method)
    if not uses_checkpoint(algorithm):
        algorithm = resolve_method("autodiff")

    @jax.jit
    def eval_step(params, batch):
        return batch_metrics(params, batch, loss=loss, activation=activation, method=algorithm)

    return eval_step
