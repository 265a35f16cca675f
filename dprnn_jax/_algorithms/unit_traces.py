"""Per-unit traces of an Elman layer's weights, carried forward in time: the common form
of RFLO's eligibility traces and of SnAp-1's sparse influence.

Both keep, for unit a and each of its own weights q (row a of W, S and b), one number
per sequence, updated from the step's σ'(Z_t) and presynaptic drive `r_t = (x_t,
h_{t−1}, 1)`, and both turn it into a gradient with the error that reaches unit a,
`θ̄[a, q] = Σ_t L_t[a] trace_t[a, q]`. Only the update differs (`update(trace, drive,
σ')`), so the scan is written once: O(m·|θ|) memory, O(m·|θ|) work per step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .._cells.elman_linearisation import ElmanLinearisation
from .._core.params import LayerParams


def per_unit(scale: jax.Array, M: jax.Array) -> jax.Array:
    """`scale[…, a] · M[v, a, …]` for M (m, d, …) and a scale (m, d) or (d,): the factor
    of unit a (M's axis 1) broadcast over M's trailing axes."""
    return scale.reshape(scale.shape + (1,) * (M.ndim - 2)) * M


def unit_gradient(signal: jax.Array, traces: LayerParams) -> LayerParams:
    """`θ̄[a, q] = Σ_v L[v, a] trace[v, a, q]`: one step's gradient from the error L (m, d)
    that reaches each unit and the traces of its own weights (leading axes m, d)."""
    return LayerParams(
        W=jnp.einsum("va,vae->ae", signal, traces.W),
        S=jnp.einsum("va,vae->ae", signal, traces.S),
        b=jnp.einsum("va,va->a", signal, traces.b),
    )


def unit_trace_gradients(
    linearisation: ElmanLinearisation, signals: jax.Array, update: Callable
) -> LayerParams:
    """`Σ_t L_t[a] trace_t[a, q]` over an Elman layer's weights.

    scan :: (traces (m, d, n), (m, d, d), (m, d); gradient so far) over t, with
    `trace_t = update(trace_{t−1}, drive_t, σ'(Z_t))` leaf by leaf, the drives being
    `x_t`, `h_{t−1}` and 1 broadcast over the units.

    Args:
        linearisation: the layer's stored forward (parameters, inputs, states).
        signals: L (T, m, d), the error that reaches each unit at each step.
        update: `update(trace, drive, sigma_prime) -> trace`, for any leaf.
    """
    params, xs, h0, hs = (
        linearisation.params,
        linearisation.xs,
        linearisation.h0,
        linearisation.hs,
    )
    previous = jnp.concatenate([h0[None], hs[:-1]])

    def step(state, inputs):
        traces, gradient = state
        x, h_previous, sigma_prime, signal = inputs
        drive = LayerParams(W=x[:, None, :], S=h_previous[:, None, :], b=jnp.ones_like(sigma_prime))
        traces = jax.tree.map(lambda e, r: update(e, r, sigma_prime), traces, drive)
        return (traces, jax.tree.map(jnp.add, gradient, unit_gradient(signal, traces))), None

    m, d = h0.shape
    traces = LayerParams(
        W=jnp.zeros((m, d, xs.shape[-1]), hs.dtype),
        S=jnp.zeros((m, d, d), hs.dtype),
        b=jnp.zeros((m, d), hs.dtype),
    )
    initial = (traces, jax.tree.map(jnp.zeros_like, params))
    inputs = (xs, previous, linearisation.sigma_prime(), signals)
    (_, gradient), _ = lax.scan(step, initial, inputs)
    return gradient
