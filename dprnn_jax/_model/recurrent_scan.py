"""The one custom VJP of every recurrent scan: the forward stores the cell's
linearisation, the backward hands it to the gradient algorithm.

    recurrent_scan :: (algorithm, cell) -> (params, xs, carry0) -> carries

Elman, GRU, LSTM and minGRU layers and every `scan_cell` user step go through it. The
forward is the cell's own (`Cell.linearise`, `_cells/base.py`) and the same for every
algorithm; the backward is `algorithm.cotangents(linearisation, carries_bar)`, by
default Δ from the algorithm's `error_flow` on the cell's Jacobian operator, contracted
by the linearisation (docs/theory.md#any-cell).
"""

from __future__ import annotations

import functools

import jax

from .._algorithms.base import GradientAlgorithm
from .._cells.base import Cell


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def recurrent_scan(algorithm: GradientAlgorithm, cell: Cell, params, xs, carry0):
    """The carries of `cell` over `xs` from `carry0`, differentiated by `algorithm`
    (both static, hashable)."""
    del algorithm  # the value does not depend on how it is differentiated
    return cell.forward(params, xs, carry0)


def _recurrent_scan_fwd(algorithm, cell, params, xs, carry0):
    del algorithm
    return cell.linearise(params, xs, carry0)


def _recurrent_scan_bwd(algorithm, cell, linearisation, carries_bar):
    # Ψ (docs/theory.md#psi-and-omega): `carries_bar` is what the readout or the layer
    # above sends to each carry; the algorithm turns it into Δ and Δ into the
    # cotangents of (params, xs, carry0) (docs/theory.md#gradients-from-delta).
    del cell
    return algorithm.cotangents(linearisation, carries_bar)


recurrent_scan.defvjp(_recurrent_scan_fwd, _recurrent_scan_bwd)
