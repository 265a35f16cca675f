"""How many (m, d) × (d, d) products each backward algorithm performs.

The counts are read from counters that the algorithms increment inside their own loops
(`ErrorFlow.products_*`), so they describe the code, not a formula; the closed forms
below are what they are checked against.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from .._backward.layer import ERROR_FLOWS
from .._validation import check_choice, check_positive_int


class ProductCount(NamedTuple):
    """Counted and closed-form numbers of (m, d) × (d, d) products for one layer."""

    method: str
    T: int
    useful: int
    performed: int
    closed_form: int


def closed_form_products(method: str, T: int) -> int:
    """T−1 for "bptt", T(T−1)/2 for "omega", (T³−T)/6 for "naive"."""
    check_choice("method", method, ERROR_FLOWS)
    return {"bptt": T - 1, "omega": T * (T - 1) // 2, "naive": (T**3 - T) // 6}[method]


def count_products(method: str, T: int) -> ProductCount:
    """Runs `method`'s backward on a (T, 1, 1) problem and reads its product counters.

    Args:
        method: "omega", "bptt" or "naive".
        T: sequence length.

    Returns:
        `ProductCount`: `useful` is the number the algorithm needs (equal to
        `closed_form`), `performed` includes the padding rows of `omega`'s
        fixed-length phases.

    Example:
        >>> count_products("omega", 8).useful
        28
    """
    check_choice("method", method, ERROR_FLOWS)
    T = check_positive_int("T", T)
    ones = jnp.ones((T, 1, 1), jnp.float32)
    flow = ERROR_FLOWS[method](ones, ones, jnp.ones((1, 1), jnp.float32))
    return ProductCount(
        method,
        T,
        int(flow.products_useful),
        int(flow.products_performed),
        closed_form_products(method, T),
    )
