"""Plots of the Ω diagnostics and of training curves (matplotlib, imported lazily).

The core library does not need matplotlib: it is imported inside these functions only.
Figures are built with `matplotlib.figure.Figure`, never `pyplot`, so they work without
a display (no backend is selected, no global state is touched; `savefig` renders with
Agg) and can be saved from scripts, tests and the CLI; pass `ax=` to draw into an
existing pyplot/notebook axis.
`plot_loss_curve`, the loss curve that `train` writes into its folder, is the exception:
it selects the Agg backend and draws with `pyplot`.

The plots take the library's own results as they come (`OmegaNorms`,
`LyapunovEstimate`, `DecayBound`, the gradient-flow array) as well as plain arrays, and
say in their titles and labels what they average. Curves keep one colour per name:
`plot_training_curves` draws curve k in colour `C{k}` unless `colors=` maps names to
colours, so panels drawn from the same names match.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .lyapunov import DecayBound, LyapunovEstimate
from .omega_norms import OmegaNorms


def _axis(ax, figsize=(5.0, 4.0)):
    """Returns `(figure, ax)`: the given axis's figure, or a new pyplot-free figure."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    return figure, figure.add_subplot()


def _geometric_mean_over_batch(values: np.ndarray, *, log: bool) -> np.ndarray:
    """exp(mean log) over the last axis, leaving out NaN entries (padded steps); NaN
    where every entry is NaN. Zeros give 0 (log −inf), as they should."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = values if log else np.log(values)
    present = ~np.isnan(logs)
    count = present.sum(axis=-1)
    with np.errstate(invalid="ignore"):
        total = np.where(present, logs, 0.0).sum(axis=-1)
        return np.where(count > 0, np.exp(total / np.maximum(count, 1)), np.nan)


def _drawn_values(values, *, log: bool = False) -> np.ndarray:
    """What a heat map shows of `values`: a (T, T) array as given, a (T, T, m) one as its
    geometric mean over the batch; `log`: the values are natural logarithms."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3:
        return _geometric_mean_over_batch(values, log=log)
    return np.exp(values) if log else values


def color_limits(*triangles, log: bool = False) -> tuple[float, float]:
    """One colour range `(vmin, vmax)` for several heat maps, so that a colour means the
    same value in each.

    Pass the result as `vmin, vmax` of `plot_triangle`, or as `omega_limits` /
    `flow_limits` of `plot_omega_triangles`, to every panel that is compared (several
    cells, gains or checkpoints side by side); draw one colour bar for all of them.

    Args:
        *triangles: what the panels draw, as `plot_triangle` and `plot_omega_triangles`
            take it: `omega_norms(...)` (its spectral norms), (T, T, m) per-sample norms
            (their geometric mean over the batch is what is drawn, so that is what is
            ranged) or (T, T) arrays such as `gradient_flow(...)`; the T may differ.
        log: the arrays hold natural logarithms of the norms (`omega_norms(..., log=True)`).

    Returns:
        `(vmin, vmax)`: the smallest and largest positive finite value drawn in any
        panel (zeros and NaNs are left blank, so they do not count).

    Raises:
        ValueError: no triangle, or none with a positive finite value.

    Example:
        >>> limits = color_limits(np.tril(np.full((3, 3), 0.5)), np.tril(np.full((4, 4), 8.0)))
        >>> limits
        (0.5, 8.0)
        >>> figure = plot_triangle(np.tril(np.ones((3, 3))), vmin=limits[0], vmax=limits[1])
        >>> figure.axes[0].images[0].get_clim()
        (0.5, 8.0)
    """
    if not triangles:
        raise ValueError("color_limits takes at least one triangle, got none.")
    low, high = np.inf, -np.inf
    for triangle in triangles:
        if isinstance(triangle, OmegaNorms):
            triangle = triangle.spectral
        values = _drawn_values(triangle, log=log)
        shown = values[np.isfinite(values) & (values > 0)]
        if shown.size:
            low, high = min(low, float(shown.min())), max(high, float(shown.max()))
    if not np.isfinite(low):
        raise ValueError(
            "color_limits found no positive finite value to range in the triangles given "
            "(a log colour scale leaves zeros and NaNs blank)."
        )
    return low, high


