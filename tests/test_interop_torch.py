"""`dj.interop.from_torch`: PyTorch's nn.RNN, nn.GRU and nn.LSTM as the library's layers;
`dj.interop.to_torch`: the way back.

The reference is the torch module itself: its outputs and its autograd gradients
w.r.t. every named parameter, in float64. The library side runs the converted layers
by hand (`rnn_layer`, `gru_layer`, `lstm_layer`, the backward direction on the
reversed sequence), differentiated by `Omega()` and `BPTT()`.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_relative_error

import dprnn_jax as dj
from dprnn_jax import interop

torch = pytest.importorskip("torch")

T, M, N, D = 5, 2, 3, 4
METHODS = {"omega": dj.Omega(), "bptt": dj.BPTT()}
MODULES = {
    "rnn_tanh": lambda **kw: torch.nn.RNN(N, D, nonlinearity="tanh", **kw),
    "rnn_relu": lambda **kw: torch.nn.RNN(N, D, nonlinearity="relu", **kw),
    "gru": lambda **kw: torch.nn.GRU(N, D, **kw),
    "lstm": lambda **kw: torch.nn.LSTM(N, D, **kw),
}
# (kind, num_layers, bidirectional): every kind at depths 1 and 2, and one
# bidirectional stack per layer family (Elman, gated).
CASES = [(kind, layers, False) for kind in MODULES for layers in (1, 2)]
CASES += [("rnn_tanh", 2, True), ("lstm", 2, True)]


def run_direction(layer, xs, activation, method):
    if isinstance(layer, dj.GRUParams):
        return dj.gru_layer(layer, xs, method=method)
    if isinstance(layer, dj.LSTMParams):
        return dj.lstm_layer(layer, xs, method=method)[0]
    return dj.rnn_layer(layer, xs, activation=activation, method=method)


def run_layers(layers, xs, activation, method):
    """The stack by hand: each layer reads the outputs of the one below."""
    hs = xs
    for layer in layers:
        if isinstance(layer, dj.BidirectionalParams):
            forward = run_direction(layer.forward, hs, activation, method)
            backward = run_direction(layer.backward, jnp.flip(hs, 0), activation, method)
            hs = jnp.concatenate([forward, jnp.flip(backward, 0)], axis=-1)
        else:
            hs = run_direction(layer, hs, activation, method)
    return hs


def by_torch_name(layers) -> dict[str, jax.Array]:
    """The layers' arrays under the names of the torch parameters they stand for."""
    named = {}
    for k, layer in enumerate(layers):
        directions = [("", layer)]
        if isinstance(layer, dj.BidirectionalParams):
            directions = [("", layer.forward), ("_reverse", layer.backward)]
        for suffix, params in directions:
            named[f"weight_ih_l{k}{suffix}"] = params.W
            named[f"weight_hh_l{k}{suffix}"] = params.S
            # The Elman layer's one bias b = b_ih + b_hh: ∂/∂b_ih = ∂/∂b_hh = ∂/∂b.
            b_ih, b_hh = (params.b, params.b) if isinstance(params, dj.LayerParams) else params[2:]
            named[f"bias_ih_l{k}{suffix}"] = b_ih
            named[f"bias_hh_l{k}{suffix}"] = b_hh
    return named


def torch_reference(module, xs, weights):
    """The module's outputs and the autograd gradient of Σ sin(outputs) ⊙ weights."""
    module.zero_grad()
    outputs, _ = module(torch.from_numpy(xs))
    (torch.sin(outputs) * torch.from_numpy(weights)).sum().backward()
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    return outputs.detach().numpy(), grads


@pytest.mark.parametrize(("kind", "num_layers", "bidirectional"), CASES)
def test_converted_layers_reproduce_torch_outputs_and_gradients(
    kind, num_layers, bidirectional, x64
):
    torch.manual_seed(0)
    module = MODULES[kind](num_layers=num_layers, bidirectional=bidirectional).double()
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, M, N))
    weights = rng.standard_normal((T, M, D * (2 if bidirectional else 1)))
    expected_outputs, expected_grads = torch_reference(module, xs, weights)

    layers = interop.from_torch(module)
    activation = interop.torch_activation(module)
    assert activation == ("relu" if kind == "rnn_relu" else "tanh")
    assert len(layers) == num_layers
    assert all(isinstance(layer, dj.BidirectionalParams) == bidirectional for layer in layers)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(layers))

    @jax.jit
    def library(layers, xs, weights):
        def loss(layers, method):
            return jnp.sum(jnp.sin(run_layers(layers, xs, activation, method)) * weights)

        outputs = run_layers(layers, xs, activation, dj.Omega())
        grads = {name: jax.grad(loss)(layers, method) for name, method in METHODS.items()}
        return outputs, grads

    outputs, grads = library(layers, jnp.asarray(xs), jnp.asarray(weights))
    assert max_relative_error(outputs, expected_outputs) <= 1e-12
    for name, grad in grads.items():
        named = by_torch_name(grad)
        assert named.keys() == expected_grads.keys()
        error = max_relative_error(named, {key: expected_grads[key] for key in named})
        assert error <= 1e-10, f"{name}: max relative error {error:.2e}"


