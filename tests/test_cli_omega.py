"""`dprnn-jax omega`: plots and summary for a fresh model and for a `train` checkpoint."""

from __future__ import annotations

import json
import math

import pytest

from dprnn_jax._app.cli import main
from dprnn_jax._app.omega_report import REPORT_FILES

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
    assert "Lyapunov" in capsys.readouterr().out


def test_omega_command_on_a_train_checkpoint(tmp_path, capsys):
    from dprnn_jax._training.loop import CHECKPOINT

    run = tmp_path / "run"
    train = ["train", "--task", "adding", "--seq-len", "8", "--steps", "2", "--hidden", "4"]
    train += ["--batch-size", "4", "--eval-every", "2", "--no-progress", "--out", str(run)]
    assert main(train) == 0
    out = tmp_path / "omega"
    assert (
        main(["omega", "--checkpoint", str(run / CHECKPOINT), "--batch", "3", "--out", str(out)])
        == 0
    )
    summary = _check_report(out)
    assert (summary["T"], summary["batch"], summary["hidden"]) == (8, 3, 4)
    assert "adding after 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--T", "0"], "--T must be >= 1, got 0"),
        (["--gain", "0"], "--gain must be > 0"),
        (["--max-lag", "1"], "--max-lag must be >= 2"),
        (["--layer", "3"], "layer must be an int in [-1, 1)"),
        (["--checkpoint", "missing.npz"], "no checkpoint at missing.npz"),
    ],
)
def test_omega_command_reports_mistakes_in_one_line(tmp_path, capsys, extra, message):
    assert main(["omega", "--out", str(tmp_path), "--T", "8", *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1, error
