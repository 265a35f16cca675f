"""Mixed precision against float32: the gradient's error per method, and the speed.

    python scripts/benchmark_precision.py [--out results] [--rounds 9] [--quick]

Mixed precision is float32 parameters with bfloat16 inputs (docs/performance.md#mixed-precision):
the layers compute in bfloat16 with float32 accumulation, the parameters, their gradient
and the loss stay float32.

Errors. For every cell (Elman, GRU, LSTM, minGRU, and a user's gated step through
`scan_cell`) and every algorithm (the exact ones of the registry, `BPTT(checkpoint="sqrt")`,
and the approximations SnAp-1, UORO with a fixed key and RFLO, each against its own
float32 value): the relative error of the mixed-precision gradient against the float32
gradient of the same parameters at the same inputs (the bfloat16 inputs upcast), two
ways: normwise over the whole gradient, ‖g − g₃₂‖₂ / ‖g₃₂‖₂, and the largest over the
parameter arrays of max|g − g₃₂| / max|g₃₂| (the tests' measure). The largest over 3
draws. One layer, T = 128, m = 8, n = d = 16, k = 10 classes (small enough for RTRL and
the naive method); then `BPTT()` alone at T = 32 … 2048, to show the growth with T.

Speed. Float32 against mixed precision for Elman, GRU and LSTM layers (one layer, n = d,
k = 10, softmax cross-entropy) at T = 128, m = 32, d = 128 and T = 1024, m = 16, d = 32,
with `BPTT()`, `Omega()` and `Autodiff()`: every program compiled and run twice, then
alternating rounds in a new random order each round, medians (the protocol of
scripts/benchmark.py). And one large matrix product, the (T·m, d) × (d, 3d) input
projection of a GRU, in float32 and as bfloat16 × bfloat16 accumulated in float32, to
show what the CPU's bfloat16 units give where they are used. The load average is
recorded before and after each point: the machine is shared.

Writes results/benchmark_precision.md and results/benchmark_precision.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from benchmark import alternate  # the same timing protocol as scripts/benchmark.py
from jax import lax
from jax.flatten_util import ravel_pytree

import dprnn_jax as dj
from dprnn_jax._app.complexity import machine_description
from dprnn_jax.backward import ALGORITHMS

N_CLASSES = 10
ERROR_SIZE = (128, 8, 16)  # T, m, n = d
ERROR_SEEDS = 3
GROWTH_T = (32, 128, 512, 2048)
SPEED_GRID = ((128, 32, 128), (1024, 16, 32))
SPEED_CELLS = ("elman", "gru", "lstm")
SPEED_METHODS = {"bptt": dj.BPTT(), "omega": dj.Omega(), "autodiff": dj.Autodiff()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


# --------------------------------------------------------------------------- errors


def gated_step(params, carry, x):
    """A user's cell with a carry (h, c), for `scan_cell`."""
    h, c = carry
    gate = jax.nn.sigmoid(x @ params["Wg"].T + h @ params["Sg"].T)
    c = gate * c + (1 - gate) * jnp.tanh(x @ params["Wc"].T + h @ params["Sc"].T)
    return (jnp.tanh(c), c)


def error_problem(cell: str, T: int, m: int, d: int, seed: int):
    """`(loss(params, xs, method), float32 params, bfloat16 inputs)`."""
    k_params, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    xs = jax.random.normal(k_x, (T, m, d)).astype(jnp.bfloat16)
    ys = jax.random.randint(k_y, (T, m), 0, N_CLASSES)
    if cell != "step":
        params = dj.init_rnn(k_params, d, (d,), N_CLASSES, cell=cell)

        def loss(params, xs, method):
            return dj.sequence_loss(params, xs, ys, method=method)

        return loss, params, xs
    keys = jax.random.split(k_params, 5)
    shapes = {"Wg": (d, d), "Sg": (d, d), "Wc": (d, d), "Sc": (d, d)}
    params = {
        name: jax.random.normal(key, shape) / np.sqrt(2 * d)
        for key, (name, shape) in zip(keys, shapes.items())
    }
    readout = jax.random.normal(keys[-1], (N_CLASSES, d)) / np.sqrt(d)

    def loss(params, xs, method):
        zeros = jnp.zeros((m, d), xs.dtype)
        hs, _ = dj.scan_cell(gated_step, params, xs, (zeros, zeros), method=method)
        logits = hs.astype(jnp.float32) @ readout.T
        return -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(ys, N_CLASSES)) / m

    return loss, params, xs


