"""Side-by-side timings of one full gradient through a GRU or LSTM layer, in ONE process.

    python scripts/benchmark_cells.py [--out results] [--rounds 15] [--quick] [--no-profile]
                                      [--floor]

The model: one GRU or LSTM layer of d units on n = d inputs (PyTorch's layout and
equations), a linear readout to k = 10 classes, softmax cross-entropy summed over the
steps and averaged over the batch, float32, CPU. Every contender computes ∂C/∂params of
the SAME weights:

* `dj.sequence_loss` with `dj.BPTT()`, `dj.Omega()` (the library's exact algorithms on
  the generic `scan_cell` path) and `dj.Autodiff()` (`jax.grad` through the library's
  plain scan);
* `jax.grad` through `flax.linen.RNN(nn.GRUCell(d))` / `nn.OptimizedLSTMCell(d)` +
  `nn.Dense`, the weights mapped onto Flax's (its separate biases summed);
* PyTorch `nn.GRU` / `nn.LSTM` + `nn.Linear`, `loss.backward()` on CPU with
  `torch.set_num_threads(2)` and PyTorch's default OpenMP settings. (Its workers spin
  between calls: on this shared 2-core machine under a load of 7–10 that made it many
  times slower, and `OMP_WAIT_POLICY=PASSIVE` helped it then, but at a load of 1 the
  passive workers made its LSTM 3–10× slower than the default, so the default is kept.)

And the generic path against the specialised one on the Elman cell: the library's own
one-step `dj.cell` (`h ↦ tanh(x_t Wᵀ + h Sᵀ + b)`) through `dj.scan_cell`, against
`dj.rnn_layer`, both with `BPTT()`.

And the floor of each gated point (scripts/gated_floor.py, as `scripts/benchmark.py
--floor` has for the Elman layer): the same gradient's work done by plain-JAX pieces with
static operands, timed beside the contenders in the same rounds: the time-parallel
products (the input projection, the readout, the input-weight and recurrent-weight
gradients, each one product over all T·m rows), one forward loop (the recurrent product
and the gates, storing the gate coefficients) and one backward loop (the gates'
cotangents and the recurrent product of them), the fastest of a few variants of each
(`lax.scan` unroll 1 and 4, a `fori_loop` in place). Floor / fastest = the pieces' sum /
the fastest exact method's time; the same pieces chained in one program are a contender
too ("plain JAX floor as one program").

Before timing, every contender's gradient is compared with the library's `Autodiff()`
gradient (the max over the parameter arrays of max |g − g_ref| / max |g_ref|): the floor
as one program included, the cheapest proof that the pieces do the same work.

Timing protocol (as scripts/benchmark.py): every contender is compiled and run twice
(warm-up, compile excluded), then the contenders run in ALTERNATING order (a new seeded
random order each round) for `rounds` rounds and the median per contender is reported,
so load from other processes hits all of them alike; the load average is recorded with
each point. Only ratios measured in the
same run are meaningful.

Targets (project issue 10): the fastest exact method (`BPTT` or `Omega`) ≥ 1.3× Flax and
≥ 1.0× PyTorch on every GRU/LSTM row; `scan_cell` on the Elman cell within 1.3× of
`rnn_layer`.

Profile of every missed row (`--no-profile` skips it): the CPU time per call of each XLA
operation of the library's fastest exact method, of its jitted rivals and of the floor
as one program, from a `jax.profiler` trace, split into operations run once per call and
operations run in every step of a loop, each into matrix products and the rest, the top
operations with the JAX operation each was compiled from; and PyTorch's own profiler's
top operations.

Writes results/benchmark_cells.md and results/benchmark_cells.json; `--floor` times only
the gated cells' floor against the library's methods, profiles every point, and writes
results/benchmark_cells_floor.md and .json.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from benchmark import alternate  # the same timing protocol as scripts/benchmark.py
from gated_floor import ONE_PROGRAM, floor_seconds
from gated_floor import pieces as floor_pieces

import dprnn_jax as dj
from dprnn_jax._app.complexity import machine_description

N_CLASSES = 10
GRID = ((128, 32, 128), (1024, 16, 32))
CELLS = ("gru", "lstm")
TORCH_THREADS = 2
FLAX_TARGET, TORCH_TARGET, ELMAN_TARGET = 1.3, 1.0, 1.3
LIBRARY = {"dprnn bptt": dj.BPTT(), "dprnn omega": dj.Omega(), "dprnn autodiff": dj.Autodiff()}
EXACT = ("dprnn bptt", "dprnn omega")  # the library's own algorithms, for the targets


# --------------------------------------------------------------------------- problems


def make_problem(cell: str, T: int, m: int, d: int, seed: int = 0):
    k_params, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = dj.init_rnn(k_params, d, (d,), N_CLASSES, cell=cell)
    xs = jax.random.normal(k_x, (T, m, d), jnp.float32)
    ys = jax.random.randint(k_y, (T, m), 0, N_CLASSES)
    return params, xs, ys


def cross_entropy(logits, ys, m):
    return optax.softmax_cross_entropy_with_integer_labels(logits, ys).sum() / m


def library_gradient(method: dj.backward.GradientAlgorithm) -> Callable:
    def loss(params, xs, ys):
        return dj.sequence_loss(params, xs, ys, method=method)

    return jax.jit(jax.grad(loss))


def flax_contender(cell: str, params, xs, ys):
    """`jax.grad` through `nn.RNN(GRUCell | OptimizedLSTMCell)` + `nn.Dense`, with the
    library's weights; returns the thunk and a map of its gradient to the library's
    layout (None without flax)."""
    try:
        from flax import linen as nn
    except ImportError:
        return None
    layer, readout = params.layers[0], params.readout
    d = layer.S.shape[1]
    make_cell = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}[cell]

    class Model(nn.Module):
        @nn.compact
        def __call__(self, xs):
            hs = nn.RNN(make_cell(features=d, name="cell"), time_major=True)(xs)
            return nn.Dense(N_CLASSES)(hs)

    model = Model()
    gates = "rzn" if cell == "gru" else "ifgo"
    W, S = jnp.split(layer.W, len(gates)), jnp.split(layer.S, len(gates))
    b_ih, b_hh = jnp.split(layer.b_ih, len(gates)), jnp.split(layer.b_hh, len(gates))
    weights = {}
    for g, (w, s, bi, bh) in enumerate(zip(W, S, b_ih, b_hh)):
        name = gates[g]
        if cell == "gru" and name == "n":  # b_hn sits inside r ⊙ (S_n h + b_hn)
            weights["in"] = {"kernel": w.T, "bias": bi}
            weights["hn"] = {"kernel": s.T, "bias": bh}
        elif cell == "gru":  # Flax keeps one bias per gate, on the input side
            weights[f"i{name}"] = {"kernel": w.T, "bias": bi + bh}
            weights[f"h{name}"] = {"kernel": s.T}
        else:  # OptimizedLSTMCell: one bias per gate, on the recurrent side
            weights[f"i{name}"] = {"kernel": w.T}
            weights[f"h{name}"] = {"kernel": s.T, "bias": bi + bh}
    variables = {
        "params": {
            "cell": weights,
            "Dense_0": {"kernel": readout.W.T, "bias": readout.b},
        }
    }
    expected = jax.tree.structure(model.init(jax.random.key(0), xs))
    if jax.tree.structure(variables) != expected:
        raise RuntimeError(f"Flax's parameter tree changed: {expected}")

    def loss(variables, xs, ys):
        return cross_entropy(model.apply(variables, xs), ys, xs.shape[1])

    def to_library(grads):
        cell_bar, dense = grads["params"]["cell"], grads["params"]["Dense_0"]
        W_bar = jnp.concatenate([cell_bar[f"i{g}"]["kernel"].T for g in gates])
        S_bar = jnp.concatenate([cell_bar[f"h{g}"]["kernel"].T for g in gates])
        # A summed bias's gradient is each of its two parts' gradient.
        if cell == "gru":
            b_ih_bar = jnp.concatenate([cell_bar[f"i{g}"]["bias"] for g in gates])
            b_hh_bar = jnp.concatenate(
                [cell_bar["ir"]["bias"], cell_bar["iz"]["bias"], cell_bar["hn"]["bias"]]
            )
        else:
            b_ih_bar = b_hh_bar = jnp.concatenate([cell_bar[f"h{g}"]["bias"] for g in gates])
        layer_bar = type(layer)(W_bar, S_bar, b_ih_bar, b_hh_bar)
        return dj.RNNParams((layer_bar,), dj.ReadoutParams(dense["kernel"].T, dense["bias"]))

    gradient = jax.jit(jax.grad(loss))
    return functools.partial(gradient, variables, xs, ys), to_library


def torch_contender(cell: str, params, xs, ys):
    """`nn.GRU` / `nn.LSTM` + `nn.Linear`, `loss.backward()` on CPU with 2 threads, with
    the library's weights (PyTorch's layout); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    layer, readout = params.layers[0], params.readout
    d = layer.S.shape[1]
    rnn = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](d, d)  # time-major
    linear = torch.nn.Linear(d, N_CLASSES)
    with torch.no_grad():
        for name, value in (
            ("weight_ih_l0", layer.W),
            ("weight_hh_l0", layer.S),
            ("bias_ih_l0", layer.b_ih),
            ("bias_hh_l0", layer.b_hh),
        ):
            getattr(rnn, name).copy_(torch.tensor(np.asarray(value)))
        linear.weight.copy_(torch.tensor(np.asarray(readout.W)))
        linear.bias.copy_(torch.tensor(np.asarray(readout.b)))
    xs_t = torch.tensor(np.asarray(xs))
    ys_t = torch.tensor(np.asarray(ys, dtype=np.int64)).reshape(-1)
    m = xs.shape[1]
    parameters = [*rnn.parameters(), *linear.parameters()]

    def gradient():
        for p in parameters:
            p.grad = None
        hs, _ = rnn(xs_t)
        logits = linear(hs).reshape(-1, N_CLASSES)
        loss = torch.nn.functional.cross_entropy(logits, ys_t, reduction="sum") / m
        loss.backward()
        return parameters[0].grad

    def to_library(_):
        g = [jnp.asarray(p.grad.numpy()) for p in parameters]
        return dj.RNNParams((type(layer)(*g[:4]),), dj.ReadoutParams(g[4], g[5]))

    torch.set_num_threads(TORCH_THREADS)
    return gradient, to_library


