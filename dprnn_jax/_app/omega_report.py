"""All Ω diagnostics of one layer at once, written as plots and a JSON summary.

Used by `dprnn-jax omega`; also callable from a script or notebook.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._algorithms.base import GradientAlgorithm
from .._algorithms.registry import resolve_method
from .._cells.kinds import init_rnn
from .._core.params import RNNParams
from .._core.validation import check_sequence
from .._diagnostics.gradient_flow import gradient_flow
from .._diagnostics.lyapunov import (
    check_fit_lag,
    decay_bound,
    default_burn_in,
    estimate_from_log_norms,
    lyapunov_qr,
)
from .._diagnostics.omega_norms import omega_norms
from .._diagnostics.plotting import plot_decay, plot_omega_triangles, save_figure
from .._diagnostics.trajectory import check_layer_index, layer_trajectory, one_step_jacobians
from .._model.bidirectional import BidirectionalParams
from .._model.layer_kinds import kind_of
from .._model.loss import sequence_loss
from .._model.network import check_rnn_params

REPORT_FILES = ("omega_triangles.png", "omega_decay.png", "omega_summary.json")


# The report's stages, each its own compiled program, so that progress can be shown
# between them (the first, ‖Ω‖ with its batched SVDs, dominates at a large d).
_omega_log_norms = jax.jit(
    functools.partial(omega_norms, log=True), static_argnames=("activation", "layer")
)
_gradient_flow = jax.jit(gradient_flow, static_argnames=("layer", "loss", "activation"))


@functools.partial(jax.jit, static_argnames=("activation", "layer", "fit_lag", "burn_in"))
def _lyapunov_arrays(params, xs, log_norms, *, activation, layer, fit_lag, burn_in):
    # lyapunov_exponent's estimate from the norms of stage 1 (the SVDs are not repeated):
    # the report's layer is unidirectional, so network order is run order.
    trajectory = layer_trajectory(params, xs, activation=activation, layer=layer)
    estimate = estimate_from_log_norms(
        trajectory,
        one_step_jacobians(trajectory),
        log_norms,
        last=fit_lag,
        min_lag=1,
        burn_in=burn_in,
    )
    qr = lyapunov_qr(params, xs, activation=activation, layer=layer, burn_in=burn_in)
    bound = decay_bound(params, xs, activation=activation, layer=layer)
    return estimate, qr, bound


@functools.partial(jax.jit, static_argnames=("loss", "activation", "method"))
def _gradient_error(params, xs, targets, mask, *, loss, activation, method):
    # max over leaves of max|g − g_exact| / max|g_exact|, the exact gradient by jax.grad.
    def gradient(method):
        return jax.grad(sequence_loss)(
            params, xs, targets, mask=mask, loss=loss, activation=activation, method=method
        )

    pairs = zip(jax.tree.leaves(gradient(method)), jax.tree.leaves(gradient("autodiff")))
    return jnp.max(jnp.stack([jnp.max(jnp.abs(a - e)) / jnp.max(jnp.abs(e)) for a, e in pairs]))


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# What Ω(j, i) is the Jacobian of, per cell: its figures and summary say so.
FOLLOWED_STATE = {"elman": "Z", "gru": "h", "lstm": "(h, c)", "mingru": "h"}


def inspected_cell(params, layer: int) -> str:
    """The cell name ("elman", "gru", "lstm") of layer `layer` of an `RNNParams` (of its
    forward direction, for a bidirectional layer); the diagnostics check the index."""
    layers = tuple(params.layers)
    if not -len(layers) <= layer < len(layers):
        return "elman"  # the diagnostics raise the error that names the bad index
    inspected = layers[layer]
    if isinstance(inspected, BidirectionalParams):
        inspected = inspected.forward
    kind = kind_of(inspected)
    return "elman" if kind is None else kind.name


def omega_report(
    params,
    xs,
    targets,
    mask=None,
    *,
    out_dir: str | Path,
    loss: str = "softmax_cross_entropy",
    activation: str = "tanh",
    layer: int = -1,
    max_lag: int | None = None,
    title: str = "",
    method: GradientAlgorithm | str = "omega",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Computes the Ω diagnostics of one layer of `params` and writes them to `out_dir`.

    Files: `omega_triangles.png` (‖Ω(j, i)‖₂ averaged over the batch, and the gradient
    flow ‖G(j, i)‖_F), `omega_decay.png` (per-lag decay with γ^k and both Lyapunov
    fits) and `omega_summary.json` (the returned dict). For a GRU or LSTM layer Ω is
    the Jacobian of the cell's carry (`h`, or `(h, c)` 2d wide) and γ the largest
    one-step norm ‖J_t‖₂ observed (no a-priori γ: those entries, and ‖S‖₂, are None).

    Args:
        params: `RNNParams` (Elman, GRU or LSTM layers).
        xs, targets, mask, loss, activation: as for `sequence_loss`.
        out_dir: output folder (created if missing).
        layer: which recurrent layer (default the top one).
        max_lag: the largest lag of the Lyapunov fit, in [2, T − 1] (default about T/2).
        title: figure title.
        method: a gradient algorithm whose gradient of the sequence loss on this batch
            is compared with the exact one (`jax.grad`), e.g. `Omega(truncation=8)` to
            see what the truncation drops on this model.
        log: where a line per stage goes (None: silent).

    Raises:
        ValueError, TypeError: T < 4, `max_lag` not in [2, T − 1], and the errors of the
            diagnostics.

    Returns:
        A JSON-ready dict: sizes, the cell and the state Ω follows ("Z", "h", "(h, c)")
        with its width, γ (observed and a priori), ‖S‖₂, λ₁ from the diagonal decay and
        from QR, the method with its gradient's relative error and its products per
        layer, and the files written.
    """
    say = log if log is not None else (lambda line: None)
    method = resolve_method(method)
    check_rnn_params(params)
    check_layer_index(layer, len(params.layers))  # before the slow stages, not during
    T = check_sequence("xs", xs)[0]
    if T < 4:
        raise ValueError(f"the omega report needs T >= 4 steps to fit a decay rate, got T = {T}.")
    # The API's default fit range, so that the report and lyapunov_exponent agree.
    fit_lag = check_fit_lag(max_lag, T)
    burn_in = default_burn_in(T)
    stages = [
        (
            f"‖Ω(j, i)‖₂ of all {T * (T - 1) // 2} pairs × {xs.shape[1]} sequences (an SVD "
            "each: the slow stage for a large hidden size)",
            lambda: _omega_log_norms(params, xs, activation=activation, layer=layer),
        ),
        (
            "the gradient flow ‖G(j, i)‖",
            lambda: _gradient_flow(
                params, xs, targets, mask=mask, layer=layer, loss=loss, activation=activation
            ),
        ),
        (
            "the Lyapunov exponents and the decay bound γ",
            lambda: _lyapunov_arrays(
                params,
                xs,
                results[0].spectral,  # stage 1's log-norms
                activation=activation,
                layer=layer,
                fit_lag=fit_lag,
                burn_in=burn_in,
            ),
        ),
        (
            f"the gradient of {method} against jax.grad's",
            lambda: _gradient_error(
                params, xs, targets, mask, loss=loss, activation=activation, method=method
            ),
        ),
    ]
    results, started = [], time.perf_counter()
    for number, (label, compute) in enumerate(stages, start=1):
        say(f"[{number}/{len(stages) + 1}] {label} …")
        results.append(jax.block_until_ready(compute()))
    logs, flow, (estimate, qr, bound), gradient_error = results
    gradient_error = float(gradient_error)
    say(
        f"[{len(stages) + 1}/{len(stages) + 1}] plotting into {out_dir} (computing took "
        f"{time.perf_counter() - started:.1f} s) …"
    )
    out_dir = Path(out_dir)
    cell = inspected_cell(params, layer)
    state = FOLLOWED_STATE[cell]
    described = activation if cell == "elman" else cell.upper()
    heading = title or f"layer {layer}, {described}, T = {T}"
    save_figure(
        plot_omega_triangles(logs, flow, log=True, title=heading, state=state),
        out_dir / REPORT_FILES[0],
    )
    save_figure(
        plot_decay(estimate, gamma=bound, title=heading),
        out_dir / REPORT_FILES[1],
    )
    summary = {
        "T": int(T),
        "batch": int(xs.shape[1]),
        "layer": int(layer),
        "activation": activation,
        "cell": cell,
        # Ω(j, i) = ∂state_j/∂state_i of this state, `state_width` wide (2·hidden for
        # an LSTM's (h, c)).
        "state": state,
        "state_width": int(qr.shape[0]),
        "hidden": int(qr.shape[0]) // (2 if cell == "lstm" else 1),
        "gamma": float(bound.gamma),
        # None for a gated cell: no a-priori bound of the form ‖S‖₂ · max σ' holds.
        "gamma_a_priori": _finite_or_none(bound.gamma_a_priori),
        # None for a gated cell too: ‖S‖₂ of its stacked gate blocks bounds nothing.
        "spectral_norm_S": _finite_or_none(bound.spectral_norm_S),
        "max_sigma_prime": _finite_or_none(bound.max_sigma_prime),
        "lyapunov_diagonal_decay": float(estimate.exponent),
        "lyapunov_qr": float(qr[0]),
        # Standard errors over the batch (None with one sequence), and whether the two
        # estimates agree; the caveat says why not in words (None when they do).
        "lyapunov_standard_error": _finite_or_none(estimate.standard_error),
        "lyapunov_qr_standard_error": _finite_or_none(estimate.qr_standard_error),
        "lyapunov_consistent": bool(estimate.consistent),
        "lyapunov_caveat": estimate.caveat() or None,
        "fit_burn_in": burn_in,
        "fit_max_lag": int(fit_lag),
        "method": method.to_dict(),
        "method_gradient_relative_error": gradient_error,
        "method_products_per_layer": method.closed_form_products(T),
        "files": [str(out_dir / name) for name in REPORT_FILES],
    }
    (out_dir / REPORT_FILES[2]).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class ModelAndData(NamedTuple):
    """What the report looks at: parameters, one batch, its loss and activation, and
    the gradient algorithm the model was trained with (None for a fresh model)."""

    params: RNNParams
    xs: jax.Array
    targets: jax.Array
    mask: jax.Array | None
    loss: str
    activation: str
    title: str
    method: GradientAlgorithm | None = None


