r"""The gradient-flow map ‖G(j, i)‖: how much of the error at step i comes from step j.

`G(j, i) = P_j Ω(j, i)` is the error-flow triangle that the `Omega()` backward sums
(`_algorithms/omega.py`). Here it is filled by the same diagonal-by-diagonal DP,

.. math::

    G(i, i) = P_i, \qquad G(j, i) = (G(j, i+1)\, S) ⊙ σ'(Z_i),

but instead of being accumulated into Δ, the norm of every entry is recorded. For the
top layer of a network, `P_j` is the error injected by the readout at step j, so
`G(j, i) = ∂L_j/∂Z_i` exactly: the gradient of the loss at step j alone with respect
to the pre-activations at step i. Rows that do not decay mean long-range credit
assignment; a triangle concentrated on its diagonal means vanishing gradients.

For a GRU or LSTM layer the same DP follows the cell's carry instead of Z (`h`, or the
concatenated `(h, c)` of an LSTM): `P_i` is the cotangent that the consumers deliver to
the carry at step i (`[∂C/∂h_i, 0]` for an LSTM, whose consumers read h only), the
transition is the cell's one-step Jacobian `J_{i+1} = ∂carry_{i+1}/∂carry_i` applied as a
vector–Jacobian product, and `G(j, i) = ∂L_j/∂carry_i` for the top layer.

The DP runs in the order in which the inspected direction runs (`trajectory.py`); the
norms are taken per sequence, brought to the network's time steps (where the backward
direction of a bidirectional layer fills the upper triangle) and only then summed over
the batch, so that padded steps can be left out sequence by sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .._algorithms.registry import resolve_method
from .._core.jacobian import ElmanJacobian, StepJacobian
from .._core.validation import check_rank, check_same_dtype, check_shape
from .._model.bidirectional import BidirectionalParams, reverse_padded
from .._model.layer_kinds import run_recurrent_layer
from .._model.loss import per_step_losses
from .._model.network import apply_layer, check_rnn_params
from .omega_norms import check_max_lag
from .trajectory import (
    Trajectory,
    check_layer_index,
    compiled,
    layer_trajectory,
    network_order,
    state_cotangent,
    valid_steps,
)


def error_flow_squared_norms(injected: jax.Array, jacobian: StepJacobian, last: int) -> jax.Array:
    """`‖G_v(j, i)‖²` per sample v, shape (T, T, m), filled diagonal by diagonal, for the
    one-step Jacobians of any cell (`ElmanJacobian`, `CellJacobian`).

    Lags 1 … `last` are filled; j < i and longer lags are NaN.
    """
    T = injected.shape[0]
    steps = jnp.arange(T)

    def squared_norms(blocks):  # (…, m, d) -> (…, m)
        return jnp.sum(blocks * blocks, axis=-1)

    norms = jnp.full((T, T) + injected.shape[1:-1], jnp.nan, injected.dtype)
    norms = norms.at[steps, steps].set(squared_norms(injected))

    def fill(k, state):
        norms, diagonal = state  # diagonal[i] = G(i+k-1, i)
        shifted = jnp.concatenate([diagonal[1:], jnp.zeros_like(diagonal[:1])])
        # G(i+k, i) = G(i+k, i+1) Ω(i+1, i): the DP's step, one batched product.
        diagonal = jacobian.pull(shifted, jacobian.per_step)
        # Rows i >= T-k fall outside the triangle; mode="drop" discards them.
        norms = norms.at[steps + k, steps].set(squared_norms(diagonal), mode="drop")
        return norms, diagonal

    norms, _ = lax.fori_loop(1, last + 1, fill, (norms, injected))
    return norms


@compiled("max_lag")
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

    Example:
        >>> T, m, d = 4, 1, 2
        >>> flow = error_flow_norms(jnp.ones((T, m, d)), jnp.ones((T, m, d)), 0.5 * jnp.eye(d))
        >>> [round(float(flow[j, 0]), 4) for j in range(T)]  # ‖P_j‖ · 0.5^j
        [1.4142, 0.7071, 0.3536, 0.1768]
    """
    T, m, d = check_rank("injected", injected, 3, "(T, m, d)")
    check_shape("sigma_prime", sigma_prime, (T, m, d), "(T, m, d) like injected")
    check_shape("S", S, (d, d), "(d, d)")
    check_same_dtype("sigma_prime", sigma_prime, injected.dtype, "injected")
    check_same_dtype("S", S, injected.dtype, "injected")
    last = check_max_lag(max_lag, T)
    squared = error_flow_squared_norms(injected, ElmanJacobian(S, sigma_prime), last)
    return jnp.sqrt(squared.sum(axis=-1))


