"""Online learning at increasing lag: final loss and gradient alignment of RTRL, SnAp-1,
UORO and RFLO, trained with an update at every step.

    python scripts/online_alignment.py [--out results] [--steps 4000] [--lags 2 4 6 8]
        [--seeds 0 1 2]

The longer version of notebooks/05_online_learning.ipynb. The task is a stream of fair
coin flips x_t with the target y_t = 0.5 + 0.5·x_{t−L} − 0.25·x_{t−2L} at every step
(mse, ½(ŷ − y)²), a stream task with a known lag of the kind Marschall, Cho & Savin use
in "A Unified Framework of Online Learning Algorithms for Training Recurrent Neural
Networks". Predicting the mean scores ½·Var(y) = 0.0391; recalling x_{t−L} but not
x_{t−2L}, 0.0078; both, 0.

One Elman layer of `--hidden` units, `--streams` streams in parallel, Adam (3e-3) applied
to the gradient of every step as `dj.online_step` adds it (the traces carry on); per
seed, the initial parameters, the data and UORO's key change. At `--snapshots` evenly
spaced points of training, `dj.gradient_alignment` compares the algorithm's gradient on
`--probes` fresh sequences of 24 steps (from a zero state, the first 2L steps
unsupervised) with the exact one (docs/diagnostics.md#alignment): cosine, the kept share
of the layer's exact gradient, and the exact gradient's split by lag (`lag_share`). UORO's
estimate there is drawn with a fresh key at each snapshot.

Algorithms: RTRL (exact), SnAp(n=1), UORO, RFLO(tau=1) — exactly BPTT(truncation=0) —
and RFLO(tau=4) (leaky traces; the network itself is not leaky). SnAp(n=2) is RTRL on a
dense Elman layer (its pattern is full; docs/algorithms.md#online-approximations) and is
not run.

Writes results/online_alignment.md and .json and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dprnn_jax as dj
from dprnn_jax._app.complexity import machine_description

ALGORITHMS = {
    "RTRL": dj.RTRL(),
    "SnAp-1": dj.SnAp(n=1),
    "UORO": dj.UORO(),
    "RFLO τ=1": dj.RFLO(tau=1.0),
    "RFLO τ=4": dj.RFLO(tau=4.0),
}
PROBE_STEPS = 24
LEARNING_RATE = 3e-3
NO_MEMORY = 0.5 * 0.25 * (0.5**2 + 0.25**2)  # ½·Var(y)
LAG_L_ONLY = 0.5 * 0.25 * 0.25**2  # x_{t−L} recalled, x_{t−2L} not


def add_task(rng, length: int, lag: int, streams: int):
    """Inputs (length, m, 1), targets (length, m, 1) and loss mask (length, m): coin flips
    and y_t = 0.5 + 0.5·x_{t−L} − 0.25·x_{t−2L}, supervised from t = 2L on."""
    x = rng.integers(0, 2, (length, streams)).astype(np.float32)

    def back(k):  # x_{t−k}, zeros before the stream starts
        return np.concatenate([np.zeros((k, streams), np.float32), x[:-k]])

    y = 0.5 + 0.5 * back(lag) - 0.25 * back(2 * lag)
    mask = np.broadcast_to(np.arange(length)[:, None] >= 2 * lag, (length, streams))
    return x[..., None], y[..., None], mask.astype(np.float32)


def train_online(algorithm, snapshots: int, params0, stream, key):
    """Adam on the gradient of every step; the loss per step and the parameters at
    `snapshots` evenly spaced points (the first before any update)."""
    optimizer = optax.adam(LEARNING_RATE)
    streams, steps = stream[0].shape[1], stream[0].shape[0]
    state = dj.online_init(params0, streams, algorithm, key=key)
    no_gradient = state.gradient

    def step(carry, inputs):
        params, opt_state, state = carry
        x, y, mask = inputs
        state, _ = dj.online_step(params, state, x, y, mask=mask, loss="mse")
        updates, opt_state = optimizer.update(state.gradient, opt_state, params)
        params = optax.apply_updates(params, updates)
        fresh = dataclasses.replace(state, gradient=no_gradient, cost=jnp.zeros_like(state.cost))
        return (params, opt_state, fresh), (state.cost, params)

    _, (losses, history) = jax.lax.scan(step, (params0, optimizer.init(params0), state), stream)
    every = steps // (snapshots - 1)
    return losses, jax.tree.map(
        lambda p0, h: jnp.concatenate([p0[None], h[every - 1 :: every]]), params0, history
    )


def align(algorithm, snapshots, probe, keys):
    """`gradient_alignment` of `algorithm` at every snapshot, one after the other."""
    xs, ys, mask = probe
    random = isinstance(algorithm, dj.UORO)

    def one(inputs):
        params, key = inputs
        result = dj.gradient_alignment(
            params, xs, ys, algorithm, key=key if random else None, mask=mask, loss="mse"
        )
        return result.cosine, result.kept_share, result.lag_share

    return jax.lax.map(one, (snapshots, keys))


def run(args) -> list[dict]:
    train = {
        name: jax.jit(functools.partial(train_online, algorithm, args.snapshots))
        for name, algorithm in ALGORITHMS.items()
    }
    measure = {name: jax.jit(functools.partial(align, a)) for name, a in ALGORITHMS.items()}
    late = slice(args.snapshots // 2, None)
    tail = max(args.steps // 5, 1)
    rows = []
    for lag in args.lags:
        for seed in args.seeds:
            rng = np.random.default_rng(seed)
            stream = add_task(rng, args.steps, lag, args.streams)
            probe = add_task(rng, PROBE_STEPS, lag, args.probes)
            params0 = dj.init_rnn(jax.random.key(seed), 1, (args.hidden,), 1)
            train_key, probe_key = jax.random.split(jax.random.key(1000 + seed))
            probe_keys = jax.random.split(probe_key, args.snapshots)
            for name, algorithm in ALGORITHMS.items():
                key = train_key if isinstance(algorithm, dj.UORO) else None
                losses, snapshots = train[name](params0, stream, key)
                cosine, kept, lag_share = measure[name](snapshots, probe, probe_keys)
                losses, lag_share = np.asarray(losses), np.asarray(lag_share)
                rows.append(
                    {
                        "algorithm": name,
                        "lag": lag,
                        "seed": seed,
                        "final_loss": float(losses[-tail:].mean()),
                        "loss_curve_every_100": [
                            float(chunk.mean())
                            for chunk in np.array_split(losses, args.steps // 100)
                        ],
                        "cosine": [float(c) for c in np.asarray(cosine)],
                        "kept_share": [float(k) for k in np.asarray(kept)],
                        "mean_cosine": float(np.mean(cosine)),
                        "mean_kept_share": float(np.mean(kept)),
                        "late_lag_share": [float(s) for s in lag_share[late].mean(0)],
                        "load": os.getloadavg(),
                    }
                )
                print(
                    f"L = {lag} seed {seed} {name:>8}: loss {rows[-1]['final_loss']:.4f}, "
                    f"cosine {rows[-1]['mean_cosine']:.2f}, kept {rows[-1]['mean_kept_share']:.2f}",
                    flush=True,
                )
    return rows


def summary(rows: list[dict], lags: list[int]) -> dict:
    """Per algorithm and lag: mean and spread over the seeds."""
    table = {}
    for name in ALGORITHMS:
        for lag in lags:
            mine = [row for row in rows if row["algorithm"] == name and row["lag"] == lag]
            losses = np.array([row["final_loss"] for row in mine])
            table[name, lag] = {
                "loss_mean": float(losses.mean()),
                "loss_min": float(losses.min()),
                "loss_max": float(losses.max()),
                "cosine": float(np.mean([row["mean_cosine"] for row in mine])),
                "kept_share": float(np.mean([row["mean_kept_share"] for row in mine])),
                "lag0_share": float(np.mean([row["late_lag_share"][0] for row in mine])),
            }
    return table


def tables(table: dict, lags: list[int]) -> list[str]:
    header = "| algorithm | " + " | ".join(f"L = {lag}" for lag in lags) + " |"
    rule = "|---|" + "---:|" * len(lags)
    lines = [
        "Final loss (mean of the last fifth of the updates; mean over the seeds, their range "
        f"in brackets). Predicting the mean: {NO_MEMORY:.4f}; x_{{t−L}} recalled but not "
        f"x_{{t−2L}}: {LAG_L_ONLY:.4f}.",
        "",
        header,
        rule,
    ]
    for name in ALGORITHMS:
        cells = [
            f"{table[name, lag]['loss_mean']:.4f} "
            f"({table[name, lag]['loss_min']:.4f}–{table[name, lag]['loss_max']:.4f})"
            for lag in lags
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cosine with the exact gradient / kept share of the layer's exact gradient, mean over "
        "the snapshots and the seeds:",
        "",
        header,
        rule,
    ]
    for name in ALGORITHMS:
        cells = [
            f"{table[name, lag]['cosine']:.2f} / {table[name, lag]['kept_share']:.2f}"
            for lag in lags
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Share of the exact gradient carried at lag 0 (`lag_share[0]`, what RFLO τ=1 = "
        "BPTT(truncation=0) keeps) on each algorithm's network, mean of the second half of "
        "the snapshots and of the seeds:",
        "",
        header,
        rule,
    ]
    for name in ALGORITHMS:
        cells = [f"{table[name, lag]['lag0_share']:.2f}" for lag in lags]
        lines.append(f"| {name}'s network | " + " | ".join(cells) + " |")
    return lines


def uptime() -> str:
    """`uptime`'s line (the load of the machine the numbers come from), or the load average."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--lags", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--probes", type=int, default=128)
    parser.add_argument("--snapshots", type=int, default=9)
    args = parser.parse_args()
    start = time.perf_counter()
    machine, load_before = machine_description(), uptime()
    rows = run(args)
    table = summary(rows, args.lags)
    command = (
        f"python scripts/online_alignment.py --steps {args.steps} "
        f"--lags {' '.join(map(str, args.lags))} --seeds {' '.join(map(str, args.seeds))}"
    )
    lines = [
        "# Online learning at increasing lag: loss and gradient alignment",
        "",
        f"Machine: {machine}. `uptime` before: `{load_before}`; after: `{uptime()}` (the "
        "machine's two cores are shared with other work; the numbers here are losses and "
        f"cosines, not times). Command: `{command}`. One Elman layer of {args.hidden} units, "
        f"{args.streams} streams, {args.steps} online updates (Adam {LEARNING_RATE}, one "
        f"per step), float32; alignment on {args.probes} probe sequences of {PROBE_STEPS} "
        f"steps at {args.snapshots} snapshots. The task, the algorithms and the measures: "
        "the docstring of `scripts/online_alignment.py` and "
        "notebooks/05_online_learning.ipynb.",
        "",
        *tables(table, args.lags),
        "",
        f"Total time: {time.perf_counter() - start:.0f} s.",
    ]
    print("\n".join(tables(table, args.lags)))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "online_alignment.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "online_alignment.json"), "w") as handle:
        summary_rows = [
            {"algorithm": name, "lag": lag, **values} for (name, lag), values in table.items()
        ]
        json.dump({"command": command, "summary": summary_rows, "runs": rows}, handle, indent=1)
    print(f"wrote {args.out}/online_alignment.md")


if __name__ == "__main__":
    main()
