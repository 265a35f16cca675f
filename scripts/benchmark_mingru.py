"""What a diagonal Jacobian buys: Ω/BPTT and ParallelScan/BPTT time ratios per cell, in
ONE process.

    python scripts/benchmark_mingru.py [--out results] [--rounds 7] [--quick]

The model: one layer of d units (Elman tanh, GRU, LSTM or minGRU) on n = d inputs, a
linear readout to k = 10 classes, softmax cross-entropy, float32. For each cell the full
gradient of `dj.sequence_loss` with `BPTT()`, `Omega()` and `ParallelScan()`. minGRU's
one-step Jacobian is diagonal (`DiagonalJacobian`): its Ω fill is elementwise,
O(T²·m·d) against O(T²·m·d²) for the dense cells, and its parallel scan composes
vectors, O(T·m·d) per level against O(T·m·d³). The ratios say how much of that shows.

Timing protocol (as scripts/benchmark.py): every program is compiled and run twice
(compile excluded), then all programs of one grid point run in a new random order each
round, `rounds` rounds; medians. Only ratios within one run are meaningful.

Writes results/benchmark_mingru.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

import dprnn_jax as dj
from dprnn_jax._app.complexity import machine_description

CELLS = ("elman", "gru", "lstm", "mingru")
METHODS = {"bptt": dj.BPTT(), "omega": dj.Omega(), "scan": dj.ParallelScan()}
GRID = ((1024, 16, 32), (256, 16, 64))


def gradient_program(cell: str, method, T: int, m: int, d: int):
    params = dj.init_rnn(jax.random.key(0), d, (d,), 10, cell=cell)
    xs = jax.random.normal(jax.random.key(1), (T, m, d))
    ys = jax.random.randint(jax.random.key(2), (T, m), 0, 10)
    grad = jax.jit(jax.grad(lambda p: dj.sequence_loss(p, xs, ys, method=method)))
    return lambda: jax.block_until_ready(grad(params))


def grid_point(T: int, m: int, d: int, rounds: int, rng) -> dict:
    programs = {
        (cell, name): gradient_program(cell, method, T, m, d)
        for cell in CELLS
        for name, method in METHODS.items()
    }
    for run in programs.values():
        run()
        run()
    times = {key: [] for key in programs}
    for _ in range(rounds):
        for index in rng.permutation(len(programs)):
            key = list(programs)[index]
            start = time.perf_counter()
            programs[key]()
            times[key].append(time.perf_counter() - start)
    medians = {key: float(np.median(value)) for key, value in times.items()}
    rows = {}
    for cell in CELLS:
        bptt = medians[(cell, "bptt")]
        rows[cell] = {
            "bptt_ms": 1e3 * bptt,
            "omega_ms": 1e3 * medians[(cell, "omega")],
            "scan_ms": 1e3 * medians[(cell, "scan")],
            "omega_over_bptt": medians[(cell, "omega")] / bptt,
            "scan_over_bptt": medians[(cell, "scan")] / bptt,
        }
    return {"T": T, "m": m, "d": d, "load": os.getloadavg(), "cells": rows}


def table(points: list[dict]) -> list[str]:
    lines = [
        "| (T, m, d) | cell | bptt ms | omega ms | scan ms | omega / bptt | scan / bptt |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        shape = f"({point['T']}, {point['m']}, {point['d']})"
        for cell, row in point["cells"].items():
            lines.append(
                f"| {shape} | {cell} | {row['bptt_ms']:.2f} | {row['omega_ms']:.2f} | "
                f"{row['scan_ms']:.2f} | {row['omega_over_bptt']:.2f} | "
                f"{row['scan_over_bptt']:.2f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one small grid point")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    grid = ((128, 8, 16),) if args.quick else GRID
    start = time.perf_counter()
    points = []
    for T, m, d in grid:
        points.append(grid_point(T, m, d, args.rounds, rng))
        print("\n".join(table(points[-1:])), flush=True)
    lines = [
        "# Ω and the parallel scan on a diagonal recurrence (minGRU) beside the dense cells",
        "",
        f"Machine: {machine_description()}. Command: `python scripts/benchmark_mingru.py"
        f"{' --quick' if args.quick else ''}`. Median of {args.rounds} rounds in random "
        "order, compile excluded, one process; one layer, n = d, k = 10, float32. Load "
        "averages per point: "
        + "; ".join(
            f"({p['T']}, {p['m']}, {p['d']}): " + ", ".join(f"{x:.1f}" for x in p["load"])
            for p in points
        )
        + ".",
        "",
        *table(points),
        "",
        f"Total time: {time.perf_counter() - start:.0f} s.",
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "benchmark_mingru.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "benchmark_mingru.json"), "w") as handle:
        json.dump(points, handle, indent=1)
    print(f"wrote {args.out}/benchmark_mingru.md")


if __name__ == "__main__":
    main()
