"""Interoperability with PyTorch, Flax and Equinox (docs/interop.md).

* `from_torch` (and `torch_activation`): the weights of `torch.nn.RNN`, `nn.GRU` and
  `nn.LSTM` as the library's layer parameters.
* `FlaxRNN`: a drop-in for `flax.linen.RNN(cell)` whose gradient comes from the
  library's algorithms.
* `equinox_scan`: an Equinox cell over a batch of sequences, differentiable by every
  algorithm.

torch, flax and equinox are optional (`pip install 'dprnn_jax[torch]'`, `[flax]`,
`[equinox]`): each is imported only when its function or class is first used, and a
missing one raises an ImportError that says what to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._equinox import equinox_scan as equinox_scan
from ._torch import from_torch as from_torch
from ._torch import torch_activation as torch_activation

if TYPE_CHECKING:
    from ._flax import FlaxRNN as FlaxRNN


def __getattr__(name: str):
    # FlaxRNN subclasses flax.linen.Module, so defining it imports flax: on first use.
    if name == "FlaxRNN":
        from ._flax import FlaxRNN

        return FlaxRNN
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FlaxRNN", "equinox_scan", "from_torch", "torch_activation"]