# ------------------------------------------------------------------- Elman: generic path


def elman_losses(T: int, m: int, d: int):
    """The same Elman loss through `scan_cell` and through `rnn_layer`, both BPTT."""
    params, xs, ys = make_problem("elman", T, m, d)
    method = dj.BPTT()

    def readout_loss(params, hs, ys):
        logits = hs @ params.readout.W.T + params.readout.b
        return cross_entropy(logits, ys, hs.shape[1])

    def generic(params, xs, ys):
        h0 = jnp.zeros((xs.shape[1], d), xs.dtype)
        hs = dj.scan_cell(dj.cell, params.layers[0], xs, h0, method=method)
        return readout_loss(params, hs, ys)

    def specialised(params, xs, ys):
        return readout_loss(params, dj.rnn_layer(params.layers[0], xs, method=method), ys)

    def reference(params, xs, ys):
        hs = dj.rnn_layer(params.layers[0], xs, method=dj.Autodiff())
        return readout_loss(params, hs, ys)

    return (
        params,
        xs,
        ys,
        {
            "scan_cell bptt (generic)": generic,
            "rnn_layer bptt (specialised)": specialised,
            "reference": reference,
        },
    )


# --------------------------------------------------------------------------- timing


def relative_error(grads, reference) -> float:
    """max over arrays of max |g − g_ref| / max |g_ref|."""
    errors = jax.tree.map(
        lambda g, r: float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))), grads, reference
    )
    return max(jax.tree.leaves(errors))


