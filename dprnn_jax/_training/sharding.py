"""Data parallelism with `jax.sharding`: a 1-D device mesh over the batch axis.

Batches are time-major `(T, m, …)`, so the batch axis is axis 1 of every leaf; parameters
and optimiser state are replicated. The jitted training step is unchanged: XLA's SPMD
partitioner follows the input shardings, each device runs the Ω DP on its m / N rows,
and the gradient's sum over the batch becomes an all-reduce. The result is the
single-device result up to the order of floating-point additions.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named "batch" over the first `num_devices` devices (all if None).

    Raises:
        ValueError: fewer devices than asked for (on CPU, start Python with
            XLA_FLAGS=--xla_force_host_platform_device_count=N, or set
            `jax.config.update("jax_num_cpu_devices", N)` before JAX first runs).

    Example:
        >>> mesh = batch_mesh(1)  # or batch_mesh() for every device JAX sees
        >>> dict(mesh.shape)
        {'batch': 1}
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive int, got {num_devices!r}.")
    if num_devices > len(devices):
        raise ValueError(
            f"num_devices={num_devices} but JAX sees {len(devices)} {jax.default_backend()} "
            f"device(s); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{num_devices} before starting Python."
        )
    return Mesh(np.asarray(devices[:num_devices]), (BATCH_AXIS,))


def shard_batch(batch, mesh: Mesh):
    """Places every leaf of a time-major batch with its axis 1 split across the mesh.

    Raises:
        ValueError: a batch size not divisible by the number of devices.

    Example:
        >>> batch = Batch(jnp.ones((5, 4, 3)), jnp.zeros((5, 4), jnp.int32), jnp.ones((5, 4)))
        >>> sharded = shard_batch(batch, batch_mesh(1))
        >>> tuple(sharded.inputs.sharding.spec)  # axis 1, the batch, split over the mesh
        (None, 'batch')
    """
    size = mesh.devices.size
    for leaf in jax.tree.leaves(batch):
        if leaf.ndim < 2 or leaf.shape[1] % size:
            raise ValueError(
                f"the batch axis (axis 1 of a time-major array) must divide evenly over "
                f"{size} devices, got a leaf of shape {leaf.shape}; pick a batch size that "
                f"is a multiple of {size}."
            )
    sharding = NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS))
    return jax.device_put(batch, sharding)


def replicate(tree, mesh: Mesh):
    """Places a full copy of every leaf (parameters, optimiser state) on each device.

    Example:
        >>> params = replicate(init_rnn(jax.random.key(0), 3, (8,), 4), batch_mesh(1))
        >>> tuple(params.readout.W.sharding.spec)  # no axis split: a full copy
        ()
    """
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
