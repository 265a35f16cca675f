r"""Random-feedback local online learning (RFLO; Murray, "Local online learning in
recurrent networks with random feedback", eLife 2019), for Elman layers.

RFLO drops every path through the recurrence from the influence of a weight on the state
and keeps, per unit, a leaky *eligibility trace* of the presynaptic activity times σ′:

.. math::

    e_t[a, q] = (1 - 1/τ)\, e_{t-1}[a, q] + (1/τ)\, σ'(Z_t)[a]\, r_t[q],
    \qquad r_t = (x_t, h_{t-1}, 1),

and updates a weight by the learning signal that reaches its unit at step t,
`θ̄[a, q] = Σ_t L_t[a] e_t[a, q]`: with `feedback="readout"`, `L_t` is the error that the
readout (or the layer above) sends to h_t, what BPTT injects (`h̄_t`); with
`feedback="random"`, the output error reaches the top layer through a fixed random
matrix B instead of the readout's weights, `L_t = ε_t B` (the readout's own gradient is
unchanged; `_model/readout.py`). B (k, d) is drawn once from `jax.random.key(seed)`,
normal entries over √d, the readout's own initial scale. The work is
O(m·d·(n + d)) per step, like the forward pass, and nothing travels back in time. With
τ = 1 the trace is `σ'(Z_t) r_t` and RFLO is exactly `BPTT(truncation=0)`: the
gradient of the errors injected at each step, without their past.

The cotangents of the layer's inputs and initial state are those of the same lag-0
errors (`Δ_t = P_t`), the only ones a local rule has: `x̄_t = P_t W`, `h̄_0 = P_0 S`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._cells.base import Linearisation
from .._cells.elman_linearisation import ElmanLinearisation
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .base import GradientAlgorithm, set_option
from .unit_traces import per_unit, unit_trace_gradients

FEEDBACKS = ("readout", "random")


def rflo_layer_gradients(linearisation: ElmanLinearisation, hs_bar: jax.Array, tau: float):
    """`LayerParams` cotangent of RFLO: `Σ_t L_t[a] e_t[a, q]`, with the leaky traces
    `e_t = (1 − 1/τ) e_{t−1} + (1/τ) σ'(Z_t) r_t` carried forward (`unit_traces.py`)."""
    keep, rate = 1.0 - 1.0 / tau, 1.0 / tau

    def update(trace, drive, sigma_prime):
        return keep * trace + rate * per_unit(sigma_prime, drive)

    return unit_trace_gradients(linearisation, hs_bar, update)


@functools.singledispatch
def rflo_cotangents(linearisation: Linearisation, carries_bar, tau: float):
    """RFLO's cotangents of a layer's (params, xs, carry0); Elman layers only."""
    raise TypeError(
        "RFLO is defined for Elman layers (its eligibility traces are a unit's "
        "presynaptic activity times σ′), got a layer whose cell is "
        "not an Elman cell (a GRU, LSTM, minGRU or user step); use SnAp, RTRL or "
        "a truncated BPTT for gated cells."
    )


@rflo_cotangents.register
def _(linearisation: ElmanLinearisation, hs_bar, tau: float):
    params_bar = rflo_layer_gradients(linearisation, hs_bar, tau)
    # The lag-0 errors P_t = h̄_t ⊙ σ'(Z_t) for the inputs and the initial state.
    injected, _ = linearisation.error_problem(hs_bar)
    _, xs_bar, h0_bar = linearisation.cotangents(injected)
    return params_bar, xs_bar, h0_bar


@dataclasses.dataclass(frozen=True)
class RFLO(GradientAlgorithm):
    """Random-feedback local online learning (Murray 2019) for Elman layers: leaky
    eligibility traces of the presynaptic activity times σ′, times the learning signal
    that reaches each unit. O(m·d·(n + d)) per step; an approximation (exact only where
    no error travels back in time). `RFLO(tau=1)` is `BPTT(truncation=0)`.

    Args:
        tau: the traces' time constant τ ≥ 1 (a Python float); 1 keeps only the present.
        feedback: "readout": the learning signal is the error the readout (or the layer
            above) sends to h_t; "random": the output error reaches the top layer
            through a fixed random matrix instead of the readout's weights.
        seed: the random feedback matrix's seed (with `feedback="random"`).

    Raises:
        ValueError: τ < 1 or not finite, or another `feedback`.
        TypeError (when differentiated): a layer that is not an Elman layer.

    Example:
        >>> RFLO(tau=4.0).options(), RFLO().name
        ({'tau': 4.0}, 'rflo')
    """

    tau: float = 1.0
    feedback: str = "readout"
    seed: int = 0

    name = "rflo"
    takes_token_inputs = False

    def __post_init__(self):
        if (
            not isinstance(self.tau, float | int | np.floating | np.integer)
            or isinstance(self.tau, bool)
            or not np.isfinite(self.tau)
            or self.tau < 1
        ):
            raise ValueError(f"tau must be a finite Python float ≥ 1, got {self.tau!r}.")
        set_option(self, "tau", float(self.tau))
        if self.feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {list(FEEDBACKS)}, got {self.feedback!r}.")

    def feedback_matrix(self, k: int, d: int, dtype) -> jax.Array | None:
        if self.feedback != "random":
            return None
        return jax.random.normal(jax.random.key(self.seed), (k, d), dtype) / np.sqrt(d)

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        # What a local rule propagates: the lag-0 errors, no product.
        del jacobian
        none = jnp.zeros((), jnp.int32)
        return ErrorFlow(injected, none, none)

    def cotangents(self, linearisation: Linearisation, carries_bar):
        return rflo_cotangents(linearisation, carries_bar, self.tau)

    def closed_form_products(self, T: int) -> int:
        return 0
