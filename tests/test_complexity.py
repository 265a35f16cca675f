"""The complexity sweep's instruments: HLO flop counting, slopes, and the report files."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import dprnn_jax as dj
from dprnn_jax.backward import ElmanJacobian

T, M, D = 40, 2, 4
FLOWS = {
    "omega": dj.Omega(),
    "bptt": dj.BPTT(),
    "blocked": dj.Omega(block=7),
}


def error_flow(algorithm):
    return lambda P, sigma_prime, S: algorithm.error_flow(P, ElmanJacobian(S, sigma_prime))


@pytest.mark.parametrize("method", FLOWS)
def test_hlo_flops_equal_the_in_loop_counters(method):
    """XLA's own program, loops weighted by their trip counts, does what the counters say."""
    P = jnp.ones((T, M, D), jnp.float32)
    compiled = jax.jit(error_flow(FLOWS[method])).lower(P, P, jnp.eye(D)).compile()
    flow = compiled(P, P, jnp.eye(D))
    flops = dj.diagnostics.hlo_dot_flops(compiled.as_text())
    assert flops.exact
    assert flops.flops == int(flow.products_performed) * 2 * M * D * D
    assert int(flow.products_performed) > 0


def test_hlo_flops_flag_unknown_trip_counts():
    """naive's inner loops depend on the outer index: the count is a lower bound."""
    P = jnp.ones((6, M, D), jnp.float32)
    compiled = jax.jit(error_flow(dj.Naive())).lower(P, P, jnp.eye(D)).compile()
    flops = dj.diagnostics.hlo_dot_flops(compiled.as_text())
    assert not flops.exact
    assert 0 < flops.flops < (6**3 - 6) // 6 * 2 * M * D * D


def test_report_files(tmp_path):
    """`dprnn-jax complexity` writes the table, the plot and the JSON it is made from."""
    command = [sys.executable, "-m", "dprnn_jax", "complexity", "--out", str(tmp_path)]
    command += ["--T", "3", "6", "--m", "1", "--d", "2", "--repeats", "1", "--naive-max-T", "6"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "complexity.json",
        "complexity.md",
        "complexity.png",
    ]
    report = json.loads((tmp_path / "complexity.json").read_text())
    rows = {(row["method"], row["T"]): row for row in report["rows"]}
    assert rows[("naive", 6)]["products_useful"] == (6**3 - 6) // 6
    assert rows[("omega", 6)]["products_useful"] == 15
    assert rows[("bptt", 6)]["products_useful"] == 5
    assert "| 6 |" in (tmp_path / "complexity.md").read_text()
