r"""Real-time recurrent learning: forward-mode sensitivities ∂h_t/∂θ (docs/theory.md#rtrl;
Williams & Zipser, "A learning algorithm for continually running fully recurrent neural
networks").

For `h_t = σ(Z_t)`, `Z_t = x_t Wᵀ + h_{t−1} Sᵀ + b`, the sensitivity of the state to a
parameter θ obeys a FORWARD recurrence (per sample, row a of h):

.. math::

    M_t = \frac{∂h_t}{∂θ} = σ'(Z_t) ⊙ \Big(S\, M_{t−1} + \frac{∂Z_t}{∂θ}\Big|_\mathrm{direct}\Big),
    \qquad M_{−1} = 0 \;(\text{or } I \text{ for } θ = h_0),

with direct terms `∂Z_t[a]/∂W[c, e] = δ_{ac} x_t[e]`, `∂Z_t[a]/∂S[c, e] = δ_{ac}
h_{t−1}[e]`, `∂Z_t[a]/∂b[c] = δ_{ac}`. The gradient of any loss that reads h_t is then
`Σ_t h̄_t · M_t`, available at step t without looking at the future.

Cost: `S M_{t−1}` is a (d, d) matrix times a (d, |θ|) sensitivity per sample, with
|θ| = d(n + d + 1): O(m·d²·(d n + d²)) = O(m·d⁴) per step (for n ≈ d) and O(m·d·|θ|)
memory, against O(m·d²) per step for BPTT. Practical for d up to a few tens (d = 32:
~10⁶ sensitivity entries per sample); at d = 128 one step of a batch of 32 already
costs ~10¹⁰ flops.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from .._cells.base import Linearisation, StepProblem
from .._cells.elman_linearisation import ElmanLinearisation
from .._cells.linearisation import CarryLayout
from .._core import precision
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .._core.params import LayerParams
from .base import GradientAlgorithm
from .bptt import bptt_error_flow


def through_recurrence(S: jax.Array, sensitivity: jax.Array) -> jax.Array:
    """`S M` for a sensitivity of shape (m, d, *θ_shape): the old state's influence."""
    return jnp.einsum("ab,vb...->va...", S, sensitivity)


def propagate(sigma_prime: jax.Array, S: jax.Array, previous, drive):
    """One RTRL step for a pytree of sensitivities: `M_t = σ'(Z_t) ⊙ (S M_{t−1} + drive)`.

    Args:
        sigma_prime: σ'(Z_t), shape (m, d).
        S: recurrent weights (d, d).
        previous: pytree of M_{t−1}, leaves (m, d, *θ_shape).
        drive: pytree like `previous`: ∂Z_t/∂θ through everything but h_{t−1}.

    Returns:
        The pytree of M_t.
    """

    def one(M, D):
        scale = sigma_prime.reshape(sigma_prime.shape + (1,) * (M.ndim - 2))
        return scale * (through_recurrence(S, M) + D)

    return jax.tree.map(one, previous, drive)


def direct_drive(x: jax.Array, h_previous: jax.Array) -> LayerParams:
    """∂Z_t/∂(W, S, b) with h_{t−1} held fixed: leaves (m, d, d, n), (m, d, d, d), (m, d, d)."""
    m, d = h_previous.shape
    eye = jnp.eye(d, dtype=h_previous.dtype)
    return LayerParams(
        W=eye[None, :, :, None] * x[:, None, None, :],
        S=eye[None, :, :, None] * h_previous[:, None, None, :],
        b=jnp.broadcast_to(eye, (m, d, d)),
    )


def zero_sensitivity(params: LayerParams, m: int, d: int) -> LayerParams:
    """∂h_{−1}/∂θ = 0 for the parameters of a layer: leaves (m, d, *leaf.shape)."""
    return jax.tree.map(lambda p: jnp.zeros((m, d, *p.shape), p.dtype), params)


def accumulate(total: jax.Array, term: jax.Array) -> jax.Array:
    """`total + term` in the total's dtype (float32 beside 16-bit terms)."""
    return total + term.astype(total.dtype)


