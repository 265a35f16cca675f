"""Memory and time per step of the online algorithms against the hidden size d.

    python scripts/online_costs.py [--out results] [--sizes 16 32 64 128 256] [--rounds 5]

One Elman layer of d units on n = 8 inputs, a readout to k = 10 classes, one stream
(m = 1), float32: `dj.online_step` with `RTRL()`, `SnAp(n=1)`, `SnAp(n=2)`, `UORO()` and
`RFLO()`, jitted; the median time of `rounds` calls after two warm-up calls (every
algorithm of one size alternated in one process), the bytes of the algorithm's state
(`OnlineState.traces`) and XLA's temporaries of the compiled step. Beside them the
closed-form memory of each state in floats (|θ| = d(n + d + 1), D = d):

* RTRL: the influence matrix, m·D·|θ| (and O(m·D²·|θ|) flops per step);
* SnAp-1: m·|θ| (one unit per parameter: the online form of one Elman layer stores
  only those entries, as RFLO's traces);
* SnAp-2: m·D·|θ| on a dense recurrence (its pattern is full);
* UORO: m·(D + |θ|);
* RFLO: m·|θ| (one trace per weight).

RTRL and SnAp-2 are skipped above `--max-dense` (default 128: at d = 256 their influence
matrix alone is 134 MB per stream and a step costs ≈ 10¹⁰ flops).

Writes results/online_costs.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import dprnn_jax as dj
from dprnn_jax._app.complexity import machine_description

N_INPUTS, N_CLASSES = 8, 10
ALGORITHMS = {
    "RTRL": dj.RTRL(),
    "SnAp-1": dj.SnAp(n=1),
    "SnAp-2": dj.SnAp(n=2),
    "UORO": dj.UORO(),
    "RFLO": dj.RFLO(),
}
DENSE = ("RTRL", "SnAp-2")


def closed_form_floats(name: str, d: int, m: int = 1) -> dict[str, int]:
    theta = d * (N_INPUTS + d + 1)
    dense = m * d * theta
    return {
        "RTRL": {"ideal": dense, "implemented": dense},
        "SnAp-1": {"ideal": m * theta, "implemented": m * theta},
        "SnAp-2": {"ideal": dense, "implemented": dense},
        "UORO": {"ideal": m * (d + theta), "implemented": m * (d + theta)},
        "RFLO": {"ideal": m * theta, "implemented": m * theta},
    }[name]


def measure(d: int, names: list[str], rounds: int, rng) -> dict:
    params = dj.init_rnn(jax.random.key(0), N_INPUTS, (d,), N_CLASSES)
    x = jax.random.normal(jax.random.key(1), (1, N_INPUTS))
    y = jnp.zeros((1,), jnp.int32)
    step = jax.jit(dj.online_step)
    programs, states = {}, {}
    for name in names:
        algorithm = ALGORITHMS[name]
        key = jax.random.key(2) if name == "UORO" else None
        state = dj.online_init(params, 1, algorithm, key=key)
        states[name] = state
        programs[name] = (state, step.lower(params, state, x, y).compile())
    for state, compiled in programs.values():
        for _ in range(2):
            jax.block_until_ready(compiled(params, state, x, y))
    times = {name: [] for name in names}
    for _ in range(rounds):
        for index in rng.permutation(len(names)):
            name = names[index]
            state, compiled = programs[name]
            start = time.perf_counter()
            jax.block_until_ready(compiled(params, state, x, y))
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name in names:
        traces = [leaf for leaf in jax.tree.leaves(states[name].traces)]
        floats = closed_form_floats(name, d)
        rows[name] = {
            "ms_per_step": 1e3 * float(np.median(times[name])),
            "state_bytes": int(sum(leaf.size * leaf.dtype.itemsize for leaf in traces)),
            "temp_bytes": int(programs[name][1].memory_analysis().temp_size_in_bytes),
            "closed_form_bytes_ideal": 4 * floats["ideal"],
            "closed_form_bytes_implemented": 4 * floats["implemented"],
        }
    return {"d": d, "load": os.getloadavg(), "algorithms": rows}


def table(points: list[dict]) -> list[str]:
    lines = [
        "| d | algorithm | ms / step | state (KiB) | closed form, as implemented (KiB) "
        "| closed form, sparse/ideal (KiB) | XLA temporaries (KiB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        for name, row in point["algorithms"].items():
            lines.append(
                f"| {point['d']} | {name} | {row['ms_per_step']:.3f} | "
                f"{row['state_bytes'] / 1024:,.1f} | "
                f"{row['closed_form_bytes_implemented'] / 1024:,.1f} | "
                f"{row['closed_form_bytes_ideal'] / 1024:,.1f} | "
                f"{row['temp_bytes'] / 1024:,.1f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-dense", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    points = []
    for d in args.sizes:
        names = [n for n in ALGORITHMS if n not in DENSE or d <= args.max_dense]
        points.append(measure(d, names, args.rounds, rng))
        print("\n".join(table(points[-1:])), flush=True)
    lines = [
        "# Online algorithms: memory and time per step against d",
        "",
        f"Machine: {machine_description()}. Command: `python scripts/online_costs.py "
        f"--sizes {' '.join(map(str, args.sizes))} --rounds {args.rounds}`. One Elman "
        f"layer, n = {N_INPUTS}, k = {N_CLASSES}, one stream, float32; median of the "
        "rounds, every algorithm of one size alternated in one process. Load averages: "
        + "; ".join(f"d = {p['d']}: " + ", ".join(f"{x:.1f}" for x in p["load"]) for p in points)
        + ".",
        "",
        *table(points),
        "",
        f"Total time: {time.perf_counter() - start:.0f} s.",
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "online_costs.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "online_costs.json"), "w") as handle:
        json.dump(points, handle, indent=1)
    print(f"wrote {args.out}/online_costs.md")


if __name__ == "__main__":
    main()
