"""The gradient check the README's main job prints: every method against `jax.grad`,
with the time of one full gradient of the sequence loss for each."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._layer import METHODS
from ._loss import sequence_loss
from ._params import init_rnn


class MethodReport(NamedTuple):
    """One method at one size: max relative gradient error vs autodiff and median time."""

    method: str
    T: int
    m: int
    d: int
    relative_error: float
    seconds: float


def _max_relative_error(actual, expected) -> float:
    pairs = zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True)
    return max(float(jnp.max(jnp.abs(a - e)) / jnp.max(jnp.abs(e))) for a, e in pairs)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn()` (blocked until ready) over `repeats` runs after one warm-up."""
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_method(
    method: str,
    *,
    T: int,
    m: int,
    d: int,
    dtype=jnp.float32,
    repeats: int = 5,
    seed: int = 0,
) -> MethodReport:
    """Gradient of the softmax cross-entropy sequence loss of a 1-layer tanh RNN, n = d = k."""
    k_params, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = init_rnn(k_params, d, (d,), d, dtype=dtype)
    xs = jax.random.normal(k_x, (T, m, d), dtype)
    ys = jax.random.randint(k_y, (T, m), 0, d)

    def gradient(method):
        return jax.jit(jax.grad(lambda p: sequence_loss(p, xs, ys, method=method)))

    grad_fn = gradient(method)
    reference = gradient("autodiff")(params)
    error = _max_relative_error(grad_fn(params), reference)
    seconds = median_seconds(lambda: grad_fn(params), repeats)
    return MethodReport(method, T, m, d, error, seconds)


def gradient_check_table(
    *, T: int = 128, m: int = 32, d: int = 128, naive_T: int = 32, repeats: int = 5
) -> list[MethodReport]:
    """Every method at (T, m, d); the O(T³) naive method at the shorter `naive_T`."""
    reports = []
    for method in METHODS:
        length = naive_T if method == "naive" else T
        reports.append(check_method(method, T=length, m=m, d=d, repeats=repeats))
    return reports


def format_table(reports: list[MethodReport]) -> str:
    lines = [
        f"{'method':<10} {'T':>5} {'m':>4} {'d':>5}  {'max rel. error vs jax.grad':>26}  "
        f"{'time / gradient':>15}",
    ]
    for r in reports:
        lines.append(
            f"{r.method:<10} {r.T:>5} {r.m:>4} {r.d:>5}  {r.relative_error:>26.2e}  "
            f"{r.seconds * 1e3:>12.1f} ms"
        )
    return "\n".join(lines)