def errors(gradient, reference) -> tuple[float, float]:
    """(‖g − g₃₂‖₂ / ‖g₃₂‖₂, max over arrays of max|g − g₃₂| / max|g₃₂|)."""
    flat, flat_ref = (np.asarray(ravel_pytree(g)[0], np.float64) for g in (gradient, reference))
    normwise = float(np.linalg.norm(flat - flat_ref) / np.linalg.norm(flat_ref))
    per_array = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))
        for a, b in zip(jax.tree.leaves(gradient), jax.tree.leaves(reference))
    )
    return normwise, per_array


def error_methods(cell: str) -> dict[str, object]:
    """The algorithms measured on `cell`: name -> (method, its float32 reference method)."""
    methods = {name: (name, "autodiff") for name in ALGORITHMS}
    methods['BPTT(checkpoint="sqrt")'] = (dj.BPTT(checkpoint="sqrt"), "autodiff")
    approximations = [dj.SnAp(n=1), dj.UORO(seed=0)] + ([dj.RFLO()] if cell == "elman" else [])
    for method in approximations:
        methods[str(method)] = (method, method)  # against its own float32 value
    if cell == "step":  # scan_cell: no fused checkpointed loss, no whole-step approximations
        methods = {name: pair for name, pair in methods.items() if name in ALGORITHMS}
    return methods


def error_table(cells, T, m, d, seeds) -> dict:
    table: dict = {}
    for cell in cells:
        methods = error_methods(cell)
        loss = None
        for seed in range(seeds):
            loss, params, xs = error_problem(cell, T, m, d, seed)

            @jax.jit
            def run(params, xs, loss=loss, methods=methods):
                up = xs.astype(jnp.float32)
                return {
                    name: (jax.grad(loss)(params, up, ref), jax.grad(loss)(params, xs, method))
                    for name, (method, ref) in methods.items()
                }

            started = time.perf_counter()
            results = run(params, xs)  # a dict in sorted order: read it in the methods'
            for name in methods:
                reference, gradient = results[name]
                dtypes = {str(leaf.dtype) for leaf in jax.tree.leaves(gradient)}
                normwise, per_array = errors(gradient, reference)
                entry = table.setdefault(cell, {}).setdefault(
                    name, {"normwise": 0.0, "per_array": 0.0, "dtypes": sorted(dtypes)}
                )
                entry["normwise"] = max(entry["normwise"], normwise)
                entry["per_array"] = max(entry["per_array"], per_array)
            print(f"errors {cell} seed {seed}: {time.perf_counter() - started:.1f} s", flush=True)
    return table


def growth_table(cells, Ts, m, d) -> dict:
    table: dict = {}
    for cell in cells:
        for T in Ts:
            loss, params, xs = error_problem(cell, T, m, d, 0)
            gradient = jax.jit(jax.grad(loss), static_argnums=2)
            reference = gradient(params, xs.astype(jnp.float32), "bptt")
            normwise, per_array = errors(gradient(params, xs, "bptt"), reference)
            table.setdefault(cell, {})[T] = {"normwise": normwise, "per_array": per_array}
            print(f"growth {cell} T={T}: {normwise:.2e} {per_array:.2e}", flush=True)
    return table


# --------------------------------------------------------------------------- speed


