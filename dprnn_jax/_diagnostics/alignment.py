"""How far an approximate gradient is from the exact one, and at which lags it loses.

`gradient_alignment` compares the gradient of the sequence loss computed with `method`
(a truncated or adaptive Ω, a truncated BPTT, …) against `reference` (exact by default),
as a whole and per parameter array. It also splits the reference gradient of one layer
by lag (docs/diagnostics.md#alignment): the cotangents of a layer's parameters are linear
in its total errors Δ, and Δ is the sum of the diagonals of the error-flow triangle,
`Δ_i = Σ_k G(i+k, i)`, so the layer's gradient is `Σ_k g_k` with `g_k` the gradient that
the errors travelling exactly k steps back carry. `lag_share[k] = ⟨g_k, g⟩ / ‖g‖²` sums
to 1 over the lags; a method that keeps the lags k ≤ K (`BPTT(truncation=K)`) keeps
`Σ_{k ≤ K} lag_share[k]` of it, which `kept_share` measures for any method.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._algorithms.bptt import BPTT
from .._algorithms.registry import resolve_method
from .._algorithms.uoro import UORO
from .._core.padding import mask_from_lengths
from .._core.params import BidirectionalParams
from .._model.loss import sequence_loss
from .._model.online import online_gradient
from .gradient_flow import injected_errors
from .trajectory import check_layer_index, compiled

# The default reference: the exact gradient by the O(T) recurrence.
EXACT = BPTT()


class GradientAlignment(NamedTuple):
    """`method`'s gradient against `reference`'s (`gradient_alignment`).

    Attributes:
        cosine: cosine of the angle between the two flattened gradients.
        relative_error: `‖g − g_ref‖ / ‖g_ref‖` of the flattened gradients.
        leaf_cosine: the cosine per parameter array, a pytree like the parameters.
        leaf_relative_error: the relative error per parameter array, likewise.
        lag_share: (T,) the share of the reference gradient of the inspected layer
            (direction) carried by the errors that travel k steps back,
            `⟨g_k, g_ref⟩ / ‖g_ref‖²`; sums to 1.
        kept_share: `⟨g, g_ref⟩ / ‖g_ref‖²` on the inspected layer: the share of the
            reference gradient that `method` keeps (`Σ_{k ≤ K} lag_share[k]` for
            `BPTT(truncation=K)` on a one-layer network).

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs = jax.random.normal(jax.random.key(1), (12, 2, 3))
        >>> ys = jax.random.randint(jax.random.key(2), (12, 2), 0, 4)
        >>> result = gradient_alignment(params, xs, ys, Omega())  # exact: aligned
        >>> round(float(result.cosine), 6), float(result.relative_error) < 1e-5
        (1.0, True)
        >>> result.leaf_cosine.layers[0].S.shape, result.lag_share.shape
        ((), (12,))
    """

    cosine: jax.Array
    relative_error: jax.Array
    leaf_cosine: Any
    leaf_relative_error: Any
    lag_share: jax.Array
    kept_share: jax.Array


def _dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _cosine_and_error(gradient, reference) -> tuple[jax.Array, jax.Array]:
    reference_norm = jnp.sqrt(_dot(reference, reference))
    cosine = _dot(gradient, reference) / (jnp.sqrt(_dot(gradient, gradient)) * reference_norm)
    difference = jax.tree.map(jnp.subtract, gradient, reference)
    return cosine, jnp.sqrt(_dot(difference, difference)) / reference_norm


def _inspected(gradient_params, index: int, trajectory):
    """The inspected layer's (direction's) part of a gradient of the whole network."""
    layer = gradient_params.layers[index]
    if isinstance(trajectory.layer, BidirectionalParams):
        return layer.backward if trajectory.backward else layer.forward
    return layer


def _zero_cotangent(x):
    """A zero cotangent for an output of `jax.vjp`: float0 for integer arrays (tokens)."""
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def lag_gradients(injected: jax.Array, trajectory):
    """`g_k` for k = 0 … T−1: the inspected layer's parameter gradient carried by the
    diagonal k of its error-flow triangle, leaves with a leading axis of lags.

    Δ's diagonal k, `D_k[i] = G(i+k, i)`, is turned into the cotangents of the cell's
    parameters and inputs by the cell's own (linear) contractions, then into those of the
    layer's parameters by the vjp of the layer's preparation (its input projection)."""
    jacobian, linearisation = trajectory.jacobian, trajectory.linearisation
    prepared, pullback = jax.vjp(trajectory.cell_parameters, trajectory.params)

    def to_layer(delta):
        params_bar, inputs_bar, _ = linearisation.cotangents(delta)
        if inputs_bar is None:  # integer inputs: no cotangent of their own
            inputs_bar = jax.tree.map(_zero_cotangent, prepared[1])
        return pullback((params_bar, inputs_bar))[0]

    def diagonal_step(diagonal, _):
        # G(i+k, i) = G(i+k, i+1) Ω(i+1, i): the next diagonal from this one; rows that
        # leave the triangle (i ≥ T − k) are pulled from zeros.
        shifted = jnp.concatenate([diagonal[1:], jnp.zeros_like(diagonal[:1])])
        return jacobian.pull(shifted, jacobian.per_step), to_layer(diagonal)

    _, gradients = lax.scan(diagonal_step, injected, None, length=injected.shape[0])
    return gradients


@compiled("method", "reference", "layer", "direction", "loss", "activation")
def _alignment(
    params,
    xs,
    targets,
    method,
    reference,
    key,
    *,
    mask,
    lengths,
    layer,
    direction,
    loss,
    activation,
) -> GradientAlignment:
    def gradient(algorithm):
        if key is not None and algorithm is method:
            # A random estimate drawn with `key`: the online form, whose steps take it.
            weights = None if lengths is None else mask_from_lengths(lengths, xs.shape[0])
            if mask is not None:
                weights = mask if weights is None else weights * mask
            return online_gradient(
                params,
                xs,
                targets,
                method,
                key=key,
                mask=weights,
                loss=loss,
                activation=activation,
            )[1]

        def cost(params):
            return sequence_loss(
                params,
                xs,
                targets,
                mask=mask,
                lengths=lengths,
                loss=loss,
                activation=activation,
                method=algorithm,
            )

        return jax.grad(cost)(params)

    approximate, exact = gradient(method), gradient(reference)
    cosine, relative_error = _cosine_and_error(approximate, exact)
    leaf_cosine = jax.tree.map(lambda g, r: _cosine_and_error(g, r)[0], approximate, exact)
    leaf_error = jax.tree.map(lambda g, r: _cosine_and_error(g, r)[1], approximate, exact)

    injected, trajectory = injected_errors(
        params,
        xs,
        targets,
        mask=mask,
        lengths=lengths,
        layer=layer,
        direction=direction,
        loss=loss,
        activation=activation,
    )
    index = check_layer_index(layer, len(params.layers))
    exact_layer = _inspected(exact, index, trajectory)
    lags = lag_gradients(injected, trajectory)
    norm2 = _dot(exact_layer, exact_layer)
    lag_share = jax.vmap(lambda g_k: _dot(g_k, exact_layer))(lags) / norm2
    kept_share = _dot(_inspected(approximate, index, trajectory), exact_layer) / norm2
    return GradientAlignment(cosine, relative_error, leaf_cosine, leaf_error, lag_share, kept_share)


def gradient_alignment(
    params,
    xs: jax.Array,
    targets: jax.Array,
    method,
    *,
    reference=EXACT,
    key: jax.Array | None = None,
    mask: jax.Array | None = None,
    lengths: jax.Array | None = None,
    layer: int = -1,
    direction: str | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
) -> GradientAlignment:
    """How far `method`'s gradient of the sequence loss is from `reference`'s, and at which
    lags it loses (docs/diagnostics.md#alignment).

    Args:
        params: an `RNNParams` of any cells, unidirectional or bidirectional.
        xs: the inputs (T, m, n), as `sequence_loss` takes them.
        targets: the targets, as `sequence_loss` takes them (its default reduction,
            `C = (1/m) Σ_t Σ_rows loss`).
        method: the gradient under study: an algorithm or its name
            (`BPTT(truncation=4)`, `Omega(tol=1e-3)`, …).
        reference: the gradient it is compared with (default `BPTT()`, exact).
        key: for a random method (`UORO()`): its estimate is drawn with this key
            (`online_gradient`); without one, `UORO(seed=…)`'s own signs. Refused for
            the deterministic methods rather than silently ignored.
        mask: (T, m) weights of the per-step losses, or None.
        lengths: valid steps per sequence (m,), or None.
        layer: the layer whose gradient is split by lag (default the top one).
        direction: for a bidirectional layer, "forward" or "backward" (required there).
        loss: a name in `LOSSES`.
        activation: the Elman layers' activation.

    Returns:
        `GradientAlignment`: `cosine`, `relative_error` (whole gradient), the same per
        parameter array, the inspected layer's `lag_share` (T,) and `kept_share`.

    Raises:
        ValueError, TypeError: a `key` with a deterministic method, and as
            `sequence_loss` and `gradient_flow` for bad arguments.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs = jax.random.normal(jax.random.key(1), (12, 2, 3))
        >>> ys = jax.random.randint(jax.random.key(2), (12, 2), 0, 4)
        >>> result = gradient_alignment(params, xs, ys, BPTT(truncation=2))
        >>> bool(result.cosine > 0.9), round(float(result.lag_share.sum()), 6)
        (True, 1.0)
        >>> # Truncation at K keeps exactly the lags k <= K of the layer's gradient:
        >>> bool(jnp.allclose(result.kept_share, result.lag_share[:3].sum(), atol=1e-5))
        True
    """
    method = resolve_method(method)
    reference = resolve_method(reference)
    if key is not None and not isinstance(method, UORO):
        raise ValueError(
            f"key is for random methods (UORO), but method={method} is deterministic; drop key."
        )
    return _alignment(
        params,
        xs,
        targets,
        method,
        reference,
        key,
        mask=mask,
        lengths=lengths,
        layer=layer,
        direction=direction,
        loss=loss,
        activation=activation,
    )
