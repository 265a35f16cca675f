"""One recurrent layer of any kind, differentiable by any gradient algorithm.

`run_layer` runs every kind the same way: the padded inputs zeroed, the kind's cell
prepared (`LayerKind.prepare`, `_cells/kinds.py`) and run by the one custom VJP
(`recurrent_scan.py`), or by a plain `lax.scan` for `Autodiff()`. `rnn_layer` is the
Elman layer's entry point (`gated_layers.py` holds the GRU's and LSTM's).
"""

from __future__ import annotations

import jax

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._cells.elman_linearisation import check_elman_arguments
from .._cells.kinds import check_gated_layer_inputs, fill_carry0, kind_of
from .._core.padding import check_lengths, zero_padding
from .._core.params import LayerParams
from .._core.precision import compute_dtype, to_compute_dtype
from .recurrent_scan import recurrent_scan


def rnn_layer(
    params: LayerParams,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    lengths: jax.Array | None = None,
    activation: str = "tanh",
    method: str | GradientAlgorithm = "omega",
    block: int | None = None,
    truncation: int | None = None,
    tol: float | None = None,
) -> jax.Array:
    """Runs one Elman layer over a time-major batch; differentiable by `method`.

    `h_t = σ(x_t Wᵀ + h_{t-1} Sᵀ + b)`. The value is the same for every method; the
    gradient (w.r.t. `params`, `xs` and `h0`) is computed by the algorithm `method`
    names (docs/algorithms.md):

    * `Omega()` / `"omega"`: the error-flow triangle filled diagonal by diagonal (Ω DP),
    * `BPTT()` / `"bptt"`: the O(T) reverse recurrence,
    * `Naive()` / `"naive"`: the O(T³) direct expansion (comparison only),
    * `ParallelScan()` / `"scan"`: Ω by doubling, a `lax.associative_scan` of depth
      O(log T) and O(T·m·d³) work,
    * `RTRL()` / `"rtrl"`: forward-mode sensitivities, O(m·d⁴) work per step; the
      input cotangent (for the layer below) comes from the BPTT recurrence,
    * `Autodiff()` / `"autodiff"`: `jax.grad` through a plain `lax.scan` (the reference).

    With `truncation=K` the gradient is K-step truncated BPTT: the loss at step t
    back-propagates through Z_t, …, Z_{t−K} of this layer only, i.e. it is the exact
    gradient of a model in which h_t is recomputed from `stop_gradient(h_{t−K−1})`
    (from h0 itself, which stays differentiable, when t−K−1 < 0). In a stack every
    layer truncates the cotangent it receives on its own.

    Args:
        params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs, shape (T, m, n), time-major, floating, same dtype as params (or
            bfloat16/float16 with float32/float64 params: mixed precision, the layer
            computing in the inputs' dtype and the gradient of params in theirs,
            docs/performance.md#mixed-precision); or integer token indices (T, m) into a
            vocabulary of n = W.shape[1] words, read as one-hot vectors without building
            them (`W x_t` is a column lookup).
        h0: initial state (m, d); zeros if None.
        lengths: valid steps per sequence (m,), integers in [0, T], for a right-padded
            batch; None: all T. The inputs at the padded steps t ≥ lengths[v] are
            replaced by zeros (token 0) before the layer reads them, so whatever the
            padding holds (even NaN) reaches no valid state and no gradient. The states
            past each length are those of the layer running on over that zero padding;
            a loss that masks them gives them no gradient. Each sequence's final state,
            as `rnn_forward` returns it in `final_states`, is `hs[lengths[v] − 1, v]`
            (h0 when lengths[v] = 0), not `hs[-1]`.
            Under `jit`, where they cannot be checked, lengths outside [0, T]
            give that sequence NaN states at every step, not a clamped length.
        activation: "tanh", "sigmoid" or "relu".
        method: a `GradientAlgorithm` (`Omega(truncation=32)`, `BPTT()`, …) or its name
            ("omega", "bptt", "naive", "scan", "rtrl", "autodiff").
        block: with the name "omega" only: `Omega(block=block)`.
        truncation: with the names "omega" and "bptt": K ≥ 0, keep only lags j − i ≤ K;
            None for the exact gradient.
        tol: with the name "omega" only: `Omega(tol=tol)`, the adaptive fill.

    Returns:
        hs, shape (T, m, d): the state after every step.

    Raises:
        ValueError: unknown `method`/`activation`, an option the method does not take
            (or an option keyword next to an algorithm object), an invalid option,
            wrong ranks or sizes, T = 0 or an empty batch (m = 0).
        TypeError: non-floating, non-integer `xs` or mixed dtypes other than mixed
            precision.

    Example:
        >>> layer = init_layer(jax.random.key(0), input_size=3, hidden_size=8)
        >>> xs = jnp.ones((5, 2, 3))
        >>> rnn_layer(layer, xs, method=Omega(truncation=2)).shape
        (5, 2, 8)
        >>> hs = rnn_layer(layer, xs.at[2:, 1].set(jnp.nan), lengths=jnp.array([5, 2]))
        >>> bool(jnp.isfinite(hs).all())
        True
    """
    algorithm = resolve_method(method, truncation=truncation, tol=tol, block=block)
    # Checked before the kind is looked up, so that any other value is named in the error.
    check_elman_arguments(params, xs, h0, activation=activation, algorithm=algorithm)
    return run_layer(params, xs, h0, lengths=lengths, activation=activation, algorithm=algorithm)


