"""Checkpoints: numpy `.npz` archives written atomically.

Format. One `.npz` (a zip of `.npy` arrays, numpy's documented format) holds the leaves
of a pytree as `leaf_00000`, `leaf_00001`, … in `jax.tree.leaves` order, and a JSON
document (UTF-8 bytes in a uint8 array) under `metadata`. It is read back with
`allow_pickle=False`: no code runs on load, so a checkpoint from elsewhere is safe to
open. Why `.npz` rather than a home-made format or another library: numpy ships with
JAX (no new dependency), the format is stable and documented (NEP 1), it stores every
dtype bit for bit (resume must be bitwise exact), and zip's CRC-32 detects corruption.
The tree structure is not stored: the caller passes a template (`like`) built from the
same configuration, and every leaf's shape and dtype are checked against it.

Atomicity. The archive is written to a temporary file in the same directory, flushed
and fsynced, then `os.replace`d over the old one (atomic on POSIX and Windows), and the
directory is fsynced. A kill at any moment leaves either the old or the new checkpoint,
complete; at worst a stray `.tmp` file, which the next save of that name replaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from typing import Any

import jax
import numpy as np

_METADATA = "metadata"


class CheckpointError(Exception):
    """A checkpoint that cannot be read or does not match the expected state.

    Example:
        >>> try:
        ...     load_checkpoint("missing.npz", None)
        ... except CheckpointError as error:
        ...     print(error)
        no checkpoint at missing.npz
    """


def _leaf_name(i: int) -> str:
    return f"leaf_{i:05d}"


def save_checkpoint(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> None:
    """Atomically writes `tree`'s leaves and a JSON `metadata` dict to `path` (.npz).

    Args:
        path: the checkpoint file; its directory must exist.
        tree: a pytree of arrays (e.g. `(params, opt_state)`).
        metadata: JSON-serialisable dict (step, configuration, history).

    Raises:
        OSError: the directory is not writable (nothing is changed then).
        TypeError: metadata that JSON cannot encode.

    Example:
        >>> import os, tempfile
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> opt_state = optax.adam(1e-3).init(params)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "checkpoint.npz")
        ...     save_checkpoint(path, (params, opt_state), {"step": 100})
        ...     print(sorted(os.listdir(folder)))
        ['checkpoint.npz']
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    arrays = {_leaf_name(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}
    text = json.dumps(metadata or {}, sort_keys=True)
    arrays[_METADATA] = np.frombuffer(text.encode("utf-8"), np.uint8)
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make the checkpoint private
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(path: str) -> dict[str, np.ndarray]:
    try:
        # Our own handle: np.load leaves the file open when the archive is unreadable.
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            # Reading every member checks every CRC-32.
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); "
            "the file was left as it is"
        ) from None


def _metadata(arrays: dict[str, np.ndarray], path: str) -> dict:
    if _METADATA not in arrays:
        raise CheckpointError(f"{path} has no metadata: it is not a dprnn_jax checkpoint")
    try:
        return json.loads(arrays[_METADATA].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} has unreadable metadata ({error})") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict of a checkpoint.

    Raises:
        CheckpointError: a missing, truncated or otherwise corrupt file.
    """
    path = os.fspath(path)
    return _metadata(_read(path), path)


def load_checkpoint(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of `like`.

    Args:
        path: a file written by `save_checkpoint`.
        like: a pytree with the expected structure, shapes and dtypes (e.g. freshly
            initialised params and optimiser state of the same configuration).

    Returns:
        `(tree, metadata)`: the saved leaves (as jax arrays) in `like`'s structure, and
        the metadata dict.

    Raises:
        CheckpointError: missing or corrupt file, or leaves that do not match `like` in
            number, shape or dtype (the message says which).

    Example:
        >>> import os, tempfile
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "checkpoint.npz")
        ...     save_checkpoint(path, params, {"step": 100})
        ...     restored, metadata = load_checkpoint(path, params)
        >>> metadata["step"], bool(jnp.all(restored.layers[0].S == params.layers[0].S))
        (100, True)
    """
    path = os.fspath(path)
    arrays = _read(path)
    metadata = _metadata(arrays, path)
    expected, treedef = jax.tree.flatten(like)
    names = sorted(name for name in arrays if name.startswith("leaf_"))
    if names != [_leaf_name(i) for i in range(len(expected))]:
        raise CheckpointError(
            f"{path} holds {len(names)} arrays but this configuration has {len(expected)} "
            "parameter/optimiser arrays: it was written by a different configuration"
        )
    leaves = []
    for name, reference in zip(names, expected, strict=True):
        leaf = arrays[name]
        if leaf.shape != np.shape(reference) or leaf.dtype != np.asarray(reference).dtype:
            raise CheckpointError(
                f"{path}: {name} has shape {leaf.shape} and dtype {leaf.dtype}, expected "
                f"{np.shape(reference)} and {np.asarray(reference).dtype}: it was written by "
                "a different configuration"
            )
        leaves.append(jax.numpy.asarray(leaf))
    return jax.tree.unflatten(treedef, leaves), metadata
