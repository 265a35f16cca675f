"""PyTorch's recurrent modules as the library's layer parameters, and back.

`torch.nn.RNN`, `torch.nn.GRU` and `torch.nn.LSTM` keep, per layer `k` and direction,
`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}` (and the same with
`_reverse` for the backward direction). The library's layers use PyTorch's layout and
gate order, so the weights load unchanged; only the Elman layer folds its two biases
into one. `to_torch` writes layer parameters into such a module (the Elman layer's
bias into `bias_ih`, zeros into `bias_hh`). torch is imported when a function here is
called, never before.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._cells.gru import GRUParams
from .._cells.lstm import LSTMParams
from .._cells.mingru import MinGRUParams
from .._core.params import BidirectionalParams, LayerParams, RNNParams

Layer = LayerParams | GRUParams | LSTMParams | BidirectionalParams


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "dprnn_jax.interop.from_torch reads a torch module, but torch is not installed; "
            "install it with `pip install 'dprnn_jax[torch]'` (or `pip install torch`)."
        ) from error
    return torch


def _kind(module: object, torch) -> str:
    """'elman', 'gru' or 'lstm'; anything else is refused with the reason."""
    nn = torch.nn
    if isinstance(module, nn.LSTM):
        if getattr(module, "proj_size", 0) > 0:
            raise ValueError(
                f"from_torch got an nn.LSTM with proj_size={module.proj_size}: LSTMs with "
                "projections (weight_hr) have no counterpart in the library; build the "
                "module with proj_size=0."
            )
        return "lstm"
    if isinstance(module, nn.GRU):
        return "gru"
    if isinstance(module, nn.RNN):
        if module.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"from_torch got an nn.RNN with nonlinearity={module.nonlinearity!r}; "
                "expected 'tanh' or 'relu'."
            )
        return "elman"
    raise TypeError(
        "from_torch takes a torch.nn.RNN, torch.nn.GRU or torch.nn.LSTM module, got "
        f"{type(module).__module__}.{type(module).__qualname__}. Single-step cells "
        "(nn.RNNCell, nn.GRUCell, nn.LSTMCell) and other modules are not supported."
    )


_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}


def _jax_dtype(module, torch) -> Any:
    """The jnp dtype of the module's weights; float64 needs x64 enabled in JAX."""
    dtype = module.weight_ih_l0.dtype
    name = str(dtype).removeprefix("torch.")
    if name == "float64":
        if jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
            raise ValueError(
                "from_torch got a float64 module, but JAX is running without float64 "
                "(jax_enable_x64 is off), so its weights would be rounded to float32. "
                'Enable it with jax.config.update("jax_enable_x64", True) (or the '
                "jax.enable_x64 context), or convert the module with module.float()."
            )
        return jnp.float64
    if name not in _DTYPES:
        raise TypeError(
            f"from_torch takes modules with float16, bfloat16, float32 or float64 weights, "
            f"got {dtype}."
        )
    return _DTYPES[name]


def _array(tensor, dtype) -> jax.Array:
    # numpy has no bfloat16: go through float32, exact for every 16-bit float.
    host = tensor.detach().cpu()
    if dtype in (jnp.bfloat16, jnp.float16):
        host = host.float()
    return jnp.array(host.numpy(), dtype=dtype)


def _direction(module, kind: str, name: str, dtype) -> LayerParams | GRUParams | LSTMParams:
    """One direction of one layer; `name` is the parameter suffix, e.g. 'l1_reverse'."""
    W = getattr(module, f"weight_ih_{name}")
    S = getattr(module, f"weight_hh_{name}")
    if module.bias:
        b_ih, b_hh = getattr(module, f"bias_ih_{name}"), getattr(module, f"bias_hh_{name}")
    else:
        b_ih = b_hh = W.new_zeros(W.shape[0])
    if kind == "elman":
        # The Elman layer has one bias: σ(x Wᵀ + b_ih + h Sᵀ + b_hh) = σ(x Wᵀ + h Sᵀ + b).
        return LayerParams(_array(W, dtype), _array(S, dtype), _array(b_ih + b_hh, dtype))
    params_type = GRUParams if kind == "gru" else LSTMParams
    return params_type(*(_array(tensor, dtype) for tensor in (W, S, b_ih, b_hh)))


