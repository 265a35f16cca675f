"""The training loop behind `dprnn-jax train`: data, steps, evaluation, checkpoints, resume
and the output files.

Reproducibility: the initial parameters come from `seed` and the batch of step s from
`fold_in(data_key, s)`, so the batch depends on (seed, step) only, never on history. A
run resumed from a checkpoint at step c therefore feeds the same jitted step the same
inputs as an uninterrupted run, and ends with bitwise the same parameters (on the same
machine and device count).

Files in the output directory:

* `checkpoint.npz`: params, optimiser state, step, configuration and history (atomic);
* `metrics.json`: configuration, final training and validation numbers, wall time;
* `loss_curve.png`: training loss per step and validation loss at each evaluation;
* `sample.txt`: for "charlm", text generated from a prompt.

Divergence. A step whose loss or gradient is not finite is skipped (the parameters stay
as they were, see `make_train_step`) and counted. A run has *diverged* when its last
validation loss is not finite, or more than `DIVERGENCE_FACTOR` (100) times the task's
chance level (a blow-up that saturates the network leaves the loss finite but huge), or
when more than half of all its steps (every session of a resumed run) were skipped:
`metrics.json` then says `"diverged": true` with the reason in `"divergence"`, and
`dprnn-jax train` exits with status 3 after writing its files. The loss curve marks
every skipped step and draws the chance level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from .._backward.base import GradientAlgorithm
from .._backward.omega import Omega
from .._backward.registry import algorithm_from_dict, resolve_method
from .._model.params import RNNParams, init_rnn
from .._validation import check_choice, check_positive_int
from .checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from .distributed import (
    DistributedError,
    agree_to_start,
    check_global_batch,
    fingerprint,
    global_batch_mesh,
    local_copy,
    replicate_global,
    shard_global_batch,
)
from .interrupt import Interrupted, TrainingInterrupted, stop_on_signals
from .lock import RunLockedError, run_lock
from .sharding import batch_mesh, replicate, shard_batch
from .step import make_eval_step, make_train_step
from .tasks import DEFAULT_SEQ_LEN, Task, make_task, sample_text

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
LOSS_CURVE = "loss_curve.png"
SAMPLE = "sample.txt"
# Every file a run writes into its folder.
RUN_FILES = (CHECKPOINT, METRICS, LOSS_CURVE, SAMPLE)

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "sgd": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
}

# Options that may differ between a run and its resumption: they change how long the run
# goes and what it records, not its trajectory (a different device count changes only
# the order of the gradient's sums, so the result agrees to round-off, not bitwise).
RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "devices")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the `dprnn-jax train` options).

    `method` is a gradient algorithm (`Omega(truncation=32)`, `BPTT()`, …) or its name
    ("omega"); a name is turned into the algorithm with its default options, so
    `TrainConfig(method="bptt").method == BPTT()`. `seq_len=None` becomes the task's
    default length.

    Example:
        >>> config = TrainConfig(task="adding", method="bptt", steps=200)
        >>> config.method == BPTT(), config.seq_len
        (True, 50)
    """

    task: str = "charlm"
    method: GradientAlgorithm | str = Omega()
    steps: int = 1000
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 3e-3
    optimizer: str = "adam"
    hidden_size: int = 128
    layers: int = 1
    cell: str = "elman"
    seq_len: int | None = None
    activation: str = "tanh"
    max_grad_norm: float | None = 1.0
    eval_every: int = 100
    checkpoint_every: int = 100
    devices: int = 1

    def __post_init__(self):
        object.__setattr__(self, "method", resolve_method(self.method))
        if self.seq_len is None and self.task in DEFAULT_SEQ_LEN:
            object.__setattr__(self, "seq_len", DEFAULT_SEQ_LEN[self.task])

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values, the algorithm as its `to_dict()`; what
        `metrics.json` and checkpoints record."""
        record = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        record["method"] = self.method.to_dict()
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TrainConfig:
        """Rebuilds a configuration from `to_dict()` (unknown keys are ignored; a method
        recorded as a bare name, as older runs did, means its default options)."""
        names = {field.name for field in dataclasses.fields(cls)}
        options = {key: value for key, value in record.items() if key in names}
        if isinstance(options.get("method"), dict):
            options["method"] = algorithm_from_dict(options["method"])
        return cls(**options)


def config_differences(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The fields of `config` that change the trajectory of `saved` (all but
    `RESUMABLE_CHANGES`), in declaration order."""
    return [
        field.name
        for field in dataclasses.fields(TrainConfig)
        if field.name not in RESUMABLE_CHANGES
        and getattr(saved, field.name) != getattr(config, field.name)
    ]