def contract(h_bar: jax.Array, sensitivities):
    """`Σ_{v, a} h̄[v, a] M[v, a, …]`: the gradient that h̄ sends through M."""
    return jax.tree.map(lambda M: jnp.einsum("va,va...->...", h_bar, M), sensitivities)


def rtrl_layer_gradients(
    params: LayerParams,
    xs: jax.Array,
    h0: jax.Array,
    hs: jax.Array,
    hs_bar: jax.Array,
    sigma_prime: jax.Array,
) -> tuple[LayerParams, jax.Array]:
    """Gradients of `Σ_t ⟨h̄_t, h_t⟩` w.r.t. the layer's parameters and h0, forward in time.

    scan :: (M_{t−1}, ∂h_{t−1}/∂h0, gradient so far) over t -> the same at t.

    Args:
        params: `LayerParams(W (d, n), S (d, d), b (d,))`.
        xs: inputs (T, m, n).
        h0: initial state (m, d).
        hs: states (T, m, d).
        hs_bar: cotangents of hs (T, m, d).
        sigma_prime: σ'(Z) (T, m, d).

    Returns:
        `(LayerParams` gradient, gradient w.r.t. h0 (m, d)).
    """
    m, d = h0.shape
    hs_previous = jnp.concatenate([h0[None], hs[:-1]])
    # ∂h_t/∂h0 is per sample: (m, d, d), starting from the identity at t = −1.
    initial_state = jnp.broadcast_to(jnp.eye(d, dtype=h0.dtype), (m, d, d))

    def step(carry, inputs):
        sensitivity, state_sensitivity, gradient, state_gradient = carry
        x, h_previous, sp, h_bar = inputs
        sensitivity = propagate(sp, params.S, sensitivity, direct_drive(x, h_previous))
        state_sensitivity = propagate(
            sp, params.S, state_sensitivity, jnp.zeros_like(state_sensitivity)
        )
        gradient = jax.tree.map(accumulate, gradient, contract(h_bar, sensitivity))
        state_gradient = accumulate(
            state_gradient, jnp.einsum("va,vab->vb", h_bar, state_sensitivity)
        )
        return (sensitivity, state_sensitivity, gradient, state_gradient), None

    # The sums over the steps are kept in float32 for 16-bit floats (mixed precision).
    total = precision.accumulator_dtype(h0.dtype)
    carry = (
        zero_sensitivity(params, m, d),
        initial_state,
        jax.tree.map(lambda p: jnp.zeros(p.shape, total), params),
        jnp.zeros(h0.shape, total),
    )
    (_, _, gradient, state_gradient), _ = lax.scan(
        step, carry, (xs, hs_previous, sigma_prime, hs_bar)
    )
    gradient = jax.tree.map(lambda g, p: g.astype(p.dtype), gradient, params)
    return gradient, state_gradient.astype(h0.dtype)


def propagate_influence(step, theta, carry, x, influence):
    """`J_t M_{t−1} + I_t` for M (|θ|, m, D): one forward-mode product of the step per
    column of M (the carry's tangent only), and `I_t = ∂carry_t/∂θ|direct` by reverse
    mode, one product per row of the batch's carries (m·D). Never an (|θ|, |θ|)
    identity: its columns as tangents would make XLA build it (1.2 GB at d = 128).
    The step is differentiated on the whole batch, as it runs (a cell may draw per-batch
    random masks), never row by row."""
    pushed = jax.vmap(lambda column: jax.jvp(lambda c: step(theta, c, x), (carry,), (column,))[1])(
        influence
    )
    _, pullback = jax.vjp(lambda th: step(th, carry, x), theta)
    m, width = carry.shape
    basis = jnp.eye(m * width, dtype=carry.dtype).reshape(m * width, m, width)
    immediate = jax.vmap(lambda cotangent: pullback(cotangent)[0])(basis)  # (m·D, |θ|)
    return pushed + jnp.moveaxis(immediate.reshape(m, width, -1), -1, 0)


