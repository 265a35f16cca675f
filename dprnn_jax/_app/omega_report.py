"""All Ω diagnostics of one layer at once, written as plots and a JSON summary.

Used by `dprnn-jax omega`; also callable from a script or notebook.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .._diagnostics.gradient_flow import gradient_flow
from .._diagnostics.lyapunov import decay_bound, lyapunov_exponent, lyapunov_qr
from .._diagnostics.omega_norms import omega_norms
from .._diagnostics.plotting import plot_decay, plot_omega_triangles, save_figure
from .._model.params import RNNParams, init_rnn
from .._validation import check_sequence

REPORT_FILES = ("omega_triangles.png", "omega_decay.png", "omega_summary.json")


@functools.partial(jax.jit, static_argnames=("loss", "activation", "layer", "fit_lag", "burn_in"))
def _report_arrays(params, xs, targets, mask, *, loss, activation, layer, fit_lag, burn_in):
    # Everything in one compiled program: the diagnostics share the forward pass.
    logs = omega_norms(params, xs, activation=activation, layer=layer, log=True)
    # Geometric mean over the batch: the natural average for a log-scale heat map.
    mean_spectral = jnp.exp(logs.spectral.mean(axis=-1))
    flow = gradient_flow(params, xs, targets, mask, layer=layer, loss=loss, activation=activation)
    estimate = lyapunov_exponent(params, xs, activation=activation, layer=layer, max_lag=fit_lag)
    qr = lyapunov_qr(params, xs, activation=activation, layer=layer, burn_in=burn_in)
    bound = decay_bound(params, xs, activation=activation, layer=layer)
    return mean_spectral, flow, estimate, qr, bound


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
) -> dict[str, Any]:
    """Computes the Ω diagnostics of one layer of `params` and writes them to `out_dir`.

    Files: `omega_triangles.png` (‖Ω(j, i)‖₂ averaged over the batch, and the gradient
    flow ‖G(j, i)‖_F), `omega_decay.png` (per-lag decay with γ^k and both Lyapunov
    fits) and `omega_summary.json` (the returned dict).

    Args:
        params: `RNNParams`.
        xs, targets, mask, loss, activation: as for `sequence_loss`.
        out_dir: output folder (created if missing).
        layer: which recurrent layer (default the top one).
        max_lag: the largest lag of the Lyapunov fit (default about T/2).
        title: figure title.

    Raises:
        ValueError, TypeError: T < 4, and the errors of the diagnostics.

    Returns:
        A JSON-ready dict: sizes, γ (observed and a priori), ‖S‖₂, λ₁ from the diagonal
        decay and from QR, and the files written.
    """
    T = check_sequence("xs", xs)[0]
    if T < 4:
        raise ValueError(f"the omega report needs T >= 4 steps to fit a decay rate, got T = {T}.")
    fit_lag = max(2, T // 2) if max_lag is None else max_lag
    mean_spectral, flow, estimate, qr, bound = _report_arrays(
        params,
        xs,
        targets,
        mask,
        loss=loss,
        activation=activation,
        layer=layer,
        fit_lag=fit_lag,
        burn_in=T // 8,
    )
    out_dir = Path(out_dir)
    heading = title or f"layer {layer}, {activation}, T = {T}"
    save_figure(
        plot_omega_triangles(mean_spectral, flow, title=heading),
        out_dir / REPORT_FILES[0],
    )
    save_figure(
        plot_decay(
            estimate.mean_log_norm,
            gamma=float(bound.gamma),
            exponent=float(estimate.exponent),
            qr_exponent=float(qr[0]),
            title=heading,
        ),
        out_dir / REPORT_FILES[1],
    )
    summary = {
        "T": int(T),
        "batch": int(xs.shape[1]),
        "layer": int(layer),
        "activation": activation,
        "hidden": int(qr.shape[0]),
        "gamma": float(bound.gamma),
        "gamma_a_priori": float(bound.gamma_a_priori),
        "spectral_norm_S": float(bound.spectral_norm_S),
        "max_sigma_prime": float(bound.max_sigma_prime),
        "lyapunov_diagonal_decay": float(estimate.exponent),
        "lyapunov_qr": float(qr[0]),
        "fit_max_lag": int(fit_lag),
        "files": [str(out_dir / name) for name in REPORT_FILES],
    }
    (out_dir / REPORT_FILES[2]).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


class ModelAndData(NamedTuple):
    """What the report looks at: parameters, one batch, its loss and activation."""

    params: RNNParams
    xs: jax.Array
    targets: jax.Array
    mask: jax.Array | None
    loss: str
    activation: str
    title: str


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
) -> ModelAndData:
    """A freshly initialised network (S orthogonal times `gain`, so its spectral radius
    is `gain`) with random normal inputs and random class targets."""
    init_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    params = init_rnn(init_key, input_size, (hidden,) * layers, classes)
    params = params._replace(
        layers=tuple(layer._replace(S=gain * layer.S) for layer in params.layers)
    )
    xs = jax.random.normal(x_key, (T, batch, input_size))
    targets = jax.random.randint(y_key, (T, batch), 0, classes)
    title = f"fresh model, {activation}, gain {gain:g}, T = {T}"
    return ModelAndData(params, xs, targets, None, "softmax_cross_entropy", activation, title)


def trained_model(checkpoint: str | Path, *, batch: int) -> ModelAndData:
    """The model of a `dprnn-jax train` checkpoint, on the first `batch` held-out
    sequences of its task (the task, sizes and activation come from the checkpoint).

    Raises:
        CheckpointError: a missing or corrupt checkpoint, or one that does not match the
            configuration it records.
    """
    from .._training.checkpoint import CheckpointError, load_checkpoint, read_metadata
    from .._training.loop import OPTIMIZERS, TrainConfig
    from .._training.tasks import make_task

    metadata = read_metadata(checkpoint)
    if "config" not in metadata:
        raise CheckpointError(f"{checkpoint} holds no training configuration: not from `train`")
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in metadata["config"].items() if k in fields})
    task = make_task(config.task, config.seq_len)
    # The checkpoint holds (params, optimiser state); a freshly built pair of the same
    # configuration is the template whose structure, shapes and dtypes it must match.
    like = init_rnn(
        jax.random.key(0), task.input_size, (config.hidden_size,) * config.layers, task.output_size
    )
    optimizer = OPTIMIZERS[config.optimizer](config.learning_rate)
    (params, _), metadata = load_checkpoint(checkpoint, (like, optimizer.init(like)))
    held_out = task.validation
    m = min(batch, held_out.inputs.shape[1])
    title = f"{config.task} after {metadata.get('step', '?')} steps ({config.method}), "
    title += f"{config.activation}, T = {held_out.inputs.shape[0]}"
    return ModelAndData(
        params,
        held_out.inputs[:, :m],
        held_out.targets[:, :m],
        held_out.mask[:, :m],
        task.loss,
        config.activation,
        title,
    )