def from_torch(module: Any) -> tuple[Layer, ...]:
    """The weights of a PyTorch recurrent module as the library's layer parameters.

    One entry per layer `k` of `module.num_layers`:

    * `nn.RNN` (tanh or relu): `LayerParams(W, S, b)` with `W = weight_ih_l{k}`,
      `S = weight_hh_l{k}` and `b = bias_ih_l{k} + bias_hh_l{k}`;
    * `nn.GRU`: `GRUParams(W, S, b_ih, b_hh)`, the four tensors unchanged (gates r, z, n);
    * `nn.LSTM`: `LSTMParams(W, S, b_ih, b_hh)`, unchanged (gates i, f, g, o);
    * `bidirectional=True`: `BidirectionalParams(forward, backward)`, `backward` from the
      `_reverse` tensors.

    With `bias=False` the biases are zeros. The arrays are copies in the module's dtype
    (float32 or float64; float16 and bfloat16 too). The result is the `layers` of an
    `RNNParams` stack, and each entry runs alone with `rnn_layer` (with
    `activation=torch_activation(module)`), `gru_layer`, `lstm_layer` or
    `bidirectional_layer`; the outputs equal the module's for time-major inputs (a
    `batch_first` module reads `(m, T, n)`: transpose). `dropout` between layers is a
    training-time option of the module and is not represented: the layers are those of
    the module in `eval()` mode.

    Args:
        module: a `torch.nn.RNN` (nonlinearity "tanh" or "relu"), `torch.nn.GRU` or
            `torch.nn.LSTM`, with any `num_layers`, `bidirectional`, `bias` and
            `batch_first`.

    Returns:
        A tuple of `num_layers` layer parameters: `LayerParams`, `GRUParams` or
        `LSTMParams`, each wrapped in a `BidirectionalParams` for a bidirectional module.

    Raises:
        ImportError: torch is not installed.
        TypeError: `module` is not one of the three classes (e.g. `nn.Linear`, or the
            single-step `nn.GRUCell`), or its weights are not floating.
        ValueError: an `nn.LSTM` with `proj_size > 0`, or a float64 module while JAX
            runs without float64 (enable `jax_enable_x64`, or call `module.float()`).

    Example:
        >>> import pytest
        >>> torch = pytest.importorskip("torch")
        >>> module = torch.nn.GRU(input_size=3, hidden_size=8, num_layers=2)
        >>> layers = dj.interop.from_torch(module)
        >>> [type(layer).__name__ for layer in layers], layers[1].W.shape
        (['GRUParams', 'GRUParams'], (24, 8))
        >>> xs = torch.randn(5, 2, 3)
        >>> hs = dj.gru_layer(layers[1], dj.gru_layer(layers[0], jnp.asarray(xs.numpy())))
        >>> expected = module(xs)[0].detach().numpy()
        >>> bool(np.allclose(hs, expected, atol=1e-5))
        True
    """
    torch = _import_torch()
    kind = _kind(module, torch)
    dtype = _jax_dtype(module, torch)
    layers: list[Layer] = []
    for k in range(module.num_layers):
        forward = _direction(module, kind, f"l{k}", dtype)
        if module.bidirectional:
            backward = _direction(module, kind, f"l{k}_reverse", dtype)
            layers.append(BidirectionalParams(forward, backward))
        else:
            layers.append(forward)
    return tuple(layers)


def torch_activation(module: Any) -> str:
    """The `activation=` argument that runs `from_torch(module)`'s layers as the module.

    For an `nn.RNN` it is its `nonlinearity`, "tanh" or "relu". GRU and LSTM layers fix
    their own nonlinearities (the library's stacks ignore `activation` for them), and
    "tanh" is returned so that the result can always be passed along.

    Args:
        module: a module `from_torch` accepts.

    Returns:
        "tanh" or "relu".

    Raises:
        ImportError, TypeError, ValueError: as `from_torch`.

    Example:
        >>> import pytest
        >>> torch = pytest.importorskip("torch")
        >>> module = torch.nn.RNN(3, 8, nonlinearity="relu")
        >>> layer, = dj.interop.from_torch(module)
        >>> xs = torch.randn(5, 2, 3)
        >>> hs = dj.rnn_layer(
        ...     layer, jnp.asarray(xs.numpy()), activation=dj.interop.torch_activation(module)
        ... )
        >>> bool(np.allclose(hs, module(xs)[0].detach().numpy(), atol=1e-5))
        True
    """
    torch = _import_torch()
    kind = _kind(module, torch)
    return module.nonlinearity if kind == "elman" else "tanh"


