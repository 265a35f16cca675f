"""How many (m, d) × (d, d) products each backward algorithm performs
(docs/algorithms.md#counting-products).

The counts are read from counters that the algorithms increment inside their own loops
(`ErrorFlow.products_*`), so they describe the code, not a formula; the closed forms
(`GradientAlgorithm.closed_form_products`) are what they are checked against.
"""

from __future__ import annotations

from typing import NamedTuple

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._core.validation import check_positive_int


class ProductCount(NamedTuple):
    """Counted and closed-form numbers of (m, d) × (d, d) products for one layer.

    Attributes:
        method: the algorithm, as `str(algorithm)` (e.g. "Omega(truncation=4)"), or the
            name it was given as.
        T: sequence length.
        useful: products the algorithm needs.
        performed: products executed, including padding rows of fixed-shape batches.
        closed_form: the closed form at T, or None when it depends on the data (`tol`).

    Example:
        >>> count_products(BPTT(), 8)
        ProductCount(method='BPTT()', T=8, useful=7, performed=7, closed_form=7)
    """

    method: str
    T: int
    useful: int
    performed: int
    closed_form: int | None


def closed_form_products(method: str | GradientAlgorithm, T: int) -> int | None:
    """The closed-form product count of `method` at length T: T−1 for BPTT, T(T−1)/2 for
    Ω, (T³−T)/6 for the naive expansion, …; None when it depends on the data.

    Example:
        >>> closed_form_products(Omega(), 8), closed_form_products("omega", 8)
        (28, 28)
    """
    return resolve_method(method).closed_form_products(check_positive_int("T", T))


def count_products(method: str | GradientAlgorithm, T: int) -> ProductCount:
    """Runs `method`'s backward on a (T, 1, 1) problem and reads its product counters.

    Args:
        method: the algorithm object, with its options (`Omega(block=4)`,
            `BPTT(truncation=8)`, …), or a name in `METHODS` for its default options.
        T: sequence length.

    Returns:
        `ProductCount`: `useful` is the number the algorithm needs (equal to
        `closed_form`), `performed` includes the padding rows of `Omega`'s
        fixed-length phases.

    Example:
        >>> count_products(Omega(block=4), 8)  # or a name: count_products("omega", 8)
        ProductCount(method='Omega(block=4)', T=8, useful=13, performed=13, closed_form=13)
    """
    algorithm = resolve_method(method)
    T = check_positive_int("T", T)
    flow = algorithm.count_products(T)
    label = method if isinstance(method, str) else str(algorithm)
    return ProductCount(
        label,
        T,
        int(flow.products_useful),
        int(flow.products_performed),
        algorithm.closed_form_products(T),
    )
