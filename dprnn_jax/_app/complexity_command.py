"""`dprnn-jax complexity`: its parser and its run (the sweep itself is in `complexity.py`)."""

from __future__ import annotations

import argparse

from .flags import UsageError


def add_parser(subparsers) -> None:
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
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
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