def run_layer(
    layer,
    xs,
    state0,
    *,
    lengths: jax.Array | None,
    activation: str,
    algorithm: GradientAlgorithm,
):
    """The carries of a layer of any kind: `hs` (T, m, d), or `(hs, cs)` for an LSTM.
    `state0` None means zeros; `lengths` (checked here) zero the padded inputs. The
    kind's own checks run here (`LayerKind.check`); the shapes of the others are checked
    by their callers (`run_checked_layer`, the network)."""
    kind = kind_of(layer)
    if kind.check is not None:
        kind.check(layer, xs, state0, activation=activation, algorithm=algorithm)
    layer, state0 = mixed_precision_layer(layer, xs, state0)
    T, m = xs.shape[:2]
    if lengths is not None:
        xs = zero_padding(xs, check_lengths(lengths, T, m))
    carry0 = fill_carry0(layer, state0, m)
    scan = kind.prepare(
        layer,
        xs,
        carry0,
        activation=activation,
        own_backward=algorithm.uses_custom_vjp,
        whole_step=algorithm.sees_the_whole_step,
    )
    return run_cell(algorithm, scan)


def mixed_precision_layer(layer, xs, state0):
    """`(layer, state0)` in the dtype the layer computes in: cast to the inputs' dtype in
    the mixed-precision mode (float32 parameters, bfloat16 inputs: `_core/precision.py`),
    as given otherwise. The parameters' gradients come back through the cast in their
    own dtype."""
    dtype = compute_dtype(layer.W.dtype, xs.dtype)
    if dtype == layer.W.dtype:
        return layer, state0
    return to_compute_dtype(layer, dtype), to_compute_dtype(state0, dtype)


def run_cell(algorithm: GradientAlgorithm, scan):
    """`recurrent_scan` of a prepared cell, or its plain `lax.scan` for `Autodiff()`."""
    if not algorithm.uses_custom_vjp:
        return scan.cell.plain_forward(scan.params, scan.inputs, scan.carry0)
    return recurrent_scan(algorithm, scan.cell, scan.params, scan.inputs, scan.carry0)


def run_checked_layer(
    params,
    xs,
    state0,
    *,
    lengths,
    method,
    params_type: type,
    state_name: str,
    truncation=None,
    tol=None,
    block=None,
):
    """A gated (or any non-Elman) layer's entry point: its arguments checked against
    `params_type`, then `run_layer`."""
    check_gated_layer_inputs(
        params, xs, state0, lengths, params_type=params_type, state_name=state_name
    )
    algorithm = resolve_method(method, truncation=truncation, tol=tol, block=block)
    return run_layer(params, xs, state0, lengths=lengths, activation="tanh", algorithm=algorithm)
