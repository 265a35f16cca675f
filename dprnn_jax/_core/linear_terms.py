"""Sums of linear terms in tangents that may be symbolic zeros: the hand-written
derivatives of the gated cells (`gru.py`, `lstm.py`) skip the zero ones, so that a
linearisation keeps nothing for an argument it is not taken with respect to."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.custom_derivatives import SymbolicZero


def linear_terms(*terms: tuple[object, Callable[[jax.Array], jax.Array]]) -> jax.Array | None:
    """`Σ f(t)` over the pairs `(t, f)` whose tangent `t` is neither a `SymbolicZero`
    nor None; None when every tangent is zero."""
    total = None
    for tangent, apply in terms:
        if tangent is None or isinstance(tangent, SymbolicZero):
            continue
        value = apply(tangent)
        total = value if total is None else total + value
    return total