def rtrl_cell_gradients(problem: StepProblem, carries_bar, mask: jax.Array | None = None):
    """RTRL for any cell: `M_t = ∂carry_t/∂θ = J_t M_{t−1} + ∂step/∂θ|_t`, forward in time.

    scan :: (M_{t−1}, N_{t−1} = ∂carry_{t−1}/∂carry0, gradients so far) over t.

    Each column of the sensitivities (one per entry of θ, one per carry unit for
    carry0) is one forward-mode product of the carry's tangent per step, and the
    immediate influence ∂carry_t/∂θ|direct D reverse-mode products per sequence
    (`propagate_influence`): O(m·D·|θ|) memory (docs/theory.md#rtrl).

    `mask` (|θ|, D), if given, keeps only its entries of the sensitivities after every
    step, `M_t = mask ⊙ (J_t M_{t−1} + I_t)`: SnAp's sparse approximation (`snap.py`).

    Returns:
        `(∂C/∂params, ∂C/∂carry0)`.
    """
    step, params, xs, carry0 = problem.step, problem.params, problem.xs, problem.carry0
    layout = CarryLayout.of(carry0)
    flat_params, unravel = ravel_pytree(params)
    before = jax.tree.map(
        lambda c0, cs: jnp.concatenate([c0[None], cs[:-1]]), carry0, problem.carries
    )
    bars = layout.flatten(carries_bar, batch_dims=2)  # (T, m, D)
    width = layout.width
    m = bars.shape[1]

    def flat_step(theta, carry, x):
        return layout.flatten(step(unravel(theta), layout.unflatten(carry), x))

    def one_step(state, inputs):
        sensitivity, state_sensitivity, gradient, state_gradient = state
        carry, x, bar = inputs
        sensitivity = propagate_influence(flat_step, flat_params, carry, x, sensitivity)
        if mask is not None:
            sensitivity = sensitivity * mask[:, None, :]
        # ∂carry_t/∂carry0 = J_t ∂carry_{t−1}/∂carry0: the carry's tangent only.
        state_sensitivity = jax.vmap(
            lambda column: jax.jvp(lambda c: flat_step(flat_params, c, x), (carry,), (column,))[1]
        )(state_sensitivity)
        gradient = accumulate(gradient, jnp.einsum("vb,pvb->p", bar, sensitivity))
        state_gradient = accumulate(
            state_gradient, jnp.einsum("vb,avb->va", bar, state_sensitivity)
        )
        return (sensitivity, state_sensitivity, gradient, state_gradient), None

    dtype = bars.dtype
    # The sums over the steps are kept in float32 for 16-bit floats (mixed precision).
    total = precision.accumulator_dtype(dtype)
    initial = (
        jnp.zeros((flat_params.size, m, width), dtype),
        # ∂carry_{−1}/∂carry0 = I, per sample: column a is e_a in every row.
        jnp.broadcast_to(jnp.eye(width, dtype=dtype)[:, None, :], (width, m, width)),
        jnp.zeros(flat_params.shape, total),
        jnp.zeros((m, width), total),
    )
    inputs = (layout.flatten(before, batch_dims=2), xs, bars)
    (_, _, gradient, state_gradient), _ = lax.scan(one_step, initial, inputs)
    gradient = gradient.astype(flat_params.dtype)
    return unravel(gradient), layout.unflatten(state_gradient.astype(dtype))


@functools.singledispatch
def rtrl_gradients(linearisation: Linearisation, carries_bar):
    """`(∂C/∂params, ∂C/∂carry0)` forward in time: for any cell from forward-mode
    products of its step (`rtrl_cell_gradients`), for an Elman layer by its closed-form
    sensitivity recurrence (dispatch on the linearisation's type)."""
    problem = linearisation.step_problem()
    params_bar, carry0_bar = rtrl_cell_gradients(problem, carries_bar)
    return problem.params_cotangent(params_bar), carry0_bar


@rtrl_gradients.register
def _(linearisation: ElmanLinearisation, hs_bar):
    return rtrl_layer_gradients(
        linearisation.params,
        linearisation.xs,
        linearisation.h0,
        linearisation.hs,
        hs_bar,
        linearisation.sigma_prime(),
    )


