"""Operation counts read from the algorithms' own loop counters vs the closed forms."""

from __future__ import annotations

import pytest

import dprnn_jax as dj


@pytest.mark.parametrize("T", [1, 2, 3, 8, 17, 64, 200])
def test_counts_match_closed_forms(T):
    bptt, omega, naive = (dj.count_products(m, T) for m in ("bptt", "omega", "naive"))
    assert bptt.useful == bptt.performed == T - 1
    assert omega.useful == T * (T - 1) // 2
    assert naive.useful == naive.performed == (T**3 - T) // 6
    for count in (bptt, omega, naive):
        assert count.useful == count.closed_form


@pytest.mark.parametrize("T", [64, 200, 1000])
def test_omega_phases_waste_little(T):
    """Phases of static length multiply some empty rows: at least 80% of the rows are useful."""
    omega = dj.count_products("omega", T)
    assert omega.useful <= omega.performed <= 1.25 * omega.useful


def test_count_products_rejects_bad_arguments():
    with pytest.raises(ValueError, match="method must be one of"):
        dj.count_products("adjoint", 5)
    with pytest.raises(ValueError, match="T must be a positive int, got 0"):
        dj.count_products("omega", 0)
