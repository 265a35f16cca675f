"""Side-by-side timings of one full gradient of the sequence loss, in ONE process.

    python scripts/benchmark.py [--out results] [--rounds 15] [--quick] [--floor]

Contenders, all computing ∂C/∂params of the same model (one tanh Elman layer of d units
on n = d inputs, a linear readout to k = 10 classes, softmax cross-entropy summed over
steps and averaged over the batch), float32:

* every `dprnn_jax` method (`omega`, blocked `omega`, `bptt`; `naive` on small T only);
* `jax.grad` through a hand-written `lax.scan` Elman cell: what a JAX user writes; the
  reference of every ratio;
* Flax `nn.RNN(nn.SimpleCell)` + `nn.Dense` with `jax.grad`, if flax is installed;
* PyTorch `nn.RNN` + `nn.Linear` with `loss.backward()` on CPU, if torch is installed.

Timing protocol: every contender is compiled and run twice (warm-up, compile excluded),
then the contenders are run in ALTERNATING order (a new seeded random order each round)
for `rounds` rounds and the median per contender is reported, so that load from other
processes hits all of them alike. Only ratios measured in the same run are meaningful.

Also reported: peak temporary memory of each compiled gradient
(`compile().memory_analysis().temp_size_in_bytes`), including a T = 4096 comparison of
the Ω backward against `jax.grad`; the achieved GFLOP/s of the Ω backward next to a plain
matmul with the same total number of rows on the same machine (its roofline); and
omega against naive for T ∈ {32, 64, 128}.

First, the floor comparison (docs/performance.md#floor): at (T, m, d) = (128, 32, 128)
and (1024, 16, 32) the fastest exact method (`bptt`, `Omega(block=1)`) against the floor
(the same work done by the fastest plain pieces: the four (T·m, d) × (d, d) GEMMs of the
gradient, one forward loop of T steps `tanh(h Sᵀ + u)`, one backward loop of T steps
`(g S) ⊙ s`) and against the best plain JAX (`jax.grad` through `lax.scan`, unroll 1, 4,
16, input projection hoisted or not); and, there and at (256, 16, 64), the Ω fill
(omega's time − bptt's) against its loop floor (T − 1 products of the average
diagonal's size with the same multiply-add). `--floor` runs only this part.

Writes results/benchmark.md and results/benchmark.json (`--floor`: benchmark_floor.*).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import dprnn_jax as dj
from dprnn_jax._algorithms.omega import omega_error_flow
from dprnn_jax._app.complexity import machine_description
from dprnn_jax._cells.elman import hoisted_layer
from dprnn_jax._cells.elman_linearisation import ElmanLinearisation
from dprnn_jax._core.jacobian import ElmanJacobian

N_CLASSES = 10
GRID = ((128, 32, 128), (1024, 16, 32), (64, 32, 64))
BLOCKS = (1, 4, 16, 64)  # swept at the first grid point
NAIVE_GRID = ((32, 8, 32), (64, 8, 32), (128, 8, 32))
MEMORY_POINT = (4096, 16, 32)
# The floor comparison (docs/performance.md#floor): the fastest exact method against the
# same work done by the fastest plain pieces, and the Ω fill against its loop floor.
FLOOR_GRID = ((128, 32, 128), (1024, 16, 32))
FILL_GRID = ((128, 32, 128), (1024, 16, 32), (256, 16, 64))
UNROLLS = (1, 4, 16)
FLOOR_TARGET = 0.9


# --------------------------------------------------------------------------- problems


def make_problem(T: int, m: int, d: int, seed: int = 0):
    k_params, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = dj.init_rnn(k_params, d, (d,), N_CLASSES)
    xs = jax.random.normal(k_x, (T, m, d), jnp.float32)
    ys = jax.random.randint(k_y, (T, m), 0, N_CLASSES)
    return params, xs, ys


def library_gradient(method: str, block: int | None = None) -> Callable:
    def loss(params, xs, ys):
        return dj.sequence_loss(params, xs, ys, method=method, block=block)

    return jax.jit(jax.grad(loss))


def scan_loss(params, xs, ys):
    """What a JAX user writes by hand: a lax.scan Elman cell, differentiated by jax.grad."""
    layer, readout = params.layers[0], params.readout

    def step(h, x):
        h = jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)
        return h, h

    h0 = jnp.zeros((xs.shape[1], layer.S.shape[0]), xs.dtype)
    _, hs = lax.scan(step, h0, xs)
    logits = hs @ readout.W.T + readout.b
    return optax.softmax_cross_entropy_with_integer_labels(logits, ys).sum() / xs.shape[1]


def flax_contender(T: int, m: int, d: int):
    """Flax `nn.RNN(nn.SimpleCell)` + `nn.Dense`, jitted `jax.grad`; None without flax."""
    try:
        from flax import linen as nn
    except ImportError:
        return None

    class Model(nn.Module):
        @nn.compact
        def __call__(self, xs):
            hs = nn.RNN(nn.SimpleCell(features=d), time_major=True)(xs)
            return nn.Dense(N_CLASSES)(hs)

    model = Model()
    _, xs, ys = make_problem(T, m, d)
    variables = model.init(jax.random.key(0), xs)

    def loss(variables, xs, ys):
        logits = model.apply(variables, xs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).sum() / xs.shape[1]

    return jax.jit(jax.grad(loss)), (variables, xs, ys)


def torch_contenders(T: int, m: int, d: int) -> tuple[dict[str, Callable], str]:
    """PyTorch `nn.RNN` + `nn.Linear` forward + `backward()` on CPU; empty without torch."""
    try:
        import torch
    except ImportError:
        return {}, "torch not installed"
    torch.manual_seed(0)
    rnn = torch.nn.RNN(d, d, nonlinearity="tanh")  # time-major (T, m, n) by default
    readout = torch.nn.Linear(d, N_CLASSES)
    _, xs, ys = make_problem(T, m, d)
    xs_t = torch.tensor(np.asarray(xs))
    ys_t = torch.tensor(np.asarray(ys, dtype=np.int64)).reshape(-1)
    parameters = [*rnn.parameters(), *readout.parameters()]

    def gradient(threads):
        torch.set_num_threads(threads)
        for p in parameters:
            p.grad = None
        hs, _ = rnn(xs_t)
        logits = readout(hs).reshape(-1, N_CLASSES)
        loss = torch.nn.functional.cross_entropy(logits, ys_t, reduction="sum") / m
        loss.backward()
        return parameters[0].grad

    # PyTorch's own best thread setting, picked by a short trial: with all cores its
    # OpenMP workers spin between calls and, on a loaded machine, can be many times
    # slower (and slow down whatever runs next), so only the faster setting is timed.
    trial = {}
    for n in sorted({1, os.cpu_count() or 1}):
        trial[n] = alternate({"torch": functools.partial(gradient, n)}, 3)["torch"]
    best = min(trial, key=trial.get)
    name = f"torch nn.RNN (CPU, {best} thread{'s' if best > 1 else ''})"
    note = f"torch {torch.__version__}; trial ms by threads: " + ", ".join(
        f"{n}: {t * 1e3:.1f}" for n, t in trial.items()
    )
    torch.set_num_threads(best)
    return {name: functools.partial(gradient, best)}, note


# --------------------------------------------------------------------------- timing


def temp_bytes(fn, *args) -> int | None:
    """Peak temporary memory of the compiled program (XLA's buffer assignment)."""
    try:
        analysis = fn.lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def alternate(
    contenders: dict[str, Callable[[], object]], rounds: int, minima: dict | None = None
) -> dict[str, float]:
    """Median seconds per contender; two warm-up calls each, then alternating rounds.

    The minimum of each contender's rounds is stored in `minima` when one is given.
    """
    for run in contenders.values():
        jax.block_until_ready(run())
        jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    shuffle = np.random.default_rng(0)  # seeded: the same orders on every run
    for _ in range(rounds):
        # A new order every round, so that no contender mostly follows the same one: a
        # rotation of a fixed order would, and what runs before a call changes its time
        # (a call right after a PyTorch call ran 15–20% slower here).
        names = [list(contenders)[i] for i in shuffle.permutation(len(contenders))]
        for name in names:
            start = time.perf_counter()
            jax.block_until_ready(contenders[name]())
            times[name].append(time.perf_counter() - start)
    if minima is not None:
        minima.update({name: float(np.min(values)) for name, values in times.items()})
    return {name: float(np.median(values)) for name, values in times.items()}


def gradient_contenders(T, m, d, *, blocks=()) -> tuple[dict, dict, str]:
    """The jitted gradients (as thunks) of one grid point, and their temp memory."""
    params, xs, ys = make_problem(T, m, d)
    args = (params, xs, ys)
    jitted: dict[str, tuple[Callable, tuple]] = {
        "jax.grad(lax.scan)": (jax.jit(jax.grad(scan_loss)), args),
        "dprnn omega": (library_gradient("omega"), args),
        "dprnn bptt": (library_gradient("bptt"), args),
    }
    for block in blocks:
        jitted[f"dprnn omega block={block}"] = (library_gradient("omega", block), args)
    flax = flax_contender(T, m, d)
    if flax is not None:
        jitted["flax nn.RNN(SimpleCell)"] = flax
    memory = {name: temp_bytes(fn, *a) for name, (fn, a) in jitted.items()}
    thunks = {name: functools.partial(fn, *a) for name, (fn, a) in jitted.items()}
    torch_thunks, torch_note = torch_contenders(T, m, d)
    thunks.update(torch_thunks)
    return thunks, memory, torch_note


def omega_throughput(T: int, m: int, d: int, rounds: int, max_rows: int) -> dict:
    """GFLOP/s of the Ω error flow alone next to plain matmuls of the same total rows.

    Two references, alternated with omega: (1) the roofline for its algorithm, a
    `fori_loop` of (T·m, d) × (d, d) products (the shape of the longest diagonal, buffers
    reused as in omega's loop) with the same total rows as omega's useful products; (2)
    ONE (rows, d) × (d, d) matmul of those rows (capped at `max_rows`), which also pays
    for touching a fresh output buffer of that size.
    """
    keys = jax.random.split(jax.random.key(3), 3)
    injected = jax.random.normal(keys[0], (T, m, d), jnp.float32)
    sigma_prime = jax.random.uniform(keys[1], (T, m, d), jnp.float32)
    Q = jax.nn.initializers.orthogonal()(keys[2], (d, d), jnp.float32)
    S = 0.9 * Q
    jacobian = ElmanJacobian(S, sigma_prime)
    flow_fn = jax.jit(omega_error_flow)
    flow = flow_fn(injected, jacobian)
    useful, performed = int(flow.products_useful), int(flow.products_performed)
    rows = min(useful * m, max_rows)
    a = jax.random.normal(jax.random.key(1), (rows, d), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    iterations = max(1, round(useful / T))

    @jax.jit
    def looped(x, Q):
        # Q is orthogonal: the iterates keep their norm (no overflow, no denormals).
        return lax.fori_loop(0, iterations, lambda _, x: x @ Q, x)

    seconds = alternate(
        {
            "omega": functools.partial(flow_fn, injected, jacobian),
            "looped matmul": functools.partial(looped, injected.reshape(T * m, d), Q),
            "matmul": functools.partial(matmul, a, S),
        },
        rounds,
    )
    flops_per_product = 2 * m * d * d
    return {
        "T": T,
        "m": m,
        "d": d,
        "products_useful": useful,
        "products_performed": performed,
        "omega_seconds": seconds["omega"],
        "omega_useful_gflops": useful * flops_per_product / seconds["omega"] / 1e9,
        "omega_performed_gflops": performed * flops_per_product / seconds["omega"] / 1e9,
        "looped_matmul_products": iterations * T,
        "looped_matmul_seconds": seconds["looped matmul"],
        "looped_matmul_gflops": iterations * T * flops_per_product / seconds["looped matmul"] / 1e9,
        "matmul_rows": rows,
        "matmul_rows_capped": rows < useful * m,
        "matmul_seconds": seconds["matmul"],
        "matmul_gflops": 2 * rows * d * d / seconds["matmul"] / 1e9,
    }


# --------------------------------------------------------------------------- floor


def plain_jax_loss(unroll: int, hoisted: bool) -> Callable:
    """`scan_loss` as a JAX user may tune it: `lax.scan(unroll=…)`, and the input projection
    of every step hoisted out of the loop (one product) or inside each step."""

    def loss(params, xs, ys):
        layer, readout = params.layers[0], params.readout
        h0 = jnp.zeros((xs.shape[1], layer.S.shape[0]), xs.dtype)
        if hoisted:
            inputs = xs @ layer.W.T + layer.b

            def step(h, u):
                h = jnp.tanh(u + h @ layer.S.T)
                return h, h

        else:
            inputs = xs

            def step(h, x):
                h = jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)
                return h, h

        _, hs = lax.scan(step, h0, inputs, unroll=unroll)
        logits = hs @ readout.W.T + readout.b
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).sum() / xs.shape[1]

    return loss