# Which step is which, by the side of the diagonal that holds the values: the forward
# direction's Z_j depends on the earlier Z_i (j >= i, lower triangle), the backward
# direction's on the later ones, which it ran first (j <= i, upper triangle).
_STEP_ORDER = {
    "forward": ("earlier step", "later step"),
    "backward": ("later step, run first", "earlier step"),
    None: ("step", "step"),
}


def _filled_direction(values: np.ndarray) -> str | None:
    """The direction whose labels fit: "forward" for a lower triangle (or a diagonal),
    "backward" for an upper one, None for values on both sides."""
    present = np.isfinite(values) & (values != 0)
    below, above = np.tril(present, -1).any(), np.triu(present, 1).any()
    if below and above:
        return None
    return "backward" if above else "forward"


def plot_triangle(
    norms,
    *,
    ax=None,
    title: str = "",
    label: str = "norm",
    state: str | None = None,
    direction: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
):
    """Heat map of a (T, T) triangle `[j, i]` on a log colour scale.

    The axis labels say which step is the earlier one: for the forward direction (a
    lower triangle, j ≥ i) i is the earlier step; for the backward direction of a
    bidirectional layer (`direction="backward"` of the diagnostics: an upper triangle,
    j ≤ i) i is the later step, which that direction runs first.

    Args:
        norms: (T, T) array, e.g. `gradient_flow(...)`; or (T, T, m) per sample, e.g.
            `omega_norms(...).spectral`, drawn as its geometric mean over the batch
            (the colour-bar label says so). Zeros, NaNs (padded steps, the side that
            does not depend) are left blank.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title.
        label: colour-bar label.
        state: the state the triangle follows, named in the axis labels: "Z" (an Elman
            layer's pre-activations), "h" (a GRU's carry) or "(h, c)" (an LSTM's); None
            (the default) names none, as the norms do not record it.
        direction: "forward" or "backward", the direction the triangle was computed
            for; None (the default) reads it from the side of the diagonal that holds
            the values (both sides: the labels name no order).
        vmin: the bottom of the colour range, as matplotlib's `imshow` takes it (> 0:
            the scale is logarithmic); by default this triangle's smallest value. Give
            every compared panel the same range, e.g. from `color_limits(...)`.
        vmax: the top of the colour range; by default this triangle's largest value.
        colorbar: draw this panel's colour bar; False for panels that share one (draw
            it once with `figure.colorbar(ax.images[0], ax=axes)`).

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: `norms` is not a square (T, T) or (T, T, m) array; an unknown
            `direction`; `vmin` or `vmax` not positive, or `vmin > vmax`.

    Example:
        >>> figure = plot_triangle(np.tril(np.ones((4, 4))), title="ones")
        >>> figure.axes[0].get_title(), figure.axes[0].get_xlabel()
        ('ones', 'i (earlier step)')
        >>> upper = plot_triangle(np.triu(np.ones((4, 4))))  # a backward direction's
        >>> upper.axes[0].get_xlabel(), upper.axes[0].get_ylabel()
        ('i (later step, run first)', 'j (earlier step, of the loss L_j)')
    """
    from matplotlib.colors import LogNorm

    values = np.asarray(norms, dtype=np.float64)
    if values.ndim not in (2, 3) or values.shape[0] != values.shape[1]:
        raise ValueError(
            f"norms must be a square (T, T) array or (T, T, m) per sample, got shape "
            f"{values.shape}."
        )
    if direction not in ("forward", "backward", None):
        raise ValueError(
            f"direction must be 'forward', 'backward' or None (read from the values), "
            f"got {direction!r}."
        )
    for name, limit in (("vmin", vmin), ("vmax", vmax)):
        if limit is not None and not limit > 0:
            raise ValueError(f"{name} must be > 0 on the log colour scale, got {limit}.")
    if vmin is not None and vmax is not None and vmin > vmax:
        raise ValueError(f"vmin must be <= vmax, got vmin = {vmin} > vmax = {vmax}.")
    if values.ndim == 3:
        label = f"{label}, geometric mean over the batch"
    values = _drawn_values(values)
    figure, ax = _axis(ax)
    shown = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    if vmin is None or vmax is None:
        finite = shown[np.isfinite(shown)]
        low, high = (finite.min(), finite.max()) if finite.size else (1e-3, 1.0)
        vmin = low if vmin is None else vmin
        vmax = max(high, vmin * 1.0001) if vmax is None else vmax
    image = ax.imshow(
        shown,
        origin="upper",
        cmap="viridis",
        norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 1.0001)),
        interpolation="nearest",
    )
    direction = _filled_direction(values) if direction is None else direction
    earlier_or_later_i, earlier_or_later_j = _STEP_ORDER[direction]
    named_i = "" if state is None else f": {_at_step(state, 'i')}"
    named_j = "" if state is None else f": {_at_step(state, 'j')}"
    ax.set_xlabel(f"i ({earlier_or_later_i}{named_i})")
    ax.set_ylabel(f"j ({earlier_or_later_j}{named_j}, of the loss L_j)")
    ax.set_title(title)
    if colorbar:
        figure.colorbar(image, ax=ax, label=label)
    return figure


