"""The floor of one GRU or LSTM gradient: the exact gradient's work done by plain pieces.

    floor = time-parallel products + forward loop + backward loop

As `scripts/benchmark.py --floor` does for the Elman layer (docs/performance.md#floor),
for the problem of `benchmark_cells.py`: one GRU or LSTM layer in PyTorch's layout and
equations (`dprnn_jax/_cells/gru.py`, `lstm.py`), a linear readout, softmax
cross-entropy summed over the steps / m, the gradient of every weight.

* The time-parallel products, one program: the input projection `X Wᵀ + b` of all steps
  at once; the readout's logits, the softmax cross-entropy's gradient and the readout's
  two products (the states' cotangent `L̄ W_r` and `W̄_r = L̄ᵀ H`); the input-weight and
  recurrent-weight gradients `W̄ = Āᵀ X`, `S̄ = Ūᵀ H_prev`, each ONE product over all T·m
  rows (the smaller operand transposed once, as the library's `rows_product` does), and
  the bias sums. Not the inputs' cotangent `Ā W`: the gradient is the weights', and no
  contender computes it.
* The forward loop: T steps of the recurrent product `h Sᵀ` and the gates, storing the
  state and the gate coefficients the backward reads (the arrays the library's
  linearisation keeps: six (m, d) arrays per step for the GRU, seven for the LSTM).
* The backward loop: T steps of the gates' cotangents from the stored coefficients and
  the product of the recurrent weights with them.

The backward loop stores one of two things, two ways of splitting the same work:
"cotangents", the gates' cotangents it has computed (Ā, (T, m, G·d)), which the weight
gradients read; or "Δ", only the state's cotangent (T, m, d; the LSTM's two), from
which the products program computes the gates' cotangents again for all T·m rows at
once before its products (the library's split: less stored per step, one more
time-parallel pass). Each loop is written as a `lax.scan` (unroll 1 and 4) and as a
`fori_loop` that updates its buffers in place (its outputs written over rows of its
inputs of the same shape, already read); the floor is the fastest products program,
forward loop and backward loop of the faster split.

The derivative is written out (no autodiff), and what is static here is used as such:
the initial state is zero, the biases are folded into the projection where the
equations allow. `gradient` chains the pieces into one program, the gradient of every
weight, which the benchmark compares with the library's `Autodiff()` gradient before
timing anything: the cheapest proof that the floor does the same work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import dprnn_jax as dj

LOOP_VARIANTS = ("scan unroll=1", "scan unroll=4", "fori in place")
SPLITS = ("cotangents", "Δ")  # what the backward loop stores (module docstring)


class GRUResiduals(NamedTuple):
    """Per step (T, m, ·): the state h_t, then what the backward reads: z, c_n and the
    coefficients k = (c_r, c_z, c_n r) (T, m, 3d) of the recurrent product's cotangent."""

    hs: jax.Array
    z: jax.Array
    c_n: jax.Array
    k: jax.Array


class LSTMResiduals(NamedTuple):
    """Per step (T, m, ·): the state h_t, then what the backward reads: f, o (1 − tanh² c)
    and the gates' coefficients k = (k_i, k_f, k_g, k_o) (T, m, 4d)."""

    hs: jax.Array
    f: jax.Array
    through_c: jax.Array
    k: jax.Array


class GRUCotangents(NamedTuple):
    """The recurrent side's gate cotangents ū = (ā_r, ā_z, r ā_n) (…, 3d) and the
    candidate's ā_n (…, d); the input side's are (ā_r, ā_z, ā_n)."""

    u: jax.Array
    a_n: jax.Array


class Cell(NamedTuple):
    """One gated cell's floor: its steps and how its weights enter and leave them."""

    projection_bias: Callable  # layer -> the bias folded into X Wᵀ (G·d,)
    recurrence: Callable  # layer -> what the forward step reads besides h, p_t
    carry0: Callable  # (m, d) zeros -> the initial carry
    forward_step: Callable  # (recurrence, carry, p_t) -> (carry, residuals_t)
    backward_step: Callable  # (S, carry_bar, (h̄_t, residuals_t but h)) -> (carry_bar, Ā_t, Δ_t)
    gate_cotangents: Callable  # (Δ, residuals) -> Ā, for all steps at once
    overwrites: dict  # split -> the residual fields the stored arrays are written over
    weight_gradients: Callable  # (xs_T, hs_prev_T, Ā, variant) -> (W̄, S̄, b̄_ih, b̄_hh)
    product_variants: tuple


