r"""SnAp: RTRL's influence matrix kept on a sparse pattern (Menick, Elsen, Evci, Osindero,
Simonyan & Graves, "Practical Real Time Recurrent Learning with a Sparse Approximation",
ICLR 2021).

RTRL carries the influence `M_t = ∂carry_t/∂θ` forward, `M_t = J_t M_{t−1} + I_t`, with
`J_t` the one-step Jacobian and `I_t` the immediate influence of θ (docs/theory.md#rtrl).
SnAp-n keeps only the entries of `M` that θ can reach within n steps:

.. math::

    M_t ≈ \mathcal{P}_n ⊙ (J_t M_{t-1} + I_t), \qquad
    \mathcal{P}_1 = \mathrm{pattern}(I), \quad
    \mathcal{P}_{k+1} = \mathcal{P}_k ∪ \mathrm{pattern}(J)\,\mathcal{P}_k .

SnAp-1 keeps `∂h_i/∂θ` for the parameters of unit i only; on a diagonal recurrence
(minGRU, a diagonal S) that is all of `M`, so SnAp-1 is exact there; on a dense
recurrence `𝒫_2` is full and SnAp-2 is RTRL. The patterns are structural: read off the
cell's Jacobians at random points (an entry that is zero at random points is zero for
the cell's structure), for any cell, through the same step function RTRL uses.

For any cell, SnAp's values are computed with RTRL's dense recurrence masked to the
pattern (`rtrl_cell_gradients(mask=…)`): the gradient SnAp gives, at RTRL's cost. An
Elman layer's SnAp-1 has its sparse closed form (`elman_snap1_gradients`, O(m·|θ|)
memory, the point of SnAp-1); the other cells' sparse storage is not written yet.
The cotangents of the layer's inputs and initial carry come from the BPTT recurrence,
as RTRL's inputs do. A GRU or LSTM layer is seen as its whole step, the input
projection `W x_t` inside (`sees_the_whole_step`), so that the input weights' influence
is approximated as every other weight's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._cells.base import Linearisation, StepProblem
from .._cells.elman_linearisation import ElmanLinearisation
from .._cells.linearisation import CarryLayout, input_row
from .._core.error_flow import ErrorFlow
from .._core.jacobian import StepJacobian
from .._core.params import LayerParams
from .base import GradientAlgorithm
from .bptt import bptt_error_flow
from .rtrl import rtrl_cell_gradients
from .unit_traces import per_unit, unit_trace_gradients

# Random points at which the structural patterns are read (their union is taken).
PATTERN_POINTS = 2


def snap_pattern(problem: StepProblem, n: int) -> jax.Array:
    """`𝒫_n` as a (|θ|, D) 0/1 mask: which carry units each parameter entry reaches
    within n steps, from the cell's Jacobians at random points."""
    flat_params, unravel = ravel_pytree(problem.params)
    # Read in float32 at least: at a random point a bfloat16 gate saturates (1 − σ(a)
    # rounds to 0 for a > 6) and would hide an entry of the structure.
    dtype = jnp.promote_types(flat_params.dtype, jnp.float32)
    layout = CarryLayout.of(problem.carry0)
    x = jax.tree.map(lambda leaf: leaf[:1], input_row(problem.xs, 0))  # one row
    carry = jax.tree.map(lambda leaf: leaf[:1], problem.carry0)
    immediate = jnp.zeros((layout.width, flat_params.size), bool)
    recurrent = jnp.zeros((layout.width, layout.width), bool)
    keys = jax.random.split(jax.random.key(0), 3 * PATTERN_POINTS)
    for k in range(PATTERN_POINTS):

        def random_like(tree, key):
            leaves, treedef = jax.tree.flatten(tree)
            subkeys = jax.random.split(key, len(leaves))
            return treedef.unflatten(
                [
                    jax.random.normal(s, leaf.shape, jnp.promote_types(leaf.dtype, dtype))
                    if jnp.issubdtype(leaf.dtype, jnp.inexact)
                    else leaf
                    for leaf, s in zip(leaves, subkeys)
                ]
            )

        point_params = jax.random.normal(keys[3 * k], flat_params.shape, dtype)
        point_carry = random_like(carry, keys[3 * k + 1])
        point_x = random_like(x, keys[3 * k + 2])

        def new_carry(flat, carry_flat, x=point_x):
            return layout.flatten(problem.step(unravel(flat), layout.unflatten(carry_flat), x))

        flat_carry = layout.flatten(point_carry)
        by_params = jax.jacfwd(new_carry, argnums=0)(point_params, flat_carry)[0]
        by_carry = jax.jacfwd(new_carry, argnums=1)(point_params, flat_carry)[0, :, 0]
        immediate = immediate | (by_params != 0)
        recurrent = recurrent | (by_carry != 0)
    pattern = immediate
    for _ in range(n - 1):
        reached = (recurrent.astype(jnp.float32) @ pattern.astype(jnp.float32)) > 0
        pattern = pattern | reached
    return pattern.T.astype(flat_params.dtype)