def _at_step(state: str, step: str) -> str:
    """`Z` -> `Z_i`, `(h, c)` -> `(h_i, c_i)`."""
    if state.startswith("(") and state.endswith(")"):
        return "(" + ", ".join(f"{part.strip()}_{step}" for part in state[1:-1].split(",")) + ")"
    return f"{state}_{step}"


def plot_omega_triangles(
    omega,
    flow,
    *,
    log: bool = False,
    title: str = "",
    state: str | None = None,
    direction: str | None = None,
    omega_limits: tuple[float, float] | None = None,
    flow_limits: tuple[float, float] | None = None,
):
    """Two heat maps side by side: ‖Ω(j, i)‖₂ and the gradient flow ‖G(j, i)‖_F.

    The two panels show different quantities, each on its own colour scale. To compare
    several layers, cells or checkpoints, draw each with the same `omega_limits` and
    `flow_limits` (e.g. from `color_limits`), so that a colour means one value in all.

    Args:
        omega: `omega_norms(...)` as it comes (its spectral norms are drawn), or its
            (T, T, m) spectral norms: drawn as the geometric mean over the batch (the
            natural average of a log-scale map; padded entries left out). A (T, T)
            array is drawn as given.
        flow: (T, T) gradient-flow map from `gradient_flow` (a Frobenius norm over the
            batch and the units).
        log: `omega` holds natural logarithms of the norms (`omega_norms(..., log=True)`),
            which stay finite where the norms underflow.
        title: figure title.
        state: the state Ω follows, named in the titles and labels: "Z" (an Elman
            layer's pre-activations), "h" (GRU) or "(h, c)" (LSTM: Ω(j, i) =
            ∂(h_j, c_j)/∂(h_i, c_i)); None (the default) names none, as the norms do
            not record which layer they come from.
        direction: "forward" or "backward", as for `plot_triangle` (None: read from the
            values).
        omega_limits: `(vmin, vmax)` of the Ω panel's colour scale; by default its own
            range.
        flow_limits: `(vmin, vmax)` of the gradient-flow panel's colour scale; by
            default its own range.

    Returns:
        The matplotlib `Figure`; its two axes are titled with what they show.

    Raises:
        ValueError: arrays that are not square triangles; bad `direction` or limits.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs, ys, lengths = jnp.ones((5, 2, 3)), jnp.zeros((5, 2), jnp.int32), jnp.array([3, 2])
        >>> norms = omega_norms(params, xs, lengths=lengths)
        >>> flow = gradient_flow(params, xs, ys, lengths=lengths)
        >>> figure = plot_omega_triangles(norms, flow, state="Z")  # an Elman layer
        >>> figure.axes[0].get_title()
        '‖Ω(j, i)‖₂ = ‖∂Z_j/∂Z_i‖₂\\ngeometric mean over the batch'
    """
    from matplotlib.figure import Figure

    if isinstance(omega, OmegaNorms):
        omega = omega.spectral
    values = np.asarray(omega, dtype=np.float64)
    omega_title = "‖Ω(j, i)‖₂"
    if state is not None:
        omega_title += f" = ‖∂{_at_step(state, 'j')}/∂{_at_step(state, 'i')}‖₂"
    if values.ndim == 3:
        omega_title += "\ngeometric mean over the batch"
    values = _drawn_values(values, log=log)
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 2:
        raise ValueError(f"flow must be the (T, T) map of gradient_flow, got shape {flow.shape}.")
    # "compressed" packs fixed-aspect axes (the square heat maps) and their colour bars
    # inside the figure; "constrained" left the bottom axis label cut off at the edge.
    figure = Figure(figsize=(10.0, 4.8), layout="compressed")
    left, right = figure.subplots(1, 2)
    panels = (
        (left, values, omega_title, "‖Ω(j, i)‖₂", omega_limits),
        (right, flow, _flow_title(state), "‖G(j, i)‖_F", flow_limits),
    )
    for ax, triangle, panel_title, label, limits in panels:
        vmin, vmax = (None, None) if limits is None else limits
        plot_triangle(
            triangle,
            ax=ax,
            title=panel_title,
            label=label,
            state=state,
            direction=direction,
            vmin=vmin,
            vmax=vmax,
        )
    if title:
        figure.suptitle(title)
    return figure


