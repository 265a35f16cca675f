"""The optax training step: it learns, every method gives the same update as autodiff,
clipping is optax's global-norm clip, and non-finite steps are skipped and counted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import RTOL, assert_trees_close, max_relative_error

import dprnn_jax as dj
from dprnn_jax import batch_metrics, init_rnn, make_eval_step, make_task, make_train_step, rnn_apply


@pytest.fixture(scope="module")
def charlm():
    return make_task("charlm", 16)


def _model(task, hidden=16, seed=0):
    return init_rnn(jax.random.key(seed), task.input_size, (hidden,), task.output_size)


def test_loss_decreases_on_held_out_text(charlm):
    params = _model(charlm, hidden=32)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = make_train_step(optimizer, loss=charlm.loss, method="omega")
    evaluate = make_eval_step(loss=charlm.loss)
    before = evaluate(params, charlm.validation)
    for s in range(40):
        batch = charlm.sample(jax.random.key(s), 32)
        params, opt_state, metrics = step(params, opt_state, batch)
        assert int(metrics.skipped) == 0
    after = evaluate(params, charlm.validation)
    # Uniform guessing over 96 characters is log 96 = 4.56 nats; character frequencies
    # alone bring it to ≈ 3.3. Forty Adam steps must at least learn those.
    assert float(before.loss) > 4.0
    assert float(after.loss) < 3.5
    assert float(after.accuracy) > float(before.accuracy)


def test_every_custom_method_gives_the_same_parameters_as_autodiff(charlm):
    # Plain SGD keeps the update linear in the gradient, so parameters agree to the
    # gradient's float32 tolerance (Adam's g/√v would amplify round-off near g = 0).
    optimizer = optax.sgd(0.5)
    batches = [charlm.sample(jax.random.key(s), 8) for s in range(3)]
    runs = {}
    for method in ("autodiff", "omega", "bptt"):
        params = _model(charlm)
        opt_state = optimizer.init(params)
        step = make_train_step(optimizer, loss=charlm.loss, method=method, max_grad_norm=None)
        losses = []
        for batch in batches:
            params, opt_state, metrics = step(params, opt_state, batch)
            losses.append(metrics.loss)
        runs[method] = (params, jnp.stack(losses))
    for method in ("omega", "bptt"):
        assert_trees_close(runs[method], runs["autodiff"], rtol=RTOL[jnp.dtype("float32")])
    # The parameters moved: the comparison is not between two initialisations.
    assert not np.allclose(runs["omega"][0].layers[0].S, _model(charlm).layers[0].S)


def test_clipping_is_global_norm_and_norm_is_reported_before_clipping(charlm):
    params = _model(charlm)
    optimizer = optax.sgd(1.0)
    step = make_train_step(optimizer, loss=charlm.loss, max_grad_norm=1e-3)
    batch = charlm.sample(jax.random.key(0), 8)
    new_params, _, metrics = step(params, optimizer.init(params), batch)
    grads = jax.jit(jax.grad(lambda p: batch_metrics(p, batch, loss=charlm.loss).loss))(params)
    grads = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads)]
    np.testing.assert_allclose(
        metrics.grad_norm, np.sqrt(sum(np.sum(g**2) for g in grads)), rtol=1e-5
    )
    assert float(metrics.grad_norm) > 1e-3
    moved = [
        np.asarray(n, np.float64) - o
        for n, o in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), strict=True)
    ]
    np.testing.assert_allclose(np.sqrt(sum(np.sum(m**2) for m in moved)), 1e-3, rtol=1e-3)


def test_non_finite_steps_are_skipped_and_counted(charlm):
    params = _model(charlm)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = make_train_step(optimizer, loss=charlm.loss)
    batch = charlm.sample(jax.random.key(0), 8)
    for bad in (jnp.nan, jnp.inf):
        poisoned = batch._replace(inputs=batch.inputs.at[3, 1, 5].set(bad))
        kept_params, kept_state, metrics = step(params, opt_state, poisoned)
        assert int(metrics.skipped) == 1
        assert not np.isfinite(float(metrics.grad_norm))
        # Bitwise unchanged: parameters and Adam's moments and count.
        for kept, old in zip(
            jax.tree.leaves((kept_params, kept_state)),
            jax.tree.leaves((params, opt_state)),
            strict=True,
        ):
            np.testing.assert_array_equal(kept, old)
    new_params, new_state, metrics = step(params, opt_state, batch)
    assert int(metrics.skipped) == 0
    assert int(new_state[0].count) == 1
    assert not np.array_equal(new_params.layers[0].W, params.layers[0].W)


def test_many_to_one_loss_uses_only_the_masked_step():
    task = make_task("adding", 6)
    params = init_rnn(jax.random.key(1), 2, (8,), 1)
    batch = task.sample(jax.random.key(0), 5)
    metrics, outputs = jax.jit(
        lambda p, b: (batch_metrics(p, b, loss="mse"), rnn_apply(p, b.inputs))
    )(params, batch)
    last = outputs[-1, :, 0]
    expected = 0.5 * jnp.mean((last - batch.targets[-1, :, 0]) ** 2)
    np.testing.assert_allclose(metrics.loss, expected, rtol=1e-6)
    # Within 0.04 counts as a hit; the two forward passes may round differently, so a
    # value at the threshold may fall either way.
    error = np.abs(np.asarray(last - batch.targets[-1, :, 0]))
    assert np.mean(error < 0.04 - 1e-6) <= float(metrics.accuracy) <= np.mean(error < 0.04 + 1e-6)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        make_train_step(optax.sgd(0.1), loss="mse", method="magic")
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        make_train_step(optax.sgd(0.1), loss="mse", max_grad_norm=0.0)


def test_train_config_takes_an_algorithm_or_its_name_and_its_options_reach_training(tmp_path):
    assert dj.TrainConfig().method == dj.TrainConfig(method="omega").method == dj.Omega()
    assert dj.TrainConfig(method="bptt").method == dj.BPTT()
    with pytest.raises(ValueError, match="method must be one of"):
        dj.TrainConfig(method="magic")
    options = dict(task="adding", seq_len=6, hidden_size=4, batch_size=4, steps=2, eval_every=2)
    params = {
        name: dj.train(
            dj.TrainConfig(method=method, learning_rate=0.1, **options),
            str(tmp_path / name),
            progress=False,
            log=lambda _: None,
        ).params
        for name, method in [("truncated", dj.Omega(truncation=1)), ("exact", "omega")]
    }
    # Two programs from the same start on the same batches: had the option been dropped,
    # they would be the same program and agree bitwise; a K = 1 truncation of a T = 6
    # many-to-one task drops most of the gradient, so the parameters differ far beyond
    # round-off.
    assert max_relative_error(params["truncated"], params["exact"]) > 1e-3
