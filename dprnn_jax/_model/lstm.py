"""The LSTM layer, in PyTorch's layout, gate order (i, f, g, o) and equations.

    i_t = σ(W_i x_t + b_ii + S_i h_{t−1} + b_hi)      f_t = σ(W_f x_t + … )
    g_t = tanh(W_g x_t + b_ig + S_g h_{t−1} + b_hg)    o_t = σ(W_o x_t + … )
    c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t                    h_t = o_t ⊙ tanh(c_t)

`W` (4d, n), `S` (4d, d), `b_ih`, `b_hh` (4d,) are `torch.nn.LSTM`'s `weight_ih_l0`,
`weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`. The carry is the pair `(h, c)`; the input
projections of all steps are one product, outside the loop.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._backward.base import GradientAlgorithm
from .params import LSTMParams as LSTMParams
from .params import init_lstm_layer as init_lstm_layer
from .scan_cell import scan_cell


def lstm_input_projection(params: LSTMParams, xs: jax.Array) -> jax.Array:
    """`W x_t + b_ih` for every step at once (T, m, 4d); integer tokens are a lookup."""
    if jnp.issubdtype(xs.dtype, jnp.integer):
        return jnp.take(params.W.T, xs, axis=0) + params.b_ih
    return jnp.einsum("tmn,gn->tmg", xs, params.W) + params.b_ih


class LSTMRecurrence(NamedTuple):
    """The parameters the recurrent step reads: S (4d, d) and b_hh (4d,)."""

    S: jax.Array
    b_hh: jax.Array


def lstm_step(params: LSTMRecurrence, carry, projected: jax.Array):
    """One LSTM step from the projected input (m, 4d): `(h, c) -> (h, c)`."""
    h, c = carry
    d = h.shape[-1]
    gates = projected + h @ params.S.T + params.b_hh
    i = jax.nn.sigmoid(gates[..., :d])
    f = jax.nn.sigmoid(gates[..., d : 2 * d])
    g = jnp.tanh(gates[..., 2 * d : 3 * d])
    o = jax.nn.sigmoid(gates[..., 3 * d :])
    c = f * c + i * g
    return (o * jnp.tanh(c), c)


def lstm_layer(
    params: LSTMParams,
    xs: jax.Array,
    carry0: tuple[jax.Array, jax.Array] | None = None,
    *,
    method: str | GradientAlgorithm = "omega",
    truncation: int | None = None,
    tol: float | None = None,
    block: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Runs one LSTM layer over a time-major batch; differentiable by `method`.

    Args:
        params: `LSTMParams`, PyTorch's layout.
        xs: inputs (T, m, n), or integer tokens (T, m) into n = W.shape[1] words.
        carry0: the initial pair `(h0, c0)`, each (m, d); zeros if None.
        method: the gradient algorithm, an object or its name (see `rnn_layer`).
        truncation: with the names "omega", "bptt" (see `rnn_layer`).
        tol: with the name "omega" (see `rnn_layer`).
        block: with the name "omega" (see `rnn_layer`).

    Returns:
        `(hs, cs)`, each (T, m, d).

    Raises:
        ValueError: `carry0` is not a pair.

    Example:
        >>> layer = init_lstm_layer(jax.random.key(0), 3, 8)
        >>> hs, cs = lstm_layer(layer, jnp.ones((5, 2, 3)))
        >>> hs.shape, cs.shape
        ((5, 2, 8), (5, 2, 8))
    """
    d = params.S.shape[1]
    if carry0 is None:
        zeros = jnp.zeros((xs.shape[1], d), params.S.dtype)
        carry0 = (zeros, zeros)
    if not isinstance(carry0, tuple | list) or len(carry0) != 2:
        raise ValueError(
            f"an LSTM's initial state must be the pair (h0, c0), each (m, d), got "
            f"{type(carry0).__name__} {carry0!r:.80}."
        )
    projected = lstm_input_projection(params, xs)
    recurrence = LSTMRecurrence(params.S, params.b_hh)
    return scan_cell(
        lstm_step,
        recurrence,
        projected,
        tuple(carry0),
        method=method,
        truncation=truncation,
        tol=tol,
        block=block,
    )
