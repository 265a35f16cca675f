"""Interoperability with Flax (NNX and linen), Equinox and PyTorch (docs/interop.md).

* `nnx.RNN`, `nnx.Bidirectional` (the namespace `dprnn_jax.interop.nnx`): drop-ins for
  `flax.nnx.RNN` and `flax.nnx.Bidirectional` whose gradient comes from the library's
  algorithms.
* `FlaxRNN`: a drop-in for `flax.linen.RNN(cell)`, likewise.
* `equinox_scan`: an Equinox cell over a batch of sequences, differentiable by every
  algorithm.
* `from_torch` (and `torch_activation`): the weights of `torch.nn.RNN`, `nn.GRU` and
  `nn.LSTM` as the library's layer parameters; `to_torch`, the way back.

torch, flax and equinox are optional (`pip install 'dprnn_jax[torch]'`, `[flax]`,
`[equinox]`): each is imported only when its function or class is first used, and a
missing one raises an ImportError that says what to install.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._equinox import equinox_scan as equinox_scan
from ._torch import from_torch as from_torch
from ._torch import to_torch as to_torch
from ._torch import torch_activation as torch_activation

if TYPE_CHECKING:
    from . import nnx as nnx
    from ._flax import FlaxRNN as FlaxRNN

# Names whose module imports flax: imported on first use.
_LAZY = {"FlaxRNN": "._flax", "nnx": ".nnx"}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return module if name == "nnx" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # What tab completion offers: the public names, the lazy ones included.
    return sorted(set(globals()) | set(__all__))


__all__ = ["FlaxRNN", "equinox_scan", "from_torch", "nnx", "to_torch", "torch_activation"]