def speed_point(cell: str, T: int, m: int, d: int, rounds: int) -> dict:
    k_params, k_x, k_y = jax.random.split(jax.random.key(0), 3)
    params = dj.init_rnn(k_params, d, (d,), N_CLASSES, cell=cell)
    xs = jax.random.normal(k_x, (T, m, d))
    ys = jax.random.randint(k_y, (T, m), 0, N_CLASSES)
    inputs = {"float32": xs, "mixed": xs.astype(jnp.bfloat16)}
    contenders = {}
    for name, method in SPEED_METHODS.items():
        gradient = jax.jit(
            jax.grad(lambda p, x, y, method=method: dj.sequence_loss(p, x, y, method=method))
        )
        for precision, x in inputs.items():
            contenders[f"{name} {precision}"] = functools.partial(gradient, params, x, ys)
    before = load_average()
    seconds = alternate(contenders, rounds)
    ratios = {name: seconds[f"{name} float32"] / seconds[f"{name} mixed"] for name in SPEED_METHODS}
    return {
        "cell": cell,
        "T": T,
        "m": m,
        "d": d,
        "seconds": seconds,
        "speedup_of_mixed": ratios,
        "load_before": before,
        "load_after": load_average(),
    }


def product_point(T: int, m: int, d: int, rounds: int) -> dict:
    """The (T·m, d) × (d, 3d) input projection of a GRU: float32, and bfloat16 operands
    accumulated in float32 (as the library's products in mixed precision)."""
    a = jax.random.normal(jax.random.key(0), (T * m, d))
    b = jax.random.normal(jax.random.key(1), (d, 3 * d))
    a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    f32 = jax.jit(lambda a, b: a @ b)
    mixed = jax.jit(lambda a, b: lax.dot(a, b, preferred_element_type=jnp.float32))
    plain16 = jax.jit(lambda a, b: a @ b)
    before = load_average()
    seconds = alternate(
        {
            "float32": functools.partial(f32, a, b),
            "bfloat16 -> float32 accumulation": functools.partial(mixed, a16, b16),
            "bfloat16 (no preferred_element_type)": functools.partial(plain16, a16, b16),
        },
        rounds,
    )
    return {
        "shape": [T * m, d, 3 * d],
        "seconds": seconds,
        "load_before": before,
        "load_after": load_average(),
    }


# --------------------------------------------------------------------------- report


def pair(entry: dict) -> str:
    return f"{entry['normwise']:.1e} / {entry['per_array']:.1e}"


def loads(point: dict) -> str:
    before, after = (" ".join(map(str, point[key])) for key in ("load_before", "load_after"))
    return f"{before} → {after}"


