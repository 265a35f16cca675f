"""The plot helpers take the library's own results, say what they average, and keep one
colour per name. Checked on the returned figures (titles, labels, line colours), not on
pixels; matplotlib draws with Agg, without a display."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

import dprnn_jax as dj

T, M, N, K = 8, 3, 2, 3


@pytest.fixture(scope="module")
def results():
    params = dj.init_rnn(jax.random.key(0), N, (4,), K)
    bidirectional = dj.init_rnn(jax.random.key(2), N, (4,), K, bidirectional=True)
    xs = jax.random.normal(jax.random.key(1), (T, M, N))
    targets = jnp.zeros((T, M), jnp.int32)

    @jax.jit
    def diagnostics(params, bidirectional, xs):
        return {
            "norms": dj.omega_norms(params, xs),
            "logs": dj.omega_norms(params, xs, log=True),
            "flow": dj.gradient_flow(params, xs, targets),
            "estimate": dj.lyapunov_exponent(params, xs),
            "bound": dj.decay_bound(params, xs),
            "backward_norms": dj.omega_norms(bidirectional, xs, direction="backward"),
            "backward_flow": dj.gradient_flow(bidirectional, xs, targets, direction="backward"),
        }

    return diagnostics(params, bidirectional, xs)


def _labels_and_colours(ax):
    return {line.get_label(): line.get_color() for line in ax.get_lines()}


def test_omega_triangles_take_omega_norms_and_the_gradient_flow(results):
    figure = dj.plot_omega_triangles(results["norms"], results["flow"], title="fresh")
    left, right = figure.axes[:2]
    assert "geometric mean over the batch" in left.get_title()
    assert "norm over the batch" in right.get_title()
    assert figure.get_suptitle() == "fresh"
    # The norms do not record the state they follow: unnamed unless the caller says.
    assert left.get_title() == "‖Ω(j, i)‖₂\ngeometric mean over the batch"
    assert (left.get_xlabel(), left.get_ylabel()) == (
        "i (earlier step)", "j (later step, of the loss L_j)"
    )  # fmt: skip
    named = dj.plot_omega_triangles(results["norms"], results["flow"], state="(h, c)").axes
    assert named[0].get_title().startswith("‖Ω(j, i)‖₂ = ‖∂(h_j, c_j)/∂(h_i, c_i)‖₂")
    assert "∂L_j/∂(h_i, c_i) at the top" in named[1].get_title()
    assert (named[0].get_xlabel(), named[0].get_ylabel()) == (
        "i (earlier step: (h_i, c_i))", "j (later step: (h_j, c_j), of the loss L_j)"
    )  # fmt: skip
    # What is drawn is exp(mean log) over the batch of the spectral norms.
    spectral = np.asarray(results["norms"].spectral, np.float64)
    with np.errstate(invalid="ignore"):
        expected = np.exp(np.log(spectral).mean(axis=-1))
    drawn = left.images[0].get_array().filled(np.nan)
    np.testing.assert_allclose(drawn, expected, rtol=1e-6)
    np.testing.assert_allclose(right.images[0].get_array().filled(np.nan), results["flow"])
    # The log-norms (log=True) and a (T, T, m) array draw the same picture.
    for omega, log in ((results["logs"], True), (results["norms"].spectral, False)):
        other = dj.plot_omega_triangles(omega, results["flow"], log=log)
        np.testing.assert_allclose(
            other.axes[0].images[0].get_array().filled(np.nan), expected, rtol=1e-5
        )
    # A (T, T) array is drawn as given, and its title does not claim an average.
    as_given = dj.plot_omega_triangles(expected, results["flow"])
    assert "mean" not in as_given.axes[0].get_title()
    with pytest.raises(ValueError, match="flow must be the \\(T, T\\) map"):
        dj.plot_omega_triangles(results["norms"], np.ones((T, T, M)))


def _cut_off(figure):
    """The axes (with their titles, labels and tick labels) and the figure title that
    reach past the edge of the saved PNG."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # the first draw, as save_figure's one savefig
    renderer = canvas.get_renderer()
    page = figure.bbox
    parts = [(ax.get_title() or ax.get_ylabel(), ax.get_tightbbox(renderer)) for ax in figure.axes]
    if figure.get_suptitle():
        parts.append((figure.get_suptitle(), figure._suptitle.get_window_extent(renderer)))
    return [
        (name, tuple(np.round(box.extents, 1)))
        for name, box in parts
        if box.x0 < page.x0 or box.y0 < page.y0 or box.x1 > page.x1 or box.y1 > page.y1
    ]


