"""The full Jacobian triangle Ω(j, i) = ∂Z_j/∂Z_i of one layer (small models only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .trajectory import compiled, layer_trajectory, network_order, state_width


@compiled("activation", "layer", "direction")
def omega_matrix(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str = "tanh",
    layer: int = -1,
    direction: str | None = None,
    lengths: jax.Array | None = None,
) -> jax.Array:
    """The Jacobian triangle Ω(j, i) = ∂Z_j/∂Z_i of one recurrent layer.

    Filled diagonal by diagonal with the state transition
    `Ω(j, i) = Ω(j, i+1) · Ω(i+1, i)`, `Ω(i+1, i) = S · diag(σ'(Z_i))`
    (docs/theory.md#the-omega-dynamic-programme). Memory is O(T²·m·d²): a diagnostic
    for small models, not part of any backward pass. For a GRU or LSTM layer, Ω(j, i) =
    ∂carry_j/∂carry_i, the Jacobian of the carry (`h`, or the concatenated `(h, c)`,
    D = 2d), with Ω(i+1, i) the cell's one-step Jacobian (docs/theory.md#any-cell).

    Args:
        params: a `LayerParams`, `GRUParams`, `LSTMParams` or `BidirectionalParams` with
            its own inputs, or an `RNNParams` stack (see `layer`).
        xs: inputs (T, m, n), or integer tokens (T, m).
        h0: initial state (m, d) of the inspected layer (direction), the pair (h0, c0)
            for an LSTM; zeros if None.
        activation: "tanh", "sigmoid" or "relu".
        layer: for an `RNNParams`, which recurrent layer (default the top one); its
            inputs are what the network's own forward computes.
        direction: for a bidirectional layer, "forward" or "backward" (required).
        lengths: valid steps per sequence (m,) of a right-padded batch, or None.

    Returns:
        Array (T, T, m, D, D): `[j, i, v]` is Ω(j, i) for sample v; the identity on
        the diagonal and zero where Z_j does not depend on Z_i (j < i; j > i for the
        backward direction of a bidirectional layer, whose steps run from the last
        valid one to t = 0). Entries at a padded step (j or i ≥ lengths[v]) are NaN.

    Raises:
        ValueError, TypeError: as `omega_norms`.

    Example:
        >>> omega = omega_matrix(init_layer(jax.random.key(0), 3, 8), jnp.ones((5, 2, 3)))
        >>> omega.shape
        (5, 5, 2, 8, 8)
    """
    trajectory = layer_trajectory(
        params, xs, h0, activation=activation, layer=layer, direction=direction, lengths=lengths
    )
    T, m = trajectory.hs.shape[:2]
    d = state_width(trajectory)
    jacobian = trajectory.jacobian
    eye = jnp.broadcast_to(jnp.eye(d, dtype=trajectory.hs.dtype), (T, m, d, d))
    triangle = jnp.zeros((T, T, m, d, d), trajectory.hs.dtype)
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
    return network_order(triangle, trajectory)
