"""Gradient algorithms as values: the protocol every backward algorithm implements.

An algorithm is a frozen dataclass holding only its own options (compared by value,
hashable, so it is the static configuration of the layer's `jax.custom_vjp` and keys the
compiled program). It computes the total errors Δ from the injected errors P and the
layer's one-step Jacobians (`error_flow`), and says how many products that costs. The
one custom VJP of every recurrent scan (`_model/recurrent_scan.py`) calls `cotangents`,
which turns Δ into every gradient through the cell's linearisation; an algorithm that
computes the gradients another way (RTRL) overrides `cotangents`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .._cells.base import Linearisation
from .._core.error_flow import ErrorFlow
from .._core.jacobian import ElmanJacobian, StepJacobian


@dataclasses.dataclass(frozen=True)
class GradientAlgorithm(abc.ABC):
    """Base class of the gradient algorithms (`Omega`, `BPTT`, `Naive`, `ParallelScan`,
    `RTRL`, `Autodiff`).

    Subclasses set `name` (the string that selects them, e.g. `method="omega"`) and
    implement `error_flow`; their dataclass fields are their options, validated in
    `__post_init__`.

    Example:
        >>> isinstance(Omega(), GradientAlgorithm), Omega.name, BPTT().closed_form_products(8)
        (True, 'omega', 7)
    """

    name: ClassVar[str]
    # False for `Autodiff`: the layer is the plain scan and `jax.grad` differentiates it.
    uses_custom_vjp: ClassVar[bool] = True
    # Whether the layer's integer token inputs are supported (RTRL: no).
    takes_token_inputs: ClassVar[bool] = True
    # Whether it must see the layer's whole step, its input projection inside (SnAp and
    # UORO approximate the influence of every weight, the input weights' too).
    sees_the_whole_step: ClassVar[bool] = False

    @abc.abstractmethod
    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        """Δ_i = P_i + Σ_{j>i} P_j Ω(j, i) (up to the options), with product counters.

        Args:
            injected: P, shape (T, m, d): the errors injected at each step (Ψ).
            jacobian: the one-step Jacobians Ω(i+1, i) of the layer.

        Returns:
            `ErrorFlow` with Δ of shape (T, m, d).
        """

    def closed_form_products(self, T: int) -> int | None:
        """The number of (m, d) × (d, d) products `error_flow` needs at length T, or None
        when it depends on the data (`Omega(tol=…)`)."""
        return None

    def cotangents(self, linearisation: Linearisation, carries_bar):
        """A recurrent scan's cotangents `(params, xs, carry0)` from those of its carries.

        The one hook of the custom VJP (`_model/recurrent_scan.py`), for every cell. The
        default computes Δ with `error_flow` on the cell's Jacobian operator and hands
        it to the linearisation's contractions (docs/theory.md#gradients-from-delta); an
        algorithm that computes the gradients another way (RTRL) overrides it.
        """
        injected, jacobian = linearisation.error_problem(carries_bar)
        delta = self.error_flow(injected, jacobian).delta
        return linearisation.cotangents(delta)

    def feedback_matrix(self, k: int, d: int, dtype) -> jax.Array | None:
        """A fixed (k, d) matrix through which the output error reaches the top layer in
        place of the readout's weights (`_model/readout.py`), or None (the default: the
        chain rule's own `W_out`)."""
        return None

    def count_products(self, T: int) -> ErrorFlow:
        """Runs the backward on a (T, 1, 1) problem of ones; its counters are the count."""
        ones = jnp.ones((T, 1, 1), jnp.float32)
        return self.error_flow(ones, ElmanJacobian(jnp.ones((1, 1), jnp.float32), ones))

    def options(self) -> dict[str, object]:
        """The options that differ from their defaults, e.g. `{"truncation": 32}`."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != field.default
        }

    def to_dict(self) -> dict[str, object]:
        """`{"name": …, **every option}`: what `metrics.json` and checkpoints record;
        `dprnn_jax.backward.resolve_method(**d)` rebuilds the algorithm."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {"name": self.name, **fields}

    def __str__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options().items())
        return f"{type(self).__name__}({options})"


# ---------------------------------------------------------------------------------------
# Option checks, shared by the algorithms that take the option. They run at
# construction, so a bad option fails where the user wrote it.


def check_truncation(truncation: object) -> int | None:
    """`truncation`: None or a non-negative Python int K, the largest lag kept."""
    if truncation is None:
        return None
    if (
        not isinstance(truncation, int | np.integer)
        or isinstance(truncation, bool)
        or truncation < 0
    ):
        raise ValueError(
            f"truncation must be a non-negative Python int K (the largest lag kept) or "
            f"None, got {truncation!r}."
        )
    return int(truncation)


def check_tol(tol: object) -> float | None:
    """`tol`: None or a finite Python float ε ≥ 0 (static, not a traced array)."""
    if tol is None:
        return None
    if not isinstance(tol, float | int | np.floating | np.integer) or isinstance(tol, bool):
        raise ValueError(
            f"tol must be a non-negative Python float (static, not a traced array), got "
            f"{type(tol).__name__} {tol!r}."
        )
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite float ≥ 0, got {tol!r}.")
    return float(tol)


def check_block(block: object) -> int | None:
    """`block`: None or a positive Python int (a static size, never a traced value)."""
    if block is None:
        return None
    if isinstance(block, jax.Array):
        raise TypeError(
            "block must be a static Python int (it sets the compiled loop shapes), got a "
            f"JAX array {block!r}; pass e.g. block=16."
        )
    if not isinstance(block, int | np.integer) or isinstance(block, bool) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}.")
    return int(block)


def check_checkpoint(checkpoint: object) -> int | str | None:
    """`checkpoint`: None, a positive Python int k (the segment length) or "sqrt"."""
    if checkpoint is None or checkpoint == "sqrt":
        return checkpoint
    if (
        not isinstance(checkpoint, int | np.integer)
        or isinstance(checkpoint, bool)
        or checkpoint < 1
    ):
        raise ValueError(
            f'checkpoint must be a positive int k (segment length) or "sqrt" (k = ⌈√T⌉), '
            f"got {checkpoint!r}."
        )
    return int(checkpoint)


def check_exclusive(algorithm: GradientAlgorithm, option: str, others: tuple[str, ...]) -> None:
    """`option` cannot be combined with any of `others` (all None but one)."""
    if getattr(algorithm, option) is None:
        return
    given = {name: getattr(algorithm, name) for name in others if getattr(algorithm, name)}
    given = {name: value for name, value in given.items() if value is not None}
    if given:
        settings = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ValueError(
            f"{option} cannot be combined with {' or '.join(others)}, got "
            f"{option}={getattr(algorithm, option)!r}, {settings}; pick one of them."
        )


def set_option(algorithm: GradientAlgorithm, name: str, value: object) -> None:
    """Stores a validated option on a frozen dataclass (inside `__post_init__`)."""
    object.__setattr__(algorithm, name, value)
