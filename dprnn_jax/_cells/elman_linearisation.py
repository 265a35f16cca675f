"""The Elman cell's linearisation: S·diag(σ'), and every gradient from Δ
(docs/theory.md#gradients-from-delta).

The Elman layer `h_t = σ(Z_t)`, `Z_t = x_t Wᵀ + h_{t−1} Sᵀ + b`, runs its DP in the
pre-activations: Δ_t = ∂C/∂Z_t, the injected errors are `P_t = h̄_t ⊙ σ'(Z_t)` (Ψ,
docs/theory.md#psi-and-omega) and the one-step Jacobian is `Ω(i+1, i) = S diag(σ'(Z_i))`
(`ElmanJacobian`), σ' read from the stored states. Once Δ is known, each gradient is ONE
contraction over (T, m): `∂C/∂W = Σ_t Δ_tᵀ X_t`, `∂C/∂S = Σ_t Δ_tᵀ H_{t−1}`,
`∂C/∂b = Σ_t Σ_rows Δ_t`, `∂C/∂X_t = Δ_t W`, `∂C/∂h_0 = Δ_0 S`. Integer token inputs
make `∂C/∂W` a scatter-add and have no cotangent of their own.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._core import precision
from .._core.activations import get_activation
from .._core.error_flow import contract_over_steps
from .._core.jacobian import ElmanJacobian
from .._core.params import LayerParams, init_layer
from .._core.validation import check_layer_inputs
from .base import Cell, CellScan, LayerKind, Linearisation, StepProblem
from .elman import cell, hoisted_layer, scan_layer
from .tokens import (
    check_token_inputs,
    is_token_input,
    token_hoisted_layer,
    token_scan_layer,
    token_weight_gradient,
)


@dataclasses.dataclass(frozen=True)
class ElmanCell(Cell):
    """The Elman cell of `activation`; inputs (T, m, n) or integer tokens (T, m)."""

    activation: str = "tanh"

    def forward(self, params: LayerParams, xs: jax.Array, h0: jax.Array) -> jax.Array:
        forward = token_hoisted_layer if is_token_input(xs) else hoisted_layer
        return forward(params, xs, h0, activation=self.activation)

    def plain_forward(self, params: LayerParams, xs: jax.Array, h0: jax.Array) -> jax.Array:
        """The textbook `lax.scan`, for `jax.grad` (`Autodiff()`)."""
        forward = token_scan_layer if is_token_input(xs) else scan_layer
        return forward(params, xs, h0, activation=self.activation)

    def linearise(self, params, xs, h0):
        hs = self.forward(params, xs, h0)
        return hs, ElmanLinearisation(params, xs, h0, hs, self.activation)

    def step(self, params: LayerParams, h: jax.Array, x: jax.Array) -> jax.Array:
        return cell(params, h, x, activation=self.activation)


@dataclasses.dataclass
class ElmanLinearisation(Linearisation):
    """The primal inputs and the stored states h_t = σ(Z_t): σ'(Z_t) is read from them.
    A pytree (the activation is static)."""

    params: LayerParams
    xs: jax.Array
    h0: jax.Array
    hs: jax.Array
    activation: str

    def sigma_prime(self) -> jax.Array:
        return get_activation(self.activation).derivative_from_output(self.hs)

    def error_problem(self, hs_bar):
        # `hs_bar` is what this step's consumers (the readout, or the layer above
        # through Δ^{l+1} W^{l+1}) send to h_t; σ'(Z_t) is computed once per step.
        sigma_prime = self.sigma_prime()
        return hs_bar * sigma_prime, ElmanJacobian(self.params.S, sigma_prime)

    def cotangents(self, delta):
        params, xs, h0, hs = self.params, self.xs, self.h0, self.hs
        hs_previous = jnp.concatenate([h0[None], hs[:-1]])
        tokens = is_token_input(xs)
        if tokens:
            grad_W = token_weight_gradient(delta, xs, params.W.shape[1])
            (grad_S,) = contract_over_steps(delta, (hs_previous,))
        else:
            grad_W, grad_S = contract_over_steps(delta, (xs, hs_previous))
        grad_params = LayerParams(W=grad_W, S=grad_S, b=delta.sum(axis=(0, 1)))
        # Token indices are not differentiable: their cotangent is a symbolic zero.
        grad_xs = None if tokens else precision.matmul(delta, params.W)
        grad_h0 = precision.matmul(delta[0], params.S)
        return grad_params, grad_xs, grad_h0

    def step_problem(self) -> StepProblem:
        return StepProblem(
            ElmanCell(self.activation).step, self.params, self.xs, self.h0, self.hs, lambda g: g
        )


jax.tree_util.register_dataclass(
    ElmanLinearisation, data_fields=["params", "xs", "h0", "hs"], meta_fields=["activation"]
)


def check_elman_arguments(params, xs, h0, *, activation: str, algorithm) -> None:
    """The Elman layer's argument checks (float inputs or tokens, the activation, and
    whether `algorithm` takes token inputs), with `rnn_layer`'s messages."""
    if is_token_input(xs):
        if not algorithm.takes_token_inputs:
            raise ValueError(
                f"method={algorithm} does not take integer token inputs: its sensitivity to "
                "W would hold m·d·d·V numbers per step (V the vocabulary size). Use "
                "method='bptt' or 'omega' for token inputs, or embed the tokens first."
            )
        check_token_inputs(params, xs, h0, activation=activation)
    else:
        check_layer_inputs(params, xs, h0, activation=activation)


def _prepare(
    layer: LayerParams, xs, h0, *, activation: str, own_backward: bool, whole_step: bool = False
) -> CellScan:
    # The Elman layer's cell is the whole step already (its projection inside its forward).
    del own_backward, whole_step
    return CellScan(ElmanCell(activation), layer, xs, h0)


KIND = LayerKind(
    name="elman",
    params_type=LayerParams,
    gates=1,
    biases=("b",),
    paired_state=False,
    recurrent_weights=True,
    init=init_layer,
    prepare=_prepare,
    check=check_elman_arguments,
)
