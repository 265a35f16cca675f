"""Online learning with any forward-in-time algorithm: RTRL, SnAp, UORO, RFLO.

    online_init :: (params, m, algorithm, key) -> state
    online_step :: (params, state, x_t, y_t) -> (state, ŷ_t)
    online_gradient :: (params, xs, targets, algorithm, key) -> (C, ∂C/∂params)

No step looks at the future. A stack of unidirectional layers of any cells is treated as
ONE recurrent cell whose carry is every layer's carry and whose parameters are every
layer's (the layers' own steps, their input projections inside): RTRL on it is exact for
the whole network (the cross-layer influences are part of its Jacobian), SnAp-n keeps
the n-step pattern of that cell (so SnAp-1 drops the influence of a layer's weights on
the layers above), UORO estimates its influence matrix. RFLO, a rule of Elman layers,
keeps each layer's eligibility traces and gives each layer the error that reaches it at
the same step (through the layers above and the readout, or for the top layer through
a random feedback matrix). The readout's gradient is exact. After the last step the
state holds the algorithm's gradient of `C = (1/m) Σ_t Σ_rows loss(ŷ_t, y_t)` (masked
steps contribute nothing), as `sequence_loss` defines it; for RTRL it equals `jax.grad`.
The initial states are zeros and constants.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .._algorithms.base import GradientAlgorithm
from .._algorithms.rflo import RFLO
from .._algorithms.rtrl import RTRL, propagate_influence
from .._algorithms.snap import SnAp, snap_pattern
from .._algorithms.unit_traces import per_unit, unit_gradient
from .._algorithms.uoro import UORO, random_signs, uoro_update
from .._cells.base import StepProblem
from .._cells.kinds import fill_carry0, kind_of
from .._cells.linearisation import CarryLayout
from .._core.activations import get_activation
from .._core.params import LayerParams, RNNParams
from .._core.validation import check_positive_int, check_same_dtype
from .bidirectional import BidirectionalParams
from .network import check_rnn_params
from .per_step_loss import LOSSES
from .readout import apply_readout

ONLINE = (RTRL, SnAp, UORO, RFLO)


@dataclasses.dataclass(frozen=True)
class OnlineState:
    """What online learning carries from step to step (a pytree; the algorithm is its
    static part, so `jax.jit(online_step)` compiles once per algorithm).

    Attributes:
        carries: each layer's carry after the last step: (m, d), or (h, c) for an LSTM.
        traces: the algorithm's own state (RTRL/SnAp: the influence matrix and, for
            SnAp, its pattern; SnAp-1 of one Elman layer: only each unit's influence of
            its own weights, "own", shaped like the layer with a leading m; UORO: s̃ and
            θ̃; RFLO: each layer's eligibility traces).
        gradient: the accumulated gradient, an `RNNParams` like the parameters.
        cost: the cost of the steps seen so far.
        key: UORO's PRNG key (split at every step), else None.
        algorithm: the `GradientAlgorithm` (RTRL, SnAp, UORO or RFLO).

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
        >>> state = online_init(params, 4, UORO(), key=jax.random.key(0))
        >>> state.traces["s"].shape, state.traces["theta"].shape  # s̃ (m, D), θ̃ (m, |θ|)
        ((4, 3), (4, 18))
    """

    carries: tuple
    traces: Any
    gradient: RNNParams
    cost: jax.Array
    key: jax.Array | None
    algorithm: GradientAlgorithm

    def restart_gradient(self) -> OnlineState:
        """This state with a zero gradient and cost and everything else kept (carries,
        traces, key): what online training continues from after each parameter update,
        so that the next update holds only the steps since this one.

        Example:
            >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
            >>> state = online_init(params, 1, RTRL())
            >>> state, _ = online_step(params, state, jnp.ones((1, 2)), jnp.array([1]))
            >>> fresh = state.restart_gradient()
            >>> float(fresh.cost), bool(jnp.all(fresh.carries[0] == state.carries[0]))
            (0.0, True)
        """
        gradient = jax.tree.map(jnp.zeros_like, self.gradient)
        return dataclasses.replace(self, gradient=gradient, cost=jnp.zeros_like(self.cost))


jax.tree_util.register_dataclass(
    OnlineState,
    data_fields=["carries", "traces", "gradient", "cost", "key"],
    meta_fields=["algorithm"],
)


def layer_step(layer, carry, x, activation: str):
    """One step of one layer of any kind, from its carry: the layer's own forward over a
    sequence of one step (its input projection included)."""
    scan = kind_of(layer).prepare(layer, x[None], carry, activation=activation, own_backward=False)
    return jax.tree.map(
        lambda leaf: leaf[0], scan.cell.forward(scan.params, scan.inputs, scan.carry0)
    )


def stack_step(layers, carries, x, activation: str, injected=None):
    """Every layer one step up the stack: `(new carries, the top layer's h)`; `injected`,
    if given, adds one (m, d) array to each layer's output h before it is read above."""
    new, inputs = [], x
    for l, (layer, carry) in enumerate(zip(layers, carries)):
        carry = layer_step(layer, carry, inputs, activation)
        new.append(carry)
        inputs = carry[0] if kind_of(layer).paired_state else carry
        if injected is not None:
            inputs = inputs + injected[l]
    return tuple(new), inputs


