"""One shape for the API: `mask` and `lengths` are keyword-only everywhere, every layer
function (Elman, GRU, LSTM, bidirectional) takes `lengths=`, `init_rnn` builds bidirectional stacks, `count_products`
takes algorithm objects, and the scale of `sequence_loss` is chosen by `reduction=`."""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CHEAP_COMPILE, random_inputs

import dprnn_jax as dj

T, M, N, D, K = 6, 3, 2, 4, 3
LENGTHS = (6, 3, 0)
NAMESPACES = (dj, dj.backward, dj.diagnostics, dj.training, dj.interop)


def _public_functions():
    for namespace in NAMESPACES:
        for name in namespace.__all__:
            obj = getattr(namespace, name)
            if inspect.isfunction(obj):
                yield f"{namespace.__name__}.{name}", obj


def test_mask_and_lengths_are_keyword_only_everywhere():
    positional = [
        f"{name}({parameter})"
        for name, function in _public_functions()
        for parameter, spec in inspect.signature(function).parameters.items()
        if parameter in ("mask", "lengths") and spec.kind is not inspect.Parameter.KEYWORD_ONLY
    ]
    assert not positional, f"mask/lengths must be keyword-only: {positional}"


def test_every_layer_function_takes_lengths():
    # scan_layer is the plain lax.scan reference of one Elman layer (no custom backward).
    layers = [dj.rnn_layer, dj.gru_layer, dj.lstm_layer, dj.bidirectional_layer]
    for function in layers:
        spec = inspect.signature(function).parameters.get("lengths")
        assert spec is not None and spec.kind is inspect.Parameter.KEYWORD_ONLY, function
    named = {name for name in dj.__all__ if name.endswith("_layer") and "init" not in name}
    assert named == {f.__name__ for f in layers} | {"scan_layer"}


def test_a_positional_mask_or_lengths_is_a_type_error():
    params = dj.init_rnn(jax.random.key(0), N, (D,), K)
    xs, targets = jnp.ones((T, M, N)), jnp.zeros((T, M), jnp.int32)
    mask, lengths = jnp.ones((T, M)), jnp.asarray(LENGTHS)
    outputs = dj.rnn_apply(params, xs)
    calls = {
        "sequence_loss": lambda: dj.sequence_loss(params, xs, targets, mask),
        "many_to_one_loss": lambda: dj.many_to_one_loss(params, xs, targets[0], lengths),
        "per_step_losses": lambda: dj.per_step_losses(outputs, targets, mask),
        "gradient_flow": lambda: dj.gradient_flow(params, xs, targets, mask),
        "rtrl_gradient": lambda: dj.rtrl_gradient(params, xs, targets, mask),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"{name}\\(\\) takes .* positional argument"):
            call()
    # The keywords work.
    assert np.isfinite(dj.sequence_loss(params, xs, targets, mask=mask))
    assert np.isfinite(dj.many_to_one_loss(params, xs, targets[0], lengths=jnp.full(M, T)))


def test_rnn_layer_takes_lengths_like_rnn_forward(x64):
    params = dj.init_rnn(jax.random.key(0), N, (D,), K, dtype=jnp.float64)
    layer = params.layers[0]
    xs = jax.random.normal(jax.random.key(1), (T, M, N), jnp.float64)
    lengths = jnp.asarray(LENGTHS)
    valid = np.arange(T)[:, None] < np.asarray(LENGTHS)[None, :]
    poisoned = jnp.where(valid[..., None], xs, jnp.nan)
    hs = jax.jit(dj.rnn_layer)(layer, poisoned, lengths=lengths)
    assert np.all(np.isfinite(hs))  # NaN padding reaches nothing
    # The valid steps are those of each sequence run alone.
    for v, L in enumerate(LENGTHS):
        if L:
            alone = dj.rnn_layer(layer, xs[:L, v : v + 1])
            np.testing.assert_allclose(hs[:L, v : v + 1], alone, rtol=1e-12)
    # The states are exactly what rnn_forward runs, and its final state is hs[L − 1]
    # (h0 = 0 for an empty sequence), not hs[-1].
    final = dj.rnn_forward(params, poisoned, lengths=lengths).final_states[0]
    expected = [hs[L - 1, v] if L else jnp.zeros(D) for v, L in enumerate(LENGTHS)]
    np.testing.assert_allclose(final, jnp.stack(expected), rtol=1e-12)
    # Past each length the layer runs on over zero inputs.
    zeroed = dj.rnn_layer(layer, jnp.where(valid[..., None], xs, 0.0))
    np.testing.assert_allclose(hs, zeroed, rtol=1e-12)
    # The gradient never sees the padding either.
    grads = jax.grad(lambda p: dj.rnn_layer(p, poisoned, lengths=lengths)[valid].sum())(layer)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="lengths must lie in"):
        dj.rnn_layer(layer, xs, lengths=jnp.array([1, 2, T + 1]))