def _flow_title(state: str | None) -> str:
    title = "gradient flow ‖G(j, i)‖_F"
    if state is not None:
        title += f" (∂L_j/∂{_at_step(state, 'i')} at the top)"
    return title + "\nnorm over the batch and units"


def plot_decay(
    estimate,
    *,
    gamma=None,
    exponent: float | None = None,
    qr_exponent: float | None = None,
    ax=None,
    title: str = "",
):
    """Per-lag decay of ‖Ω(i+k, i)‖₂, with the bound γ^k of `decay_bound` and the Lyapunov fits.

    Args:
        estimate: `lyapunov_exponent(...)` as it comes (its mean log-norms, both
            exponents and their standard errors are drawn), or a (K,) array of mean
            log‖Ω(i+k, i)‖₂ for k = 1 … K (`lyapunov_exponent(...).mean_log_norm`).
        gamma: `decay_bound(...)` or its γ; draws the bound γ^k.
        exponent: λ₁ from the diagonal decay (default: the estimate's); draws e^{λ₁ k}
            through the centroid of the points.
        qr_exponent: λ₁ from `lyapunov_qr` (default: the estimate's); drawn the same way,
            dashed.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title; when the two estimates of a `LyapunovEstimate` disagree, a
            second line says so (see `LyapunovEstimate.caveat`).

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: an empty or non-1-D array.

    Example:
        >>> layer = init_layer(jax.random.key(0), 3, 8)
        >>> xs = jax.random.normal(jax.random.key(1), (16, 2, 3))
        >>> figure = plot_decay(lyapunov_exponent(layer, xs), gamma=decay_bound(layer, xs))
        >>> [line.get_label()[:10] for line in figure.axes[0].get_lines()]
        ['geometric ', 'bound γ^k,', 'λ₁ (diagon', 'λ₁ (QR) = ']
    """
    errors = (None, None)
    caveat = ""
    if isinstance(estimate, LyapunovEstimate):
        exponent = estimate.exponent if exponent is None else exponent
        qr_exponent = estimate.qr_exponent if qr_exponent is None else qr_exponent
        errors = (float(estimate.standard_error), float(estimate.qr_standard_error))
        caveat = "" if bool(estimate.consistent) else "the two estimates disagree: see caveat()"
        estimate = estimate.mean_log_norm
    if isinstance(gamma, DecayBound):
        gamma = gamma.gamma
    values = np.asarray(estimate, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"mean_log_norm must be a non-empty 1-D array, got shape {values.shape}.")
    figure, ax = _axis(ax)
    lags = np.arange(1, values.size + 1)
    ax.semilogy(
        lags,
        np.exp(values),
        "o",
        markersize=3,
        color="C0",
        label="geometric mean of ‖Ω(i+k, i)‖₂ over i and the batch",
    )
    if gamma is not None:
        ax.semilogy(lags, float(gamma) ** lags, "k-", label=f"bound γ^k, γ = {float(gamma):.3g}")
    # Fitted rates drawn as lines through the centroid of the points (where a
    # least-squares line passes), so the diagonal fit overlays the points it came from.
    present = np.isfinite(values)
    if present.any():
        centre_lag, centre_value = lags[present].mean(), values[present].mean()
        fits = (
            (exponent, errors[0], "-", "C1", "diagonals"),
            (qr_exponent, errors[1], "--", "C2", "QR"),
        )
        for rate, error, style, colour, name in fits:
            if rate is None:
                continue
            line = np.exp(centre_value + float(rate) * (lags - centre_lag))
            spread = "" if error is None or not np.isfinite(error) else f" ± {error:.2g}"
            label = f"λ₁ ({name}) = {float(rate):.3g}{spread}"
            ax.semilogy(lags, line, style, color=colour, label=label)
    ax.set_xlabel("lag k = |j − i|")
    ax.set_ylabel("‖Ω(i+k, i)‖₂, geometric mean over i and the batch")
    ax.set_title("\n".join(part for part in (title, caveat) if part))
    ax.legend(fontsize="small")
    return figure


