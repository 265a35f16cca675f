"""`flax.linen.RNN` with its gradient from the library's algorithms.

The module keeps `nn.RNN`'s variables, call signature and outputs, but runs the cell
through `scan_cell`: the cell's parameters are initialised once, as `nn.RNN` does
(under the name `cell`), and the step is the cell applied functionally,
`step(params, carry, x) = cell.apply({"params": params}, carry, x)`. Importing this
module imports flax.
"""

from __future__ import annotations

from typing import Any

import jax

try:
    import flax.linen as nn
    from flax.linen.recurrent import flip_sequences
except ImportError as error:  # pragma: no cover - exercised only without flax
    raise ImportError(
        "dprnn_jax.interop.FlaxRNN is a flax.linen Module, but flax is not installed; "
        "install it with `pip install 'dprnn_jax[flax]'`."
    ) from error

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from ._sequence import SequenceLayout, scan_flax_cell


def _check_linen_cell(cell) -> None:
    """A flax.linen cell; cells of other frameworks are sent to their own wrapper."""
    if isinstance(cell, nn.Module):
        return
    kind = f"{type(cell).__module__}.{type(cell).__qualname__}"
    hint = "pass a flax.linen cell such as nn.GRUCell(features)"
    if type(cell).__module__.startswith("flax.nnx") or any(
        base.__module__.startswith("flax.nnx") for base in type(cell).__mro__
    ):
        hint = (
            "it is a flax.nnx module: use dprnn_jax.interop.nnx.RNN(cell, method=...), "
            "the drop-in for flax.nnx.RNN"
        )
    elif any(base.__module__.startswith("equinox") for base in type(cell).__mro__):
        hint = "it is an Equinox module: use dprnn_jax.interop.equinox_scan(cell, xs, carry0)"
    raise TypeError(f"FlaxRNN's cell must be a flax.linen recurrent cell, got {kind}; {hint}.")


