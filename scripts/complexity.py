"""Reproduces the Ω note's operation-count table: products, XLA flops and wall time over T.

    python scripts/complexity.py [--out results] [--T 8 16 ... 512] [--m 8] [--d 32]

Writes results/complexity.md (tables + fitted log-log slopes), complexity.png (log-log
plot, one line per method) and complexity.json. Same as `dprnn-jax complexity`. About
1–2 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import sys

from dprnn_jax._app.complexity import DEFAULT_TS, write_complexity_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results", help="output folder (default results)")
    parser.add_argument("--T", type=int, nargs="+", default=list(DEFAULT_TS), help="lengths")
    parser.add_argument("--m", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--d", type=int, default=32, help="hidden size (default 32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per point (7)")
    parser.add_argument(
        "--naive-max-T", type=int, default=128, help="largest T for the O(T³) naive method"
    )
    args = parser.parse_args(argv)
    if min([*args.T, args.m, args.d, args.repeats, args.naive_max_T]) < 1:
        parser.error("--T, --m, --d, --repeats and --naive-max-T must be >= 1")
    paths = write_complexity_report(
        args.out, args.T, m=args.m, d=args.d, repeats=args.repeats, naive_max_T=args.naive_max_T
    )
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