def plot_gradient_alignment(alignment, *, ax=None, title: str = ""):
    """The lag decomposition of `gradient_alignment`: each lag's share of the reference
    gradient (bars), their running sum, and the share the method keeps (a level line).

    Args:
        alignment: `gradient_alignment(...)` as it comes.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title (the method's cosine and relative error are added).

    Returns:
        The matplotlib `Figure`.

    Example:
        >>> params = init_rnn(jax.random.key(0), 3, (8,), 4)
        >>> xs = jax.random.normal(jax.random.key(1), (12, 2, 3))
        >>> ys = jax.random.randint(jax.random.key(2), (12, 2), 0, 4)
        >>> figure = plot_gradient_alignment(gradient_alignment(params, xs, ys, BPTT(truncation=2)))
        >>> [line.get_label()[:11] for line in figure.axes[0].get_lines()]
        ['running sum', 'kept by the']
    """
    figure, ax = _axis(ax, figsize=(6.0, 4.0))
    share = np.asarray(alignment.lag_share, dtype=np.float64)
    lags = np.arange(share.size)
    kept = float(alignment.kept_share)
    ax.bar(lags, share, color="C0", alpha=0.6, label="share of lag k, ⟨g_k, g⟩ / ‖g‖²")
    ax.plot(lags, np.cumsum(share), "o-", color="C1", markersize=3, label="running sum up to lag k")
    ax.axhline(kept, color="k", linestyle="--", label=f"kept by the method: {kept:.3g}")
    ax.set_xlabel("lag k (steps the error travels back)")
    ax.set_ylabel("share of the reference gradient")
    summary = (
        f"cosine {float(alignment.cosine):.4g}, "
        f"relative error {float(alignment.relative_error):.3g}"
    )
    ax.set_title("\n".join(part for part in (title, summary) if part))
    ax.legend(fontsize="small")
    return figure


