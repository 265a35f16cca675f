r"""The gradient-flow map ‖G(j, i)‖: how much of the error at step i comes from step j.

`G(j, i) = P_j Ω(j, i)` is the error-flow triangle that the `"omega"` backward sums
(`_omega.py`). Here it is filled by the same diagonal-by-diagonal DP,

.. math::

    G(i, i) = P_i, \qquad G(j, i) = (G(j, i+1)\, S) ⊙ σ'(Z_i),

but instead of being accumulated into Δ, the norm of every entry is recorded. For the
top layer of a network, `P_j` is the error injected by the readout at step j, so
`G(j, i) = ∂L_j/∂Z_i` exactly: the gradient of the loss at step j alone with respect
to the pre-activations at step i. Rows that do not decay mean long-range credit
assignment; a triangle concentrated on its diagonal means vanishing gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._backward.jacobian import ElmanJacobian
from .._model.forward import hoisted_layer
from .._model.loss import per_step_losses
from .._model.network import check_rnn_params
from .._validation import check_rank, check_same_dtype, check_shape
from .omega_norms import check_max_lag
from .trajectory import check_layer_index, layer_trajectory


def error_flow_norms(
    injected: jax.Array, sigma_prime: jax.Array, S: jax.Array, *, max_lag: int | None = None
) -> jax.Array:
    """‖G(j, i)‖_F over the batch, filled diagonal by diagonal (only one diagonal kept).

    Args:
        injected: P, shape (T, m, d): the errors injected at each step (Ψ).
        sigma_prime: σ'(Z), shape (T, m, d).
        S: recurrent weights (d, d).
        max_lag: fill only lags j − i ≤ max_lag (all if None); the rest is NaN.

    Returns:
        (T, T) array, `[j, i]` = ‖G(j, i)‖_F (Frobenius norm of the (m, d) block); NaN
        above the diagonal (j < i) and beyond `max_lag`.

    Raises:
        ValueError: shapes that do not match (T, m, d) and (d, d).
    """
    T, m, d = check_rank("injected", injected, 3, "(T, m, d)")
    check_shape("sigma_prime", sigma_prime, (T, m, d), "(T, m, d) like injected")
    check_shape("S", S, (d, d), "(d, d)")
    check_same_dtype("sigma_prime", sigma_prime, injected.dtype, "injected")
    check_same_dtype("S", S, injected.dtype, "injected")
    last = check_max_lag(max_lag, T)
    jacobian = ElmanJacobian(S, sigma_prime)
    steps = jnp.arange(T)

    def block_norms(blocks):
        return jnp.sqrt(jnp.sum(blocks * blocks, axis=(-2, -1)))

    norms = jnp.full((T, T), jnp.nan, injected.dtype).at[steps, steps].set(block_norms(injected))

    def fill(k, state):
        norms, diagonal = state  # diagonal[i] = G(i+k-1, i)
        shifted = jnp.concatenate([diagonal[1:], jnp.zeros_like(diagonal[:1])])
        # G(i+k, i) = G(i+k, i+1) Ω(i+1, i): the DP's step, one batched product.
        diagonal = jacobian.pull(shifted, jacobian.per_step)
        # Rows i >= T-k fall outside the triangle; mode="drop" discards them.
        norms = norms.at[steps + k, steps].set(block_norms(diagonal), mode="drop")
        return norms, diagonal

    norms, _ = lax.fori_loop(1, last + 1, fill, (norms, injected))
    return norms


def injected_errors(
    params,
    xs: jax.Array,
    targets: jax.Array,
    mask: jax.Array | None = None,
    *,
    layer: int = -1,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
):
    """The errors P^l_t injected into layer l's pre-activations from above (Ψ).

    `P_t = (∂C/∂H^l_t)|_{consumers} ⊙ σ'(Z^l_t)`: the cotangent that the readout (top
    layer) or layer l+1 delivers at step t — what `rnn_layer`'s custom backward receives
    as `hs_bar` — times σ'. Returns `(P (T, m, d), trajectory)`.
    """
    check_rnn_params(params)
    index = check_layer_index(layer, len(params.layers))
    trajectory = layer_trajectory(params, xs, activation=activation, layer=index)
    m = xs.shape[1]

    def cost_from_states(hs):
        # Layers above l and the readout; their own recurrences are part of the
        # "consumers" of H^l, exactly as JAX's chain rule sees them.
        for upper in params.layers[index + 1 :]:
            zeros = jnp.zeros((m, upper.S.shape[0]), upper.W.dtype)
            hs = hoisted_layer(upper, hs, zeros, activation=activation)
        outputs = hs @ params.readout.W.T + params.readout.b
        return per_step_losses(outputs, targets, mask, loss=loss).sum() / m

    hs_bar = jax.grad(cost_from_states)(trajectory.hs)
    return hs_bar * trajectory.sigma_prime, trajectory


def gradient_flow(
    params,
    xs: jax.Array,
    targets: jax.Array,
    mask: jax.Array | None = None,
    *,
    layer: int = -1,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
    max_lag: int | None = None,
) -> jax.Array:
    r"""The gradient-flow map ‖G(j, i)‖ of one layer of a network, shape (T, T).

    `G(j, i) = P_j Ω(j, i)`, filled by the DP of the `"omega"` backward. For the top
    layer (the default), `G(j, i) = ∂L_j/∂Z_i` with `L_j = (1/m) Σ_rows loss(ŷ_j, y_j)`:
    row j shows how the loss at step j reaches back to earlier steps, and
    `Σ_j G(j, i) = Δ_i = ∂C/∂Z_i`. For a lower layer l, `P_j` is the error that enters
    layer l at step j from layer l+1 (it already carries every later loss through the
    layers above), and row j shows how that error travels back inside layer l.

    Args:
        params: `RNNParams`.
        xs: inputs (T, m, n).
        targets: as for `sequence_loss`.
        mask: as for `sequence_loss`.
        loss: as for `sequence_loss`.
        layer: which recurrent layer (default −1, the top one).
        activation: recurrent activation.
        max_lag: fill only lags j − i ≤ max_lag (all T − 1 if None).

    Returns:
        (T, T) array, `[j, i]` = ‖G(j, i)‖_F, the Frobenius norm over the batch and the
        units (the weight gradients sum over the batch, so the batch is one block). NaN
        above the diagonal (j < i) and beyond `max_lag`; a non-finite loss or input
        propagates as NaN/inf into the entries it reaches.

    Raises:
        ValueError, TypeError: bad params, shapes, dtypes, targets or options.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs, ys = jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32)
        >>> gradient_flow(params, xs, ys).shape
        (5, 5)
    """
    injected, trajectory = injected_errors(
        params, xs, targets, mask, layer=layer, loss=loss, activation=activation
    )
    return error_flow_norms(injected, trajectory.sigma_prime, trajectory.params.S, max_lag=max_lag)
