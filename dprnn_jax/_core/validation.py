"""Trace-time checks of user input, with messages that say what was expected.

Every check here looks only at static information (shapes, dtypes, option strings),
so it runs once per trace and costs nothing inside `jit`.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from .activations import ACTIVATIONS
from .precision import compute_dtype, is_mixed


def shape_of(x: object) -> tuple[int, ...]:
    return tuple(np.shape(x))


def describe(x: object) -> str:
    """What a user passed, in their terms: an array's shape and dtype (also for a traced
    one, whose type name means nothing to them), a sequence's length, else the type."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"an array of shape {tuple(x.shape)} ({x.dtype})"
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of {len(x)}"
    return type(x).__name__


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return value


def check_rank(name: str, x: object, rank: int, layout: str) -> tuple[int, ...]:
    """Checks that `x` is an array of rank `rank`; `layout` names its axes, e.g. '(T, m, n)'."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape {layout}, got {type(x).__name__}.")
    shape = shape_of(x)
    if len(shape) != rank:
        raise ValueError(
            f"{name} must have rank {rank} with shape {layout}, got shape {shape} "
            f"(rank {len(shape)})."
        )
    return shape


def check_floating(name: str, x: object) -> None:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {dtype}; "
            f"convert it with {name}.astype(jnp.float32)."
        )


def check_same_dtype(name: str, x: object, expected: object, reference: str) -> None:
    dtype, expected = jnp.result_type(x), jnp.dtype(expected)
    if dtype != expected:
        raise TypeError(
            f"{name} has dtype {dtype} but {reference} has dtype {expected}; "
            "mixing dtypes would silently change precision, cast one of them."
        )


def check_input_dtype(name: str, x: object, params_dtype: object, reference: str) -> None:
    """Floating inputs in the parameters' dtype, or the mixed-precision mode: bfloat16 or
    float16 inputs with float32 or float64 parameters (`precision.py`)."""
    if is_mixed(params_dtype, jnp.result_type(x)):
        return
    dtype, expected = jnp.result_type(x), jnp.dtype(params_dtype)
    if dtype != expected:
        raise TypeError(
            f"{name} has dtype {dtype} but {reference} has dtype {expected}; "
            "mixing dtypes would silently change precision, cast one of them. The one mix "
            "taken is mixed precision: bfloat16 or float16 inputs with float32 or float64 "
            "parameters (docs/performance.md#mixed-precision)."
        )


def check_state_dtype(
    name: str, state: object, params_dtype: object, inputs_dtype: object, reference: str
) -> None:
    """An initial state in the parameters' dtype or in the dtype the layer computes in
    (the inputs' in the mixed-precision mode, where it is cast to it)."""
    dtype, compute = jnp.result_type(state), compute_dtype(params_dtype, inputs_dtype)
    if compute == jnp.dtype(params_dtype):
        check_same_dtype(name, state, params_dtype, reference)
    elif dtype not in (compute, jnp.dtype(params_dtype)):
        raise TypeError(
            f"{name} has dtype {dtype} but {reference} has dtype {jnp.dtype(params_dtype)} "
            f"and the inputs {compute}: in mixed precision an initial state is in either "
            "dtype, and cast to the inputs' (docs/performance.md#mixed-precision)."
        )


def check_not_empty(name: str, shape: tuple[int, ...]) -> None:
    """Checks that a time-major batch (T, m, …) has a step and a sequence: an empty one
    would give a NaN loss (0 / 0) or nothing at all, never a useful number."""
    T, m = shape[:2]
    if T == 0:
        raise ValueError(f"{name} must have at least one time step, got shape {shape} (T = 0).")
    if m == 0:
        raise ValueError(
            f"{name} must hold at least one sequence, got shape {shape} (m = 0, an empty "
            "batch); skip empty batches before calling."
        )


def check_sequence(name: str, xs: object) -> tuple[int, int, int]:
    """Checks a time-major input sequence (T, m, n) with T, m >= 1 and a floating dtype."""
    T, m, n = check_rank(name, xs, 3, "(T, m, n) = (time, batch, features)")
    check_not_empty(name, (T, m, n))
    check_floating(name, xs)
    return T, m, n


def check_shape(name: str, x: object, expected: tuple[int, ...], layout: str) -> None:
    check_rank(name, x, len(expected), layout)
    if shape_of(x) != expected:
        raise ValueError(f"{name} must have shape {layout} = {expected}, got {shape_of(x)}.")


def check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def check_layer_params(name: str, params: object) -> tuple[int, int]:
    """Checks `LayerParams(W (d, n), S (d, d), b (d,))`; returns (d, n)."""
    if not all(hasattr(params, field) for field in ("W", "S", "b")):
        raise TypeError(
            f"{name} must be a LayerParams(W, S, b), got {type(params).__name__}. "
            "Build one with dprnn_jax.init_layer."
        )
    d, n = check_rank(f"{name}.W", params.W, 2, "(d, n) = (hidden, input)")
    check_shape(f"{name}.S", params.S, (d, d), "(d, d)")
    check_shape(f"{name}.b", params.b, (d,), "(d,)")
    check_floating(f"{name}.W", params.W)
    check_same_dtype(f"{name}.S", params.S, params.W.dtype, f"{name}.W")
    check_same_dtype(f"{name}.b", params.b, params.W.dtype, f"{name}.W")
    return d, n


def check_layer_inputs(
    params,
    xs: jax.Array,
    h0: jax.Array | None,
    *,
    activation: str,
    params_name: str = "params",
    xs_name: str = "xs",
    h0_name: str = "h0",
) -> tuple[int, int, int, jax.Array]:
    """Validates one layer's arguments; returns (T, m, d, h0) with h0 filled in."""
    check_choice("activation", activation, ACTIVATIONS)
    d, n = check_layer_params(params_name, params)
    T, m, n_xs = check_sequence(xs_name, xs)
    if n_xs != n:
        raise ValueError(
            f"{xs_name} has {n_xs} features (shape {xs.shape}) but {params_name}.W has shape "
            f"{params.W.shape}, which expects {n} input features."
        )
    check_input_dtype(xs_name, xs, params.W.dtype, f"{params_name}.W")
    if h0 is None:
        h0 = jnp.zeros((m, d), compute_dtype(params.W.dtype, xs.dtype))
    else:
        check_shape(h0_name, h0, (m, d), "(m, d) = (batch, hidden)")
        check_state_dtype(h0_name, h0, params.W.dtype, xs.dtype, f"{params_name}.W")
    return T, m, d, h0