# --------------------------------------------------------------------------------- GRU


def _gru_forward_step(recurrence, h, p):
    S_T, b_hn = recurrence
    d = h.shape[-1]
    u = h @ S_T
    u_n = u[:, 2 * d :] + b_hn
    r = jax.nn.sigmoid(p[:, :d] + u[:, :d])
    z = jax.nn.sigmoid(p[:, d : 2 * d] + u[:, d : 2 * d])
    n = jnp.tanh(p[:, 2 * d :] + r * u_n)
    h_new = (1 - z) * n + z * h
    c_n = (1 - z) * (1 - n * n)
    k = jnp.concatenate([c_n * u_n * (r * (1 - r)), (h - n) * (z * (1 - z)), c_n * r], -1)
    return h_new, GRUResiduals(h_new, z, c_n, k)


def _gru_gate_cotangents(g, residuals) -> GRUCotangents:
    """From the state's cotangent g (…, d): ū = k ⊙ (g, g, g), ā_n = c_n ⊙ g."""
    k = residuals.k
    u = (k.reshape(*k.shape[:-1], 3, -1) * g[..., None, :]).reshape(k.shape)
    return GRUCotangents(u, residuals.c_n * g)


def _gru_backward_step(S, h_bar, inputs):
    hs_bar, z, c_n, k = inputs
    g = h_bar + hs_bar
    cotangents = _gru_gate_cotangents(g, GRUResiduals(None, z, c_n, k))
    return z * g + cotangents.u @ S, cotangents, g


def _gru_weight_gradients(xs_T, hs_prev_T, cotangents: GRUCotangents, variant: str):
    u, a_n = cotangents
    T, m, three_d = u.shape
    d = three_d // 3
    rows = u.reshape(T * m, three_d)
    if variant == "input side by columns":
        # W̄'s r, z rows from ū's first 2d columns (a strided operand).
        W_rz = xs_T @ rows[:, : 2 * d]
    else:  # "input side from all of ū": one more d wide block of products, then dropped
        W_rz = (xs_T @ rows)[:, : 2 * d]
    W_bar = lax.optimization_barrier(jnp.concatenate([W_rz, xs_T @ a_n.reshape(T * m, d)], -1)).T
    S_bar = lax.optimization_barrier(hs_prev_T @ rows).T
    b_hh_bar = u.sum((0, 1))
    b_ih_bar = jnp.concatenate([b_hh_bar[: 2 * d], a_n.sum((0, 1))])
    return W_bar, S_bar, b_ih_bar, b_hh_bar


def _gru_projection_bias(layer):
    # b_hr and b_hz add to the pre-activations as b_ir and b_iz do; b_hn sits inside r ⊙ (…).
    d = layer.S.shape[1]
    return layer.b_ih + layer.b_hh.at[2 * d :].set(0)


GRU = Cell(
    projection_bias=_gru_projection_bias,
    recurrence=lambda layer: (layer.S.T, layer.b_hh[2 * layer.S.shape[1] :]),
    carry0=lambda h0: h0,
    forward_step=_gru_forward_step,
    backward_step=_gru_backward_step,
    gate_cotangents=_gru_gate_cotangents,
    overwrites={"cotangents": ("k", "c_n"), "Δ": ("hs_bar",)},
    weight_gradients=_gru_weight_gradients,
    product_variants=("input side from all of ū", "input side by columns"),
)


# -------------------------------------------------------------------------------- LSTM


def _lstm_forward_step(S_T, carry, p):
    h, c = carry
    d = h.shape[-1]
    a = p + h @ S_T
    i = jax.nn.sigmoid(a[:, :d])
    f = jax.nn.sigmoid(a[:, d : 2 * d])
    g = jnp.tanh(a[:, 2 * d : 3 * d])
    o = jax.nn.sigmoid(a[:, 3 * d :])
    c_new = f * c + i * g
    tanh_c = jnp.tanh(c_new)
    h_new = o * tanh_c
    k = jnp.concatenate(
        [g * (i * (1 - i)), c * (f * (1 - f)), i * (1 - g * g), tanh_c * (o * (1 - o))], -1
    )
    return (h_new, c_new), LSTMResiduals(h_new, f, o * (1 - tanh_c * tanh_c), k)


