"""The Ω diagnostics of GRU, LSTM and minGRU layers: Ω follows the cell's carry (`h` for a
GRU or a minGRU, the concatenated `(h, c)` for an LSTM), Ω(i+1, i) = ∂carry_{i+1}/∂carry_i.

Oracle, written here independently of the library: the cell's equations (PyTorch's)
on ONE sample's flat state vector, a plain `lax.scan` that runs the steps i+1 … j from
a given state, the derivative of the state at step j with respect to the state at step i
(Ω(j, i), by `jax.jacfwd`) and `jax.grad` of the loss at step j alone with respect to the state at step i
(G(j, i) = ∂L_j/∂carry_i). Lyapunov exponents: NumPy's QR of the explicit one-step
Jacobians. All in float64, to 1e-10.

A gated layer below another (layer 0 of a two-layer stack) is checked the same way, with
the layer above's equations written out too: each sequence alone, G(j, i) = P_j Ω(j, i),
where P_j is `jax.grad` of the whole cost with respect to the layer's outputs h_j as the
layer above reads them ([P_j, 0] for an LSTM). Token inputs are read by the oracle as
their one-hot rows, which the library must match. Below a bidirectional layer, with
ragged lengths, each sequence is cut to its length and both directions of the layer
above are written out (the backward one from the sequence's own last step).
"""

from __future__ import annotations

import functools
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE

import dprnn_jax as dj
from dprnn_jax.cli import main

T, M, N, D, K = 8, 2, 3, 3, 4
TOL = 1e-10
CELLS = ("gru", "lstm")


def make_problem(cell: str, *, bidirectional: bool = False):
    """A one-layer network of `cell`, its weights perturbed away from PyTorch's
    initialisation so that the gates are far from 1/2, inputs and class targets."""
    keys = jax.random.split(jax.random.key(3), 4)
    params = dj.init_rnn(
        keys[0], N, (D,), K, cell=cell, bidirectional=bidirectional, dtype=jnp.float64
    )
    leaves, treedef = jax.tree.flatten(params)
    noise = jax.random.split(keys[1], len(leaves))
    params = treedef.unflatten(
        [p + 0.5 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, noise)]
    )
    xs = jax.random.normal(keys[2], (T, M, N), jnp.float64)
    targets = jax.random.randint(keys[3], (T, M), 0, K)
    return params, xs, targets


def oracle_step(cell: str, layer, state, x):
    """One step of one sample: state (D,) = h, or [h, c] for an LSTM."""
    sigmoid = jax.nn.sigmoid
    if cell == "elman":
        return jnp.tanh(layer.W @ x + layer.S @ state + layer.b)
    if cell == "mingru":  # Feng et al. (2024): the gates read the input only
        z = sigmoid(layer.W[:D] @ x + layer.b[:D])
        return (1 - z) * state + z * (layer.W[D:] @ x + layer.b[D:])
    gi = layer.W @ x + layer.b_ih
    if cell == "gru":
        h = state
        gh = layer.S @ h + layer.b_hh
        r = sigmoid(gi[:D] + gh[:D])
        z = sigmoid(gi[D : 2 * D] + gh[D : 2 * D])
        n = jnp.tanh(gi[2 * D :] + r * gh[2 * D :])
        return (1 - z) * n + z * h
    h, c = state[:D], state[D:]
    a = gi + layer.S @ h + layer.b_hh
    i, f, g, o = (
        sigmoid(a[:D]),
        sigmoid(a[D : 2 * D]),
        jnp.tanh(a[2 * D : 3 * D]),
        sigmoid(a[3 * D :]),
    )
    c = f * c + i * g
    return jnp.concatenate([o * jnp.tanh(c), c])


@functools.cache
def oracle(cell: str):
    """Per sample v and pair (j, i): Ω(j, i) (T, T, M, W, W) and ∂L_j/∂state_i
    (T, T, M, W), W the state's width; zero where j < i."""
    params, xs, targets = make_problem(cell)
    layer, readout = params.layers[0], params.readout
    width = 2 * D if cell == "lstm" else D
    step = functools.partial(oracle_step, cell, layer)

    def states(x):  # x (T, N) of one sample -> states (T, W)
        return jax.lax.scan(lambda s, x_t: (step(s, x_t),) * 2, jnp.zeros(width), x)[1]

    def propagate(state, i, j, x):  # the state at step j from the state at step i
        def run(s, t_x):
            t, x_t = t_x
            return jnp.where((i < t) & (t <= j), step(s, x_t), s), None

        return jax.lax.scan(run, state, (jnp.arange(T), x))[0]

    def loss_at(state, i, j, x, y):  # L_j = (1/M) · loss of this sample at step j
        logits = readout.W @ propagate(state, i, j, x)[:D] + readout.b
        return -jax.nn.log_softmax(logits)[y] / M

    def per_sample(x, y):
        s = states(x)
        pairs = jnp.arange(T)
        jac = jax.vmap(
            jax.vmap(lambda j, i: jax.jacfwd(propagate)(s[i], i, j, x), (None, 0)), (0, None)
        )(pairs, pairs)
        grad = jax.vmap(
            jax.vmap(lambda j, i: jax.grad(loss_at)(s[i], i, j, x, y[j]), (None, 0)), (0, None)
        )(pairs, pairs)
        return jac, grad

    program = jax.jit(jax.vmap(per_sample, (1, 1), (2, 2)), compiler_options=CHEAP_COMPILE)
    jac, grad = program(xs, targets)
    below = np.tril(np.ones((T, T), bool))[:, :, None]
    return (
        np.where(below[..., None, None], np.asarray(jac), 0.0),
        np.where(below[..., None], np.asarray(grad), np.nan),
    )


