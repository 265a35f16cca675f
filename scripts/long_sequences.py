"""Exact gradients of a long sequence loss in bounded memory: XLA temporaries and time.

    python scripts/long_sequences.py [--T 65536] [--repeats 3] [--out results]

One Elman layer (n = 8, d = 128, m = 8, 10 classes, float32), the gradient of the
softmax sequence loss w.r.t. every parameter, for

* `jax.grad` through one plain `lax.scan` (readout and loss after it);
* the best plain-JAX answer to "checkpointed BPTT" (jax-ml/jax#2139): an outer
  `lax.scan` over segments of 256 steps whose `jax.checkpoint`-ed body runs an inner
  scan with the readout and loss fused;
* `method=BPTT()`, `BPTT(checkpoint="sqrt")`, `Omega(checkpoint="sqrt")`.

Temporaries are XLA's own figure for the compiled gradient
(`compiled.memory_analysis().temp_size_in_bytes`); times are medians of alternating
rounds in one process (compare ratios, never absolute times across runs). Writes
long_sequences.{md,json} and, with --sweep, the memory-vs-T plot long_sequences.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import dprnn_jax as dj  # noqa: E402

N, D, M, K = 8, 128, 8, 10
SEGMENT = 256


def problem(T: int):
    params = dj.init_rnn(jax.random.key(0), N, (D,), K)
    xs = jax.random.normal(jax.random.key(1), (T, M, N), jnp.float32)
    ys = jax.random.randint(jax.random.key(2), (T, M), 0, K)
    return params, xs, ys


def plain_scan_loss(params, xs, ys):
    layer, readout = params.layers[0], params.readout

    def step(h, x):
        h = jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)
        return h, h

    _, hs = lax.scan(step, jnp.zeros((xs.shape[1], D), xs.dtype), xs)
    logits = hs @ readout.W.T + readout.b
    return optax.softmax_cross_entropy_with_integer_labels(logits, ys).sum() / xs.shape[1]


def plain_remat_loss(params, xs, ys, segment: int = SEGMENT):
    """What a user writes today: segments of `segment` steps, each jax.checkpoint-ed."""
    layer, readout = params.layers[0], params.readout
    T = xs.shape[0]
    pad = -T % segment
    valid = jnp.arange(T + pad) < T
    xs = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
    ys = jnp.concatenate([ys, jnp.zeros((pad, *ys.shape[1:]), ys.dtype)])
    shape = (-1, segment)

    @jax.checkpoint
    def run_segment(h, inputs):
        x_seg, y_seg, v_seg = inputs

        def step(carry, inputs):
            h, total = carry
            x, y, v = inputs
            h = jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)
            logits = h @ readout.W.T + readout.b
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
            return (h, total + jnp.where(v, loss, 0.0)), None

        (h, total), _ = lax.scan(step, (h, 0.0), (x_seg, y_seg, v_seg))
        return h, total

    inputs = (
        xs.reshape(*shape, *xs.shape[1:]),
        ys.reshape(*shape, *ys.shape[1:]),
        valid.reshape(shape),
    )
    _, totals = lax.scan(run_segment, jnp.zeros((xs.shape[1], D), xs.dtype), inputs)
    return totals.sum() / xs.shape[1]


def library_loss(method):
    return lambda params, xs, ys: dj.sequence_loss(params, xs, ys, method=method)


CONTENDERS = {
    "jax.grad(lax.scan)": plain_scan_loss,
    "plain JAX remat, 256-step segments": plain_remat_loss,
    "BPTT()": library_loss(dj.BPTT()),
    'BPTT(checkpoint="sqrt")': library_loss(dj.BPTT(checkpoint="sqrt")),
    'Omega(checkpoint="sqrt")': library_loss(dj.Omega(checkpoint="sqrt")),
}


def compiled_gradient(loss, T):
    params, xs, ys = problem(T)
    compiled = jax.jit(jax.grad(loss)).lower(params, xs, ys).compile()
    return compiled, (params, xs, ys)


def temporaries_mib(compiled) -> float:
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def max_relative_error(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)) / jnp.max(jnp.abs(y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def measure(T: int, repeats: int, names) -> dict:
    programs = {name: compiled_gradient(CONTENDERS[name], T) for name in names}
    memory = {name: temporaries_mib(compiled) for name, (compiled, _) in programs.items()}
    results = {name: compiled(*args) for name, (compiled, args) in programs.items()}
    reference = results["BPTT()"] if "BPTT()" in results else next(iter(results.values()))
    errors = {name: max_relative_error(g, reference) for name, g in results.items()}
    times = {name: [] for name in names}
    for _ in range(repeats):  # alternating rounds: every contender sees the same load
        for name, (compiled, args) in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {"T": T, "memory_mib": memory, "seconds": seconds, "error_vs_bptt": errors}


def report(row: dict) -> str:
    bptt = row["seconds"].get("BPTT()")
    remat = row["memory_mib"].get("plain JAX remat, 256-step segments")
    lines = [
        f"T = {row['T']:,}, m = {M}, n = {N}, d = {D}, {K} classes, float32, "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}",
        "",
        "| gradient of the sequence loss | temporaries (MiB) | × plain remat | "
        "time (s) | × BPTT() | max rel. diff. vs BPTT() |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in row["memory_mib"]:
        memory, seconds = row["memory_mib"][name], row["seconds"][name]
        lines.append(
            f"| {name} | {memory:,.1f} | {memory / remat:.2f} | {seconds:.3f} | "
            f"{seconds / bptt:.2f} | {row['error_vs_bptt'][name]:.1e} |"
        )
    return "\n".join(lines)


def sweep(Ts, limit_mib: float) -> dict:
    """Temporaries against T (compile only; no run), until a contender passes the limit."""
    curves = {name: [] for name in CONTENDERS if name != "plain JAX remat, 256-step segments"}
    for T in Ts:
        for name, points in curves.items():
            if points and points[-1][1] > limit_mib:
                continue
            compiled, _ = compiled_gradient(CONTENDERS[name], T)
            points.append((T, temporaries_mib(compiled)))
            print(f"  T={T:>9,} {name:28s} {points[-1][1]:10.1f} MiB", flush=True)
    return curves


def plot(curves: dict, path: str, limit_mib: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in curves.items():
        Ts, mib = zip(*points)
        ax.loglog(Ts, mib, "o-", label=name)
    ax.axhline(limit_mib, color="grey", linestyle=":", label=f"{limit_mib / 1024:.0f} GiB")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("XLA temporaries of the gradient (MiB)")
    ax.set_title(f"One Elman layer, m={M}, d={D}, float32")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results")
    parser.add_argument("--sweep", action="store_true", help="memory-vs-T plot up to 16 GiB")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    row = measure(args.T, args.repeats, list(CONTENDERS))
    text = report(row)
    print(text)
    result = {"table": row}
    if args.sweep:
        limit = 16 * 1024.0
        Ts = [2**p for p in range(10, 24)]
        curves = sweep(Ts, limit)
        plot(curves, os.path.join(args.out, "long_sequences.png"), limit)
        result["sweep"] = curves
        text += "\n\nMemory against T: long_sequences.png (compile-time figures).\n"
    with open(os.path.join(args.out, "long_sequences.md"), "w") as file:
        file.write("# Long sequences in bounded memory\n\n" + text + "\n")
    with open(os.path.join(args.out, "long_sequences.json"), "w") as file:
        json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
