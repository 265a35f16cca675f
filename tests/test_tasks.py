"""The bundled tasks: shapes, masks, determinism, the held-out split, and no network."""

from __future__ import annotations

import socket
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dprnn_jax import bundled_text, init_rnn, make_task, rnn_apply, sample_text

# The copy task's documented shape: 10 symbols from 8 letters, a delay, a delimiter.
COPY_SYMBOLS = 10
VOCABULARY = make_task("charlm", 16).vocabulary


def decode(ids) -> str:
    return "".join(VOCABULARY[int(i)] for i in np.asarray(ids).ravel())


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: data must ship with the code."""

    def refuse(*args, **kwargs):
        raise AssertionError("a task tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tasks():
    yield "charlm", 16, (16, len(VOCABULARY), len(VOCABULARY))
    yield "adding", 12, (12, 2, 1)
    yield "copy", 3, (3 + 2 * COPY_SYMBOLS, 10, 10)
    yield "digits", 8, (8, 8, 10)
    yield "digits", 64, (64, 1, 10)


@pytest.mark.parametrize("name, seq_len, sizes", list(_tasks()))
def test_shapes_masks_and_determinism(no_network, name, seq_len, sizes):
    if name == "digits":
        pytest.importorskip("sklearn")
    T, n, k = sizes
    task = make_task(name, seq_len)
    assert (task.input_size, task.output_size, task.seq_len) == (n, k, T)
    sample = jax.jit(task.sample, static_argnums=1)
    batch = sample(jax.random.key(3), 6)
    assert batch.inputs.shape == (T, 6, n) and batch.inputs.dtype == jnp.float32
    assert batch.mask.shape == (T, 6)
    if task.loss == "mse":
        assert batch.targets.shape == (T, 6, k) and batch.targets.dtype == jnp.float32
    else:
        assert batch.targets.shape == (T, 6) and batch.targets.dtype == jnp.int32
        assert int(batch.targets.min()) >= 0 and int(batch.targets.max()) < k
    supervised = {"charlm": T, "adding": 1, "digits": 1, "copy": COPY_SYMBOLS}[name]
    np.testing.assert_array_equal(batch.mask.sum(axis=0), supervised)
    # The batch is a function of the key alone.
    again = sample(jax.random.key(3), 6)
    for a, b in zip(batch, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = sample(jax.random.key(4), 6)
    assert not np.array_equal(batch.inputs, other.inputs)
    # The held-out set is fixed: a second, uncached build gives the same arrays.
    assert task.validation.inputs.shape[0] == T
    rebuilt = make_task.__wrapped__(name, seq_len)
    for a, b in zip(rebuilt.validation, task.validation, strict=True):
        np.testing.assert_array_equal(a, b)


def test_adding_target_is_the_sum_of_the_two_marked_values():
    task = make_task("adding", 10)
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 64)
    values, markers = batch.inputs[..., 0], batch.inputs[..., 1]
    np.testing.assert_array_equal(markers[:5].sum(axis=0), 1)  # one in each half
    np.testing.assert_array_equal(markers[5:].sum(axis=0), 1)
    np.testing.assert_allclose(batch.targets[-1, :, 0], (values * markers).sum(axis=0), rtol=1e-6)


def test_copy_targets_repeat_the_first_symbols_after_the_delimiter():
    delay = 4
    task = make_task("copy", delay)
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 16)
    tokens = batch.inputs.argmax(-1)
    np.testing.assert_array_equal(batch.targets[-COPY_SYMBOLS:], tokens[:COPY_SYMBOLS])
    assert set(np.unique(tokens[:COPY_SYMBOLS])) <= set(range(1, 9))
    np.testing.assert_array_equal(tokens[COPY_SYMBOLS + delay - 1], 9)  # the delimiter
    np.testing.assert_array_equal(batch.mask[:-COPY_SYMBOLS], 0)


def test_charlm_text_split_and_windows():
    text = bundled_text()
    # Characters outside the vocabulary were mapped to "?".
    assert len(text) > 300_000 and set(text) <= set(VOCABULARY) and "?" in VOCABULARY
    task = make_task("charlm", 32)
    batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(0), 4)
    window = decode(batch.inputs[:, 0].argmax(-1))
    assert window in text
    # Targets are the inputs shifted by one character.
    np.testing.assert_array_equal(batch.targets[:-1], batch.inputs[1:].argmax(-1))
    # Validation windows come from the last 10 % of the text only.
    first = decode(task.validation.inputs[:, 0].argmax(-1))
    assert text.find(first) >= int(0.9 * len(text)) - 1


def test_sample_text_is_deterministic_and_validates():
    params = init_rnn(jax.random.key(0), len(VOCABULARY), (8, 8), len(VOCABULARY))
    one = sample_text(params, "def ", 20, jax.random.key(1))
    assert one.startswith("def ") and len(one) == 24
    assert one == sample_text(params, "def ", 20, jax.random.key(1))
    with pytest.raises(ValueError, match="prompt"):
        sample_text(params, "", 20, jax.random.key(1))
    with pytest.raises(ValueError, match="temperature"):
        sample_text(params, "a", 20, jax.random.key(1), temperature=0.0)


@pytest.mark.parametrize("cells", [("elman", "elman"), ("gru", "lstm")], ids="-".join)
def test_greedy_sampling_follows_the_networks_own_forward(cells):
    """At a tiny temperature each drawn character is the argmax of `rnn_apply` on the
    text so far: generation runs every cell exactly as the network does."""
    V = len(VOCABULARY)
    params = init_rnn(jax.random.key(2), V, (8, 8), V, cell=cells)
    # Logits far apart, so that the argmax is not decided by rounding.
    params = params._replace(readout=params.readout._replace(W=40 * params.readout.W))
    text = sample_text(params, "for ", 6, jax.random.key(3), temperature=1e-6)
    forward = jax.jit(rnn_apply)
    for end in range(4, len(text)):
        ids = jnp.asarray([VOCABULARY.index(c) for c in text[:end]])
        logits = forward(params, jax.nn.one_hot(ids[:, None], V))[-1, 0]
        assert VOCABULARY[int(jnp.argmax(logits))] == text[end], (end, text)
    bidirectional = init_rnn(jax.random.key(2), V, (8,), V, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        sample_text(bidirectional, "a", 2, jax.random.key(1))
    with pytest.raises(ValueError, match="96 inputs and outputs"):
        sample_text(init_rnn(jax.random.key(2), 5, (8,), V), "a", 2, jax.random.key(1))


def test_bad_task_options():
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("imagenet")
    with pytest.raises(ValueError, match="must be 8 .* or 64"):
        make_task("digits", 16)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        make_task("adding", 0)


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'dprnn_jax\[digits\]'"):
        make_task("digits")


def test_chance_levels_are_the_losses_of_predictions_that_ignore_the_inputs():
    # charlm: every character predicted with its frequency in the training text (the
    # first 90 %), counted here by hand.
    text = bundled_text()
    counts = np.array(list(Counter(text[: int(len(text) * 0.9)]).values()), np.float64)
    p = counts / counts.sum()
    assert make_task("charlm").chance_level == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    # adding: predicting the mean 1 scores ½·E[(y − 1)²] = 1/12; the held-out targets agree.
    adding = make_task("adding", 10)
    targets = np.asarray(adding.validation.targets[-1, :, 0], np.float64)
    assert adding.chance_level == pytest.approx(1 / 12, rel=1e-12)
    assert 0.5 * np.mean((targets - 1) ** 2) == pytest.approx(adding.chance_level, rel=0.1)
    # copy: 8 equally likely letters at each recall step.
    assert make_task("copy", 3).chance_level == pytest.approx(np.log(8), rel=1e-12)
