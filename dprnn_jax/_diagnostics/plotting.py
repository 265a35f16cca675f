"""Plots of the Ω diagnostics and of training curves (matplotlib, imported lazily).

The core library does not need matplotlib: it is imported inside these functions only.
Figures are built with `matplotlib.figure.Figure`, never `pyplot`, so they work without
a display (no backend is selected, no global state is touched) and can be saved from
scripts, tests and the CLI; pass `ax=` to draw into an existing pyplot/notebook axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _axis(ax, figsize=(5.0, 4.0)):
    """Returns `(figure, ax)`: the given axis's figure, or a new pyplot-free figure."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.add_subplot()


def plot_triangle(norms, *, ax=None, title: str = "", label: str = "norm"):
    """Heat map of a (T, T) lower triangle `[j, i]` on a log colour scale.

    Args:
        norms: (T, T) array, e.g. `gradient_flow(...)` or `omega_norms(...).spectral`
            averaged over the batch. Zeros, NaNs and the upper triangle are left blank.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title.
        label: colour-bar label.

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: `norms` is not a square 2-D array.
    """
    from matplotlib.colors import LogNorm

    values = np.asarray(norms, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"norms must be a square (T, T) array, got shape {values.shape}.")
    figure, ax = _axis(ax)
    shown = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    finite = shown[np.isfinite(shown)]
    low, high = (finite.min(), finite.max()) if finite.size else (1e-3, 1.0)
    image = ax.imshow(
        shown,
        origin="upper",
        cmap="viridis",
        norm=LogNorm(vmin=low, vmax=max(high, low * 1.0001)),
        interpolation="nearest",
    )
    ax.set_xlabel("i (step receiving the error)")
    ax.set_ylabel("j (step of the loss / later step)")
    ax.set_title(title)
    figure.colorbar(image, ax=ax, label=label)
    return figure


def plot_omega_triangles(omega_spectral, flow, *, title: str = ""):
    """Two heat maps side by side: ‖Ω(j, i)‖₂ and the gradient flow ‖G(j, i)‖_F.

    Args:
        omega_spectral: (T, T) spectral norms of Ω (e.g. the batch mean of
            `omega_norms(...).spectral`).
        flow: (T, T) gradient-flow map from `gradient_flow`.
        title: figure title.

    Returns:
        The matplotlib `Figure`.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    plot_triangle(omega_spectral, ax=left, title="‖Ω(j, i)‖₂ = ‖∂Z_j/∂Z_i‖₂", label="norm")
    plot_triangle(flow, ax=right, title="‖G(j, i)‖_F = ‖∂L_j/∂Z_i‖_F", label="norm")
    if title:
        figure.suptitle(title)
    return figure


def plot_decay(
    mean_log_norm,
    *,
    gamma: float | None = None,
    exponent: float | None = None,
    qr_exponent: float | None = None,
    ax=None,
    title: str = "",
):
    """Per-lag decay of ‖Ω(i+k, i)‖₂, with the bound γ^k of `decay_bound` and the Lyapunov fits.

    Args:
        mean_log_norm: (K,) mean over i and samples of log‖Ω(i+k, i)‖₂ for k = 1 … K
            (`lyapunov_exponent(...).mean_log_norm`).
        gamma: γ of `decay_bound`; draws the bound γ^k.
        exponent: λ₁ from the diagonal decay; draws e^{λ₁ k} through the mean at k = 1.
        qr_exponent: λ₁ from `lyapunov_qr`; drawn the same way, dashed.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title.

    Returns:
        The matplotlib `Figure`.
    """
    values = np.asarray(mean_log_norm, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"mean_log_norm must be a non-empty 1-D array, got shape {values.shape}.")
    figure, ax = _axis(ax)
    lags = np.arange(1, values.size + 1)
    ax.semilogy(lags, np.exp(values), "o", markersize=3, label="exp(mean log‖Ω(i+k, i)‖₂)")
    if gamma is not None:
        ax.semilogy(lags, float(gamma) ** lags, "k-", label=f"bound γ^k, γ = {float(gamma):.3g}")
    # Fitted rates drawn as lines through the centroid of the points (where a
    # least-squares line passes), so the diagonal fit overlays the points it came from.
    centre_lag, centre_value = lags.mean(), values.mean()
    for rate, style, name in ((exponent, "-", "diagonals"), (qr_exponent, "--", "QR")):
        if rate is not None:
            line = np.exp(centre_value + float(rate) * (lags - centre_lag))
            ax.semilogy(lags, line, style, label=f"λ₁ ({name}) = {float(rate):.3g}")
    ax.set_xlabel("lag k = j − i")
    ax.set_ylabel("‖Ω(i+k, i)‖₂")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return figure


def plot_training_curves(
    curves: Mapping[str, Sequence[float]], *, ax=None, title: str = "", ylabel: str = "loss"
):
    """One line per named curve (e.g. the training loss of each gradient method).

    Args:
        curves: name -> values per step.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title.
        ylabel: y-axis label.

    Returns:
        The matplotlib `Figure`.
    """
    if not curves:
        raise ValueError("curves must name at least one curve, got an empty mapping.")
    figure, ax = _axis(ax)
    styles = ("-", "--", ":", "-.")
    for index, (name, values) in enumerate(curves.items()):
        ax.plot(np.asarray(values, dtype=np.float64), styles[index % len(styles)], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return figure


def save_figure(figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Writes `figure` to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