_KINDS = {LayerParams: "elman", GRUParams: "gru", LSTMParams: "lstm"}
_GATES = {"elman": 1, "gru": 3, "lstm": 4}


def _as_layers(params) -> tuple[Layer, ...]:
    """`params` as a tuple of layers: from_torch's tuple, one layer, or an RNNParams."""
    if isinstance(params, RNNParams):
        raise TypeError(
            "to_torch got an RNNParams stack, whose readout has no counterpart in a torch "
            "recurrent module; pass its layers: to_torch(params.layers)."
        )
    layers = params if isinstance(params, (tuple, list)) else (params,)
    if any(isinstance(d, MinGRUParams) for layer in layers for d in _directions(layer)):
        raise TypeError(
            "to_torch cannot convert a MinGRUParams layer: torch.nn has no minGRU module "
            "(only RNN, GRU and LSTM)."
        )
    if isinstance(params, (LayerParams, GRUParams, LSTMParams, BidirectionalParams)):
        return (params,)
    if isinstance(params, (tuple, list)) and params:
        layers = tuple(params)
        if all(isinstance(layer, (*_KINDS, BidirectionalParams)) for layer in layers):
            return layers
    raise TypeError(
        "to_torch takes what from_torch returns: a tuple of LayerParams, GRUParams or "
        "LSTMParams (each possibly in a BidirectionalParams), or one of them, got "
        f"{type(params).__name__}."
    )


def _directions(layer) -> tuple:
    return (layer.forward, layer.backward) if isinstance(layer, BidirectionalParams) else (layer,)


def _layout(layers) -> dict[str, Any]:
    """kind, sizes, depth, directions and dtype of the layers, checked to be one module."""
    first = _directions(layers[0])[0]
    kind = _KINDS[type(first)]
    bidirectional = isinstance(layers[0], BidirectionalParams)
    hidden_size = first.S.shape[1]
    directions = 2 if bidirectional else 1
    for k, layer in enumerate(layers):
        for params in _directions(layer):
            expected_input = first.W.shape[1] if k == 0 else hidden_size * directions
            expected = {
                "type": type(first).__name__,
                "bidirectional": bidirectional,
                "W": (_GATES[kind] * hidden_size, expected_input),
                "S": (_GATES[kind] * hidden_size, hidden_size),
                "dtype": first.W.dtype,
            }
            got = {
                "type": type(params).__name__,
                "bidirectional": isinstance(layer, BidirectionalParams),
                "W": tuple(params.W.shape),
                "S": tuple(params.S.shape),
                "dtype": params.W.dtype,
            }
            if got != expected:
                raise ValueError(
                    f"to_torch: layer {k} does not fit one torch module with layer 0: "
                    f"expected {expected}, got {got}. The layers of one nn.RNN/GRU/LSTM "
                    "share their kind, width, direction and dtype, and each reads the "
                    "outputs of the one below."
                )
    return dict(
        kind=kind,
        input_size=first.W.shape[1],
        hidden_size=hidden_size,
        num_layers=len(layers),
        bidirectional=bidirectional,
        dtype=first.W.dtype,
    )


def _torch_dtype(dtype, torch):
    names = {"float16", "bfloat16", "float32", "float64"}
    name = jnp.dtype(dtype).name
    if name not in names:
        raise TypeError(
            f"to_torch takes float16, bfloat16, float32 or float64 parameters, got {name}."
        )
    return getattr(torch, name)


def _tensor(array, dtype, torch):
    # numpy has no bfloat16: through float32, exact for every 16-bit float.
    host = np.asarray(jnp.asarray(array, jnp.float32) if dtype == torch.bfloat16 else array)
    return torch.from_numpy(np.array(host, copy=True)).to(dtype)


