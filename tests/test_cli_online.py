"""`dprnn-jax train --method snap1|snap2|uoro|rflo` and `--online K`: the approximations
train and record themselves; an online run updates the parameters every K time steps
inside each batch, its streams going on with the new parameters.

Oracles: with RTRL and K ≥ T the online step is an ordinary step with the exact gradient
(BPTT's); with K < T, RTRL's update of a window is `jax.grad` of the window's loss with
respect to one perturbation added to the parameters of every step so far (each step run
with the parameters of its moment), written out here for an Elman layer; UORO's steps
are `online_step` written out, with the key `fold_in(key(seed), step)`. A resumed run
repeats the uninterrupted one bitwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import dprnn_jax as dj
from dprnn_jax.cli import main

# The copy task with delay 2: T = 22 steps, of which the last 10 are supervised.
T, SUPERVISED, BATCH, HIDDEN = 22, 10, 4, 8
TINY = [
    "train",
    "--task",
    "copy",
    "--seq-len",
    "2",
    "--hidden",
    str(HIDDEN),
    "--batch-size",
    str(BATCH),
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--no-progress",
]
SMALL = dict(task="copy", seq_len=2, hidden_size=HIDDEN, batch_size=BATCH, eval_every=2)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dprnn-jax: error: "), err
    return err.strip()


def _windows_with_supervision(every: int) -> int:
    """The updates one batch makes: its windows of `every` steps that reach the
    supervised tail (a window without a supervised step makes none)."""
    starts = range(0, T, every)
    return sum(1 for start in starts if start + every > T - SUPERVISED)


@pytest.mark.parametrize(
    "flags, method, online",
    [
        (["--method", "snap1", "--online", "1"], dj.SnAp(n=1), 1),
        (["--method", "snap2"], dj.SnAp(n=2), None),
        (["--method", "uoro", "--online", "4"], dj.UORO(), 4),
        (
            ["--method", "rflo", "--tau", "2", "--feedback", "random"],
            dj.RFLO(tau=2.0, feedback="random"),
            None,
        ),
    ],
)
def test_each_approximation_trains_and_records_itself(tmp_path, capsys, flags, method, online):
    out = tmp_path / "run"
    assert main([*TINY, "--steps", "2", *flags, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "loss_curve.png", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["method"] == method.to_dict()
    assert metrics["config"]["online"] == online
    per_step = 1 if online is None else _windows_with_supervision(online)
    assert metrics["parameter_updates"] == 2 * per_step and metrics["skipped_steps"] == 0
    assert np.isfinite(metrics["validation"]["loss"])
    run = dj.load_run(out)
    assert run.config.method == method and run.config.online == online
    if online is not None:
        assert f"2 steps ({2 * per_step} parameter updates, every " in printed


def test_online_rtrl_with_a_window_as_long_as_the_batch_is_an_ordinary_step(tmp_path):
    """One window (K ≥ T; K is capped at T): RTRL's gradient is exact, so the step is
    `make_train_step`'s with BPTT, Adam and clipping included."""
    online = dj.train(
        dj.TrainConfig(**SMALL, method=dj.RTRL(), online=100, steps=2, learning_rate=0.05),
        str(tmp_path / "online"),
        progress=False,
    )
    batch = dj.train(
        dj.TrainConfig(**SMALL, method=dj.BPTT(), steps=2, learning_rate=0.05),
        str(tmp_path / "batch"),
        progress=False,
    )
    assert online.metrics["parameter_updates"] == 2
    assert_trees_close(online.params, batch.params, rtol=1e-5, atol=1e-6)
    for field in ("train_loss_last", "train_loss_mean_last_10pct"):
        np.testing.assert_allclose(online.metrics[field], batch.metrics[field], rtol=1e-5)


def _data_key(seed: int) -> jax.Array:
    # `train`: the initial parameters from the first key, the batches from the second.
    return jax.random.split(jax.random.key(seed))[1]


