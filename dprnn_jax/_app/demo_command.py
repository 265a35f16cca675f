"""`dprnn-jax demo`: its parser and its run (the work itself is in `demo.py`)."""

from __future__ import annotations

import argparse
import sys

from .flags import UsageError, in_flag_terms
from .train_command import print_run_summary


def add_parser(subparsers) -> None:
    from .._algorithms.registry import METHODS

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
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
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
        from .._training.loop import check_output_dir
        from .._training.resume import ResumeError
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
    from .._training.resume import ResumeError
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
        raise UsageError(in_flag_terms(str(error).rstrip("."), DEMO_MESSAGE_FLAGS)) from None
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