def _check_online(params, algorithm) -> None:
    check_rnn_params(params)
    if not isinstance(algorithm, ONLINE):
        names = ", ".join(cls.__name__ for cls in ONLINE)
        raise TypeError(f"algorithm must be an online algorithm ({names}), got {algorithm}.")
    for l, layer in enumerate(params.layers):
        if isinstance(layer, BidirectionalParams):
            raise ValueError(
                f"params.layers[{l}] is bidirectional: its backward direction reads the "
                "future, which online learning does not have."
            )
        if isinstance(algorithm, RFLO) and not isinstance(layer, LayerParams):
            raise TypeError(
                f"RFLO is defined for Elman layers, but params.layers[{l}] is a "
                f"{type(layer).__name__}; use SnAp, UORO or RTRL for other cells."
            )


def _flat_step(params: RNNParams, carries, activation: str):
    """The stack as one cell on flat arrays: `step(θ (|θ|,), carry (m, D), x)`."""
    flat, unravel = ravel_pytree(tuple(params.layers))
    layout = CarryLayout.of(carries)

    def step(theta, carry, x):
        new, _ = stack_step(unravel(theta), layout.unflatten(carry), x, activation)
        return layout.flatten(new)

    return flat, unravel, layout, step


def online_init(
    params: RNNParams,
    batch_size: int,
    algorithm: GradientAlgorithm,
    *,
    key: jax.Array | None = None,
    activation: str = "tanh",
) -> OnlineState:
    """The state before the first step: zero carries, traces and gradient.

    Args:
        params: an `RNNParams` of unidirectional layers of any cells (Elman only for
            RFLO).
        batch_size: m, the number of streams.
        algorithm: `RTRL()`, `SnAp(n)`, `UORO()` or `RFLO(...)`.
        key: a PRNG key, required by UORO (its random signs), refused by the others.
        activation: the Elman layers' activation (SnAp reads its pattern from the
            cell).

    Returns:
        `OnlineState`.

    Raises:
        TypeError: another algorithm, or RFLO with a layer that is not Elman.
        ValueError: a bidirectional layer, a bad `batch_size`, a missing or extra key.

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2, cell="gru")
        >>> state = online_init(params, 4, SnAp(n=1))
        >>> state.carries[0].shape, float(state.cost)
        ((4, 3), 0.0)
    """
    _check_online(params, algorithm)
    m = check_positive_int("batch_size", batch_size)
    if isinstance(algorithm, UORO) and key is None:
        raise ValueError("UORO draws random signs at every step: pass key=jax.random.key(…).")
    if key is not None and not isinstance(algorithm, UORO):
        raise ValueError(
            f"key is for UORO's random signs, but algorithm={algorithm} is deterministic."
        )
    carries = tuple(fill_carry0(layer, None, m) for layer in params.layers)
    flat, _, layout, step = _flat_step(params, carries, activation)
    dtype = flat.dtype
    if _sparse_snap1(params, algorithm):  # each unit's influence of its own weights
        traces = {"own": jax.tree.map(lambda p: jnp.zeros((m, *p.shape), dtype), params.layers[0])}
    elif isinstance(algorithm, RTRL | SnAp):
        traces = {"influence": jnp.zeros((flat.size, m, layout.width), dtype)}
        if isinstance(algorithm, SnAp):
            n_inputs = params.layers[0].W.shape[1]
            template = StepProblem(
                lambda theta, carry, x: layout.unflatten(step(theta, layout.flatten(carry), x)),
                flat,
                jnp.zeros((1, m, n_inputs), dtype),
                carries,
                None,
                None,
            )
            traces["pattern"] = snap_pattern(template, algorithm.n) != 0
    elif isinstance(algorithm, UORO):
        traces = {
            "s": jnp.zeros((m, layout.width), dtype),
            "theta": jnp.zeros((m, flat.size), dtype),
        }
    else:  # RFLO: each Elman layer's traces, like its parameters with a leading m
        traces = tuple(
            jax.tree.map(lambda p: jnp.zeros((m, *p.shape), dtype), layer)
            for layer in params.layers
        )
    zero_gradient = jax.tree.map(jnp.zeros_like, params)
    return OnlineState(carries, traces, zero_gradient, jnp.zeros((), dtype), key, algorithm)


