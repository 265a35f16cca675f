"""What every `dprnn-jax` command shares: the usage error, the gradient method's flags
(`--method` and its options) and library messages said in the command line's terms."""

from __future__ import annotations

import argparse
import dataclasses
import re


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


# The options of the gradient algorithms that have a flag (`--truncation K`, …); a
# command without the approximations has no `--tau` or `--feedback`.
ALGORITHM_OPTIONS = ("truncation", "tol", "block", "checkpoint", "tau", "feedback")
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


def add_method_options(
    parser, method_help: str, *, checkpoint: bool = False, approximations: bool = False
) -> None:
    """`--method` and its option flags; with `approximations`, the approximate online
    algorithms too (`--method snap1|snap2|uoro|rflo`, RFLO's `--tau` and `--feedback`)."""
    from .._algorithms.registry import APPROXIMATION_NAMES, METHODS

    choices = (*METHODS, *APPROXIMATION_NAMES) if approximations else METHODS
    parser.add_argument("--method", choices=choices, default=None, help=method_help)
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
    if approximations:
        rflo = APPROXIMATION_NAMES["rflo"]
        parser.add_argument(
            "--tau",
            type=float,
            default=None,
            metavar="TAU",
            help=f"rflo: time constant of the eligibility traces, >= 1 ({rflo.tau:g})",
        )
        parser.add_argument(
            "--feedback",
            choices=("readout", "random"),
            default=None,
            help="rflo: the learning signal comes through the readout's weights or a fixed "
            f"random matrix ({rflo.feedback})",
        )


# The option flags that exclude each other, each with those it excludes.
EXCLUSIVE_OPTIONS = {"checkpoint": ("truncation", "tol", "block"), "block": ("truncation", "tol")}


def _check_algorithm_flags(name: str, given: dict) -> None:
    """The mistakes of `--method` and its option flags, in their own terms."""
    import math

    from .._algorithms.registry import ALGORITHMS, APPROXIMATION_NAMES

    classes = {**ALGORITHMS, **{name: type(obj) for name, obj in APPROXIMATION_NAMES.items()}}
    for option in given:
        takers = [method for method, cls in classes.items() if option in _fields(cls)]
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
    if "tau" in given and not (math.isfinite(given["tau"]) and given["tau"] >= 1):
        raise UsageError(f"--tau must be a finite number >= 1, got {given['tau']}")


def _fields(cls) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def algorithm_from_flags(args: argparse.Namespace):
    """The gradient algorithm that `--method` and its option flags ask for (`--method`
    defaults to omega when only an option is given); None when no such flag is given.
    An approximation's name (`snap1`) stands for its object in `APPROXIMATION_NAMES`."""
    from .._algorithms.registry import APPROXIMATION_NAMES, resolve_method

    options = {
        name: getattr(args, OPTION_DESTS.get(name, name), None) for name in ALGORITHM_OPTIONS
    }
    given = {key: value for key, value in options.items() if value is not None}
    if args.method is None and not given:
        return None
    name = "omega" if args.method is None else args.method
    _check_algorithm_flags(name, given)
    try:
        if name in APPROXIMATION_NAMES:
            return dataclasses.replace(APPROXIMATION_NAMES[name], **given)
        return resolve_method(name, **given)
    except ValueError as error:  # a rule the flags' checks above do not know yet
        flags = "".join(f" --{key} {value}" for key, value in given.items())
        message = in_flag_terms(str(error).rstrip("."), METHOD_FLAGS)
        raise UsageError(f"--method {name}{flags}: {message}") from None


# The flag of each keyword that the library's messages name (`batch_size=32`,
# `seq_len`, …): `in_flag_terms` says them as the command line's flags.
METHOD_FLAGS = {"method": "--method", **{name: f"--{name}" for name in ALGORITHM_OPTIONS}}


def in_flag_terms(message: str, flags: dict[str, str]) -> str:
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