def test_omega_triangles_fit_inside_their_image(results):
    # The bottom axis labels were cut off at the image edge (a fixed-aspect heat map
    # under a two-line title and a figure title, laid out "constrained").
    for state, title in ((None, ""), ("Z", "layer 0, tanh, T = 8"), ("(h, c)", "LSTM")):
        figure = dj.plot_omega_triangles(
            results["logs"], results["flow"], log=True, title=title, state=state
        )
        cut = _cut_off(figure)
        assert not cut, (state, cut)
    for figure in (
        dj.plot_triangle(results["backward_flow"], state="Z", title="backward"),
        dj.plot_decay(results["estimate"], gamma=results["bound"], title="decay"),
    ):
        cut = _cut_off(figure)
        assert not cut, cut


def test_the_backward_direction_is_labelled_as_the_upper_triangle_it_is(results):
    # The backward direction of a bidirectional layer: G(j, i) = ∂L_j/∂Z←_i and
    # Ω(j, i) = ∂Z←_j/∂Z←_i are non-zero for j ≤ i, so i (the column) is the later step.
    flow = np.asarray(results["backward_flow"])
    assert np.isnan(flow[1, 0]) and np.isfinite(flow[0, 1])  # the upper triangle
    later_i = ("i (later step, run first)", "j (earlier step, of the loss L_j)")
    earlier_i = ("i (earlier step)", "j (later step, of the loss L_j)")
    for ax in (
        dj.plot_triangle(flow).axes[0],
        dj.plot_triangle(results["backward_norms"].spectral).axes[0],
        *dj.plot_omega_triangles(results["backward_norms"], flow).axes[:2],
    ):
        assert (ax.get_xlabel(), ax.get_ylabel()) == later_i
    named = dj.plot_triangle(flow, state="Z", direction="backward").axes[0]
    assert named.get_xlabel() == "i (later step, run first: Z_i)"
    # The forward direction (lower triangle) keeps its labels; a full matrix names no order.
    assert (lambda ax: (ax.get_xlabel(), ax.get_ylabel()))(
        dj.plot_triangle(results["flow"]).axes[0]
    ) == earlier_i
    assert dj.plot_triangle(np.ones((3, 3))).axes[0].get_xlabel() == "i (step)"
    # Said explicitly, the direction wins over the values (e.g. a diagonal-only max_lag=0).
    diagonal = dj.plot_triangle(np.eye(3), direction="backward").axes[0]
    assert (diagonal.get_xlabel(), diagonal.get_ylabel()) == later_i
    with pytest.raises(ValueError, match="direction must be 'forward', 'backward' or None"):
        dj.plot_triangle(flow, direction="reverse")


def test_compared_panels_can_share_one_colour_scale(results):
    # Two triangles whose values differ by orders of magnitude: with color_limits, a
    # colour means the same value in both panels; by default each has its own range.
    from matplotlib.figure import Figure

    small = np.tril(np.full((T, T), 1e-3))
    large = np.asarray(results["norms"].spectral)  # (T, T, M): drawn as the batch mean
    vmin, vmax = dj.color_limits(small, large)
    drawn = np.exp(np.log(large).mean(axis=-1))  # NaN above the diagonal
    assert vmin == pytest.approx(1e-3)
    assert vmax == pytest.approx(np.nanmax(drawn), rel=1e-12)
    figure = Figure()
    axes = figure.subplots(1, 2)
    for ax, triangle in zip(axes, (small, large)):
        dj.plot_triangle(triangle, ax=ax, vmin=vmin, vmax=vmax, colorbar=False)
    assert [ax.images[0].get_clim() for ax in axes] == [(vmin, vmax)] * 2
    assert len(figure.axes) == 2  # no colour bar drawn: the caller draws one for both
    unshared = [dj.plot_triangle(t).axes[0].images[0].get_clim() for t in (small, large)]
    assert unshared[0] != unshared[1]
    # omega_norms as it comes, its log-norms and a (T, T) array range alike.
    assert dj.color_limits(results["norms"]) == pytest.approx(
        dj.color_limits(results["logs"].spectral, log=True), rel=1e-5
    )
    # plot_omega_triangles: one range per quantity, for several models drawn alike.
    omega_limits = dj.color_limits(results["norms"], results["backward_norms"])
    flow_limits = dj.color_limits(results["flow"], results["backward_flow"])
    for norms, flow in (
        (results["norms"], results["flow"]),
        (results["backward_norms"], results["backward_flow"]),
    ):
        left, right = dj.plot_omega_triangles(
            norms, flow, omega_limits=omega_limits, flow_limits=flow_limits
        ).axes[:2]
        assert left.images[0].get_clim() == pytest.approx(omega_limits)
        assert right.images[0].get_clim() == pytest.approx(flow_limits)
    with pytest.raises(ValueError, match="vmin must be > 0 on the log colour scale"):
        dj.plot_triangle(small, vmin=0.0, vmax=1.0)
    with pytest.raises(ValueError, match="vmin must be <= vmax"):
        dj.plot_triangle(small, vmin=2.0, vmax=1.0)
    with pytest.raises(ValueError, match="no positive finite value"):
        dj.color_limits(np.zeros((2, 2)))


