"""The Ω diagnostics on every model the library builds: bidirectional layers at any
depth (each direction on its own), right-padded batches with `lengths`, token inputs.

Oracle: every sequence run ALONE on its valid steps by plain Python loops (the backward
direction from its last valid step to t = 0), with a perturbation ε added to the
pre-activations Z of the inspected direction. `jax.jacrev` of Z gives Ω(j, i) = ∂Z_j/∂Z_i
sequence by sequence; `jax.jacrev` of the per-step losses gives ∂L_j/∂Z_i; the error
P_j entering a lower layer is `jax.grad` of the cost with respect to that direction's
outputs as the layers above read them. All in float64, to 1e-10.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import CHEAP_COMPILE

import dprnn_jax as dj

T, M, N, K, D = 5, 3, 2, 3, 3
LENGTHS = (5, 3, 1)
RTOL = 1e-10


def make_params(kinds, seed=0):
    """A stack of "bi"/"uni" layers of D units per direction, perturbed away from the
    initialisation (non-zero biases, S not orthogonal)."""
    keys = jax.random.split(jax.random.key(seed), len(kinds) + 1)
    layers, n = [], N
    for kind, key in zip(kinds, keys[:-1]):
        if kind == "bi":
            layers.append(dj.init_bidirectional_layer(key, n, D, dtype=jnp.float64))
        else:
            layers.append(dj.init_layer(key, n, D, dtype=jnp.float64))
        n = 2 * D if kind == "bi" else D
    leaves, treedef = jax.tree.flatten(layers)
    noise = jax.random.split(keys[-1], len(leaves))
    layers = treedef.unflatten(
        [p + 0.4 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, noise)]
    )
    W_out = jax.random.normal(keys[-1], (K, n), jnp.float64)
    return dj.RNNParams(tuple(layers), dj.ReadoutParams(W_out, 0.1 * jnp.ones(K, jnp.float64)))


def make_data(lengths):
    k_x, k_y = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(k_x, (T, M, N), jnp.float64)
    targets = jax.random.randint(k_y, (T, M), 0, K)
    lengths = (T,) * M if lengths is None else lengths
    # NaN in every padded input: must reach nothing.
    valid = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    return jnp.where(valid[..., None], xs, jnp.nan), targets


def run_direction(p, x, eps, *, backward):
    """One direction over one unpadded sequence x (L, n): (Z (L, d), h (L, d))."""
    L = x.shape[0]
    h = jnp.zeros(p.S.shape[0], x.dtype)
    zs, hs = [None] * L, [None] * L
    for t in reversed(range(L)) if backward else range(L):
        zs[t] = p.W @ x[t] + p.S @ h + p.b + eps[t]
        h = jnp.tanh(zs[t])
        hs[t] = h
    return jnp.stack(zs), jnp.stack(hs)


def alone(params, x, inspect, eps, dh):
    """One sequence alone: (readout outputs (L, k), Z of the inspected direction (L, d)).

    `eps` is added to the inspected direction's pre-activations, `dh` to its outputs as
    the layers above (or the readout) read them, not to its own recurrence.
    """
    hs, inspected = x, None
    for l, layer in enumerate(params.layers):
        parts = (
            [("forward", layer.forward), ("backward", layer.backward)]
            if isinstance(layer, dj.BidirectionalParams)
            else [(None, layer)]
        )
        outputs = []
        for direction, p in parts:
            here = (l, direction) == inspect
            z, h = run_direction(
                p, hs, eps if here else jnp.zeros_like(eps), backward=direction == "backward"
            )
            if here:
                inspected, h = z, h + dh
            outputs.append(h)
        hs = jnp.concatenate(outputs, axis=-1)
    return hs @ params.readout.W.T + params.readout.b, inspected


@functools.partial(jax.jit, static_argnames=("inspect", "lengths"), compiler_options=CHEAP_COMPILE)
def oracle(params, xs, targets, *, inspect, lengths):
    """Per sequence v: Ω_v (L, L, d, d), σ'(Z_v) (L, d) and the injected error P_v
    (L, d); and ∂L_j/∂Z_i (T, T, m, d) of the per-step losses L_j (top layer only)."""
    per_sample = []
    for v, L in enumerate(lengths):
        x, y = xs[:L, v], targets[:L, v]
        zeros = jnp.zeros((L, D), xs.dtype)

        def Z(eps, x=x, zeros=zeros):
            return alone(params, x, inspect, eps, zeros)[1]

        def cost(dh, x=x, y=y, zeros=zeros):
            logits = alone(params, x, inspect, zeros, dh)[0]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum() / M

        jacobian = jax.jacrev(Z)(zeros)  # (L, d, L, d): [j, a, i, b] = ∂Z_j[a]/∂Z_i[b]
        omega = jnp.moveaxis(jacobian, 2, 1)  # (L, L, d, d) = Ω(j, i)
        sigma_prime = 1 - jnp.tanh(Z(zeros)) ** 2
        injected = jax.grad(cost)(zeros) * sigma_prime
        per_sample.append((omega, sigma_prime, injected))

    def per_step_losses(eps):
        total = jnp.zeros(T, xs.dtype)
        for v, L in enumerate(lengths):
            zeros = jnp.zeros((L, D), xs.dtype)
            logits = alone(params, xs[:L, v], inspect, eps[:L, v], zeros)[0]
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets[:L, v])
            total = total.at[:L].add(losses / M)
        return total

    dloss = jax.jacrev(per_step_losses)(jnp.zeros((T, M, D), xs.dtype))  # (T, T, m, d)
    return per_sample, dloss


@functools.partial(
    jax.jit, static_argnames=("layer", "direction", "max_lag"), compiler_options=CHEAP_COMPILE
)
def library(params, xs, targets, lengths, *, layer, direction, max_lag=None):
    where = dict(layer=layer, direction=direction, lengths=lengths)
    return {
        "norms": dj.omega_norms(params, xs, **where, max_lag=max_lag),
        "log_norms": dj.omega_norms(params, xs, **where, max_lag=max_lag, log=True),
        "matrix": dj.omega_matrix(params, xs, **where),
        "flow": dj.gradient_flow(params, xs, targets, **where, max_lag=max_lag),
        "lyapunov": dj.lyapunov_exponent(params, xs, **where),
        "qr": dj.lyapunov_qr(params, xs, **where),
        "bound": dj.decay_bound(params, xs, **where),
    }


def network_pairs(lengths, backward):
    """(j, i, v) for every pair of valid steps of sequence v on the side where Z_j
    depends on Z_i: j ≥ i forward, j ≤ i backward."""
    for v, L in enumerate(lengths):
        for j in range(L):
            for i in range(L):
                if (j <= i) if backward else (j >= i):
                    yield j, i, v


def close(actual, expected, *, rtol=RTOL):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.max(np.abs(expected)), 1e-300)
    error = np.max(np.abs(actual - expected)) / scale
    assert error <= rtol, f"relative error {error:.3e} > {rtol:.0e}"


CASES = [
    # (layer kinds, inspected layer, direction, lengths)
    (("bi", "uni"), 0, "forward", LENGTHS),
    (("bi", "uni"), 0, "backward", LENGTHS),
    (("bi", "uni"), 1, None, LENGTHS),
    (("uni", "bi"), 1, "forward", LENGTHS),
    (("uni", "bi"), 1, "backward", LENGTHS),
    (("uni", "bi"), 0, None, LENGTHS),
    (("uni", "bi"), 1, "backward", None),
]


@pytest.mark.parametrize("kinds, layer, direction, lengths", CASES)
def test_diagnostics_match_the_oracle(x64, kinds, layer, direction, lengths):
    params = make_params(kinds)
    xs, targets = make_data(lengths)
    lengths_array = None if lengths is None else jnp.asarray(lengths)
    all_lengths = (T,) * M if lengths is None else lengths
    backward = direction == "backward"
    top = layer == len(kinds) - 1
    per_sample, dloss = oracle(params, xs, targets, inspect=(layer, direction), lengths=all_lengths)
    got = library(params, xs, targets, lengths_array, layer=layer, direction=direction)

    # Ω and its norms, entry by entry, at the network's time steps.
    pairs = list(network_pairs(all_lengths, backward))
    omega = np.stack([per_sample[v][0][j, i] for j, i, v in pairs])
    matrix = np.asarray(got["matrix"])
    close(np.stack([matrix[j, i, v] for j, i, v in pairs]), omega)
    close(
        np.stack([got["norms"].spectral[j, i, v] for j, i, v in pairs]),
        np.linalg.norm(omega, ord=2, axis=(-2, -1)),
    )
    close(
        np.stack([got["norms"].frobenius[j, i, v] for j, i, v in pairs]),
        np.linalg.norm(omega, axis=(-2, -1)),
    )
    # Every other entry: a padded step (NaN) or the side that does not depend (NaN
    # norms, zero blocks).
    dependent = np.zeros((T, T, M), bool)
    for j, i, v in pairs:
        dependent[j, i, v] = True
    valid = np.arange(T)[:, None] < np.asarray(all_lengths)[None, :]
    both_valid = valid[:, None, :] & valid[None, :, :]
    assert np.all(np.isnan(np.asarray(got["norms"].spectral)[~dependent]))
    assert np.all(np.isnan(matrix[~both_valid]))
    assert np.all(matrix[both_valid & ~dependent] == 0)

    # Gradient flow: the top layer's G(j, i) is ∂L_j/∂Z_i; a lower layer's is P_j Ω(j, i).
    expected = np.zeros((T, T))
    for j, i, v in pairs:
        if top:
            block = dloss[j, i, v]
        else:
            omega_v, _, injected = per_sample[v]
            block = injected[j] @ omega_v[j, i]
        expected[j, i] += float(np.sum(np.asarray(block) ** 2))
    expected = np.sqrt(expected)
    flow = np.asarray(got["flow"])
    reached = dependent.any(axis=-1)
    close(flow[reached], expected[reached])
    assert np.all(np.isnan(flow[~reached]))
    if top:  # ∂L_j/∂Z_i vanishes wherever the map is blank
        blank = np.ones((T, T), bool)
        blank[reached] = False
        assert np.all(np.asarray(dloss)[blank] == 0)

    # Lyapunov: the slope of the mean log-norm over lags 1 … max(2, T // 2), over the
    # valid windows; QR on each sequence's own Jacobians.
    max_lag = max(2, T // 2)
    sums, counts = np.zeros((max_lag, M)), np.zeros((max_lag, M))
    for j, i, v in pairs:
        lag = abs(j - i)
        if 1 <= lag <= max_lag:
            sums[lag - 1, v] += np.log(np.linalg.norm(per_sample[v][0][j, i], ord=2))
            counts[lag - 1, v] += 1
    lags = np.arange(1, max_lag + 1)
    estimate = got["lyapunov"]
    close(estimate.mean_log_norm, sums.sum(-1) / counts.sum(-1))
    close(estimate.exponent, np.polyfit(lags, sums.sum(-1) / counts.sum(-1), 1)[0])
    slopes = [
        np.polyfit(
            lags[counts[:, v] > 0], sums[counts[:, v] > 0, v] / counts[counts[:, v] > 0, v], 1
        )[0]
        for v in range(M)
        if np.sum(counts[:, v] > 0) >= 2
    ]
    close(estimate.standard_error, np.std(slopes, ddof=1) / np.sqrt(len(slopes)))
    growth = {}  # sequence -> log|R_s[a, a]| of its own steps (burn-in 0 at T = 5)
    for v, L in enumerate(all_lengths):
        omega_v = np.asarray(per_sample[v][0])
        run = list(reversed(range(L))) if backward else list(range(L))  # network steps
        frame = np.eye(D)
        for s in range(L - 1):
            frame, r = np.linalg.qr(omega_v[run[s + 1], run[s]] @ frame)
            growth.setdefault(v, []).append(np.log(np.abs(np.diag(r))))
    pooled = np.mean(np.concatenate(list(growth.values())), axis=0)
    close(got["qr"], np.sort(pooled)[::-1])
    close(estimate.qr_exponent, got["qr"][0])
    per_sequence = [np.mean(rows, axis=0)[np.argmax(pooled)] for rows in growth.values()]
    close(estimate.qr_standard_error, np.std(per_sequence, ddof=1) / np.sqrt(len(growth)))
    sigma_prime = np.concatenate(
        [
            np.asarray(per_sample[v][1])[1:] if backward else np.asarray(per_sample[v][1])[:-1]
            for v in range(M)
        ]
    )
    close(got["bound"].max_sigma_prime, sigma_prime.max())


def test_max_lag_and_log_norms_at_the_network_time_steps(x64):
    params = make_params(("uni", "bi"))
    xs, targets = make_data(LENGTHS)
    lengths = jnp.asarray(LENGTHS)
    full = library(params, xs, targets, lengths, layer=1, direction="backward")
    cut = library(params, xs, targets, lengths, layer=1, direction="backward", max_lag=1)
    lag = np.broadcast_to(np.subtract.outer(np.arange(T), np.arange(T))[..., None], (T, T, M))
    kept = (lag <= 0) & (lag >= -1) & ~np.isnan(np.asarray(full["norms"].spectral))
    np.testing.assert_allclose(  # two programs: equal to rounding
        np.asarray(cut["norms"].spectral)[kept],
        np.asarray(full["norms"].spectral)[kept],
        rtol=1e-10,
    )
    assert np.all(np.isnan(np.asarray(cut["norms"].spectral)[lag < -1]))
    close(np.exp(full["log_norms"].spectral)[kept], np.asarray(full["norms"].spectral)[kept])
    flow_kept = np.isfinite(np.asarray(cut["flow"]))
    assert flow_kept.sum() > 0 and np.all(np.abs(lag[..., 0][flow_kept]) <= 1)


def test_token_inputs_are_one_hot_inputs(x64):
    vocabulary = 4
    params = dj.init_rnn(jax.random.key(0), vocabulary, (3, 3), 2, bidirectional=(True, False))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    tokens = jax.random.randint(jax.random.key(1), (T, M), 0, vocabulary)
    one_hot = jax.nn.one_hot(tokens, vocabulary, dtype=jnp.float64)
    targets = jnp.zeros((T, M), jnp.int32)
    lengths = jnp.asarray(LENGTHS)

    @jax.jit
    def both(inputs):
        norms = dj.omega_norms(params, inputs, layer=0, direction="backward", lengths=lengths)
        flow = dj.gradient_flow(params, inputs, targets, layer=1, lengths=lengths)
        return norms.spectral, flow

    for a, b in zip(both(tokens), both(one_hot)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_a_bidirectional_layer_alone_and_the_tolerance_report(x64):
    params = make_params(("bi",))
    xs, _ = make_data(LENGTHS)
    lengths = jnp.asarray(LENGTHS)
    layer = params.layers[0]
    # A lone layer reads its own inputs: the same Ω as layer 0 of the stack.
    lone = dj.omega_norms(layer, xs, direction="backward", lengths=lengths).spectral
    stacked = dj.omega_norms(params, xs, layer=0, direction="backward", lengths=lengths).spectral
    np.testing.assert_allclose(np.asarray(lone), np.asarray(stacked), rtol=1e-10)  # two programs
    hs_bar = jnp.ones((T, M, 2 * D), jnp.float64)
    for direction in ("forward", "backward"):
        exact = dj.tolerance_report(
            layer, xs, hs_bar, tol=0.0, direction=direction, lengths=lengths
        )
        assert exact.max_diagonals == T - 1 and int(exact.diagonals) == T - 1
        loose = dj.tolerance_report(
            layer, xs, hs_bar, tol=10.0, direction=direction, lengths=lengths
        )
        assert int(loose.diagonals) < T - 1


def test_what_is_not_supported_is_said():
    bi = dj.init_rnn(jax.random.key(0), N, (D, D), K, bidirectional=(False, True))
    xs, targets = jnp.ones((T, M, N)), jnp.zeros((T, M), jnp.int32)
    for call in (
        lambda: dj.omega_norms(bi, xs),
        lambda: dj.omega_matrix(bi, xs, layer=1),
        lambda: dj.gradient_flow(bi, xs, targets),
        lambda: dj.lyapunov_exponent(bi, xs),
        lambda: dj.lyapunov_qr(bi, xs),
        lambda: dj.decay_bound(bi, xs),
    ):
        with pytest.raises(ValueError, match=r"params.layers\[1\] is a bidirectional layer"):
            call()
    with pytest.raises(ValueError, match="direction='backward' needs a bidirectional layer"):
        dj.omega_norms(bi, xs, layer=0, direction="backward")
    with pytest.raises(ValueError, match="direction must be one of"):
        dj.omega_norms(bi, xs, direction="both")
    with pytest.raises(ValueError, match="lengths must lie in"):
        dj.omega_norms(bi, xs, layer=0, lengths=jnp.array([1, 2, T + 1]))
    with pytest.raises(ValueError, match="mask or lengths, not both"):
        dj.gradient_flow(bi, xs, targets, mask=jnp.ones((T, M)), lengths=jnp.ones(M, int))
    with pytest.raises(ValueError, match="tolerance_report looks at one layer"):
        dj.tolerance_report(bi, xs, jnp.ones((T, M, 2 * D)), tol=0.1)
    # The 4th positional argument is no longer `mask`.
    with pytest.raises(TypeError):
        dj.gradient_flow(bi, xs, targets, jnp.ones((T, M)), direction="forward")


def fresh_model(*, T, batch, hidden, gain, seed=0, input_size=4, classes=4):
    """The network and data of `dprnn-jax omega --T T --batch … --hidden … --gain …`."""
    init_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    params = dj.init_rnn(init_key, input_size, (hidden,), classes)
    params = params._replace(layers=tuple(p._replace(S=gain * p.S) for p in params.layers))
    return params, jax.random.normal(x_key, (T, batch, input_size))


def test_the_cli_and_the_api_fit_the_same_range(tmp_path, capsys):
    from dprnn_jax.cli import main

    params, xs = fresh_model(T=12, batch=3, hidden=4, gain=1.5)
    argv = ["omega", "--out", str(tmp_path), "--T", "12", "--batch", "3", "--hidden", "4"]
    assert main([*argv, "--gain", "1.5"]) == 0
    summary = json.loads((tmp_path / "omega_summary.json").read_text())
    estimate = jax.jit(dj.lyapunov_exponent)(params, xs)
    assert summary["fit_max_lag"] == estimate.lags.shape[0] == 6
    assert summary["fit_burn_in"] == 12 // 8
    np.testing.assert_allclose(summary["lyapunov_diagonal_decay"], estimate.exponent, rtol=1e-4)
    np.testing.assert_allclose(summary["lyapunov_qr"], estimate.qr_exponent, rtol=1e-4)
    qr = jax.jit(dj.lyapunov_qr)(params, xs)
    np.testing.assert_allclose(summary["lyapunov_qr"], qr[0], rtol=1e-4)
    assert summary["lyapunov_consistent"] == bool(estimate.consistent)
    printed = capsys.readouterr().out
    assert ("caveat: " in printed) == (not summary["lyapunov_consistent"])


@pytest.mark.parametrize(
    "T, batch, expected",
    [
        # Long enough: both estimates agree within their standard errors.
        (64, 8, True),
        # Too few steps: the diagonal fit still carries its initial transient, and the
        # two finite-T estimates differ by several standard errors.
        (8, 8, False),
        # One sequence: no standard error, nothing to judge agreement by.
        (64, 1, False),
    ],
)
def test_disagreeing_lyapunov_estimates_are_flagged(x64, T, batch, expected):
    params, xs = fresh_model(T=T, batch=batch, hidden=8, gain=1.0)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    estimate = jax.jit(dj.lyapunov_exponent)(params, xs.astype(jnp.float64))
    assert bool(estimate.consistent) is expected
    difference = abs(float(estimate.exponent) - float(estimate.qr_exponent))
    combined = np.hypot(float(estimate.standard_error), float(estimate.qr_standard_error))
    same_sign = np.sign(float(estimate.exponent)) == np.sign(float(estimate.qr_exponent))
    assert bool(estimate.consistent) == bool(same_sign and difference <= 2 * combined)
    caveat = estimate.caveat()
    if expected:
        assert caveat == ""
    elif batch == 1:
        assert np.isnan(float(estimate.standard_error))
        assert "no standard error" in caveat
    else:
        assert difference > 2 * combined
        assert "too few steps" in caveat and f"{float(estimate.exponent):.3g}" in caveat
