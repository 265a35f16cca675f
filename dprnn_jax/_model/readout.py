"""The readout `ŷ_t = h_t W_outᵀ + b_out`, and its backward with a feedback matrix.

An algorithm may send the output error back to the top layer through a fixed matrix B
instead of `W_out` (`GradientAlgorithm.feedback_matrix`: RFLO with random feedback,
Murray 2019, after Lillicrap et al.'s feedback alignment). Then `h̄_t = ε_t B` while
the readout's own gradient stays `Σ_t ε_tᵀ h_t`: the custom VJP below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._core.contractions import rows_product
from .._core.params import ReadoutParams


def apply_readout(readout: ReadoutParams, hs: jax.Array, algorithm: GradientAlgorithm):
    """`hs Wᵀ + b` over leading axes (…, d) -> (…, k), differentiated with the
    algorithm's feedback matrix where it has one. In the readout's dtype: the bfloat16
    states of a mixed-precision stack are cast to its float32 (`_core/precision.py`),
    so the outputs and the loss are float32."""
    if hs.dtype != readout.W.dtype:
        hs = hs.astype(readout.W.dtype)
    k, d = readout.W.shape
    feedback = algorithm.feedback_matrix(k, d, readout.W.dtype)
    if feedback is None:
        return hs @ readout.W.T + readout.b
    return _fed_back(readout.W, readout.b, hs, feedback)


@jax.custom_vjp
def _fed_back(W, b, hs, feedback):
    return hs @ W.T + b


def _fed_back_fwd(W, b, hs, feedback):
    return hs @ W.T + b, (hs, feedback)


def _fed_back_bwd(residuals, outputs_bar):
    hs, feedback = residuals
    W_bar = rows_product(outputs_bar, hs)
    b_bar = outputs_bar.reshape(-1, outputs_bar.shape[-1]).sum(axis=0)
    return W_bar, b_bar, outputs_bar @ feedback, jnp.zeros_like(feedback)


_fed_back.defvjp(_fed_back_fwd, _fed_back_bwd)
