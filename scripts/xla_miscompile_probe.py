"""Does this machine's XLA compile the gradients it was seen to miscompile? Plain JAX.

    python scripts/xla_miscompile_probe.py [--seeds 20]

Two float64 cases of docs/algorithms.md#the-compiler-users-get, each over `--seeds`
random problems, compiled by XLA's default CPU pipeline and by the legacy code generation
that the test suite uses (`--xla_cpu_use_fusion_emitters=false
--xla_backend_optimization_level=0`, set here per program):

* "split": two gates of a GRU-like step, `jnp.split` and a written-out sigmoid, the
  gradient with respect to W and b (no loop; miscompiled on an AMD EPYC with jax 0.10.2);
* "scan": a GRU cell written for one sample and batched with `jax.vmap`, T = 2, m = 4,
  d = 5, `jax.grad` through `lax.scan` (reported miscompiled on another machine).

Each is compared with the same function written with slices and `jax.nn.sigmoid`
("split") or unrolled ("scan"), compiled by the legacy code generator. It prints the
largest relative difference per case and pipeline, and exits 1 if any exceeds 1e-8.
No code of dprnn_jax is involved.
"""

from __future__ import annotations

import argparse
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

M, N, D, T = 4, 3, 5, 2
PIPELINES = {
    "default": {},
    "legacy": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0},
}


def split_gates(W, b, x):
    """Two gates of a GRU-like step: the case miscompiled with respect to (W, b)."""
    a_r, a_z, a_n = jnp.split(x @ W.T + b, 3, axis=-1)
    r, z = 1 / (1 + jnp.exp(-a_r)), 1 / (1 + jnp.exp(-a_z))
    return jnp.sum(z * jnp.tanh(a_n * r))


def sliced_gates(W, b, x):
    """`split_gates` with slices and `jax.nn.sigmoid`: the reference (compiled right)."""
    a = x @ W.T + b
    r, z = jax.nn.sigmoid(a[:, :D]), jax.nn.sigmoid(a[:, D : 2 * D])
    return jnp.sum(z * jnp.tanh(a[:, 2 * D :] * r))


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


def split_problem(rng):
    return rng.standard_normal((3 * D, N)), rng.standard_normal(3 * D), rng.standard_normal((M, N))


def scan_problem(rng):
    params = {
        "W_ih": rng.standard_normal((3 * D, N)),
        "W_hh": rng.standard_normal((3 * D, D)),
        "b": rng.standard_normal(3 * D),
    }
    return params, *(rng.standard_normal(shape) for shape in ((T, M, N), (M, D), (T, M, D)))


# name: (function under test, its reference, the problem, the arguments differentiated)
CASES = {
    "split": (split_gates, sliced_gates, split_problem, (0, 1)),
    "scan": (scanned_loss, unrolled_loss, scan_problem, (0, 1, 2)),
}


def relative_difference(got, expected) -> float:
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(expected))
    return max(float(np.max(np.abs(g - e)) / np.max(np.abs(e))) for g, e in pairs)


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
    worst = 0.0
    for case, (function, reference, problem, argnums) in CASES.items():
        expected = jax.jit(jax.grad(reference, argnums), compiler_options=PIPELINES["legacy"])
        for pipeline, options in PIPELINES.items():
            gradient = jax.jit(jax.grad(function, argnums), compiler_options=options)
            largest = 0.0
            for seed in range(args.seeds):
                inputs = problem(np.random.default_rng(seed))
                largest = max(largest, relative_difference(gradient(*inputs), expected(*inputs)))
            worst = max(worst, largest)
            print(f"{case:>6}, {pipeline:>7} pipeline: max relative difference {largest:.1e}")
    return 1 if worst > 1e-8 else 0


if __name__ == "__main__":
    sys.exit(main())
