"""`flax.linen.RNN` with its gradient from the library's algorithms.

The module keeps `nn.RNN`'s variables, call signature and outputs, but runs the cell
through `scan_cell`: the cell's parameters are initialised once, as `nn.RNN` does
(under the name `cell`), and the step is the cell applied functionally,
`step(params, carry, x) = cell.apply({"params": params}, carry, x)`. Importing this
module imports flax.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

try:
    import flax.linen as nn
    from flax.linen.recurrent import flip_sequences
except ImportError as error:  # pragma: no cover - exercised only without flax
    raise ImportError(
        "dprnn_jax.interop.FlaxRNN is a flax.linen Module, but flax is not installed; "
        "install it with `pip install 'dprnn_jax[flax]'`."
    ) from error

from .._backward.base import GradientAlgorithm
from .._backward.registry import resolve_method
from .._model.scan_cell import scan_cell


def _output_leaf(cell_step, params, carry, x) -> tuple[int | None, Any]:
    """Which leaf of the new carry the cell returns as its output y, if any, and y's shape.

    Flax's cells return `(new_carry, y)` with y the very array of the carry that holds
    `h` (`return (new_c, new_h), new_h`): found by identity while tracing one step.
    """
    found = []

    def probe(params, carry, x):
        new_carry, y = cell_step(params, carry, x)
        leaves = jax.tree.leaves(new_carry)
        found.append(next((i for i, leaf in enumerate(leaves) if leaf is y), None))
        return y

    y_shape = jax.eval_shape(probe, params, carry, x)
    return found[0], y_shape


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
    axes (flattened into one for the scan). Not supported: `nn.RNN`'s `unroll`,
    `variable_axes`, `variable_broadcast`, `variable_carry` and `split_rngs` (the cell's
    variables are broadcast over time, as `nn.RNN`'s defaults do), cells that draw
    random numbers (dropout) or update mutable collections, and integer inputs.
    Collections other than "params" are read but not differentiated.

    Attributes:
        cell: a Flax recurrent cell (`nn.RNNCellBase`).
        time_major: inputs `(time, *batch, *features)` if True, else (default)
            `(*batch, time, *features)`.
        return_carry: return `(carry, outputs)` instead of the outputs.
        reverse: read each sequence from its end; outputs in that order unless
            `keep_order`.
        keep_order: with `reverse`, give the outputs back in time order.
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
    method: str | GradientAlgorithm = "omega"
    truncation: int | None = None
    tol: float | None = None
    block: int | None = None

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
            TypeError: `inputs` is not an array.

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
        if not hasattr(inputs, "ndim"):
            raise TypeError(
                f"inputs must be an array (*batch, time, *features), got {type(inputs).__name__}."
            )

        # The axes as nn.RNN reads them.
        feature_axes = self.cell.num_feature_axes
        time_axis = 0 if time_major else inputs.ndim - (feature_axes + 1)
        if time_axis < 0:
            time_axis += inputs.ndim
        if time_major:
            batch_dims = inputs.shape[1:-feature_axes]
        else:
            batch_dims = inputs.shape[:time_axis]
        flip = dict(num_batch_dims=len(batch_dims), time_major=time_major)

        if reverse:
            inputs = flip_sequences(inputs, seq_lengths, **flip)
        if initial_carry is None:
            if init_key is None:
                init_key = jax.random.key(0)
            input_shape = inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :]
            carry = self.cell.initialize_carry(init_key, input_shape)
        else:
            carry = initial_carry
        if self.is_initializing():
            # nn.RNN's scan initialises the cell's variables (broadcast over time) from
            # the first step; the same call under the same name gives the same values.
            self.cell(carry, jax.lax.index_in_dim(inputs, 0, time_axis, keepdims=False))

        # scan_cell's layout: (T, m, *features) with the batch axes flattened into m.
        m = math.prod(batch_dims)
        xs = jnp.moveaxis(inputs, time_axis, 0)
        xs = xs.reshape((xs.shape[0], m) + xs.shape[1 + len(batch_dims) :])
        carry0 = jax.tree.map(
            lambda leaf: leaf.reshape((m,) + leaf.shape[len(batch_dims) :]), carry
        )

        variables = dict(self.cell.variables)
        params = variables.pop("params", {})
        cell = self.cell.clone(parent=None)

        def cell_step(params, carry, x):
            return cell.apply({**variables, "params": params}, carry, x)

        output_leaf, y_shape = _output_leaf(cell_step, params, carry0, xs[0])
        if output_leaf is not None:
            carries = scan_cell(
                lambda params, carry, x: cell_step(params, carry, x)[0],
                params,
                xs,
                carry0,
                method=algorithm,
            )
            outputs = jax.tree.leaves(carries)[output_leaf]
        else:
            # The output is not in the carry: carry it along, (carry, y) from y = 0.
            y0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), y_shape)
            carries, outputs = scan_cell(
                lambda params, carry, x: cell_step(params, carry[0], x),
                params,
                xs,
                (carry0, y0),
                method=algorithm,
            )

        if seq_lengths is not None and return_carry:
            # Each sequence's carry after its last valid step, as nn.RNN selects it.
            last = jnp.reshape(seq_lengths, (m,)) - 1
            final = jax.tree.map(lambda leaf: leaf[last, jnp.arange(m)], carries)
        else:
            final = jax.tree.map(lambda leaf: leaf[-1], carries)
        final = jax.tree.map(lambda leaf: leaf.reshape(batch_dims + leaf.shape[1:]), final)
        outputs = jax.tree.map(
            lambda leaf: jnp.moveaxis(
                leaf.reshape((leaf.shape[0],) + batch_dims + leaf.shape[2:]), 0, time_axis
            ),
            outputs,
        )
        if reverse and keep_order:
            outputs = jax.tree.map(lambda leaf: flip_sequences(leaf, seq_lengths, **flip), outputs)
        return (final, outputs) if return_carry else outputs
