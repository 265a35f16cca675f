r"""A sequence loss in O(√T) memory: segments recomputed in the backward, loss fused.

With `BPTT(checkpoint=k)` or `Omega(checkpoint=k)`, the forward of the whole network —
every recurrent layer, the readout and the per-step losses — runs one segment of k
steps at a time and keeps only the states at the segment boundaries. The backward
walks the segments in reverse: it recomputes one segment's states from its boundary,
differentiates the segment's readout and losses, and runs the algorithm inside the
segment, layer by layer from the top, with the error arriving from the next segment
added at the segment's last step (docs/theory.md#blocked-omega):

.. math::

    P'_e = P_e + Δ_{e+1}\, Ω(e+1, e), \qquad
    Δ_i = P'_i + \sum_{i < j \le e} P'_j\, Ω(j, i) \quad (s \le i \le e).

Every path from a later loss into the segment enters through step e, so this is exact.
The gradients are accumulated segment by segment, so the (T, m, d) states and the
(T, m, k) logits are never all alive: memory O(T/k · L·m·d + k·m·(d + k_out)), which is
O(√T) for k = ⌈√T⌉, for one extra forward pass of compute. Each segment is read from
the inputs where it lies (a dynamic slice), never from a padded copy; when k does not
divide T the shorter last segment runs on its own.

The loss must be fused for this to pay: a layer alone (`rnn_layer`) returns all its
states, which are also its residuals, so checkpointing it would save nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .._algorithms.base import GradientAlgorithm
from .._cells.elman import hoisted_layer
from .._cells.tokens import is_token_input, token_hoisted_layer, token_weight_gradient
from .._core.activations import get_activation
from .._core.error_flow import sum_over_steps
from .._core.jacobian import ElmanJacobian
from .._core.params import LayerParams, ReadoutParams, RNNParams

# (outputs (k, m, k_out), targets, weights (k, m)) -> (Σ w·loss, Σ w·hit) of a segment.
SegmentLoss = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def segment_length(checkpoint: int | str, T: int) -> int:
    """k: the option's value, or ⌈√T⌉ for "sqrt"; at most T."""
    k = math.isqrt(T - 1) + 1 if checkpoint == "sqrt" else int(checkpoint)
    return max(1, min(k, T))


class _Static(NamedTuple):
    """The static configuration of the fused loss (hashable)."""

    algorithm: GradientAlgorithm  # the algorithm run inside each segment
    activation: str
    segment: int
    segment_loss: SegmentLoss


class _Segments(NamedTuple):
    """The inputs, each with leading axis T (or, sliced, one segment's k steps)."""

    xs: jax.Array
    targets: jax.Array
    weights: jax.Array
    valid: jax.Array

    def at(self, start, length: int) -> _Segments:
        """Steps [start, start + length); `start` may be traced. No copy of the inputs:
        each segment is read from them where it lies."""
        return _Segments(*(lax.dynamic_slice_in_dim(x, start, length) for x in self))


def _layer_forward(activation, layer: LayerParams, inputs, h):
    forward = token_hoisted_layer if is_token_input(inputs) else hoisted_layer
    return forward(layer, inputs, h, activation=activation)


def _segment_states(static: _Static, params: RNNParams, starts, segment: _Segments):
    """The states of every layer over one segment, from its starting states."""
    states, inputs = [], segment.xs
    for l, (layer, start) in enumerate(zip(params.layers, starts)):
        if l > 0:
            # As `rnn_forward`: padded steps feed zeros to the layer above.
            inputs = jnp.where(segment.valid[..., None], inputs, 0)
        hs = _layer_forward(static.activation, layer, inputs, start)
        states.append(hs)
        inputs = hs
    return states


def _segment_value(static: _Static, params: RNNParams, starts, segment: _Segments):
    states = _segment_states(static, params, starts, segment)
    outputs = states[-1] @ params.readout.W.T + params.readout.b
    loss, hits = static.segment_loss(outputs, segment.targets, segment.weights)
    return tuple(hs[-1] for hs in states), (loss, hits)


def _layout(static: _Static, T: int) -> tuple[int, int]:
    """(number of whole segments, steps in the last, shorter one (0 if none))."""
    return T // static.segment, T % static.segment


def _forward(static: _Static, params: RNNParams, inputs: _Segments, h0s):
    """scan :: whole segments -> (loss, hits), keeping each segment's starting states;
    then the shorter last segment, if any, from the last state."""
    k = static.segment
    whole, tail = _layout(static, inputs.weights.shape[0])

    def step(starts, s):
        ends, value = _segment_value(static, params, starts, inputs.at(s * k, k))
        return ends, (starts, value)

    ends, (boundaries, (losses, hits)) = lax.scan(step, tuple(h0s), jnp.arange(whole))
    loss, hit = losses.sum(), hits.sum()
    if tail:
        _, (tail_loss, tail_hits) = _segment_value(static, params, ends, inputs.at(whole * k, tail))
        loss, hit = loss + tail_loss, hit + tail_hits
    return (loss, hit), (boundaries, ends)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_loss(static: _Static, params: RNNParams, segments: _Segments, h0s):
    return _forward(static, params, segments, h0s)[0]


def _fused_loss_fwd(static, params, segments, h0s):
    value, boundaries = _forward(static, params, segments, h0s)
    # Residuals: the parameters, the inputs and only the segment-boundary states.
    return value, (params, segments, boundaries)