def lower_triangle(values):
    """NaN where j < i, as the diagnostics report it."""
    below = np.tril(np.ones((T, T), bool))
    return np.where(below.reshape(below.shape + (1,) * (values.ndim - 2)), values, np.nan)


def numpy_qr_exponents(one_step, burn_in):
    """Benettin's algorithm with NumPy's QR on explicit Jacobians (T−1, M, W, W)."""
    logs = []
    for v in range(one_step.shape[1]):
        frame = np.eye(one_step.shape[-1])
        for t in range(one_step.shape[0]):
            frame, r = np.linalg.qr(one_step[t, v] @ frame)
            if t >= burn_in:
                logs.append(np.log(np.abs(np.diag(r))))
    return np.sort(np.mean(logs, axis=0))[::-1]


BURN_IN, MAX_LAG = 2, 4


# Every diagnostic in one program (compiling dominates the cost of these tests).
@functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
def library(params, xs, targets):
    return {
        "matrix": dj.omega_matrix(params, xs),
        "norms": dj.omega_norms(params, xs),
        "flow": dj.gradient_flow(params, xs, targets),
        "qr": dj.lyapunov_qr(params, xs, burn_in=BURN_IN),
        "estimate": dj.lyapunov_exponent(params, xs, max_lag=MAX_LAG, burn_in=BURN_IN),
        "bound": dj.decay_bound(params, xs),
    }