def _lstm_gate_cotangents(delta, residuals) -> jax.Array:
    """From the cotangents (h̄, c̄) (…, d) of h_t and c_t (the latter with h_t's part
    added): Ā = k ⊙ (c̄, c̄, c̄, h̄)."""
    h_bar, c_bar = delta
    k = residuals.k
    stacked = jnp.stack([c_bar, c_bar, c_bar, h_bar], -2)
    return (k.reshape(*k.shape[:-1], 4, -1) * stacked).reshape(k.shape)


def _lstm_backward_step(S, carry_bar, inputs):
    h_bar, c_bar = carry_bar
    hs_bar, f, through_c, k = inputs
    h_bar = h_bar + hs_bar
    c_bar = c_bar + through_c * h_bar
    a_bar = _lstm_gate_cotangents((h_bar, c_bar), LSTMResiduals(None, None, None, k))
    return (a_bar @ S, f * c_bar), a_bar, (h_bar, c_bar)


def _lstm_weight_gradients(xs_T, hs_prev_T, a_bar, variant: str):
    del variant
    T, m, four_d = a_bar.shape
    rows = a_bar.reshape(T * m, four_d)
    W_bar = lax.optimization_barrier(xs_T @ rows).T
    S_bar = lax.optimization_barrier(hs_prev_T @ rows).T
    b_bar = rows.sum(0)
    return W_bar, S_bar, b_bar, b_bar


LSTM = Cell(
    projection_bias=lambda layer: layer.b_ih + layer.b_hh,
    recurrence=lambda layer: layer.S.T,
    carry0=lambda h0: (h0, h0),
    forward_step=_lstm_forward_step,
    backward_step=_lstm_backward_step,
    gate_cotangents=_lstm_gate_cotangents,
    overwrites={"cotangents": ("k",), "Δ": ("hs_bar", "through_c")},
    weight_gradients=_lstm_weight_gradients,
    product_variants=("one product each",),
)

CELLS = {"gru": GRU, "lstm": LSTM}


# ------------------------------------------------------------------------------ loops


def forward_loop(cell: Cell, variant: str) -> Callable:
    """scan :: (recurrence, P (T, m, G·d), h0 (m, d)) -> residuals (T, m, ·)."""

    def run(recurrence, projected, h0):
        def step(carry, p):
            return cell.forward_step(recurrence, carry, p)

        if variant.startswith("scan"):
            unroll = int(variant.split("=")[1])
            return lax.scan(step, cell.carry0(h0), projected, unroll=unroll)[1]
        # In place: the coefficients k (m, G·d) are written over P's rows.
        T = projected.shape[0]
        shapes = jax.eval_shape(step, cell.carry0(h0), projected[0])[1]
        buffers = {n: jnp.zeros((T, *s.shape), s.dtype) for n, s in shapes._asdict().items()}
        buffers["k"] = projected
        written = _in_place_loop(
            lambda carry, rows: step(carry, rows[0]),
            cell.carry0(h0),
            buffers,
            reads=("k",),
            writes=shapes._fields,
            order=range(T),
        )
        return type(shapes)(**written)

    return jax.jit(run)


def backward_loop(cell: Cell, variant: str, split: str) -> Callable:
    """scan :: (S, h̄ (T, m, d), residuals) -> the gates' cotangents Ā (T, m, ·), or Δ
    (`split`), from the last step to the first."""

    def run(S, hs_bar, residuals):
        inputs = (hs_bar, *residuals[1:])
        zero = cell.carry0(jnp.zeros_like(hs_bar[0]))

        def step(carry_bar, row):
            carry_bar, cotangents, delta = cell.backward_step(S, carry_bar, row)
            return carry_bar, cotangents if split == "cotangents" else delta

        if variant.startswith("scan"):
            unroll = int(variant.split("=")[1])
            return lax.scan(step, zero, inputs, reverse=True, unroll=unroll)[1]
        # In place: each stored array is written over the rows of an input of its shape.
        T = hs_bar.shape[0]
        fields = ("hs_bar", *residuals._fields[1:])
        written = _in_place_loop(
            step,
            zero,
            dict(zip(fields, inputs)),
            reads=fields,
            writes=cell.overwrites[split],
            order=range(T - 1, -1, -1),
        )
        shapes = jax.eval_shape(step, zero, jax.tree.map(lambda x: x[0], inputs))[1]
        leaves = [written[name] for name in cell.overwrites[split]]
        return jax.tree.unflatten(jax.tree.structure(shapes), leaves)

    return jax.jit(run)