def _elman_window_gradient(step_params, eps, batch, in_window, total):
    """The window's share of the batch's mean loss, each step run with its own
    parameters plus the one perturbation `eps`; its gradient at eps = 0 is RTRL's."""

    def step(h, inputs):
        params, x, target, mask, counted = inputs
        layer = jax.tree.map(jnp.add, params.layers[0], eps.layers[0])
        readout = jax.tree.map(jnp.add, params.readout, eps.readout)
        h = jnp.tanh(x @ layer.W.T + h @ layer.S.T + layer.b)
        logits = h @ readout.W.T + readout.b
        losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[:, None], -1)[:, 0]
        return h, counted * jnp.sum(jnp.where(mask != 0, losses, 0.0)) / total

    h0 = jnp.zeros((batch.inputs.shape[1], HIDDEN), batch.inputs.dtype)
    inputs = (step_params, batch.inputs, batch.targets, batch.mask, in_window)
    return jnp.sum(jax.lax.scan(step, h0, inputs)[1])


def test_online_rtrl_updates_every_k_steps_with_the_influence_carried_on(tmp_path):
    """K = 4 < T, SGD with momentum, no clip, two batches: each window's update is the
    gradient of its loss through every earlier step, each at the parameters it ran with."""
    every, steps, lr = 4, 2, 0.5
    config = dj.TrainConfig(
        **SMALL,
        method=dj.RTRL(),
        online=every,
        steps=steps,
        optimizer="sgd",
        learning_rate=lr,
        max_grad_norm=None,
    )
    result = dj.train(config, str(tmp_path / "run"), progress=False)
    params = dj.train(config, str(tmp_path / "start"), progress=False, stop_at=0).params

    task = dj.make_task("copy", 2)
    optimizer = optax.sgd(lr, momentum=0.9)
    opt_state = optimizer.init(params)
    window_gradient = jax.jit(jax.grad(_elman_window_gradient, argnums=1))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates = 0
    for s in range(steps):
        batch = task.sample(jax.random.fold_in(_data_key(config.seed), s), BATCH)
        total = jnp.sum(batch.mask)
        step_params = [params] * T  # the parameters each step runs with
        for start in range(0, T, every):
            for t in range(start, T):
                step_params[t] = params
            stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *step_params)
            in_window = ((jnp.arange(T) >= start) & (jnp.arange(T) < start + every)) * 1.0
            if not jnp.any(batch.mask[start : start + every] != 0):
                continue  # no supervised step in the window: no update
            grads = window_gradient(stacked, zero, batch, in_window, total)
            change, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, change)
            updates += 1
    assert result.metrics["parameter_updates"] == updates == steps * _windows_with_supervision(4)
    assert_trees_close(result.params, params, rtol=1e-5, atol=1e-6)


def _uoro_oracle(params, task, seed, steps, every, lr, keys):
    """UORO online training written out with `online_step`: the state goes on across
    the windows of a batch, its gradient and cost start again at each update."""
    optimizer = optax.sgd(lr, momentum=0.9)
    opt_state = optimizer.init(params)
    step = jax.jit(dj.online_step, static_argnames=("loss", "activation"))
    for s in range(steps):
        batch = task.sample(jax.random.fold_in(_data_key(seed), s), BATCH)
        scale = BATCH / jnp.sum(batch.mask)  # to the batch's mean loss per supervised step
        state = dj.online_init(params, BATCH, dj.UORO(), key=keys[s])
        for start in range(0, T, every):
            for t in range(start, min(start + every, T)):
                state, _ = step(
                    params,
                    state,
                    batch.inputs[t],
                    batch.targets[t],
                    mask=batch.mask[t],
                    loss=task.loss,
                )
            if jnp.any(batch.mask[start : start + every] != 0):
                grads = jax.tree.map(functools.partial(jnp.multiply, scale), state.gradient)
                change, opt_state = optimizer.update(grads, opt_state, params)
                params = optax.apply_updates(params, change)
            state = dataclasses.replace(
                state, gradient=jax.tree.map(jnp.zeros_like, state.gradient), cost=0.0 * state.cost
            )
    return params