def sensitivity_products(d: int, n: int) -> int:
    """(m, d) × (d, d) products of one RTRL step: one per column of the sensitivities of
    W (d·n), S (d·d), b (d) and h0 (d)."""
    return d * (n + d + 2)


class RTRLCost(NamedTuple):
    """Estimated size of one RTRL training step (`rtrl_cost`): the bytes of the
    sensitivities, the flops of their recurrence and, to compare, those of BPTT."""

    sensitivity_bytes: int
    flops: int
    bptt_flops: int


def rtrl_cost(
    sizes: tuple[int, ...],
    *,
    gates: int = 1,
    paired_state: bool = False,
    batch_size: int,
    steps: int,
    itemsize: int = 4,
) -> RTRLCost:
    """Estimates what RTRL costs a stack of layers of sizes (n, d_1, …, d_L) over a batch
    of `batch_size` sequences of `steps` steps (float32 by default).

    A layer of `gates` gate blocks (1 Elman, 3 GRU, 4 LSTM) has |θ| = G·d·(n + d) plus
    its biases; its sensitivities hold m·D·(|θ| + D) numbers (D = d, or 2d for the
    paired state of an LSTM), and each step pushes every column through the recurrent
    product, 2·m·G·d²·(|θ| + D) flops: O(m·d⁴). BPTT's step costs about three forward
    products, 6·m·G·d·(n + d) flops.

    Example:
        >>> cost = rtrl_cost((96, 256), batch_size=32, steps=64)
        >>> round(cost.sensitivity_bytes / 2**30, 1), f"{cost.flops:.1e}"
        (2.8, '2.4e+13')
    """
    memory = flops = bptt = 0
    for n, d in zip(sizes[:-1], sizes[1:]):
        rows = gates * d
        parameters = rows * (n + d) + rows * (1 if gates == 1 else 2)
        width = 2 * d if paired_state else d
        columns = parameters + width
        memory += batch_size * width * columns * itemsize
        flops += 2 * batch_size * rows * d * columns * steps
        bptt += 6 * batch_size * rows * (n + d) * steps
    return RTRLCost(memory, flops, bptt)


@dataclasses.dataclass(frozen=True)
class RTRL(GradientAlgorithm):
    """Real-time recurrent learning: parameter and h0 gradients accumulated FORWARD in
    time through the sensitivities ∂h_t/∂θ (docs/theory.md#rtrl).

    O(m·d⁴) work per step (for n ≈ d) and O(m·d·|θ|) memory: practical for d up to a
    few tens. The input cotangent Δ_t W (for the layer below, or a gradient w.r.t. xs)
    needs the future of step t, so it comes from the BPTT recurrence; under `jit` that
    scan is dead code unless something uses it. Does not take integer token inputs.

    Example:
        >>> RTRL().closed_form_products(5)  # a (T, 1, 1) problem: 4 columns per step
        20
    """

    name = "rtrl"
    takes_token_inputs = False

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        # Δ itself (what the layer below receives) by the BPTT recurrence.
        return bptt_error_flow(injected, jacobian)

    def cotangents(self, linearisation: Linearisation, carries_bar):
        params_bar, carry0_bar = rtrl_gradients(linearisation, carries_bar)
        # The inputs' cotangents need the future of each step: from Δ by BPTT.
        delta = self.error_flow(*linearisation.error_problem(carries_bar)).delta
        _, xs_bar, _ = linearisation.cotangents(delta)
        return params_bar, xs_bar, carry0_bar

    def count_products(self, T: int) -> ErrorFlow:
        # The sensitivity recurrence of a (T, 1, 1) layer with one input: its scan runs T
        # steps of `sensitivity_products(1, 1)` products each.
        products = jnp.asarray(T * sensitivity_products(1, 1), jnp.int32)
        ones = jnp.ones((T, 1, 1), jnp.float32)
        return ErrorFlow(ones, products, products)

    def closed_form_products(self, T: int) -> int:
        return T * sensitivity_products(1, 1)
