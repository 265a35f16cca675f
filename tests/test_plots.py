"""The plot helpers take the library's own results, say what they average, and keep one
colour per name. Checked on the returned figures (titles, labels, line colours), not on
pixels; matplotlib draws with Agg, without a display."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dprnn_jax as dj

T, M, N, K = 8, 3, 2, 3


@pytest.fixture(scope="module")
def results():
    params = dj.init_rnn(jax.random.key(0), N, (4,), K)
    xs = jax.random.normal(jax.random.key(1), (T, M, N))
    targets = jnp.zeros((T, M), jnp.int32)

    @jax.jit
    def diagnostics(params, xs):
        return {
            "norms": dj.omega_norms(params, xs),
            "logs": dj.omega_norms(params, xs, log=True),
            "flow": dj.gradient_flow(params, xs, targets),
            "estimate": dj.lyapunov_exponent(params, xs),
            "bound": dj.decay_bound(params, xs),
        }

    return diagnostics(params, xs)


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
    assert named[0].get_xlabel() == "i (step of (h_i, c_i))"
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