def _fused_loss_bwd(static, residuals, cotangents):
    params, inputs, (boundaries, tail_start) = residuals
    k = static.segment
    whole, tail = _layout(static, inputs.weights.shape[0])
    loss_bar, _ = cotangents  # the hit count is not differentiable
    layers = params.layers
    activation = get_activation(static.activation)

    def backward_segment(carry, starts, segment):
        deltas_next, grads = carry
        # Recompute this segment's states; differentiate its readout and losses.
        states = _segment_states(static, params, starts, segment)

        def readout_loss(top, readout):
            outputs = top @ readout.W.T + readout.b
            return static.segment_loss(outputs, segment.targets, segment.weights)[0]

        _, pullback = jax.vjp(readout_loss, states[-1], params.readout)
        hs_bar, readout_bar = pullback(loss_bar)
        layer_grads, deltas_first, xs_bar = [], [], None
        for l in reversed(range(len(layers))):
            layer, hs = layers[l], states[l]
            sigma_prime = activation.derivative_from_output(hs)
            jacobian = ElmanJacobian(layer.S, sigma_prime)
            injected = hs_bar * sigma_prime
            # P'_e = P_e + Δ_{e+1} Ω(e+1, e): the error from the next segment.
            injected = injected.at[-1].add(jacobian.pull(deltas_next[l], sigma_prime[-1]))
            delta = static.algorithm.error_flow(injected, jacobian).delta
            inputs_l = segment.xs if l == 0 else states[l - 1]
            if l > 0:
                inputs_l = jnp.where(segment.valid[..., None], inputs_l, 0)
            hs_previous = jnp.concatenate([starts[l][None], hs[:-1]])
            if is_token_input(inputs_l):
                grad_W = token_weight_gradient(delta, inputs_l, layer.W.shape[1])
            else:
                grad_W = sum_over_steps(delta, inputs_l)
            layer_grads.append(
                LayerParams(grad_W, sum_over_steps(delta, hs_previous), delta.sum(axis=(0, 1)))
            )
            deltas_first.append(delta[0])
            below = delta @ layer.W
            if l > 0:
                hs_bar = jnp.where(segment.valid[..., None], below, 0)
            elif not is_token_input(segment.xs):
                xs_bar = below
        layer_grads.reverse()
        deltas_first.reverse()
        grads = jax.tree.map(jnp.add, grads, (tuple(layer_grads), readout_bar))
        return (tuple(deltas_first), grads), xs_bar

    def step(carry, s):
        return backward_segment(
            carry, jax.tree.map(lambda b: b[s], boundaries), inputs.at(s * k, k)
        )

    zero_grads = jax.tree.map(jnp.zeros_like, (tuple(layers), params.readout))
    carry = (tuple(jnp.zeros_like(start) for start in tail_start), zero_grads)
    tail_xs_bar = None
    if tail:  # the shorter last segment first: no error arrives from after it
        carry, tail_xs_bar = backward_segment(carry, tail_start, inputs.at(whole * k, tail))
    (deltas_first, (layer_grads, readout_grads)), xs_bar = lax.scan(
        step, carry, jnp.arange(whole), reverse=True
    )
    if xs_bar is not None:
        xs_bar = xs_bar.reshape(whole * k, *xs_bar.shape[2:])
        if tail:
            xs_bar = jnp.concatenate([xs_bar, tail_xs_bar])
    grad_params = RNNParams(layers=layer_grads, readout=ReadoutParams(*readout_grads))
    grad_params = jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(grad_params))
    # ∂C/∂h0 = Δ_0 S (docs/theory.md#gradients-from-delta).
    h0s_bar = tuple(delta @ layer.S for delta, layer in zip(deltas_first, layers))
    return grad_params, _Segments(xs_bar, None, None, None), h0s_bar


_fused_loss.defvjp(_fused_loss_fwd, _fused_loss_bwd)


def checkpointed_loss(
    algorithm: GradientAlgorithm,
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    valid: jax.Array | None,
    h0s,
    *,
    activation: str,
    segment_loss: SegmentLoss,
) -> tuple[jax.Array, jax.Array]:
    """`(Σ_t Σ_v w_tv loss_tv, Σ_t Σ_v w_tv hit_tv)` in O(√T) memory.

    Args:
        algorithm: `BPTT(checkpoint=k)` or `Omega(checkpoint=k)`; inside each segment
            the same algorithm without the option runs.
        params: an `RNNParams` whose layers are all `LayerParams` (validated by the
            caller).
        xs: inputs (T, m, n), or integer tokens (T, m).
        targets: as `per_step_losses` expects, leading (T, m).
        weights: (T, m) weights of the per-step losses (0 at padded steps).
        valid: (T, m) booleans, False where the inputs of layers above the first are
            zeroed (padding with `lengths`), or None.
        h0s: one (m, d_l) initial state per layer (zeros filled in by the caller).
        activation: the recurrent activation.
        segment_loss: the weighted loss and hit count of one segment's outputs.

    Returns:
        Two scalars; only the first is differentiable (w.r.t. params, xs and h0s).
    """
    T, m = weights.shape
    k = segment_length(algorithm.checkpoint, T)
    if valid is None:
        valid = jnp.ones((T, m), bool)
    static = _Static(dataclasses.replace(algorithm, checkpoint=None), activation, k, segment_loss)
    return _fused_loss(static, params, _Segments(xs, targets, weights, valid), tuple(h0s))
