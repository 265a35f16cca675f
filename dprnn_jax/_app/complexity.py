"""The Ω note's operation-count table, measured: products, XLA flops and wall time over T.

For each backward algorithm (`naive`, `omega`, blocked `omega`, `bptt`) and each T the
sweep reports

* the (m, d) × (d, d) products the implementation performs, read from the counters the
  algorithms increment inside their own loops (`ErrorFlow.products_*`), next to the
  closed forms of the Ω note (docs/references.md#the-omega-note) and the O(T) count of BPTT;
* XLA's flop count of the compiled backward: `cost_analysis()["flops"]` as XLA reports
  it (its cost model visits a loop body once, so it does not grow with the trip count)
  and the dot flops of the optimised HLO with every loop weighted by the trip count XLA
  proved (`_hlo_flops.hlo_dot_flops`);
* the measured wall time of the compiled backward: the minimum of `repeats` runs (the
  machine is shared; the minimum is the least load-sensitive estimate of the cost, as in
  `timeit`), the median kept alongside;
* the least-squares slope of log(quantity) against log(T) over the largest T.

Used by `scripts/complexity.py` and `dprnn-jax complexity`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._algorithms.base import GradientAlgorithm
from .._algorithms.bptt import BPTT
from .._algorithms.naive import Naive
from .._algorithms.omega import Omega
from .._core.jacobian import ElmanJacobian
from .._diagnostics.hlo_flops import hlo_dot_flops

DEFAULT_TS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
BLOCK = 16

SWEPT: dict[str, GradientAlgorithm] = {
    "naive": Naive(),
    "omega": Omega(),
    f"omega block={BLOCK}": Omega(block=BLOCK),
    "bptt": BPTT(),
}

# The Ω note's closed forms (its own counting: σ'-products are counted as matrix products,
# which doubles the naive and DP counts) and the honest O(T) count of BPTT.
CLOSED_FORMS: dict[str, Callable[[int], int]] = {
    "Ω note naive (T³−T)/3": lambda T: (T**3 - T) // 3,
    "Ω note DP (T−1)(T−2)": lambda T: (T - 1) * (T - 2),
    "Ω note DP, powers of S precomputed, T(T−2)/2": lambda T: T * (T - 2) // 2,
    "BPTT T−1": lambda T: T - 1,
}
# What each of our algorithms needs, counting only (m, d) × (d, d) products.
OUR_CLOSED_FORMS: dict[str, Callable[[int], int]] = {
    label: algorithm.closed_form_products for label, algorithm in SWEPT.items()
}


def _error_flow(algorithm: GradientAlgorithm):
    def flow(injected, sigma_prime, S):
        return algorithm.error_flow(injected, ElmanJacobian(S, sigma_prime))

    return flow


class ComplexityRow(NamedTuple):
    """One (method, T) measurement of the sweep."""

    method: str
    T: int
    products_useful: int
    products_performed: int
    closed_form: int
    xla_cost_analysis_flops: float
    hlo_dot_flops: int
    hlo_dot_flops_exact: bool
    seconds: float | None
    seconds_median: float | None


def _problem(T: int, m: int, d: int):
    keys = jax.random.split(jax.random.key(T), 3)
    injected = jax.random.normal(keys[0], (T, m, d), jnp.float32)
    sigma_prime = jax.random.uniform(keys[1], (T, m, d), jnp.float32)
    # Spectral radius < 1 keeps long products finite for every T.
    S = 0.9 * jax.nn.initializers.orthogonal()(keys[2], (d, d), jnp.float32)
    return injected, sigma_prime, S


def measure(
    method: str, T: int, *, m: int, d: int, repeats: int, time_it: bool = True
) -> ComplexityRow:
    """Counters, XLA flops and wall time of one backward algorithm at one T."""
    flow_fn = _error_flow(SWEPT[method])
    injected, sigma_prime, S = _problem(T, m, d)
    backward = jax.jit(flow_fn)
    compiled = backward.lower(injected, sigma_prime, S).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    hlo = hlo_dot_flops(compiled.as_text())
    flow = jax.block_until_ready(compiled(injected, sigma_prime, S))
    seconds = median = None
    if time_it:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(injected, sigma_prime, S))
            times.append(time.perf_counter() - start)
        seconds, median = float(np.min(times)), float(np.median(times))
    return ComplexityRow(
        method,
        T,
        int(flow.products_useful),
        int(flow.products_performed),
        OUR_CLOSED_FORMS[method](T),
        float(cost.get("flops", float("nan"))),
        hlo.flops,
        hlo.exact,
        seconds,
        median,
    )


def loglog_slope(Ts: Sequence[int], values: Sequence[float | None], *, points: int = 4) -> float:
    """Least-squares slope of log(value) over log(T) on the `points` largest valid T."""
    pairs = [(T, v) for T, v in zip(Ts, values, strict=True) if v is not None and v > 0]
    pairs = sorted(pairs)[-points:]
    if len(pairs) < 2:
        return float("nan")
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def complexity_sweep(
    Ts: Sequence[int] = DEFAULT_TS,
    *,
    m: int = 8,
    d: int = 32,
    repeats: int = 7,
    naive_max_T: int = 128,
    log: Callable[[str], None] = print,
) -> list[ComplexityRow]:
    """Runs every method at every T (naive only up to `naive_max_T`: it is O(T³))."""
    rows = []
    for T in Ts:
        for method in SWEPT:
            if method == "naive" and T > naive_max_T:
                continue
            row = measure(method, T, m=m, d=d, repeats=repeats)
            log(
                f"T={T:4d} {method:15s} products {row.products_useful:>9d} "
                f"(performed {row.products_performed:>9d}) "
                f"hlo flops {row.hlo_dot_flops:.3e} time {row.seconds * 1e3:9.3f} ms"
            )
            rows.append(row)
    return rows


def machine_description() -> str:
    """CPU model, core count, JAX version and backend: where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    device = jax.devices()[0]
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {device.platform} backend "
        f"({device.device_kind}), jax {jax.__version__}{load}"
    )