def test_biasless_module_gives_zero_biases_and_keeps_its_dtype():
    module = torch.nn.GRU(N, D, bias=False, batch_first=True)
    (layer,) = interop.from_torch(module)
    assert layer.W.dtype == jnp.float32
    np.testing.assert_array_equal(layer.b_ih, np.zeros(3 * D, np.float32))
    np.testing.assert_array_equal(layer.b_hh, np.zeros(3 * D, np.float32))
    np.testing.assert_array_equal(layer.S, module.weight_hh_l0.detach().numpy())
    xs = np.random.default_rng(1).standard_normal((M, T, N)).astype(np.float32)
    expected = module(torch.from_numpy(xs))[0].detach().numpy()
    # batch_first only changes how the module reads its inputs: transpose to time-major.
    hs = dj.gru_layer(layer, jnp.asarray(xs).swapaxes(0, 1)).swapaxes(0, 1)
    assert max_relative_error(hs, expected) <= 1e-5


def test_elman_bias_is_the_sum_of_torch_biases():
    module = torch.nn.RNN(N, D)
    (layer,) = interop.from_torch(module)
    expected = (module.bias_ih_l0 + module.bias_hh_l0).detach().numpy()
    np.testing.assert_allclose(layer.b, expected, rtol=0, atol=1e-7)
    assert isinstance(layer, dj.LayerParams)


def test_unsupported_modules_are_refused_with_the_reason():
    with pytest.raises(
        TypeError, match=r"torch\.nn\.RNN, torch\.nn\.GRU or torch\.nn\.LSTM.*Linear"
    ):
        interop.from_torch(torch.nn.Linear(N, D))
    with pytest.raises(TypeError, match="Single-step cells"):
        interop.from_torch(torch.nn.GRUCell(N, D))
    with pytest.raises(ValueError, match=r"proj_size=2.*proj_size=0"):
        interop.from_torch(torch.nn.LSTM(N, D, proj_size=2))
    with pytest.raises(TypeError, match="Linear"):
        interop.torch_activation(torch.nn.Linear(N, D))


def test_float64_module_without_x64_is_refused():
    module = torch.nn.LSTM(N, D).double()
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"jax_enable_x64.*module\.float\(\)"):
            interop.from_torch(module)


def test_missing_torch_says_what_to_install(monkeypatch):
    module = torch.nn.GRU(N, D)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'dprnn_jax\[torch\]'"):
        interop.from_torch(module)


@pytest.mark.parametrize(
    ("kind", "num_layers", "bidirectional"),
    [("rnn_tanh", 1, False), ("rnn_relu", 2, False), ("gru", 2, False), ("lstm", 1, False)]
    + [("rnn_tanh", 2, True), ("lstm", 2, True)],
)
def test_to_torch_is_the_inverse_of_from_torch(kind, num_layers, bidirectional, x64):
    torch.manual_seed(1)
    module = MODULES[kind](num_layers=num_layers, bidirectional=bidirectional).double()
    layers = interop.from_torch(module)
    activation = interop.torch_activation(module)
    rebuilt = interop.to_torch(layers, activation=activation)
    assert type(rebuilt) is type(module) and interop.torch_activation(rebuilt) == activation
    expected, got = module.state_dict(), rebuilt.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in got.items():
        assert tensor.dtype == torch.float64
        if kind.startswith("rnn") and name.startswith("bias"):
            # The Elman layer's one bias b = b_ih + b_hh goes back as (b, 0).
            ih = name.replace("bias_hh", "bias_ih")
            b = expected[ih] + expected[ih.replace("bias_ih", "bias_hh")]
            assert torch.equal(tensor, b if name.startswith("bias_ih") else torch.zeros_like(b))
        else:
            assert torch.equal(tensor, expected[name]), name
    # The library's layers come back bitwise, and the module computes what they compute.
    again = interop.from_torch(rebuilt)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(layers))
    )
    xs = np.random.default_rng(2).standard_normal((T, M, N))
    outputs = rebuilt(torch.from_numpy(xs))[0].detach().numpy()
    library = run_layers(layers, jnp.asarray(xs), activation, dj.BPTT())
    assert max_relative_error(outputs, library) <= 1e-12


def test_to_torch_fills_a_given_module_in_place():
    layers = interop.from_torch(torch.nn.LSTM(N, D, num_layers=2))
    target = torch.nn.LSTM(N, D, num_layers=2)
    assert interop.to_torch(layers, target) is target
    for k, layer in enumerate(layers):
        np.testing.assert_array_equal(getattr(target, f"weight_hh_l{k}").detach().numpy(), layer.S)
        np.testing.assert_array_equal(getattr(target, f"bias_ih_l{k}").detach().numpy(), layer.b_ih)


def test_to_torch_refuses_what_does_not_make_one_module():
    gru = interop.from_torch(torch.nn.GRU(N, D, num_layers=2))
    with pytest.raises(ValueError, match=r"module does not match.*'hidden_size': \(5, 4\)"):
        interop.to_torch(gru, torch.nn.GRU(N, D + 1, num_layers=2))
    with pytest.raises(TypeError, match=r"for a torch\.nn\.GRU, but module is a .*LSTM"):
        interop.to_torch(gru, torch.nn.LSTM(N, D, num_layers=2))
    with pytest.raises(ValueError, match=r"layer 1 does not fit one torch module"):
        interop.to_torch((gru[0], interop.from_torch(torch.nn.LSTM(D, D))[0]))
    params = dj.init_rnn(jax.random.key(0), N, (D,), 2)
    with pytest.raises(TypeError, match=r"readout has no counterpart.*params\.layers"):
        interop.to_torch(params)
    with pytest.raises(ValueError, match=r"activation='relu' but module\.nonlinearity is 'tanh'"):
        interop.to_torch(params.layers, torch.nn.RNN(N, D), activation="relu")
    with pytest.raises(TypeError, match="to_torch takes what from_torch returns"):
        interop.to_torch({"W": jnp.ones((D, N))})