def online_step(
    params: RNNParams,
    state: OnlineState,
    x: jax.Array,
    target: jax.Array,
    *,
    mask: jax.Array | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
) -> tuple[OnlineState, jax.Array]:
    """Advances every stream by one step and adds this step's cost and gradient.

    Args:
        params: the `RNNParams` of `online_init`.
        state: the state after the previous step.
        x: this step's inputs (m, n), floating.
        target: this step's targets: classes (m,) or floats (m, k).
        mask: optional (m,); 0 marks a stream with no loss at this step.
        loss: as in `sequence_loss`.
        activation: the Elman layers' activation.

    Returns:
        `(new_state, outputs (m, k))`.

    Raises:
        TypeError: `x` in another dtype than the parameters (the mixed-precision mode of
            the whole-sequence losses is not one of online learning).

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
        >>> state = online_init(params, 1, RFLO(tau=2.0))
        >>> state, y = jax.jit(online_step)(params, state, jnp.ones((1, 2)), jnp.array([1]))
        >>> y.shape
        (1, 2)
    """
    algorithm = state.algorithm
    layers = tuple(params.layers)
    # Online learning runs in the parameters' dtype; the mixed-precision mode
    # (docs/performance.md#mixed-precision) is not written for it, so refused, not widened.
    check_same_dtype("x", x, jax.tree.leaves(layers)[0].dtype, "the parameters")
    m = x.shape[0]
    weights = jnp.ones((m,), x.dtype) if mask is None else (jnp.asarray(mask) != 0).astype(x.dtype)

    def step_cost(top, readout):
        outputs = apply_readout(readout, top, algorithm)
        losses = jnp.where(weights != 0, LOSSES[loss](outputs, target), 0)
        return jnp.sum(losses * weights) / m, outputs

    if isinstance(algorithm, RFLO):
        return _rflo_step(params, state, x, step_cost, activation)
    flat, unravel, layout, step = _flat_step(params, state.carries, activation)
    carry = layout.flatten(state.carries)
    new_carry = step(flat, carry, x)

    def cost_of(new_flat, readout):
        new = layout.unflatten(new_flat)
        top = new[-1][0] if kind_of(layers[-1]).paired_state else new[-1]
        return step_cost(top, readout)

    (cost, outputs), (carry_bar, readout_bar) = jax.value_and_grad(
        cost_of, argnums=(0, 1), has_aux=True
    )(new_carry, params.readout)
    traces, key = dict(state.traces), state.key
    if isinstance(algorithm, UORO):
        key, signs_key = jax.random.split(key)
        signs = random_signs(signs_key, carry.shape, carry.dtype)
        _, s_tilde, theta_tilde = uoro_update(
            step, flat, carry, x, traces["s"], traces["theta"], signs
        )
        traces.update(s=s_tilde, theta=theta_tilde)
        flat_bar = jnp.einsum("v,vp->p", jnp.sum(carry_bar * s_tilde, -1), theta_tilde)
        layers_bar = unravel(flat_bar)
    elif "own" in traces:  # SnAp-1 of one Elman layer, sparse
        traces["own"] = _own_influence(layers[0], traces["own"], carry, new_carry, x, activation)
        layers_bar = (unit_gradient(carry_bar, traces["own"]),)
    else:  # RTRL, SnAp: M_t = (pattern ⊙) (J_t M_{t−1} + I_t)
        influence = propagate_influence(step, flat, carry, x, traces["influence"])
        if "pattern" in traces:
            influence = jnp.where(traces["pattern"][:, None, :], influence, 0)
        traces["influence"] = influence
        layers_bar = unravel(jnp.einsum("vb,pvb->p", carry_bar, influence))
    gradient = state.gradient._replace(
        layers=jax.tree.map(jnp.add, tuple(state.gradient.layers), layers_bar),
        readout=jax.tree.map(jnp.add, state.gradient.readout, readout_bar),
    )
    new_state = OnlineState(
        layout.unflatten(new_carry), traces, gradient, state.cost + cost, key, algorithm
    )
    return new_state, outputs


