"""The sequence loss with the readout and the loss fused into a checkpointed backward.

`sequence_loss`, `many_to_one_loss` and the training step call this when the algorithm
checkpoints (`Checkpointed(algorithm, k)`, or `BPTT(checkpoint=k)` and
`Omega(checkpoint=k)`, which spell it; docs/algorithms.md#checkpoint): the network, the
readout and the per-step losses run one segment at a time (`checkpointed_segments.py`),
so neither the (T, m, d) states nor the (T, m, k) outputs are ever all alive.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._algorithms.checkpoint import checkpoint_plan
from .._cells.kinds import check_inputs
from .._core.padding import nan_unless_in_range, zero_padding
from .._core.params import RNNParams
from .._core.precision import compute_dtype, to_compute_dtype
from .._core.validation import check_shape
from .bidirectional import BidirectionalParams
from .checkpointed_segments import segmented_loss
from .layer_kinds import hidden_size, kind_of
from .network import (
    check_initial_states,
    check_lengths,
    check_rnn_params,
    mask_from_lengths,
)
from .per_step_loss import LOSSES, check_targets, per_step_hits
from .readout import apply_readout


@dataclasses.dataclass(frozen=True)
class SegmentLoss:
    """Σ w·loss and Σ w·hit over one segment's outputs (hashable: part of the program)."""

    loss: str

    def __call__(self, outputs, targets, weights):
        supervised = weights != 0
        # `where`, not a product: a NaN/inf loss at an unsupervised step stays out.
        losses = jnp.where(supervised, LOSSES[self.loss](outputs, targets), 0)
        hits = jnp.where(supervised, per_step_hits(outputs, targets, loss=self.loss), False)
        return jnp.sum(losses * weights), jnp.sum(hits * weights)


def uses_checkpoint(algorithm: GradientAlgorithm) -> bool:
    return checkpoint_plan(algorithm) is not None


def _initial_carry(layer, h0, m: int, dtype):
    """A layer's initial state as its segments carry it, in the dtype the layers compute
    in (`dtype`): zeros if None; for an LSTM the pair (h, c)."""
    if kind_of(layer).paired_state:
        h, c = (None, None) if h0 is None else h0
        return tuple(
            jnp.zeros((m, hidden_size(layer)), dtype) if x is None else to_compute_dtype(x, dtype)
            for x in (h, c)
        )
    return jnp.zeros((m, hidden_size(layer)), dtype) if h0 is None else to_compute_dtype(h0, dtype)


def _segmented_loss(algorithm, params, xs, targets, weights, valid, h0s, **options):
    return segmented_loss(
        checkpoint_plan(algorithm), params, xs, targets, weights, valid, h0s, **options
    )


def _prepare(params, xs, lengths, h0s, algorithm):
    """Validates a checkpointed loss's network arguments as `rnn_forward` does; returns
    (layers, T, m, xs with padded inputs zeroed, valid (T, m) or None, filled h0s)."""
    check_rnn_params(params)
    layers = tuple(params.layers)
    for l, layer in enumerate(layers):
        if isinstance(layer, BidirectionalParams):
            raise ValueError(
                f"method={algorithm} fuses the loss into segments run forward in time, so it "
                f"takes unidirectional layers only; params.layers[{l}] is bidirectional. Use "
                "the algorithm without checkpoint for bidirectional models."
            )
    T, m = check_inputs(xs, layers[0].W, "params.layers[0].W")
    h0s = check_initial_states(h0s, layers, m, jnp.result_type(xs))
    # The segments' carries keep one dtype: the layers' own, or in the mixed-precision
    # mode the inputs' (`_core/precision.py`).
    dtype = compute_dtype(layers[0].W.dtype, jnp.result_type(xs))
    h0s = tuple(_initial_carry(layer, h0, m, dtype) for h0, layer in zip(h0s, layers))
    valid = None
    if lengths is not None:
        lengths = check_lengths(lengths, T, m)
        valid = mask_from_lengths(lengths, T)
        # As `rnn_forward`: padded inputs never reach a valid step, and a sequence whose
        # length is out of range (under jit) reads NaN.
        xs = zero_padding(xs, lengths)
    return layers, T, m, xs, valid, h0s


