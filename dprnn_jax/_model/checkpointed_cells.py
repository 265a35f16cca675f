"""The fused sequence loss in O(√T) memory for stacks that hold a GRU or LSTM layer.

    scan :: (carries, segment) -> (carries, (Σ w·loss, Σ w·hit))

With `BPTT(checkpoint=k)` or `Omega(checkpoint=k)` and a gated layer in the stack, the
network, the readout and the per-step losses run as an outer `lax.scan` over segments
of k steps. Its body runs every layer over one segment (`run_recurrent_layer`, with the
same algorithm without `checkpoint`), then the readout and the weighted losses, and is
wrapped in `jax.checkpoint`: the forward keeps only each layer's carry (`h`, or `(h, c)`
for an LSTM) at the segment boundaries, and the backward recomputes one segment at a
time and differentiates it with the algorithm's own backward (for `Omega`, the segment's
triangle, docs/algorithms.md#checkpoint). The carries' cotangents flow from segment to
segment, so the gradient is exact. When k does not divide T, the shorter last segment
runs on its own after the scan.

Memory: O(T/k · L·m·d) for the boundaries plus one segment's residuals, O(√T) for
k = ⌈√T⌉, for one extra forward pass of compute. Stacks of Elman layers only take the
faster fused backward of `_backward/checkpointed.py` instead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._algorithms.base import GradientAlgorithm
from .._core.params import RNNParams
from .checkpointed import SegmentLoss, segment_length
from .layer_kinds import run_recurrent_layer


class _Segments(NamedTuple):
    """The inputs, each with leading axis T, or (segments, k) once split."""

    xs: jax.Array
    targets: jax.Array
    weights: jax.Array
    valid: jax.Array


def _segment(
    algorithm: GradientAlgorithm,
    activation: str,
    segment_loss: SegmentLoss,
    params: RNNParams,
    carries: tuple,
    segment: _Segments,
):
    """One segment of every layer, the readout and the losses, from the layers' carries:
    `(carries at the segment's end, (Σ w·loss, Σ w·hit))`."""
    inputs, ends = segment.xs, []
    for l, (layer, carry) in enumerate(zip(params.layers, carries)):
        if l > 0:
            # As `rnn_forward`: padded steps feed zeros to the layer above.
            inputs = jnp.where(segment.valid[..., None], inputs, 0)
        inputs, end = run_recurrent_layer(
            layer, inputs, carry, lengths=None, activation=activation, method=algorithm
        )
        ends.append(end)
    outputs = inputs @ params.readout.W.T + params.readout.b
    return tuple(ends), segment_loss(outputs, segment.targets, segment.weights)


def checkpointed_cells_loss(
    algorithm: GradientAlgorithm,
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    valid: jax.Array | None,
    h0s: tuple,
    *,
    activation: str,
    segment_loss: SegmentLoss,
) -> tuple[jax.Array, jax.Array]:
    """`(Σ_t Σ_v w_tv loss_tv, Σ_t Σ_v w_tv hit_tv)` in O(√T) memory, for any layers.

    Args:
        algorithm: `BPTT(checkpoint=k)` or `Omega(checkpoint=k)`; inside each segment
            the same algorithm without the option runs.
        params: an `RNNParams` of unidirectional layers of any kind (validated by the
            caller).
        xs: inputs (T, m, n), or integer tokens (T, m), padded steps already zeroed.
        targets: as `per_step_losses` expects, leading (T, m).
        weights: (T, m) weights of the per-step losses (0 at padded steps).
        valid: (T, m) booleans, False where the inputs of layers above the first are
            zeroed (padding with `lengths`), or None.
        h0s: one initial carry per layer: (m, d_l), or the pair (h, c) for an LSTM.
        activation: the recurrent activation of the Elman layers.
        segment_loss: the weighted loss and hit count of one segment's outputs.

    Returns:
        Two scalars; only the first is differentiable (w.r.t. params, xs and h0s).
    """
    T, m = weights.shape
    k = segment_length(algorithm.checkpoint, T)
    whole, tail = divmod(T, k)
    if valid is None:
        valid = jnp.ones((T, m), bool)
    inputs = _Segments(xs, targets, weights, valid)
    inner = dataclasses.replace(algorithm, checkpoint=None)
    # Only the arguments of a segment (its starting carries and its slice of the inputs)
    # are kept for the backward; everything inside is recomputed there. `prevent_cse`
    # is not needed under `scan`, which does not merge iterations.
    segment = jax.checkpoint(
        functools.partial(_segment, inner, activation, segment_loss), prevent_cse=False
    )

    def step(carries, chunk):
        return segment(params, carries, chunk)

    split = jax.tree.map(lambda a: a[: whole * k].reshape(whole, k, *a.shape[1:]), inputs)
    carries, (losses, hits) = lax.scan(step, tuple(h0s), split)
    loss, hit = losses.sum(), hits.sum()
    if tail:  # the shorter last segment, from the carries where the scan ended
        rest = jax.tree.map(lambda a: a[whole * k :], inputs)
        _, (tail_loss, tail_hits) = segment(params, carries, rest)
        loss, hit = loss + tail_loss, hit + tail_hits
    return loss, hit
