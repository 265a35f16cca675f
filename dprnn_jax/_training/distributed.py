"""Data parallelism over several processes (and hosts) on JAX's distributed runtime.

Every process runs the same program: it joins the runtime (`initialize_distributed`),
builds the same global mesh over the first `devices` local devices of each process
(`global_batch_mesh`), computes the same global batch from (seed, step), keeps only its
own rows of it (`process_rows`) and hands them to `jax.make_array_from_process_local_data`
(`shard_global_batch`). The jitted training step is the single-process one: parameters
and optimiser state are replicated on every device, the gradient's sum over the batch
is an all-reduce across processes (gloo on CPU). Process 0 alone writes the run's files.

A process that stops (killed, crashed) closes its connections: the others' next
collective fails at once and `train` raises `DistributedError`. A process that hangs
without dying is caught by the runtime's heartbeat (`heartbeat_timeout`), which ends the
others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .sharding import BATCH_AXIS

# The variables read when an option is not given: the first is JAX's own (read by
# `jax.distributed.initialize`), the other two follow its naming.
ENVIRONMENT = {
    "coordinator": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


class DistributedError(RuntimeError):
    """A multi-process run cannot start or go on: the coordinator is unreachable, the
    processes disagree (options, process count), or another process has stopped.

    Example:
        >>> issubclass(DistributedError, RuntimeError)
        True
    """


def parse_coordinator(address: str) -> tuple[str, int]:
    """`"HOST:PORT"` as `(host, port)`; an IPv6 host goes in brackets (`"[::1]:1234"`).

    Raises:
        ValueError: not of the form HOST:PORT with a port in 1..65535.

    Example:
        >>> parse_coordinator("10.0.0.1:1234")
        ('10.0.0.1', 1234)
    """
    host, _, port = str(address).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator must be HOST:PORT (the address of process 0 and a free port on "
            f"it, e.g. 10.0.0.1:1234), got {address!r}."
        )
    return host, int(port)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How one process joins a multi-process run (`dprnn-jax train --coordinator …`).

    Every process gets the same `coordinator` and `num_processes` and its own
    `process_id` in 0..num_processes-1; process 0 runs the coordinator service on
    `coordinator`'s port. The timeouts are in seconds: how long to wait for the
    coordinator and for every process to join (`initialization_timeout`, also the wait
    for the others at the end), and after how long without a heartbeat a process counts
    as dead (`heartbeat_timeout`).

    Raises:
        ValueError: a malformed coordinator, `num_processes` < 1, a `process_id`
            outside 0..num_processes-1, or a timeout < 1.

    Example:
        >>> DistributedConfig("10.0.0.1:1234", num_processes=2, process_id=1).process_id
        1
    """

    coordinator: str
    num_processes: int
    process_id: int
    initialization_timeout: int = 300
    heartbeat_timeout: int = 100

    def __post_init__(self):
        parse_coordinator(self.coordinator)
        for name in ("num_processes", "initialization_timeout", "heartbeat_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        process_id = self.process_id
        if not isinstance(process_id, int) or not 0 <= process_id < self.num_processes:
            raise ValueError(
                f"process_id must be in 0..{self.num_processes - 1} (num_processes="
                f"{self.num_processes}), got {process_id!r}; give each process its own id."
            )

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, **options
    ) -> DistributedConfig | None:
        """The configuration in JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
        JAX_PROCESS_ID, or None when none of them is set; `options` (the timeouts)
        are passed on.

        Raises:
            ValueError: some of the three set but not all, or a value that is not a
                number where one is expected (the message names the variable).

        Example:
            >>> environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
            ...            "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
            >>> DistributedConfig.from_environment(environ).num_processes
            2
        """
        environ = os.environ if environ is None else environ
        values = {field: environ.get(name) for field, name in ENVIRONMENT.items()}
        if all(value is None for value in values.values()):
            return None
        missing = [ENVIRONMENT[field] for field, value in values.items() if value is None]
        if missing:
            raise ValueError(
                f"a multi-process run needs {', '.join(ENVIRONMENT.values())}; "
                f"{', '.join(missing)} is not set."
            )
        for field in ("num_processes", "process_id"):
            try:
                values[field] = int(values[field])
            except ValueError:
                raise ValueError(
                    f"{ENVIRONMENT[field]} must be an integer, got {values[field]!r}."
                ) from None
        return cls(**values, **options)


