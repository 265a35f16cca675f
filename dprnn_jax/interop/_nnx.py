"""`flax.nnx.RNN` and `flax.nnx.Bidirectional` with the gradient from the library's
algorithms.

`RNN` is `nnx.RNN` (a subclass: same constructor, call, outputs and state) whose scan
over time is `scan_cell`. The cell is split functionally, `nnx.split(cell)`, and its
whole state is the step's parameters: the floating leaves (`nnx.Param`, …) are what the
algorithm differentiates, the integer ones (RNG keys and counters) are constants of
the step. Random streams follow `nnx.RNN`: those named by `broadcast_rngs` give every
step the same numbers (split once per call, by the same `nnx.split_rngs`), the others
advance by each step's draws, as `nnx.scan` carries them. Importing this module
imports flax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

try:
    import flax
except ImportError as error:  # pragma: no cover - exercised only without flax
    raise ImportError(
        "dprnn_jax.interop.nnx holds flax.nnx Modules, but flax is not installed; "
        "install it with `pip install 'dprnn_jax[flax]'`."
    ) from error
try:
    from flax import nnx
    from flax.nnx import filterlib
    from flax.nnx.nn.recurrent import flip_sequences
except ImportError as error:  # pragma: no cover - exercised only with an old flax
    raise ImportError(
        f"dprnn_jax.interop.nnx subclasses flax.nnx.RNN, which flax {flax.__version__} "
        "does not have; upgrade it with `pip install -U flax` (tested with 0.12)."
    ) from error

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from ._sequence import SequenceLayout, scan_flax_cell


def _check_nnx_cell(cell) -> None:
    """An nnx module with the cell interface; other frameworks' cells are sent to their
    own wrapper."""
    if isinstance(cell, nnx.Module) and all(
        hasattr(cell, name) for name in ("initialize_carry", "num_feature_axes")
    ):
        return
    kind = f"{type(cell).__module__}.{type(cell).__qualname__}"
    mro = [base.__module__ for base in type(cell).__mro__]
    if any(name.startswith("flax.linen") for name in mro):
        hint = (
            "it is a flax.linen module: use dprnn_jax.interop.FlaxRNN(cell, method=...), "
            "the drop-in for flax.linen.RNN"
        )
    elif any(name.startswith("equinox") for name in mro):
        hint = "it is an Equinox module: use dprnn_jax.interop.equinox_scan(cell, xs, carry0)"
    elif isinstance(cell, nnx.Module):
        hint = (
            "a cell is an nnx.Module with __call__(carry, x) -> (carry, y), "
            "initialize_carry(input_shape, rngs) and num_feature_axes, such as "
            "nnx.GRUCell(in_features, hidden_features, rngs=...)"
        )
    else:
        hint = "pass a flax.nnx cell such as nnx.GRUCell(in_features, hidden_features, rngs=...)"
    raise TypeError(f"RNN's cell must be a flax.nnx recurrent cell, got {kind}; {hint}.")


class _CellState:
    """The cell's state as the step's parameters: the leaves of `nnx.split(cell)` in
    order, with the Variable and path of each (static)."""

    def __init__(self, cell):
        self.graphdef, state = nnx.split(cell)
        self.leaves, self.treedef = jax.tree.flatten(state)
        self.variables = [(path, variable) for path, variable in nnx.to_flat_state(state)]

    def module(self, leaves):
        # A fresh State, so the Variables the call updates are not the caller's.
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))

    def changed_by_a_step(self, carry, x) -> list[int]:
        """The leaves one call of the cell writes, found by identity while tracing it."""
        changed = []

        def probe(leaves, carry, x):
            module = self.module(leaves)
            module(carry, x)
            after = jax.tree.leaves(nnx.split(module)[1])
            changed.extend(i for i, (a, b) in enumerate(zip(leaves, after)) if a is not b)
            return 0

        jax.eval_shape(probe, list(self.leaves), carry, x)
        return changed


def _advancing_counters(
    state: _CellState, carry0, x0, broadcast: Callable[[Any, Any], bool]
) -> list[int]:
    """The RNG counters a step advances, outside `broadcast_rngs`. A broadcast stream is
    restored before every step (each step draws the same numbers); any other variable a
    step writes is refused, since the algorithms differentiate the carry alone."""
    counters = []
    for index in state.changed_by_a_step(carry0, x0):
        path, variable = state.variables[index]
        if broadcast(path, variable):
            continue
        if isinstance(variable, nnx.RngCount):
            counters.append(index)
            continue
        name = ".".join(str(part) for part in path)
        raise ValueError(
            f"the cell writes its variable {name} ({type(variable).__name__}) in every "
            "step; interop.nnx.RNN runs cells whose state, apart from the carry, is "
            "fixed during the sequence (parameters, constants, RNG streams). Return "
            "that value in the carry instead."
        )
    return counters


def _scan_nnx_cell(cell, carry, inputs, layout: SequenceLayout, algorithm, broadcast):
    """`(carries, outputs)` of an nnx cell over `inputs`; updates the cell's advancing
    RNG counters as `nnx.scan` leaves them."""
    state = _CellState(cell)
    xs, carry0 = layout.to_scan(inputs, carry)
    T, m = xs.shape[:2]
    counters = _advancing_counters(state, carry0, xs[0], broadcast)
    if not counters:

        def cell_step(leaves, carry, x):
            return state.module(leaves)(carry, x)

        return scan_flax_cell(cell_step, state.leaves, xs, carry0, algorithm)

    # Step t draws with the counters at count_0 + t·k (k the draws of one step): given
    # to the step as inputs of (T, m, …), the same for every row.
    start = [state.leaves[i] for i in counters]
    stepped = _one_step_counters(state, counters, carry0, xs[0])
    steps = jnp.arange(T + 1)

    def per_step(first, after):
        draws = after - first
        counts = first + steps.reshape((-1,) + (1,) * first.ndim).astype(first.dtype) * draws
        return counts

    counts = [per_step(first, after) for first, after in zip(start, stepped)]
    rows = [jnp.broadcast_to(c[:T, None], (T, m) + c.shape[1:]) for c in counts]

    def counted_step(leaves, carry, x):
        inputs, row_counts = x
        leaves = list(leaves)
        for index, count in zip(counters, row_counts):
            leaves[index] = count[0]
        return state.module(leaves)(carry, inputs)

    carries, outputs = scan_flax_cell(counted_step, state.leaves, (xs, rows), carry0, algorithm)
    leaves = list(state.leaves)
    for index, count in zip(counters, counts):
        leaves[index] = count[T]
    nnx.update(cell, jax.tree.unflatten(state.treedef, leaves))
    return carries, outputs


def _one_step_counters(state: _CellState, counters, carry0, x0) -> list[jax.Array]:
    module = state.module(list(state.leaves))
    module(carry0, x0)
    after = jax.tree.leaves(nnx.split(module)[1])
    return [after[i] for i in counters]


class RNN(nnx.RNN):
    """A drop-in for `flax.nnx.RNN(cell)` whose gradient comes from `method`.

    The same constructor (every argument of `nnx.RNN`, with its default), call
    (`initial_carry`, `seq_lengths`, `return_carry`, `time_major`, `reverse`,
    `keep_order`, `rngs`), outputs and state (a subclass of `nnx.RNN`); but the scan
    over time is `scan_cell`, so `nnx.grad`/`jax.grad` of anything downstream
    differentiates the cell with the chosen algorithm (`Omega()`, `BPTT()`,
    `Omega(truncation=K)`, `BPTT(checkpoint="sqrt")`, …) instead of JAX's reverse scan.
    It trains with `nnx.Optimizer` under `nnx.jit` and composes with `nnx.vmap` and
    `nnx.grad`.

    The cell is any `nnx.RNNCellBase` (`GRUCell`, `LSTMCell`, `OptimizedLSTMCell`,
    `SimpleCell`) or a user module with the same interface. Its state is the step's
    parameters: floating variables are differentiated, integer ones (RNG keys and
    counters) are constants of the step. Random numbers drawn in the cell follow
    `nnx.RNN`: the streams named by `broadcast_rngs` give every step the same numbers
    (recurrent dropout), the others advance by each step's draws and are left
    advanced. A cell that writes any other variable during a step is refused. As in
    `nnx.RNN`, `seq_lengths` does not stop the scan (the carry returned with
    `return_carry` is each sequence's after its last valid step); a cell whose output
    is not part of its carry runs with the augmented carry `(carry, y)` (see
    `FlaxRNN`).

    Args:
        cell: a flax.nnx recurrent cell.
        time_major: inputs `(time, *batch, *features)` if True, else (default)
            `(*batch, time, *features)`.
        return_carry: return `(carry, outputs)` instead of the outputs.
        reverse: read each sequence from its end; outputs in that order unless
            `keep_order`.
        keep_order: with `reverse`, give the outputs back in time order.
        unroll: accepted as `nnx.RNN` accepts it, as a hint, and not used: the forward
            and backward loops are the algorithm's own.
        state_axes: only the default (None: the cell's state is the same at every
            step, as `nnx.RNN`'s default carries it); anything else is refused.
        broadcast_rngs: a filter of the RNG streams whose numbers are the same at every
            step, as in `nnx.RNN`.
        rngs: the stream of `initialize_carry`, as in `nnx.RNN`.
        method: the gradient algorithm, a `GradientAlgorithm` or its name (see
            `scan_cell`); "omega" by default.
        truncation: with the names "omega" and "bptt": keep lags ≤ K.
        tol: with the name "omega": the adaptive fill.
        block: with the name "omega": Ω triangles of `block` steps.

    Raises:
        TypeError: `cell` is not a flax.nnx cell (a linen cell is sent to `FlaxRNN`,
            an Equinox cell to `equinox_scan`).
        ValueError: a `state_axes`, an unknown `method` or options it does not take.

    Example:
        >>> from flax import nnx
        >>> x = jnp.ones((2, 6, 3))  # (batch, time, features)
        >>> rnn = dj.interop.nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)), method=dj.Omega())
        >>> reference = nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0)))
        >>> bool(jnp.allclose(rnn(x), reference(x), atol=1e-6))
        True
        >>> grads = nnx.grad(lambda rnn: rnn(x).sum())(rnn)
        >>> expected = nnx.grad(lambda rnn: rnn(x).sum())(reference)
        >>> bool(jnp.allclose(grads["cell"]["dense_h"]["kernel"][...],
        ...                   expected["cell"]["dense_h"]["kernel"][...], atol=1e-5))
        True
    """

    def __init__(
        self,
        cell: nnx.RNNCellBase,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        state_axes: Mapping[str, Any] | None = None,
        broadcast_rngs: filterlib.Filter = None,
        rngs: nnx.Rngs | nnx.RngStream | bool = True,
        method: str | GradientAlgorithm = "omega",
        truncation: int | None = None,
        tol: float | None = None,
        block: int | None = None,
    ):
        _check_nnx_cell(cell)
        if state_axes is not None:
            raise ValueError(
                f"interop.nnx.RNN takes only the default state_axes (None), got "
                f"{state_axes!r}: the cell's state is the same at every step (its RNG "
                "streams apart), as nnx.RNN's default gives it. Leave state_axes out."
            )
        super().__init__(
            cell,
            time_major=time_major,
            return_carry=return_carry,
            reverse=reverse,
            keep_order=keep_order,
            unroll=unroll,
            broadcast_rngs=broadcast_rngs,
            rngs=rngs,
        )
        self.method = resolve_method(method, truncation=truncation, tol=tol, block=block)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Any = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> Any:
        """Runs the cell over `inputs`, as `nnx.RNN.__call__` does.

        Args:
            inputs: `(*batch, time, *features)`, or `(time, *batch, *features)` when
                time-major.
            initial_carry: the carry before the first step; None for the cell's
                `initialize_carry(input_shape, rngs)`.
            seq_lengths: valid steps per sequence, integers of shape `batch`; None: all.
            return_carry: overrides the attribute.
            time_major: overrides the attribute.
            reverse: overrides the attribute.
            keep_order: overrides the attribute.
            rngs: the stream of `initialize_carry`; the module's own if None.

        Returns:
            The outputs `(*batch, time, *out)` (or time-major), or `(carry, outputs)`
            with `return_carry`.

        Raises:
            TypeError: `inputs` is not an array.
            ValueError: a cell whose carry changes structure, shape or dtype
                (`scan_cell`), or that writes a variable other than an RNG counter.
        """
        if return_carry is None:
            return_carry = self.return_carry
        if time_major is None:
            time_major = self.time_major
        if reverse is None:
            reverse = self.reverse
        if keep_order is None:
            keep_order = self.keep_order
        layout = SequenceLayout.of(inputs, self.cell.num_feature_axes, time_major)
        if reverse:
            inputs = flip_sequences(inputs, seq_lengths, **layout.flip_options)
        if rngs is None:
            rngs = self.rngs
        if isinstance(rngs, nnx.Rngs):
            rngs = rngs.carry.fork()
        if initial_carry is None:
            carry = self.cell.initialize_carry(layout.step_input_shape(inputs), rngs)
        else:
            carry = initial_carry

        broadcast = filterlib.to_predicate(nnx.All(nnx.RngState, self.broadcast_rngs))
        algorithm = self.method

        # nnx.RNN's own split of the broadcast streams: one key per call, the same at
        # every step.
        @nnx.split_rngs(splits=1, only=self.broadcast_rngs, squeeze=True)
        def run(cell, carry, inputs):
            return _scan_nnx_cell(cell, carry, inputs, layout, algorithm, broadcast)

        carries, outputs = run(self.cell, carry, inputs)
        final = layout.final_carry(carries, seq_lengths if return_carry else None)
        outputs = layout.outputs_from_scan(outputs)
        if reverse and keep_order:
            outputs = jax.tree.map(
                lambda leaf: flip_sequences(leaf, seq_lengths, **layout.flip_options), outputs
            )
        return (final, outputs) if return_carry else outputs


class Bidirectional(nnx.Bidirectional):
    """A drop-in for `flax.nnx.Bidirectional`: the same module, for two `RNN`s.

    `nnx.Bidirectional` runs any pair of RNN modules; this subclass checks that they
    are RNN modules (an `interop.nnx.RNN`, or an `nnx.RNN`, whose gradient is then
    JAX's) and otherwise behaves exactly as `nnx.Bidirectional` (`merge_fn`,
    `time_major`, `return_carry`, `rngs`, and the call's `initial_carry`,
    `seq_lengths`, …).

    Args:
        forward_rnn: the RNN that reads the sequences forwards.
        backward_rnn: the RNN that reads them backwards (called with `reverse=True`,
            `keep_order=True`).
        merge_fn: combines the two outputs; concatenation by default.
        time_major: as in `nnx.Bidirectional`.
        return_carry: as in `nnx.Bidirectional`.
        rngs: as in `nnx.Bidirectional`.

    Raises:
        TypeError: an RNN that is a cell, not an RNN module: wrap it in `RNN(cell)`.

    Example:
        >>> from flax import nnx
        >>> cell = lambda: nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))
        >>> layer = dj.interop.nnx.Bidirectional(
        ...     dj.interop.nnx.RNN(cell(), method=dj.BPTT()), dj.interop.nnx.RNN(cell())
        ... )
        >>> layer(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 3])).shape
        (2, 5, 8)
    """

    def __init__(
        self,
        forward_rnn: nnx.RNN,
        backward_rnn: nnx.RNN,
        *,
        merge_fn: Callable[[jax.Array, jax.Array], jax.Array] = nnx.Bidirectional.merge_fn,
        time_major: bool = False,
        return_carry: bool = False,
        rngs: nnx.Rngs | nnx.RngStream | bool = True,
    ):
        for name, rnn in (("forward_rnn", forward_rnn), ("backward_rnn", backward_rnn)):
            if hasattr(rnn, "initialize_carry") or not callable(rnn):
                raise TypeError(
                    f"Bidirectional's {name} must be an RNN module, got "
                    f"{type(rnn).__qualname__}; wrap a cell as "
                    "dj.interop.nnx.RNN(cell, method=...)."
                )
        super().__init__(
            forward_rnn,
            backward_rnn,
            merge_fn=merge_fn,
            time_major=time_major,
            return_carry=return_carry,
            rngs=rngs,
        )
