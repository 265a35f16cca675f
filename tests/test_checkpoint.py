"""Checkpoints: exact round trip, atomic replacement (even under SIGKILL), clear errors on
corrupt files, and resume that ends bitwise where an uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import pytest

from dprnn_jax import init_rnn
from dprnn_jax.training import (
    CheckpointError,
    ResumeError,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    load_run,
    save_checkpoint,
    train,
)


def _state(seed=0):
    params = init_rnn(jax.random.key(seed), 3, (5,), 2)
    opt_state = optax.adam(1e-3).init(params)
    # Make the moments non-trivial so the round trip is tested on real numbers.
    opt_state = jax.tree.map(lambda x: x + 0.25 if x.dtype == np.float32 else x + 3, opt_state)
    return params, opt_state


def _assert_bitwise_equal(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(a, e)


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "checkpoint.npz"
    state = _state()
    save_checkpoint(path, state, {"step": 7, "history": {"loss": [0.1, 1 / 3]}})
    restored, metadata = load_checkpoint(path, _state(seed=1))
    _assert_bitwise_equal(restored, state)
    assert metadata == {"step": 7, "history": {"loss": [0.1, 1 / 3]}}
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no temporary file left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _state(), {"step": 1})
    before = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(seed=2), {"step": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_sigkill_during_saves_never_leaves_a_corrupt_checkpoint(tmp_path):
    # A child saves checkpoint after checkpoint as fast as it can; we SIGKILL it at an
    # arbitrary moment. The file must still load and hold one complete state.
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from dprnn_jax import save_checkpoint
        path = sys.argv[1]
        print("ready", flush=True)
        for step in range(10**9):
            leaves = [np.full((256, 256), step, np.float32), np.full((7,), step, np.int32)]
            save_checkpoint(path, leaves, {"step": step})
        """
    )
    path = tmp_path / "checkpoint.npz"
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    like = [np.zeros((256, 256), np.float32), np.zeros((7,), np.int32)]
    (big, small), metadata = load_checkpoint(path, like)
    step = metadata["step"]
    np.testing.assert_array_equal(big, step)
    np.testing.assert_array_equal(small, step)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_checkpoint_gives_a_clear_error_and_is_left_alone(tmp_path, damage):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _state(), {"step": 3})
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # one byte inside the first array's payload: a CRC mismatch
        middle = data.index(b"leaf_00000.npy") + 200
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
    elif damage == "garbage":
        data = b"not a checkpoint at all"
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        load_checkpoint(path, _state())
    assert path.read_bytes() == data


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _state(), {"step": 3})
    other = init_rnn(jax.random.key(0), 3, (6,), 2)
    with pytest.raises(CheckpointError, match="different configuration"):
        load_checkpoint(path, (other, optax.adam(1e-3).init(other)))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.npz", _state())


CONFIG = TrainConfig(
    task="adding",
    seq_len=8,
    hidden_size=8,
    batch_size=8,
    steps=8,
    eval_every=4,
    checkpoint_every=3,
    learning_rate=1e-2,
)


def test_resume_after_a_kill_ends_bitwise_like_an_uninterrupted_run(tmp_path):
    straight = train(CONFIG, str(tmp_path / "straight"), progress=False, log=lambda _: None)
    # Killed after step 5: the last checkpoint is from step 3, steps 4 and 5 are lost.
    interrupted = str(tmp_path / "interrupted")
    train(CONFIG, interrupted, progress=False, log=lambda _: None, stop_at=5)
    assert load_run(interrupted).metadata["step"] == 3
    resumed = train(CONFIG, interrupted, resume=True, progress=False, log=lambda _: None)
    _assert_bitwise_equal(resumed.params, straight.params)
    # What `load_run` reads back is that state and that configuration.
    run = load_run(interrupted)
    _assert_bitwise_equal(run.params, resumed.params)
    assert run.config == CONFIG and run.metadata["step"] == CONFIG.steps
    for key in ("steps_done", "validation", "train_loss_last", "skipped_steps"):
        assert resumed.metrics[key] == straight.metrics[key]
    histories = [load_run(run).metadata["history"] for run in (interrupted, tmp_path / "straight")]
    assert histories[0] == histories[1]


def test_resume_refuses_other_options_and_fresh_runs_refuse_to_overwrite(tmp_path):
    out = str(tmp_path / "run")
    train(CONFIG, out, progress=False, log=lambda _: None, stop_at=4)
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()

    with pytest.raises(ResumeError, match="learning_rate: checkpoint 0.01, now 0.02"):
        train(dataclasses.replace(CONFIG, learning_rate=2e-2), out, resume=True, progress=False)
    with pytest.raises(ResumeError, match="already holds a checkpoint"):
        train(CONFIG, out, progress=False)
    with pytest.raises(ResumeError, match="no checkpoint.npz"):
        train(CONFIG, str(tmp_path / "empty"), resume=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before


def _signal_at_step(step, *signals):
    """A `log` for `train` that sends itself `signals` when it logs step `step`'s
    validation line: a signal that arrives in the middle of the run, deterministically."""

    def log(line):
        if line.startswith(f"step {step:>6}  validation"):
            for signum in signals:
                os.kill(os.getpid(), signum)

    return log


def test_a_signal_stops_train_after_the_step_with_a_checkpoint_of_it(tmp_path):
    config = dataclasses.replace(CONFIG, eval_every=1, checkpoint_every=100)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, str(out), progress=False, log=_signal_at_step(2, signal.SIGTERM))
    assert (stopped.value.signal, stopped.value.step, stopped.value.checkpoint_step) == (
        signal.SIGTERM, 2, 2
    )  # fmt: skip
    assert str(stopped.value) == (
        f"interrupted at step 2; checkpoint at step 2 written to {out / 'checkpoint.npz'}, "
        "with metrics.json and loss_curve.png; continue with --resume"
    )
    assert isinstance(stopped.value, KeyboardInterrupt)  # code that catches Ctrl-C still does
    assert load_run(out).metadata["step"] == 2
    # No lock, no half-written file; the metrics are of the step the checkpoint holds.
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "loss_curve.png", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps_done"], metrics["interrupted"]) == (2, "SIGTERM")
    # The handlers are restored: SIGTERM is what it was before the run.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_signal_stops_at_once_and_the_message_reports_the_last_checkpoint(tmp_path):
    config = dataclasses.replace(CONFIG, eval_every=1, checkpoint_every=1)
    out = tmp_path / "run"
    # Both signals arrive while step 2 is logged, before its checkpoint is written.
    log = _signal_at_step(2, signal.SIGTERM, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, str(out), progress=False, log=log)
    assert (stopped.value.step, stopped.value.checkpoint_step) == (2, 1)
    assert str(stopped.value) == (
        f"interrupted at step 2; the checkpoint in {out / 'checkpoint.npz'} is at step 1; "
        "continue with --resume"
    )
    assert load_run(out).metadata["step"] == 1


def test_when_the_checkpoint_cannot_be_written_the_message_says_so(tmp_path, monkeypatch):
    config = dataclasses.replace(CONFIG, eval_every=1, checkpoint_every=100)
    out = tmp_path / "run"

    def disk_full(file, **arrays):
        raise OSError(28, "No space left on device")

    def log(line):
        if line.startswith(f"step {2:>6}  validation"):
            monkeypatch.setattr(np, "savez", disk_full)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, str(out), progress=False, log=log)
    assert stopped.value.checkpoint_step is None
    assert str(stopped.value) == (
        "interrupted at step 2; writing its checkpoint failed (No space left on device); "
        f"no checkpoint exists in {out}: start again without --resume"
    )
    assert os.listdir(out) == []
