"""The GRU and LSTM layers' entry points: arguments checked, padding zeroed, then the
layer's cell run by the custom VJP (`layers.run_layer`)."""

from __future__ import annotations

import jax

from .._algorithms.base import GradientAlgorithm
from .._cells.gru import GRUParams
from .._cells.lstm import LSTMParams
from .layers import run_checked_layer


def gru_layer(
    params: GRUParams,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    method: str | GradientAlgorithm = "omega",
    truncation: int | None = None,
    tol: float | None = None,
    block: int | None = None,
) -> jax.Array:
    """Runs one GRU layer over a time-major batch; differentiable by `method`.

    Args:
        params: `GRUParams`, PyTorch's layout.
        xs: inputs (T, m, n), time-major, floating, same dtype as params (or bfloat16
            with float32 params: mixed precision, docs/performance.md#mixed-precision);
            or integer tokens (T, m) into a vocabulary of n = W.shape[1] words (a lookup
            of W's columns, one-hot vectors never built).
        h0: initial state (m, d); zeros if None.
        lengths: valid steps per sequence (m,), integers in [0, T], for a right-padded
            batch; None: all T. The inputs at the padded steps t ≥ lengths[v] are
            replaced by zeros (token 0) before the layer reads them, so whatever the
            padding holds (even NaN) reaches no valid state and no gradient. The states
            past each length are those of the layer running on over that zero padding;
            a loss that masks them gives them no gradient. Each sequence's final state
            is `hs[lengths[v] − 1, v]` (h0 when lengths[v] = 0), not `hs[-1]`.
            Under `jit`, where they cannot be checked, lengths outside [0, T]
            give that sequence NaN states at every step, not a clamped length.
        method: the gradient algorithm, an object or its name (see `rnn_layer`).
        truncation: with the names "omega", "bptt" (see `rnn_layer`).
        tol: with the name "omega" (see `rnn_layer`).
        block: with the name "omega" (see `rnn_layer`).

    Returns:
        hs (T, m, d): the state after every step.

    Raises:
        ValueError: unknown `method` or an option it does not take; wrong ranks or
            sizes of `params`, `xs`, `h0` or `lengths` (each named in the message);
            T = 0 or m = 0 (an empty batch); concrete `lengths` outside [0, T].
        TypeError: `params` not a `GRUParams`; non-floating, non-integer `xs`;
            non-integer `lengths`; mixed dtypes (`xs` or `h0` vs `params.W`) other
            than mixed precision.

    Example:
        >>> layer = init_gru_layer(jax.random.key(0), 3, 8)
        >>> gru_layer(layer, jnp.ones((5, 2, 3))).shape
        (5, 2, 8)
        >>> xs = jnp.ones((5, 2, 3)).at[2:, 1].set(jnp.nan)
        >>> hs = gru_layer(layer, xs, lengths=jnp.array([5, 2]))
        >>> bool(jnp.isfinite(hs).all())
        True
    """
    return run_checked_layer(
        params,
        xs,
        h0,
        lengths=lengths,
        method=method,
        params_type=GRUParams,
        state_name="h0",
        truncation=truncation,
        tol=tol,
        block=block,
    )


def lstm_layer(
    params: LSTMParams,
    xs: jax.Array,
    carry0: tuple[jax.Array, jax.Array] | None = None,
    *,
    lengths: jax.Array | None = None,
    method: str | GradientAlgorithm = "omega",
    truncation: int | None = None,
    tol: float | None = None,
    block: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Runs one LSTM layer over a time-major batch; differentiable by `method`.

    Args:
        params: `LSTMParams`, PyTorch's layout.
        xs: inputs (T, m, n), time-major, floating, same dtype as params (or bfloat16
            with float32 params: mixed precision, docs/performance.md#mixed-precision);
            or integer tokens (T, m) into a vocabulary of n = W.shape[1] words (a lookup
            of W's columns, one-hot vectors never built).
        carry0: the initial pair `(h0, c0)`, each (m, d); zeros if None.
        lengths: valid steps per sequence (m,), integers in [0, T], for a right-padded
            batch; None: all T. The inputs at the padded steps t ≥ lengths[v] are
            replaced by zeros (token 0) before the layer reads them, so whatever the
            padding holds (even NaN) reaches no valid state and no gradient. The states
            past each length are those of the layer running on over that zero padding;
            a loss that masks them gives them no gradient. Each sequence's final state
            is `(hs[lengths[v] − 1, v], cs[lengths[v] − 1, v])` (`carry0` when
            lengths[v] = 0), not `(hs[-1], cs[-1])`.
            Under `jit`, where they cannot be checked, lengths outside [0, T]
            give that sequence NaN states at every step, not a clamped length.
        method: the gradient algorithm, an object or its name (see `rnn_layer`).
        truncation: with the names "omega", "bptt" (see `rnn_layer`).
        tol: with the name "omega" (see `rnn_layer`).
        block: with the name "omega" (see `rnn_layer`).

    Returns:
        `(hs, cs)`, each (T, m, d): the states after every step.

    Raises:
        ValueError: `carry0` is not a pair; unknown `method` or an option it does not
            take; wrong ranks or sizes of `params`, `xs`, `carry0` or `lengths` (each
            named in the message); T = 0 or m = 0; concrete `lengths` outside [0, T].
        TypeError: `params` not an `LSTMParams`; non-floating, non-integer `xs`;
            non-integer `lengths`; mixed dtypes (`xs` or `carry0` vs `params.W`)
            other than mixed precision.

    Example:
        >>> layer = init_lstm_layer(jax.random.key(0), 3, 8)
        >>> hs, cs = lstm_layer(layer, jnp.ones((5, 2, 3)))
        >>> hs.shape, cs.shape
        ((5, 2, 8), (5, 2, 8))
        >>> xs = jnp.ones((5, 2, 3)).at[2:, 1].set(jnp.nan)
        >>> hs, cs = lstm_layer(layer, xs, lengths=jnp.array([5, 2]))
        >>> bool(jnp.isfinite(hs).all() & jnp.isfinite(cs).all())
        True
    """
    return run_checked_layer(
        params,
        xs,
        carry0,
        lengths=lengths,
        method=method,
        params_type=LSTMParams,
        state_name="carry0",
        truncation=truncation,
        tol=tol,
        block=block,
    )