def checkpointed_sequence_loss(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    algorithm: GradientAlgorithm,
    loss: str,
    activation: str,
    mask: jax.Array | None = None,
    lengths: jax.Array | None = None,
    h0s=None,
    normalise: str = "batch",
) -> tuple[jax.Array, jax.Array]:
    """`(loss, accuracy)` of a many-to-many batch, differentiable in O(√T) memory.

    Args:
        params: an `RNNParams` of unidirectional layers.
        xs, targets, mask, lengths, h0s: as in `sequence_loss` (mask or lengths).
        algorithm: `BPTT(checkpoint=…)` or `Omega(checkpoint=…)`.
        loss: a name in `LOSSES`.
        activation: the recurrent activation.
        normalise: "batch": `Σ mask·loss / m` (as `sequence_loss`); "supervised":
            `Σ mask·loss / Σ mask` (as the training step's metrics).

    Returns:
        The loss (differentiable w.r.t. params, xs and h0s) and the weighted hit rate
        (not differentiable); both NaN when a length lies outside [0, T] (under jit).

    Raises:
        ValueError: a bidirectional layer (its backward direction needs the whole
            sequence's future), and as `rnn_forward`/`per_step_losses`.
    """
    layers, T, m, xs, valid, h0s = _prepare(params, xs, lengths, h0s, algorithm)
    check_targets(loss, targets, (T, m, params.readout.W.shape[0]))
    if mask is not None:
        check_shape("mask", mask, (T, m), "(T, m)")
    if valid is not None:
        mask = valid
    dtype = layers[0].W.dtype
    weights = jnp.ones((T, m), dtype) if mask is None else (jnp.asarray(mask) != 0).astype(dtype)
    total = jnp.sum(weights)
    scale = m if normalise == "batch" else total
    loss_value, hits = _segmented_loss(
        algorithm,
        params,
        xs,
        targets,
        weights / scale,
        valid,
        h0s,
        activation=activation,
        segment_loss=SegmentLoss(loss),
    )
    # Lengths outside [0, T] (only possible under jit): NaN, not the loss of clamped ones.
    return (
        nan_unless_in_range(loss_value, lengths, T),
        nan_unless_in_range(hits * scale / total, lengths, T),
    )


def checkpointed_many_to_one_loss(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    *,
    algorithm: GradientAlgorithm,
    loss: str,
    activation: str,
    lengths: jax.Array | None = None,
    h0s=None,
) -> jax.Array:
    """`many_to_one_loss` in O(√T) memory: the loss read at each sequence's last valid
    step, fused into the segments (a weight of 1/m there, 0 elsewhere).

    A sequence of length 0 has no valid step: as in `many_to_one_loss`, its loss is
    read from its initial top-layer state, outside the segments. A length outside
    [0, T] (under jit) makes the loss NaN.
    """
    layers, T, m, xs, valid, h0s = _prepare(params, xs, lengths, h0s, algorithm)
    k = params.readout.W.shape[0]
    if loss == "softmax_cross_entropy":
        check_shape("targets", targets, (m,), "(m,) = one class index per sequence")
    else:
        check_shape("targets", targets, (m, k), "(m, k) = one target per sequence")
    targets = jnp.asarray(targets)
    lengths = jnp.full((m,), T) if lengths is None else jnp.asarray(lengths)
    dtype = layers[0].W.dtype
    last = (jnp.arange(T)[:, None] == lengths[None, :] - 1).astype(dtype)
    tiled = jnp.broadcast_to(targets[None], (T, *targets.shape))
    check_targets(loss, tiled, (T, m, k))
    fused, _ = _segmented_loss(
        algorithm,
        params,
        xs,
        tiled,
        last / m,
        valid,
        h0s,
        activation=activation,
        segment_loss=SegmentLoss(loss),
    )
    top = h0s[-1][0] if isinstance(h0s[-1], tuple) else h0s[-1]  # an LSTM's (h, c): h
    initial = apply_readout(params.readout, top, algorithm)
    empty = jnp.where(lengths == 0, LOSSES[loss](initial, targets), 0)
    # Lengths outside [0, T] (only possible under jit) select no step: NaN, not 0.
    return nan_unless_in_range(fused + jnp.sum(empty) / m, lengths, T)
