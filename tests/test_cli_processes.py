"""`dprnn-jax` as real processes: one run per output folder (a lock file), a stale lock
taken over, and what Ctrl-C and SIGTERM leave behind. Every wait is bounded."""

from __future__ import annotations

import json
import os
import queue
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


class Process:
    """A `python -m dprnn_jax …` child whose stdout lines arrive on a queue, so that
    waiting for one is bounded in time."""

    def __init__(self, *args: str):
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dprnn_jax", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        self.popen.kill()
        self.popen.wait(timeout=TIMEOUT)
        err = self.popen.stderr.read()
        self.kill()
        pytest.fail(f"no line with {text!r} from the child; stdout {self.seen}, stderr {err}")

    def finish(self) -> tuple[int, str]:
        """Waits for the exit (bounded, killed past it); returns (exit status, stderr)."""
        try:
            status = self.popen.wait(timeout=TIMEOUT)
            return status, self.popen.stderr.read()
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL if still running, then reap it and close the pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=TIMEOUT)
        self.pump.join(timeout=TIMEOUT)
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
