"""`dprnn-jax` as real processes: one run per output folder (a lock file), a stale lock
taken over, and what Ctrl-C and SIGTERM leave behind. Every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import dprnn_jax as dj
from dprnn_jax.cli import main

TINY = ["--task", "adding", "--seq-len", "8", "--hidden", "4", "--batch-size", "4"]
# A run that goes on until it is stopped and logs a line per step (a validation line),
# but writes nothing until then (no checkpoint before step 10⁶).
ENDLESS = [*TINY, "--steps", "1000000", "--eval-every", "1", "--checkpoint-every", "1000000"]
TIMEOUT = 120  # seconds; a bound on every wait, far above what each step takes


@contextlib.contextmanager
def _children_take_sigint():
    """Within the block, a child process starts with SIGINT's default action even if this
    one ignores it (a test run started in the background by a shell or `nohup`): an
    ignored signal stays ignored across exec, a Python handler is reset to the default."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class Process:
    """A `python -m dprnn_jax …` child whose output lines arrive on queues, so that
    waiting for one is bounded in time."""

    def __init__(self, *args: str, cwd=None):
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with _children_take_sigint():
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "dprnn_jax", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
                cwd=cwd,
            )
        self.lines = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.pumps = [
            threading.Thread(target=self._pump, args=(name,), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for pump in self.pumps:
            pump.start()

    def _pump(self, name: str) -> None:
        for line in getattr(self.popen, name):
            self.lines[name].put(line)
        self.lines[name].put(None)

    def _take(self, name: str, deadline: float) -> str | None:
        try:
            line = self.lines[name].get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is not None:
            self.seen[name].append(line)
        return line

    def wait_for(self, text: str, stream: str = "stdout") -> str:
        """The first line of `stream` that contains `text` (the test fails past TIMEOUT)."""
        deadline = time.monotonic() + TIMEOUT
        while (line := self._take(stream, deadline)) is not None:
            if text in line:
                return line
        self.kill()
        pytest.fail(f"no line with {text!r} from the child; it wrote {self.seen}")

    def finish(self) -> tuple[int, list[str]]:
        """Waits for the exit (bounded, killed past it); returns (exit status, every
        stderr line)."""
        try:
            status = self.popen.wait(timeout=TIMEOUT)
        finally:
            self.kill()
        while self._take("stderr", time.monotonic()) is not None:
            pass
        return status, self.seen["stderr"]

    def kill(self) -> None:
        """SIGKILL if still running, then reap it and close the pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=TIMEOUT)
        for pump in self.pumps:
            pump.join(timeout=TIMEOUT)
        self.popen.stdout.close()
        self.popen.stderr.close()


def test_a_second_train_on_a_held_folder_is_refused_and_a_stale_lock_is_taken_over(
    tmp_path, capsys
):
    out = tmp_path / "run"
    first = Process("train", *ENDLESS, "--no-progress", "--out", str(out))
    try:
        first.wait_for("validation loss")  # it is training, so it holds the folder
        holder = json.loads((out / "train.lock").read_text())
        assert (holder["pid"], holder["host"]) == (first.popen.pid, socket.gethostname())
        second = subprocess.run(
            [sys.executable, "-m", "dprnn_jax", "train", *TINY, "--steps", "2"]
            + ["--no-progress", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert (
            f"is in use by another training run (pid {first.popen.pid} on host "
            f"{socket.gethostname()}" in second.stderr
        )
        assert first.popen.poll() is None  # the first run is untouched
    finally:
        first.kill()  # SIGKILL: no chance to remove its lock
    assert os.listdir(out) == ["train.lock"]

    # The lock's pid is dead on this host: the next run takes the folder over, says so,
    # trains, and leaves no lock behind.
    assert main(["train", *TINY, "--steps", "2", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"warning: {out / 'train.lock'} was left by pid {first.popen.pid}" in printed
    assert "no longer running; taking the folder over" in printed
    assert dj.load_run(out).metadata["step"] == 2
    assert "train.lock" not in os.listdir(out)


@pytest.mark.parametrize("holder", ["another host", "a live process here", "unreadable"])
def test_a_lock_that_cannot_be_taken_over_is_refused(tmp_path, capsys, holder):
    live = {"pid": os.getpid(), "host": socket.gethostname()}  # this test's own process
    text, message = {
        "another host": (
            json.dumps({"pid": 1, "host": "elsewhere.invalid"}),
            "(pid 1 on host elsewhere.invalid) (another host: it cannot be checked from here)",
        ),
        "a live process here": (json.dumps(live), f"(pid {os.getpid()} on host {live['host']})"),
        "unreadable": ("not json", "train.lock, which cannot be read; if no training run is"),
    }[holder]
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text(text)
    assert main(["train", *TINY, "--steps", "2", "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert os.listdir(out) == ["train.lock"] and (out / "train.lock").read_text() == text


@pytest.mark.parametrize(
    "signum, cell",
    [(signal.SIGINT, "elman"), (signal.SIGTERM, "gru")],
    ids=["SIGINT-elman", "SIGTERM-gru"],
)
def test_a_stopped_train_writes_the_current_step_and_says_exactly_that(
    tmp_path, capsys, signum, cell
):
    out = tmp_path / "run"
    child = Process("train", *ENDLESS, "--cell", cell, "--no-progress", "--out", str(out))
    try:
        child.wait_for("validation loss")
        child.popen.send_signal(signum)
        status, err = child.finish()
    finally:
        child.kill()
    assert status == 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    assert len(err) == 1 and "Traceback" not in err[0], err
    found = re.fullmatch(
        r"dprnn-jax: interrupted at step (\d+); checkpoint at step \1 written to (.+), "
        r"with metrics.json and loss_curve.png; continue with --resume\n",
        err[0],
    )
    assert found, err
    step, path = int(found[1]), found[2]
    assert path == str(out / "checkpoint.npz")
    # What it claims is on disk: the checkpoint of that very step, with its history.
    run = dj.load_run(out)
    assert run.metadata["step"] == step and len(run.metadata["history"]["loss"]) == step
    assert run.config.cell == cell
    # metrics.json and the loss curve are of that step too, not of an earlier session.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_done"] == step and metrics["interrupted"] == signum.name
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert step >= 1 and "train.lock" not in os.listdir(out)
    # And it continues from there.
    resume = ["train", *ENDLESS, "--steps", str(step + 2), "--resume", "--out", str(out)]
    assert main([*resume, "--no-progress"]) == 0
    assert f"resumed from {path} at step {step}" in capsys.readouterr().out
    assert dj.load_run(out).metadata["step"] == step + 2


@pytest.mark.parametrize(
    "command, first_line",
    [
        (["omega", "--T", "128", "--hidden", "32", "--out", "omega"], ("stderr", "[1/5]")),
        (["demo"], ("stdout", "gradient check on")),
        (["complexity"], ("stdout", "T=")),
    ],
    ids=["omega", "demo", "complexity"],
)
def test_ctrl_c_ends_a_long_command_with_one_line_and_status_130(tmp_path, command, first_line):
    # Each command is far from done when its first line appears (about a minute of work).
    child = Process(*command, cwd=tmp_path)
    try:
        stream, text = first_line
        child.wait_for(text, stream)
        child.popen.send_signal(signal.SIGINT)
        status, err = child.finish()
    finally:
        child.kill()
    assert status == 130
    assert err[-1] == "dprnn-jax: interrupted\n", err
    assert not any("Traceback" in line for line in err), err
    if command == ["complexity"]:
        # Its default --out is under runs/, never the repository's committed results/.
        assert os.listdir(tmp_path) == ["runs"] and os.listdir(tmp_path / "runs") == ["complexity"]