def fresh_model(
    *,
    T: int,
    batch: int,
    input_size: int,
    hidden: int,
    layers: int,
    classes: int,
    activation: str,
    gain: float,
    seed: int,
    cell: str = "elman",
) -> ModelAndData:
    """A freshly initialised network of `cell` layers ("elman": S orthogonal times
    `gain`, so its spectral radius is `gain`; "gru", "lstm": PyTorch's uniform
    initialisation with every recurrent weight times `gain`) with random normal inputs
    and random class targets."""
    init_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    params = init_rnn(init_key, input_size, (hidden,) * layers, classes, cell=cell)
    # minGRU has no recurrent weights: its gain is its own (1 − z), not scaled here.
    params = params._replace(
        layers=tuple(
            layer._replace(S=gain * layer.S) if hasattr(layer, "S") else layer
            for layer in params.layers
        )
    )
    xs = jax.random.normal(x_key, (T, batch, input_size))
    targets = jax.random.randint(y_key, (T, batch), 0, classes)
    described = activation if cell == "elman" else cell.upper()
    title = f"fresh model, {described}, gain {gain:g}, T = {T}"
    return ModelAndData(params, xs, targets, None, "softmax_cross_entropy", activation, title)


def trained_model(checkpoint: str | Path, *, batch: int) -> ModelAndData:
    """The model of a `dprnn-jax train` checkpoint (or run folder), on the first `batch`
    held-out sequences of its task (the task, sizes and activation come from the
    checkpoint).

    Raises:
        CheckpointError: a missing or corrupt checkpoint, or one that does not match the
            configuration it records.
    """
    from .._training.resume import load_run
    from .._training.tasks import make_task

    run = load_run(checkpoint)
    config = run.config
    task = make_task(config.task, config.seq_len)
    held_out = task.validation
    m = min(batch, held_out.inputs.shape[1])
    title = f"{config.task} after {run.metadata.get('step', '?')} steps ({config.method}), "
    cell = getattr(config, "cell", "elman")
    title += f"{config.activation if cell == 'elman' else cell.upper()}, "
    title += f"T = {held_out.inputs.shape[0]}"
    return ModelAndData(
        run.params,
        held_out.inputs[:, :m],
        held_out.targets[:, :m],
        held_out.mask[:, :m],
        task.loss,
        config.activation,
        title,
        config.method,
    )