def _in_place_loop(step, carry0, buffers: dict, *, reads, writes, order: range) -> dict:
    """A `fori_loop` of `carry, outputs = step(carry, rows)` over the steps `order`:
    step t reads row t of the buffers named `reads` and writes its i-th output over
    row t of the buffer named `writes[i]`, in place; returns the buffers.

    Each step's rows are read one step ahead and carried: when a step read its rows
    from the buffers it writes, XLA fused the read into both the step's product and the
    write over the row, and copied the whole buffer every step to keep the read before
    the write (100× slower).
    """
    first, stride = order.start, order.step
    low, high = min(order), max(order)

    def rows_at(buffers, t):
        return tuple(_row(buffers[name], t) for name in reads)

    def body(j, state):
        carry, buffers, rows = state
        t = first + stride * j
        carry, outputs = step(carry, rows)
        buffers = dict(buffers)
        for name, value in zip(writes, jax.tree.leaves(outputs)):
            buffers[name] = _write(buffers[name], value, t)
        return carry, buffers, rows_at(buffers, jnp.clip(t + stride, low, high))

    return lax.fori_loop(0, len(order), body, (carry0, buffers, rows_at(buffers, first)))[1]


def _row(buffer, t):
    return lax.dynamic_index_in_dim(buffer, t, keepdims=False, allow_negative_indices=False)


def _write(buffer, row, t):
    return lax.dynamic_update_index_in_dim(buffer, row, t, 0, allow_negative_indices=False)


# --------------------------------------------------------------- time-parallel products


def _transposed(rows):
    """(T, m, q) -> (q, T·m), kept a transpose of its own (see `rows_product`)."""
    return lax.optimization_barrier(rows.reshape(-1, rows.shape[-1]).T)


def project(cell: Cell, layer, xs):
    """X Wᵀ + b for every step: (T, m, n) -> (T, m, G·d)."""
    return xs @ layer.W.T + cell.projection_bias(layer)


def readout_backward(readout, hs, ys):
    """The readout's and the softmax cross-entropy's part: (h̄ (T, m, d), W̄_r, b̄_r)."""
    T, m, d = hs.shape
    rows = hs.reshape(T * m, d)
    logits = rows @ readout.W.T + readout.b
    logits_bar = (jax.nn.softmax(logits) - jax.nn.one_hot(ys.reshape(-1), logits.shape[-1])) / m
    hs_bar = (logits_bar @ readout.W).reshape(T, m, d)
    W_bar = lax.optimization_barrier(lax.optimization_barrier(logits_bar.T) @ rows)
    return hs_bar, W_bar, logits_bar.sum(0)


def weight_gradients(cell: Cell, xs, residuals, stored, split: str, variant: str):
    """(W̄, S̄, b̄_ih, b̄_hh) from what the backward loop stored: each weight's gradient
    one product over all T·m rows. The recurrent weights meet the states shifted by one
    step, the initial (zero) state first: the shift is made in the transposed copy of
    the states, which is made anyway, rather than by slicing the larger cotangents (a
    copy of its own)."""
    cotangents = stored if split == "cotangents" else cell.gate_cotangents(stored, residuals)
    hs = residuals.hs
    previous = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]])
    return cell.weight_gradients(_transposed(xs), _transposed(previous), cotangents, variant)


def products(cell: Cell, split: str, variant: str) -> Callable:
    """The time-parallel products of one gradient as one program (its inputs are the
    loops' outputs, so nothing in it waits on a loop)."""

    def run(layer, readout, xs, ys, residuals, stored):
        return (
            project(cell, layer, xs),
            readout_backward(readout, residuals.hs, ys),
            weight_gradients(cell, xs, residuals, stored, split, variant),
        )

    return jax.jit(run)


# ---------------------------------------------------------------------------- assembly