def plot_training_curves(
    curves: Mapping[str, Sequence[float]],
    *,
    ax=None,
    title: str = "",
    ylabel: str = "loss",
    log_scale: bool = False,
    chance_level: float | None = None,
    colors: Mapping[str, str] | None = None,
):
    """One line per named curve (e.g. the training loss of each gradient method).

    Args:
        curves: name -> values per step.
        ax: a matplotlib axis to draw into; a new figure if None.
        title: axis title.
        ylabel: y-axis label; say what the values are (e.g. "cross-entropy per
            supervised step").
        log_scale: a logarithmic y axis (losses that fall by orders of magnitude).
        chance_level: the loss of a model that ignores its inputs, if the task knows it
            (e.g. log k for k balanced classes); drawn as a grey dotted line.
        colors: name -> matplotlib colour, to keep a method's colour the same across
            several panels or figures; by default the k-th curve gets `C{k}`, so panels
            drawn from the same names in the same order match anyway.

    Returns:
        The matplotlib `Figure`.

    Raises:
        ValueError: no curve, or a non-positive `chance_level` with `log_scale`.

    Example:
        >>> curves = {"omega": [2.0, 1.0, 0.5], "bptt": [2.0, 1.1, 0.6]}
        >>> figure = plot_training_curves(curves, log_scale=True, chance_level=0.69)
        >>> [(line.get_label(), line.get_color()) for line in figure.axes[0].get_lines()]
        [('omega', 'C0'), ('bptt', 'C1'), ('chance level 0.69', 'grey')]
    """
    if not curves:
        raise ValueError("curves must name at least one curve, got an empty mapping.")
    if log_scale and chance_level is not None and not chance_level > 0:
        raise ValueError(
            f"chance_level must be > 0 on a log scale (log_scale=True), got {chance_level}."
        )
    figure, ax = _axis(ax)
    styles = ("-", "--", ":", "-.")
    for index, (name, values) in enumerate(curves.items()):
        colour = colors[name] if colors is not None and name in colors else f"C{index}"
        ax.plot(
            np.asarray(values, dtype=np.float64),
            styles[index % len(styles)],
            color=colour,
            label=name,
        )
    if chance_level is not None:
        ax.axhline(
            float(chance_level),
            color="grey",
            linestyle=":",
            label=f"chance level {chance_level:.3g}",
        )
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return figure


def plot_loss_curve(
    history: dict, path: str, title: str, chance_level: float | None = None
) -> None:
    """Training loss per step (and its running mean) with validation loss, as a PNG;
    non-finite losses are left out, every skipped step is marked along the bottom and the
    task's chance level, where it knows one, is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(history["loss"], np.float64)
    loss = np.where(np.isfinite(loss), loss, np.nan)  # gaps, not a ruined y axis
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    steps = np.arange(1, len(loss) + 1)
    skipped = steps[np.asarray(history["skipped"], bool)]
    if skipped.size:
        # x in steps, y in axes coordinates: a row of ticks at the bottom, whatever the loss.
        axes.plot(
            skipped,
            np.full(skipped.size, 0.03),
            "|",
            color="tab:red",
            markersize=10,
            transform=axes.get_xaxis_transform(),
            label=f"skipped step ({skipped.size}, non-finite)",
        )
    axes.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="train (batch)")
    width = max(1, len(loss) // 50)
    if len(loss) >= width > 1:
        smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
        axes.plot(steps[width - 1 :], smooth, color="tab:blue", label=f"train ({width}-step mean)")
    evaluations = [e for e in history["evaluations"] if math.isfinite(e["loss"])]
    if evaluations:
        axes.plot(
            [e["step"] for e in evaluations],
            [e["loss"] for e in evaluations],
            "o-",
            color="tab:orange",
            label="validation",
        )
    if chance_level is not None:
        axes.axhline(
            chance_level,
            color="gray",
            linestyle="--",
            linewidth=1,
            label=f"chance level {chance_level:.3g} (inputs ignored)",
        )
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() > 1e3 * finite.min():
        axes.set_yscale("log")  # a blow-up spans orders of magnitude
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def save_figure(figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Writes `figure` to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path
