"""Reading a run back from its folder: `load_run`, and the checks and restore of
`train(..., resume=True)` (the options must be the checkpoint's, except
`RESUMABLE_CHANGES`)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import optax

from .._algorithms.base import GradientAlgorithm
from .._core.params import RNNParams
from .checkpoint import CheckpointError, load_checkpoint, read_metadata
from .config import (
    CHECKPOINT,
    OPTIMIZERS,
    RESUMABLE_CHANGES,
    TrainConfig,
    config_differences,
    fresh_state,
)
from .tasks import make_task


class ResumeError(Exception):
    """The output directory's state and the requested run do not fit together.

    Example:
        >>> import tempfile
        >>> config = TrainConfig(task="adding", seq_len=8)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     try:
        ...         train(config, folder, resume=True, progress=False)
        ...     except ResumeError as error:
        ...         print(str(error).replace(folder, "<folder>"))
        --resume: no checkpoint.npz in <folder>; start without --resume
    """


def saved_config(path: str) -> tuple[TrainConfig, dict]:
    """The configuration and metadata recorded in the checkpoint at `path`.

    Raises:
        CheckpointError: a missing or corrupt file, or one without a readable
            configuration (not written by `train`).
    """
    metadata = read_metadata(path)
    if not isinstance(metadata.get("config"), dict):
        raise CheckpointError(f"{path} holds no training configuration: not written by train")
    try:
        return TrainConfig.from_dict(metadata["config"]), metadata
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an unreadable configuration ({error})") from None


class SavedRun(NamedTuple):
    """A `train` run read back from its checkpoint: the parameters and optimiser state at
    `metadata["step"]`, the run's configuration, and the checkpoint's metadata (step,
    configuration as recorded, history of losses and evaluations).

    Example:
        >>> SavedRun._fields
        ('params', 'opt_state', 'config', 'metadata')
        >>> run = load_run("runs/adding")  # a folder that `train` wrote  # doctest: +SKIP
    """

    params: RNNParams
    opt_state: optax.OptState
    config: TrainConfig
    metadata: dict


def load_run(path: str | os.PathLike) -> SavedRun:
    """Reads a run written by `train` (or `dprnn-jax train`).

    Args:
        path: the run's output folder (`--out`) or its `checkpoint.npz`.

    Returns:
        `SavedRun(params, opt_state, config, metadata)`.

    Raises:
        CheckpointError: no checkpoint, a corrupt one, or one whose arrays do not match
            the configuration it records.
        ImportError: a "digits" run without scikit-learn (the task gives the sizes).

    Example:
        >>> run = load_run("runs/charlm")  # a folder that `train` wrote  # doctest: +SKIP
        >>> sample_text(run.params, "The ", 100, jax.random.key(0),
        ...             activation=run.config.activation)  # doctest: +SKIP
    """
    path = os.fspath(path)
    checkpoint = os.path.join(path, CHECKPOINT) if os.path.isdir(path) else path
    config, _ = saved_config(checkpoint)
    task = make_task(config.task, config.seq_len)
    optimizer = OPTIMIZERS[config.optimizer](config.learning_rate)
    # A freshly built state of the same configuration is the template whose structure,
    # shapes and dtypes the checkpoint must match.
    like = fresh_state(config, task, optimizer, jax.random.key(0))
    (params, opt_state), metadata = load_checkpoint(checkpoint, like)
    return SavedRun(params, opt_state, config, metadata)


def _show(value: object) -> str:
    # Algorithms read best as written in Python, `Omega(truncation=32)`; values as repr.
    return str(value) if isinstance(value, GradientAlgorithm) else repr(value)


def restore(out: str, config: TrainConfig, like) -> tuple[Any, int, dict]:
    path = os.path.join(out, CHECKPOINT)
    if not os.path.exists(path):
        raise ResumeError(f"--resume: no {CHECKPOINT} in {out}; start without --resume")
    saved, metadata = saved_config(path)
    changed = config_differences(saved, config)
    if changed:
        details = ", ".join(
            f"{key}: checkpoint {_show(getattr(saved, key))}, now {_show(getattr(config, key))}"
            for key in changed
        )
        raise ResumeError(
            f"--resume: {path} was written with other options ({details}); use the "
            f"checkpoint's options (only {', '.join(RESUMABLE_CHANGES)} may change)"
        )
    if metadata["step"] > config.steps:
        raise ResumeError(
            f"--resume: the checkpoint is at step {metadata['step']}, beyond --steps {config.steps}"
        )
    state, metadata = load_checkpoint(path, like)
    return state, metadata["step"], metadata["history"]


def checkpoint_step(out: str) -> int | None:
    # Read back from the file itself: a message built on it never claims a checkpoint
    # that is not there.
    try:
        return read_metadata(os.path.join(out, CHECKPOINT))["step"]
    except (CheckpointError, KeyError):
        return None


def checkpoint_status(out: str, step: int | None = None) -> str:
    """What `out` holds, in words for a message: its checkpoint's step, or none
    (`step`: the step of its checkpoint if already read)."""
    step = checkpoint_step(out) if step is None else step
    if step is None:
        return f"no checkpoint exists in {out}: start again without --resume"
    path = os.path.join(out, CHECKPOINT)
    return f"the checkpoint in {path} is at step {step}; continue with --resume"
