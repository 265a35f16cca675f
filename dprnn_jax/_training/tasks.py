"""Training tasks and their data: nothing is downloaded, every batch is a pure function
of a PRNG key.

* `"charlm"`: next-character prediction on the `pydoc_data` topics text that ships with
  every CPython (≈ 465 000 characters of Python documentation), many-to-many.
* `"digits"`: scikit-learn's bundled 8×8 handwritten digits read row by row (T = 8) or
  pixel by pixel (T = 64), many-to-one (optional extra: `pip install dprnn_jax[digits]`).
* `"adding"`: the adding problem (Hochreiter & Schmidhuber 1997), many-to-one regression.
* `"copy"`: the copy-memory task (Arjovsky et al. 2016): recall 10 symbols after a delay.

Every batch is time-major and carries a `(T, m)` mask of supervised steps, so a
many-to-one task is a many-to-many task whose mask selects the last step: the masked
steps inject zero error and the gradient stays exact (docs/theory.md#lengths-and-bidirectional).

`TASKS` names them:

    >>> TASKS
    ('charlm', 'digits', 'adding', 'copy')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._algorithms.registry import resolve_method
from .._core.validation import check_choice, check_positive_int
from .._model.bidirectional import BidirectionalParams
from .._model.layer_kinds import hidden_size, kind_of, run_recurrent_layer
from .._model.network import check_rnn_params

# Every held-out set is drawn from this fixed seed, whatever the training seed, so that
# validation numbers of different runs are comparable.
VALIDATION_SEED = 20_161_001


class Batch(NamedTuple):
    """Time-major inputs (T, m, n), targets (T, m) or (T, m, k) and a (T, m) 0/1 loss mask.

    Example:
        >>> batch = Batch(jnp.ones((4, 2, 3)), jnp.zeros((4, 2), jnp.int32), jnp.ones((4, 2)))
        >>> batch.inputs.shape, batch.mask.shape
        ((4, 2, 3), (4, 2))
    """

    inputs: jax.Array
    targets: jax.Array
    mask: jax.Array


class Task(NamedTuple):
    """A task: model sizes, loss, a pure batch sampler `sample(key, m)` and a held-out set.

    `chance_level` is the loss per supervised step of the best prediction that ignores the
    inputs: the entropy of the training targets' frequencies for a classification task
    (charlm: its characters' frequencies; digits: its labels'; copy: log 8), ½·Var(y) =
    1/12 for the adding problem. A model that learns anything ends below it; the loss
    curves draw it, and training calls a run diverged far above it (see `train`).

    Example:
        >>> task = make_task("adding", 8)
        >>> task.input_size, task.output_size, task.loss, task.validation.inputs.shape
        (2, 1, 'mse', (8, 1000, 2))
        >>> round(task.chance_level, 4), round(make_task("copy").chance_level, 4)  # log 8
        (0.0833, 2.0794)
    """

    name: str
    input_size: int
    output_size: int
    seq_len: int
    loss: str
    sample: Callable[[jax.Array, int], Batch]
    validation: Batch
    vocabulary: str | None
    chance_level: float | None = None


def entropy_of_frequencies(labels: np.ndarray) -> float:
    """The entropy (nats) of the empirical distribution of integer `labels`: the cross-
    entropy of predicting each class with its frequency, whatever the inputs."""
    counts = np.bincount(np.asarray(labels).ravel())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------------------
# Character-level language model on the pydoc_data text.

# A fixed alphabet (newline and printable ASCII) so that a model trained on one Python
# version's text can be used with another's: the topics text changes between releases,
# the alphabet does not.
VOCABULARY = "\n" + "".join(chr(c) for c in range(32, 127))
_UNKNOWN = "?"
_TRANSLATIONS = str.maketrans(
    {"“": '"', "”": '"', "‘": "'", "’": "'", "—": "-", "–": "-", "…": "...", "\t": "    "}
)


def bundled_text() -> str:
    """The English text of CPython's `pydoc_data.topics` (help() topics), concatenated in
    sorted topic order, mapped onto `VOCABULARY` (other characters become '?').

    Example:
        >>> len(bundled_text()) > 100_000
        True
    """
    from pydoc_data.topics import topics

    text = "".join(topics[name] for name in sorted(topics)).translate(_TRANSLATIONS)
    known = set(VOCABULARY)
    return "".join(c if c in known else _UNKNOWN for c in text)


def encode(text: str) -> np.ndarray:
    """Characters to indices into `VOCABULARY` (unknown characters map to '?'), uint8."""
    index = {c: i for i, c in enumerate(VOCABULARY)}
    unknown = index[_UNKNOWN]
    return np.fromiter((index.get(c, unknown) for c in text), np.uint8, len(text))


def decode(ids) -> str:
    """Indices into `VOCABULARY` back to text."""
    return "".join(VOCABULARY[int(i)] for i in np.asarray(ids).ravel())


def one_hot_sequence(ids: jax.Array, size: int) -> jax.Array:
    """(m, T) integer ids to time-major one-hot inputs (T, m, size), float32."""
    return jax.nn.one_hot(ids.T, size, dtype=jnp.float32)


def _charlm(seq_len: int, validation_fraction: float = 0.1, max_validation: int = 256) -> Task:
    ids = encode(bundled_text())
    # A contiguous split (the last 10 % of the topics) so no validation window overlaps a
    # training window.
    split = int(len(ids) * (1 - validation_fraction))
    train, held_out = jnp.asarray(ids[:split]), ids[split:]
    V = len(VOCABULARY)

    def windows_to_batch(windows: jax.Array) -> Batch:
        windows = windows.astype(jnp.int32)
        inputs = one_hot_sequence(windows[:, :-1], V)
        targets = windows[:, 1:].T
        return Batch(inputs, targets, jnp.ones(targets.shape, jnp.float32))

    def sample(key: jax.Array, batch_size: int) -> Batch:
        starts = jax.random.randint(key, (batch_size, 1), 0, len(train) - seq_len)
        return windows_to_batch(train[starts + jnp.arange(seq_len + 1)])

    count = min((len(held_out) - 1) // seq_len, max_validation)
    if count < 1:
        raise ValueError(f"seq_len={seq_len} is longer than the validation text.")
    starts = np.arange(count)[:, None] * seq_len
    validation = windows_to_batch(jnp.asarray(held_out[starts + np.arange(seq_len + 1)]))
    chance = entropy_of_frequencies(ids[:split])
    return Task(
        "charlm", V, V, seq_len, "softmax_cross_entropy", sample, validation, VOCABULARY, chance
    )


def sample_text(
    params,
    prompt: str,
    length: int,
    key: jax.Array,
    *,
    activation: str = "tanh",
    temperature: float = 1.0,
) -> str:
    """Generates `length` characters after `prompt` with a trained char-level model.

    The prompt is fed one character at a time through every layer (Elman, GRU or LSTM,
    each as the network runs it), then each next character is drawn from
    softmax(logits / temperature) and fed back.

    Args:
        params: `RNNParams` of a model trained on the `"charlm"` task (unidirectional
            layers of any cell).
        prompt: the opening text (at least one character); characters outside
            `VOCABULARY` are read as '?'.
        length: how many characters to generate.
        key: a PRNG key.
        activation: the model's recurrent activation.
        temperature: > 0; lower is more conservative, 0 is not allowed (use a small value).

    Returns:
        The prompt followed by the generated text.

    Raises:
        ValueError: empty prompt, `length` < 1 or `temperature` <= 0; a bidirectional
            layer; a model without the task's 96 inputs and outputs.

    Example:
        >>> params = init_rnn(jax.random.key(0), 96, (8,), 96)  # charlm's 96 characters
        >>> text = sample_text(params, "The ", 5, jax.random.key(0))  # an untrained model
        >>> text[:4], len(text)
        ('The ', 9)
    """
    if not prompt:
        raise ValueError("prompt must hold at least one character, got ''.")
    check_rnn_params(params)
    for l, layer in enumerate(params.layers):
        if isinstance(layer, BidirectionalParams):
            raise ValueError(
                f"params.layers[{l}] is bidirectional: text is generated one character at "
                "a time, and a backward direction would need the characters still to come."
            )
    V = len(VOCABULARY)
    if params.layers[0].W.shape[1] != V or params.readout.W.shape[0] != V:
        raise ValueError(
            f"sample_text needs a model of the charlm task, with {V} inputs and outputs (its "
            f"characters); got {params.layers[0].W.shape[1]} inputs and "
            f"{params.readout.W.shape[0]} outputs."
        )
    check_positive_int("length", length)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    prompt_ids = jnp.asarray(encode(prompt), jnp.int32)
    tokens = _generate(params, prompt_ids, key, temperature, length=length, activation=activation)
    return prompt + decode(tokens)


def _char_step(params, states, token, activation):
    """Feeds one character through every layer (Elman, GRU or LSTM, each as the network
    runs it, on a sequence of one step); returns the new states and the logits."""
    x = jax.nn.one_hot(token[None, None], len(VOCABULARY), dtype=params.readout.W.dtype)
    autodiff = resolve_method("autodiff")
    new_states = []
    for layer, state in zip(params.layers, states, strict=True):
        x, state = run_recurrent_layer(
            layer, x, state, lengths=None, activation=activation, method=autodiff
        )
        new_states.append(state)
    return tuple(new_states), (x[0] @ params.readout.W.T + params.readout.b)[0]


def _zero_state(layer):
    """A batch of one's initial state: h, or the pair (h, c) of an LSTM."""
    h = jnp.zeros((1, hidden_size(layer)), layer.W.dtype)
    return (h, h) if kind_of(layer).paired_state else h