def _record(cell, T, m, d, seconds, minima, errors) -> dict:
    """What every point records: its sizes, the load, the times and the errors."""
    return {
        "cell": cell,
        "T": T,
        "m": m,
        "d": d,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "seconds": seconds,
        "min_seconds": minima,
        "max_relative_error": errors,
    }


def gated_point(
    cell: str, T: int, m: int, d: int, rounds: int, *, rivals: bool = True, floor: bool = True
) -> tuple[dict, dict]:
    """Checks then times every contender of one (cell, T, m, d) point; returns the
    point's record and the contenders (for the profile). `rivals`: Flax and PyTorch;
    `floor`: the floor's pieces and the floor as one program (scripts/gated_floor.py)."""
    params, xs, ys = make_problem(cell, T, m, d)
    reference = library_gradient(dj.Autodiff())(params, xs, ys)
    thunks, errors = {}, {}
    for name, method in LIBRARY.items():
        gradient = library_gradient(method)
        errors[name] = relative_error(gradient(params, xs, ys), reference)
        thunks[name] = functools.partial(gradient, params, xs, ys)
    flax_name = f"flax nn.RNN({'GRUCell' if cell == 'gru' else 'OptimizedLSTMCell'})"
    torch_name = f"torch nn.{cell.upper()} (CPU, {TORCH_THREADS} threads)"
    for name, build in ((flax_name, flax_contender), (torch_name, torch_contender)):
        contender = build(cell, params, xs, ys) if rivals else None
        if contender is None:
            continue
        thunk, to_library = contender
        errors[name] = relative_error(to_library(thunk()), reference)
        thunks[name] = thunk
    floor_differences: dict = {}
    if floor:
        piece_thunks, whole, floor_differences = floor_pieces(cell, params, xs, ys)
        for name, thunk in whole.items():
            errors[name] = relative_error(thunk(), reference)
        thunks.update(whole)
        thunks.update(piece_thunks)
    minima: dict[str, float] = {}
    seconds = alternate(thunks, rounds, minima)
    best = min(EXACT, key=seconds.get)
    point = {**_record(cell, T, m, d, seconds, minima, errors), "fastest": best}
    for label, name, target in (
        ("flax", flax_name, FLAX_TARGET),
        ("torch", torch_name, TORCH_TARGET),
    ):
        if name in seconds:
            point[f"speedup_vs_{label}"] = seconds[name] / seconds[best]
            point[f"target_vs_{label}"] = target
            point[f"met_vs_{label}"] = bool(point[f"speedup_vs_{label}"] >= target)
    point["rivals"] = {"flax": flax_name, "torch": torch_name}
    if floor:
        total, parts = floor_seconds(seconds)
        total_min, _ = floor_seconds(minima)  # each piece's fastest round
        one_program = min((n for n in seconds if n.startswith(ONE_PROGRAM)), key=seconds.get)
        point.update(
            floor_seconds=total,
            floor_parts=parts,
            floor_over_fastest=total / seconds[best],
            floor_min_seconds=total_min,
            floor_over_fastest_min=total_min / min(minima[n] for n in EXACT),
            floor_one_program=one_program,
            floor_one_program_over_fastest=seconds[one_program] / seconds[best],
            floor_piece_differences=floor_differences,
        )
    return point, thunks


