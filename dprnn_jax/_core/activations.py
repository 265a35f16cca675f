"""Recurrent activations σ and their derivatives σ'(z), written in terms of h = σ(z).

Every backward pass in the library needs σ'(Z_t) once per step. All three supported
activations have a derivative that is a cheap function of the stored activation
h = σ(z), so the forward pass keeps only `hs` as residuals (never `zs`).

`ACTIVATIONS` maps each name to its σ and σ' (from h):

    >>> sorted(ACTIVATIONS)
    ['relu', 'sigmoid', 'tanh']
    >>> float(ACTIVATIONS["tanh"].derivative_from_output(jnp.tanh(0.0)))
    1.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Activation(NamedTuple):
    """An activation σ and its derivative expressed through h = σ(z)."""

    fn: Callable[[jax.Array], jax.Array]
    derivative_from_output: Callable[[jax.Array], jax.Array]


def _relu_derivative(h: jax.Array) -> jax.Array:
    # h = max(z, 0) > 0 exactly when z > 0; at z = 0 we use 0, as jax.nn.relu does.
    return (h > 0).astype(h.dtype)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation(jnp.tanh, lambda h: 1 - h * h),
    "sigmoid": Activation(jax.nn.sigmoid, lambda h: h * (1 - h)),
    "relu": Activation(jax.nn.relu, _relu_derivative),
}


def get_activation(name: str) -> Activation:
    """Returns the `Activation` called `name`.

    Raises:
        ValueError: if `name` is not one of `ACTIVATIONS`.
    """
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}."
        ) from None