def check_global_batch(batch_size: int, devices: int, num_processes: int) -> None:
    """Checks that a global batch splits evenly over `devices` devices in each of
    `num_processes` processes.

    Raises:
        ValueError: `batch_size` not a multiple of devices × num_processes.

    Example:
        >>> check_global_batch(8, devices=1, num_processes=2)  # 4 rows per process
    """
    total = devices * num_processes
    if batch_size % total:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of the global device count "
            f"{total} ({num_processes} processes × {devices} device(s) each); pick a "
            f"batch size that is a multiple of {total}."
        )


def process_rows(batch_size: int, num_processes: int, process_id: int) -> slice:
    """The rows of a global batch that process `process_id` feeds: the `process_id`-th
    of `num_processes` equal contiguous blocks (the mesh lists devices by process).

    Example:
        >>> process_rows(8, num_processes=2, process_id=1)
        slice(4, 8, None)
    """
    rows = batch_size // num_processes
    return slice(process_id * rows, (process_id + 1) * rows)


def _wait_for_coordinator(host: str, port: int, timeout: float) -> None:
    # JAX's client aborts the whole process (no Python exception) when it cannot reach
    # the coordinator in time; a plain TCP probe first turns that into a clear error.
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"cannot reach the coordinator {host}:{port} within {timeout:g} s "
                    f"({error.strerror or error}); start process 0 with the same "
                    "--coordinator, check the address and that the port is open"
                ) from None
            time.sleep(0.2)


def _check_free_port(host: str, port: int) -> None:
    # Process 0 binds the coordinator's port on every interface; a taken port would
    # otherwise end in an abort inside the runtime.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise DistributedError(
                f"process 0 cannot open the coordinator's port {port} "
                f"({error.strerror or error}); pick another port in --coordinator"
            ) from None


def initialize_distributed(config: DistributedConfig) -> None:
    """Joins the multi-process run: `jax.distributed.initialize` with gloo collectives
    on CPU. Call it in every process before any other JAX computation, then `train`
    as usual: it shards each batch over every process's devices.

    Raises:
        DistributedError: the coordinator cannot be reached (or its port opened, on
            process 0) within `initialization_timeout`; the runtime was already
            started; or the run the coordinator holds has another process count.

    Example:
        >>> config = DistributedConfig("10.0.0.1:1234", num_processes=2, process_id=1)
        >>> initialize_distributed(config)  # doctest: +SKIP
        >>> train(TrainConfig(task="adding"), "runs/adding")  # doctest: +SKIP
    """
    if jax.distributed.is_initialized():
        raise DistributedError("the distributed runtime is already initialised in this process")
    host, port = parse_coordinator(config.coordinator)
    if config.process_id == 0:
        _check_free_port(host, port)
    else:
        _wait_for_coordinator(host, port, config.initialization_timeout)
    # Cross-process collectives on CPU (JAX's default may be none); unused on GPU, TPU.
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            config.coordinator,
            config.num_processes,
            config.process_id,
            initialization_timeout=config.initialization_timeout,
            heartbeat_timeout_seconds=config.heartbeat_timeout,
            shutdown_timeout_seconds=config.initialization_timeout,
        )
    except RuntimeError as error:  # e.g. the backend already started in this process
        raise DistributedError(f"cannot join the distributed runtime: {error}") from None
    if jax.process_count() != config.num_processes:
        raise DistributedError(
            f"num_processes={config.num_processes} but the run at {config.coordinator} "
            f"has {jax.process_count()} processes; give every process the same count"
        )