def test_padded_sequences_are_left_out_of_the_batch_mean():
    spectral = np.full((2, 2, 2), 4.0)
    spectral[..., 1] = 1.0
    spectral[1, :, 1] = np.nan  # sequence 1 is one step long
    figure = dj.plot_triangle(spectral)
    drawn = figure.axes[0].images[0].get_array().filled(np.nan)
    np.testing.assert_allclose(drawn, [[2.0, 2.0], [4.0, 4.0]])
    assert "geometric mean over the batch" in figure.axes[1].get_ylabel()


def test_decay_takes_the_lyapunov_estimate_and_the_bound(results):
    estimate, bound = results["estimate"], results["bound"]
    figure = dj.plot_decay(estimate, gamma=bound, title="decay")
    ax = figure.axes[0]
    lines = _labels_and_colours(ax)
    labels = list(lines)
    assert labels[0].startswith("geometric mean of ‖Ω(i+k, i)‖₂ over i and the batch")
    assert labels[1] == f"bound γ^k, γ = {float(bound.gamma):.3g}"
    diagonal = f"λ₁ (diagonals) = {float(estimate.exponent):.3g} ± "
    qr = f"λ₁ (QR) = {float(estimate.qr_exponent):.3g} ± "
    assert labels[2].startswith(diagonal) and labels[3].startswith(qr)
    assert len(set(lines.values())) == 4  # every line its own colour
    assert "geometric mean over i and the batch" in ax.get_ylabel()
    np.testing.assert_allclose(
        ax.get_lines()[0].get_ydata(), np.exp(estimate.mean_log_norm), rtol=1e-6
    )
    assert ax.get_title().startswith("decay")
    # The same plot from plain numbers.
    plain = dj.plot_decay(
        estimate.mean_log_norm,
        gamma=float(bound.gamma),
        exponent=float(estimate.exponent),
        qr_exponent=float(estimate.qr_exponent),
    )
    assert len(plain.axes[0].get_lines()) == 4
    with pytest.raises(ValueError, match="non-empty 1-D array"):
        dj.plot_decay(np.ones((2, 2)))


def test_decay_says_when_the_estimates_disagree(results):
    disagreeing = results["estimate"]._replace(consistent=jnp.asarray(False))
    title = dj.plot_decay(disagreeing, title="short run").axes[0].get_title()
    assert title == "short run\nthe two estimates disagree: see caveat()"
    agreeing = results["estimate"]._replace(consistent=jnp.asarray(True))
    assert dj.plot_decay(agreeing, title="t").axes[0].get_title() == "t"


def test_training_curves_keep_one_colour_per_method_in_every_panel():
    from matplotlib.figure import Figure

    train = {"omega": [2.0, 1.0, 0.5], "bptt": [2.0, 1.2, 0.7], "rtrl": [2.0, 1.5, 1.0]}
    held_out = {"omega": [2.1, 1.1], "bptt": [2.2, 1.3], "rtrl": [2.2, 1.6]}
    colours = {"omega": "C0", "bptt": "C1", "rtrl": "C2"}
    figure = Figure()
    left, right = figure.subplots(1, 2)
    dj.plot_training_curves(train, ax=left, log_scale=True, chance_level=np.log(K))
    dj.plot_training_curves(
        {name: held_out[name] for name in ("rtrl", "omega", "bptt")}, ax=right, colors=colours
    )
    left_lines, right_lines = _labels_and_colours(left), _labels_and_colours(right)
    for method, colour in colours.items():
        assert left_lines[method] == right_lines[method] == colour
    assert left_lines[f"chance level {np.log(K):.3g}"] == "grey"
    assert left.get_yscale() == "log" and right.get_yscale() == "linear"
    chance = [line for line in left.get_lines() if line.get_label().startswith("chance")][0]
    np.testing.assert_allclose(chance.get_ydata(), [np.log(K)] * 2)
    with pytest.raises(ValueError, match="chance_level must be > 0 on a log scale"):
        dj.plot_training_curves(train, log_scale=True, chance_level=0.0)
    with pytest.raises(ValueError, match="at least one curve"):
        dj.plot_training_curves({})
