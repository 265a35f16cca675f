"""`dprnn-jax train`: user mistakes end in one line on stderr and exit status 2, nothing
saved is lost, and a tiny run writes its files and resumes across processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import dprnn_jax as dj
from dprnn_jax.cli import main

# Start JAX's backend now, so that `--devices N` cannot re-split this test process's CPU
# (the CLI may only do that before JAX first runs; here it must report the shortfall).
jax.devices()

TINY = [
    "train",
    "--task",
    "adding",
    "--seq-len",
    "6",
    "--hidden",
    "4",
    "--batch-size",
    "4",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--no-progress",
]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return err[-1]


@pytest.mark.parametrize(
    "options, message",
    [
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--lr", "-1"], "--lr must be > 0"),
        (
            ["--batch-size", "3", "--devices", "2"],
            "--batch-size 3 must be a multiple of --devices 2 (each device takes an equal "
            "share of every batch); pick e.g. --batch-size 2",
        ),
        (["--devices", "64", "--batch-size", "64"], "--devices 64 but JAX sees"),
        (["--task", "digits", "--seq-len", "9"], "--seq-len for the digits task must be 8"),
        (["--seq-len", "1"], "--seq-len for the adding task must be >= 2, got 1"),
        (["--task", "copy", "--clip", "-1"], "--clip must be >= 0"),
        (["--cell", "gru", "--activation", "relu"], "--activation is an option of elman cells"),
        (["--cell", "mingru", "--activation", "relu"], "--activation is an option of elman"),
    ],
)
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, options, message):
    assert main([*TINY, "--out", str(tmp_path / "out"), *options]) == 2
    line = _error_line(capsys)
    assert line.startswith("dprnn-jax: error: ") and message in line
    assert not (tmp_path / "out" / "checkpoint.npz").exists()


@pytest.mark.parametrize(
    "options", [["--task", "imagenet"], ["--method", "magic"], ["--steps", "x"]]
)
def test_unknown_choices_exit_2(tmp_path, capsys, options):
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "--out", str(tmp_path), *options])
    assert exit_info.value.code == 2
    assert "error: argument" in _error_line(capsys)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--method", "bptt", "--block", "4"],
            "--block is an option of --method omega, not of --method bptt; drop --block or "
            "use --method omega",
        ),
        (["--tol", "0.1", "--block", "2"], "--block cannot be combined with --tol; pick one"),
        (
            ["--checkpoint", "4", "--truncation", "3", "--block", "2"],
            "--checkpoint cannot be combined with --truncation or --block",
        ),
        (
            ["--method", "autodiff", "--truncation", "3"],
            "--truncation is an option of --method omega and bptt, not of --method autodiff",
        ),
        (["--truncation", "-1"], "--truncation must be >= 0, got -1"),
        (["--block", "0"], "--block must be >= 1, got 0"),
        (["--checkpoint", "0"], "--checkpoint must be >= 1, got 0"),
        (["--tol", "nan"], "--tol must be a finite number >= 0, got nan"),
    ],
)
def test_invalid_method_options_exit_2_with_one_line(tmp_path, capsys, options, message):
    assert main([*TINY, "--out", str(tmp_path / "out"), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dprnn-jax: error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_method_options_reach_training_and_are_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "2", "--truncation", "3", "--out", str(out)]) == 0
    recorded = dj.Omega(truncation=3).to_dict()
    assert json.loads((out / "metrics.json").read_text())["config"]["method"] == recorded
    run = dj.load_run(out)
    assert run.metadata["config"]["method"] == recorded
    assert run.config.method == dj.Omega(truncation=3)
    # Resuming with another algorithm is refused, naming both.
    saved = (out / "checkpoint.npz").read_bytes()
    assert main([*TINY, "--steps", "4", "--method", "bptt", "--resume", "--out", str(out)]) == 2
    assert "--method BPTT() given, Omega(truncation=3) in the checkpoint" in _error_line(capsys)
    assert (out / "checkpoint.npz").read_bytes() == saved


def test_a_costly_rtrl_run_is_announced_before_its_first_step(tmp_path, capsys):
    """RTRL's O(m·d⁴) work per time step: `--hidden 256` on the default char-LM would
    keep ~3 GiB of sensitivities. An unwritable --out stops the run right after the
    warning, before any step; a small RTRL run starts without one."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    argv = ["train", "--method", "rtrl", "--no-progress", "--out", str(blocker / "run")]
    assert main([*argv, "--hidden", "256"]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(
        r"dprnn-jax: warning: --method rtrl with --hidden 256: its sensitivities take about "
        r"2\.8 GiB and one step about 2\.4e\+13 flops \(\d+ times BPTT's\), O\(m·d⁴\) per "
        r"time step; --method bptt or omega give the same gradient for far less",
        warning,
    ), warning
    assert error.startswith("dprnn-jax: error: cannot write to --out")
    assert main([*TINY, "--method", "rtrl", "--out", str(blocker / "run")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # the error alone


def test_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main([*TINY, "--steps", "2", "--out", str(blocker / "run")]) == 2
    assert "cannot write to --out" in _error_line(capsys)
    assert blocker.read_text() == "not a directory"


def test_tiny_run_files_errors_and_resume_across_processes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "validation at step 6" in printed
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "loss_curve.png", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_done"] == 6 and metrics["skipped_steps"] == 0
    assert metrics["diverged"] is False and metrics["divergence"] is None
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second fresh run into the same directory would overwrite it: refused.
    saved = (out / "checkpoint.npz").read_bytes()
    assert main([*TINY, "--steps", "6", "--out", str(out)]) == 2
    assert "already holds a checkpoint" in _error_line(capsys)
    # Resuming with options that change the trajectory: refused, each one listed.
    changed = ["--hidden", "5", "--lr", "0.01", "--clip", "0", "--seed", "0", "--task", "adding"]
    assert main([*TINY, "--steps", "8", "--out", str(out), "--resume", *changed]) == 2
    assert _error_line(capsys) == (
        f"dprnn-jax: error: --resume: {out / 'checkpoint.npz'} was trained with other options "
        "(--lr 0.01 given, 0.003 in the checkpoint; --hidden 5 given, 4 in the checkpoint; "
        "--clip 0 (off) given, 1 in the checkpoint); leave them out to continue with the "
        "checkpoint's (only --steps, --eval-every, --checkpoint-every, --devices may change)"
    )
    assert (out / "checkpoint.npz").read_bytes() == saved

    # Resume in a new process (a fresh compilation) to 8 steps, with no option but the
    # steps: the others are the checkpoint's. Compare with an uninterrupted 8-step run.
    command = [sys.executable, "-m", "dprnn_jax", "train", "--out", str(out), "--resume"]
    done = subprocess.run(
        [*command, "--steps", "8", "--no-progress"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "step      8  validation" in done.stdout
    straight = tmp_path / "straight"
    assert main([*TINY, "--steps", "8", "--out", str(straight)]) == 0
    resumed = np.load(out / "checkpoint.npz")
    expected = np.load(straight / "checkpoint.npz")
    with resumed, expected:
        assert resumed.files == expected.files
        for name in expected.files:
            np.testing.assert_array_equal(resumed[name], expected[name])
    assert dj.load_run(out).metadata["step"] == 8


def test_resume_takes_the_checkpoints_options_and_lets_the_schedule_change(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main([*TINY, "--steps", "2", "--lr", "0.01", "--truncation", "2", "--out", str(out)]) == 0
    )
    # The same values given again are no change; the schedule may change.
    again = ["--lr", "0.01", "--truncation", "2", "--task", "adding", "--hidden", "4"]
    schedule = ["--steps", "5", "--eval-every", "5", "--checkpoint-every", "5"]
    assert main(["train", "--out", str(out), "--resume", *again, *schedule, "--no-progress"]) == 0
    run = dj.load_run(out)
    evaluated = [entry["step"] for entry in run.metadata["history"]["evaluations"]]
    assert run.metadata["step"] == 5 and evaluated == [2, 5]  # every 2, then every 5
    assert run.config == dj.TrainConfig(
        task="adding", seq_len=6, hidden_size=4, batch_size=4, learning_rate=0.01,
        method=dj.Omega(truncation=2), steps=5, eval_every=5, checkpoint_every=5,
    )  # fmt: skip
    capsys.readouterr()
    # --resume where there is nothing to resume.
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert _error_line(capsys).endswith(
        "no checkpoint.npz in " + str(tmp_path / "empty") + "; start without --resume"
    )


def test_an_earlier_runs_files_are_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "2", "--out", str(out)]) == 0
    (out / "checkpoint.npz").unlink()  # an earlier run's files, without a checkpoint
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert main([*TINY, "--steps", "3", "--out", str(out)]) == 2
    assert _error_line(capsys) == (
        f"dprnn-jax: error: {out} holds the files of an earlier run (metrics.json, "
        "loss_curve.png) but no checkpoint; pass --overwrite to replace them or choose "
        "another --out (nothing was overwritten)"
    )
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert main([*TINY, "--steps", "3", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps_done"] == 3
    # Over a checkpoint, --overwrite starts over: nothing of the old run is kept.
    assert main([*TINY, "--steps", "1", "--overwrite", "--out", str(out)]) == 0
    run = dj.load_run(out)
    assert run.metadata["step"] == 1 and len(run.metadata["history"]["loss"]) == 1
    capsys.readouterr()
    assert main([*TINY, "--steps", "4", "--resume", "--overwrite", "--out", str(out)]) == 2
    assert "--resume and --overwrite exclude each other" in _error_line(capsys)


@pytest.mark.parametrize("cell", ["elman", "gru"])
def test_a_diverged_run_writes_its_files_then_exits_3_saying_what_to_try(tmp_path, capsys, cell):
    out = tmp_path / "run"
    blow_up = ["--lr", "1e6", "--optimizer", "sgd", "--clip", "0", "--steps", "10"]
    assert main([*TINY, *blow_up, "--cell", cell, "--out", str(out)]) == 3
    line = _error_line(capsys)
    assert re.fullmatch(
        r"dprnn-jax: error: training diverged: (\d+) of 10 steps were skipped \(non-finite "
        r"loss or gradient\) and the last validation loss is (inf|nan); try a lower --lr "
        r"\(now 1e\+06\) or enable --clip \(e\.g\. --clip 1\)",
        line,
    ), line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["skipped_steps"] > 5
    assert metrics["divergence"] in line
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "loss_curve.png", "metrics.json"]


def test_a_blow_up_that_saturates_the_network_is_diverged_too(tmp_path, capsys):
    """A blow-up need not overflow: tanh saturates, the logits are huge but finite and no
    step is skipped. The validation loss, far above the chance level, says diverged."""
    out = tmp_path / "run"
    blow_up = ["--lr", "1e6", "--optimizer", "sgd", "--clip", "0", "--steps", "6"]
    copy = ["--task", "copy", "--seq-len", "2", "--hidden", "8"]
    assert main([*TINY, *copy, *blow_up, "--out", str(out)]) == 3
    line = _error_line(capsys)
    found = re.fullmatch(
        r"dprnn-jax: error: training diverged: the last validation loss (\S+) is more than "
        r"100 times the chance level 2\.079 \(the loss of a prediction that ignores the "
        r"inputs\); try a lower --lr \(now 1e\+06\) or enable --clip \(e\.g\. --clip 1\)",
        line,
    )
    assert found, line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 0 and metrics["chance_level"] == np.log(8)
    assert float(found[1]) == pytest.approx(metrics["validation"]["loss"], rel=1e-3)
    assert metrics["validation"]["loss"] > 100 * np.log(8)


def test_a_gated_char_model_trains_and_writes_its_sample(tmp_path, capsys):
    out = tmp_path / "run"
    charlm = ["--task", "charlm", "--seq-len", "8", "--cell", "gru", "--steps", "1"]
    assert main([*TINY, *charlm, "--out", str(out)]) == 0
    sample = (out / "sample.txt").read_text()
    assert sample.startswith("The ") and len(sample) == 4 + 300 + 1
    assert json.loads((out / "metrics.json").read_text())["sample"] == sample[:-1]


def test_corrupt_checkpoint_on_resume_exits_2_and_keeps_the_file(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    assert main([*TINY, "--steps", "4", "--out", str(out), "--resume"]) == 2
    line = _error_line(capsys)
    assert "checkpoint.npz is not a readable checkpoint" in line
    assert (out / "checkpoint.npz").read_bytes() == b"PK\x03\x04 truncated"


def test_main_job_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    # Two methods and a small model keep the compile time small; the wiring is the same.
    out = tmp_path / "demo"
    check = ["--T", "3", "--batch", "2", "--hidden", "4", "--naive-T", "3", "--repeats", "1"]
    model = ["--train-hidden", "8", "--train-seq-len", "8"]
    small = [*check, "--methods", "omega", "autodiff", *model]
    assert main(["demo", *small, "--train-steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in ("omega", "autodiff"):
        assert f"\n{method} " in printed
    assert "\nbptt " not in printed
    assert "sample:\nThe " in printed and "validation at step 2" in printed
    assert sorted(os.listdir(out)) == [
        "checkpoint.npz", "loss_curve.png", "metrics.json", "sample.txt"
    ]  # fmt: skip
    # Running the demo again replaces its own run; another run's folder is refused
    # (before the gradient check starts).
    again = [*check, "--methods", "autodiff", *model, "--train-steps", "1"]
    assert main(["demo", *again, "--out", str(out)]) == 0
    assert dj.load_run(out).metadata["step"] == 1
    capsys.readouterr()
    other = tmp_path / "other"
    assert main([*TINY, "--steps", "2", "--out", str(other)]) == 0
    saved = (other / "checkpoint.npz").read_bytes()
    assert main(["demo", *small, "--train-steps", "1", "--out", str(other)]) == 2
    assert "not from the demo" in _error_line(capsys)
    assert "gradient check" not in capsys.readouterr().out
    assert (other / "checkpoint.npz").read_bytes() == saved


def test_cell_and_checkpoint_flags_reach_training(tmp_path, capsys):
    """`--cell lstm` trains LSTM layers; `--checkpoint sqrt` the fused O(√T) loss; both
    are recorded and come back with the run, and `--resume` keeps the cell."""
    gated, long = tmp_path / "gated", tmp_path / "long"
    assert main([*TINY, "--steps", "2", "--cell", "lstm", "--out", str(gated)]) == 0
    run = dj.load_run(gated)
    assert run.config.cell == "lstm" and type(run.params.layers[0]).__name__ == "LSTMParams"
    # --resume takes the cell from the checkpoint, and refuses another one.
    capsys.readouterr()
    resume = ["train", "--out", str(gated), "--resume", "--no-progress"]
    assert main([*resume, "--cell", "gru", "--steps", "3"]) == 2
    assert "(--cell gru given, lstm in the checkpoint)" in _error_line(capsys)
    assert main([*resume, "--activation", "tanh", "--steps", "3"]) == 2
    assert "--activation is an option of elman cells; the checkpoint's lstm" in _error_line(capsys)
    assert main([*resume, "--steps", "3"]) == 0
    resumed = dj.load_run(gated)
    assert resumed.config.cell == "lstm" and resumed.metadata["step"] == 3
    command = [*TINY, "--steps", "2", "--method", "bptt", "--checkpoint", "sqrt"]
    assert main([*command, "--cell", "mingru", "--out", str(long)]) == 0
    run = dj.load_run(long)
    assert run.config.method == dj.BPTT(checkpoint="sqrt") and run.config.cell == "mingru"
    assert isinstance(run.params.layers[0], dj.MinGRUParams)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error for the value
        main([*TINY, "--checkpoint", "often", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert (
        main([*TINY, "--method", "naive", "--checkpoint", "4", "--out", str(tmp_path / "x")]) == 2
    )
    assert "--checkpoint is an option of --method omega and bptt, not of --method naive" in (
        _error_line(capsys)
    )
