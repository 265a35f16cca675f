"""Shared fixtures. Float64 is switched on only inside tests that ask for it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Runs the test once in float32 and once in float64 (x64 enabled only for the latter)."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield jnp.float64
    else:
        yield jnp.float32


@pytest.fixture
def x64():
    """Enables float64 for the duration of one test."""
    with jax.enable_x64(True):
        yield