def test_init_rnn_builds_bidirectional_stacks():
    params = dj.init_rnn(jax.random.key(0), N, (D, D + 1), K, bidirectional=True)
    assert all(isinstance(layer, dj.BidirectionalParams) for layer in params.layers)
    assert params.layers[0].forward.W.shape == (D, N)
    assert params.layers[1].backward.W.shape == (D + 1, 2 * D)
    assert params.readout.W.shape == (K, 2 * (D + 1))
    xs = jnp.ones((T, M, N))
    assert dj.rnn_apply(params, xs, lengths=jnp.asarray(LENGTHS)).shape == (T, M, K)
    mixed = dj.init_rnn(jax.random.key(0), N, (D, D), K, bidirectional=(False, True))
    assert isinstance(mixed.layers[0], dj.LayerParams)
    assert isinstance(mixed.layers[1], dj.BidirectionalParams)
    # Unidirectional stacks are exactly as before.
    plain = dj.init_rnn(jax.random.key(0), N, (D, D), K)
    same = dj.init_rnn(jax.random.key(0), N, (D, D), K, bidirectional=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), plain, same))
    with pytest.raises(ValueError, match="one bool per layer"):
        dj.init_rnn(jax.random.key(0), N, (D, D), K, bidirectional=(True,))


def test_count_products_takes_algorithm_objects():
    for algorithm in (dj.Omega(block=4), dj.BPTT(truncation=3), dj.Omega(truncation=5)):
        count = dj.count_products(algorithm, 16)
        assert count.method == str(algorithm)
        assert count.useful == count.closed_form == dj.closed_form_products(algorithm, 16)
    assert dj.count_products(dj.Omega(), 8) == dj.count_products("omega", 8)._replace(
        method="Omega()"
    )


@pytest.mark.parametrize("method", [dj.Omega(), dj.BPTT(checkpoint=2)])
def test_sequence_loss_reduction_sums_over_steps_or_averages_per_supervised_step(x64, method):
    params = dj.init_rnn(jax.random.key(0), N, (D,), K, dtype=jnp.float64)
    xs = random_inputs(1, (T, M, N), jnp.float64)
    targets = jnp.asarray(np.random.default_rng(2).integers(0, K, (T, M)))
    mask = jnp.asarray((np.arange(T)[:, None] < np.asarray(LENGTHS)).astype(np.float64))
    cases = (
        ({}, jnp.ones((T, M))),
        ({"mask": mask}, mask),
        ({"lengths": jnp.asarray(LENGTHS)}, mask),
    )

    @functools.partial(jax.jit, compiler_options=CHEAP_COMPILE)
    def losses_and_gradients(params):
        by_hand = dj.per_step_losses(
            dj.rnn_apply(params, xs), targets, loss="softmax_cross_entropy"
        )
        results = []
        for where, weights in cases:
            options = dict(method=method, **where)
            mean_options = dict(reduction="mean", **options)
            results.append(
                {
                    "total": jnp.sum(by_hand * weights),
                    "summed": dj.sequence_loss(params, xs, targets, **options),
                    "mean": dj.sequence_loss(params, xs, targets, **mean_options),
                    "default": dj.sequence_loss(
                        params, xs, targets, reduction="sum_over_steps", **options
                    ),
                    "grad_sum": jax.grad(dj.sequence_loss)(params, xs, targets, **options),
                    "grad_mean": jax.grad(dj.sequence_loss)(params, xs, targets, **mean_options),
                }
            )
        return results

    for (_, weights), got in zip(cases, losses_and_gradients(params), strict=True):
        np.testing.assert_allclose(got["summed"], got["total"] / M, rtol=1e-12)
        np.testing.assert_allclose(got["default"], got["summed"], rtol=0)  # the same program
        np.testing.assert_allclose(got["mean"], got["total"] / jnp.sum(weights), rtol=1e-12)
        # Same minimiser: the gradients differ by the constant Σ mask / m only.
        scale = jnp.sum(weights) / M
        for a, b in zip(jax.tree.leaves(got["grad_sum"]), jax.tree.leaves(got["grad_mean"])):
            np.testing.assert_allclose(a, scale * b, rtol=1e-10, atol=1e-14)


