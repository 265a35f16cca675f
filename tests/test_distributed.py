"""Training across processes on JAX's distributed runtime: two local CPU processes (gloo)
train as one process would, only process 0 writes, a killed process stops the other and
both resume, and bad input fails at once. Ports are chosen free, every wait is bounded,
and every child is killed in `finally`."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np
import pytest

import dprnn_jax as dj
from dprnn_jax.cli import main

SIZES = ["--task", "adding", "--seq-len", "8", "--hidden", "4", "--batch-size", "4"]
CONFIG = dj.TrainConfig(task="adding", seq_len=8, hidden_size=4, batch_size=4)
# Short runtime timeouts, so that a failure is seen in seconds, not minutes.
TIMEOUTS = ["--init-timeout", "20", "--heartbeat-timeout", "10"]
TIMEOUT = 60  # seconds; a bound on every wait, far above what each takes
RUN_FILES = {"checkpoint.npz", "metrics.json", "loss_curve.png"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A `python -m dprnn_jax …` child whose output lines arrive on queues, so that
    waiting for one is bounded in time."""

    def __init__(self, *args: str, cwd, environment=None):
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(environment or {})}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dprnn_jax", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=cwd,
        )
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.pumps = [
            threading.Thread(target=self._pump, args=(stream,), daemon=True)
            for stream in (self.popen.stdout, self.popen.stderr)
        ]
        for pump in self.pumps:
            pump.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)  # this stream has ended

    def wait_for(self, text: str) -> str:
        """The first output line that contains `text` (the test fails past TIMEOUT, or
        once the child has closed its output without writing it)."""
        deadline, ended = time.monotonic() + TIMEOUT, 0
        while ended < len(self.pumps) and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                ended += 1
                continue
            self.seen.append(line)
            if text in line:
                return line
        pytest.fail(f"no line with {text!r} from the child; it wrote {self.seen}")

    def finish(self) -> tuple[int, str]:
        """Waits for the exit (bounded); returns (exit status, all its output)."""
        try:
            status = self.popen.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the child did not exit within {TIMEOUT} s; it wrote {self.seen}")
        for pump in self.pumps:
            pump.join(timeout=TIMEOUT)
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.seen.append(line)
        return status, "".join(self.seen)

    def kill(self) -> None:
        """SIGKILL if still running, then reap it and close the pipes."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=TIMEOUT)
        for pump in self.pumps:
            pump.join(timeout=TIMEOUT)
        self.popen.stdout.close()
        self.popen.stderr.close()


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for the children: a run compiles what the
    runs before it compiled already (the same programs, so the same numbers)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def start_two(tmp_path, cache, *args: str) -> list[Process]:
    """Processes 0 and 1 of one run, each in a folder of its own (which must stay
    empty): process 0 by flags, process 1 by JAX's environment variables."""
    coordinator = f"127.0.0.1:{free_port()}"
    flags = ["--coordinator", coordinator, "--num-processes", "2", "--process-id", "0"]
    variables = {
        "JAX_COORDINATOR_ADDRESS": coordinator,
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
    }
    processes = []
    for index in (0, 1):
        cwd = tmp_path / f"cwd{index}"
        cwd.mkdir(exist_ok=True)
        command = ["train", *SIZES, *args, *TIMEOUTS, "--no-progress"]
        if index == 0:
            processes.append(Process(*command, *flags, cwd=cwd, environment=cache))
        else:
            processes.append(Process(*command, cwd=cwd, environment={**cache, **variables}))
    return processes


def max_relative_error(params, reference) -> float:
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True)
    )


def one_process_params(steps: int):
    """The parameters after `steps` steps of the same run in this process, on one
    device (`stop_at`: it writes no file)."""
    config = dataclasses.replace(CONFIG, steps=steps + 1)
    with tempfile.TemporaryDirectory() as out:
        return dj.train(config, out, progress=False, log=lambda _: None, stop_at=steps).params


def finish_all(processes: list[Process]) -> list[tuple[int, str]]:
    try:
        return [process.finish() for process in processes]
    finally:
        for process in processes:
            process.kill()