def elman_point(T: int, m: int, d: int, rounds: int) -> tuple[dict, dict]:
    params, xs, ys, losses = elman_losses(T, m, d)
    reference = jax.jit(jax.grad(losses.pop("reference")))(params, xs, ys)
    thunks, errors = {}, {}
    for name, loss in losses.items():
        gradient = jax.jit(jax.grad(loss))
        errors[name] = relative_error(gradient(params, xs, ys), reference)
        thunks[name] = functools.partial(gradient, params, xs, ys)
    minima: dict[str, float] = {}
    seconds = alternate(thunks, rounds, minima)
    ratio = seconds["scan_cell bptt (generic)"] / seconds["rnn_layer bptt (specialised)"]
    return {
        **_record("elman", T, m, d, seconds, minima, errors),
        "generic_over_specialised": ratio,
        "target": ELMAN_TARGET,
        "met": bool(ratio <= ELMAN_TARGET),
    }, thunks


# ----------------------------------------------------------------- profile of a miss

_INSTRUCTION = re.compile(r"^[a-z][a-z0-9_\-]*(\.\d+)?$")
_CONTROL = ("while", "conditional", "call")


def compiled_instructions(jitted, args) -> tuple[set[str], dict[str, str]]:
    """The names of the compiled program's instructions that are matrix products (a
    `dot`, or a fusion made from a `dot_general`), and each instruction's JAX source
    (its `op_name`: the JAX operation, under the transformations that made it)."""
    products, sources = set(), {}
    for line in jitted.lower(*args).compile().as_text().splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = ", line)
        op_name = re.search(r'op_name="([^"]*)"', line)
        if not match:
            continue
        if op_name:
            # "jit(loss)/jvp(…)/transpose(…)/dot_general": the wrapping jit dropped.
            sources[match.group(1)] = op_name.group(1).split("/", 1)[-1]
        if re.search(r"\}? dot\(", line) or (op_name and op_name.group(1).endswith("dot_general")):
            products.add(match.group(1))
    return products, sources


