"""The custom VJP of a scan over any cell: the forward stores the carries and every
step's linearisation, the backward hands them to the gradient algorithm.

    cell_scan :: (algorithm, step) -> (params, xs, carry0) -> carries
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .base import GradientAlgorithm
from .cell_gradients import CellResiduals
from .cell_jacobian import linearised_scan


def plain_scan(step, params, xs, carry0):
    """scan :: (carry0, xs (T, m, …)) -> carries stacked over T.

    Each step reads its input from the loop state, where the step before put it
    (`x_{t+1}` is fetched while `x_t` is used). XLA's CPU backend does not vectorise an
    elementwise fusion that reads several slices of the row a scan hands to the step
    straight out of `xs` (a GRU reads three gate blocks of its projected input: 2× slower
    at T = 128, m = 32, d = 128, docs/performance.md#gated-cells), but does when the row
    is a buffer of its own.
    """
    T = xs.shape[0]

    def body(state, t):
        carry, x = state
        carry = step(params, carry, x)
        x_next = lax.dynamic_index_in_dim(xs, jnp.minimum(t + 1, T - 1), keepdims=False)
        return (carry, x_next), carry

    _, carries = lax.scan(body, (carry0, xs[0]), jnp.arange(T))
    return carries


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def cell_scan(algorithm: GradientAlgorithm, step, params, xs, carry0):
    """The carries of `step` over `xs`, differentiated by `algorithm` (static)."""
    del algorithm
    return plain_scan(step, params, xs, carry0)


def _cell_scan_fwd(algorithm, step, params, xs, carry0):
    del algorithm
    # The forward loop linearises every step as it runs it (docs/theory.md#any-cell).
    carries, jacobian = linearised_scan(step, params, xs, carry0)
    return carries, CellResiduals(params, xs, carry0, carries, jacobian)


def _cell_scan_bwd(algorithm, step, residuals, carries_bar):
    # Δ from the cell's one-step Jacobians, then θ's and the inputs' cotangents from the
    # same linearisation (docs/theory.md#any-cell).
    return algorithm.cell_cotangents(step, residuals, carries_bar)


cell_scan.defvjp(_cell_scan_fwd, _cell_scan_bwd)
