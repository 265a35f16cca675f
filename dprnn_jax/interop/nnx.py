"""Flax NNX drop-ins whose gradient comes from the library's algorithms (docs/interop.md).

* `RNN(cell, method=…)`: `flax.nnx.RNN` with the same constructor, call, outputs and
  state, its scan over time differentiated by `method`.
* `Bidirectional(forward_rnn, backward_rnn)`: `flax.nnx.Bidirectional` for two of them.

Importing this module imports flax (`pip install 'dprnn_jax[flax]'`).
"""

from __future__ import annotations

from ._nnx import RNN as RNN
from ._nnx import Bidirectional as Bidirectional

__all__ = ["Bidirectional", "RNN"]
