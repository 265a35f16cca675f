"""Online training: the parameters updated inside a batch, every K time steps, by an
algorithm that runs forward in time (RTRL, SnAp, UORO, RFLO).

    online_train_step :: (params, opt_state, batch, step) -> (params, opt_state, OnlineStepMetrics)

One call is one step of the training loop (one batch), as `make_train_step`'s is. Every
stream of the batch runs through time with `online_step` and the parameters of the
moment; after every K time steps (a *window*; the last one may be shorter) the gradient
accumulated since the last update is clipped and fed to the optimiser, and the streams
go on with the new parameters: their carries and the algorithm's traces continue, only
the accumulated gradient and cost start again from zero. Without K, the whole batch is
one window: one update at its end, with the algorithm's whole-sequence gradient.

Each window's gradient is that of its share of the batch's mean loss per supervised
step (the loss `make_train_step` reports and differentiates), so the updates of a batch
add up to about one ordinary step's gradient, and with RTRL and K ≥ T the step *is* an
ordinary step with the exact gradient. A window without a supervised step (the first
steps of a many-to-one task) makes no update. A window whose loss or gradient is not
finite makes none either, and the step says it skipped (`skipped` 1).

UORO's random signs for the batch of step s come from
`jax.random.fold_in(jax.random.key(seed), s)`: a fresh draw at every step, and the same
draw when a resumed run repeats step s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._algorithms.uoro import UORO
from .._core.params import RNNParams
from .._model.online import ONLINE, online_init, online_step
from .._model.per_step_loss import per_step_hits
from .step import _select, global_norm
from .tasks import Batch


class OnlineStepMetrics(NamedTuple):
    """One online training step (one batch): its loss and accuracy over the supervised
    steps, each prediction made with the parameters of its moment; the global norm of
    the sum of its windows' gradients before clipping (with one window, `StepMetrics`'s
    `grad_norm`); `skipped`, 1 when a window's non-finite loss or gradient was
    discarded; and `updates`, the parameter updates it made.

    Example:
        >>> OnlineStepMetrics._fields
        ('loss', 'accuracy', 'grad_norm', 'skipped', 'updates')
    """

    loss: jax.Array
    accuracy: jax.Array
    grad_norm: jax.Array
    skipped: jax.Array
    updates: jax.Array


def signs_key(seed: int, step) -> jax.Array:
    """UORO's key for the batch of training step `step` of a run seeded `seed`."""
    return jax.random.fold_in(jax.random.key(seed), step)


def _windows(leaf: jax.Array, every: int) -> jax.Array:
    # (T, m, …) -> (T/K, K, m, …), zero-padded at the end: a padded step has mask 0, so
    # it adds nothing to the cost or the gradient (its carries are discarded with the batch).
    count = -(-leaf.shape[0] // every)
    padding = [(0, count * every - leaf.shape[0])] + [(0, 0)] * (leaf.ndim - 1)
    return jnp.pad(leaf, padding).reshape(count, every, *leaf.shape[1:])


def make_online_train_step(
    optimizer: optax.GradientTransformation,
    *,
    loss: str,
    activation: str = "tanh",
    method: GradientAlgorithm,
    every: int | None = None,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
) -> Callable[
    [RNNParams, optax.OptState, Batch, int], tuple[RNNParams, optax.OptState, OnlineStepMetrics]
]:
    """Builds the jit-compiled online training step (see the module docstring).

    Args:
        optimizer: any `optax.GradientTransformation`.
        loss: a name in `LOSSES`.
        activation: the Elman layers' activation.
        method: `RTRL()`, `SnAp(n)`, `UORO()` or `RFLO(...)`.
        every: K, the time steps between updates; None: one update per batch.
        max_grad_norm: clip each update's gradient to this global norm; None: no clip.
        seed: the run's seed, from which UORO's keys are drawn (`signs_key`).

    Returns:
        `online_train_step(params, opt_state, batch, step) -> (params, opt_state,
        OnlineStepMetrics)`, pure and jitted once per batch shape (`step`, the training
        step's number, is traced).

    Raises:
        TypeError: `method` is not an online algorithm.
        ValueError: `every` not a positive int, or a non-positive `max_grad_norm`.
    """
    algorithm = resolve_method(method)
    if not isinstance(algorithm, ONLINE):
        names = ", ".join(f"{cls.__name__}()" for cls in ONLINE)
        raise TypeError(
            f"online training needs an algorithm that runs forward in time ({names}), "
            f"got method={algorithm}."
        )
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"every must be a positive int or None, got {every!r}.")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}.")
    clip = optax.identity() if max_grad_norm is None else optax.clip_by_global_norm(max_grad_norm)

    def update(params, opt_state, grads, window_loss, supervised):
        """One clipped optimiser update, kept only when it is finite and supervised."""
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(grad_norm) & jnp.isfinite(window_loss)
        clipped, _ = clip.update(grads, clip.init(params))
        updates, new_opt_state = optimizer.update(clipped, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        take = finite & supervised
        return (
            _select(take, new_params, params),
            _select(take, new_opt_state, opt_state),
            take,
            supervised & jnp.logical_not(finite),
        )

    @jax.jit
    def online_train_step(params, opt_state, batch, step):
        T, m = batch.mask.shape
        every_k = T if every is None else min(every, T)
        key = signs_key(seed, step) if isinstance(algorithm, UORO) else None
        state = online_init(params, m, algorithm, key=key, activation=activation)
        # The online cost is Σ_t Σ_rows loss / m; the batch's loss is Σ mask·loss / Σ mask.
        scale = m / jnp.sum(batch.mask)

        def window(carry, inputs):
            params, opt_state, state, gradient_sum, cost, updates, skipped = carry
            masks = inputs[2]

            def time_step(state, inputs_t):
                x, target, mask_t = inputs_t
                return online_step(
                    params, state, x, target, mask=mask_t, loss=loss, activation=activation
                )

            state, outputs = lax.scan(time_step, state, inputs)
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), state.gradient)
            window_loss = state.cost * scale.astype(state.cost.dtype)
            params, opt_state, took, skip = update(
                params, opt_state, grads, window_loss, jnp.any(masks != 0)
            )
            state = state.restart_gradient()
            carry = (
                params,
                opt_state,
                state,
                jax.tree.map(jnp.add, gradient_sum, grads),
                cost + window_loss,
                updates + took.astype(jnp.int32),
                skipped | skip,
            )
            return carry, outputs

        windows = jax.tree.map(lambda leaf: _windows(leaf, every_k), tuple(batch))
        initial = (
            params,
            opt_state,
            state,
            jax.tree.map(jnp.zeros_like, params),
            jnp.zeros((), state.cost.dtype),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), bool),
        )
        carry, outputs = lax.scan(window, initial, windows)
        params, opt_state, _, gradient_sum, cost, updates, skipped = carry
        outputs = outputs.reshape(-1, *outputs.shape[2:])[:T]
        hits = per_step_hits(outputs, batch.targets, loss=loss)
        accuracy = jnp.sum(jnp.where(batch.mask != 0, hits, False)) / jnp.sum(batch.mask)
        metrics = OnlineStepMetrics(
            cost, accuracy, global_norm(gradient_sum), skipped.astype(jnp.int32), updates
        )
        return params, opt_state, metrics

    return online_train_step