def xla_profile(thunk: functools.partial, steps: int, calls: int = 10) -> dict:
    """CPU time per call of a jitted contender's XLA operations, from a profiler trace.

    Operations that run at least `steps / 2` times per call are counted as per-step
    (loop bodies); times are summed over threads.
    """
    products, sources = compiled_instructions(thunk.func, thunk.args)
    jax.block_until_ready(thunk())
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            for _ in range(calls):
                jax.block_until_ready(thunk())
        (path,) = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
        for plane in jax.profiler.ProfileData.from_file(path).planes:
            for line in plane.lines:
                for event in line.events:
                    name = event.name
                    if _INSTRUCTION.match(name) and not name.startswith(_CONTROL):
                        totals[name] += event.duration_ns
                        counts[name] += 1
    groups = {key: 0.0 for key in ("once_products", "once_other", "step_products", "step_other")}
    step_ops = 0
    top, top_once = [], []
    for name, total in totals.most_common():
        runs = counts[name] / calls
        per_step = runs >= steps / 2
        step_ops += per_step
        key = ("step_" if per_step else "once_") + ("products" if name in products else "other")
        groups[key] += total / calls / 1e6
        op = {
            "op": name,
            "ms": total / calls / 1e6,
            "runs": runs,
            "product": name in products,
            "source": _short_source(sources.get(name, "")),
        }
        top.append(op)
        if not per_step:
            top_once.append(op)
    return {
        "ms": groups,
        "ops_per_step": step_ops,
        "top": top[:8],
        "top_once": top_once[:10],
        "calls": calls,
    }


def _short_source(op_name: str, keep: int = 110) -> str:
    """An instruction's JAX source, its innermost part kept when it is long."""
    return op_name if len(op_name) <= keep else "…" + op_name[-keep:]


def torch_profile(thunk: Callable, calls: int = 5) -> dict:
    """PyTorch's profiler: the operators with the most self CPU time per call."""
    import torch

    thunk()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            thunk()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [
        {"op": e.key, "ms": e.self_cpu_time_total / calls / 1e3, "runs": e.count / calls}
        for e in events[:8]
    ]
    return {"total_ms": sum(e.self_cpu_time_total for e in events) / calls / 1e3, "top": top}


def profile_point(point: dict, thunks: dict) -> dict:
    """The profiles behind a missed point: the library's method and its jitted rivals,
    and PyTorch's operators when PyTorch was not beaten."""
    if point["cell"] == "elman":
        names = list(point["seconds"])
    else:
        names = [point["fastest"], point["rivals"]["flax"], point.get("floor_one_program")]
    profiles = {name: xla_profile(thunks[name], point["T"]) for name in names if name in thunks}
    torch_name = point.get("rivals", {}).get("torch")
    if torch_name in thunks and not point.get("met_vs_torch", True):
        profiles[torch_name] = torch_profile(thunks[torch_name])
    return profiles


def missed(point: dict) -> bool:
    if point["cell"] == "elman":
        return not point["met"]
    return not (point.get("met_vs_flax", True) and point.get("met_vs_torch", True))


# --------------------------------------------------------------------------- report


def describe(point: dict) -> str:
    if point["cell"] == "elman":
        verdict = "met" if point["met"] else "MISSED"
        return (
            f"scan_cell / rnn_layer = {point['generic_over_specialised']:.2f} "
            f"(target ≤ {point['target']}: {verdict})"
        )
    parts = [f"fastest exact: {point['fastest']}"]
    for label in ("flax", "torch"):
        if f"speedup_vs_{label}" in point:
            verdict = "met" if point[f"met_vs_{label}"] else "MISSED"
            parts.append(
                f"×{point[f'speedup_vs_{label}']:.2f} vs {label} "
                f"(target ≥ {point[f'target_vs_{label}']}: {verdict})"
            )
    if "floor_seconds" in point:
        parts.append(
            f"floor / fastest {point['floor_over_fastest']:.0%} "
            f"(fastest rounds: {point['floor_over_fastest_min']:.0%})"
        )
    return ", ".join(parts)


def print_point(point: dict) -> None:
    load = point["load_average"]
    load_text = " ".join(f"{x:.2f}" for x in load) if load else "—"
    print(
        f"\n{point['cell'].upper()} T={point['T']} m={point['m']} n=d={point['d']} "
        f"(load average {load_text})",
        flush=True,
    )
    for name, s in sorted(point["seconds"].items(), key=lambda item: item[1]):
        error = point["max_relative_error"].get(name)
        check = "" if error is None else f"   max rel err {error:.1e}"
        print(f"  {name:55s} {s * 1e3:9.3f} ms{check}")
    if "floor_seconds" in point:
        for line in floor_lines(point):
            print("  " + line)
    print("  " + describe(point), flush=True)


