"""What a recurrent cell is to the library: a forward pass and a linearisation.

Every recurrent scan of the library — an Elman, GRU, LSTM or minGRU layer, or a user's
`scan_cell` step — is `carries = cell.forward(params, xs, carry0)` and is differentiated
by ONE custom VJP (`_model/recurrent_scan.py`). Its forward calls `cell.linearise`, which
runs the same loop and keeps what the backward needs (`Linearisation`); its backward
hands the linearisation to the gradient algorithm, which sees only

* `linearisation.error_problem(carries_bar)`: the injected errors P (T, m, D) and the
  one-step Jacobians `Ω(i+1, i)` as a structured operator (`_core/jacobian.py`:
  `ElmanJacobian` S·diag(σ'), `DiagonalJacobian`, or the generic `CellJacobian` built
  from the cell's stored pullbacks);
* `linearisation.cotangents(delta)`: the cotangents of (params, xs, carry0) from the
  total errors Δ.

A cell says as much about its structure as it knows: the Elman cell its S·diag(σ')
(whose Δ is ∂C/∂Z, the pre-activations), the minGRU cell its diagonal Jacobian, any
other cell nothing (the generic linearisation, `_cells/generic.py`, works from `jax.vjp`
of its step). A new cell is one module defining a `Cell` (or only a step function, for
the generic one) and its registration in `_cells/kinds.py` (docs/cells.md#a-new-cell).

Algorithms that do not go through Δ alone (RTRL, BPTT's fused Elman loop) dispatch on
the linearisation's type (`functools.singledispatch`), never on a cell's name.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from .._core.jacobian import StepJacobian


class StepProblem(NamedTuple):
    """A scan as forward-mode algorithms see it (RTRL): `carry_t = step(params,
    carry_{t−1}, x_t)` with its stored carries; `params_cotangent` puts a cotangent of
    `params` (as given here) into the structure the scan's caller differentiates."""

    step: Any
    params: Any
    xs: Any
    carry0: Any
    carries: Any
    params_cotangent: Any


class Linearisation(abc.ABC):
    """What one recurrent scan's backward needs, stored by its forward. A pytree."""

    @abc.abstractmethod
    def error_problem(self, carries_bar) -> tuple[jax.Array, StepJacobian]:
        """`(P (T, m, D), Ω)`: the errors injected at each step and the one-step
        Jacobians, for the cotangent `carries_bar` of the carries."""

    @abc.abstractmethod
    def cotangents(self, delta: jax.Array):
        """`(params_bar, xs_bar, carry0_bar)` from the total errors Δ (T, m, D); None
        for what has no cotangent (integer inputs, constant leaves)."""

    @abc.abstractmethod
    def step_problem(self) -> StepProblem:
        """The scan as one step function and its stored carries (for RTRL)."""


class Cell(abc.ABC):
    """A recurrent cell: static (hashable, compared by value), so that it can be the
    static configuration of the custom VJP and key the compiled program."""

    @abc.abstractmethod
    def forward(self, params, xs, carry0):
        """The carries stacked over T (leaves (T, m, …))."""

    @abc.abstractmethod
    def linearise(self, params, xs, carry0) -> tuple[Any, Linearisation]:
        """`(carries, linearisation)`, from one forward loop."""

    def plain_forward(self, params, xs, carry0):
        """The carries by a plain `lax.scan`, for `jax.grad` (`Autodiff()`)."""
        return self.forward(params, xs, carry0)


class CellScan(NamedTuple):
    """A layer as the custom VJP runs it: `carries = recurrent_scan(algorithm, cell,
    params, inputs, carry0)`."""

    cell: Cell
    params: Any
    inputs: Any
    carry0: Any


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """A kind of recurrent layer a stack may hold, registered in `_cells/kinds.py`.

    Attributes:
        name: the `cell=` name ("elman", "gru", …).
        params_type: the layer's parameter NamedTuple.
        gates: gate blocks per hidden unit: W is (gates·d, n).
        biases: the names of its bias fields, each (gates·d,).
        paired_state: True when the carry is the pair (h, c) (LSTM).
        recurrent_weights: True when it has S (gates·d, d).
        init: `init(key, input_size, hidden_size, *, dtype) -> params`.
        prepare: `prepare(layer, xs, carry0, *, activation, own_backward,
            whole_step=False) -> CellScan`; `carry0` is filled in (zeros), `xs` floats
            (T, m, n) or tokens (T, m). `whole_step`: a cell whose parameters are the
            layer's own and whose step reads the raw input (its projection inside), for
            the algorithms that approximate every weight's influence (SnAp, UORO).
        check: `check(layer, xs, state0, *, activation, algorithm)`, the checks that
            every run of the layer needs (the Elman layer's, which depend on the
            activation and the algorithm), or None.
    """

    name: str
    params_type: type
    gates: int
    biases: tuple[str, ...]
    paired_state: bool
    recurrent_weights: bool
    init: Callable
    prepare: Callable
    check: Callable | None = None
