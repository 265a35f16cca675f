"""The README's main job (`python -m dprnn_jax`): the gradient check of every method
against `jax.grad`, with the time of one full gradient of the sequence loss for each,
then a small character-level language model trained end to end with `method="omega"`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._algorithms.registry import METHODS
from .._cells.kinds import init_rnn
from .._model.loss import sequence_loss
from .._training.checkpoint import CheckpointError
from .._training.config import CHECKPOINT, METRICS, RUN_FILES, TrainConfig
from .._training.loop import train
from .._training.resume import ResumeError, saved_config


class MethodReport(NamedTuple):
    """One method at one size: max relative gradient error vs autodiff and median time."""

    method: str
    T: int
    m: int
    d: int
    relative_error: float
    seconds: float


def _max_relative_error(actual, expected) -> float:
    """Largest over leaves of max|a − e| / max|e|; a leaf whose expected gradient is all
    zeros (with one hidden unit, some are) counts its absolute error instead of 0/0.

    Example:
        >>> expected = [np.array([1.0, 4.0]), np.zeros(2)]
        >>> _max_relative_error([np.array([1.0, 2.0]), np.zeros(2)], expected)
        0.5
        >>> _max_relative_error([np.array([1.0, 4.0]), np.array([0.0, 0.25])], expected)
        0.25
    """
    errors = []
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        error, scale = float(jnp.max(jnp.abs(a - e))), float(jnp.max(jnp.abs(e)))
        errors.append(error / scale if scale > 0 else error)
    return max(errors)


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
        # xs and ys are arguments, not closed-over constants: XLA would otherwise embed
        # and constant-fold them, which makes compilation very slow at large sizes.
        loss = functools.partial(sequence_loss, method=method)
        return functools.partial(jax.jit(jax.grad(loss)), xs=xs, targets=ys)

    grad_fn = gradient(method)
    reference = gradient("autodiff")(params)
    error = _max_relative_error(grad_fn(params), reference)
    seconds = median_seconds(lambda: grad_fn(params), repeats)
    return MethodReport(method, T, m, d, error, seconds)


def gradient_check_table(
    *,
    T: int = 128,
    m: int = 32,
    d: int = 128,
    naive_T: int = 128,
    rtrl_d: int = 16,
    repeats: int = 5,
    methods: Sequence[str] = METHODS,
) -> list[MethodReport]:
    """Every method in `methods` at (T, m, d); the O(T³) naive method at the shorter
    `naive_T`, and RTRL (O(T·d⁴) time, O(m·d³) memory) at `naive_T` with the narrower
    `rtrl_d`."""
    reports = []
    for method in methods:
        length = naive_T if method in ("naive", "rtrl") else T
        width = rtrl_d if method == "rtrl" else d
        reports.append(check_method(method, T=length, m=m, d=width, repeats=repeats))
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


# ---------------------------------------------------------------------------------------
# The end-to-end part of the main job: a small character-level language model trained on
# the bundled pydoc text with the Ω DP, a loss curve and a generated sample.

# About a minute on 2 CPU cores (≈ 45 ms per Ω step at T = 64, m = 32, d = 128).
DEMO_CONFIG = TrainConfig(
    task="charlm",
    method="omega",
    steps=1200,
    seed=0,
    batch_size=32,
    learning_rate=3e-3,
    hidden_size=128,
    seq_len=64,
    eval_every=200,
    checkpoint_every=200,
)


# What the demo's options may change; a run that differs from DEMO_CONFIG in anything
# else is not the demo's.
_DEMO_VARIABLES = ("steps", "hidden_size", "seq_len")


def demo_config(
    steps: int | None = None, hidden_size: int | None = None, seq_len: int | None = None
) -> TrainConfig:
    """`DEMO_CONFIG` with the given steps, hidden size and window length (None: as is)."""
    given = {"steps": steps, "hidden_size": hidden_size, "seq_len": seq_len}
    return dataclasses.replace(DEMO_CONFIG, **{k: v for k, v in given.items() if v is not None})


def check_demo_dir(out: str) -> None:
    """Refuses an `out` that holds the files of a run that is not the demo's (one that
    differs from `DEMO_CONFIG` in more than steps, hidden size and window length, as its
    checkpoint or, without one, its metrics.json records).

    Raises:
        ResumeError: `out` holds another run's files.
    """
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if not present:
        return
    saved = None
    try:
        if CHECKPOINT in present:
            saved, _ = saved_config(os.path.join(out, CHECKPOINT))
        elif METRICS in present:
            with open(os.path.join(out, METRICS), encoding="utf-8") as file:
                saved = TrainConfig.from_dict(json.load(file)["config"])
    except (CheckpointError, OSError, ValueError, TypeError, KeyError):
        saved = None
    if saved is None or any(
        getattr(saved, field.name) != getattr(DEMO_CONFIG, field.name)
        for field in dataclasses.fields(TrainConfig)
        if field.name not in _DEMO_VARIABLES
    ):
        raise ResumeError(
            f"{out} holds a run that is not from the demo ({', '.join(present)}); choose "
            "another --out (nothing was overwritten)"
        )


def train_demo(out: str = "runs/demo", config: TrainConfig = DEMO_CONFIG, *, progress: bool = True):
    """Trains the demo char-LM (`config`, from `demo_config`) from scratch into `out`;
    returns the `TrainResult`.

    A previous demo run in `out` is replaced; any other run's files there are refused,
    so a mistyped `--out` can never overwrite a real training run.

    Raises:
        ResumeError: `out` holds the files of a run that is not the demo's.
    """
    check_demo_dir(out)
    return train(config, out, overwrite=True, progress=progress)