def gradient(
    cell: Cell, loops: str, split: str, product_variant: str, *, intermediates: bool = False
) -> Callable:
    """The pieces chained into one program, `(params, xs, ys) -> grads` (a plain-JAX
    gradient written by hand); `intermediates`: `(grads, values)`, the values being what
    the timed pieces read."""
    run_forward = forward_loop(cell, loops).__wrapped__
    run_backward = backward_loop(cell, loops, split).__wrapped__

    def run(params, xs, ys):
        layer, readout = params.layers[0], params.readout
        h0 = jnp.zeros((xs.shape[1], layer.S.shape[1]), xs.dtype)
        projected = project(cell, layer, xs)
        residuals = run_forward(cell.recurrence(layer), projected, h0)
        hs_bar, W_r_bar, b_r_bar = readout_backward(readout, residuals.hs, ys)
        stored = run_backward(layer.S, hs_bar, residuals)
        layer_bar = weight_gradients(cell, xs, residuals, stored, split, product_variant)
        grads = dj.RNNParams((type(layer)(*layer_bar),), dj.ReadoutParams(W_r_bar, b_r_bar))
        if intermediates:
            return grads, (projected, residuals, hs_bar, stored)
        return grads

    return jax.jit(run)


ONE_PROGRAM = "plain JAX floor as one program: "


def pieces(cell_name: str, params, xs, ys) -> tuple[dict, dict, dict]:
    """The floor's pieces on the problem's own values, timed apart, and the floor as one
    program.

    Returns the pieces' thunks (named "floor: …"); the one-program gradients' thunks
    (in-place loops, each split), to be checked against `Autodiff()` and timed beside
    the other contenders; and the largest relative difference of each piece's output
    from that of the pieces chained with plain scans.
    """
    cell = CELLS[cell_name]
    layer, readout = params.layers[0], params.readout
    h0 = jnp.zeros((xs.shape[1], layer.S.shape[1]), xs.dtype)
    recurrence = cell.recurrence(layer)
    first = LOOP_VARIANTS[0]
    thunks: dict = {}
    differences: dict = {}
    for split in SPLITS:
        _, (projected, residuals, hs_bar, stored) = gradient(
            cell, first, split, cell.product_variants[0], intermediates=True
        )(params, xs, ys)
        for variant in cell.product_variants:
            name = f"floor: products ({split} stored), {variant}"
            program = products(cell, split, variant)
            thunks[name] = functools.partial(program, layer, readout, xs, ys, residuals, stored)
            reference = gradient(cell, first, split, variant)(params, xs, ys).layers[0]
            differences[name] = _difference(thunks[name]()[2], tuple(reference))
        for variant in LOOP_VARIANTS:
            name = f"floor: backward loop ({split} stored), {variant}"
            program = backward_loop(cell, variant, split)
            thunks[name] = functools.partial(program, layer.S, hs_bar, residuals)
            differences[name] = _difference(thunks[name](), stored)
    for variant in LOOP_VARIANTS:
        name = f"floor: forward loop, {variant}"
        thunks[name] = functools.partial(forward_loop(cell, variant), recurrence, projected, h0)
        differences[name] = _difference(thunks[name](), residuals)
    whole = {
        f"{ONE_PROGRAM}{split} stored, {LOOP_VARIANTS[-1]}": functools.partial(
            gradient(cell, LOOP_VARIANTS[-1], split, cell.product_variants[0]), params, xs, ys
        )
        for split in SPLITS
    }
    return thunks, whole, differences


def _difference(a, b) -> float:
    errors = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y))), a, b)
    return max(jax.tree.leaves(errors))


def floor_seconds(seconds: dict) -> tuple[float, dict]:
    """The floor from the pieces' times: for each split the fastest products program and
    backward loop, with the fastest forward loop; the faster split. Returns the sum and
    the three pieces chosen."""
    forward = {n: s for n, s in seconds.items() if n.startswith("floor: forward loop,")}
    best_forward = min(forward, key=forward.get)
    totals = {}
    for split in SPLITS:
        chosen = {best_forward: forward[best_forward]}
        for part in ("floor: products", "floor: backward loop"):
            prefix = f"{part} ({split} stored),"
            candidates = {n: s for n, s in seconds.items() if n.startswith(prefix)}
            best = min(candidates, key=candidates.get)
            chosen[best] = candidates[best]
        totals[split] = chosen
    best_split = min(totals, key=lambda split: sum(totals[split].values()))
    return sum(totals[best_split].values()), totals[best_split]
