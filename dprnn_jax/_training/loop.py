"""The training loop behind `dprnn-jax train`: data, steps, evaluation, checkpoints and
the output files (resuming a run and reading it back: `resume.py`).

Reproducibility: the initial parameters come from `seed` and the batch of step s from
`fold_in(data_key, s)`, so the batch depends on (seed, step) only, never on history
(UORO's random signs of step s likewise, from `fold_in(key(seed), s)`). A run resumed
from a checkpoint at step c therefore feeds the same jitted step the same inputs as an
uninterrupted run, and ends with bitwise the same parameters (on the same machine and
device count).

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
import functools
import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import optax

from .._algorithms.rflo import RFLO
from .._algorithms.uoro import UORO
from .._core.params import RNNParams
from .._core.validation import check_choice, check_positive_int
from .._diagnostics.plotting import plot_loss_curve
from .._model.online import ONLINE
from .checkpoint import CheckpointError, save_checkpoint
from .config import (
    CHECKPOINT,
    LOSS_CURVE,
    METRICS,
    OPTIMIZERS,
    RUN_FILES,
    SAMPLE,
    TrainConfig,
    fresh_state,
)
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
from .online_step import make_online_train_step
from .resume import ResumeError, checkpoint_status, checkpoint_step, restore
from .sharding import batch_mesh, replicate, shard_batch
from .step import make_eval_step, make_train_step
from .tasks import Task, make_task, sample_text


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
    if config.online is not None:
        check_positive_int("online", config.online)
        if not isinstance(config.method, ONLINE):
            names = ", ".join(f"{cls.__name__}()" for cls in ONLINE)
            raise ValueError(
                f"online={config.online} updates the parameters inside a batch, which needs "
                f"an algorithm that runs forward in time ({names}), got "
                f"method={config.method}; pick one of them or drop online."
            )
    if isinstance(config.method, RFLO) and config.cell != "elman":
        raise ValueError(
            f"method={config.method} is a rule of Elman layers, got cell={config.cell!r}; "
            "use cell='elman', or SnAp, UORO or RTRL for other cells."
        )


class _Programs(NamedTuple):
    """A configuration's task, optimiser and compiled functions; `train_step(params,
    opt_state, batch, step)` takes the step's number (for UORO's keys)."""

    task: Task
    optimizer: optax.GradientTransformation
    train_step: Callable
    eval_step: Callable
    sample: Callable


@functools.lru_cache(maxsize=4)
def _programs(
    task_name,
    seq_len,
    optimizer_name,
    learning_rate,
    activation,
    method,
    max_grad_norm,
    online=None,
    signs_seed=None,
) -> _Programs:
    # Cached so that a run resumed in the same process (tests, notebooks) reuses the
    # compiled step instead of tracing and compiling it again. `online` is the config's;
    # `signs_seed` its seed for UORO's keys, else None (the step does not depend on it).
    task = make_task(task_name, seq_len)
    optimizer = OPTIMIZERS[optimizer_name](learning_rate)
    options = dict(loss=task.loss, activation=activation, max_grad_norm=max_grad_norm)
    if online is not None or isinstance(method, UORO):
        # UORO's whole-sequence gradient too: its `method=` form would draw the same
        # signs at every step.
        seed = 0 if signs_seed is None else signs_seed
        train_step = make_online_train_step(
            optimizer, method=method, every=online, seed=seed, **options
        )
    else:
        batch_step = make_train_step(optimizer, method=method, **options)

        def train_step(params, opt_state, batch, step):
            del step  # the batch alone determines the step
            return batch_step(params, opt_state, batch)

    eval_step = make_eval_step(loss=task.loss, activation=activation, method=method)
    return _Programs(task, optimizer, train_step, eval_step, jax.jit(task.sample, static_argnums=1))


def _initial_state(config: TrainConfig, programs: _Programs):
    init_key, data_key = jax.random.split(jax.random.key(config.seed))
    params, opt_state = fresh_state(config, programs.task, programs.optimizer, init_key)
    return params, opt_state, data_key


def _interrupted(
    signum: int, out: str, step: int, *, failure: OSError | None = None, writer: bool = True
) -> TrainingInterrupted:
    on_disk = checkpoint_step(out)
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
        # One per step that was not skipped, or with `online`, those the steps made.
        "parameter_updates": int(
            sum(history["updates"])
            if "updates" in history
            else len(history["skipped"]) - sum(history["skipped"])
        ),
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
        config.online,
        config.seed if isinstance(config.method, UORO) else None,
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
        (params, opt_state), step, history = restore(out, config, (params, opt_state))
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
                    new_params, new_opt_state, metrics = train_step(params, opt_state, batch, step)
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
                if config.online is not None:
                    history.setdefault("updates", []).append(int(metrics.updates))
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
    if config.online is not None:
        title += f", online every {config.online}"
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
