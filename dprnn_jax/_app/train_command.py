"""`dprnn-jax train`: its parser, the run's options from the flags (or the checkpoint's
with `--resume`), across processes from the flags or the environment, and its run."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

from .flags import UsageError, add_method_options, algorithm_from_flags, in_flag_terms

# `dprnn-jax train`'s flag of each `TrainConfig` field; the method is `--method` with its
# option flags. Every one defaults to None ("not given"): a fresh run fills it in from
# `TrainConfig()`, a resumed run from the checkpoint.
TRAIN_FLAGS = {
    "task": "--task",
    "seq_len": "--seq-len",
    "hidden_size": "--hidden",
    "layers": "--layers",
    "cell": "--cell",
    "activation": "--activation",
    "method": "--method",
    "optimizer": "--optimizer",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "learning_rate": "--lr",
    "max_grad_norm": "--clip",
    "steps": "--steps",
    "eval_every": "--eval-every",
    "checkpoint_every": "--checkpoint-every",
    "devices": "--devices",
    "online": "--online",
}
# The keywords that `train`'s messages may name, with the flags that set them.
TRAIN_MESSAGE_FLAGS = {
    **TRAIN_FLAGS,
    "num_devices": "--devices",
    "coordinator": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
}


def add_parser(subparsers) -> None:
    from .._cells.kinds import CELLS
    from .._training.config import OPTIMIZERS, RESUMABLE_CHANGES, TrainConfig
    from .._training.distributed import ENVIRONMENT
    from .._training.tasks import TASKS

    defaults = TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="train an RNN on a bundled task with any gradient method (optax)",
        description="Train an RNN (Elman, GRU or LSTM) on a bundled task. Writes checkpoint.npz, "
        "metrics.json, loss_curve.png (and sample.txt for charlm) to --out. With --resume, "
        "every option not given is the checkpoint's; "
        + ", ".join(TRAIN_FLAGS[name] for name in RESUMABLE_CHANGES)
        + " may change, the others must match it if given.",
        epilog="A step whose loss or gradient is not finite is skipped. The run has "
        "diverged when its last validation loss is not finite or more than 100 times the "
        "task's chance level, or more than half of its steps were skipped; it then exits "
        "with status 3 (after writing its files). "
        "Exit status: 0 done, 2 a usage error, 3 diverged, 4 a multi-process run could "
        "not start or lost a process, 130 Ctrl-C, 143 SIGTERM (after writing a checkpoint "
        "of the current step).",
    )
    parser.add_argument("--task", choices=TASKS, help=f"what to learn ({defaults.task})")
    add_method_options(
        parser,
        "gradient method (omega); the last four approximate it, forward in time",
        checkpoint=True,
        approximations=True,
    )
    parser.add_argument(
        "--online",
        type=int,
        metavar="K",
        help="update the parameters inside each batch, every K time steps (1: after every "
        "step), the streams going on with the new ones; with --method rtrl, snap1, snap2, "
        "uoro or rflo (off: one update per batch)",
    )
    parser.add_argument("--steps", type=int, help=f"optimiser steps ({defaults.steps})")
    parser.add_argument(
        "--seed", type=int, help=f"seed of the model and data order ({defaults.seed})"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--batch-size", type=int, help=f"sequences per step ({defaults.batch_size})"
    )
    parser.add_argument("--lr", type=float, help=f"learning rate ({defaults.learning_rate:g})")
    parser.add_argument(
        "--optimizer", choices=tuple(OPTIMIZERS), help=f"optax ({defaults.optimizer})"
    )
    parser.add_argument(
        "--hidden", type=int, help=f"hidden units per layer ({defaults.hidden_size})"
    )
    parser.add_argument("--layers", type=int, help=f"stacked recurrent layers ({defaults.layers})")
    parser.add_argument("--cell", choices=tuple(CELLS), help=f"recurrent cell ({defaults.cell})")
    parser.add_argument(
        "--seq-len",
        type=int,
        help="T: charlm window (64), digits 8 or 64 (8), adding T (50), copy delay (20)",
    )
    parser.add_argument(
        "--activation",
        choices=("tanh", "sigmoid", "relu"),
        help=f"recurrent activation ({defaults.activation})",
    )
    parser.add_argument(
        "--clip", type=float, help=f"global-norm clip, 0 = off ({defaults.max_grad_norm:g})"
    )
    parser.add_argument(
        "--eval-every", type=int, help=f"validation interval ({defaults.eval_every})"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, help=f"checkpoint interval ({defaults.checkpoint_every})"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out/checkpoint.npz, with its options as the defaults",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that holds an earlier run (its files are removed)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        help=f"data-parallel devices over the batch axis ({defaults.devices})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group(
        "across processes",
        "Data parallelism over several processes or hosts on JAX's distributed runtime: "
        "start the same command once per process with its own --process-id (see "
        "docs/distributed.md). A flag not given is read from "
        + ", ".join(ENVIRONMENT.values())
        + "; --devices then counts the devices of each process.",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0 and a free port on it, the same for every process",
    )
    group.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    group.add_argument(
        "--process-id", type=int, metavar="I", help="this process's id, 0..N-1 (0 writes)"
    )
    group.add_argument(
        "--init-timeout",
        type=int,
        default=300,
        metavar="S",
        help="seconds to wait for the coordinator and every process, at the start and "
        "at the end (300)",
    )
    group.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=100,
        metavar="S",
        help="seconds without a heartbeat after which a process counts as dead (100)",
    )
    parser.set_defaults(command=run)


def _given_train_options(args: argparse.Namespace) -> dict:
    """The `TrainConfig` fields given on the command line (checked), by field name."""
    positive = ("steps", "batch_size", "hidden", "layers", "seq_len", "eval_every", "online")
    for name in (*positive, "checkpoint_every", "devices"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    if args.clip is not None and not args.clip >= 0:
        raise UsageError(f"--clip must be >= 0 (0 turns clipping off), got {args.clip}")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.activation is not None and args.cell not in (None, "elman"):
        raise UsageError(f"--activation is an option of elman cells; {args.cell} fixes its own")
    values = {
        "task": args.task,
        "seq_len": args.seq_len,
        "hidden_size": args.hidden,
        "layers": args.layers,
        "cell": args.cell,
        "activation": args.activation,
        "method": algorithm_from_flags(args),
        "optimizer": args.optimizer,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every,
        "devices": args.devices,
        "online": args.online,
    }
    given = {name: value for name, value in values.items() if value is not None}
    if args.clip is not None:
        given["max_grad_norm"] = args.clip or None  # 0 turns clipping off
    return given


def _shown(name: str, value: object) -> str:
    if name == "max_grad_norm" and value is None:
        return "0 (off)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _train_config(args: argparse.Namespace):
    """The run's `TrainConfig`: the given options over `TrainConfig()`, or with
    `--resume` over the checkpoint's, whose trajectory they must not change."""
    from .._training.checkpoint import CheckpointError
    from .._training.config import (
        CHECKPOINT,
        RESUMABLE_CHANGES,
        TrainConfig,
        config_differences,
    )
    from .._training.resume import saved_config

    given = _given_train_options(args)
    if args.resume and args.overwrite:
        raise UsageError(
            "--resume and --overwrite exclude each other: continue a run or replace it"
        )
    if not args.resume:
        return TrainConfig(**given)
    path = os.path.join(args.out, CHECKPOINT)
    if not os.path.exists(path):
        raise UsageError(f"--resume: no {CHECKPOINT} in {args.out}; start without --resume")
    try:
        saved, _ = saved_config(path)
    except CheckpointError as error:
        raise UsageError(str(error).rstrip(".")) from None
    config = dataclasses.replace(saved, **given)
    if "activation" in given and config.cell != "elman":
        raise UsageError(
            f"--activation is an option of elman cells; the checkpoint's {config.cell} "
            "fixes its own"
        )
    changed = config_differences(saved, config)
    if changed:
        details = "; ".join(
            f"{TRAIN_FLAGS[name]} {_shown(name, getattr(config, name))} given, "
            f"{_shown(name, getattr(saved, name))} in the checkpoint"
            for name in changed
        )
        may_change = ", ".join(TRAIN_FLAGS[name] for name in RESUMABLE_CHANGES)
        raise UsageError(
            f"--resume: {path} was trained with other options ({details}); leave them out "
            f"to continue with the checkpoint's (only {may_change} may change)"
        )
    return config