def test_uoro_draws_fresh_signs_at_every_step_and_a_resumed_run_repeats_them(tmp_path, capsys):
    seed, every, lr = 3, 4, 0.5
    flags = [*TINY, "--method", "uoro", "--online", str(every), "--seed", str(seed)]
    flags += ["--optimizer", "sgd", "--lr", str(lr), "--clip", "0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*flags, "--steps", "2", "--out", str(whole)]) == 0
    assert main([*flags, "--steps", "1", "--out", str(parts)]) == 0
    assert main([*TINY, "--steps", "2", "--resume", "--out", str(parts)]) == 0
    trained, resumed = dj.load_run(whole), dj.load_run(parts)
    assert resumed.config == trained.config and resumed.metadata["step"] == 2
    jax.tree.map(np.testing.assert_array_equal, resumed.params, trained.params)
    jax.tree.map(np.testing.assert_array_equal, resumed.opt_state, trained.opt_state)
    # `--online` is part of the trajectory: a resumed run keeps the checkpoint's.
    capsys.readouterr()
    assert main([*TINY, "--steps", "3", "--online", "5", "--resume", "--out", str(parts)]) == 2
    assert "--online 5 given, 4 in the checkpoint" in _error_line(capsys)

    config = dataclasses.replace(trained.config, steps=2)
    start = dj.train(config, str(tmp_path / "start"), progress=False, stop_at=0).params
    task = dj.make_task("copy", 2)
    keys = [jax.random.fold_in(jax.random.key(seed), s) for s in range(2)]
    expected = _uoro_oracle(start, task, seed, 2, every, lr, keys)
    assert_trees_close(trained.params, expected, rtol=1e-5, atol=1e-6)
    # The signs of step 1 are not step 0's again: reusing its key trains elsewhere.
    reused = _uoro_oracle(start, task, seed, 2, every, lr, [keys[0], keys[0]])
    with pytest.raises(AssertionError):
        assert_trees_close(trained.params, reused, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            ["--method", "rflo", "--cell", "gru"],
            "--method rflo is a rule of elman cells, got --cell gru; use --cell elman, or "
            "--method snap1, snap2, uoro or rtrl for gru cells",
        ),
        (
            ["--online", "2"],
            "--online 2 needs a method that learns forward in time: --method rtrl, snap1, "
            "snap2, uoro or rflo; --method omega computes its gradient backward over the "
            "whole sequence",
        ),
        (["--method", "bptt", "--checkpoint", "4", "--online", "1"], "--method bptt computes"),
        (["--method", "rtrl", "--online", "0"], "--online must be >= 1, got 0"),
        (
            ["--method", "snap1", "--tau", "2"],
            "--tau is an option of --method rflo, not of --method snap1; drop --tau or use "
            "--method rflo",
        ),
        (["--method", "uoro", "--feedback", "random"], "--feedback is an option of --method rflo"),
        (["--method", "rflo", "--tau", "0.5"], "--tau must be a finite number >= 1, got 0.5"),
        (["--method", "snap2", "--truncation", "3"], "--truncation is an option of --method"),
    ],
)
def test_combinations_that_make_no_sense_exit_2_naming_the_flags(
    tmp_path, capsys, options, message
):
    assert main([*TINY, "--out", str(tmp_path / "out"), *options]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, warned",
    [
        (["--method", "snap2"], "--method snap2 with --hidden 256: its sensitivities (RTRL's"),
        (["--method", "snap1", "--online", "8"], "--method snap1 --online with --hidden 256"),
        (["--method", "snap1", "--cell", "gru"], "--method snap1 with --hidden 256"),
        (["--method", "snap1"], None),  # SnAp-1 of Elman layers: the sparse form
        (["--method", "uoro", "--online", "1"], None),
    ],
)
def test_snap_runs_that_keep_rtrls_sensitivities_are_announced(tmp_path, capsys, flags, warned):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    argv = ["train", "--hidden", "256", "--no-progress", "--out", str(blocker / "run")]
    assert main([*argv, *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("dprnn-jax: error: cannot write to --out")
    if warned is None:
        assert len(lines) == 1, lines
    else:
        assert len(lines) == 2 and lines[0].startswith(f"dprnn-jax: warning: {warned}"), lines
