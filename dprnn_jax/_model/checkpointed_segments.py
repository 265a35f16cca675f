"""The fused sequence loss in O(√T) memory, for stacks of every kind of layer.

    scan :: (carries, segment) -> (carries, (Σ w·loss, Σ w·hit))

With `Checkpointed(algorithm, k)` (`BPTT(checkpoint=k)`, `Omega(checkpoint=k)`), the
network, the readout and the per-step losses run as an outer `lax.scan` over segments
of k steps. Its body runs every layer over one segment (`run_recurrent_layer`, with the
wrapped algorithm), then the readout and the weighted losses, and is wrapped in
`jax.checkpoint`: the forward keeps only each layer's carry (`h`, or `(h, c)`
for an LSTM) at the segment boundaries, and the backward recomputes one segment at a
time and differentiates it with the algorithm's own backward (for `Omega`, the segment's
triangle, docs/algorithms.md#checkpoint). The carries' cotangents flow from segment to
segment, so the gradient is exact. When k does not divide T, the shorter last segment
runs on its own after the scan.

Memory: O(T/k · L·m·d) for the boundaries plus one segment's residuals, O(√T) for
k = ⌈√T⌉, for one extra forward pass of compute. Every path from a later loss into a
segment enters through its last carry, so this is the blocked Ω DP with recomputation
(docs/theory.md#blocked-omega). A stack of Elman layers once had a hand-fused backward of
its own; this form measured as fast and as small (T = 1024, m = 16, d = 32, two layers:
11.5 against 11.9 ms, 0.7 MiB of temporaries each), so it is the only one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._algorithms.checkpoint import Checkpointed, segment_length
from .._core.params import RNNParams
from .layer_kinds import run_recurrent_layer
from .readout import apply_readout


class _Segments(NamedTuple):
    """The inputs, each with leading axis T, or (segments, k) once split."""

    xs: jax.Array
    targets: jax.Array
    weights: jax.Array
    valid: jax.Array


# (outputs (k, m, k_out), targets, weights (k, m)) -> (Σ w·loss, Σ w·hit) of a segment.
SegmentLoss = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _segment(
    algorithm,
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
    outputs = apply_readout(params.readout, inputs, algorithm)
    return tuple(ends), segment_loss(outputs, segment.targets, segment.weights)


def segmented_loss(
    plan: Checkpointed,
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
        plan: `Checkpointed(algorithm, k)`: `algorithm` runs inside each segment.
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
    k = segment_length(plan.segment, T)
    whole, tail = divmod(T, k)
    if valid is None:
        valid = jnp.ones((T, m), bool)
    inputs = _Segments(xs, targets, weights, valid)
    inner = plan.algorithm
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