# `dprnn-jax train`'s flag of each `DistributedConfig` field.
DISTRIBUTED_FLAGS = {
    "coordinator": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
}


def _distributed_config(args: argparse.Namespace, config):
    """The `DistributedConfig` that the flags (or, for a flag not given, the
    environment) ask for, checked against `config`; None for a one-process run."""
    from .._training.distributed import ENVIRONMENT, DistributedConfig, check_global_batch

    values = {}
    for field, flag in DISTRIBUTED_FLAGS.items():
        value = getattr(args, field)
        if value is None and os.environ.get(ENVIRONMENT[field]) is not None:
            value = os.environ[ENVIRONMENT[field]]
            if field != "coordinator":
                try:
                    value = int(value)
                except ValueError:
                    raise UsageError(
                        f"{ENVIRONMENT[field]} (for {flag}) must be an integer, got {value!r}"
                    ) from None
        values[field] = value
    if all(value is None for value in values.values()):
        return None
    missing = [
        f"{flag} (or {ENVIRONMENT[field]})"
        for field, flag in DISTRIBUTED_FLAGS.items()
        if values[field] is None
    ]
    if missing:
        raise UsageError(
            f"a multi-process run needs --coordinator, --num-processes and --process-id; "
            f"{' and '.join(missing)} not given"
        )
    count, index = values["num_processes"], values["process_id"]
    if count < 1:
        raise UsageError(f"--num-processes must be >= 1, got {count}")
    if not 0 <= index < count:
        raise UsageError(
            f"--process-id must be in 0..{count - 1} for --num-processes {count}, got {index}"
        )
    for name in ("init_timeout", "heartbeat_timeout"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    try:
        check_global_batch(config.batch_size, config.devices, count)
        return DistributedConfig(
            **values,
            initialization_timeout=args.init_timeout,
            heartbeat_timeout=args.heartbeat_timeout,
        )
    except ValueError as error:
        raise UsageError(in_flag_terms(str(error).rstrip("."), TRAIN_MESSAGE_FLAGS)) from None


def _method_name(algorithm) -> str:
    """`--method`'s name for `algorithm` (`snap1`, `bptt`), its option flags left out."""
    from .._algorithms.checkpoint import Checkpointed
    from .._algorithms.snap import SnAp

    if isinstance(algorithm, Checkpointed):
        return _method_name(algorithm.algorithm)
    return f"snap{algorithm.n}" if isinstance(algorithm, SnAp) else algorithm.name


def _check_method_fits(config) -> None:
    """The method's mistakes that only the whole configuration shows (the checkpoint's
    options included, on resume)."""
    from .._algorithms.rflo import RFLO
    from .._model.online import ONLINE

    method = _method_name(config.method)
    if isinstance(config.method, RFLO) and config.cell != "elman":
        raise UsageError(
            f"--method rflo is a rule of elman cells, got --cell {config.cell}; use --cell "
            f"elman, or --method snap1, snap2, uoro or rtrl for {config.cell} cells"
        )
    if config.online is not None and not isinstance(config.method, ONLINE):
        raise UsageError(
            f"--online {config.online} needs a method that learns forward in time: --method "
            f"rtrl, snap1, snap2, uoro or rflo; --method {method} computes its gradient "
            "backward over the whole sequence"
        )


def run(args: argparse.Namespace) -> int:
    config = _train_config(args)
    _check_method_fits(config)
    distributed = _distributed_config(args, config)
    if distributed is None and config.batch_size % config.devices:
        raise UsageError(
            f"--batch-size {config.batch_size} must be a multiple of --devices "
            f"{config.devices} (each device takes an equal share of every batch); pick e.g. "
            f"--batch-size {config.devices * max(1, config.batch_size // config.devices)}"
        )
    if config.devices > 1:
        _request_cpu_devices(config.devices)

    from .._training.distributed import DistributedError, initialize_distributed

    try:
        if distributed is not None:
            initialize_distributed(distributed)
        return _run_training(args, config)
    except DistributedError as error:
        print(f"dprnn-jax: error: {str(error).rstrip('.')}", file=sys.stderr)
        return 4


def _run_training(args: argparse.Namespace, config) -> int:
    from .._training.checkpoint import CheckpointError
    from .._training.interrupt import Interrupted, TrainingInterrupted
    from .._training.lock import RunLockedError
    from .._training.loop import train
    from .._training.resume import ResumeError, checkpoint_status

    progress = not args.no_progress and sys.stderr.isatty()
    try:
        _warn_of_rtrl_cost(config)
        result = train(
            config, args.out, resume=args.resume, overwrite=args.overwrite, progress=progress
        )
    except (CheckpointError, ResumeError, RunLockedError, ValueError, ImportError) as error:
        raise UsageError(in_flag_terms(str(error).rstrip("."), TRAIN_MESSAGE_FLAGS)) from None
    except OSError as error:
        raise UsageError(f"cannot write to --out {args.out!r}: {error.strerror or error}") from None
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as error:
        # Outside the loop (setup, or writing the final files): say what is on disk.
        signum = getattr(error, "signal", signal.SIGINT)
        raise Interrupted(signum, f"interrupted; {checkpoint_status(args.out)}") from None
    print_run_summary(result.metrics, args.out)
    if result.metrics["diverged"]:
        clip = config.max_grad_norm
        hint = (
            "enable --clip (e.g. --clip 1)" if clip is None else f"a smaller --clip (now {clip:g})"
        )
        print(
            f"dprnn-jax: error: training diverged: {result.metrics['divergence']}; "
            f"try a lower --lr (now {config.learning_rate:g}) or {hint}",
            file=sys.stderr,
        )
        return 3
    return 0


# RTRL runs that are worth a warning before they start: sensitivities of at least this
# many bytes, or at least this many flops per training step (minutes on a CPU).
RTRL_WARNING_BYTES = 2**30
RTRL_WARNING_FLOPS = 10**12


def _keeps_rtrl_sensitivities(config) -> bool:
    """Whether the run carries RTRL's dense influence matrix: RTRL, and SnAp except
    SnAp-1 on Elman layers in its `method=` form (the sparse closed form); online, SnAp
    masks the dense matrix of the whole stack."""
    from .._algorithms.rtrl import RTRL
    from .._algorithms.snap import SnAp

    if isinstance(config.method, SnAp):
        return config.method.n > 1 or config.cell != "elman" or config.online is not None
    return isinstance(config.method, RTRL)


def _warn_of_rtrl_cost(config) -> None:
    """With `--method rtrl` (or a SnAp that keeps RTRL's dense sensitivities), a warning
    on stderr with the estimated memory and work of a step when they are large (RTRL's
    O(m·d⁴) per time step is easy to start by accident)."""
    from .._algorithms.rtrl import RTRL, rtrl_cost
    from .._cells.kinds import CELLS, KINDS
    from .._training.tasks import make_task

    if not _keeps_rtrl_sensitivities(config):
        return
    task = make_task(config.task, config.seq_len)
    kind = KINDS[CELLS[config.cell]]
    cost = rtrl_cost(
        (task.input_size, *(config.hidden_size,) * config.layers),
        gates=kind.gates,
        paired_state=kind.paired_state,
        batch_size=config.batch_size,
        steps=task.validation.inputs.shape[0],
    )
    if cost.sensitivity_bytes < RTRL_WARNING_BYTES and cost.flops < RTRL_WARNING_FLOPS:
        return
    instead = "--method uoro (any cell) or rflo (elman cells) approximate it for far less"
    if not isinstance(config.method, RTRL):
        what = f"--method {_method_name(config.method)}"
        if config.online is not None:
            what += " --online"
        elif config.cell == "elman":
            instead = "--method snap1 (sparse on elman cells), uoro or rflo cost far less"
        sensitivities = "sensitivities (RTRL's, kept dense and masked)"
    elif config.online is not None:
        what, sensitivities = "--method rtrl --online", "sensitivities"
    else:
        what, sensitivities = "--method rtrl", "sensitivities"
        instead = "--method bptt or omega give the same gradient for far less"
    print(
        f"dprnn-jax: warning: {what} with --hidden {config.hidden_size}: its "
        f"{sensitivities} take about {cost.sensitivity_bytes / 2**30:.1f} GiB and one step "
        f"about {cost.flops:.1e} flops ({cost.flops / cost.bptt_flops:.0f} times BPTT's), "
        f"O(m·d⁴) per time step; {instead}",
        file=sys.stderr,
        flush=True,
    )


def _request_cpu_devices(count: int) -> None:
    # Splits the host CPU into `count` XLA devices; only possible before JAX starts its
    # backend, and ignored by GPU/TPU backends. If it is too late, `batch_mesh` says so.
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except (RuntimeError, AttributeError):  # backend already started / an older jax
        pass


def print_run_summary(metrics: dict, out: str) -> None:
    """Prints the final validation numbers, the generated sample and the output files."""
    validation = metrics.get("validation")
    if validation:
        line = (
            f"validation at step {validation['step']}: loss {validation['loss']:.4f}, "
            f"accuracy {validation['accuracy']:.4f}"
        )
        if "validation_perplexity" in metrics:
            line += f", perplexity {metrics['validation_perplexity']:.3f}"
        print(line)
    online = metrics.get("config", {}).get("online")
    updates = ""
    if online is not None:
        every = "every time step" if online == 1 else f"every {online} time steps"
        updates = f" ({metrics['parameter_updates']} parameter updates, {every})"
    print(
        f"{metrics['steps_this_session']} steps{updates} in "
        f"{metrics['wall_seconds_this_session']:.1f} s, {metrics['skipped_steps']} skipped "
        "(non-finite)"
    )
    if "sample" in metrics:
        print("sample:\n" + metrics["sample"])
    if metrics["files"]:
        print("wrote " + ", ".join(os.path.join(out, name) for name in metrics["files"]))
    else:
        print(f"process {metrics.get('process_id', '?')} wrote nothing (process 0 writes {out})")