def floor_pieces(T: int, m: int, d: int) -> dict[str, Callable[[], object]]:
    """The plain pieces of one exact gradient's work, each written the fastest ways we know.

    * "4 GEMMs": X Wᵀ, ∂W, ∂S and ∂X as four (T·m, d) × (d, d) products in one program;
    * "forward loop": T steps of `h = tanh(h Sᵀ + u_t)`, every h_t stored;
    * "backward loop": T steps of `g = (g S) ⊙ s_t`, every g_t stored.

    Each loop is written as a `lax.scan` stacking its outputs (unroll 1, 4, 16) and as a
    `fori_loop` writing each step over its input row in place (no output buffer to fill
    first); the floor takes the fastest of each. The backward's `s_t` are ±1 and `S`
    orthogonal, so the iterates keep their norm (no overflow, no denormals).
    """
    keys = jax.random.split(jax.random.key(7), 8)
    rows = [jax.random.normal(keys[i], (T * m, d), jnp.float32) for i in range(4)]
    W = jax.random.normal(keys[4], (d, d), jnp.float32) / np.sqrt(d)
    S = jax.nn.initializers.orthogonal()(keys[5], (d, d), jnp.float32)
    u = jax.random.normal(keys[6], (T, m, d), jnp.float32)
    signs = jnp.sign(jax.random.normal(keys[7], (T, m, d), jnp.float32))
    h0 = jnp.zeros((m, d), jnp.float32)

    @jax.jit
    def gemms(a, b, c, e, W):
        return a @ W, b @ W, c @ W, e @ W

    def forward_scan(unroll):
        def run(S, u, h0):
            def step(h, u_t):
                h = jnp.tanh(h @ S.T + u_t)
                return h, h

            return lax.scan(step, h0, u, unroll=unroll)[1]

        return jax.jit(run)

    @jax.jit
    def forward_in_place(S, u, h0):
        def body(t, state):
            h, buffer = state
            h = jnp.tanh(
                h @ S.T
                + lax.dynamic_index_in_dim(buffer, t, keepdims=False, allow_negative_indices=False)
            )
            return h, lax.dynamic_update_index_in_dim(buffer, h, t, 0, allow_negative_indices=False)

        return lax.fori_loop(0, T, body, (h0, u))[1]

    def backward_scan(unroll):
        def run(S, s, g0):
            def step(g, s_t):
                g = (g @ S) * s_t
                return g, g

            return lax.scan(step, g0, s, reverse=True, unroll=unroll)[1]

        return jax.jit(run)

    @jax.jit
    def backward_in_place(S, s, g0):
        def body(j, state):
            g, buffer = state
            t = T - 1 - j
            g = (g @ S) * lax.dynamic_index_in_dim(
                buffer, t, keepdims=False, allow_negative_indices=False
            )
            return g, lax.dynamic_update_index_in_dim(buffer, g, t, 0, allow_negative_indices=False)

        return lax.fori_loop(0, T, body, (g0, s))[1]

    g0 = u[0]
    pieces = {"floor: 4 GEMMs": functools.partial(gemms, *rows, W)}
    for unroll in UNROLLS:
        pieces[f"floor: forward loop, scan unroll={unroll}"] = functools.partial(
            forward_scan(unroll), S, u, h0
        )
        pieces[f"floor: backward loop, scan unroll={unroll}"] = functools.partial(
            backward_scan(unroll), S, signs, g0
        )
    pieces["floor: forward loop, in place"] = functools.partial(forward_in_place, S, u, h0)
    pieces["floor: backward loop, in place"] = functools.partial(backward_in_place, S, signs, g0)
    return pieces