def slopes(rows: Sequence[ComplexityRow]) -> dict[str, dict[str, float]]:
    """Per method: log-log slopes of products, HLO flops, XLA cost-analysis flops, time."""
    result = {}
    for method in dict.fromkeys(row.method for row in rows):
        mine = [row for row in rows if row.method == method]
        Ts = [row.T for row in mine]
        result[method] = {
            "products": loglog_slope(Ts, [row.products_useful for row in mine]),
            "hlo_dot_flops": loglog_slope(Ts, [row.hlo_dot_flops for row in mine]),
            "xla_cost_analysis_flops": loglog_slope(
                Ts, [row.xla_cost_analysis_flops for row in mine]
            ),
            "seconds": loglog_slope(Ts, [row.seconds for row in mine]),
        }
    return result


def markdown_table(rows: Sequence[ComplexityRow], *, m: int, d: int, machine: str) -> str:
    """The complexity table, the Ω note's closed forms and the fitted slopes, in markdown."""
    Ts = sorted({row.T for row in rows})
    lines = [
        f"Backward of one layer (error flow Δ only), m = {m}, d = {d}, float32. "
        f"Machine: {machine}.",
        "",
        "Products of (m, d) × (d, d), counted inside the loops (`useful` / `performed`; "
        "performed includes the padding rows of omega's static-length phases), next to "
        "the Ω note's closed forms:",
        "",
        "| T | "
        + " | ".join(f"{name}" for name in SWEPT)
        + " | "
        + " | ".join(CLOSED_FORMS)
        + " |",
        "|---:|" + "---:|" * (len(SWEPT) + len(CLOSED_FORMS)),
    ]
    by_key = {(row.method, row.T): row for row in rows}
    for T in Ts:
        cells = []
        for method in SWEPT:
            row = by_key.get((method, T))
            if row is None:
                cells.append("—")
            elif row.products_useful == row.products_performed:
                cells.append(f"{row.products_useful:,}")
            else:
                cells.append(f"{row.products_useful:,} / {row.products_performed:,}")
        cells += [f"{form(T):,}" for form in CLOSED_FORMS.values()]
        lines.append(f"| {T} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "XLA flops of the compiled backward: dot flops of the optimised HLO with each loop "
        "weighted by its proven trip count (`cost_analysis()` in parentheses: XLA's cost "
        "model counts a loop body once, so it stays flat as T grows). `≥` marks a lower "
        "bound (naive's inner loops have data-dependent trip counts). Then the wall time "
        "of the compiled backward (minimum of the timed runs):",
        "",
        "| T | "
        + " | ".join(f"{name} flops" for name in SWEPT)
        + " | "
        + " | ".join(f"{name} ms" for name in SWEPT)
        + " |",
        "|---:|" + "---:|" * (2 * len(SWEPT)),
    ]
    for T in Ts:
        flops, times = [], []
        for method in SWEPT:
            row = by_key.get((method, T))
            if row is None:
                flops.append("—")
                times.append("—")
                continue
            bound = "" if row.hlo_dot_flops_exact else "≥ "
            flops.append(f"{bound}{row.hlo_dot_flops:.3g} ({row.xla_cost_analysis_flops:.3g})")
            times.append(f"{row.seconds * 1e3:.3f}" if row.seconds is not None else "—")
        lines.append(f"| {T} | " + " | ".join(flops + times) + " |")
    fitted = slopes(rows)
    lines += [
        "",
        "Log-log slopes over the four largest T of each method (expected ≈ 3 naive, "
        "≈ 2 omega, ≈ 1 bptt and blocked):",
        "",
        "| method | products | HLO dot flops | XLA cost_analysis flops | wall time |",
        "|---|---:|---:|---:|---:|",
    ]
    exact = {row.method: row.hlo_dot_flops_exact for row in rows}
    for method, values in fitted.items():
        hlo = f"{values['hlo_dot_flops']:.2f}" if exact[method] else "— (lower bound only)"
        lines.append(
            f"| {method} | {values['products']:.2f} | {hlo} | "
            f"{values['xla_cost_analysis_flops']:.2f} | {values['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[ComplexityRow], path: str, *, title: str) -> None:
    """Log-log plot: products, HLO flops and wall time against T, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [
        ("products_useful", "(m,d)×(d,d) products (counted in the loops)"),
        ("hlo_dot_flops", "XLA HLO dot flops (loops × trip count; naive: unknown counts)"),
        ("seconds", "backward wall time (s)"),
    ]
    # One colour per method in every panel, even where a panel leaves a method out.
    colours = {method: f"C{index}" for index, method in enumerate(SWEPT)}
    for ax, (field, label) in zip(axes, panels, strict=True):
        for method in SWEPT:
            mine = [row for row in rows if row.method == method]
            if field == "hlo_dot_flops" and not all(row.hlo_dot_flops_exact for row in mine):
                continue  # only a lower bound (data-dependent trip counts): not plotted
            Ts = [row.T for row in mine]
            values = [getattr(row, field) for row in mine]
            slope = loglog_slope(Ts, values)
            label = f"{method} (slope {slope:.2f})"
            ax.loglog(Ts, values, "o-", color=colours[method], label=label)
        if field == "products_useful":
            Ts = sorted({row.T for row in rows})
            for (name, form), style in zip(list(CLOSED_FORMS.items())[:3], ("--", ":", "-.")):
                ax.loglog(Ts, [form(T) for T in Ts], style, color="grey", label=name)
        ax.set_xlabel("T")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_complexity_report(
    out_dir: str,
    Ts: Sequence[int] = DEFAULT_TS,
    *,
    m: int = 8,
    d: int = 32,
    repeats: int = 7,
    naive_max_T: int = 128,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Runs the sweep; writes complexity.md, complexity.png and complexity.json to out_dir.

    Returns:
        The paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    machine = machine_description()
    rows = complexity_sweep(Ts, m=m, d=d, repeats=repeats, naive_max_T=naive_max_T, log=log)
    paths = [os.path.join(out_dir, f"complexity.{ext}") for ext in ("md", "png", "json")]
    with open(paths[0], "w") as f:
        f.write("# Complexity of the backward algorithms\n\n")
        f.write(markdown_table(rows, m=m, d=d, machine=machine))
        took = time.perf_counter() - started
        f.write(f"\n![complexity](complexity.png)\n\nSweep took {took:.0f} s.\n")
    plot(rows, paths[1], title=f"one layer backward, m={m}, d={d}, float32 — {machine}")
    with open(paths[2], "w") as f:
        json.dump(
            {
                "machine": machine,
                "m": m,
                "d": d,
                "repeats": repeats,
                "rows": [row._asdict() for row in rows],
                "closed_forms": {
                    name: {T: form(T) for T in Ts} for name, form in CLOSED_FORMS.items()
                },
                "slopes": slopes(rows),
            },
            f,
            indent=1,
        )
    return paths
