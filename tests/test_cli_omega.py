"""`dprnn-jax omega`: plots and summary for a fresh model and for a `train` checkpoint."""

from __future__ import annotations

import json
import math

import pytest

import dprnn_jax as dj
from dprnn_jax.cli import main

REPORT_FILES = ("omega_triangles.png", "omega_decay.png", "omega_summary.json")

PNG = b"\x89PNG\r\n\x1a\n"


def _check_report(out):
    for name in REPORT_FILES[:2]:
        assert (out / name).read_bytes()[:8] == PNG
    summary = json.loads((out / REPORT_FILES[2]).read_text())
    for key in ("gamma", "gamma_a_priori", "lyapunov_diagonal_decay", "lyapunov_qr"):
        assert math.isfinite(summary[key]), (key, summary[key])
    # The bound: λ₁ ≤ log γ for both estimates (each factor has norm ≤ γ).
    assert summary["lyapunov_qr"] <= math.log(summary["gamma"]) + 1e-6
    assert summary["gamma"] <= summary["gamma_a_priori"] + 1e-6
    return summary


def test_omega_command_on_a_fresh_model(tmp_path, capsys):
    out = tmp_path / "fresh"
    argv = ["omega", "--out", str(out), "--T", "12", "--batch", "2", "--hidden", "4"]
    assert main([*argv, "--layers", "2", "--layer", "0", "--gain", "1.5"]) == 0
    summary = _check_report(out)
    assert (summary["T"], summary["batch"], summary["hidden"], summary["layer"]) == (12, 2, 4, 0)
    assert math.isclose(summary["spectral_norm_S"], 1.5, rel_tol=1e-5)
    # Without a method flag the exact Ω backward is compared with jax.grad: float32 round-off.
    assert summary["method"] == dj.Omega().to_dict()
    assert summary["method_gradient_relative_error"] < 1e-4
    assert summary["method_products_per_layer"] == 12 * 11 // 2
    printed = capsys.readouterr()
    assert "Lyapunov" in printed.out and "Omega(): gradient relative error" in printed.out
    # A line per stage on stderr, so a long report is never silent.
    stages = [line.split("]")[0] + "]" for line in printed.err.splitlines()]
    assert stages == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"], printed.err
    assert "[1/5] ‖Ω(j, i)‖₂ of all 66 pairs × 2 sequences" in printed.err
    assert f"[5/5] plotting into {out}" in printed.err


def test_omega_command_compares_the_chosen_algorithm_with_the_exact_gradient(tmp_path, capsys):
    out = tmp_path / "truncated"
    argv = ["omega", "--out", str(out), "--T", "12", "--batch", "2", "--hidden", "4"]
    assert main([*argv, "--gain", "1.5", "--truncation", "2"]) == 0
    summary = _check_report(out)
    assert summary["method"] == dj.Omega(truncation=2).to_dict()
    # An expanding network (gain 1.5) carries credit beyond two steps: truncating at
    # K = 2 must show a real error, far above float32 round-off.
    assert summary["method_gradient_relative_error"] > 1e-2
    assert "Omega(truncation=2): gradient relative error" in capsys.readouterr().out


def test_omega_command_on_a_train_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--task", "adding", "--seq-len", "8", "--steps", "2", "--hidden", "4"]
    train += ["--batch-size", "4", "--eval-every", "2", "--no-progress", "--out", str(run)]
    train += ["--method", "bptt", "--truncation", "3"]
    assert main(train) == 0
    out = tmp_path / "omega"
    assert (
        main(
            [
                "omega",
                "--checkpoint",
                str(run / "checkpoint.npz"),
                "--batch",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = _check_report(out)
    assert (summary["T"], summary["batch"], summary["hidden"]) == (8, 3, 4)
    # The checkpoint's own algorithm is the one compared, unless a flag names another.
    assert summary["method"] == dj.BPTT(truncation=3).to_dict()
    printed = capsys.readouterr()
    assert "adding after 2 steps (BPTT(truncation=3))" in printed.out
    assert printed.err.startswith(f"reading {run / 'checkpoint.npz'} and its task's held-out")
    assert "[5/5] plotting" in printed.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--T", "0"], "--T must be >= 1, got 0"),
        (["--gain", "0"], "--gain must be > 0"),
        (["--max-lag", "1"], "--max-lag must be >= 2"),
        (["--max-lag", "1000"], "--max-lag must be <= T - 1 = 7, the longest lag in --T 8 steps"),
        (["--T", "3"], "--T must be >= 4 for the omega report"),
        (["--layer", "3"], "--layer must be in -1..0 for a model of 1 recurrent layer(s), got 3"),
        (["--checkpoint", "missing.npz"], "no checkpoint at missing.npz"),
        (["--method", "bptt", "--block", "4"], "--block is an option of --method omega, not of"),
        (["--tol", "0.1", "--block", "2"], "--block cannot be combined with --tol"),
        (["--truncation", "-1"], "--truncation must be >= 0, got -1"),
        (
            ["--checkpoint", "run/checkpoint.npz", "--cell", "gru", "--T", "8"],
            "--T, --cell describe a fresh model; the checkpoint has its own",
        ),
        (["--cell", "lstm", "--activation", "relu"], "--activation is an option of elman"),
    ],
)
def test_omega_command_reports_mistakes_in_one_line(tmp_path, capsys, extra, message):
    fresh = [] if "--checkpoint" in extra else ["--T", "8"]
    assert main(["omega", "--out", str(tmp_path), *fresh, *extra]) == 2
    error = capsys.readouterr().err
    # One error line, last, before any slow stage; what comes before it are progress lines.
    *progress, last = error.splitlines()
    assert last.startswith("dprnn-jax: error: ") and message in last, error
    assert not any("error" in line or "Traceback" in line for line in progress), error
    assert not any(line.startswith("[") for line in progress), error
