"""`dprnn-jax` command line. Each subcommand is a `_command_*` function registered in
`COMMANDS`; a user mistake ends with a one-line error and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="check every gradient method against jax.grad and time it (default)"
    )
    parser.add_argument("--T", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="batch size m (default 32)")
    parser.add_argument("--hidden", type=int, default=128, help="n = d = k (default 128)")
    parser.add_argument(
        "--naive-T", type=int, default=32, help="sequence length for the O(T³) naive method"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method")
    parser.set_defaults(command=_command_demo)


def _command_demo(args: argparse.Namespace) -> int:
    import jax

    from ._demo import format_table, gradient_check_table

    for name in ("T", "batch", "hidden", "naive_T", "repeats"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    print(f"dprnn_jax gradient check on {jax.devices()[0].device_kind} ({jax.default_backend()}), float32")
    reports = gradient_check_table(
        T=args.T, m=args.batch, d=args.hidden, naive_T=args.naive_T, repeats=args.repeats
    )
    print(format_table(reports))
    return 0


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


# Subcommand registrars: each adds its parser and sets `command` to its handler.
COMMANDS: list[Callable] = [_add_demo]


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["demo"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except UsageError as error:
        print(f"dprnn-jax: error: {error}", file=sys.stderr)
        return 2
