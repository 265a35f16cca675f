"""What Flax's `RNN` modules (linen and NNX) do around the scan, shared by `FlaxRNN` and
`interop.nnx.RNN`: the axes of the inputs, the layout `scan_cell` takes, the cell's
output (in its carry or beside it), and the carry returned with `seq_lengths`.

Both Flax modules read inputs `(*batch, time, *features)` (or time-major), run
`cell(carry, x) -> (carry, y)` over time and return the outputs in the inputs' layout;
here the batch axes are flattened into one, `(T, m, *features)`, for `scan_cell`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._model.scan_cell import scan_cell


class SequenceLayout(NamedTuple):
    """Where time and batch are in a Flax RNN's inputs, as `nn.RNN` reads them."""

    time_axis: int
    batch_dims: tuple[int, ...]
    time_major: bool

    @classmethod
    def of(cls, inputs, num_feature_axes: int, time_major: bool) -> SequenceLayout:
        if not hasattr(inputs, "ndim"):
            raise TypeError(
                "inputs must be an array (*batch, time, *features), or (time, *batch, "
                f"*features) when time-major, got {type(inputs).__name__}."
            )
        if inputs.ndim < num_feature_axes + 1:
            raise ValueError(
                f"inputs must have a time axis and the cell's {num_feature_axes} feature "
                f"axes, got shape {inputs.shape}."
            )
        time_axis = 0 if time_major else inputs.ndim - (num_feature_axes + 1)
        if time_major:
            batch_dims = inputs.shape[1 : inputs.ndim - num_feature_axes]
        else:
            batch_dims = inputs.shape[:time_axis]
        return cls(time_axis, tuple(batch_dims), time_major)

    @property
    def flip_options(self) -> dict[str, Any]:
        """The keywords of Flax's `flip_sequences`."""
        return dict(num_batch_dims=len(self.batch_dims), time_major=self.time_major)

    def step_input_shape(self, inputs) -> tuple[int, ...]:
        """The shape of one step's input: what `initialize_carry` takes."""
        return inputs.shape[: self.time_axis] + inputs.shape[self.time_axis + 1 :]

    def first_step(self, inputs) -> jax.Array:
        return jax.lax.index_in_dim(inputs, 0, self.time_axis, keepdims=False)

    def to_scan(self, inputs, carry) -> tuple[jax.Array, Any]:
        """`(xs (T, m, *features), carry0 (m, …))`, the batch axes flattened into m."""
        m = math.prod(self.batch_dims)
        xs = jnp.moveaxis(inputs, self.time_axis, 0)
        xs = xs.reshape((xs.shape[0], m) + xs.shape[1 + len(self.batch_dims) :])
        carry0 = jax.tree.map(
            lambda leaf: leaf.reshape((m,) + leaf.shape[len(self.batch_dims) :]), carry
        )
        return xs, carry0

    def outputs_from_scan(self, outputs):
        """(T, m, …) leaves back to the inputs' layout."""
        batch = self.batch_dims
        return jax.tree.map(
            lambda leaf: jnp.moveaxis(
                leaf.reshape((leaf.shape[0],) + batch + leaf.shape[2:]), 0, self.time_axis
            ),
            outputs,
        )

    def final_carry(self, carries, seq_lengths):
        """The carry after the last step, or each sequence's after its last valid step
        (`seq_lengths − 1`) when lengths are given, as Flax selects it."""
        if seq_lengths is None:
            final = jax.tree.map(lambda leaf: leaf[-1], carries)
        else:
            m = math.prod(self.batch_dims)
            last = jnp.reshape(seq_lengths, (m,)) - 1
            final = jax.tree.map(lambda leaf: leaf[last, jnp.arange(m)], carries)
        return jax.tree.map(lambda leaf: leaf.reshape(self.batch_dims + leaf.shape[1:]), final)


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


def scan_flax_cell(
    cell_step: Callable, params, xs, carry0, algorithm: GradientAlgorithm
) -> tuple[Any, Any]:
    """`(carries, outputs)` of a Flax-style cell `cell_step(params, carry, x) -> (carry, y)`
    over `xs`, differentiated by `algorithm`.

    The algorithm differentiates carries only: when y is one of the carry's leaves the
    outputs are read from the carries; otherwise the cell runs with the augmented carry
    `(carry, y)` from `y = 0`, so that the outputs are among the differentiated carries
    (the state grows from width d to d + p; `y_{t−1}` enters no step).
    """
    x0 = jax.tree.map(lambda leaf: leaf[0], xs)
    output_leaf, y_shape = _output_leaf(cell_step, params, carry0, x0)
    if output_leaf is not None:
        carries = scan_cell(
            lambda params, carry, x: cell_step(params, carry, x)[0],
            params,
            xs,
            carry0,
            method=algorithm,
        )
        return carries, jax.tree.leaves(carries)[output_leaf]
    y0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), y_shape)
    return scan_cell(
        lambda params, carry, x: cell_step(params, carry[0], x),
        params,
        xs,
        (carry0, y0),
        method=algorithm,
    )
