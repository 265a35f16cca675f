"""Data parallelism: on 4 CPU devices the sharded step gives the single-device parameters.

Each check runs in a subprocess, because the number of CPU devices is fixed when JAX's
backend starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
from helpers import RTOL

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, optax
    import numpy as np
    from dprnn_jax.training import batch_mesh, make_task, make_train_step, replicate, shard_batch
    from dprnn_jax import init_rnn

    assert len(jax.devices()) == 4, jax.devices()
    task = make_task("charlm", 12)
    params = init_rnn(jax.random.key(0), task.input_size, (16,), task.output_size)
    optimizer = optax.sgd(0.5, momentum=0.9)
    step = make_train_step(optimizer, loss=task.loss, method="omega")
    mesh = batch_mesh(4)
    single = (params, optimizer.init(params))
    sharded = replicate(single, mesh)
    rows, losses = [], []
    for s in range(3):
        batch = task.sample(jax.random.key(s), 16)
        spread = shard_batch(batch, mesh)
        rows.append([shard.data.shape[1] for shard in spread.inputs.addressable_shards])
        *single, m1 = step(*single, batch)
        *sharded, m4 = step(*sharded, spread)
        losses.append([float(m1.loss), float(m4.loss)])
    def error(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    errors = [error(a, b) for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single))]
    moved = error(single[0].layers[0].S, params.layers[0].S)
    devices = len(sharded[0].layers[0].S.sharding.device_set)

    print(json.dumps(dict(rows=rows, losses=losses, error=max(errors), moved=moved,
                          devices=devices)))
    """
)


def _run(command, **env):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sharded_step_equals_single_device_step():
    flags = "--xla_force_host_platform_device_count=4"
    report = json.loads(_run([sys.executable, "-c", SCRIPT], XLA_FLAGS=flags).splitlines()[-1])
    assert report["rows"] == [[4, 4, 4, 4]] * 3  # 16 sequences, 4 per device
    assert report["devices"] == 4  # parameters stay replicated on all devices
    assert report["moved"] > 1e-3  # three steps changed the parameters
    assert report["error"] <= RTOL[jnp.dtype("float32")], report
    for single, sharded in report["losses"]:
        assert abs(single - sharded) <= 1e-5 * abs(single)


def test_cli_splits_the_host_cpu_into_devices_itself(tmp_path):
    # `dprnn-jax train --devices 3` in a process without XLA_FLAGS: the command line
    # asks JAX for 3 CPU devices before its backend starts, and trains on all three.
    command = [sys.executable, "-m", "dprnn_jax", "train", "--task", "adding", "--seq-len", "6"]
    command += ["--hidden", "4", "--batch-size", "6", "--steps", "2", "--devices", "3"]
    _run([*command, "--no-progress", "--out", str(tmp_path / "run")], XLA_FLAGS="")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["devices"] == 3 and metrics["device_count"] == 3