@functools.singledispatch
def snap_gradients(linearisation: Linearisation, carries_bar, n: int):
    """SnAp-n's `∂C/∂params` of a scan: RTRL's dense recurrence masked to the pattern, for
    any cell; an Elman layer's SnAp-1 in its sparse closed form (dispatch on the type)."""
    problem = linearisation.step_problem()
    params_bar, _ = rtrl_cell_gradients(problem, carries_bar, snap_pattern(problem, n))
    return problem.params_cotangent(params_bar)


@snap_gradients.register
def _(linearisation: ElmanLinearisation, hs_bar, n: int):
    if n != 1:  # on a dense S, SnAp-2's pattern is full: the masked recurrence
        return snap_gradients.dispatch(Linearisation)(linearisation, hs_bar, n)
    return elman_snap1_gradients(linearisation, hs_bar)


def elman_snap1_gradients(linearisation: ElmanLinearisation, hs_bar: jax.Array) -> LayerParams:
    """SnAp-1 of an Elman layer in O(m·|θ|) memory: unit a keeps only ∂h_a/∂θ of its own
    weights, `M_W[a, e] ← σ'_a (S_aa M_W[a, e] + x_e)`, likewise S with h_{t−1} and b with
    1 (the diagonal of S is the only part of J_t that maps an entry onto its own unit);
    the scan of `unit_traces.py`."""
    own = jnp.diagonal(linearisation.params.S)  # S_aa

    def update(influence, drive, sigma_prime):
        return per_unit(sigma_prime, per_unit(own, influence) + drive)

    return unit_trace_gradients(linearisation, hs_bar, update)


@dataclasses.dataclass(frozen=True)
class SnAp(GradientAlgorithm):
    """SnAp-n (Menick et al. 2021): RTRL's influence matrix kept on the entries a
    parameter reaches within n steps, for every cell. SnAp-1 is exact on a diagonal
    recurrence (minGRU), SnAp-2 is RTRL on a dense one; an approximation otherwise.
    Computed at RTRL's cost (the dense recurrence, masked), see the module docstring.

    Args:
        n: 1 or 2.

    Raises:
        ValueError: another `n`.

    Example:
        >>> SnAp(n=2).options(), SnAp().name
        ({'n': 2}, 'snap')
    """

    n: int = 1

    name = "snap"
    takes_token_inputs = False
    sees_the_whole_step = True

    def __post_init__(self):
        if (
            not isinstance(self.n, int | np.integer)
            or isinstance(self.n, bool)
            or self.n
            not in (
                1,
                2,
            )
        ):
            raise ValueError(f"n must be 1 or 2 (SnAp-1 or SnAp-2), got {self.n!r}.")

    def error_flow(self, injected: jax.Array, jacobian: StepJacobian) -> ErrorFlow:
        # Δ itself (for the inputs' cotangents) by the BPTT recurrence, as RTRL.
        return bptt_error_flow(injected, jacobian)

    def cotangents(self, linearisation: Linearisation, carries_bar):
        params_bar = snap_gradients(linearisation, carries_bar, self.n)
        delta = self.error_flow(*linearisation.error_problem(carries_bar)).delta
        _, xs_bar, carry0_bar = linearisation.cotangents(delta)
        return params_bar, xs_bar, carry0_bar