def fill_floor(T: int, m: int, d: int) -> tuple[Callable[[], object], int]:
    """The Ω fill's loop floor: a `fori_loop` of T−1 products of the average diagonal's
    size, ⌈T/2⌉ steps of m rows, each with the DP's multiply-add `acc += (x S) ⊙ s`.

    The fill multiplies T(T−1)/2 (m, d) rows by S in T−1 sequential diagonals; the floor
    does as many rows in as many steps, with static operands (no offsets into the
    Jacobian data or into Δ, no phases). Returns the thunk and its rows per step.
    """
    rows = -(-T // 2)
    keys = jax.random.split(jax.random.key(9), 3)
    x = jax.random.normal(keys[0], (rows, m, d), jnp.float32)
    signs = jnp.sign(jax.random.normal(keys[1], (rows, m, d), jnp.float32))
    S = jax.nn.initializers.orthogonal()(keys[2], (d, d), jnp.float32)

    @jax.jit
    def loop(x, signs, S):
        def body(_, state):
            x, accumulated = state
            x = (x @ S) * signs
            return x, accumulated + x

        return lax.fori_loop(0, T - 1, body, (x, x))[1]

    return functools.partial(loop, x, signs, S), rows


def bptt_parts(params, xs, ys) -> dict[str, Callable[[], object]]:
    """The parts of the bptt gradient, each compiled on its own: where its time goes.

    The forward layer (projection + loop), the readout and softmax cross-entropy (value
    and gradient w.r.t. the states and the readout: work the floor does not count), the
    fused backward loop, the weight contractions; and a loop of T steps doing nothing but
    one tiny elementwise update, the fixed cost of a loop step. Empty for a dprnn_jax
    older than the fused loop (to time a tree from before it with this script).
    """
    try:
        from dprnn_jax._algorithms.bptt import elman_bptt_delta
    except ImportError:
        return {}
    layer, readout = params.layers[0], params.readout
    T, m, _ = xs.shape
    h0 = jnp.zeros((m, layer.S.shape[0]), xs.dtype)
    forward = jax.jit(hoisted_layer)
    hs = forward(layer, xs, h0)

    def readout_loss(hs, readout, ys):
        logits = hs @ readout.W.T + readout.b
        return dj.per_step_losses(logits, ys, loss="softmax_cross_entropy").sum() / m

    readout_gradient = jax.jit(jax.value_and_grad(readout_loss, argnums=(0, 1)))
    hs_bar = readout_gradient(hs, readout, ys)[1][0]
    backward = jax.jit(elman_bptt_delta, static_argnums=3)
    delta = backward(hs, hs_bar, layer.S, "tanh")
    residuals = ElmanLinearisation(layer, xs, h0, hs, "tanh")
    contractions = jax.jit(lambda residuals, delta: residuals.cotangents(delta)[0])

    @jax.jit
    def empty_loop(h):
        return lax.fori_loop(0, T, lambda _, h: h * 0.5 + 1.0, h)

    return {
        "part: forward layer (projection + loop)": functools.partial(forward, layer, xs, h0),
        "part: readout + softmax CE, value and gradient": functools.partial(
            readout_gradient, hs, readout, ys
        ),
        "part: backward loop (elman_bptt_delta)": functools.partial(
            backward, hs, hs_bar, layer.S, "tanh"
        ),
        "part: weight contractions (ElmanLinearisation.cotangents)": functools.partial(
            contractions, residuals, delta
        ),
        "part: empty loop of T steps": functools.partial(empty_loop, h0),
    }


def floor_point(T: int, m: int, d: int, rounds: int, *, floor: bool, fill: bool) -> dict:
    """One grid point of the floor comparison, every program alternated in one process.

    `floor`: the exact methods, the plain-JAX sweep and the floor pieces; `fill`: omega,
    bptt and the Ω fill's loop floor.
    """
    params, xs, ys = make_problem(T, m, d)
    args = (params, xs, ys)
    programs = {
        "dprnn bptt": library_gradient("bptt"),
        "dprnn omega block=1": library_gradient("omega", 1),
    }
    if fill:
        programs["dprnn omega"] = library_gradient("omega")
    if floor:
        for unroll in UNROLLS:
            for hoisted in (False, True):
                name = f"jax.grad(lax.scan) unroll={unroll}{', hoisted' if hoisted else ''}"
                programs[name] = jax.jit(jax.grad(plain_jax_loss(unroll, hoisted)))
    thunks = {name: functools.partial(fn, *args) for name, fn in programs.items()}
    if floor:
        thunks.update(floor_pieces(T, m, d))
        thunks.update(bptt_parts(*args))
    if fill:
        thunks["fill floor"], fill_rows = fill_floor(T, m, d)
    minima: dict[str, float] = {}
    seconds = alternate(thunks, rounds, minima)
    point: dict = {
        "T": T,
        "m": m,
        "d": d,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "seconds": seconds,
        "min_seconds": minima,
    }
    exact = {name: seconds[name] for name in ("dprnn bptt", "dprnn omega block=1")}
    fastest = min(exact, key=exact.get)
    point["fastest_exact"] = fastest
    if floor:
        forward = {n: s for n, s in seconds.items() if n.startswith("floor: forward")}
        backward = {n: s for n, s in seconds.items() if n.startswith("floor: backward")}
        plain = {n: s for n, s in seconds.items() if n.startswith("jax.grad")}
        best_forward = min(forward, key=forward.get)
        best_backward = min(backward, key=backward.get)
        best_plain = min(plain, key=plain.get)
        floor_seconds = seconds["floor: 4 GEMMs"] + forward[best_forward] + backward[best_backward]
        # The same by the fastest rounds: what is left when other processes' load is not.
        floor_min = minima["floor: 4 GEMMs"] + min(minima[n] for n in forward)
        floor_min += min(minima[n] for n in backward)
        point.update(
            floor_seconds=floor_seconds,
            floor_min_seconds=floor_min,
            floor_over_fastest_min=floor_min / min(minima[n] for n in exact),
            floor_parts={
                "4 GEMMs": seconds["floor: 4 GEMMs"],
                best_forward: forward[best_forward],
                best_backward: backward[best_backward],
            },
            floor_over_bptt=floor_seconds / seconds["dprnn bptt"],
            floor_over_fastest=floor_seconds / seconds[fastest],
            best_plain=best_plain,
            best_plain_over_bptt=plain[best_plain] / seconds["dprnn bptt"],
            best_plain_over_fastest=plain[best_plain] / seconds[fastest],
        )
    if fill:
        fill_seconds = seconds["dprnn omega"] - seconds["dprnn bptt"]
        point.update(
            fill_rows=fill_rows,
            fill_seconds=fill_seconds,
            fill_floor_seconds=seconds["fill floor"],
            fill_floor_over_fill=seconds["fill floor"] / fill_seconds,
            fill_floor_over_fill_min=minima["fill floor"]
            / (minima["dprnn omega"] - minima["dprnn bptt"]),
        )
    return point


def print_floor_point(point: dict) -> None:
    T, m, d, seconds = point["T"], point["m"], point["d"], point["seconds"]
    minima = point["min_seconds"]
    print(f"\nT={T} m={m} d={d} (load {point['load_average']}), median and fastest round:")
    for name, s in sorted(seconds.items(), key=lambda item: item[1]):
        print(f"  {name:50s} {s * 1e3:9.3f} ms  {minima[name] * 1e3:9.3f} ms")
    if "floor_seconds" in point:
        fastest = point["fastest_exact"]
        print(
            f"  floor {point['floor_seconds'] * 1e3:.3f} ms; fastest exact ({fastest}) "
            f"{seconds[fastest] * 1e3:.3f} ms: floor / fastest {point['floor_over_fastest']:.0%}"
            f" (fastest rounds: {point['floor_over_fastest_min']:.0%}; target ≥ "
            f"{FLOOR_TARGET:.0%}), floor / bptt {point['floor_over_bptt']:.0%}; best plain JAX "
            f"({point['best_plain']}) ×{point['best_plain_over_fastest']:.2f} the fastest exact"
        )
    if "fill_seconds" in point:
        print(
            f"  Ω fill (omega − bptt) {point['fill_seconds'] * 1e3:.3f} ms; loop floor "
            f"({point['fill_rows']}·m rows × {T - 1} steps) "
            f"{point['fill_floor_seconds'] * 1e3:.3f} ms: {point['fill_floor_over_fill']:.0%} "
            f"(fastest rounds: {point['fill_floor_over_fill_min']:.0%}; target ≥ "
            f"{FLOOR_TARGET:.0%})"
        )


def floor_section(rounds: int, quick: bool) -> list[dict]:
    points = FILL_GRID[:1] if quick else FILL_GRID
    result = []
    for T, m, d in points:
        point = floor_point(
            T, m, d, rounds, floor=(T, m, d) in FLOOR_GRID, fill=(T, m, d) in FILL_GRID
        )
        print_floor_point(point)
        result.append(point)
    return result


def floor_markdown(points: list[dict]) -> list[str]:
    lines = [
        "## The floor: the fastest exact method against the same work done by plain pieces",
        "",
        "Floor = the four time-parallel GEMMs of the gradient (X Wᵀ, ∂W, ∂S, ∂X as "
        "(T·m, d) × (d, d) products) + one forward loop of T steps `tanh(h Sᵀ + u)` + one "
        "backward loop of T steps `(g S) ⊙ s`, each loop the fastest of `lax.scan` (unroll "
        "1, 4, 16) and an in-place `fori_loop`. Best plain JAX = the fastest `jax.grad` "
        "through `lax.scan` (unroll 1, 4, 16; input projection hoisted or not). Target: "
        f"fastest exact ≥ {FLOOR_TARGET:.0%} of the floor. Medians; in brackets the same "
        "ratio from each program's fastest round (the machine's load weighs least there).",
        "",
        "| (T, m, d) | load | floor ms | bptt ms | omega block=1 ms | floor / fastest exact "
        "| best plain JAX | its ms | its time / fastest exact |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in points:
        if "floor_seconds" not in p:
            continue
        s = p["seconds"]
        load = ", ".join(f"{x:.1f}" for x in p["load_average"]) if p["load_average"] else "—"
        lines.append(
            f"| ({p['T']}, {p['m']}, {p['d']}) | {load} | {p['floor_seconds'] * 1e3:.3f} | "
            f"{s['dprnn bptt'] * 1e3:.3f} | {s['dprnn omega block=1'] * 1e3:.3f} | "
            f"{p['floor_over_fastest']:.0%} ({p['floor_over_fastest_min']:.0%}) | "
            f"{p['best_plain']} | {s[p['best_plain']] * 1e3:.3f} | "
            f"{p['best_plain_over_fastest']:.2f} |"
        )
    lines += ["", "Floor parts and the parts of the bptt gradient (median ms):", ""]
    for p in points:
        if "floor_parts" in p:
            parts = "; ".join(f"{n}: {v * 1e3:.3f}" for n, v in p["floor_parts"].items())
            bptt = "; ".join(
                f"{n[len('part: ') :]}: {v * 1e3:.3f}"
                for n, v in p["seconds"].items()
                if n.startswith("part: ")
            )
            lines.append(f"* ({p['T']}, {p['m']}, {p['d']}): floor: {parts}. bptt: {bptt}.")
    lines += [
        "",
        "Ω fill = omega's gradient time − bptt's, against its loop floor: a `fori_loop` of "
        "T − 1 steps, each one ⌈T/2⌉·m-row product (the average diagonal) with the same "
        "multiply-add `acc += (x S) ⊙ s`, static operands.",
        "",
        "| (T, m, d) | load | omega ms | bptt ms | Ω fill ms | loop floor ms | floor / fill |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        if "fill_seconds" in p:
            s = p["seconds"]
            load = ", ".join(f"{x:.1f}" for x in p["load_average"]) if p["load_average"] else "—"
            lines.append(
                f"| ({p['T']}, {p['m']}, {p['d']}) | {load} | {s['dprnn omega'] * 1e3:.3f} | "
                f"{s['dprnn bptt'] * 1e3:.3f} | {p['fill_seconds'] * 1e3:.3f} | "
                f"{p['fill_floor_seconds'] * 1e3:.3f} | {p['fill_floor_over_fill']:.0%} "
                f"({p['fill_floor_over_fill_min']:.0%}) |"
            )
    lines.append("")
    return lines


# --------------------------------------------------------------------------- report


def summary(seconds: dict[str, float]) -> dict:
    """The fastest exact dprnn_jax method and its speed-ups over the three baselines."""
    ours = {name: s for name, s in seconds.items() if name.startswith("dprnn")}
    best = min(ours, key=ours.get)
    result = {"fastest": best, "seconds": ours[best]}
    baselines = {
        "jax.grad": [n for n in seconds if n.startswith("jax.grad")],
        "flax": [n for n in seconds if n.startswith("flax")],
        "torch": [n for n in seconds if n.startswith("torch")],
    }
    parts = [f"fastest exact: {best}"]
    for label, names in baselines.items():
        if names:
            baseline = min(seconds[n] for n in names)
            result[f"speedup_vs_{label}"] = baseline / ours[best]
            parts.append(f"×{baseline / ours[best]:.2f} vs {label}")
    result["text"] = ", ".join(parts)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default results)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (>= 10; 15)")
    parser.add_argument(
        "--max-matmul-rows", type=int, default=1 << 21, help="cap of the roofline matmul rows"
    )
    parser.add_argument("--quick", action="store_true", help="first grid point only, 10 rounds")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="only the floor comparison; writes benchmark_floor.md and .json",
    )
    parser.add_argument(
        "--cells",
        action="store_true",
        help="the GRU and LSTM rows instead (scripts/benchmark_cells.py, same options)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.cells:
        from benchmark_cells import main as cells_main

        return cells_main(
            ["--out", args.out, "--rounds", str(args.rounds), *(["--quick"] if args.quick else [])]
        )
    rounds = 10 if args.quick else args.rounds
    grid = GRID[:1] if args.quick else GRID
    started = time.perf_counter()
    machine = machine_description()
    print(f"machine: {machine}", flush=True)
    report: dict = {
        "machine": machine,
        "rounds": rounds,
        "python": platform.python_version(),
        "command": " ".join(
            ["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)]
        ),
    }

    print("\nthe floor (fastest exact method vs the same work by plain pieces):", flush=True)
    report["floor"] = floor_section(rounds, args.quick)
    if args.floor:
        report["wall_seconds"] = time.perf_counter() - started
        write_report(args.out, "benchmark_floor", report, floor_only_markdown(report))
        return 0

    report["grid"] = []
    for index, (T, m, d) in enumerate(grid):
        thunks, memory, torch_note = gradient_contenders(
            T, m, d, blocks=BLOCKS if index == 0 else ()
        )
        minima: dict[str, float] = {}
        seconds = alternate(thunks, rounds, minima)
        reference = seconds["jax.grad(lax.scan)"]
        point = {
            "T": T,
            "m": m,
            "n": d,
            "d": d,
            "k": N_CLASSES,
            "torch": torch_note,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "seconds": seconds,
            "min_seconds": minima,
            "speedup_vs_jax_grad": {name: reference / s for name, s in seconds.items()},
            "summary": summary(seconds),
            "temp_bytes": memory,
        }
        report["grid"].append(point)
        print(f"\nT={T} m={m} n=d={d} k={N_CLASSES} ({torch_note})", flush=True)
        for name, s in sorted(seconds.items(), key=lambda item: item[1]):
            mem = memory.get(name)
            mem_text = f"{mem / 2**20:8.2f} MiB" if mem is not None else "        —"
            print(f"  {name:34s} {s * 1e3:9.3f} ms  ×{reference / s:6.2f} vs jax.grad  {mem_text}")
        print("  " + point["summary"]["text"])

    print("\nomega vs naive (gradient of the sequence loss):", flush=True)
    report["naive"] = []
    for T, m, d in NAIVE_GRID:
        params, xs, ys = make_problem(T, m, d)
        thunks = {
            method: functools.partial(library_gradient(method), params, xs, ys)
            for method in ("omega", "naive")
        }
        seconds = alternate(thunks, rounds)
        ratio = seconds["naive"] / seconds["omega"]
        report["naive"].append(
            {"T": T, "m": m, "d": d, "seconds": seconds, "naive_over_omega": ratio, "target": T / 6}
        )
        print(
            f"  T={T:4d}: omega {seconds['omega'] * 1e3:8.3f} ms, naive "
            f"{seconds['naive'] * 1e3:9.3f} ms: ×{ratio:.1f} (target ≥ T/6 = {T / 6:.1f})"
        )

    print("\nΩ backward throughput vs a plain matmul of the same total rows:", flush=True)
    report["throughput"] = []
    for T, m, d in grid:
        row = omega_throughput(T, m, d, rounds, args.max_matmul_rows)
        report["throughput"].append(row)
        print(
            f"  T={T} m={m} d={d}: omega {row['omega_useful_gflops']:.1f} GFLOP/s useful "
            f"({row['omega_performed_gflops']:.1f} performed); looped (T·m, d) matmul "
            f"{row['looped_matmul_gflops']:.1f} GFLOP/s: "
            f"{row['omega_useful_gflops'] / row['looped_matmul_gflops']:.0%}; one matmul of "
            f"{row['matmul_rows']} rows {row['matmul_gflops']:.1f} GFLOP/s"
        )

    T, m, d = MEMORY_POINT
    params, xs, ys = make_problem(T, m, d)
    memory = {
        "jax.grad(lax.scan)": temp_bytes(jax.jit(jax.grad(scan_loss)), params, xs, ys),
        "dprnn omega": temp_bytes(library_gradient("omega"), params, xs, ys),
        "dprnn bptt": temp_bytes(library_gradient("bptt"), params, xs, ys),
        "dprnn omega block=16": temp_bytes(library_gradient("omega", 16), params, xs, ys),
    }
    report["memory_T4096"] = {"T": T, "m": m, "d": d, "temp_bytes": memory}
    print(f"\npeak temporary memory at T={T}, m={m}, d={d}:")
    reference = memory["jax.grad(lax.scan)"]
    for name, value in memory.items():
        ratio = value / reference if value and reference else float("nan")
        print(f"  {name:28s} {value / 2**20:8.2f} MiB  ({ratio:.2f}× jax.grad)")

    report["wall_seconds"] = time.perf_counter() - started
    write_report(args.out, "benchmark", report, markdown(report))
    return 0


def write_report(out: str, stem: str, report: dict, text: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(text)
    print(f"\nwrote {out}/{stem}.md, {out}/{stem}.json ({report['wall_seconds']:.0f} s)")


def header(report: dict, title: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Median of "
        f"{report['rounds']} rounds in random order after two warm-up calls, compile excluded, "
        "all contenders in one process. One tanh layer, n = d, "
        f"k = {N_CLASSES} classes, softmax cross-entropy, float32.",
        "",
    ]


def floor_only_markdown(report: dict) -> str:
    lines = header(report, "Benchmark: the floor comparison")
    lines += floor_markdown(report["floor"])
    lines += [f"Total benchmark time: {report['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    lines = header(report, "Benchmark: one full gradient of the sequence loss (forward + backward)")
    lines += [
        "Speed-up = time of `jax.grad` through a hand-written `lax.scan` / time of the "
        "contender (> 1 is faster). Memory = `compile().memory_analysis()` temporaries.",
        "",
    ]
    lines += floor_markdown(report["floor"])
    for point in report["grid"]:
        lines += [
            f"## T = {point['T']}, m = {point['m']}, n = d = {point['d']}",
            "",
            f"Load average during the run: {point['load_average']}; {point['torch']}.",
            "",
            f"**{point['summary']['text']}**.",
            "",
            "| contender | median ms | min ms | speed-up vs jax.grad | temp memory MiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in sorted(point["seconds"].items(), key=lambda item: item[1]):
            mem = point["temp_bytes"].get(name)
            mem_text = f"{mem / 2**20:.2f}" if mem is not None else "—"
            lines.append(
                f"| {name} | {s * 1e3:.3f} | {point['min_seconds'][name] * 1e3:.3f} | "
                f"{point['speedup_vs_jax_grad'][name]:.2f} | "
                f"{mem_text} |"
            )
        lines.append("")
    lines += [
        "## omega vs naive",
        "",
        "| T | m | d | omega ms | naive ms | naive / omega | target T/6 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["naive"]:
        lines.append(
            f"| {row['T']} | {row['m']} | {row['d']} | {row['seconds']['omega'] * 1e3:.3f} | "
            f"{row['seconds']['naive'] * 1e3:.3f} | {row['naive_over_omega']:.1f} | "
            f"{row['target']:.1f} |"
        )
    lines += [
        "",
        "## Ω backward throughput (error flow only) vs a plain matmul",
        "",
        "Roofline for the algorithm: a `fori_loop` of (T·m, d) × (d, d) products (the "
        "longest diagonal's shape, buffers reused) with as many rows in total as omega's "
        "useful products. A single matmul of all those rows is shown too (it also pays for "
        "a fresh output buffer of that size).",
        "",
        "| T | m | d | omega ms | omega GFLOP/s (useful / performed) | looped (T·m, d) matmul "
        "GFLOP/s | omega / looped matmul | one matmul: rows | GFLOP/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["throughput"]:
        capped = " (capped)" if row["matmul_rows_capped"] else ""
        lines.append(
            f"| {row['T']} | {row['m']} | {row['d']} | {row['omega_seconds'] * 1e3:.3f} | "
            f"{row['omega_useful_gflops']:.1f} / {row['omega_performed_gflops']:.1f} | "
            f"{row['looped_matmul_gflops']:.1f} | "
            f"{row['omega_useful_gflops'] / row['looped_matmul_gflops']:.0%} | "
            f"{row['matmul_rows']:,}{capped} | {row['matmul_gflops']:.1f} |"
        )
    memory = report["memory_T4096"]
    reference = memory["temp_bytes"]["jax.grad(lax.scan)"]
    lines += [
        "",
        f"## Peak temporary memory at T = {memory['T']}, m = {memory['m']}, d = {memory['d']}",
        "",
        "| gradient | temp MiB | × jax.grad |",
        "|---|---:|---:|",
    ]
    for name, value in memory["temp_bytes"].items():
        ratio = f"{value / reference:.2f}" if value and reference else "—"
        lines.append(f"| {name} | {value / 2**20:.2f} | {ratio} |")
    lines += ["", f"Total benchmark time: {report['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