def to_torch(params: Any, module: Any = None, *, activation: str | None = None) -> Any:
    """Layer parameters as a PyTorch recurrent module: the inverse of `from_torch`.

    Returns a `torch.nn.RNN`, `nn.GRU` or `nn.LSTM` (with `num_layers` the number of
    layers, `bidirectional` for `BidirectionalParams` layers, the parameters' dtype)
    whose outputs equal the library's layers on the same inputs; or, given `module`,
    fills that module in place and returns it. GRU and LSTM tensors are copied
    unchanged, so `to_torch(from_torch(m))` holds `m`'s tensors bitwise; an Elman layer
    has one bias `b = b_ih + b_hh`, written as `bias_ih = b` and `bias_hh = 0` (so
    `from_torch(to_torch(layers))` gives `layers` back bitwise).

    Args:
        params: what `from_torch` returns: a tuple of layers (`LayerParams`,
            `GRUParams` or `LSTMParams`, each possibly in a `BidirectionalParams`), or
            one layer. All layers of one kind, width, direction and dtype.
        module: a torch module to fill instead of building one; it must match the
            layers (class, sizes, `num_layers`, `bidirectional`, `bias=True`, dtype).
        activation: the Elman layers' nonlinearity, "tanh" or "relu" (`nonlinearity` of
            the new `nn.RNN`); None for "tanh", or the given module's.

    Returns:
        The torch module, in training mode (no dropout between layers).

    Raises:
        ImportError: torch is not installed.
        TypeError: `params` is not layers as `from_torch` returns them, or not floating;
            `module` is not the matching torch class.
        ValueError: layers that do not form one module, a `module` of other sizes,
            depth, direction, bias or dtype, or an `activation` that is not "tanh" or
            "relu" or disagrees with the module's nonlinearity.

    Example:
        >>> import pytest
        >>> torch = pytest.importorskip("torch")
        >>> layers = dj.interop.from_torch(torch.nn.LSTM(3, 4, num_layers=2))
        >>> module = dj.interop.to_torch(layers)
        >>> type(module).__name__, module.num_layers, module.hidden_size
        ('LSTM', 2, 4)
        >>> xs = torch.randn(5, 2, 3)
        >>> hs = dj.lstm_layer(layers[1], dj.lstm_layer(layers[0], jnp.asarray(xs.numpy()))[0])[0]
        >>> bool(np.allclose(hs, module(xs)[0].detach().numpy(), atol=1e-5))
        True
    """
    torch = _import_torch()
    layers = _as_layers(params)
    layout = _layout(layers)
    dtype = _torch_dtype(layout["dtype"], torch)
    kind = layout["kind"]
    if activation not in (None, "tanh", "relu"):
        raise ValueError(f"to_torch's activation must be 'tanh' or 'relu', got {activation!r}.")
    classes = {"elman": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}
    sizes = {key: layout[key] for key in ("input_size", "hidden_size", "num_layers")}
    if module is None:
        options = dict(bidirectional=layout["bidirectional"], dtype=dtype)
        if kind == "elman":
            options["nonlinearity"] = activation or "tanh"
        module = classes[kind](**sizes, **options)
    else:
        _check_target(module, kind, classes[kind], sizes, layout, dtype, activation)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            for suffix, params in zip(("", "_reverse"), _directions(layer)):
                name = f"l{k}{suffix}"
                if kind == "elman":
                    b_ih, b_hh = params.b, jnp.zeros_like(params.b)
                else:
                    b_ih, b_hh = params.b_ih, params.b_hh
                for field, array in (
                    ("weight_ih", params.W),
                    ("weight_hh", params.S),
                    ("bias_ih", b_ih),
                    ("bias_hh", b_hh),
                ):
                    getattr(module, f"{field}_{name}").copy_(_tensor(array, dtype, torch))
    return module


def _check_target(module, kind, cls, sizes, layout, dtype, activation) -> None:
    """The module to fill matches the layers exactly; every difference is named."""
    if type(module) is not cls:
        raise TypeError(
            f"to_torch: the layers are {kind} layers, for a torch.nn.{cls.__name__}, but "
            f"module is a {type(module).__module__}.{type(module).__qualname__}."
        )
    expected = {**sizes, "bidirectional": layout["bidirectional"], "bias": True, "dtype": dtype}
    got = {
        **{key: getattr(module, key) for key in sizes},
        "bidirectional": module.bidirectional,
        "bias": module.bias,
        "dtype": module.weight_ih_l0.dtype,
    }
    if kind == "lstm":
        expected["proj_size"], got["proj_size"] = 0, module.proj_size
    if got != expected:
        differences = {
            key: (got[key], expected[key]) for key in expected if got[key] != expected[key]
        }
        raise ValueError(
            "to_torch: module does not match the layers; (module's, layers') values: "
            f"{differences}. Build it as to_torch(layers) does, or pass module=None."
        )
    if kind == "elman" and activation is not None and activation != module.nonlinearity:
        raise ValueError(
            f"to_torch: activation={activation!r} but module.nonlinearity is "
            f"{module.nonlinearity!r}; leave activation out to keep the module's."
        )