class TrainResult(NamedTuple):
    """The trained parameters and the final metrics dict (also written to metrics.json).

    Example:
        >>> TrainResult._fields
        ('params', 'metrics')
        >>> config = TrainConfig(task="adding", seq_len=8, steps=20)
        >>> result = train(config, "runs/adding", progress=False)  # doctest: +SKIP
        >>> result.metrics["diverged"]  # doctest: +SKIP
        False
    """

    params: RNNParams
    metrics: dict


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


def check_output_dir(out: str) -> None:
    """Creates `out` if needed and checks that files can be written in it.

    Raises:
        OSError: not a directory, or not writable (with the reason).
    """
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
        pass


def _write_text(path: str, text: str) -> None:
    # Temporary file then os.replace, like the checkpoint: never a half-written file.
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


def _history() -> dict[str, list]:
    return {"loss": [], "accuracy": [], "grad_norm": [], "skipped": [], "evaluations": []}


def _check_config(config: TrainConfig) -> None:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
    for name in ("steps", "batch_size", "hidden_size", "layers", "eval_every"):
        check_positive_int(name, getattr(config, name))
    check_positive_int("checkpoint_every", config.checkpoint_every)
    check_positive_int("devices", config.devices)
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {config.seed!r}.")
    if not config.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {config.learning_rate!r}.")


class _Programs(NamedTuple):
    """A configuration's task, optimiser and compiled functions."""

    task: Task
    optimizer: optax.GradientTransformation
    train_step: Callable
    eval_step: Callable
    sample: Callable


@functools.lru_cache(maxsize=4)
def _programs(
    task_name, seq_len, optimizer_name, learning_rate, activation, method, max_grad_norm
) -> _Programs:
    # Cached so that a run resumed in the same process (tests, notebooks) reuses the
    # compiled step instead of tracing and compiling it again.
    task = make_task(task_name, seq_len)
    optimizer = OPTIMIZERS[optimizer_name](learning_rate)
    train_step = make_train_step(
        optimizer, loss=task.loss, activation=activation, method=method, max_grad_norm=max_grad_norm
    )
    eval_step = make_eval_step(loss=task.loss, activation=activation, method=method)
    return _Programs(task, optimizer, train_step, eval_step, jax.jit(task.sample, static_argnums=1))


def _fresh_state(config: TrainConfig, task: Task, optimizer, key: jax.Array):
    sizes = (config.hidden_size,) * config.layers
    params = init_rnn(key, task.input_size, sizes, task.output_size, cell=config.cell)
    return params, optimizer.init(params)


def _initial_state(config: TrainConfig, programs: _Programs):
    init_key, data_key = jax.random.split(jax.random.key(config.seed))
    params, opt_state = _fresh_state(config, programs.task, programs.optimizer, init_key)
    return params, opt_state, data_key


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
    like = _fresh_state(config, task, optimizer, jax.random.key(0))
    (params, opt_state), metadata = load_checkpoint(checkpoint, like)
    return SavedRun(params, opt_state, config, metadata)


def _show(value: object) -> str:
    # Algorithms read best as written in Python, `Omega(truncation=32)`; values as repr.
    return str(value) if isinstance(value, GradientAlgorithm) else repr(value)


def _restore(out: str, config: TrainConfig, like) -> tuple[Any, int, dict]:
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


def _checkpoint_step(out: str) -> int | None:
    # Read back from the file itself: a message built on it never claims a checkpoint
    # that is not there.
    try:
        return read_metadata(os.path.join(out, CHECKPOINT))["step"]
    except (CheckpointError, KeyError):
        return None


def checkpoint_status(out: str, step: int | None = None) -> str:
    """What `out` holds, in words for a message: its checkpoint's step, or none
    (`step`: the step of its checkpoint if already read)."""
    step = _checkpoint_step(out) if step is None else step
    if step is None:
        return f"no checkpoint exists in {out}: start again without --resume"
    path = os.path.join(out, CHECKPOINT)
    return f"the checkpoint in {path} is at step {step}; continue with --resume"


