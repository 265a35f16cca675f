"""Equinox cells under every gradient algorithm.

An Equinox cell is a module called per sample, `cell(x, carry) -> carry`, holding its
weights as fields. Its floating arrays are the parameters of `scan_cell`'s step, the
rest (activations, sizes, integer buffers) stays in the step's closure, and the step
is the cell vmapped over the batch. equinox is imported when `equinox_scan` is called.
"""

from __future__ import annotations

from typing import Any

import jax

from .._algorithms.base import GradientAlgorithm
from .._model.scan_cell import scan_cell


def _import_equinox():
    try:
        import equinox
    except ImportError as error:
        raise ImportError(
            "dprnn_jax.interop.equinox_scan runs an Equinox cell, but equinox is not "
            "installed; install it with `pip install 'dprnn_jax[equinox]'`."
        ) from error
    return equinox


def _describe(tree) -> str:
    return str(jax.tree.map(lambda leaf: f"{leaf.dtype}{list(leaf.shape)}", tree))


def _check_cell(eqx, cell, xs, carry0) -> None:
    """An Equinox cell that takes one sample's `(x, carry)` as given; each mistake named
    with the fix."""
    kind = f"{type(cell).__module__}.{type(cell).__qualname__}"
    modules = [base.__module__ for base in type(cell).__mro__]
    if any(name.startswith("flax.nnx") for name in modules):
        raise TypeError(
            f"equinox_scan's cell must be an Equinox module, got {kind}, a flax.nnx module: "
            "use dprnn_jax.interop.nnx.RNN(cell, method=...), the drop-in for nnx.RNN."
        )
    if any(name.startswith("flax.linen") for name in modules):
        raise TypeError(
            f"equinox_scan's cell must be an Equinox module, got {kind}, a flax.linen "
            "module: use dprnn_jax.interop.FlaxRNN(cell, method=...), the drop-in for nn.RNN."
        )
    if not callable(cell):
        raise TypeError(
            f"cell must be an Equinox module called as cell(x, carry) -> carry, got {kind}."
        )
    try:
        x = jax.tree.map(lambda leaf: leaf[0, 0], xs)
        carry = jax.tree.map(lambda leaf: leaf[0], carry0)
    except (TypeError, IndexError):
        return  # scan_cell names what is wrong with xs or carry0
    expected = None
    hidden, inputs = getattr(cell, "hidden_size", None), getattr(cell, "input_size", None)
    if isinstance(cell, eqx.nn.GRUCell):
        expected = f"h0 of shape (m, {hidden}) and xs of shape (T, m, {inputs})"
        fits = hasattr(carry, "shape") and carry.shape == (hidden,)
    elif isinstance(cell, eqx.nn.LSTMCell):
        expected = f"the pair (h0, c0), each (m, {hidden}), and xs of shape (T, m, {inputs})"
        fits = isinstance(carry, (tuple, list)) and len(carry) == 2
        fits = fits and all(getattr(leaf, "shape", None) == (hidden,) for leaf in carry)
    if expected is not None:
        fits = fits and getattr(x, "shape", None) == (inputs,)
        if not fits:
            raise ValueError(
                f"equinox_scan: {type(cell).__name__}(input_size={inputs}, hidden_size="
                f"{hidden}) takes {expected}; got carry0 {_describe(carry0)} and xs "
                f"{_describe(xs)}."
            )
        return
    try:
        jax.eval_shape(cell, x, carry)
    except Exception as error:
        raise TypeError(
            f"equinox_scan calls cell(x, carry) -> carry per sample; {kind} failed on one "
            f"sample's x {_describe(x)} and carry {_describe(carry)} (carry0 and xs "
            f"without their batch and time axes) with {type(error).__name__}: {error}. "
            "Pass a recurrent cell such as eqx.nn.GRUCell(input_size, hidden_size, "
            "key=...) with a carry0 of its hidden state."
        ) from error


def equinox_scan(
    cell: Any,
    xs: jax.Array,
    carry0: Any,
    *,
    method: str | GradientAlgorithm = "omega",
    truncation: int | None = None,
    tol: float | None = None,
    block: int | None = None,
) -> Any:
    """Runs an Equinox cell over a time-major batch; differentiable by `method`.

    scan :: (cell, xs (T, m, n), carry0 (m, …)) -> carries (T, m, …)

    `carry_t = cell(x_t, carry_{t−1})` for each of the m sequences (the cell is vmapped
    over the batch), t = 0 … T−1 from `carry0`. The cell's floating arrays
    (`eqx.partition(cell, eqx.is_inexact_array)`) are the parameters the gradient
    algorithm differentiates, so the gradient w.r.t. `cell` is an Equinox module of the
    same structure (as `eqx.filter_grad` returns it, ready for optax), alongside the
    gradients w.r.t. `xs` and `carry0`. The cell must be deterministic: it is called
    without a `key`.

    Args:
        cell: an Equinox module called per sample as `cell(x, carry) -> carry`, such as
            `eqx.nn.GRUCell` (carry `h`) or `eqx.nn.LSTMCell` (carry `(h, c)`).
        xs: inputs (T, m, …), time-major.
        carry0: the initial carry, the cell's carry with a leading batch axis m: `h0`
            (m, d), or `(h0, c0)` for an LSTM cell.
        method: a `GradientAlgorithm` or its name (see `scan_cell`).
        truncation: with the names "omega" and "bptt": keep lags ≤ K.
        tol: with the name "omega": the adaptive fill.
        block: with the name "omega": Ω triangles of `block` steps.

    Returns:
        The carries stacked over T: the structure of `carry0`, each leaf (T, m, …).

    Raises:
        ImportError: equinox is not installed.
        TypeError: `cell` is not an Equinox cell (a Flax cell is sent to `interop.nnx.RNN`
            or `FlaxRNN`; a module such as `eqx.nn.Linear` cannot be called as
            `cell(x, carry)`); the errors of `scan_cell`.
        ValueError: a carry or inputs of the wrong structure or width for the cell
            (`eqx.nn.GRUCell` takes `h0` (m, hidden_size), `eqx.nn.LSTMCell` the pair
            `(h0, c0)`), a cell that fails on them; the errors of `scan_cell` (e.g. a
            carry the cell changes in shape).

    Example:
        >>> import equinox as eqx
        >>> cell = eqx.nn.GRUCell(3, 4, key=jax.random.key(0))
        >>> xs, h0 = jnp.ones((6, 2, 3)), jnp.zeros((2, 4))
        >>> dj.interop.equinox_scan(cell, xs, h0, method=dj.BPTT()).shape
        (6, 2, 4)
        >>> @eqx.filter_jit
        ... @eqx.filter_grad
        ... def grads(cell):
        ...     return dj.interop.equinox_scan(cell, xs, h0, method=dj.Omega()).sum()
        >>> grads(cell).weight_hh.shape
        (12, 4)
    """
    eqx = _import_equinox()
    _check_cell(eqx, cell, xs, carry0)
    params, static = eqx.partition(cell, eqx.is_inexact_array)

    def step(params, carry, x):
        return jax.vmap(eqx.combine(params, static))(x, carry)

    return scan_cell(
        step, params, xs, carry0, method=method, truncation=truncation, tol=tol, block=block
    )
