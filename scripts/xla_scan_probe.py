"""Does this machine's XLA compile `jax.grad` through `lax.scan` correctly? Plain JAX.

    python scripts/xla_scan_probe.py [--seeds 20]

The case reported to be miscompiled by XLA's default CPU pipeline (jax 0.10.2): a GRU cell
written for one sample and batched with `jax.vmap`, in float64, T = 2, m = 4, d = 5
(docs/algorithms.md#the-compiler-users-get). For each seed it prints the largest
difference between `jax.grad` through `lax.scan` and `jax.grad` through the same steps
unrolled in Python, under XLA's default pipeline and under the cheap code generation the
test suite uses (`--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0`,
set here per program). The two should agree to rounding, about 1e-15; it exits 1 if any
difference exceeds 1e-8. No code of dprnn_jax is involved.
"""

from __future__ import annotations

import argparse
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

T, M, N, D = 2, 4, 3, 5
PIPELINES = {
    "default": {},
    "cheap": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0},
}


def gru_cell(params, h, x):
    """One sample: h (D,), x (N,)."""
    inputs, recurrent = params["W_ih"] @ x + params["b"], params["W_hh"] @ h
    r = jax.nn.sigmoid(inputs[:D] + recurrent[:D])
    z = jax.nn.sigmoid(inputs[D : 2 * D] + recurrent[D : 2 * D])
    n = jnp.tanh(inputs[2 * D :] + r * recurrent[2 * D :])
    return (1 - z) * n + z * h


batched_cell = jax.vmap(gru_cell, in_axes=(None, 0, 0))


def scanned_loss(params, xs, h0, weights):
    def step(h, x):
        h = batched_cell(params, h, x)
        return h, h

    return jnp.sum(jnp.sin(jax.lax.scan(step, h0, xs)[1]) * weights)


def unrolled_loss(params, xs, h0, weights):
    h, total = h0, 0.0
    for t in range(xs.shape[0]):
        h = batched_cell(params, h, xs[t])
        total += jnp.sum(jnp.sin(h) * weights[t])
    return total


def largest_difference(seed: int, gradients) -> float:
    """max |grad(scan) − grad(unrolled)| over every entry, for one drawn problem."""
    rng = np.random.default_rng(seed)
    params = {
        "W_ih": rng.standard_normal((3 * D, N)),
        "W_hh": rng.standard_normal((3 * D, D)),
        "b": rng.standard_normal(3 * D),
    }
    args = (params, rng.standard_normal((T, M, N)), rng.standard_normal((M, D)))
    args += (rng.standard_normal((T, M, D)),)
    scanned, unrolled = (gradient(*args) for gradient in gradients)
    differences = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), scanned, unrolled)
    return max(jax.tree.leaves(differences))


def cpu_name() -> str:
    """The processor's model name (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="problems drawn (default 20)")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.default_backend()}, {cpu_name()}")
    worst = {}
    for name, options in PIPELINES.items():
        gradients = [
            jax.jit(jax.grad(loss, (0, 1, 2)), compiler_options=options)
            for loss in (scanned_loss, unrolled_loss)
        ]
        worst[name] = max(largest_difference(seed, gradients) for seed in range(args.seeds))
        print(f"{name:>8} pipeline: max |grad(scan) − grad(unrolled)| = {worst[name]:.2e}")
    return 1 if max(worst.values()) > 1e-8 else 0


if __name__ == "__main__":
    sys.exit(main())