def _interrupted(
    signum: int, out: str, step: int, *, failure: OSError | None = None, writer: bool = True
) -> TrainingInterrupted:
    on_disk = _checkpoint_step(out)
    head = f"interrupted at step {step}" if step else "interrupted before the first step"
    if failure is not None:
        head += f"; writing its checkpoint failed ({failure.strerror or failure})"
    if not writer:  # process 0 of a multi-process run may still be writing
        message = f"{head}; process 0 writes the run's checkpoint in {out} (see its output)"
    elif on_disk is not None and on_disk == step and failure is None:
        path = os.path.join(out, CHECKPOINT)
        message = (
            f"{head}; checkpoint at step {step} written to {path}{_summary_note(out, step)}; "
            "continue with --resume"
        )
    else:
        message = f"{head}; {checkpoint_status(out, on_disk)}"
    return TrainingInterrupted(signum, message, step=step, checkpoint_step=on_disk)


def _summary_note(out: str, step: int) -> str:
    """Names metrics.json and the loss curve in the stop message when metrics.json, read
    back, is of `step` (as `train` writes it on a stop); else claims nothing of them."""
    try:
        with open(os.path.join(out, METRICS), encoding="utf-8") as file:
            written = json.load(file).get("steps_done")
    except (OSError, ValueError):
        return ""
    return f", with {METRICS} and {LOSS_CURVE}" if written == step else ""


# A validation loss this many times the chance level is a blow-up, not slow learning: a
# model that ignores its inputs scores 1×, and an untrained one stays within a few times.
DIVERGENCE_FACTOR = 100