def injected_errors(
    params,
    xs: jax.Array,
    targets: jax.Array,
    *,
    mask: jax.Array | None = None,
    lengths: jax.Array | None = None,
    layer: int = -1,
    direction: str | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
) -> tuple[jax.Array, Trajectory]:
    """The errors P^l_t injected into one direction of layer l's followed state (Ψ).

    `P_t = (∂C/∂H^l_t)|_{consumers} ⊙ σ'(Z^l_t)`: the cotangent that the readout (top
    layer) or layer l+1 delivers at step t — what `rnn_layer`'s custom backward receives
    as `hs_bar` — times σ', in the direction's run order. For a gated layer, that
    cotangent as the carry's (`state_cotangent`: `[h̄, 0]` for an LSTM). Returns
    `(P (T, m, D), trajectory)`.
    """
    check_rnn_params(params)
    index = check_layer_index(layer, len(params.layers))
    trajectory = layer_trajectory(
        params, xs, activation=activation, layer=index, direction=direction, lengths=lengths
    )
    lengths, inspected = trajectory.lengths, trajectory.layer
    m = trajectory.hs.shape[1]
    plain = resolve_method("autodiff")
    supervised = mask if lengths is None else valid_steps(trajectory)
    if isinstance(inspected, BidirectionalParams):
        # The other direction is a constant of the cost: only this one is differentiated.
        if trajectory.backward:
            other, other_inputs = inspected.forward, trajectory.inputs
        else:
            other, other_inputs = inspected.backward, reverse_padded(trajectory.inputs, lengths)
        other_hs, _ = run_recurrent_layer(
            other, other_inputs, None, lengths=None, activation=activation, method=plain
        )

    def cost_from_states(hs):
        # The rest of the network as `rnn_forward` runs it: the layer's output, the layers
        # above and the readout. Their recurrences are part of the "consumers" of H^l,
        # exactly as JAX's chain rule sees them.
        if isinstance(inspected, BidirectionalParams):
            forward, backward = (other_hs, hs) if trajectory.backward else (hs, other_hs)
            hs = jnp.concatenate([forward, reverse_padded(backward, lengths)], axis=-1)
        for upper in params.layers[index + 1 :]:
            hs, _ = apply_layer(
                upper, hs, None, lengths=lengths, activation=activation, method=plain
            )
        outputs = hs @ params.readout.W.T + params.readout.b
        return per_step_losses(outputs, targets, mask=supervised, loss=loss).sum() / m

    hs_bar = jax.grad(cost_from_states)(trajectory.hs)
    return state_cotangent(trajectory, hs_bar), trajectory


@compiled("layer", "direction", "loss", "activation", "max_lag")
def gradient_flow(
    params,
    xs: jax.Array,
    targets: jax.Array,
    *,
    mask: jax.Array | None = None,
    lengths: jax.Array | None = None,
    layer: int = -1,
    direction: str | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
    max_lag: int | None = None,
) -> jax.Array:
    r"""The gradient-flow map ‖G(j, i)‖ of one layer of a network, shape (T, T).

    `G(j, i) = P_j Ω(j, i)`, filled by the DP of the `Omega()` backward. For the top
    layer (the default), `G(j, i) = ∂L_j/∂Z_i` with `L_j = (1/m) Σ_rows loss(ŷ_j, y_j)`
    (for a GRU layer `∂L_j/∂h_i`, for an LSTM layer `∂L_j/∂(h_i, c_i)`, the carry's
    cotangent, 2d wide: see the module docstring):
    row j shows how the loss at step j reaches back to earlier steps, and
    `Σ_j G(j, i) = Δ_i = ∂C/∂Z_i`. For a lower layer l, `P_j` is the error that enters
    layer l at step j from layer l+1 (it already carries every later loss through the
    layers above), and row j shows how that error travels back inside layer l.

    Args:
        params: `RNNParams`, with any mix of unidirectional and bidirectional layers of
            any cell (Elman, GRU, LSTM).
        xs: inputs (T, m, n), or integer tokens (T, m).
        targets: as for `sequence_loss`.
        mask: as for `sequence_loss` (keyword-only): (T, m), 0 at unsupervised steps.
        lengths: as for `sequence_loss` (keyword-only): valid steps per sequence (m,)
            of a right-padded batch. Padded steps are masked, their inputs zeroed and
            bidirectional layers reversed within each length, as in `rnn_forward`.
        layer: which recurrent layer (default −1, the top one).
        direction: for a bidirectional layer, "forward" or "backward" (required). The
            backward direction's `G(j, i) = ∂L_j/∂Z←_i` is non-zero for j ≤ i: the loss
            at step j reaches the later steps that the backward direction ran first.
        loss: as for `sequence_loss`.
        activation: recurrent activation (of Elman layers).
        max_lag: fill only lags |j − i| ≤ max_lag (all T − 1 if None).

    Returns:
        (T, T) array, `[j, i]` = ‖G(j, i)‖_F, the Frobenius norm over the batch and the
        units (the weight gradients sum over the batch, so the batch is one block); with
        `lengths`, over the sequences for which both j and i are valid steps. NaN where
        Z_i does not reach step j (j < i; j > i for the backward direction), beyond
        `max_lag` and where j or i is a padded step of every sequence; a non-finite loss
        or input propagates as NaN/inf into the entries it reaches.

    Raises:
        ValueError, TypeError: bad params, shapes, dtypes, targets or options; `mask`
            and `lengths` together.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs, ys = jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32)
        >>> flow = gradient_flow(params, xs, ys, lengths=jnp.array([3, 2]))
        >>> flow.shape, bool(jnp.isfinite(flow[2, 0])), bool(jnp.isnan(flow[4, 0]))  # 4 ≥ 3
        ((5, 5), True, True)
    """
    if mask is not None and lengths is not None:
        raise ValueError(
            "gradient_flow takes mask or lengths, not both: lengths already defines the "
            "mask (steps t < lengths[v] are valid)."
        )
    injected, trajectory = injected_errors(
        params,
        xs,
        targets,
        mask=mask,
        lengths=lengths,
        layer=layer,
        direction=direction,
        loss=loss,
        activation=activation,
    )
    last = check_max_lag(max_lag, injected.shape[0])
    squared = network_order(
        error_flow_squared_norms(injected, trajectory.jacobian, last), trajectory
    )
    if trajectory.lengths is None:
        return jnp.sqrt(squared.sum(axis=-1))
    # Padded entries are NaN per sequence; the batch norm runs over the valid ones.
    valid = valid_steps(trajectory)
    both = valid[:, None, :] & valid[None, :, :]
    total = jnp.where(both, squared, 0).sum(axis=-1)
    return jnp.where(both.any(axis=-1), jnp.sqrt(total), jnp.nan)
