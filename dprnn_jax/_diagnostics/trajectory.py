"""The forward trajectory of one direction of one recurrent layer, as every Ω diagnostic
reads it.

The diagnostics (`omega_matrix`, `omega_norms`, `gradient_flow`, `lyapunov_exponent`,
`lyapunov_qr`, `decay_bound`) look at one layer: a `LayerParams` or a
`BidirectionalParams` with its own inputs, or layer `l` of an `RNNParams` stack, whose
inputs are computed by the network's own forward (`rnn_forward`'s layer step): padded
inputs zeroed, bidirectional layers below reversed within each length. A bidirectional
layer is inspected one direction at a time (`direction="forward"` or `"backward"`).

Each direction is recorded in the order in which it runs: step s of the backward
direction reads the input at t = L_v − 1 − s (within each sequence's own length L_v),
so in run order every direction is an ordinary forward recurrence with its padding at
the end, and the Ω dynamic programme applies unchanged. `network_order` maps run-order
results back to the network's time steps and blanks (NaN) the entries at padded steps.

Which state. For an Elman layer the diagnostics follow the pre-activations Z, whose
one-step Jacobian is Ω(s+1, s) = S·diag(σ'(Z_s)) (`ElmanJacobian`). For a GRU or LSTM
layer they follow the cell's carry, `h` (GRU) or the concatenated `(h, c)` (LSTM, 2d
wide, h first), whose one-step Jacobian is J_{s+1} = ∂carry_{s+1}/∂carry_s, a
vector–Jacobian product of the cell taken from the linearisation that the forward loop
stores once per step (`CellJacobian`, docs/theory.md#any-cell). Either way the
diagnostics see one `StepJacobian` of width D (d, or 2d for an LSTM).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._algorithms.registry import resolve_method
from .._cells.elman_linearisation import check_elman_arguments
from .._cells.gru import GRUParams
from .._cells.kinds import check_inputs, fill_carry0
from .._cells.lstm import LSTMParams
from .._cells.tokens import is_token_input
from .._core.activations import ACTIVATIONS
from .._core.jacobian import ElmanJacobian, StepJacobian
from .._core.padding import check_lengths, mask_from_lengths, zero_padding
from .._core.params import LayerParams
from .._core.precision import is_mixed
from .._core.validation import check_choice, check_rank, check_sequence
from .._model.bidirectional import BidirectionalParams, reverse_padded
from .._model.layer_kinds import check_layer_state, check_recurrent_layer, kind_of
from .._model.network import apply_layer, check_rnn_params, first_weight

DIRECTIONS = ("forward", "backward")


class Trajectory(NamedTuple):
    """One direction of one layer: what its Ω depends on, in the order in which it runs.

    Attributes:
        layer: the inspected layer (`LayerParams`, `GRUParams`, `LSTMParams` or
            `BidirectionalParams`).
        inputs: the layer's inputs in network time, padded steps zeroed (T, m, n), or
            integer tokens (T, m).
        params: the inspected direction's `LayerParams`, `GRUParams` or `LSTMParams`.
        hs: that direction's outputs h in run order (T, m, d).
        sigma_prime: σ'(Z) in run order (T, m, d) for an Elman layer; None for a gated one.
        lengths: valid steps per sequence (m,), or None for all T.
        backward: whether the direction runs backward in time (its step s is the
            network's step L_v − 1 − s).
        jacobian: the one-step Jacobians of the followed state (Z for Elman, the carry
            for a gated cell), row s defining Ω(s+1, s) (see the module docstring).
        linearisation: the cell's linearisation on this trajectory (`_cells/base.py`):
            its `cotangents(Δ)` turns errors of the followed state into the cotangents
            of the cell's parameters (linear in Δ).
        cell_parameters: `layer_parameters ↦ (the cell's parameters, its inputs)` as the
            layer prepares them (the identity for Elman and minGRU; the recurrent
            weights and the projected inputs for a GRU or LSTM), for the chain rule back
            to the layer's own parameters.
    """

    layer: LayerParams | GRUParams | LSTMParams | BidirectionalParams
    inputs: jax.Array
    params: LayerParams | GRUParams | LSTMParams
    hs: jax.Array
    sigma_prime: jax.Array | None
    lengths: jax.Array | None
    backward: bool
    jacobian: StepJacobian
    linearisation: Any = None
    cell_parameters: Callable | None = None


def compiled(*static_argnames: str) -> Callable[[Callable], Callable]:
    """Runs a diagnostic `f(params, xs, …)` as one compiled program.

    A diagnostic is hundreds of small operations; run eagerly, each is compiled on its
    own, which costs more than compiling them once together. The checks that need
    concrete values (the range of `lengths`) run first, outside the compiled program;
    every other check runs while it is traced, with the same messages. `static_argnames`
    are the options that change the program (`activation`, `layer`, `max_lag`, …).
    """

    def decorate(function: Callable) -> Callable:
        program = jax.jit(function, static_argnames=static_argnames)

        @functools.wraps(function)
        def run(params, xs, *args, **kwargs):
            if kwargs.get("lengths") is not None:
                check_lengths(kwargs["lengths"], *time_and_batch(xs))
            return program(params, xs, *args, **kwargs)

        return run

    return decorate


def check_layer_index(layer: object, num_layers: int) -> int:
    """Checks a layer index in [-L, L) (Python's convention); returns it in [0, L)."""
    if (
        not isinstance(layer, int)
        or isinstance(layer, bool)
        or not -num_layers <= layer < num_layers
    ):
        raise ValueError(
            f"layer must be an int in [-{num_layers}, {num_layers}) for a stack of "
            f"{num_layers} recurrent layer(s), got {layer!r}."
        )
    return layer % num_layers


def is_stack(params: object) -> bool:
    return hasattr(params, "layers") and hasattr(params, "readout")


def time_and_batch(xs: object) -> tuple[int, int]:
    if is_token_input(xs):
        T, m = check_rank("xs", xs, 2, "(T, m) = (time, batch) integer token indices")
        if T == 0:
            raise ValueError(f"xs must have at least one time step, got shape {(T, m)}.")
        return T, m
    T, m, _ = check_sequence("xs", xs)
    return T, m


def layer_inputs(
    params, xs: jax.Array, *, activation: str, layer: int = -1, lengths: jax.Array | None = None
) -> tuple[LayerParams | BidirectionalParams, jax.Array, jax.Array | None, int | None]:
    """The inspected layer and its inputs as the network computes them.

    Returns:
        `(layer params, inputs (padded steps zeroed), lengths (checked), index)`; the
        index is None for a lone layer.
    """
    check_choice("activation", activation, ACTIVATIONS)
    T, m = time_and_batch(xs)
    if lengths is not None:
        lengths = check_lengths(lengths, T, m)
    if not is_stack(params):
        return params, zero_padding(xs, lengths), lengths, None
    check_rnn_params(params)
    layers = tuple(params.layers)
    # The network's inputs, named as `rnn_forward` names them (params.layers[0].W).
    check_inputs(xs, first_weight(layers[0]), "params.layers[0].W")
    index = check_layer_index(layer, len(layers))
    # The layers below run exactly as in `rnn_forward` (same layer step, from zeros).
    plain = resolve_method("autodiff")
    hs = xs
    for below in layers[:index]:
        hs, _ = apply_layer(below, hs, None, lengths=lengths, activation=activation, method=plain)
    return layers[index], zero_padding(hs, lengths), lengths, index


def direction_params(
    layer: object, direction: object, name: str
) -> tuple[LayerParams | GRUParams | LSTMParams, bool]:
    """The parameters of the inspected direction and whether it runs backward."""
    if direction is not None:
        check_choice("direction", direction, DIRECTIONS)
    if isinstance(layer, BidirectionalParams):
        if direction is None:
            raise ValueError(
                f"{name} is a bidirectional layer: pass direction='forward' or "
                "direction='backward' to say which direction to inspect (each has its own "
                "Ω); the backward direction is reported at the network's time steps."
            )
        one_direction = getattr(layer, direction)
        _check_gated(one_direction, f"{name}.{direction}")
        return one_direction, direction == "backward"
    if direction == "backward":
        raise ValueError(
            f"direction='backward' needs a bidirectional layer, but {name} is a "
            f"{type(layer).__name__}; leave direction=None (or 'forward')."
        )
    _check_gated(layer, name)
    return layer, False


def _check_gated(layer: object, name: str) -> None:
    # An Elman layer (or anything else) is checked by `rnn_layer`'s checks, with their
    # own messages.
    if kind_of(layer) is not None and not isinstance(layer, LayerParams):
        check_recurrent_layer(name, layer)


def layer_trajectory(
    params,
    xs: jax.Array,
    h0: jax.Array | None = None,
    *,
    activation: str,
    layer: int = -1,
    direction: str | None = None,
    lengths: jax.Array | None = None,
) -> Trajectory:
    """Runs the forward pass up to one layer and records what its Ω depends on.

    Args:
        params: a `LayerParams`, `GRUParams`, `LSTMParams`, a `BidirectionalParams` (then
            `layer` is ignored) or an `RNNParams` stack.
        xs: the network inputs (T, m, n), or integer tokens (T, m).
        h0: the initial state (m, d) of the inspected direction, the pair `(h0, c0)` for
            an LSTM; zeros if None. The layers below it (for a stack) and the other
            direction start from zeros.
        activation: "tanh", "sigmoid" or "relu" (of Elman layers; gated cells fix theirs).
        layer: which layer of an `RNNParams` stack (default the top one).
        direction: for a bidirectional layer, "forward" or "backward" (required).
        lengths: valid steps per sequence (m,), or None for all T.

    Returns:
        `Trajectory` of the inspected direction.

    Raises:
        ValueError, TypeError: as `rnn_forward` for bad shapes, dtypes or options, for a
            `layer` index outside the stack and for a missing or impossible `direction`.
    """
    inspected, inputs, lengths, index = layer_inputs(
        params, xs, activation=activation, layer=layer, lengths=lengths
    )
    name = "params" if index is None else f"params.layers[{index}]"
    one_direction, backward = direction_params(inspected, direction, name)
    if is_mixed(one_direction.W.dtype, jnp.result_type(inputs)):
        raise TypeError(
            f"the diagnostics run in one dtype, got xs of dtype {jnp.result_type(xs)} with "
            f"{name} of dtype {one_direction.W.dtype} (mixed precision, "
            "docs/performance.md#mixed-precision); to inspect the model, cast xs to "
            f"{one_direction.W.dtype} or params to {jnp.result_type(inputs)}."
        )
    run_inputs = reverse_padded(inputs, lengths) if backward else inputs
    weights = f"{name}.{direction}.W" if isinstance(inspected, BidirectionalParams) else f"{name}.W"
    if isinstance(one_direction, LayerParams):
        # The Elman layer's own checks, with `rnn_layer`'s messages.
        check_elman_arguments(
            one_direction,
            run_inputs,
            h0,
            activation=activation,
            algorithm=resolve_method("autodiff"),
        )
    else:
        if index is None:  # a lone layer reads xs itself (a stack's are checked by layer_inputs)
            check_inputs(xs, one_direction.W, weights)
        check_layer_state("h0", h0, one_direction, run_inputs.shape[1], weights)
    kind = kind_of(one_direction)
    carry0 = fill_carry0(one_direction, h0, run_inputs.shape[1])

    def prepare(layer_parameters):
        return kind.prepare(
            layer_parameters, run_inputs, carry0, activation=activation, own_backward=False
        )

    scan = prepare(one_direction)
    # One forward loop gives the carries and the cell's linearisation (its Jacobian
    # operator: the cell is not evaluated again for the Jacobians).
    carries, linearisation = scan.cell.linearise(scan.params, scan.inputs, scan.carry0)
    _, jacobian = linearisation.error_problem(jax.tree.map(jnp.zeros_like, carries))
    hs = carries[0] if kind.paired_state else carries
    # An Elman layer's diagnostics follow its pre-activations Z (S·diag(σ'(Z))).
    sigma_prime = jacobian.sigma_prime if isinstance(jacobian, ElmanJacobian) else None
    return Trajectory(
        inspected,
        inputs,
        one_direction,
        hs,
        sigma_prime,
        lengths,
        backward,
        jacobian,
        linearisation,
        lambda layer_parameters: prepare(layer_parameters)[1:3],
    )


def state_width(trajectory: Trajectory) -> int:
    """D, the width of the followed state: d (Z or h), or 2d for an LSTM's (h, c)."""
    d = trajectory.hs.shape[-1]
    return 2 * d if kind_of(trajectory.params).paired_state else d


def state_cotangent(trajectory: Trajectory, hs_bar: jax.Array) -> jax.Array:
    """The cotangent (T, m, D) of the followed state from that of the outputs h (T, m, d):
    `h̄ ⊙ σ'(Z)` for Elman (Z's cotangent), `h̄` for a GRU, `[h̄, 0]` for an LSTM (the
    consumers of a layer read h only, never c)."""
    if trajectory.sigma_prime is not None:
        return hs_bar * trajectory.sigma_prime
    if kind_of(trajectory.params).paired_state:
        return jnp.concatenate([hs_bar, jnp.zeros_like(hs_bar)], axis=-1)
    return hs_bar


def one_step_jacobians(trajectory: Trajectory) -> jax.Array:
    """Ω(s+1, s) for every run-order step and sample, (T, m, D, D) indexed `[s, v, a, b]`
    = ∂state_{s+1}[a]/∂state_s[b]: S·diag(σ'(Z_s)) for Elman (no products), one
    vmapped pullback of the D basis rows for a gated cell (`StepJacobian.matrices`)."""
    T, m = trajectory.hs.shape[:2]
    jacobian = trajectory.jacobian
    like = jax.ShapeDtypeStruct((T, m, state_width(trajectory)), trajectory.hs.dtype)
    return jacobian.matrices(jacobian.per_step, like)


def valid_steps(trajectory: Trajectory) -> jax.Array:
    """(T, m) booleans, True at the valid steps; the same in run order and network time."""
    T, m = trajectory.hs.shape[:2]
    if trajectory.lengths is None:
        return jnp.ones((T, m), bool)
    return mask_from_lengths(trajectory.lengths, T)


def network_order(values: jax.Array, trajectory: Trajectory) -> jax.Array:
    """Run-order `[j, i, v, …]` entries (T, T, m, …) at the network's time steps.

    The backward direction's step s is the network's step L_v − 1 − s, so its entries
    are gathered sample by sample (its lower triangle becomes the upper one). Entries
    at a padded step (j or i ≥ L_v) become NaN.
    """
    T, _, m = values.shape[:3]
    if trajectory.backward:
        lengths = trajectory.lengths
        if lengths is None:
            lengths = jnp.full((m,), T)
        steps = jnp.arange(T)[:, None]
        source = jnp.where(steps < lengths[None, :], lengths[None, :] - 1 - steps, steps)
        samples = jnp.arange(m)[None, None, :]
        values = values[source[:, None, :], source[None, :, :], samples]
    if trajectory.lengths is not None:
        valid = valid_steps(trajectory)
        both = valid[:, None, :] & valid[None, :, :]
        both = both.reshape(both.shape + (1,) * (values.ndim - 3))
        values = jnp.where(both, values, jnp.nan)
    return values
