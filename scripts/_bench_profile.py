"""Where the time of one gradient goes: the profile behind the benchmark's ratios.

    python scripts/_bench_profile.py [--out results] [--rounds 15]

At the two target grid points, times (alternating rounds, one process, medians) the full
gradient of `dprnn_jax` bptt, of `jax.grad` through `lax.scan` and of Flax, next to the
parts of the bptt gradient compiled on their own: the forward loss, the forward
recurrence (one small product per step), the backward recurrence (one per step), the
hoisted weight contractions and a loop that does nothing but one tiny (m, d) × (d, d)
product per step. Writes results/profile.md and profile.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402

import dprnn_jax as dj  # noqa: E402
from dprnn_jax._algorithms.bptt import bptt_error_flow  # noqa: E402
from dprnn_jax._app.complexity import machine_description  # noqa: E402
from dprnn_jax._cells.elman import hoisted_layer  # noqa: E402
from dprnn_jax._core.error_flow import sum_over_steps  # noqa: E402
from dprnn_jax._core.jacobian import ElmanJacobian  # noqa: E402

POINTS = ((128, 32, 128), (1024, 16, 32))


def parts(T: int, m: int, d: int) -> dict:
    params, xs, ys = benchmark.make_problem(T, m, d)
    layer = params.layers[0]
    h0 = jnp.zeros((m, d), jnp.float32)
    hs = hoisted_layer(layer, xs, h0)
    flax_grad, flax_args = benchmark.flax_contender(T, m, d)

    def forward_loss(params, xs, ys):
        return dj.sequence_loss(params, xs, ys, method="bptt")

    def contractions(delta, xs, hs):
        # As in `_layer._layer_bwd`.
        hs_prev = jnp.concatenate([h0[None], hs[:-1]])
        return sum_over_steps(delta, xs), sum_over_steps(delta, hs_prev), delta.sum((0, 1))

    def one_product_per_step(S, xs):
        return lax.scan(lambda h, x: (h @ S + x, None), xs[0], xs)[0]

    programs = {
        "bptt gradient (total)": (benchmark.library_gradient("bptt"), (params, xs, ys)),
        "jax.grad(lax.scan) gradient": (jax.jit(jax.grad(benchmark.scan_loss)), (params, xs, ys)),
        "flax gradient": (flax_grad, flax_args),
        "part: forward loss (scan + readout + CE)": (jax.jit(forward_loss), (params, xs, ys)),
        "part: forward recurrence (hoisted_layer)": (
            jax.jit(hoisted_layer),
            (layer, xs, h0),
        ),
        "part: backward recurrence (bptt_error_flow)": (
            jax.jit(lambda P, s, S: bptt_error_flow(P, ElmanJacobian(S, s)).delta),
            (hs, hs, layer.S),
        ),
        "part: weight contractions (dW, dS, db)": (jax.jit(contractions), (hs, xs, hs)),
        "floor: loop of one (m,d)×(d,d) product per step": (
            jax.jit(one_product_per_step),
            (layer.S, xs),
        ),
    }
    thunks = {name: functools.partial(fn, *args) for name, (fn, args) in programs.items()}
    return thunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    machine = machine_description()
    report = {"machine": machine, "rounds": args.rounds, "points": []}
    lines = [
        "# Profile of one gradient (medians of alternating rounds, one process)",
        "",
        f"Machine: {machine}.",
        "",
    ]
    for T, m, d in POINTS:
        seconds = benchmark.alternate(parts(T, m, d), args.rounds)
        report["points"].append({"T": T, "m": m, "d": d, "seconds": seconds})
        lines += [f"## T = {T}, m = {m}, n = d = {d}", "", "| program | ms |", "|---|---:|"]
        lines += [f"| {name} | {s * 1e3:.3f} |" for name, s in seconds.items()]
        lines.append("")
        print(f"T={T} m={m} d={d}")
        for name, s in seconds.items():
            print(f"  {name:50s} {s * 1e3:9.3f} ms")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "profile.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
