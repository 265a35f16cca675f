"""Every gradient of an Elman layer from its total errors Δ (docs/theory.md#gradients-from-delta).

Once `Δ_t = ∂C/∂Z_t` is known, each gradient is ONE contraction over (T, m):
`∂C/∂W = Σ_t Δ_tᵀ X_t`, `∂C/∂S = Σ_t Δ_tᵀ H_{t−1}`, `∂C/∂b = Σ_t Σ_rows Δ_t`,
`∂C/∂X_t = Δ_t W`, `∂C/∂h_0 = Δ_0 S`. Integer token inputs make `∂C/∂W` a scatter-add
and have no cotangent of their own.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._model.activations import get_activation
from .._model.params import LayerParams
from .._model.tokens import is_token_input, token_weight_gradient
from .error_flow import contract_over_steps
from .jacobian import ElmanJacobian


class Residuals(NamedTuple):
    """What the backward needs: the primal inputs and the stored states h_t = σ(Z_t)."""

    params: LayerParams
    xs: jax.Array
    h0: jax.Array
    hs: jax.Array


def injected_and_jacobian(
    residuals: Residuals, hs_bar: jax.Array, activation: str
) -> tuple[jax.Array, ElmanJacobian]:
    """P_t = h̄_t ⊙ σ'(Z_t) (Ψ, docs/theory.md#psi-and-omega) and Ω(i+1, i) = S diag(σ'(Z_i)).

    σ'(Z_t) is computed once per step from the stored activations. `hs_bar` is the error
    this step's consumers (the readout, or the layer above through Δ^{l+1} W^{l+1}) send
    to h_t, as JAX's chain rule delivers it.
    """
    sigma_prime = get_activation(activation).derivative_from_output(residuals.hs)
    return hs_bar * sigma_prime, ElmanJacobian(residuals.params.S, sigma_prime)


def cotangents_from_delta(residuals: Residuals, delta: jax.Array):
    """`(∂C/∂params, ∂C/∂xs, ∂C/∂h0)` from Δ, one contraction each."""
    params, xs, h0, hs = residuals
    hs_previous = jnp.concatenate([h0[None], hs[:-1]])
    tokens = is_token_input(xs)
    if tokens:
        grad_W = token_weight_gradient(delta, xs, params.W.shape[1])
        (grad_S,) = contract_over_steps(delta, (hs_previous,))
    else:
        grad_W, grad_S = contract_over_steps(delta, (xs, hs_previous))
    grad_params = LayerParams(W=grad_W, S=grad_S, b=delta.sum(axis=(0, 1)))
    # Token indices are not differentiable: their cotangent is a symbolic zero.
    grad_xs = None if tokens else delta @ params.W
    grad_h0 = delta[0] @ params.S
    return grad_params, grad_xs, grad_h0
