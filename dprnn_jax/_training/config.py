"""What determines a training run: `TrainConfig`, the optimisers it names, which of its
options a resumed run may change, the state a run starts from, and the files it writes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from .._algorithms.base import GradientAlgorithm
from .._algorithms.omega import Omega
from .._algorithms.registry import algorithm_from_dict, resolve_method
from .._cells.kinds import init_rnn
from .tasks import DEFAULT_SEQ_LEN, Task

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
LOSS_CURVE = "loss_curve.png"
SAMPLE = "sample.txt"
# Every file a run writes into its folder.
RUN_FILES = (CHECKPOINT, METRICS, LOSS_CURVE, SAMPLE)

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "sgd": lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
}

# Options that may differ between a run and its resumption: they change how long the run
# goes and what it records, not its trajectory (a different device count changes only
# the order of the gradient's sums, so the result agrees to round-off, not bitwise).
RESUMABLE_CHANGES = ("steps", "eval_every", "checkpoint_every", "devices")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (the `dprnn-jax train` options).

    `method` is a gradient algorithm (`Omega(truncation=32)`, `BPTT()`, …) or its name
    ("omega"); a name is turned into the algorithm with its default options, so
    `TrainConfig(method="bptt").method == BPTT()`. `seq_len=None` becomes the task's
    default length.

    `online=K` updates the parameters inside each batch, every K time steps, with an
    algorithm that runs forward in time (`RTRL()`, `SnAp(n)`, `UORO()`, `RFLO(...)`;
    `_training/online_step.py`); a training step is still one batch. Without it, every
    method makes one update per batch from its whole-sequence gradient (UORO in its
    online form, with a fresh key per step, not the fixed signs of its `method=` form).

    Example:
        >>> config = TrainConfig(task="adding", method="bptt", steps=200)
        >>> config.method == BPTT(), config.seq_len
        (True, 50)
    """

    task: str = "charlm"
    method: GradientAlgorithm | str = Omega()
    steps: int = 1000
    seed: int = 0
    batch_size: int = 32
    learning_rate: float = 3e-3
    optimizer: str = "adam"
    hidden_size: int = 128
    layers: int = 1
    cell: str = "elman"
    seq_len: int | None = None
    activation: str = "tanh"
    max_grad_norm: float | None = 1.0
    eval_every: int = 100
    checkpoint_every: int = 100
    devices: int = 1
    online: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "method", resolve_method(self.method))
        if self.seq_len is None and self.task in DEFAULT_SEQ_LEN:
            object.__setattr__(self, "seq_len", DEFAULT_SEQ_LEN[self.task])

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values, the algorithm as its `to_dict()`; what
        `metrics.json` and checkpoints record."""
        record = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        record["method"] = self.method.to_dict()
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> TrainConfig:
        """Rebuilds a configuration from `to_dict()` (unknown keys are ignored; a method
        recorded as a bare name, as older runs did, means its default options)."""
        names = {field.name for field in dataclasses.fields(cls)}
        options = {key: value for key, value in record.items() if key in names}
        if isinstance(options.get("method"), dict):
            options["method"] = algorithm_from_dict(options["method"])
        return cls(**options)


def config_differences(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The fields of `config` that change the trajectory of `saved` (all but
    `RESUMABLE_CHANGES`), in declaration order."""
    return [
        field.name
        for field in dataclasses.fields(TrainConfig)
        if field.name not in RESUMABLE_CHANGES
        and getattr(saved, field.name) != getattr(config, field.name)
    ]


def fresh_state(config: TrainConfig, task: Task, optimizer, key: jax.Array):
    """The parameters (from `key`) and optimiser state that a run of `config` starts from."""
    sizes = (config.hidden_size,) * config.layers
    params = init_rnn(key, task.input_size, sizes, task.output_size, cell=config.cell)
    return params, optimizer.init(params)
