"""The custom VJP of a scan over any cell: the forward stores the carries, the backward
hands them to the gradient algorithm.

    cell_scan :: (algorithm, step) -> (params, xs, carry0) -> carries
"""

from __future__ import annotations

import functools

import jax
from jax import lax

from .base import GradientAlgorithm
from .cell_gradients import CellResiduals


def plain_scan(step, params, xs, carry0):
    """scan :: (carry0, xs (T, m, …)) -> carries stacked over T."""

    def body(carry, x):
        carry = step(params, carry, x)
        return carry, carry

    _, carries = lax.scan(body, carry0, xs)
    return carries


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def cell_scan(algorithm: GradientAlgorithm, step, params, xs, carry0):
    """The carries of `step` over `xs`, differentiated by `algorithm` (static)."""
    del algorithm
    return plain_scan(step, params, xs, carry0)


def _cell_scan_fwd(algorithm, step, params, xs, carry0):
    del algorithm
    carries = plain_scan(step, params, xs, carry0)
    return carries, CellResiduals(params, xs, carry0, carries)


def _cell_scan_bwd(algorithm, step, residuals, carries_bar):
    # Δ from the cell's one-step Jacobians, then one vmapped vjp of Δ over all steps
    # (docs/theory.md#any-cell).
    return algorithm.cell_cotangents(step, residuals, carries_bar)


cell_scan.defvjp(_cell_scan_fwd, _cell_scan_bwd)