# One test per cell, so that its oracle is built once; minGRU's Jacobians are diagonal.
@pytest.mark.parametrize("cell", (*CELLS, "mingru"))
def test_diagnostics_of_a_gated_cell_follow_its_carry(x64, cell, tmp_path):
    params, xs, targets = make_problem(cell)
    jac, grad = oracle(cell)
    width = 2 * D if cell == "lstm" else D
    results = library(params, xs, targets)

    # Ω(j, i) = ∂carry_j/∂carry_i, and its norms.
    np.testing.assert_allclose(results["matrix"], jac, rtol=0, atol=TOL)
    norms = results["norms"]
    spectral = np.linalg.svd(jac, compute_uv=False)[..., 0]
    frobenius = np.sqrt((jac**2).sum(axis=(-2, -1)))
    np.testing.assert_allclose(norms.spectral, lower_triangle(spectral), rtol=TOL, atol=0)
    np.testing.assert_allclose(norms.frobenius, lower_triangle(frobenius), rtol=TOL, atol=0)
    # The diagonal holds the identity of the whole state: √W, W = 2d for an LSTM.
    np.testing.assert_allclose(np.diagonal(norms.frobenius[..., 0]), math.sqrt(width), rtol=TOL)

    # G(j, i) = ∂L_j/∂carry_i, its norm over the batch and the state.
    flow = results["flow"]
    np.testing.assert_allclose(flow, np.sqrt((grad**2).sum(axis=(-2, -1))), rtol=TOL, atol=0)

    # Lyapunov: QR of the explicit one-step Jacobians, and the decay along the diagonals.
    steps = np.arange(T - 1)
    one_step = jac[steps + 1, steps]  # Ω(t+1, t), (T-1, M, W, W)
    spectrum = numpy_qr_exponents(one_step, BURN_IN)
    qr = results["qr"]
    assert qr.shape == (width,)
    np.testing.assert_allclose(qr, spectrum, rtol=TOL, atol=TOL)
    estimate = results["estimate"]
    mean_log_norm = np.array(
        [
            np.mean(np.log(spectral[np.arange(k, T), np.arange(T - k)]))
            for k in range(1, MAX_LAG + 1)
        ]
    )
    lags = np.arange(1, MAX_LAG + 1)
    np.testing.assert_allclose(estimate.mean_log_norm, mean_log_norm, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(estimate.exponent, np.polyfit(lags, mean_log_norm, 1)[0], rtol=TOL)
    np.testing.assert_allclose(estimate.qr_exponent, spectrum[0], rtol=TOL, atol=TOL)

    # γ = max ‖J_t‖₂ over the trajectory; no a-priori bound for a gated cell, and ‖S‖₂ of
    # the stacked gate blocks enters none.
    bound = results["bound"]
    np.testing.assert_allclose(bound.gamma, spectral[steps + 1, steps].max(), rtol=TOL)
    assert np.isnan(bound.gamma_a_priori) and np.isnan(bound.max_sigma_prime)
    assert np.isnan(bound.spectral_norm_S)

    # The plots name the followed state and render without a display (Agg).
    state = "(h, c)" if cell == "lstm" else "h"
    triangles = dj.diagnostics.plot_omega_triangles(norms, flow, state=state)
    titles = [ax.get_title() for ax in triangles.axes if ax.get_title()]
    at_i, at_j = ("(h_i, c_i)", "(h_j, c_j)") if cell == "lstm" else ("h_i", "h_j")
    assert titles[0].startswith(f"‖Ω(j, i)‖₂ = ‖∂{at_j}/∂{at_i}‖₂"), titles
    assert f"∂L_j/∂{at_i}" in titles[1], titles
    decay = dj.diagnostics.plot_decay(estimate, gamma=bound)
    for name, figure in (("triangles.png", triangles), ("decay.png", decay)):
        figure.savefig(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def readout_cotangent(params, hs, targets):
    """∂C/∂hs (T, M, D) of the cost C = Σ_j L_j at the readout, written out:
    (softmax(ŷ_j) − onehot(y_j)) · W / M."""
    logits = hs @ params.readout.W.T + params.readout.b
    error = jax.nn.softmax(logits) - jax.nn.one_hot(targets, K, dtype=hs.dtype)
    return error @ params.readout.W / M


def relative_diagonal_sizes(grad):
    """‖D_k‖_F / ‖Σ_{k' ≤ k} D_k'‖_F for k = 1 … T−1 (index k − 1), from the oracle's
    G(i+k, i) = ∂L_{i+k}/∂state_i: the diagonals D_k = {G(i+k, i)}_i of the fill."""
    total = np.stack([grad[i, i] for i in range(T)])  # rows i, (T, M, W)
    sizes = []
    for k in range(1, T):
        diagonal = np.zeros_like(total)
        diagonal[: T - k] = np.stack([grad[i + k, i] for i in range(T - k)])
        total = total + diagonal
        sizes.append(np.linalg.norm(diagonal) / np.linalg.norm(total))
    return np.array(sizes)


@functools.partial(jax.jit, static_argnums=(0, 4, 5), compiler_options=CHEAP_COMPILE)
def tolerance_comparison(cell, layer, xs, hs_bar, tol, truncation):
    """The report, and the layer's gradients with Omega(tol) and Omega(truncation)."""
    report = dj.tolerance_report(layer, xs, hs_bar, tol=tol)

    def cost(layer, method):
        if cell == "gru":
            return jnp.sum(dj.gru_layer(layer, xs, method=method) * hs_bar)
        return jnp.sum(dj.lstm_layer(layer, xs, method=method)[0] * hs_bar)

    adaptive = jax.grad(cost)(layer, dj.Omega(tol=tol))
    truncated = jax.grad(cost)(layer, dj.Omega(truncation=truncation))
    return report, adaptive, truncated


@pytest.mark.parametrize("cell", CELLS)
def test_tolerance_report_of_a_gated_layer(x64, cell):
    """The adaptive fill over the carry: K_eff and the last diagonal's relative size
    against the oracle's G(i+k, i), and the layer's Omega(tol) gradient is the
    Omega(truncation=K_eff) one, i.e. the report says what the backward did."""
    params, xs, targets = make_problem(cell)
    _, grad = oracle(cell)
    layer = params.layers[0]
    hs = dj.gru_layer(layer, xs) if cell == "gru" else dj.lstm_layer(layer, xs)[0]
    hs_bar = readout_cotangent(params, hs, targets)
    sizes = relative_diagonal_sizes(grad)
    # Exact (all T − 1 diagonals), and just above the relative size of the 2nd and the
    # 4th diagonal: the fill stops at the first diagonal at or below tol.
    for tol in (0.0, sizes[1] * (1 + 1e-6), sizes[3] * (1 + 1e-6)):
        below = np.flatnonzero(sizes <= tol)
        expected = int(below[0]) + 1 if below.size else T - 1
        report, adaptive, truncated = tolerance_comparison(cell, layer, xs, hs_bar, tol, expected)
        assert int(report.diagonals) == expected and report.max_diagonals == T - 1
        np.testing.assert_allclose(report.last_relative_size, sizes[expected - 1], rtol=1e-8)
        for a, b in zip(jax.tree.leaves(adaptive), jax.tree.leaves(truncated)):
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


LENGTHS = (T, 5)


@functools.cache
def bidirectional_oracle():
    """The backward direction of a bidirectional LSTM layer on a right-padded batch, at
    the network's time steps: per sequence v of length L, run alone on its reversed
    valid inputs, Ω(j, i) = ∂state←_j/∂state←_i and ∂L_j/∂state←_i for j ≤ i < L (the
    forward direction a constant); NaN elsewhere."""
    params, xs, targets = make_problem("lstm", bidirectional=True)
    layer, readout = params.layers[0], params.readout
    forward_step = functools.partial(oracle_step, "lstm", layer.forward)
    backward_step = functools.partial(oracle_step, "lstm", layer.backward)
    width = 2 * D
    jac = np.full((T, T, M, width, width), np.nan)
    grad = np.full((T, T, M, width), np.nan)

    def run(step, x):
        return jax.lax.scan(lambda s, x_t: (step(s, x_t),) * 2, jnp.zeros(width), x)[1]

    @functools.partial(jax.jit, static_argnums=0, compiler_options=CHEAP_COMPILE)
    def one_sequence(L, x, y):
        forward = run(forward_step, x)  # (L, W), network order
        reversed_x = x[::-1]
        backward = run(backward_step, reversed_x)  # run order: step r reads x[L-1-r]

        def propagate(state, r, r_end):
            def body(s, r_x):
                r_t, x_t = r_x
                return jnp.where((r < r_t) & (r_t <= r_end), backward_step(s, x_t), s), None

            return jax.lax.scan(body, state, (jnp.arange(L), reversed_x))[0]

        def loss_at(state, i, j):  # L_j from the backward state at network step i ≥ j
            h_backward = propagate(state, L - 1 - i, L - 1 - j)[:D]
            logits = readout.W @ jnp.concatenate([forward[j, :D], h_backward]) + readout.b
            return -jax.nn.log_softmax(logits)[y[j]] / M

        def pair(j, i):
            start = backward[L - 1 - i]
            return (
                jax.jacfwd(propagate)(start, L - 1 - i, L - 1 - j),
                jax.grad(loss_at)(start, i, j),
            )

        steps = jnp.arange(L)
        return jax.vmap(jax.vmap(pair, (None, 0)), (0, None))(steps, steps)

    for v, L in enumerate(LENGTHS):
        jac_v, grad_v = one_sequence(L, xs[:L, v], targets[:L, v])
        upper = np.triu(np.ones((L, L), bool))  # j ≤ i: the backward direction's side
        jac[:L, :L, v] = np.where(upper[..., None, None], jac_v, np.nan)
        grad[:L, :L, v] = np.where(upper[..., None], grad_v, np.nan)
    return jac, grad


def test_diagnostics_of_the_backward_lstm_direction_with_lengths(x64):
    params, xs, targets = make_problem("lstm", bidirectional=True)
    jac, grad = bidirectional_oracle()
    where = dict(direction="backward", lengths=jnp.array(LENGTHS))
    program = jax.jit(
        lambda params, xs, targets: (
            dj.omega_norms(params, xs, **where),
            dj.gradient_flow(params, xs, targets, **where),
        ),
        compiler_options=CHEAP_COMPILE,
    )
    norms, flow = program(params, xs, targets)
    spectral = np.linalg.svd(np.nan_to_num(jac), compute_uv=False)[..., 0]
    spectral = np.where(np.isnan(jac[..., 0, 0]), np.nan, spectral)
    np.testing.assert_allclose(norms.spectral, spectral, rtol=TOL, atol=0)
    # The norm over the sequences for which both steps are valid; NaN where none is.
    squared = (grad**2).sum(axis=-1)
    expected = np.where(
        np.isnan(squared).all(axis=-1), np.nan, np.sqrt(np.nansum(squared, axis=-1))
    )
    np.testing.assert_allclose(flow, expected, rtol=TOL, atol=0)


def test_tolerance_report_of_the_backward_lstm_direction_with_lengths(x64):
    """The backward direction's fill runs on each sequence reversed within its length:
    the report equals that of the lone backward LSTM on inputs and cotangents reversed
    by hand; NaN padding (inputs and cotangent) changes nothing."""
    params, xs, _ = make_problem("lstm", bidirectional=True)
    layer = params.layers[0]
    hs_bar = np.asarray(jax.random.normal(jax.random.key(5), (T, M, 2 * D), jnp.float64))
    reversed_xs, reversed_bar = np.zeros_like(xs), np.zeros((T, M, D))
    padded_xs, padded_bar = np.array(xs), hs_bar.copy()
    for v, length in enumerate(LENGTHS):
        reversed_xs[:length, v] = np.asarray(xs)[:length, v][::-1]
        reversed_bar[:length, v] = hs_bar[:length, v, D:][::-1]
        padded_xs[length:, v] = np.nan
        padded_bar[length:, v] = np.nan
    lengths = jnp.array(LENGTHS)

    @functools.partial(jax.jit, static_argnums=0, compiler_options=CHEAP_COMPILE)
    def reports(tol, xs, hs_bar, lone_xs, lone_bar):
        return (
            dj.tolerance_report(layer, xs, hs_bar, tol=tol, direction="backward", lengths=lengths),
            dj.tolerance_report(layer.backward, lone_xs, lone_bar, tol=tol, lengths=lengths),
        )

    exact, _ = reports(0.0, xs, hs_bar, reversed_xs, reversed_bar)
    assert int(exact.diagonals) == T - 1
    bidirectional, lone = reports(0.1, padded_xs, padded_bar, reversed_xs, reversed_bar)
    assert 1 <= int(bidirectional.diagonals) < T - 1
    assert int(bidirectional.diagonals) == int(lone.diagonals)
    np.testing.assert_allclose(bidirectional.last_relative_size, lone.last_relative_size, rtol=TOL)


# A gated layer below another layer: the error injected into it comes through the layer
# above. Each case inspects layer 0 of a two-layer stack; between them, each stack sees
# float and token inputs, with and without lengths.
STACK_T, STACK_MAX_LAG, STACK_BURN_IN = 6, 3, 1
STACK_CASES = (
    (("gru", "elman"), False, (STACK_T, 4)),
    (("gru", "elman"), True, None),
    (("lstm", "gru"), False, None),
    (("lstm", "gru"), True, (STACK_T, 4)),
)


def make_stack_problem(cells: tuple[str, str], tokens: bool, *, bidirectional: bool = False):
    """A stack of two layers of D units, weights drawn as PyTorch's initialisation plus
    0.5·N(0, 1) noise (gates far from 1/2), STACK_T steps of float inputs (n = N) or of
    tokens into N words (padding included), and class targets. With `bidirectional`, the
    upper layer has a backward direction too (drawn after the forward one) and the
    readout reads both, 2D wide. All made on the host (`device_put` compiles nothing, an
    eager `jax.random` or `init_rnn` would)."""
    rng = np.random.default_rng(7)

    def draw(*shape):
        bound = 1 / math.sqrt(D)
        values = rng.uniform(-bound, bound, shape) + 0.5 * rng.standard_normal(shape)
        return jax.device_put(values)

    def one_layer(cell, n):
        if cell == "elman":
            return dj.LayerParams(draw(D, n), draw(D, D), draw(D))
        gates = 3 * D if cell == "gru" else 4 * D
        kind = dj.GRUParams if cell == "gru" else dj.LSTMParams
        return kind(draw(gates, n), draw(gates, D), draw(gates), draw(gates))

    layers, n = [], N
    for cell in cells:
        layers.append(one_layer(cell, n))
        n = D
    if bidirectional:
        layers[-1] = dj.BidirectionalParams(layers[-1], one_layer(cells[-1], D))
    width = 2 * D if bidirectional else D
    params = dj.RNNParams(tuple(layers), dj.ReadoutParams(draw(K, width), draw(K)))
    if tokens:
        xs = jax.device_put(rng.integers(0, N, (STACK_T, M)).astype(np.int32))
    else:
        xs = jax.device_put(rng.standard_normal((STACK_T, M, N)))
    targets = jax.device_put(rng.integers(0, K, (STACK_T, M)).astype(np.int32))
    return params, xs, targets


def stack_oracle(cells: tuple[str, str], params, x, y, length):
    """One sequence alone: x (T, n) floats (one-hot rows for tokens), y (T,), its length.

    Returns Ω(j, i) = ∂state_j/∂state_i of layer 0 (T, T, W, W) and G(j, i) = P_j Ω(j, i)
    (T, T, W), where P_j = ∂C/∂h_j is `jax.grad` of the cost C = (1/M) Σ_{t < length}
    loss_t with respect to layer 0's outputs as layer 1 reads them ([P_j, 0] for an LSTM,
    whose c no other layer reads). Layer 1 is causal, so the steps from `length` on
    (whatever their inputs) reach neither C nor any entry at valid steps.
    """
    lower, upper = params.layers
    readout = params.readout
    width = D if cells[0] == "gru" else 2 * D
    step = functools.partial(oracle_step, cells[0], lower)
    upper_step = functools.partial(oracle_step, cells[1], upper)
    steps = jnp.arange(STACK_T)
    states = jax.lax.scan(lambda s, x_t: (step(s, x_t),) * 2, jnp.zeros(width), x)[1]

    def propagate(state, i, j):  # the state at step j from the state at step i
        def run(s, t_x):
            t, x_t = t_x
            return jnp.where((i < t) & (t <= j), step(s, x_t), s), None

        return jax.lax.scan(run, state, (steps, x))[0]

    def cost(hs):  # hs (T, D): layer 0's outputs, read by layer 1
        above = jax.lax.scan(lambda s, h_t: (upper_step(s, h_t),) * 2, jnp.zeros(D), hs)[1]
        logits = above @ readout.W.T + readout.b
        losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
        return jnp.sum(jnp.where(steps < length, losses, 0.0)) / M

    injected = jax.grad(cost)(states[:, :D])
    injected = jnp.concatenate([injected, jnp.zeros((STACK_T, width - D))], axis=1)
    jac = jax.vmap(
        jax.vmap(lambda j, i: jax.jacfwd(propagate)(states[i], i, j), (None, 0)), (0, None)
    )(steps, steps)
    return jac, jnp.einsum("ja,jiab->jib", injected, jac)


@functools.partial(jax.jit, static_argnums=(0, 4), compiler_options=CHEAP_COMPILE)
def stack_comparison(cells, params, xs, targets, lengths):
    """The library's diagnostics of layer 0 and the oracle's, in one program."""
    where = dict(layer=0, lengths=None if lengths is None else jnp.array(lengths))
    library = {
        "matrix": dj.omega_matrix(params, xs, **where),
        "norms": dj.omega_norms(params, xs, **where),
        "flow": dj.gradient_flow(params, xs, targets, **where),
        "estimate": dj.lyapunov_exponent(
            params, xs, max_lag=STACK_MAX_LAG, burn_in=STACK_BURN_IN, **where
        ),
    }
    # Tokens must give what their one-hot rows give.
    dense = jax.nn.one_hot(xs, N, dtype=jnp.float64) if xs.ndim == 2 else xs
    alone = jnp.array((STACK_T,) * M if lengths is None else lengths)
    oracle = jax.vmap(functools.partial(stack_oracle, cells, params), (1, 1, 0), (2, 2))
    return library, oracle(dense, targets, alone)


@pytest.mark.parametrize(
    ("cells", "tokens", "lengths"),
    STACK_CASES,
    ids=[
        f"{'-'.join(cells)}-{'tokens' if tokens else 'floats'}-{'lengths' if lengths else 'full'}"
        for cells, tokens, lengths in STACK_CASES
    ],
)
def test_diagnostics_of_a_gated_layer_below_another(x64, cells, tokens, lengths):
    params, xs, targets = make_stack_problem(cells, tokens)
    results, (jac, flow) = stack_comparison(cells, params, xs, targets, lengths)
    jac, flow = np.asarray(jac), np.asarray(flow)
    steps = np.arange(STACK_T)
    alone = np.array((STACK_T,) * M if lengths is None else lengths)
    valid = steps[:, None] < alone[None, :]  # (T, M)
    both = valid[:, None, :] & valid[None, :, :]  # (T, T, M)
    below = np.tril(np.ones((STACK_T, STACK_T), bool))[:, :, None]  # j ≥ i

    # Ω(j, i) of layer 0: zero where j < i, NaN at a padded step.
    expected = np.where(below[..., None, None], jac, 0.0)
    expected = np.where(both[..., None, None], expected, np.nan)
    np.testing.assert_allclose(results["matrix"], expected, rtol=0, atol=TOL)
    norms = results["norms"]
    shown = below & both
    spectral = np.linalg.svd(jac, compute_uv=False)[..., 0]
    frobenius = np.sqrt((jac**2).sum(axis=(-2, -1)))
    np.testing.assert_allclose(norms.spectral, np.where(shown, spectral, np.nan), rtol=TOL)
    np.testing.assert_allclose(norms.frobenius, np.where(shown, frobenius, np.nan), rtol=TOL)

    # G(j, i) = P_j Ω(j, i), its norm over the sequences for which j and i are valid.
    squared = np.where(shown, (flow**2).sum(axis=-1), 0.0).sum(axis=-1)
    expected_flow = np.where(shown.any(axis=-1), np.sqrt(squared), np.nan)
    np.testing.assert_allclose(results["flow"], expected_flow, rtol=TOL, atol=0)

    # The mean log-norm of Ω(i+k, i) over the windows inside each sequence, and its slope.
    lags = np.arange(1, STACK_MAX_LAG + 1)
    mean_log_norm = np.array(
        [
            np.mean([np.log(spectral[i + k, i, v]) for v in range(M) for i in range(alone[v] - k)])
            for k in lags
        ]
    )
    estimate = results["estimate"]
    np.testing.assert_allclose(estimate.mean_log_norm, mean_log_norm, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(estimate.exponent, np.polyfit(lags, mean_log_norm, 1)[0], rtol=TOL)


# A gated layer below a BIDIRECTIONAL layer, with ragged lengths: the error injected into
# layer 0 at step j also comes from the later steps, through the upper layer's backward
# direction, which starts at each sequence's own last step.
BIDIRECTIONAL_LENGTHS = (STACK_T - 1, 3)  # the last step is padding in every sequence
BIDIRECTIONAL_CASES = (("lstm", "gru"),)


def bidirectional_stack_oracle(cells: tuple[str, str], params, x, y):
    """One sequence alone, cut to its length L: x (L, N), y (L,).

    Returns Ω(j, i) of layer 0 (L, L, W, W) and G(j, i) = P_j Ω(j, i) (L, L, W), where
    P_j = ∂C/∂h_j, C = (1/M) Σ_{t < L} loss_t, with the upper bidirectional layer written
    out: its forward direction over the steps 0 … L−1, its backward direction from L−1
    down to 0, their outputs concatenated (forward first), then the readout.
    """
    L = x.shape[0]
    lower, upper = params.layers
    readout = params.readout
    width = D if cells[0] == "gru" else 2 * D
    step = functools.partial(oracle_step, cells[0], lower)
    forward_step = functools.partial(oracle_step, cells[1], upper.forward)
    backward_step = functools.partial(oracle_step, cells[1], upper.backward)
    steps = jnp.arange(L)

    def run(one_step, start, inputs):
        return jax.lax.scan(lambda s, x_t: (one_step(s, x_t),) * 2, start, inputs)[1]

    states = run(step, jnp.zeros(width), x)

    def propagate(state, i, j):  # the state at step j from the state at step i
        def body(s, t_x):
            t, x_t = t_x
            return jnp.where((i < t) & (t <= j), step(s, x_t), s), None

        return jax.lax.scan(body, state, (steps, x))[0]

    def cost(hs):  # hs (L, D): layer 0's outputs, read by both directions of layer 1
        forward = run(forward_step, jnp.zeros(D), hs)
        backward = run(backward_step, jnp.zeros(D), hs[::-1])[::-1]  # step t reads h_t
        logits = jnp.concatenate([forward, backward], axis=1) @ readout.W.T + readout.b
        losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
        return jnp.sum(losses) / M

    injected = jax.grad(cost)(states[:, :D])
    injected = jnp.concatenate([injected, jnp.zeros((L, width - D))], axis=1)
    jac = jax.vmap(
        jax.vmap(lambda j, i: jax.jacfwd(propagate)(states[i], i, j), (None, 0)), (0, None)
    )(steps, steps)
    return jac, jnp.einsum("ja,jiab->jib", injected, jac)


@functools.partial(jax.jit, static_argnums=0, compiler_options=CHEAP_COMPILE)
def bidirectional_stack_comparison(cells, params, xs, targets):
    """The library's diagnostics of layer 0 and, per sequence, the oracle's: one program."""
    where = dict(layer=0, lengths=jnp.array(BIDIRECTIONAL_LENGTHS))
    library = {
        "matrix": dj.omega_matrix(params, xs, **where),
        "norms": dj.omega_norms(params, xs, **where),
        "flow": dj.gradient_flow(params, xs, targets, **where),
    }
    alone = [
        bidirectional_stack_oracle(cells, params, xs[:L, v], targets[:L, v])
        for v, L in enumerate(BIDIRECTIONAL_LENGTHS)
    ]
    return library, alone


@pytest.mark.parametrize("cells", BIDIRECTIONAL_CASES, ids="-bidirectional-".join)
def test_diagnostics_of_a_gated_layer_below_a_bidirectional_one(x64, cells):
    params, xs, targets = make_stack_problem(cells, False, bidirectional=True)
    results, alone = bidirectional_stack_comparison(cells, params, xs, targets)
    width = D if cells[0] == "gru" else 2 * D
    # The sequences' results at the network's steps, NaN at their padded steps.
    jac = np.full((STACK_T, STACK_T, M, width, width), np.nan)
    flow = np.full((STACK_T, STACK_T, M, width), np.nan)
    for v, ((jac_v, flow_v), L) in enumerate(zip(alone, BIDIRECTIONAL_LENGTHS)):
        jac[:L, :L, v], flow[:L, :L, v] = jac_v, flow_v
    steps = np.arange(STACK_T)
    valid = steps[:, None] < np.array(BIDIRECTIONAL_LENGTHS)[None, :]  # (T, M)
    both = valid[:, None, :] & valid[None, :, :]  # (T, T, M)
    below = np.tril(np.ones((STACK_T, STACK_T), bool))[:, :, None]  # j ≥ i

    # Ω(j, i) of layer 0: zero where j < i, NaN at a padded step.
    expected = np.where(below[..., None, None] | ~both[..., None, None], jac, 0.0)
    np.testing.assert_allclose(results["matrix"], expected, rtol=0, atol=TOL)
    shown = below & both
    spectral = np.linalg.svd(np.nan_to_num(jac), compute_uv=False)[..., 0]
    np.testing.assert_allclose(
        results["norms"].spectral, np.where(shown, spectral, np.nan), rtol=TOL
    )

    # G(j, i) = P_j Ω(j, i), its norm over the sequences for which j and i are valid.
    squared = np.where(shown, np.nan_to_num(flow**2).sum(axis=-1), 0.0).sum(axis=-1)
    expected_flow = np.where(shown.any(axis=-1), np.sqrt(squared), np.nan)
    np.testing.assert_allclose(results["flow"], expected_flow, rtol=TOL, atol=0)


def test_omega_command_on_a_fresh_gru(tmp_path, capsys):
    out = tmp_path / "gru"
    argv = ["omega", "--cell", "gru", "--out", str(out), "--T", "6", "--batch", "2"]
    # `--method autodiff` spares compiling a second backward: the gradients of every
    # algorithm through GRU layers are tested against jax.grad in tests/test_cells.py.
    assert main([*argv, "--hidden", "3", "--method", "autodiff"]) == 0
    summary = json.loads((out / "omega_summary.json").read_text())
    assert (summary["cell"], summary["state"], summary["state_width"]) == ("gru", "h", 3)
    assert summary["gamma_a_priori"] is None and summary["max_sigma_prime"] is None
    assert summary["spectral_norm_S"] is None  # of the stacked (3d, d) gate blocks: no bound
    # λ₁ ≤ log γ with γ = max ‖J_t‖₂: every factor of Ω(i+k, i) has norm ≤ γ.
    assert summary["lyapunov_qr"] <= math.log(summary["gamma"]) + 1e-6
    assert summary["method_gradient_relative_error"] == 0
    for name in ("omega_triangles.png", "omega_decay.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr()
    assert "GRU" in printed.out and "max one-step norm" in printed.out
    stages = re.findall(r"^\[\d/5\]", printed.err, re.M)  # progress, one line per stage
    assert stages == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"], printed.err
    # λ₁ by both estimates, with the caveat exactly when they disagree.
    caveat = "caveat: λ₁ =" in printed.out
    assert caveat is not summary["lyapunov_consistent"], (summary, printed.out)


def test_bad_input_to_the_diagnostics_of_a_gated_cell(x64):
    params, xs, targets = make_problem("lstm")
    layer = params.layers[0]
    with pytest.raises(ValueError, match=r"h0 must be the pair \(h0, c0\).*got an array of shape"):
        dj.omega_norms(layer, xs, jnp.zeros((M, D)))
    # Inputs of the wrong width are refused by every diagnostic, not broadcast.
    bidirectional = make_problem("gru", bidirectional=True)[0]
    calls = (
        lambda wrong: dj.omega_norms(params, wrong),
        lambda wrong: dj.omega_matrix(layer, wrong),
        lambda wrong: dj.gradient_flow(params, wrong, targets),
        lambda wrong: dj.lyapunov_exponent(params, wrong),
        lambda wrong: dj.lyapunov_qr(layer, wrong),
        lambda wrong: dj.decay_bound(params, wrong),
        lambda wrong: dj.tolerance_report(layer, wrong, jnp.ones((T, M, D)), tol=0.1),
        lambda wrong: dj.omega_norms(bidirectional, wrong, direction="backward"),
    )
    for n in (N - 1, N + 1):
        for call in calls:
            with pytest.raises(ValueError, match=rf"xs has {n} features .* expects {N} input"):
                call(jnp.ones((T, M, n)))
    # A stack's inputs are named as rnn_forward names them, whichever layer is inspected.
    stack = dj.init_rnn(jax.random.key(0), N, (D, D), K, cell="gru", dtype=jnp.float64)
    for inspected in (0, 1):
        with pytest.raises(ValueError, match=r"but params\.layers\[0\]\.W has shape"):
            dj.omega_norms(stack, jnp.ones((T, M, N + 1)), layer=inspected)
    with pytest.raises(TypeError, match=r"xs has dtype float32 but params.layers\[0\].W has"):
        dj.omega_norms(params, xs.astype(jnp.float32))
    with pytest.raises(ValueError, match="direction='backward' needs a bidirectional layer"):
        dj.omega_norms(layer, xs, direction="backward")
    with pytest.raises(
        ValueError, match=r"hs_bar must have shape .* = \(8, 2, 3\), got \(8, 2, 6\)"
    ):
        dj.tolerance_report(layer, xs, jnp.ones((T, M, 2 * D)), tol=1e-3)
    broken = layer._replace(S=layer.S[:, :2])
    with pytest.raises(ValueError, match=r"params\.S"):
        dj.omega_norms(broken, xs)
    with pytest.raises(SystemExit):
        main(["omega", "--cell", "rnn", "--out", "unused"])
