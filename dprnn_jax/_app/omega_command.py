"""`dprnn-jax omega`: its parser, the checks of its flags against the model, and its
run (the report itself is in `omega_report.py`)."""

from __future__ import annotations

import argparse
import sys

from .flags import METHOD_FLAGS, UsageError, add_method_options, algorithm_from_flags, in_flag_terms


def add_parser(subparsers) -> None:
    from .._cells.kinds import CELLS

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
        choices=tuple(CELLS),
        help="fresh model: recurrent cell (elman); for the other cells Ω follows the "
        "carry, h or (h, c) (lstm)",
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
    add_method_options(
        parser,
        "compare this method's gradient with jax.grad's (default: the checkpoint's, or omega)",
    )
    parser.set_defaults(command=run)


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


def run(args: argparse.Namespace) -> int:
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

    method = algorithm_from_flags(args)

    from .._algorithms.registry import algorithm_from_dict
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
        raise UsageError(in_flag_terms(str(error).rstrip("."), OMEGA_MESSAGE_FLAGS)) from None
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


def _progress_line(line: str) -> None:
    # Stage lines of a long command go to stderr, so that stdout keeps only the results.
    print(line, file=sys.stderr, flush=True)