def markdown(report: dict) -> str:
    T, m, d = report["error_size"]
    lines = [
        "# Mixed precision: float32 parameters, bfloat16 inputs",
        "",
        f"Machine: {report['machine']}. Command: `{report['command']}`. "
        f"`uptime` before: `{report['uptime_before']}`; after: `{report['uptime_after']}`. "
        "The machine is shared: other processes ran during the measurement.",
        "",
        "## Error of the gradient against float32",
        "",
        f"One layer, T = {T}, m = {m}, n = d = {d}, k = {N_CLASSES} classes, softmax "
        "cross-entropy; `step` is a gated user cell through `scan_cell`. Relative error of "
        "the mixed-precision gradient against the float32 gradient of the same parameters "
        "at the same inputs (exact methods: against `Autodiff()` in float32; approximations: "
        "against themselves in float32), normwise (‖g − g₃₂‖₂ / ‖g₃₂‖₂) / largest per "
        f"parameter array (max|g − g₃₂| / max|g₃₂|); the largest over {report['seeds']} "
        "draws. Every gradient is float32. bfloat16's unit roundoff is u = 2⁻⁸ ≈ 3.9e-3.",
        "",
    ]
    cells = list(report["errors"])
    names = list(dict.fromkeys(name for cell in cells for name in report["errors"][cell]))
    lines += ["| method | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    for name in names:
        row = []
        for cell in cells:
            entry = report["errors"][cell].get(name)
            row.append("—" if entry is None else pair(entry))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"Growth with T: `BPTT()`, m = {m}, n = d = {d}, one draw, normwise / per array.",
        "",
        "| cell | " + " | ".join(f"T = {T}" for T in GROWTH_T) + " |",
        "|---|" + "---:|" * len(GROWTH_T),
    ]
    for cell, by_T in report["growth"].items():
        row = [pair(by_T[str(T)]) for T in GROWTH_T]
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    lines += [
        "",
        "## Speed: float32 against mixed precision",
        "",
        f"Median of {report['rounds']} alternating rounds, compile excluded; one layer, "
        f"n = d, k = {N_CLASSES}. Ratio = float32 time / mixed time (> 1: mixed is faster).",
        "",
        "| cell | T | m | d | method | float32 ms | mixed ms | ratio | load before → after |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for point in report["speed"]:
        load = loads(point)
        for name in SPEED_METHODS:
            s32, s16 = point["seconds"][f"{name} float32"], point["seconds"][f"{name} mixed"]
            lines.append(
                f"| {point['cell']} | {point['T']} | {point['m']} | {point['d']} | {name} | "
                f"{s32 * 1e3:.2f} | {s16 * 1e3:.2f} | {point['speedup_of_mixed'][name]:.2f} | "
                f"{load} |"
            )
    lines += [
        "",
        "One matrix product, the GRU's input projection (T·m, d) × (d, 3d):",
        "",
        "| shape | float32 ms | bfloat16, float32 accumulation ms | bfloat16 plain ms | load |",
        "|---|---:|---:|---:|---|",
    ]
    for point in report["products"]:
        s = point["seconds"]
        lines.append(
            f"| {' × '.join(map(str, point['shape']))} | {s['float32'] * 1e3:.3f} | "
            f"{s['bfloat16 -> float32 accumulation'] * 1e3:.3f} | "
            f"{s['bfloat16 (no preferred_element_type)'] * 1e3:.3f} | "
            f"{' '.join(map(str, point['load_before']))} |"
        )
    lines += ["", f"Total time: {report['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unavailable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default results)")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (9)")
    parser.add_argument(
        "--quick", action="store_true", help="one draw, Elman only, the first speed point"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict = {
        "machine": machine_description(),
        "command": "python scripts/benchmark_precision.py"
        + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "python": platform.python_version(),
        "uptime_before": uptime(),
        "rounds": args.rounds,
        "error_size": ERROR_SIZE,
    }
    print(f"machine: {report['machine']}", flush=True)
    cells = ("elman",) if args.quick else ("elman", "gru", "lstm", "mingru", "step")
    report["seeds"] = 1 if args.quick else ERROR_SEEDS
    report["errors"] = error_table(cells, *ERROR_SIZE, report["seeds"])
    growth = growth_table(cells[:4], GROWTH_T, ERROR_SIZE[1], ERROR_SIZE[2])
    report["growth"] = {cell: {str(T): v for T, v in by_T.items()} for cell, by_T in growth.items()}
    grid = SPEED_GRID[:1] if args.quick else SPEED_GRID
    speed_cells = SPEED_CELLS[:1] if args.quick else SPEED_CELLS
    report["speed"] = []
    for T, m, d in grid:
        for cell in speed_cells:
            point = speed_point(cell, T, m, d, args.rounds)
            print(point, flush=True)
            report["speed"].append(point)
    report["products"] = [product_point(T, m, d, args.rounds) for T, m, d in grid]
    report["uptime_after"] = uptime()
    report["wall_seconds"] = time.perf_counter() - started
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark_precision.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "benchmark_precision.md"), "w") as f:
        f.write(markdown(report))
    print(f"wrote {args.out}/benchmark_precision.md ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
