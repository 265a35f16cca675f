"""The full Jacobian triangle Ω(j, i) = ∂Z_j/∂Z_i of one layer (small models only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._backward.jacobian import ElmanJacobian
from .._model.activations import get_activation
from .._model.forward import hoisted_layer
from .._model.params import LayerParams
from .._validation import check_layer_inputs


def omega_matrix(
    layer_params: LayerParams,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
) -> jax.Array:
    """The Jacobian triangle Ω(j, i) = ∂Z_j/∂Z_i of one recurrent layer.

    Filled diagonal by diagonal with the state transition
    `Ω(j, i) = Ω(j, i+1) · Ω(i+1, i)`, `Ω(i+1, i) = S · diag(σ'(Z_i))`
    (docs/theory.md#the-omega-dynamic-programme). Memory is O(T²·m·d²): a diagnostic
    for small models, not part of any backward pass.

    Args:
        layer_params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs (T, m, n).
        h0: initial state (m, d); zeros if None.
        activation: "tanh", "sigmoid" or "relu".

    Returns:
        Array (T, T, m, d, d): `[j, i, v]` is Ω(j, i) for sample v; zero above the
        diagonal (j < i) and the identity on it.

    Example:
        >>> omega = omega_matrix(init_layer(jax.random.key(0), 2, 3), jnp.ones((4, 1, 2)))
        >>> omega.shape
        (4, 4, 1, 3, 3)
    """
    T, m, d, h0 = check_layer_inputs(layer_params, xs, h0, activation=activation)
    hs = hoisted_layer(layer_params, xs, h0, activation=activation)
    sigma_prime = get_activation(activation).derivative_from_output(hs)
    jacobian = ElmanJacobian(layer_params.S, sigma_prime)
    eye = jnp.broadcast_to(jnp.eye(d, dtype=hs.dtype), (T, m, d, d))
    triangle = jnp.zeros((T, T, m, d, d), hs.dtype)
    steps = jnp.arange(T)
    triangle = triangle.at[steps, steps].set(eye)

    def fill(k, state):
        triangle, diagonal = state  # diagonal[i] = Ω(i+k-1, i)
        shifted = jnp.concatenate([diagonal[1:], jnp.zeros_like(diagonal[:1])])
        # Ω(i+k, i) = Ω(i+k, i+1) Ω(i+1, i): the DP step applied to each row of the
        # matrix (rows moved in front, where `pull` broadcasts them).
        rows = jnp.moveaxis(shifted, -2, 0)
        diagonal = jnp.moveaxis(jacobian.pull(rows, jacobian.per_step), 0, -2)
        # Rows i >= T-k fall outside the triangle; mode="drop" discards them.
        triangle = triangle.at[steps + k, steps].set(diagonal, mode="drop")
        return triangle, diagonal

    triangle, _ = lax.fori_loop(1, T, fill, (triangle, eye))
    return triangle
