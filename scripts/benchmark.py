"""Side-by-side timings of one full gradient of the sequence loss, in ONE process.

    python scripts/benchmark.py [--out results] [--rounds 15] [--quick]

Contenders, all computing ∂C/∂params of the same model (one tanh Elman layer of d units
on n = d inputs, a linear readout to k = 10 classes, softmax cross-entropy summed over
steps and averaged over the batch), float32:

* every `dprnn_jax` method (`omega`, blocked `omega`, `bptt`; `naive` on small T only);
* `jax.grad` through a hand-written `lax.scan` Elman cell: what a JAX user writes; the
  reference of every ratio;
* Flax `nn.RNN(nn.SimpleCell)` + `nn.Dense` with `jax.grad`, if flax is installed;
* PyTorch `nn.RNN` + `nn.Linear` with `loss.backward()` on CPU, if torch is installed.

Timing protocol: every contender is compiled and run twice (warm-up, compile excluded),
then the contenders are run in ALTERNATING order for `rounds` rounds and the median per
contender is reported, so that load from other processes hits all of them alike. Only
ratios measured in the same run are meaningful.

Also reported: peak temporary memory of each compiled gradient
(`compile().memory_analysis().temp_size_in_bytes`), including a T = 4096 comparison of
the Ω backward against `jax.grad`; the achieved GFLOP/s of the Ω backward next to a plain
matmul with the same total number of rows on the same machine (its roofline); and
omega against naive for T ∈ {32, 64, 128}.

Writes results/benchmark.md and results/benchmark.json.
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
from dprnn_jax._app.complexity import machine_description
from dprnn_jax._backward.omega import omega_error_flow

N_CLASSES = 10
GRID = ((128, 32, 128), (1024, 16, 32), (64, 32, 64))
BLOCKS = (1, 4, 16, 64)  # swept at the first grid point
NAIVE_GRID = ((32, 8, 32), (64, 8, 32), (128, 8, 32))
MEMORY_POINT = (4096, 16, 32)


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
    for r in range(rounds):
        # Rotate the order every round so no contender always follows the same one.
        names = list(contenders)
        names = names[r % len(names) :] + names[: r % len(names)]
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
    flow_fn = jax.jit(omega_error_flow)
    flow = flow_fn(injected, sigma_prime, S)
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
            "omega": functools.partial(flow_fn, injected, sigma_prime, S),
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
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    rounds = 10 if args.quick else args.rounds
    grid = GRID[:1] if args.quick else GRID
    started = time.perf_counter()
    machine = machine_description()
    print(f"machine: {machine}", flush=True)
    report: dict = {"machine": machine, "rounds": rounds, "python": platform.python_version()}

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
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "benchmark.md"), "w") as f:
        f.write(markdown(report))
    print(
        f"\nwrote {args.out}/benchmark.md, {args.out}/benchmark.json "
        f"({report['wall_seconds']:.0f} s)"
    )
    return 0


def markdown(report: dict) -> str:
    lines = [
        "# Benchmark: one full gradient of the sequence loss (forward + backward)",
        "",
        f"Machine: {report['machine']}. Median of {report['rounds']} alternating rounds "
        "after two warm-up calls, compile excluded, all contenders in one process. "
        f"One tanh layer, n = d, k = {N_CLASSES} classes, softmax cross-entropy, float32. "
        "Speed-up = time of `jax.grad` through a hand-written `lax.scan` / time of the "
        "contender (> 1 is faster). Memory = `compile().memory_analysis()` temporaries.",
        "",
    ]
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
