"""The GRU layer, in PyTorch's layout, gate order and equations.

    r_t = σ(W_r x_t + b_ir + S_r h_{t−1} + b_hr)
    z_t = σ(W_z x_t + b_iz + S_z h_{t−1} + b_hz)
    n_t = tanh(W_n x_t + b_in + r_t ⊙ (S_n h_{t−1} + b_hn))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1}

`W = [W_r; W_z; W_n]` (3d, n), `S = [S_r; S_z; S_n]` (3d, d), `b_ih`, `b_hh` (3d,): the
`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0` of `torch.nn.GRU`, which load
unchanged. The input projections of all steps are one product, outside the loop; the
recurrent step is a cell for `scan_cell`, so every algorithm differentiates it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._backward.base import GradientAlgorithm
from .params import GRUParams as GRUParams
from .params import init_gru_layer as init_gru_layer
from .scan_cell import scan_cell


def gru_input_projection(params: GRUParams, xs: jax.Array) -> jax.Array:
    """`W x_t + b_ih` for every step at once (T, m, 3d); integer tokens are a lookup."""
    if jnp.issubdtype(xs.dtype, jnp.integer):
        return jnp.take(params.W.T, xs, axis=0) + params.b_ih
    return jnp.einsum("tmn,gn->tmg", xs, params.W) + params.b_ih


class GRURecurrence(NamedTuple):
    """The parameters the recurrent step reads: S (3d, d) and b_hh (3d,)."""

    S: jax.Array
    b_hh: jax.Array


def gru_step(params: GRURecurrence, h: jax.Array, projected: jax.Array) -> jax.Array:
    """One GRU step from the projected input `W x_t + b_ih` (m, 3d): (m, d) -> (m, d)."""
    d = h.shape[-1]
    recurrent = h @ params.S.T + params.b_hh
    r = jax.nn.sigmoid(projected[..., :d] + recurrent[..., :d])
    z = jax.nn.sigmoid(projected[..., d : 2 * d] + recurrent[..., d : 2 * d])
    n = jnp.tanh(projected[..., 2 * d :] + r * recurrent[..., 2 * d :])
    return (1 - z) * n + z * h


def gru_layer(
    params: GRUParams,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    method: str | GradientAlgorithm = "omega",
    truncation: int | None = None,
    tol: float | None = None,
    block: int | None = None,
) -> jax.Array:
    """Runs one GRU layer over a time-major batch; differentiable by `method`.

    Args:
        params: `GRUParams`, PyTorch's layout.
        xs: inputs (T, m, n), or integer tokens (T, m) into n = W.shape[1] words.
        h0: initial state (m, d); zeros if None.
        method: the gradient algorithm, an object or its name (see `rnn_layer`).
        truncation: with the names "omega", "bptt" (see `rnn_layer`).
        tol: with the name "omega" (see `rnn_layer`).
        block: with the name "omega" (see `rnn_layer`).

    Returns:
        hs (T, m, d).

    Example:
        >>> layer = init_gru_layer(jax.random.key(0), 3, 8)
        >>> gru_layer(layer, jnp.ones((5, 2, 3))).shape
        (5, 2, 8)
    """
    d = params.S.shape[1]
    if h0 is None:
        h0 = jnp.zeros((xs.shape[1], d), params.S.dtype)
    projected = gru_input_projection(params, xs)
    recurrence = GRURecurrence(params.S, params.b_hh)
    return scan_cell(
        gru_step,
        recurrence,
        projected,
        h0,
        method=method,
        truncation=truncation,
        tol=tol,
        block=block,
    )