def test_two_processes_train_as_one_survive_a_kill_and_resume(tmp_path, compilation_cache):
    # One scenario, so that the children are started only twice: a run killed mid-way,
    # then resumed by both processes to its end.
    out = tmp_path / "run"
    endless = ["--steps", "1000000", "--eval-every", "1", "--checkpoint-every", "2"]
    processes = start_two(tmp_path, compilation_cache, *endless, "--out", str(out))
    try:
        processes[0].wait_for("step      4  validation loss")  # checkpoints at 2 and 4 written
        processes[1].popen.kill()
        started = time.monotonic()
        status, output = processes[0].finish()
        waited = time.monotonic() - started
    finally:
        for process in processes:
            process.kill()
    # The survivor: a clear error at its next collective, well within the heartbeat
    # timeout, that says where to continue from.
    assert status == 4, output
    assert waited < 10, waited
    step = dj.load_run(out).metadata["step"]
    found = re.search(
        r"dprnn-jax: error: step \d+ failed across processes \(.*\): another process of the "
        rf"run has stopped or cannot be reached \(see its output\); the checkpoint in "
        rf"{re.escape(str(out / 'checkpoint.npz'))} is at step {step}; continue with --resume",
        output,
    )
    assert found, output
    assert step >= 4 and "train.lock" not in os.listdir(out)

    # Both resume from that checkpoint and run to step + 2.
    resume = ["--resume", "--steps", str(step + 2), "--out", str(out)]
    results = finish_all(start_two(tmp_path, compilation_cache, *resume))
    assert [status for status, _ in results] == [0, 0], results
    assert f"resumed from {out / 'checkpoint.npz'} at step {step}" in results[0][1]
    assert f"process 1 wrote nothing (process 0 writes {out})" in results[1][1]

    # One set of files, in --out, from process 0; nothing anywhere else.
    assert set(os.listdir(out)) == RUN_FILES
    assert os.listdir(tmp_path / "cwd0") == [] and os.listdir(tmp_path / "cwd1") == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["process_count"], metrics["device_count"]) == (2, 2)

    # The parameters of one process that was never stopped, to f32 rounding: another
    # program (the batch's sums split over two processes), the same trajectory.
    run = dj.load_run(out)
    assert run.metadata["step"] == step + 2
    assert max_relative_error(run.params, one_process_params(step + 2)) <= 1e-5


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--num-processes", "2", "--process-id", "2"],
            "--process-id must be in 0..1 for --num-processes 2, got 2",
        ),
        (
            ["--num-processes", "2", "--process-id", "0", "--batch-size", "5"],
            "--batch-size 5 must be a multiple of the global device count 2 "
            "(2 processes × 1 device(s) each)",
        ),
        (["--process-id", "0"], "--num-processes (or JAX_NUM_PROCESSES) not given"),
    ],
    ids=["process id >= N", "batch not divisible", "a missing option"],
)
def test_bad_options_are_refused_before_the_runtime_starts(tmp_path, capsys, flags, message):
    command = ["train", *SIZES, "--steps", "2", "--out", str(tmp_path / "run")]
    coordinator = ["--coordinator", f"127.0.0.1:{free_port()}"]
    assert main([*command, *coordinator, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()
    assert not jax.distributed.is_initialized()


def test_an_unreachable_coordinator_fails_within_the_timeout(tmp_path, capsys):
    port = free_port()  # nobody listens there
    command = ["train", *SIZES, "--steps", "2", "--out", str(tmp_path / "run")]
    flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", "1"]
    started = time.monotonic()
    assert main([*command, *flags, "--init-timeout", "1"]) == 4
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert err.startswith(
        f"dprnn-jax: error: cannot reach the coordinator 127.0.0.1:{port} within 1 s"
    )
    assert "start process 0 with the same --coordinator" in err and err.count("\n") == 1
    assert not jax.distributed.is_initialized()


def test_the_python_api_checks_its_arguments():
    with pytest.raises(
        ValueError, match=r"process_id must be in 0\.\.1 \(num_processes=2\), got 2"
    ):
        dj.DistributedConfig("127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="coordinator must be HOST:PORT"):
        dj.DistributedConfig("127.0.0.1", num_processes=2, process_id=0)
    environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2"}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID is not set"):
        dj.DistributedConfig.from_environment(environ)
    assert dj.DistributedConfig.from_environment({}) is None
    config = dj.DistributedConfig.from_environment({**environ, "JAX_PROCESS_ID": "1"})
    assert (config.coordinator, config.num_processes, config.process_id) == (
        "10.0.0.1:1234",
        2,
        1,
    )
    unreachable = dj.DistributedConfig(
        f"127.0.0.1:{free_port()}", num_processes=2, process_id=1, initialization_timeout=1
    )
    with pytest.raises(dj.DistributedError, match="cannot reach the coordinator"):
        dj.initialize_distributed(unreachable)
    assert not jax.distributed.is_initialized()
