"""`dprnn-jax` command line. Each subcommand is a `_command_*` function registered in
`COMMANDS`; a user mistake ends with a one-line error and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence


def _add_demo(subparsers) -> None:
    from .._backward.registry import METHODS

    parser = subparsers.add_parser(
        "demo", help="check every gradient method against jax.grad and time it (default)"
    )
    parser.add_argument("--T", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="batch size m (default 32)")
    parser.add_argument("--hidden", type=int, default=128, help="n = d = k (default 128)")
    parser.add_argument(
        "--naive-T",
        type=int,
        default=128,
        help="sequence length of the O(T³) naive method and of RTRL (default 128)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="steps of the char-LM training that follows (default 1200, about a minute "
        "on 2 CPU cores; 0 skips it)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        metavar="METHOD",
        help=f"the methods to check (default all: {' '.join(METHODS)})",
    )
    parser.add_argument(
        "--train-hidden", type=int, default=None, help="hidden units of the char-LM (128)"
    )
    parser.add_argument(
        "--train-seq-len", type=int, default=None, help="window length T of the char-LM (64)"
    )
    parser.add_argument(
        "--out", default="runs/demo", help="where the demo run's files go (default runs/demo)"
    )
    parser.set_defaults(command=_command_demo)


def _command_demo(args: argparse.Namespace) -> int:
    import jax

    from .demo import format_table, gradient_check_table

    for name in ("T", "batch", "hidden", "naive_T", "repeats", "train_hidden", "train_seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.train_steps is not None and args.train_steps < 0:
        raise UsageError(f"--train-steps must be >= 0, got {args.train_steps}")
    if args.train_steps != 0:
        # Refuse a bad --out now, not after the gradient check.
        from .._training.loop import ResumeError, check_output_dir
        from .demo import check_demo_dir

        try:
            check_output_dir(args.out)
            check_demo_dir(args.out)
        except OSError as error:
            reason = error.strerror or error
            raise UsageError(f"cannot write to --out {args.out!r}: {reason}") from None
        except ResumeError as error:
            raise UsageError(str(error)) from None
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    print(f"dprnn_jax gradient check on {device}, float32")
    reports = gradient_check_table(
        T=args.T,
        m=args.batch,
        d=args.hidden,
        naive_T=args.naive_T,
        repeats=args.repeats,
        methods=tuple(dict.fromkeys(args.methods)),
    )
    print(format_table(reports))
    if args.train_steps != 0:
        _demo_training(args)
    return 0


def _demo_training(args: argparse.Namespace) -> None:
    import time

    from .._training.checkpoint import CheckpointError
    from .._training.lock import RunLockedError
    from .._training.loop import ResumeError
    from .demo import demo_config, train_demo

    config = demo_config(args.train_steps, args.train_hidden, args.train_seq_len)
    print(
        f"\nTraining a character-level language model on the bundled pydoc text: "
        f'method="omega", T={config.seq_len}, m={config.batch_size}, '
        f"d={config.hidden_size}, {config.steps} Adam steps"
    )
    started = time.perf_counter()
    try:
        result = train_demo(args.out, config, progress=sys.stderr.isatty())
    except (CheckpointError, ResumeError, RunLockedError, ValueError) as error:
        raise UsageError(_in_flag_terms(str(error).rstrip("."), DEMO_MESSAGE_FLAGS)) from None
    except OSError as error:
        raise UsageError(f"cannot write to --out {args.out!r}: {error.strerror or error}") from None
    print_run_summary(result.metrics, args.out)
    print(f"training, evaluation and sampling took {time.perf_counter() - started:.1f} s")


# The demo's training options that its messages may name, with their flags.
DEMO_MESSAGE_FLAGS = {
    "steps": "--train-steps",
    "hidden_size": "--train-hidden",
    "seq_len": "--train-seq-len",
}


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


# The options of the gradient algorithms that have a flag (`--truncation K`, …).
ALGORITHM_OPTIONS = ("truncation", "tol", "block", "checkpoint")
# `omega --checkpoint FILE` names a file; `train --checkpoint K` is the algorithm's option,
# stored under another name so the two never meet.
OPTION_DESTS = {"checkpoint": "algorithm_checkpoint"}


def _segment_length(value: str) -> int | str:
    """`--checkpoint K` (a segment length) or `--checkpoint sqrt`."""
    if value == "sqrt":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a segment length K or 'sqrt', got {value!r}"
        ) from None


def _add_method_options(parser, method_help: str, *, checkpoint: bool = False) -> None:
    from .._backward.registry import METHODS

    parser.add_argument("--method", choices=METHODS, default=None, help=method_help)
    parser.add_argument(
        "--truncation",
        type=int,
        default=None,
        metavar="K",
        help="omega, bptt: keep only lags <= K (K-step truncated gradient)",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        metavar="EPS",
        help="omega: stop the triangle once a diagonal is <= EPS relative (adaptive)",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=None,
        metavar="B",
        help="omega: triangles of B steps chained by BPTT (exact)",
    )
    if checkpoint:
        parser.add_argument(
            "--checkpoint",
            dest=OPTION_DESTS["checkpoint"],
            type=_segment_length,
            default=None,
            metavar="K|sqrt",
            help="omega, bptt: keep every K-th state (sqrt: K = ceil(sqrt(T))) and recompute "
            "segments in the backward, loss fused: O(sqrt(T)) memory, exact",
        )


# The option flags that exclude each other, each with those it excludes.
EXCLUSIVE_OPTIONS = {"checkpoint": ("truncation", "tol", "block"), "block": ("truncation", "tol")}


def _check_algorithm_flags(name: str, given: dict) -> None:
    """The mistakes of `--method` and its option flags, in their own terms."""
    import math

    from .._backward.registry import ALGORITHMS

    for option in given:
        takers = [method for method, cls in ALGORITHMS.items() if option in _fields(cls)]
        if name not in takers:
            raise UsageError(
                f"--{option} is an option of --method {' and '.join(takers)}, not of --method "
                f"{name}; drop --{option} or use --method {takers[0]}"
            )
    for option, excluded in EXCLUSIVE_OPTIONS.items():
        clash = [f"--{other}" for other in excluded if other in given]
        if option in given and clash:
            raise UsageError(
                f"--{option} cannot be combined with {' or '.join(clash)}; pick one of them"
            )
    lowest = {"truncation": 0, "block": 1, "checkpoint": 1}
    for option, least in lowest.items():
        value = given.get(option)
        if isinstance(value, int) and value < least:
            raise UsageError(f"--{option} must be >= {least}, got {value}")
    if "tol" in given and not (math.isfinite(given["tol"]) and given["tol"] >= 0):
        raise UsageError(f"--tol must be a finite number >= 0, got {given['tol']}")


def _fields(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def _algorithm(args: argparse.Namespace):
    """The gradient algorithm that `--method` and its option flags ask for (`--method`
    defaults to omega when only an option is given); None when no such flag is given."""
    from .._backward.registry import resolve_method

    options = {
        name: getattr(args, OPTION_DESTS.get(name, name), None) for name in ALGORITHM_OPTIONS
    }
    given = {key: value for key, value in options.items() if value is not None}
    if args.method is None and not given:
        return None
    name = "omega" if args.method is None else args.method
    _check_algorithm_flags(name, given)
    try:
        return resolve_method(name, **options)
    except ValueError as error:  # a rule the flags' checks above do not know yet
        flags = "".join(f" --{key} {value}" for key, value in given.items())
        message = _in_flag_terms(str(error).rstrip("."), METHOD_FLAGS)
        raise UsageError(f"--method {name}{flags}: {message}") from None


# The flag of each keyword that the library's messages name (`batch_size=32`,
# `seq_len`, …): `_in_flag_terms` says them as the command line's flags.
METHOD_FLAGS = {"method": "--method", **{name: f"--{name}" for name in ALGORITHM_OPTIONS}}


def _in_flag_terms(message: str, flags: dict[str, str]) -> str:
    """A library message in the command line's terms: each keyword in `flags` that it
    names as `name=value` anywhere, or as its first word, or (a name with an underscore,
    which is no English word) anywhere, becomes the flag."""
    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){name}=([^\s,;)]+)", rf"{flag} \1", message)
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){name}(?!\w)", flag, message)
        elif message.startswith(f"{name} "):
            message = flag + message[len(name) :]
    return message


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
}
# The keywords that `train`'s messages may name, with the flags that set them.
TRAIN_MESSAGE_FLAGS = {
    **TRAIN_FLAGS,
    "num_devices": "--devices",
    "coordinator": "--coordinator",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
}


def _add_train(subparsers) -> None:
    from .._training.distributed import ENVIRONMENT
    from .._training.loop import OPTIMIZERS, RESUMABLE_CHANGES, TrainConfig
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
    _add_method_options(parser, "gradient method (omega)", checkpoint=True)
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
    parser.add_argument(
        "--cell", choices=("elman", "gru", "lstm"), help=f"recurrent cell ({defaults.cell})"
    )
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
    parser.set_defaults(command=_command_train)


def _given_train_options(args: argparse.Namespace) -> dict:
    """The `TrainConfig` fields given on the command line (checked), by field name."""
    positive = ("steps", "batch_size", "hidden", "layers", "seq_len", "eval_every")
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
    if args.activation is not None and args.cell in ("gru", "lstm"):
        raise UsageError(f"--activation is an option of elman cells; {args.cell} fixes its own")
    values = {
        "task": args.task,
        "seq_len": args.seq_len,
        "hidden_size": args.hidden,
        "layers": args.layers,
        "cell": args.cell,
        "activation": args.activation,
        "method": _algorithm(args),
        "optimizer": args.optimizer,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "steps": args.steps,
        "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every,
        "devices": args.devices,
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
    from .._training.loop import (
        CHECKPOINT,
        RESUMABLE_CHANGES,
        TrainConfig,
        config_differences,
        saved_config,
    )

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
    if "activation" in given and config.cell in ("gru", "lstm"):
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
        raise UsageError(_in_flag_terms(str(error).rstrip("."), TRAIN_MESSAGE_FLAGS)) from None


def _command_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
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
    from .._training.loop import ResumeError, checkpoint_status, train

    progress = not args.no_progress and sys.stderr.isatty()
    try:
        _warn_of_rtrl_cost(config)
        result = train(
            config, args.out, resume=args.resume, overwrite=args.overwrite, progress=progress
        )
    except (CheckpointError, ResumeError, RunLockedError, ValueError, ImportError) as error:
        raise UsageError(_in_flag_terms(str(error).rstrip("."), TRAIN_MESSAGE_FLAGS)) from None
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


def _warn_of_rtrl_cost(config) -> None:
    """With `--method rtrl`, a warning on stderr with the estimated memory and work of a
    step when they are large (RTRL's O(m·d⁴) per time step is easy to start by accident)."""
    from .._backward.rtrl import RTRL, rtrl_cost
    from .._model.layer_checks import CELLS, KINDS
    from .._training.tasks import make_task

    if not isinstance(config.method, RTRL):
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
    print(
        f"dprnn-jax: warning: --method rtrl with --hidden {config.hidden_size}: its "
        f"sensitivities take about {cost.sensitivity_bytes / 2**30:.1f} GiB and one step about "
        f"{cost.flops:.1e} flops ({cost.flops / cost.bptt_flops:.0f} times BPTT's), O(m·d⁴) "
        "per time step; --method bptt or omega give the same gradient for far less",
        file=sys.stderr,
        flush=True,
    )


def _progress_line(line: str) -> None:
    # Stage lines of a long command go to stderr, so that stdout keeps only the results.
    print(line, file=sys.stderr, flush=True)


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
    print(
        f"{metrics['steps_this_session']} steps in {metrics['wall_seconds_this_session']:.1f} s, "
        f"{metrics['skipped_steps']} skipped (non-finite)"
    )
    if "sample" in metrics:
        print("sample:\n" + metrics["sample"])
    if metrics["files"]:
        print("wrote " + ", ".join(os.path.join(out, name) for name in metrics["files"]))
    else:
        print(f"process {metrics.get('process_id', '?')} wrote nothing (process 0 writes {out})")


def _add_omega(subparsers) -> None:
    parser = subparsers.add_parser(
        "omega",
        help="plot the Ω triangle, the gradient flow and the Lyapunov decay of a model",
        description="Writes omega_triangles.png (‖Ω(j, i)‖₂ and ‖∂L_j/∂Z_i‖), "
        "omega_decay.png (decay per lag with the bound γ^k and both Lyapunov estimates) and "
        "omega_summary.json to --out, for a freshly initialised model on random data or for "
        "a `train` checkpoint on its task's held-out sequences; an earlier report's three "
        "files in --out are replaced, nothing else there is touched.",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--checkpoint", default=None, help="a checkpoint.npz of `dprnn-jax train` (else fresh)"
    )
    parser.add_argument("--T", type=int, help="fresh model: sequence length (64)")
    parser.add_argument("--batch", type=int, default=8, help="sequences analysed (8)")
    parser.add_argument("--input", type=int, help="fresh model: input features (4)")
    parser.add_argument("--hidden", type=int, help="fresh model: hidden units (16)")
    parser.add_argument("--layers", type=int, help="fresh model: layers (1)")
    parser.add_argument("--classes", type=int, help="fresh model: classes (4)")
    parser.add_argument(
        "--activation", choices=("tanh", "sigmoid", "relu"), help="fresh model (tanh)"
    )
    parser.add_argument(
        "--cell",
        choices=("elman", "gru", "lstm"),
        help="fresh model: recurrent cell (elman); for gru and lstm Ω follows the carry, "
        "h or (h, c)",
    )
    parser.add_argument(
        "--gain",
        type=float,
        help="fresh model: spectral radius of S for elman, a factor on S for gru, lstm (1.0)",
    )
    parser.add_argument("--seed", type=int, help="fresh model: PRNG seed (0)")
    parser.add_argument("--layer", type=int, default=-1, help="layer to analyse (-1: top)")
    parser.add_argument(
        "--max-lag", type=int, default=None, help="largest lag of the Lyapunov fit (T/2)"
    )
    _add_method_options(
        parser,
        "compare this method's gradient with jax.grad's (default: the checkpoint's, or omega)",
    )
    parser.set_defaults(command=_command_omega)


# `dprnn-jax omega`'s options that describe a fresh model, with their defaults: a
# checkpoint has its own, and they are refused with one.
FRESH_MODEL_DEFAULTS = {
    "T": 64,
    "input": 4,
    "hidden": 16,
    "layers": 1,
    "classes": 4,
    "activation": "tanh",
    "cell": "elman",
    "gain": 1.0,
    "seed": 0,
}


# The keywords of the report's messages that are `dprnn-jax omega` flags.
OMEGA_MESSAGE_FLAGS = {**METHOD_FLAGS, "max_lag": "--max-lag", "layer": "--layer"}


def _check_omega_flags(args: argparse.Namespace, model) -> None:
    """`--layer` and `--max-lag` against the model's layers and length, and the length
    the report needs, before its first stage."""
    T, layers = model.xs.shape[0], len(model.params.layers)
    if T < 4:
        raise UsageError(
            f"--T must be >= 4 for the omega report (a decay rate is fitted over lags 1, 2, "
            f"…), got {T}"
            if args.checkpoint is None
            else f"the omega report needs sequences of T >= 4 steps; the checkpoint's task "
            f"has T = {T}"
        )
    if not -layers <= args.layer < layers:
        raise UsageError(
            f"--layer must be in {-layers}..{layers - 1} for a model of {layers} recurrent "
            f"layer(s), got {args.layer}"
        )
    if args.max_lag is not None and args.max_lag > T - 1:
        steps = f"--T {T} steps" if args.checkpoint is None else f"the checkpoint's T = {T} steps"
        raise UsageError(
            f"--max-lag must be <= T - 1 = {T - 1}, the longest lag in {steps}, got {args.max_lag}"
        )


def _command_omega(args: argparse.Namespace) -> int:
    given = [name for name in FRESH_MODEL_DEFAULTS if getattr(args, name) is not None]
    if args.checkpoint is not None and given:
        flags = ", ".join(f"--{name}" for name in given)
        raise UsageError(
            f"{flags} describe{'s' if len(given) == 1 else ''} a fresh model; the checkpoint "
            "has its own (leave them out, or leave out --checkpoint)"
        )
    for name, default in FRESH_MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.cell != "elman" and "activation" in given:
        raise UsageError(f"--activation is an option of elman cells; {args.cell} fixes its own")
    for name in ("T", "batch", "input", "hidden", "layers", "classes"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.gain > 0:
        raise UsageError(f"--gain must be > 0, got {args.gain}")
    if args.max_lag is not None and args.max_lag < 2:
        raise UsageError(f"--max-lag must be >= 2 (a slope needs two lags), got {args.max_lag}")

    method = _algorithm(args)

    from .._backward.registry import algorithm_from_dict
    from .._training.checkpoint import CheckpointError
    from .omega_report import fresh_model, omega_report, trained_model

    try:
        if args.checkpoint is not None:
            _progress_line(f"reading {args.checkpoint} and its task's held-out sequences …")
            model = trained_model(args.checkpoint, batch=args.batch)
        else:
            model = fresh_model(
                T=args.T,
                batch=args.batch,
                input_size=args.input,
                hidden=args.hidden,
                layers=args.layers,
                classes=args.classes,
                activation=args.activation,
                gain=args.gain,
                seed=args.seed,
                cell=args.cell,
            )
        _check_omega_flags(args, model)
        summary = omega_report(
            model.params,
            model.xs,
            model.targets,
            model.mask,
            out_dir=args.out,
            loss=model.loss,
            activation=model.activation,
            layer=args.layer,
            max_lag=args.max_lag,
            title=model.title,
            method=method or model.method or "omega",
            log=_progress_line,
        )
    except (CheckpointError, ValueError, TypeError, ImportError) as error:
        raise UsageError(_in_flag_terms(str(error).rstrip("."), OMEGA_MESSAGE_FLAGS)) from None
    except OSError as error:
        raise UsageError(f"cannot write to --out {args.out!r}: {error.strerror or error}") from None
    a_priori = summary["gamma_a_priori"]  # None for a gated cell: γ is max ‖J_t‖₂
    bound = "max one-step norm" if a_priori is None else f"a priori {a_priori:.4g}"
    print(
        f"{model.title}: gamma = {summary['gamma']:.4g} ({bound}), "
        f"Lyapunov λ1 = {summary['lyapunov_diagonal_decay']:.4g} (diagonal decay), "
        f"{summary['lyapunov_qr']:.4g} (QR)"
    )
    if summary["lyapunov_caveat"]:
        print(f"caveat: {summary['lyapunov_caveat']}")
    products = summary["method_products_per_layer"]
    print(
        f"{algorithm_from_dict(summary['method'])}: gradient relative error vs jax.grad "
        f"{summary['method_gradient_relative_error']:.3g}, "
        + ("products depend on the data" if products is None else f"{products} products")
        + " per layer"
    )
    print("wrote " + ", ".join(summary["files"]))
    return 0


def _add_complexity(subparsers) -> None:
    from .complexity import DEFAULT_TS

    parser = subparsers.add_parser(
        "complexity",
        help="the Ω note's operation-count table: products, XLA flops, wall time over T",
        description="Writes complexity.md, complexity.png and complexity.json to --out "
        "(same as scripts/complexity.py), replacing those three files of an earlier sweep "
        "there and nothing else.",
    )
    parser.add_argument(
        "--out", default="runs/complexity", help="output directory (runs/complexity)"
    )
    parser.add_argument("--T", type=int, nargs="+", default=list(DEFAULT_TS), help="lengths")
    parser.add_argument("--m", type=int, default=8, help="batch size (8)")
    parser.add_argument("--d", type=int, default=32, help="hidden size (32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per point (7)")
    parser.add_argument("--naive-max-T", type=int, default=128, help="largest T for naive (128)")
    parser.set_defaults(command=_command_complexity)


def _command_complexity(args: argparse.Namespace) -> int:
    if min([*args.T, args.m, args.d, args.repeats, args.naive_max_T]) < 1:
        raise UsageError("--T, --m, --d, --repeats and --naive-max-T must be >= 1")
    from .complexity import write_complexity_report

    try:
        paths = write_complexity_report(
            args.out,
            args.T,
            m=args.m,
            d=args.d,
            repeats=args.repeats,
            naive_max_T=args.naive_max_T,
        )
    except OSError as error:
        raise UsageError(f"cannot write to --out {args.out!r}: {error.strerror or error}") from None
    print("wrote " + ", ".join(paths))
    return 0


# Subcommand registrars: each adds its parser and sets `command` to its handler.
COMMANDS: list[Callable] = [_add_demo, _add_train, _add_omega, _add_complexity]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dprnn-jax",
        description="Exact RNN gradients in JAX by the Ω dynamic programme.",
    )
    subparsers = parser.add_subparsers(title="commands")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a `dprnn-jax` command; returns its exit status: 0 done, 2 a usage error (one
    line on stderr), 3 a diverged training run, 128 + the signal's number when SIGINT
    (130) or SIGTERM (143) stopped it (one line on stderr, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["demo"]
    parser = build_parser()
    args = parser.parse_args(argv)
    with _stop_signals_as_interrupt() as stop:
        try:
            status = args.command(args)
        except UsageError as error:
            print(f"dprnn-jax: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as error:
            signum = getattr(error, "signal", signal.SIGINT)
            print(f"dprnn-jax: {str(error) or 'interrupted'}", file=sys.stderr)
            return 128 + int(signum)
        if stop.signal is not None:
            # The signal's exception was swallowed on its way up (raised inside a
            # finaliser, which Python reports and ignores), so the command ran on.
            print("dprnn-jax: interrupted", file=sys.stderr)
            return 128 + int(stop.signal)
        return status


def run() -> int:
    """The process entry point (`dprnn-jax`, `python -m dprnn_jax`): `main()`, and after
    a stop signal an immediate exit, since tearing the interpreter down while XLA still
    compiles on its own threads can crash (SIGSEGV instead of status 130)."""
    status = main()
    # A process of a multi-process run that fails leaves at once: at JAX's exit barrier
    # it would wait for the others, which wait for it in their next step, and then abort.
    if status >= 128 or (status != 0 and _in_a_distributed_run()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _in_a_distributed_run() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized()


# How long a stop signal's exception may take to reach `main` before the process exits
# without it (see `_stop_signals_as_interrupt`).
STOP_GRACE_SECONDS = 10.0


@contextlib.contextmanager
def _stop_signals_as_interrupt():
    """Within the block SIGINT and SIGTERM raise `Interrupted` (SIGTERM would otherwise
    end the process on the spot, with no files closed and no checkpoint written).

    Python runs a signal handler between two bytecodes of the main thread, which may be
    inside a finaliser (`__del__`, a weakref callback); an exception raised there is
    printed and dropped, and the command would run to its end as if never stopped. So an
    `Interrupted` dropped that way raises the signal again (no traceback), the handler
    records the signal (`main` reports it if the command returns all the same), and it
    arms a watchdog that ends the process with 128 + the signal's number if the exception
    has not reached `main` within STOP_GRACE_SECONDS. The training loop installs its own
    handlers (stop after the step in flight) while it runs. A signal the parent ignores
    (SIGINT for a shell's background job) stays ignored.
    """
    from .._training.interrupt import STOP_SIGNALS, Interrupted, StopRequest

    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    watchdogs: list[threading.Timer] = []

    def give_up(signum: int) -> None:
        print("dprnn-jax: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)

    def handler(signum: int, frame: object) -> None:
        del frame
        if stop.signal is None:
            stop.signal = signal.Signals(signum)
            watchdog = threading.Timer(STOP_GRACE_SECONDS, give_up, args=(int(signum),))
            watchdog.daemon = True
            watchdog.start()
            watchdogs.append(watchdog)
        raise Interrupted(signum)

    unraisable_hook = sys.unraisablehook

    def deliver_again(unraisable) -> None:
        # An `Interrupted` dropped by a finaliser: no traceback, and the signal again, so
        # that its handler raises in the code the finaliser interrupted. (Sent a moment
        # later from another thread: sent now, the handler would run inside this hook.)
        if isinstance(unraisable.exc_value, Interrupted):
            resend = threading.Timer(0.05, os.kill, args=(os.getpid(), unraisable.exc_value.signal))
            resend.daemon = True
            resend.start()
        else:
            unraisable_hook(unraisable)

    previous = {
        signum: signal.signal(signum, handler)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    sys.unraisablehook = deliver_again
    try:
        yield stop
    finally:
        sys.unraisablehook = unraisable_hook
        for watchdog in watchdogs:
            watchdog.cancel()
        for signum, old in previous.items():
            # None: the old handler was not installed from Python; the default stands in.
            signal.signal(signum, signal.SIG_DFL if old is None else old)