def divergence(history: dict, chance_level: float | None) -> str | None:
    """Why a run's history counts as diverged (see the module docstring), or None."""
    skipped, steps = int(sum(history["skipped"])), len(history["skipped"])
    last = history["evaluations"][-1]["loss"] if history["evaluations"] else None
    reasons = []
    if 2 * skipped > steps:
        reasons.append(f"{skipped} of {steps} steps were skipped (non-finite loss or gradient)")
    if last is not None and not math.isfinite(last):
        reasons.append(f"the last validation loss is {last}")
    elif last is not None and chance_level and last > DIVERGENCE_FACTOR * chance_level:
        reasons.append(
            f"the last validation loss {last:.4g} is more than {DIVERGENCE_FACTOR} times the "
            f"chance level {chance_level:.4g} (the loss of a prediction that ignores the inputs)"
        )
    return " and ".join(reasons) or None


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _final_metrics(config, task, step, history, seconds, steps_run) -> dict:
    last = history["evaluations"][-1] if history["evaluations"] else None
    window = history["loss"][-max(1, len(history["loss"]) // 10) :]
    diverged = divergence(history, task.chance_level)
    metrics = {
        "config": config.to_dict(),
        "steps_done": step,
        "train_loss_last": history["loss"][-1] if history["loss"] else None,
        "train_loss_mean_last_10pct": float(np.mean(window)) if window else None,
        "skipped_steps": int(sum(history["skipped"])),
        "diverged": diverged is not None,
        "divergence": diverged,
        "validation": last,
        "chance_level": task.chance_level,
        "wall_seconds_this_session": seconds,
        "steps_this_session": steps_run,
        "backend": jax.default_backend(),
    }
    if task.name == "charlm" and last is not None:
        metrics["validation_perplexity"] = _perplexity(last["loss"])
        metrics["validation_bits_per_character"] = last["loss"] / math.log(2)
    return metrics


def plot_loss_curve(
    history: dict, path: str, title: str, chance_level: float | None = None
) -> None:
    """Training loss per step (and its running mean) with validation loss, as a PNG;
    non-finite losses are left out, every skipped step is marked along the bottom and the
    task's chance level, where it knows one, is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(history["loss"], np.float64)
    loss = np.where(np.isfinite(loss), loss, np.nan)  # gaps, not a ruined y axis
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    steps = np.arange(1, len(loss) + 1)
    skipped = steps[np.asarray(history["skipped"], bool)]
    if skipped.size:
        # x in steps, y in axes coordinates: a row of ticks at the bottom, whatever the loss.
        axes.plot(
            skipped,
            np.full(skipped.size, 0.03),
            "|",
            color="tab:red",
            markersize=10,
            transform=axes.get_xaxis_transform(),
            label=f"skipped step ({skipped.size}, non-finite)",
        )
    axes.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (batch)")
    width = max(1, len(loss) // 50)
    if len(loss) >= width > 1:
        smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
        axes.plot(steps[width - 1 :], smooth, color="tab:blue", label=f"train ({width}-step mean)")
    evaluations = [e for e in history["evaluations"] if math.isfinite(e["loss"])]
    if evaluations:
        axes.plot(
            [e["step"] for e in evaluations],
            [e["loss"] for e in evaluations],
            "o-",
            color="tab:orange",
            label="validation",
        )
    if chance_level is not None:
        axes.axhline(
            chance_level,
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"chance level {chance_level:.3g} (inputs ignored)",
        )
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() > 1e3 * finite.min():
        axes.set_yscale("log")  # a blow-up spans orders of magnitude
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def train(
    config: TrainConfig,
    out: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_at: int | None = None,
) -> TrainResult:
    """Trains a model on `config.task`, with evaluation, checkpoints and output files.

    Args:
        config: the run's options.
        out: output directory (created if needed).
        resume: continue from `out/checkpoint.npz`; the options must be the checkpoint's
            except steps, eval_every, checkpoint_every and devices (on another device
            count the result agrees to round-off instead of bitwise).
        overwrite: start afresh in an `out` that holds an earlier run's files (they
            are removed first); without it such an `out` is refused.
        progress: show a tqdm progress bar with loss and accuracy.
        log: where evaluation lines go.
        stop_at: stop after this many steps without writing anything more, as a kill
            would (for testing resume).

    Across processes: after `initialize_distributed` in every process, the same call in
    each trains one model on `config.devices` devices per process, each process feeding
    its own rows of every global batch (`batch_size` must be a multiple of the global
    device count). Process 0 takes the lock and writes every file; the others write
    nothing and read `out/checkpoint.npz` on resume (docs/distributed.md#what-is-sharded).
    Each process returns its own copy of the parameters.

    Returns:
        `TrainResult(params, metrics)`. A step whose loss or gradient is not finite is
        skipped and counted (`metrics["skipped_steps"]`). The run has diverged when its
        last validation loss is not finite or more than half of all its steps (every
        session of a resumed run) were skipped: `metrics["diverged"]` is then True and
        `metrics["divergence"]` says which; the files are written all the same.

    Raises:
        ResumeError: `resume` without a checkpoint, a checkpoint from other options, or a
            fresh run (without `overwrite`) into a folder that holds an earlier run's
            files: its checkpoint, metrics, loss curve or sample.
        TrainingInterrupted: SIGINT (Ctrl-C) or SIGTERM stopped the run: the step in
            flight finished and its checkpoint, metrics.json and loss curve were written
            (a second signal stops at once); the message says what is on disk. A
            `KeyboardInterrupt`.
        RunLockedError: another run holds `out` (its lock file `out/train.lock` names
            its pid and host); a lock left by a dead process on this host is taken over
            with a warning on `log`.
        CheckpointError: a corrupt checkpoint (the file is left as it is).
        OSError: an unwritable `out`.
        ValueError, ImportError: bad options (from the task, the mesh, the step).
        DistributedError: across processes, another process could not start, runs with
            other options, or stopped during the run (its collective failed).

    Example:
        >>> config = TrainConfig(task="adding", seq_len=8, steps=200, hidden_size=16)
        >>> result = train(config, "runs/adding", progress=False)  # doctest: +SKIP
        >>> sorted(result.metrics)[:3]  # doctest: +SKIP
        ['backend', 'config', 'device_count']
    """
    _check_config(config)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue a run or replace it")
    programs = _programs(
        config.task,
        config.seq_len,
        config.optimizer,
        config.learning_rate,
        config.activation,
        config.method,
        config.max_grad_norm,
    )
    processes = jax.process_count()
    if processes > 1:
        check_global_batch(config.batch_size, config.devices, processes)
        mesh = global_batch_mesh(config.devices)
        return _train_across_processes(
            config, out, programs, mesh, resume, overwrite, progress, log, stop_at
        )
    if config.batch_size % config.devices:
        raise ValueError(
            f"batch_size={config.batch_size} must be a multiple of devices={config.devices}"
        )
    mesh = batch_mesh(config.devices) if config.devices > 1 else None
    check_output_dir(out)
    with run_lock(out, log=log):
        start = _starting_state(config, out, programs, resume, overwrite, log)
        return _train_from(config, out, programs, mesh, start, progress, log, stop_at)


def _train_across_processes(config, out, programs, mesh, resume, overwrite, progress, log, stop_at):
    # Process 0 alone takes the lock and writes; every process reads the checkpoint on
    # resume. All of them check in before the first step, so that one that cannot start
    # (a locked folder, options that differ) stops the others at once.
    writer = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        start, failure = None, None
        try:
            if writer:
                check_output_dir(out)
                stack.enter_context(run_lock(out, log=log))
            start = _starting_state(config, out, programs, resume, overwrite, log, writer=writer)
        except (ResumeError, CheckpointError, RunLockedError, OSError) as error:
            failure = error
        agree_to_start(
            [fingerprint(config.to_dict()), -1 if start is None else start.step],
            ["the options", "the checkpoint's step"],
            None if failure is None else str(failure),
        )
        if failure is not None:
            raise failure
        return _train_from(config, out, programs, mesh, start, progress, log, stop_at, writer)


def _clear_for_a_fresh_run(out: str, overwrite: bool) -> None:
    # Never replace an earlier run's files silently, checkpoint or not.
    present = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if present and not overwrite:
        if CHECKPOINT in present:
            raise ResumeError(
                f"{out} already holds a checkpoint ({CHECKPOINT}); pass --resume to continue "
                "it, --overwrite to start over, or choose another --out (nothing was "
                "overwritten)"
            )
        raise ResumeError(
            f"{out} holds the files of an earlier run ({', '.join(present)}) but no "
            "checkpoint; pass --overwrite to replace them or choose another --out (nothing "
            "was overwritten)"
        )
    # Removed before the run starts, so that no file of the old run outlives the new one.
    for name in present:
        os.remove(os.path.join(out, name))


class _Start(NamedTuple):
    """Where a run starts: fresh (step 0) or from its checkpoint."""

    params: RNNParams
    opt_state: optax.OptState
    data_key: jax.Array
    step: int
    history: dict
    resumed: bool


def _starting_state(config, out, programs, resume, overwrite, log, *, writer=True) -> _Start:
    params, opt_state, data_key = _initial_state(config, programs)
    if resume:
        (params, opt_state), step, history = _restore(out, config, (params, opt_state))
        if writer:
            log(f"resumed from {os.path.join(out, CHECKPOINT)} at step {step}")
        return _Start(params, opt_state, data_key, step, history, True)
    if writer:
        _clear_for_a_fresh_run(out, overwrite)
    return _Start(params, opt_state, data_key, 0, _history(), False)


def _lost_a_process(error: Exception, out: str, failed_step: int) -> DistributedError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DistributedError(
        f"step {failed_step} failed across processes ({reason}): another process of the "
        f"run has stopped or cannot be reached (see its output); {checkpoint_status(out)} "
        "(restart every process)"
    )


def _train_from(config, out, programs, mesh, start, progress, log, stop_at, writer=True):
    from tqdm import tqdm

    task = programs.task
    params, opt_state, data_key = start.params, start.opt_state, start.data_key
    step, history = start.step, start.history
    checkpoint = os.path.join(out, CHECKPOINT)
    across_processes = jax.process_count() > 1

    train_step, eval_step, sample = programs.train_step, programs.eval_step, programs.sample
    validation = task.validation
    if across_processes:
        params, opt_state, validation = replicate_global((params, opt_state, validation), mesh)
    elif mesh is not None:
        params, opt_state = replicate((params, opt_state), mesh)
        validation = replicate(validation, mesh)

    saved_step = step if start.resumed else None  # the step of the checkpoint on disk

    def save(step):
        nonlocal saved_step
        if writer:
            metadata = {"step": step, "config": config.to_dict(), "history": history}
            save_checkpoint(checkpoint, local_copy((params, opt_state)), metadata)
        saved_step = step

    def lost(error: Exception, failed_step: int) -> DistributedError:
        # Every process finished the steps before the failed one together (their
        # all-reduce did), so process 0 keeps the last of them before it stops.
        if writer and step > first_step and step != saved_step:
            with contextlib.suppress(OSError):
                save(step)
        return _lost_a_process(error, out, failed_step)

    first_step, started = step, time.perf_counter()
    bar = tqdm(
        total=config.steps, initial=step, disable=not progress, desc=task.name, dynamic_ncols=True
    )
    try:
        with stop_on_signals() as stop, bar:
            while step < config.steps and stop.signal is None:
                if stop_at is not None and step >= stop_at:
                    return TrainResult(local_copy(params), {})
                batch = sample(jax.random.fold_in(data_key, step), config.batch_size)
                try:
                    if across_processes:
                        batch = shard_global_batch(batch, mesh)
                    elif mesh is not None:
                        batch = shard_batch(batch, mesh)
                    # Kept apart until the step is known to have run: a failure shows up
                    # only when its result is read, and `lost` saves the state before it.
                    new_params, new_opt_state, metrics = train_step(params, opt_state, batch)
                    metrics = jax.device_get(local_copy(metrics))
                    params, opt_state = new_params, new_opt_state
                except (RuntimeError, ValueError) as error:
                    if not across_processes:
                        raise
                    raise lost(error, step + 1) from None
                step += 1
                for name in ("loss", "accuracy", "grad_norm"):
                    history[name].append(float(getattr(metrics, name)))
                history["skipped"].append(int(metrics.skipped))
                bar.update(1)
                bar.set_postfix(loss=f"{metrics.loss:.4f}", acc=f"{metrics.accuracy:.3f}")
                if step % config.eval_every == 0 or step == config.steps:
                    try:
                        evaluation = jax.device_get(local_copy(eval_step(params, validation)))
                    except (RuntimeError, ValueError) as error:
                        if not across_processes:
                            raise
                        raise lost(error, step) from None
                    entry = {
                        "step": step,
                        "loss": float(evaluation.loss),
                        "accuracy": float(evaluation.accuracy),
                    }
                    history["evaluations"].append(entry)
                    line = (
                        f"step {step:>6}  validation loss {entry['loss']:.4f}  "
                        f"acc {entry['accuracy']:.4f}"
                    )
                    if task.name == "charlm":
                        line += f"  perplexity {_perplexity(entry['loss']):.3f}"
                    if writer:
                        (bar.write if progress else log)(line)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    save(step)
            if stop.signal is not None and step > first_step and step != saved_step:
                try:
                    save(step)
                except OSError as error:
                    raise _interrupted(stop.signal, out, step, failure=error) from None
            if stop.signal is not None and writer and step > first_step:
                # metrics.json and the loss curve follow the checkpoint: an earlier
                # session's would describe another step.
                metrics = _run_metrics(config, task, step, history, started, first_step, mesh)
                metrics["interrupted"] = signal.Signals(stop.signal).name
                with contextlib.suppress(OSError):
                    _write_summary(out, config, task, history, metrics)
    except TrainingInterrupted:
        raise
    except Interrupted as error:  # a second signal: stop at once
        raise _interrupted(error.signal, out, step, writer=writer) from None
    if stop.signal is not None:
        raise _interrupted(stop.signal, out, step, writer=writer)
    params = local_copy(params)  # across processes: this process's copy
    metrics = _run_metrics(config, task, step, history, started, first_step, mesh)
    if not writer:  # process 0 writes the run's files
        metrics["files"] = []
        return TrainResult(params, metrics)
    _write_summary(out, config, task, history, metrics, params)
    return TrainResult(params, metrics)


def _run_metrics(config, task, step, history, started, first_step, mesh) -> dict:
    seconds = time.perf_counter() - started
    metrics = _final_metrics(config, task, step, history, seconds, step - first_step)
    metrics["device_count"] = 1 if mesh is None else int(mesh.devices.size)
    metrics["devices_available"] = len(jax.devices())
    metrics["process_count"] = jax.process_count()
    metrics["process_id"] = jax.process_index()
    return metrics


def _write_summary(out, config, task, history, metrics, params=None) -> None:
    """The loss curve, a text sample (charlm, given the final `params`) and, last,
    metrics.json listing the files written."""
    title = f"{task.name} (T={task.seq_len}), method={config.method}, {config.optimizer}"
    plot_loss_curve(history, os.path.join(out, LOSS_CURVE), title, task.chance_level)
    files = [CHECKPOINT, METRICS, LOSS_CURVE]
    if params is not None and task.name == "charlm":
        text = sample_text(
            params,
            "The ",
            300,
            jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1),
            activation=config.activation,
            temperature=0.7,
        )
        _write_text(os.path.join(out, SAMPLE), text + "\n")
        metrics["sample"] = text
        files.append(SAMPLE)
    metrics["files"] = files
    _write_text(os.path.join(out, METRICS), json.dumps(metrics, indent=2) + "\n")