def _sparse_snap1(params: RNNParams, algorithm: GradientAlgorithm) -> bool:
    """SnAp-1 of a network of one Elman layer: its pattern keeps, for unit a, only the
    influence of a's own weights (row a of W, S and b) on h_a, so the state stores
    m·|θ| numbers (like RFLO's traces) instead of RTRL's m·d·|θ|. (In a stack, one
    step already carries a layer's weights into every unit above it: the dense form.)"""
    return (
        isinstance(algorithm, SnAp)
        and algorithm.n == 1
        and len(params.layers) == 1
        and isinstance(params.layers[0], LayerParams)
    )


def _own_influence(layer: LayerParams, own, h_previous, h, x, activation: str) -> LayerParams:
    """`M_W[a, e] ← σ'_a (S_aa M_W[a, e] + x_e)`, likewise S with h_{t−1} and b with 1:
    the sparse closed form of `elman_snap1_gradients`, one step."""
    sigma_prime = get_activation(activation).derivative_from_output(h)
    diagonal = jnp.diagonal(layer.S)
    drive = LayerParams(W=x[:, None, :], S=h_previous[:, None, :], b=jnp.ones_like(h))
    return jax.tree.map(lambda M, r: per_unit(sigma_prime, per_unit(diagonal, M) + r), own, drive)


def _rflo_step(params, state, x, step_cost, activation):
    """RFLO: each Elman layer's traces, and the error that reaches it at this step."""
    algorithm, layers = state.algorithm, tuple(params.layers)
    keep, rate = 1.0 - 1.0 / algorithm.tau, 1.0 / algorithm.tau
    derivative = get_activation(activation).derivative_from_output

    def cost_of(injected, readout):
        # The step's carries are unperturbed by `injected` (added to what is read above).
        new_carries, top = stack_step(layers, state.carries, x, activation, injected)
        cost, outputs = step_cost(top, readout)
        return cost, (outputs, new_carries)

    zeros = tuple(jnp.zeros_like(h) for h in state.carries)  # an Elman carry is h
    (cost, (outputs, new_carries)), (signals, readout_bar) = jax.value_and_grad(
        cost_of, argnums=(0, 1), has_aux=True
    )(zeros, params.readout)
    traces, layers_bar, inputs = [], [], x
    for trace, h_previous, h, signal in zip(state.traces, state.carries, new_carries, signals):
        sp = derivative(h)
        drive = LayerParams(
            W=sp[:, :, None] * inputs[:, None, :], S=sp[:, :, None] * h_previous[:, None, :], b=sp
        )
        trace = jax.tree.map(lambda e, new: keep * e + rate * new, trace, drive)
        traces.append(trace)
        layers_bar.append(unit_gradient(signal, trace))
        inputs = h
    gradient = state.gradient._replace(
        layers=jax.tree.map(jnp.add, tuple(state.gradient.layers), tuple(layers_bar)),
        readout=jax.tree.map(jnp.add, state.gradient.readout, readout_bar),
    )
    new_state = OnlineState(
        new_carries, tuple(traces), gradient, state.cost + cost, state.key, algorithm
    )
    return new_state, outputs


def online_gradient(
    params: RNNParams,
    xs: jax.Array,
    targets: jax.Array,
    algorithm: GradientAlgorithm,
    *,
    key: jax.Array | None = None,
    mask: jax.Array | None = None,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
) -> tuple[jax.Array, RNNParams]:
    """`(C, the algorithm's ∂C/∂params)` of a whole sequence, by `online_step` over
    its steps: for RTRL the exact gradient, for the others their online approximation.
    Composes with `jit`, `vmap` (over keys, parameter sets) and `grad`-free training.

    Args:
        params: as in `online_init`.
        xs: inputs (T, m, n), floating.
        targets: (T, m) classes or (T, m, k) floats.
        algorithm: `RTRL()`, `SnAp(n)`, `UORO()` or `RFLO(...)`.
        key: UORO's PRNG key (required there, refused by the others).
        mask: optional (T, m) weights of the per-step losses.
        loss: as in `sequence_loss`.
        activation: the Elman layers' activation.

    Returns:
        `(cost, gradient)`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 2, (3,), 2)
        >>> xs, ys = jnp.ones((5, 4, 2)), jnp.zeros((5, 4), int)
        >>> cost, grads = online_gradient(params, xs, ys, RTRL())
        >>> bool(jnp.allclose(cost, sequence_loss(params, xs, ys)))
        True
    """
    state = online_init(params, xs.shape[1], algorithm, key=key, activation=activation)
    masks = jnp.ones(xs.shape[:2], xs.dtype) if mask is None else mask

    def step(state, inputs):
        x, target, mask_t = inputs
        state, _ = online_step(
            params, state, x, target, mask=mask_t, loss=loss, activation=activation
        )
        return state, None

    state, _ = lax.scan(step, state, (xs, targets, masks))
    return state.cost, state.gradient