@functools.partial(jax.jit, static_argnames=("length", "activation"))
def _generate(params, prompt_ids, key, temperature, *, length, activation):
    states = tuple(_zero_state(layer) for layer in params.layers)
    states, logits = jax.lax.scan(
        lambda states, token: _char_step(params, states, token, activation), states, prompt_ids
    )

    def draw(carry, key):
        states, logits = carry
        token = jax.random.categorical(key, logits / temperature)
        return _char_step(params, states, token, activation), token

    _, tokens = jax.lax.scan(draw, (states, logits[-1]), jax.random.split(key, length))
    return tokens


# ---------------------------------------------------------------------------------------
# scikit-learn's digits, many-to-one.


def _last_step_mask(T: int, m: int) -> jax.Array:
    return jnp.zeros((T, m), jnp.float32).at[-1].set(1.0)


def load_digits_sequences(seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as sequences (N, T, n) in [0, 1]: rows (T = 8) or pixels (T = 64).

    Raises:
        ImportError: scikit-learn is not installed (with the command that installs it).
        ValueError: `seq_len` is not 8 or 64.
    """
    if seq_len not in (8, 64):
        raise ValueError(
            f"seq_len for the digits task must be 8 (row by row) or 64 (pixel by pixel), "
            f"got {seq_len}."
        )
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits task needs scikit-learn (its 8x8 digits ship inside the package): "
            "pip install 'dprnn_jax[digits]'"
        ) from error
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    return images.reshape(len(images), seq_len, 64 // seq_len), data.target.astype(np.int32)


def _digits(seq_len: int, validation_size: int = 360) -> Task:
    images, labels = load_digits_sequences(seq_len)
    # A fixed shuffle before the split: the bundled file is ordered by writer.
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(images))
    train_idx, val_idx = order[validation_size:], order[:validation_size]
    train_x, train_y = jnp.asarray(images[train_idx]), jnp.asarray(labels[train_idx])

    def to_batch(x: jax.Array, y: jax.Array) -> Batch:
        T, m = x.shape[1], x.shape[0]
        # The label is repeated at every step but only the last step is supervised.
        return Batch(jnp.swapaxes(x, 0, 1), jnp.broadcast_to(y, (T, m)), _last_step_mask(T, m))

    def sample(key: jax.Array, batch_size: int) -> Batch:
        idx = jax.random.randint(key, (batch_size,), 0, len(train_idx))
        return to_batch(train_x[idx], train_y[idx])

    validation = to_batch(jnp.asarray(images[val_idx]), jnp.asarray(labels[val_idx]))
    n = images.shape[-1]
    chance = entropy_of_frequencies(labels[train_idx])
    return Task("digits", n, 10, seq_len, "softmax_cross_entropy", sample, validation, None, chance)


# ---------------------------------------------------------------------------------------
# The synthetic long-range benchmarks.


def _adding(seq_len: int, validation_size: int = 1000) -> Task:
    """Inputs (value ~ U[0, 1], marker ∈ {0, 1}); one marker in each half of the sequence;
    the target at the last step is the sum of the two marked values. Predicting the mean
    (1) gives a loss ½·E[(y − 1)²] = 1/12 ≈ 0.0833: the bar a model must beat."""
    if seq_len < 2:
        raise ValueError(f"seq_len for the adding task must be >= 2, got {seq_len}.")
    T, half = seq_len, seq_len // 2

    def sample(key: jax.Array, batch_size: int) -> Batch:
        k_values, k_first, k_second = jax.random.split(key, 3)
        values = jax.random.uniform(k_values, (T, batch_size))
        first = jax.random.randint(k_first, (batch_size,), 0, half)
        second = jax.random.randint(k_second, (batch_size,), half, T)
        steps = jnp.arange(T)[:, None]
        markers = ((steps == first) | (steps == second)).astype(jnp.float32)
        total = jnp.sum(values * markers, axis=0)
        inputs = jnp.stack([values, markers], axis=-1)
        targets = jnp.broadcast_to(total[None, :, None], (T, batch_size, 1))
        return Batch(inputs, targets, _last_step_mask(T, batch_size))

    validation = jax.jit(sample, static_argnums=1)(jax.random.key(VALIDATION_SEED), validation_size)
    # ½·E[(y − E y)²] with y the sum of two U[0, 1] values: ½ · 2/12.
    return Task("adding", 2, 1, seq_len, "mse", sample, validation, None, 1 / 12)


COPY_SYMBOLS = 10  # symbols to remember, drawn from the 8 letters 1..8
_BLANK, _DELIMITER = 0, 9


def _copy(delay: int, validation_size: int = 1000) -> Task:
    """10 symbols from {1..8}, `delay` − 1 blanks, a delimiter, then 10 blanks during which
    the model must output the symbols; total length delay + 20. Only the 10 recall steps
    are supervised, so guessing scores log 8 ≈ 2.079 nats and 1/8 accuracy."""
    if delay < 1:
        raise ValueError(f"seq_len (the delay) for the copy task must be >= 1, got {delay}.")
    T = delay + 2 * COPY_SYMBOLS

    def sample(key: jax.Array, batch_size: int) -> Batch:
        symbols = jax.random.randint(key, (COPY_SYMBOLS, batch_size), 1, 9)
        blanks = jnp.full((T - 2 * COPY_SYMBOLS, batch_size), _BLANK)
        tail = jnp.full((COPY_SYMBOLS, batch_size), _BLANK)
        inputs = (
            jnp.concatenate([symbols, blanks, tail]).at[delay + COPY_SYMBOLS - 1].set(_DELIMITER)
        )
        targets = jnp.concatenate([jnp.full((T - COPY_SYMBOLS, batch_size), _BLANK), symbols])
        mask = jnp.zeros((T, batch_size), jnp.float32).at[-COPY_SYMBOLS:].set(1.0)
        return Batch(jax.nn.one_hot(inputs, 10, dtype=jnp.float32), targets, mask)

    validation = jax.jit(sample, static_argnums=1)(jax.random.key(VALIDATION_SEED), validation_size)
    # The 8 letters are equally likely at every recall step.
    chance = float(np.log(8))
    return Task("copy", 10, 10, T, "softmax_cross_entropy", sample, validation, None, chance)


_BUILDERS: dict[str, Callable[[int], Task]] = {
    "charlm": _charlm,
    "digits": _digits,
    "adding": _adding,
    "copy": _copy,
}
TASKS: tuple[str, ...] = tuple(_BUILDERS)
DEFAULT_SEQ_LEN: dict[str, int] = {"charlm": 64, "digits": 8, "adding": 50, "copy": 20}


def make_task(name: str, seq_len: int | None = None) -> Task:
    """Builds a task with its held-out split.

    Args:
        name: "charlm", "digits", "adding" or "copy".
        seq_len: the sequence length T (charlm: window length; digits: 8 or 64;
            adding: T; copy: the delay, T = delay + 20); None for the task's default
            (`DEFAULT_SEQ_LEN`).

    Returns:
        A `Task` (cached: the same arguments return the same immutable task).
        `task.sample(key, m)` is pure and jit-compatible: the same key gives the same
        batch, so a run's data order is a function of (seed, step) alone.

    Raises:
        ValueError: unknown task or unsupported `seq_len`.
        ImportError: "digits" without scikit-learn.

    Example:
        >>> task = make_task("adding", 8)
        >>> task.sample(jax.random.key(0), 32).inputs.shape
        (8, 32, 2)
    """
    # The held-out split is drawn in the default float dtype, so the cache is keyed on
    # whether float64 is enabled: a task built under float64 is never reused without it.
    return _make_task(name, seq_len, bool(jax.config.jax_enable_x64))


@functools.lru_cache(maxsize=8)
def _make_task(name: str, seq_len: int | None, x64: bool) -> Task:
    del x64  # part of the cache key only
    return _build_task(name, seq_len)


def _build_task(name: str, seq_len: int | None) -> Task:
    """The uncached build (also `make_task.__wrapped__`, as for a cached function)."""
    check_choice("task", name, TASKS)
    seq_len = DEFAULT_SEQ_LEN[name] if seq_len is None else check_positive_int("seq_len", seq_len)
    return _BUILDERS[name](seq_len)


make_task.__wrapped__ = _build_task