def floor_lines(point: dict) -> list[str]:
    """The floor of a gated point: its pieces, its sum and its ratio to the fastest."""
    parts = " + ".join(
        f"{name.removeprefix('floor: ')} {s * 1e3:.2f}" for name, s in point["floor_parts"].items()
    )
    differences = point["floor_piece_differences"]
    return [
        f"Floor = {parts} = **{point['floor_seconds'] * 1e3:.2f} ms**; fastest exact "
        f"({point['fastest']}) {point['seconds'][point['fastest']] * 1e3:.2f} ms: "
        f"**floor / fastest {point['floor_over_fastest']:.0%}** (each one's fastest "
        f"round: {point['floor_min_seconds'] * 1e3:.2f} ms, "
        f"{point['floor_over_fastest_min']:.0%}). The floor as one program "
        f"({point['floor_one_program'].removeprefix(ONE_PROGRAM)}): "
        f"{point['seconds'][point['floor_one_program']] * 1e3:.2f} ms, "
        f"{point['floor_one_program_over_fastest']:.2f}× the fastest. Every piece's "
        f"output within {max(differences.values()):.1e} of the scan pieces' (the one "
        "program's gradient is checked against `Autodiff()` in the table).",
    ]


def profile_lines(point: dict) -> list[str]:
    """Markdown tables of a point's profile."""
    profiles = point["profile"]
    lines = [
        "CPU time per call (summed over threads) of the XLA operations, from a "
        "`jax.profiler` trace: run once per call or in every step of a loop, matrix "
        "products or not.",
        "",
        "| contender | once: products ms | once: other ms | per step: products ms | "
        "per step: other ms | ops per step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, profile in profiles.items():
        if "ms" in profile:
            ms = profile["ms"]
            lines.append(
                f"| {name} | {ms['once_products']:.2f} | {ms['once_other']:.2f} | "
                f"{ms['step_products']:.2f} | {ms['step_other']:.2f} | "
                f"{profile['ops_per_step']} |"
            )
    for name, profile in profiles.items():
        if "ms" not in profile:
            lines += ["", f"Top PyTorch operators (self CPU time) of {name}:", ""]
            lines += _operation_table(profile["top"], sources=False)
            continue
        lines += ["", f"Top XLA operations of {name}:", ""]
        lines += _operation_table(profile["top"])
        if profile.get("top_once"):
            lines += ["", f"Top operations run once per call of {name}:", ""]
            lines += _operation_table(profile["top_once"])
    return lines


def _operation_table(operations: list[dict], sources: bool = True) -> list[str]:
    if not sources:
        lines = ["| operation | ms per call | runs per call |", "|---|---:|---:|"]
        return lines + [f"| `{o['op']}` | {o['ms']:.2f} | {o['runs']:.0f} |" for o in operations]
    lines = ["| operation | ms per call | runs per call | JAX source |", "|---|---:|---:|---|"]
    for op in operations:
        mark = " (product)" if op.get("product") else ""
        source = op.get("source", "").replace("|", "\\|")
        lines.append(
            f"| `{op['op']}`{mark} | {op['ms']:.2f} | {op['runs']:.0f} | "
            + (f"`{source}` |" if source else "— |")
        )
    return lines


def print_profile(point: dict) -> None:
    for line in profile_lines(point):
        print("  " + line)


def markdown(report: dict) -> str:
    lines = [
        "# Benchmark: GRU and LSTM gradients, and the generic cell path",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. Median of "
        f"{report['rounds']} rounds in random order after two warm-up calls, compile excluded, "
        "all contenders in one process. One layer, n = d, k = "
        f"{N_CLASSES} classes, softmax cross-entropy summed over steps / m, float32, CPU; "
        f"PyTorch with {TORCH_THREADS} threads. Error = max over parameter arrays of "
        "max |g − g_ref| / max |g_ref|, the reference being the library's `Autodiff()` "
        "(`jax.grad` through the plain scan). Speed-up = contender's time / the fastest "
        "exact library method's (`BPTT` or `Omega`); targets ≥ "
        f"{FLAX_TARGET} vs Flax and ≥ {TORCH_TARGET} vs PyTorch; the Elman cell through "
        f"`scan_cell` within {ELMAN_TARGET}× of `rnn_layer`. The floor "
        "(scripts/gated_floor.py): the same gradient's work done by plain pieces, timed "
        "apart in the same rounds, the fastest variant of each: the time-parallel "
        "products (projection, readout, weight gradients, one program), one forward loop "
        "and one backward loop; floor / fastest = their sum / the fastest exact method.",
        "",
        "## Summary",
        "",
        "| cell | T | m | d | fastest exact | ms | × Flax | × PyTorch | floor ms | "
        "floor / fastest | load average |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]

    def cell_text(point, label):
        key = f"speedup_vs_{label}"
        if key not in point:
            return "—"
        return f"{point[key]:.2f}" + ("" if point[f"met_vs_{label}"] else " (missed)")

    for point in report["gated"]:
        load = " ".join(f"{x:.2f}" for x in point["load_average"] or ())
        floor = (
            f"{point['floor_seconds'] * 1e3:.2f} | {point['floor_over_fastest']:.0%}"
            if "floor_seconds" in point
            else "— | —"
        )
        lines.append(
            f"| {point['cell'].upper()} | {point['T']} | {point['m']} | {point['d']} | "
            f"{point['fastest']} | {point['seconds'][point['fastest']] * 1e3:.2f} | "
            f"{cell_text(point, 'flax')} | {cell_text(point, 'torch')} | {floor} | {load} |"
        )
    if report["elman"]:
        lines += [
            "",
            "| Elman cell | T | m | d | scan_cell ms | rnn_layer ms | scan_cell / rnn_layer | "
            "load average |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
    for point in report["elman"]:
        load = " ".join(f"{x:.2f}" for x in point["load_average"] or ())
        seconds = point["seconds"]
        ratio = f"{point['generic_over_specialised']:.2f}" + ("" if point["met"] else " (missed)")
        lines.append(
            f"| BPTT | {point['T']} | {point['m']} | {point['d']} | "
            f"{seconds['scan_cell bptt (generic)'] * 1e3:.2f} | "
            f"{seconds['rnn_layer bptt (specialised)'] * 1e3:.2f} | {ratio} | {load} |"
        )
    for point in report["gated"] + report["elman"]:
        load = " ".join(f"{x:.2f}" for x in point["load_average"] or ())
        lines += [
            "",
            f"## {point['cell'].upper()}, T = {point['T']}, m = {point['m']}, n = d = {point['d']}",
            "",
            f"Load average: {load}. **{describe(point)}**.",
            "",
            "| contender | median ms | min ms | max rel. error |",
            "|---|---:|---:|---:|",
        ]
        for name, s in sorted(point["seconds"].items(), key=lambda item: item[1]):
            error = point["max_relative_error"].get(name)
            lines.append(
                f"| {name} | {s * 1e3:.3f} | {point['min_seconds'][name] * 1e3:.3f} | "
                + ("— |" if error is None else f"{error:.1e} |")
            )
        if "floor_seconds" in point:
            lines += ["", *floor_lines(point)]
        if "profile" in point:
            lines += ["", "Profile (a target was missed):", "", *profile_lines(point)]
    lines += ["", f"Total benchmark time: {report['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default results)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (15)")
    parser.add_argument("--quick", action="store_true", help="first grid point only, 5 rounds")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the profiles of the missed rows"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="only the gated cells' floor against the library's methods (no Flax, PyTorch "
        "or Elman rows, every point profiled); writes benchmark_cells_floor.*",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    rounds = 5 if args.quick else args.rounds
    grid = GRID[:1] if args.quick else GRID
    started = time.perf_counter()
    machine = machine_description()
    print(f"machine: {machine}", flush=True)
    command = "python scripts/benchmark_cells.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    report: dict = {
        "machine": machine,
        "command": command,
        "rounds": rounds,
        "python": platform.python_version(),
        "gated": [],
        "elman": [],
    }
    points = [
        ("gated", functools.partial(gated_point, cell, rivals=not args.floor), *size)
        for cell in CELLS
        for size in grid
    ]
    if not args.floor:
        points += [("elman", elman_point, *size) for size in grid]
    for kind, run, T, m, d in points:
        point, thunks = run(T, m, d, rounds)
        print_point(point)
        if (missed(point) or args.floor) and not args.no_profile:
            point["profile"] = profile_point(point, thunks)
            print_profile(point)
        report[kind].append(point)
    report["wall_seconds"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "benchmark_cells_floor" if args.floor else "benchmark_cells")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report))
    print(f"\nwrote {stem}.md, {stem}.json ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
