"""Any recurrent cell, differentiable by any gradient algorithm (docs/theory.md#any-cell)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._cells.base import CellScan
from .._cells.generic import StepCell
from .._core.precision import is_low_precision, is_mixed
from .layers import run_cell


def _describe(tree) -> str:
    return str(jax.tree.map(lambda leaf: f"{leaf.dtype}{list(leaf.shape)}", tree))


def _check_inputs(xs) -> tuple[int, int, str]:
    """`xs` an array or a pytree of arrays, each (T, m, …) with one T ≥ 1 and one m:
    returns T, m and where m was read (for messages)."""
    leaves = jax.tree_util.tree_leaves_with_path(xs)
    if not leaves or not all(hasattr(leaf, "shape") for _, leaf in leaves):
        raise TypeError(
            "xs must be an array (T, m, …) or a pytree (dict, tuple, …) of such arrays, "
            f"got {type(xs).__name__}."
        )
    shapes = {f"xs{jax.tree_util.keystr(path)}": tuple(leaf.shape) for path, leaf in leaves}
    if any(len(shape) < 2 or shape[0] == 0 for shape in shapes.values()) or (
        len({shape[:2] for shape in shapes.values()}) > 1
    ):
        shown = next(iter(shapes.values())) if len(shapes) == 1 else shapes
        raise ValueError(
            "xs must be an array (T, m, …) with T ≥ 1, or a pytree of such arrays that "
            f"agree on T and m (time, then batch), got shape {shown}."
        )
    where, shape = next(iter(shapes.items()))
    return shape[0], shape[1], f"{where} has shape {shape}"


def check_cell(step: Callable, params, xs, carry0) -> None:
    """`carry0` a pytree of (m, …) floating arrays of one dtype; `xs` a pytree of
    (T, m, …) arrays with T ≥ 1; `step(params, carry, x)` returns a carry of the same
    structure, shapes and dtypes."""
    if not callable(step):
        raise TypeError(f"step must be a function step(params, carry, x) -> carry, got {step!r}.")
    leaves = jax.tree.leaves(carry0)
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        raise TypeError(
            f"carry0 must be a pytree of (m, …) arrays, got {type(carry0).__name__} {carry0!r}."
        )
    _, m, xs_where = _check_inputs(xs)
    for path, leaf in jax.tree_util.tree_leaves_with_path(carry0):
        where = "carry0" + jax.tree_util.keystr(path)
        if leaf.ndim < 1 or leaf.shape[0] != m:
            raise ValueError(
                f"{where} must lead with the batch axis m = {m} ({xs_where}), "
                f"got shape {leaf.shape}."
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"{where} must be floating, got dtype {leaf.dtype}.")
    if len({leaf.dtype for leaf in leaves}) > 1:
        raise TypeError(f"carry0's leaves must share one dtype, got {_describe(carry0)}.")
    out = jax.eval_shape(step, params, carry0, jax.tree.map(lambda leaf: leaf[0], xs))
    expected = jax.eval_shape(lambda c: c, carry0)
    if jax.tree.structure(out) != jax.tree.structure(expected) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(expected))
    ):
        raise ValueError(
            "step(params, carry, x) must return a carry of the same structure, shapes and "
            f"dtypes as carry0: carry0 is {_describe(expected)} but step returned "
            f"{_describe(out)}."
        )


def in_carry_dtype(params, carry0):
    """θ with its float32/float64 leaves cast to the carry's dtype when that is a 16-bit
    float: the mixed-precision mode of `scan_cell` (`_core/precision.py`); θ as given
    otherwise. The cotangents come back through the cast in θ's own dtypes."""
    dtypes = {getattr(leaf, "dtype", None) for leaf in jax.tree.leaves(carry0)}
    if len(dtypes) != 1 or None in dtypes or not is_low_precision(dtype := dtypes.pop()):
        return params

    def cast(leaf):
        mixed = hasattr(leaf, "dtype") and is_mixed(leaf.dtype, dtype)
        return leaf.astype(dtype) if mixed else leaf

    return jax.tree.map(cast, params)


def scan_cell(
    step: Callable[[Any, Any, Any], Any],
    params: Any,
    xs: Any,
    carry0: Any,
    *,
    method: str | GradientAlgorithm = "omega",
    truncation: int | None = None,
    tol: float | None = None,
    block: int | None = None,
) -> Any:
    """Runs any recurrent cell over a time-major batch; differentiable by `method`.

    `carry_t = step(params, carry_{t−1}, x_t)` for t = 0 … T−1, with `carry_{−1} =
    carry0`. The gradient w.r.t. `params`, `xs` and `carry0` comes from the chosen
    algorithm applied to the cell's one-step Jacobians `∂carry_{t+1}/∂carry_t`, which
    are linearised once per backward pass (docs/theory.md#any-cell). `Autodiff()` is
    `jax.grad` through the plain `lax.scan`.

    Args:
        step: a pure function `step(params, carry, x) -> carry`, batched over the rows of
            `carry` and `x` (e.g. an Equinox or Flax cell's call, or the library's own).
        params: the cell's parameters, any pytree of arrays. Integer and boolean leaves
            (step counters, RNG keys, flags) are constants of the step: no gradient, as
            `jax.grad` treats them.
        xs: inputs (T, m, …), time-major, or a pytree (dict, tuple, …) of such arrays
            with one T and one m, as `lax.scan` takes them; the step gets the same
            pytree of rows. Integer leaves (tokens) have no gradient.
        carry0: the initial carry, a pytree of (m, …) floating arrays of one dtype:
            `h` (m, d), or `(h, c)` for an LSTM. A bfloat16 or float16 carry with
            float32 (or float64) `params` is mixed precision: the step gets θ's floating
            leaves cast to the carry's dtype, and θ's gradient comes back in θ's dtype
            (docs/performance.md#mixed-precision).
        method: a `GradientAlgorithm` or its name (see `rnn_layer`).
        truncation: with the names "omega" and "bptt": keep lags ≤ K.
        tol: with the name "omega": the adaptive fill.
        block: with the name "omega": Ω triangles of `block` steps.

    Returns:
        The carries stacked over T: the same pytree as `carry0`, each leaf (T, m, …).

    Raises:
        ValueError: a `step` whose output carry differs from `carry0` in structure,
            shape or dtype (both are named), T = 0, leaves of `xs` that disagree on T
            or m, a carry not batched like `xs`, and the errors of `resolve_method`.
        TypeError: a non-callable `step`, `xs` not an array or pytree of arrays, a
            non-floating or mixed-dtype carry.

    Example:
        >>> def step(params, h, x):
        ...     return jnp.tanh(x @ params["W"].T + h @ params["S"].T)
        >>> params = {"W": jnp.ones((4, 3)) * 0.1, "S": jnp.eye(4) * 0.5}
        >>> carries = scan_cell(step, params, jnp.ones((6, 2, 3)), jnp.zeros((2, 4)))
        >>> carries.shape
        (6, 2, 4)
    """
    algorithm = resolve_method(method, truncation=truncation, tol=tol, block=block)
    params = in_carry_dtype(params, carry0)
    check_cell(step, params, xs, carry0)
    return run_cell(algorithm, CellScan(StepCell(step), params, xs, carry0))