def test_the_mean_reduction_is_the_loss_that_training_reports():
    task = dj.make_task("copy", 12)
    batch = task.sample(jax.random.key(0), 4)
    params = dj.init_rnn(jax.random.key(1), task.input_size, (8,), task.output_size)
    reported = dj.batch_metrics(params, batch, loss=task.loss).loss
    mean = dj.sequence_loss(
        params, batch.inputs, batch.targets, mask=batch.mask, loss=task.loss, reduction="mean"
    )
    np.testing.assert_allclose(mean, reported, rtol=1e-6)
    summed = dj.sequence_loss(params, batch.inputs, batch.targets, mask=batch.mask, loss=task.loss)
    np.testing.assert_allclose(summed, mean * jnp.sum(batch.mask != 0) / 4, rtol=1e-6)
    with pytest.raises(ValueError, match="reduction must be one of"):
        dj.sequence_loss(params, batch.inputs, batch.targets, reduction="sum")


def _own_docstring(obj) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    return doc or ""


def test_every_public_name_has_a_runnable_example():
    import sys

    missing = []
    for namespace in NAMESPACES:
        for name in namespace.__all__:
            obj = getattr(namespace, name)
            if inspect.ismodule(obj):
                continue
            if inspect.isclass(obj) or callable(obj):
                doc = _own_docstring(obj)
                example = doc.split("Example:", 1)[1] if "Example:" in doc else ""
                if ">>> " not in example:
                    missing.append(f"{namespace.__name__}.{name}")
                continue
            # A constant (a dict or a tuple) cannot carry a docstring: the module that
            # defines it shows it in an example of its own docstring.
            homes = [
                module
                for module_name, module in sorted(sys.modules.items())
                if module_name.startswith("dprnn_jax._")
                and getattr(module, name, None) is obj
                and any(
                    line.strip().startswith(">>> ") and name in line
                    for line in (module.__doc__ or "").splitlines()
                )
            ]
            if not homes:
                missing.append(f"{namespace.__name__}.{name} (constant)")
    assert not missing, f"public names without a runnable Example: section: {missing}"


def test_the_test_command_runs_the_examples():
    import pathlib
    import tomllib

    root = pathlib.Path(dj.__file__).parent.parent
    options = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]
    assert "dprnn_jax" in options["ini_options"]["testpaths"]
    assert "--doctest-modules" in options["ini_options"]["addopts"]
    readme = (root / "README.md").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -n 2\n' in readme


def test_every_module_imports_cleanly_without_side_effects():
    import importlib
    import pkgutil

    names = [
        module.name
        for module in pkgutil.walk_packages(dj.__path__, prefix="dprnn_jax.")
        if not module.name.endswith("__main__")  # `python -m dprnn_jax` runs the main job
    ]
    assert "dprnn_jax._diagnostics.plotting" in names and "dprnn_jax._app.cli" in names
    for name in names:
        importlib.import_module(name)
