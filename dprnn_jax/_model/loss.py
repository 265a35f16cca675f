"""Per-step losses and the sequence cost C = (1/m) Σ_t Σ_rows loss (docs/theory.md#model).

Two shapes of task: many-to-many (`sequence_loss`, a target at every step, padded
steps masked) and many-to-one (`many_to_one_loss`, one target per sequence read from
the readout of its last valid state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._core.padding import nan_unless_in_range
from .._core.params import RNNParams
from .._core.validation import check_choice, check_shape
from .checkpointed_loss import (
    checkpointed_many_to_one_loss,
    checkpointed_sequence_loss,
    uses_checkpoint,
)
from .network import mask_from_lengths, rnn_forward
from .per_step_loss import LOSSES as LOSSES
from .per_step_loss import per_step_losses as per_step_losses
from .readout import apply_readout

# How `sequence_loss` scales the summed losses: by the batch size m, or by the number of
# supervised (step, sequence) pairs.
REDUCTIONS = ("sum_over_steps", "mean")


def sequence_loss(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    mask: jax.Array | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    block: int | None = None,
    truncation: int | None = None,
    tol: float | None = None,
    lengths: jax.Array | None = None,
    h0s=None,
    reduction: str = "sum_over_steps",
) -> jax.Array:
    """Sequence cost `C = (1/m) Σ_t Σ_rows loss(ŷ_t, y_t)`, masked steps contributing 0.

    Many-to-many: a target at every step. For a right-padded batch pass either `mask`
    or `lengths` (which also zeroes the padded inputs and reverses bidirectional
    layers within each length, see `rnn_forward`).

    The scale of the cost. By default (`reduction="sum_over_steps"`) C sums the losses
    over the steps and averages them over the m sequences, as in the theory
    (docs/theory.md#model): it grows with T. The training loop, `batch_metrics` and the
    command line (`dprnn-jax train`, the main job) report instead the mean loss per
    supervised step, `Σ mask · loss / Σ mask` (for a language model, the cross-entropy
    per character): `reduction="mean"` gives that number. The two differ by the factor
    (number of supervised steps) / m, a constant of the batch's mask, so they have the
    same minimiser and gradients that differ by that factor only.

    Args:
        params: `RNNParams`.
        xs: inputs (T, m, n), or integer token indices (T, m); bfloat16 inputs with
            float32 params are mixed precision (see `rnn_forward`): the cost and the
            gradient of params are float32.
        targets: integer classes (T, m) for "softmax_cross_entropy"; floats (T, m, k)
            in [0, 1] for "sigmoid_binary_cross_entropy"; floats (T, m, k) for "mse".
        mask: optional (T, m), keyword-only; entries equal to 0 (or False) mark padded
            (unsupervised) steps.
        loss: "softmax_cross_entropy" (softmax readout), "sigmoid_binary_cross_entropy"
            (logistic readout, summed over the k outputs) or "mse" (identity readout,
            ½‖ŷ − y‖²).
        activation: recurrent activation.
        method: gradient algorithm of the recurrent layer(s): a `GradientAlgorithm`
            (`Omega(truncation=32)`, `BPTT()`, …) or its name (see `rnn_layer`).
        block: with the name "omega": Ω triangle size (see `rnn_layer`).
        truncation: with the names "omega", "bptt": K-step truncation (see `rnn_layer`).
        tol: with the name "omega": adaptive Ω tolerance (see `rnn_layer`).
        lengths: valid steps per sequence (m,), keyword-only; steps t ≥ lengths[v] are
            masked. Give `mask` or `lengths`, not both.
        h0s: initial states, one per layer (see `rnn_forward`), or None for zeros.
        reduction: "sum_over_steps" (default): `Σ_t Σ_rows loss / m`; "mean": the mean
            over the supervised (step, sequence) pairs, `Σ mask · loss / Σ mask`, the
            per-step loss that training and the command line report (NaN when no step
            is supervised, as there).

    Returns:
        A scalar. Class indices outside [0, k), and under `jit` (where they cannot be
        checked) `lengths` outside [0, T], give NaN, and a NaN gradient, rather than a
        wrong number.

    Raises:
        ValueError: if both `mask` and `lengths` are given, an unknown `reduction`, and
            as `rnn_forward` (concrete `lengths` outside [0, T], an empty batch, …).

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs, ys = jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32)
        >>> grads = jax.jit(jax.grad(sequence_loss))(params, xs, ys)
        >>> total = sequence_loss(params, xs, ys)  # summed over the 5 steps
        >>> per_step = sequence_loss(params, xs, ys, reduction="mean")
        >>> bool(jnp.allclose(total, 5 * per_step))
        True
    """
    check_choice("loss", loss, LOSSES)
    check_choice("reduction", reduction, REDUCTIONS)
    if mask is not None and lengths is not None:
        raise ValueError(
            "sequence_loss takes mask or lengths, not both: lengths already defines the "
            "mask (steps t < lengths[v] are valid)."
        )
    algorithm = resolve_method(method, block=block, truncation=truncation, tol=tol)
    if uses_checkpoint(algorithm):
        # Readout and loss fused into the segments: O(√T) memory.
        return checkpointed_sequence_loss(
            params,
            xs,
            targets,
            algorithm=algorithm,
            loss=loss,
            activation=activation,
            mask=mask,
            lengths=lengths,
            h0s=h0s,
            normalise="batch" if reduction == "sum_over_steps" else "supervised",
        )[0]
    outputs = rnn_forward(
        params, xs, h0s, lengths=lengths, activation=activation, method=algorithm
    ).outputs
    T = xs.shape[0]
    if lengths is not None:
        mask = mask_from_lengths(jnp.asarray(lengths), T)
    losses = per_step_losses(outputs, targets, mask=mask, loss=loss)
    if reduction == "mean":
        supervised = losses.size if mask is None else jnp.sum(jnp.asarray(mask) != 0)
        total = losses.sum() / supervised
    else:
        total = losses.sum() / xs.shape[1]
    # A length outside [0, T] (only under jit) would mask a sequence away: NaN instead.
    return nan_unless_in_range(total, lengths, T)


def many_to_one_loss(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    lengths: jax.Array | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    block: int | None = None,
    truncation: int | None = None,
    tol: float | None = None,
    h0s=None,
) -> jax.Array:
    """Many-to-one cost `C = (1/m) Σ_v loss(ρ(h^L_{L_v − 1} W_outᵀ + b_out), y_v)`.

    Sequence classification (or regression) from the readout of each sequence's LAST
    VALID top-layer state (for a bidirectional top layer `[h→_{L−1}, h←_0]`).

    Args:
        params: `RNNParams`.
        xs: inputs (T, m, n) or integer tokens (T, m), right-padded.
        targets: one per sequence: integer classes (m,) for "softmax_cross_entropy",
            floats (m, k) for "sigmoid_binary_cross_entropy" and "mse".
        lengths: valid steps per sequence (m,), keyword-only, or None for all T.
        loss: as in `sequence_loss`.
        activation: as in `sequence_loss`.
        method: as in `sequence_loss`.
        block: as in `sequence_loss`.
        truncation: as in `sequence_loss`.
        tol: as in `sequence_loss`.
        h0s: as in `sequence_loss`.

    Returns:
        A scalar. Class indices outside [0, k), and under `jit` (where they cannot be
        checked) `lengths` outside [0, T], give NaN, and a NaN gradient.

    Raises:
        ValueError: `targets` of the wrong shape, and as `rnn_forward` (concrete
            `lengths` outside [0, T], an empty batch, …).

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs, ys = jnp.ones((5, 2, 3)), jnp.array([1, 3])
        >>> grads = jax.jit(jax.grad(many_to_one_loss))(params, xs, ys, lengths=jnp.array([5, 2]))
    """
    check_choice("loss", loss, LOSSES)
    algorithm = resolve_method(method, block=block, truncation=truncation, tol=tol)
    if uses_checkpoint(algorithm):
        return checkpointed_many_to_one_loss(
            params,
            xs,
            targets,
            algorithm=algorithm,
            loss=loss,
            activation=activation,
            lengths=lengths,
            h0s=h0s,
        )
    final = rnn_forward(
        params, xs, h0s, lengths=lengths, activation=activation, method=algorithm
    ).final_states[-1]
    if isinstance(final, tuple):  # an LSTM's (h, c): the readout reads h
        final = final[0]
    outputs = apply_readout(params.readout, final, algorithm)
    m, k = outputs.shape
    if loss == "softmax_cross_entropy":
        check_shape("targets", targets, (m,), "(m,) = one class index per sequence")
    else:
        check_shape("targets", targets, (m, k), "(m, k) = one target per sequence")
    losses = per_step_losses(outputs[None], jnp.asarray(targets)[None], loss=loss)
    # The final state of a length outside [0, T] (only under jit) is NaN already; the
    # gradient is made NaN too.
    return nan_unless_in_range(losses.sum() / outputs.shape[0], lengths, xs.shape[0])
