"""`dprnn-jax` command line. Each subcommand is a module `*_command.py` whose
`add_parser` is registered in `COMMANDS` and sets `command` to its `run`; a user mistake
ends with a one-line error and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from . import complexity_command, demo_command, omega_command, train_command
from .flags import UsageError
from .stop_signals import stop_signals_as_interrupt

# Subcommand registrars: each adds its parser and sets `command` to its handler.
COMMANDS: list[Callable] = [
    demo_command.add_parser,
    train_command.add_parser,
    omega_command.add_parser,
    complexity_command.add_parser,
]


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
    with stop_signals_as_interrupt() as stop:
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