def global_batch_mesh(devices: int) -> Mesh:
    """A 1-D "batch" mesh over the first `devices` local devices of every process,
    listed by process, so that process p holds the p-th block of the batch.

    Raises:
        ValueError: a process with fewer than `devices` devices.

    Example:
        >>> dict(global_batch_mesh(1).shape)  # one process here: its first device
        {'batch': 1}
    """
    chosen = []
    for process in range(jax.process_count()):
        local = sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
        if len(local) < devices:
            raise ValueError(
                f"devices={devices} per process but process {process} has {len(local)} "
                f"{jax.default_backend()} device(s); on CPU every process needs "
                f"jax.config.update('jax_num_cpu_devices', {devices}) before JAX starts."
            )
        chosen += local[:devices]
    return Mesh(np.asarray(chosen), (BATCH_AXIS,))


def shard_global_batch(batch, mesh: Mesh):
    """This process's rows of a time-major global batch (the same on every process) as
    global arrays split over `mesh` along axis 1.

    Raises:
        ValueError: a batch axis not divisible by the mesh's device count.

    Example:
        >>> batch = Batch(jnp.ones((5, 4, 3)), jnp.zeros((5, 4), jnp.int32), jnp.ones((5, 4)))
        >>> tuple(shard_global_batch(batch, global_batch_mesh(1)).inputs.shape)
        (5, 4, 3)
    """
    size = mesh.devices.size
    sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))

    def place(leaf):
        if np.ndim(leaf) < 2 or np.shape(leaf)[1] % size:
            raise ValueError(
                f"the batch axis (axis 1 of a time-major array) must divide evenly over "
                f"{size} devices, got a leaf of shape {np.shape(leaf)}."
            )
        rows = process_rows(np.shape(leaf)[1], jax.process_count(), jax.process_index())
        local = np.asarray(leaf)[:, rows]
        return jax.make_array_from_process_local_data(sharding, local, np.shape(leaf))

    return jax.tree.map(place, batch)


def replicate_global(tree, mesh: Mesh):
    """A full copy of every leaf on every device of a mesh that spans processes (the
    value must be the same in every process, as parameters built from one seed are)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    # Not `jax.device_put`, which would compile and run a cross-process comparison of
    # every leaf; the processes have already agreed on where the values come from.
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)), tree
    )


def local_copy(tree):
    """This process's own copy of every replicated leaf of a global pytree, read without
    any communication: what NumPy, a checkpoint and local computations can use (other
    leaves are left as they are).

    Example:
        >>> tree = replicate_global({"w": np.ones(3)}, global_batch_mesh(1))
        >>> local_copy(tree)["w"].is_fully_addressable
        True
    """

    def local(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if leaf.is_fully_replicated:
                return leaf.addressable_data(0)
        return leaf

    return jax.tree.map(local, tree)


def fingerprint(record: object) -> int:
    """A 31-bit digest of a JSON-ready record, to compare options across processes."""
    text = json.dumps(record, sort_keys=True, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big") >> 1


def agree_to_start(values: Sequence[int], names: Sequence[str], failure: str | None) -> None:
    """Every process says whether it is ready and what it will run (small integers);
    all go on only if all are ready and agree.

    Raises:
        DistributedError: another process failed to start (its own error is on its
            output), or the processes disagree on one of `names`.
    """
    from jax.experimental import multihost_utils

    mine = np.asarray([failure is None, *values], np.int32)
    try:
        table = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, mine.size)
    except (RuntimeError, ValueError) as error:  # a process gone before the first step
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DistributedError(
            f"cannot check in with the other processes of the run ({reason}); one of them "
            "has stopped (see its output)"
        ) from None
    if failure is not None:
        return  # this process raises its own error
    failed = [str(p) for p in range(table.shape[0]) if not table[p, 0]]
    if failed:
        raise DistributedError(
            f"process(es) {', '.join(failed)} of the run could not start (see their "
            "error); this process stops too"
        )
    differ = [name for i, name in enumerate(names, start=1) if len(set(table[:, i].tolist())) > 1]
    if differ:
        raise DistributedError(
            f"the processes of the run disagree on {', '.join(differ)}; give every process "
            "the same options (and, with --resume, the same checkpoint)"
        )
