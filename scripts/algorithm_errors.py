"""Errors of every issue-4 gradient algorithm against its oracle, the diagonals `tol`
uses, and the time of one gradient per method (cost profile of "scan" and "rtrl").

    python scripts/algorithm_errors.py [--quick]

The oracles are the test suite's (tests/helpers.py, tests/test_truncation.py, …), so
this prints the numbers the tests assert on, at the tests' sizes and a few larger ones.
Writes results/algorithm_errors.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
jax.config.update("jax_enable_x64", True)

from helpers import max_relative_error, reference_loss  # noqa: E402
from test_adaptive import relu_layers  # noqa: E402
from test_bidirectional import alone_loss  # noqa: E402
from test_bidirectional import make_problem as bidirectional_problem  # noqa: E402
from test_gradients import make_problem  # noqa: E402
from test_truncation import truncated_reference_loss, truncation_problem  # noqa: E402

import dprnn_jax as dj  # noqa: E402
from dprnn_jax._algorithms.adaptive import adaptive_omega_error_flow  # noqa: E402
from dprnn_jax._algorithms.omega import omega_error_flow  # noqa: E402
from dprnn_jax._core.jacobian import ElmanJacobian  # noqa: E402

CE = "softmax_cross_entropy"


def grad_errors(dtype, T=17, m=5, n_layers=3):
    params, xs, targets, mask, h0s = make_problem(
        jax.random.key(T * 100 + m), T, m, n_layers, dtype
    )
    oracle = jax.grad(reference_loss, (0, 1, 4))(
        params, xs, targets, mask, h0s, loss=CE, activation="tanh"
    )
    rows = {}
    for method in ("omega", "bptt", "naive", "scan", "rtrl"):

        def loss(p, x, h, method=method):
            out = dj.rnn_apply(p, x, h, method=method)
            return dj.per_step_losses(out, targets, mask=mask, loss=CE).sum() / m

        grads = jax.jit(jax.grad(loss, (0, 1, 2)))(params, xs, h0s)
        rows[f"method={method!r}"] = max_relative_error(grads, oracle)
    online = jax.jit(lambda p: dj.rtrl_gradient(p, xs, targets, mask=mask, h0s=h0s, loss=CE)[1])(
        params
    )
    rows["rtrl_gradient (online)"] = max_relative_error(online, oracle[0])
    rows["tol=0.0"] = max_relative_error(
        jax.jit(jax.grad(lambda p: dj.sequence_loss(p, xs, targets, mask=mask, tol=0.0, h0s=h0s)))(
            params
        ),
        oracle[0],
    )
    return rows


def truncation_errors(dtype):
    params, xs, targets, mask, h0s = truncation_problem(dtype)  # a ragged mask
    rows = {}
    for K in (0, 2, 4, 6, 50):
        oracle = jax.grad(truncated_reference_loss, (0, 1, 4))(
            params, xs, targets, mask, h0s, activation="tanh", K=K
        )
        for method in ("omega", "bptt"):

            def loss(p, x, h, method=method, K=K):
                out = dj.rnn_apply(p, x, h, method=method, truncation=K)
                return dj.per_step_losses(out, targets, mask=mask, loss=CE).sum() / xs.shape[1]

            grads = jax.jit(jax.grad(loss, (0, 1, 2)))(params, xs, h0s)
            rows[f"method={method!r}, truncation={K}"] = max_relative_error(grads, oracle)
    return rows


def architecture_errors(dtype):
    params, xs, targets = bidirectional_problem(("bi", "uni"), dtype)
    lengths = (6, 3, 1)
    oracle = jax.grad(alone_loss, (0, 1))(params, xs, targets, lengths)
    rows = {}
    for method in ("omega", "bptt", "naive", "scan", "rtrl", "autodiff"):
        grads = jax.jit(jax.grad(functools.partial(dj.sequence_loss, method=method), (0, 1)))(
            params, xs, targets, lengths=jnp.asarray(lengths)
        )
        rows[f"bidirectional + lengths, method={method!r}"] = max_relative_error(grads, oracle)
    vocabulary = 5
    tparams = dj.init_rnn(jax.random.key(2), vocabulary, (4, 3), 3, dtype=dtype)
    tokens = jax.random.randint(jax.random.key(3), (6, 3), 0, vocabulary)
    one_hot = jax.nn.one_hot(tokens, vocabulary, dtype=dtype)
    toracle = jax.grad(reference_loss)(tparams, one_hot, targets, loss=CE, activation="tanh")
    for method in ("omega", "bptt", "naive", "scan", "autodiff"):
        grads = jax.jit(jax.grad(functools.partial(dj.sequence_loss, method=method)))(
            tparams, tokens, targets
        )
        rows[f"tokens, method={method!r}"] = max_relative_error(grads, toracle)
    return rows


def tol_rows():
    rows = []
    contractive, expanding, xs, hs_bar = relu_layers(jnp.float64)
    cases = [
        ("relu, ‖S‖₂ = 0.5 (contractive)", contractive, 0.5, "relu"),
        ("relu, S = 1.1 I + 0.05 (expanding)", expanding, None, "relu"),
    ]
    k = jax.random.split(jax.random.key(7), 3)
    d = 32
    S = jax.random.normal(k[0], (d, d)) / np.sqrt(d)
    tanh_layer = dj.LayerParams(
        jax.random.normal(k[1], (d, 8)) / np.sqrt(8), 0.9 * S / jnp.linalg.norm(S, 2), jnp.zeros(d)
    )
    tanh_xs = jax.random.normal(k[2], (256, 4, 8))
    cases.append(("tanh, d = 32, ‖S‖₂ = 0.9, T = 256", tanh_layer, 0.9, "tanh"))
    for name, layer, rho, activation in cases:
        x = xs if activation == "relu" else tanh_xs
        T, m = x.shape[:2]
        bar = hs_bar if activation == "relu" else jax.random.normal(k[0], (T, m, layer.S.shape[0]))
        hs = dj.rnn_layer(layer, x, activation=activation)
        sp = (hs > 0).astype(hs.dtype) if activation == "relu" else 1 - hs**2
        for tol in (1e-3, 1e-6):
            jacobian = ElmanJacobian(layer.S, sp)
            flow = adaptive_omega_error_flow(bar * sp, jacobian, tol=tol)
            exact = omega_error_flow(bar * sp, jacobian).delta
            error = float(jnp.linalg.norm(flow.delta - exact))
            size = float(jnp.linalg.norm(flow.delta))
            bound = rho / (1 - rho) * tol * size if rho is not None else float("nan")
            rows.append(
                (
                    name,
                    T,
                    tol,
                    int(flow.diagonals),
                    float(flow.last_relative_size),
                    error / size,
                    bound / size,
                )
            )
    return rows


def median_time(fn, *args, repeats=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timing_rows(quick):
    grid = (
        ((128, 16, 8), (128, 16, 32))
        if quick
        else ((128, 16, 8), (128, 16, 32), (1024, 16, 8), (1024, 16, 32))
    )
    rows = []
    for T, m, d in grid:
        params = dj.init_rnn(jax.random.key(0), d, (d,), 10)
        xs = jax.random.normal(jax.random.key(1), (T, m, d))
        ys = jax.random.randint(jax.random.key(2), (T, m), 0, 10)
        for method, options in (
            ("bptt", {}),
            ("omega", {}),
            ("omega", {"truncation": 16}),
            ("omega", {"tol": 1e-4}),
            ("scan", {}),
            ("rtrl", {}),
            ("autodiff", {}),
        ):
            if method == "rtrl" and (d > 8 and T > 128):
                continue
            grad = jax.jit(jax.grad(functools.partial(dj.sequence_loss, method=method, **options)))
            seconds = median_time(grad, params, xs, ys)
            label = method + "".join(f", {k}={v}" for k, v in options.items())
            rows.append((T, m, d, label, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    lines = [
        "# Issue-4 algorithms: errors against their oracles, `tol`, timings",
        "",
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        "max relative error = max|a − e| / max|e| per leaf, worst leaf.",
        "",
    ]
    lines += ["| algorithm / option | float32 | float64 |", "|---|---|---|"]
    tables = {}
    for dtype in (jnp.float32, jnp.float64):
        rows = {}
        rows.update(grad_errors(dtype))
        rows.update(truncation_errors(dtype))
        rows.update(architecture_errors(dtype))
        tables[jnp.dtype(dtype).name] = rows
    for name in tables["float32"]:
        lines.append(f"| {name} | {tables['float32'][name]:.2e} | {tables['float64'][name]:.2e} |")
    lines += [
        "",
        "## tol (float64): diagonals used",
        "",
        "| layer | T | tol | diagonals used (of T−1) | last relative size "
        "| ‖Δ_tol − Δ‖/‖Δ_tol‖ | bound ρ/(1−ρ)·tol |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, T, tol, diagonals, last, error, bound in tol_rows():
        lines.append(
            f"| {name} | {T} | {tol:.0e} | {diagonals} of {T - 1} | {last:.2e} | "
            f"{error:.2e} | {bound:.2e} |"
        )
    jax.config.update("jax_enable_x64", False)
    lines += [
        "",
        "## Time of one gradient (float32, 1 tanh layer, n = d, k = 10; median of 5)",
        "",
        "| T | m | d | method | ms |",
        "|---|---|---|---|---|",
    ]
    for T, m, d, label, seconds in timing_rows(args.quick):
        lines.append(f"| {T} | {m} | {d} | {label} | {seconds * 1e3:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "algorithm_errors.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