class FlaxRNN(nn.Module):
    """A drop-in for `flax.linen.RNN(cell)` whose gradient comes from `method`.

    Same variables (`{"params": {"cell": …}}`, initialised to the same values from the
    same key, so weights move both ways between the two modules), same call signature
    and defaults (`initial_carry`, `init_key`, `seq_lengths`, `return_carry`,
    `time_major`, `reverse`, `keep_order`), same outputs; but the scan over time is
    `scan_cell`, so `jax.grad` of anything downstream differentiates the cell with the
    chosen algorithm (`Omega()`, `BPTT()`, `Omega(truncation=K)`, …) instead of JAX's
    reverse scan. As in `nn.RNN`, `seq_lengths` does not stop the scan: the outputs past
    each length are those of the cell running on over the padding, and with
    `return_carry` the carry returned is each sequence's carry after its last valid step
    (`seq_lengths − 1`); with `reverse` each sequence is read backwards within its
    length and the padding stays at the end.

    The cell's output y must be part of its carry for the carries alone to determine
    the outputs. Flax's cells (`GRUCell`, `LSTMCell`, `OptimizedLSTMCell`,
    `SimpleCell`, `MGUCell`) return the very array of their carry that holds `h`, found
    by identity while tracing one step. A cell whose output is computed apart (e.g. a
    readout inside the cell) is run with the augmented carry `(carry, y)` starting from
    `y = 0`: the algorithm then differentiates a state of width D = d + p instead of d
    (p the output's size), so the stored carries and every vector–Jacobian product grow
    by the factor (d + p)/d, and ParallelScan's explicit D × D Jacobians and RTRL's
    sensitivities by its square or more; `y_{t−1}` enters no step, so the extra
    Jacobian columns are zero.

    Any cell with `nn.RNN`'s interface works: `initialize_carry(key, input_shape)`,
    `num_feature_axes` and `__call__(carry, x) -> (carry, y)` over any leading batch
    axes (flattened into one for the scan); integer inputs (tokens) have no gradient.
    `unroll` is accepted as `nn.RNN` accepts it, as a hint, and not used: the forward
    and backward loops are the algorithm's own. Not supported: `nn.RNN`'s
    `variable_axes`, `variable_broadcast`, `variable_carry` and `split_rngs` (the cell's
    variables are broadcast over time, as `nn.RNN`'s defaults do), cells that draw
    random numbers (dropout) or update mutable collections. Collections other than
    "params" are read but not differentiated. For a `flax.nnx` cell use
    `dprnn_jax.interop.nnx.RNN`.

    Attributes:
        cell: a Flax recurrent cell (`nn.RNNCellBase`).
        time_major: inputs `(time, *batch, *features)` if True, else (default)
            `(*batch, time, *features)`.
        return_carry: return `(carry, outputs)` instead of the outputs.
        reverse: read each sequence from its end; outputs in that order unless
            `keep_order`.
        keep_order: with `reverse`, give the outputs back in time order.
        unroll: accepted for `nn.RNN`'s signature; a hint that is not used.
        method: the gradient algorithm, a `GradientAlgorithm` or its name (see
            `scan_cell`); "omega" by default.
        truncation: with the names "omega" and "bptt": keep lags ≤ K.
        tol: with the name "omega": the adaptive fill.
        block: with the name "omega": Ω triangles of `block` steps.

    Example:
        >>> import flax.linen as nn
        >>> x = jnp.ones((2, 6, 3))  # (batch, time, features)
        >>> rnn = dj.interop.FlaxRNN(nn.GRUCell(4), method=dj.Omega())
        >>> variables = rnn.init(jax.random.key(0), x)
        >>> reference = nn.RNN(nn.GRUCell(4))
        >>> reference_variables = reference.init(jax.random.key(0), x)
        >>> jax.tree.structure(variables) == jax.tree.structure(reference_variables)
        True
        >>> rnn.apply(variables, x).shape
        (2, 6, 4)
        >>> grads = jax.jit(jax.grad(lambda v: rnn.apply(v, x).sum()))(variables)
        >>> expected = jax.jit(jax.grad(lambda v: reference.apply(v, x).sum()))(variables)
        >>> bool(np.allclose(grads["params"]["cell"]["hn"]["kernel"],
        ...                  expected["params"]["cell"]["hn"]["kernel"], atol=1e-5))
        True
    """

    cell: nn.RNNCellBase
    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int = 1
    method: str | GradientAlgorithm = "omega"
    truncation: int | None = None
    tol: float | None = None
    block: int | None = None

    def __post_init__(self) -> None:
        _check_linen_cell(self.cell)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Any = None,
        init_key: jax.Array | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
    ) -> Any:
        """Runs the cell over `inputs`, as `nn.RNN.__call__` does.

        Args:
            inputs: `(*batch, time, *features)`, or `(time, *batch, *features)` when
                time-major.
            initial_carry: the carry before the first step; None for the cell's
                `initialize_carry(init_key, input_shape)`.
            init_key: the key of `initialize_carry`; `jax.random.key(0)` if None.
            seq_lengths: valid steps per sequence, integers of shape `batch`; None: all.
            return_carry: overrides the attribute.
            time_major: overrides the attribute.
            reverse: overrides the attribute.
            keep_order: overrides the attribute.

        Returns:
            The outputs `(*batch, time, *out)` (or time-major), or `(carry, outputs)`
            with `return_carry`.

        Raises:
            ValueError: unknown `method` or options it does not take (`resolve_method`),
                a cell whose carry changes structure, shape or dtype (`scan_cell`).
            TypeError: `inputs` is not an array; `cell` is not a flax.linen module (at
                construction).

        Example:
            >>> import flax.linen as nn
            >>> x = jnp.ones((6, 2, 3))  # (time, batch, features)
            >>> rnn = dj.interop.FlaxRNN(nn.LSTMCell(4), time_major=True)
            >>> variables = rnn.init(jax.random.key(0), x)
            >>> (c, h), hs = rnn.apply(variables, x, seq_lengths=jnp.array([6, 3]),
            ...                        return_carry=True)
            >>> bool(jnp.allclose(h[1], hs[2, 1]))
            True
        """
        if return_carry is None:
            return_carry = self.return_carry
        if time_major is None:
            time_major = self.time_major
        if reverse is None:
            reverse = self.reverse
        if keep_order is None:
            keep_order = self.keep_order
        algorithm = resolve_method(
            self.method, truncation=self.truncation, tol=self.tol, block=self.block
        )
        layout = SequenceLayout.of(inputs, self.cell.num_feature_axes, time_major)
        if reverse:
            inputs = flip_sequences(inputs, seq_lengths, **layout.flip_options)
        if initial_carry is None:
            if init_key is None:
                init_key = jax.random.key(0)
            carry = self.cell.initialize_carry(init_key, layout.step_input_shape(inputs))
        else:
            carry = initial_carry
        if self.is_initializing():
            # nn.RNN's scan initialises the cell's variables (broadcast over time) from
            # the first step; the same call under the same name gives the same values.
            self.cell(carry, layout.first_step(inputs))

        xs, carry0 = layout.to_scan(inputs, carry)
        variables = dict(self.cell.variables)
        params = variables.pop("params", {})
        cell = self.cell.clone(parent=None)

        def cell_step(params, carry, x):
            return cell.apply({**variables, "params": params}, carry, x)

        carries, outputs = scan_flax_cell(cell_step, params, xs, carry0, algorithm)
        final = layout.final_carry(carries, seq_lengths if return_carry else None)
        outputs = layout.outputs_from_scan(outputs)
        if reverse and keep_order:
            outputs = jax.tree.map(
                lambda leaf: flip_sequences(leaf, seq_lengths, **layout.flip_options), outputs
            )
        return (final, outputs) if return_carry else outputs
