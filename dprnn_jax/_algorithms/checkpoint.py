"""Checkpointing as a wrapper: `Checkpointed(BPTT(), segment="sqrt")`.

A fused loss (`sequence_loss`, `many_to_one_loss`, the training step) differentiated by a
`Checkpointed` algorithm keeps only the states at the boundaries of segments of k steps
and recomputes one segment at a time in the backward, where the wrapped algorithm runs
(docs/algorithms.md#checkpoint): O(√T) memory for k = ⌈√T⌉, for one extra forward.
`BPTT(checkpoint=k)` and `Omega(checkpoint=k)` are the documented spelling of
`Checkpointed(BPTT(), k)` and `Checkpointed(Omega(), k)`: `checkpoint_plan` reads either
form, in this one place. A layer on its own (whose states are its output, so that there
is nothing to save) runs the wrapped algorithm.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from .._cells.base import Linearisation
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import GradientAlgorithm, check_checkpoint, set_option


def segment_length(checkpoint: int | str, T: int) -> int:
    """k: the option's value, or ⌈√T⌉ for "sqrt"; at most T."""
    k = math.isqrt(T - 1) + 1 if checkpoint == "sqrt" else int(checkpoint)
    return max(1, min(k, T))


@dataclasses.dataclass(frozen=True)
class Checkpointed(GradientAlgorithm):
    """`algorithm` run one recomputed segment of `segment` steps at a time inside a
    fused loss: O(√T) memory for `segment="sqrt"` (k = ⌈√T⌉). Exact when `algorithm` is.

    Args:
        algorithm: the algorithm run inside each segment (without a `checkpoint`
            option of its own), e.g. `BPTT()` or `Omega()`.
        segment: k ≥ 1 or "sqrt".

    Raises:
        TypeError: `algorithm` is not a `GradientAlgorithm`.
        ValueError: a bad `segment`, or an `algorithm` that checkpoints already.

    Example:
        >>> from dprnn_jax.backward import checkpoint_plan
        >>> checkpoint_plan(BPTT(checkpoint="sqrt")) == Checkpointed(BPTT(), "sqrt")
        True
    """

    algorithm: GradientAlgorithm
    segment: int | str = "sqrt"

    name = "checkpointed"

    def __post_init__(self):
        if not isinstance(self.algorithm, GradientAlgorithm):
            raise TypeError(
                "algorithm must be a GradientAlgorithm such as dprnn_jax.BPTT(), got "
                f"{type(self.algorithm).__name__} {self.algorithm!r}."
            )
        if (
            isinstance(self.algorithm, Checkpointed)
            or getattr(self.algorithm, "checkpoint", None) is not None
        ):
            raise ValueError(
                f"algorithm={self.algorithm} checkpoints already; wrap the algorithm without "
                "its checkpoint option, e.g. Checkpointed(BPTT(), segment=16)."
            )
        try:
            segment = check_checkpoint(self.segment)
        except ValueError as error:
            raise ValueError(str(error).replace("checkpoint must", "segment must")) from None
        set_option(self, "segment", "sqrt" if segment is None else segment)

    @property
    def uses_custom_vjp(self) -> bool:  # type: ignore[override]
        return self.algorithm.uses_custom_vjp

    @property
    def takes_token_inputs(self) -> bool:  # type: ignore[override]
        return self.algorithm.takes_token_inputs

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        return self.algorithm.error_flow(injected, jacobian)

    def cotangents(self, linearisation: Linearisation, carries_bar):
        return self.algorithm.cotangents(linearisation, carries_bar)

    def closed_form_products(self, T: int) -> int | None:
        return self.algorithm.closed_form_products(T)

    def count_products(self, T: int) -> ErrorFlow:
        return self.algorithm.count_products(T)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "algorithm": self.algorithm.to_dict(), "segment": self.segment}

    def __str__(self) -> str:
        return f"Checkpointed({self.algorithm}, segment={self.segment!r})"


def checkpoint_plan(algorithm: GradientAlgorithm) -> Checkpointed | None:
    """The `Checkpointed` form of `algorithm` (`BPTT(checkpoint=k)` is
    `Checkpointed(BPTT(), k)`), or None when it does not checkpoint.

    Example:
        >>> print(checkpoint_plan(Omega(checkpoint=8)), checkpoint_plan(Omega()))
        Checkpointed(Omega(), segment=8) None
    """
    if isinstance(algorithm, Checkpointed):
        return algorithm
    checkpoint = getattr(algorithm, "checkpoint", None)
    if checkpoint is None:
        return None
    return Checkpointed(dataclasses.replace(algorithm, checkpoint=None), checkpoint)
