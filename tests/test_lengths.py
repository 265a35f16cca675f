"""Variable-length batches: right padding with `lengths`, many-to-many and many-to-one.

Exact against jax.grad (mask-based oracle on the padded batch) AND equal to running
every sequence alone; final states are taken at each sequence's own length; whatever
the padding holds (even NaN) changes nothing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    CHEAP_COMPILE,
    RTOL,
    alone_loss,
    alone_states,
    assert_trees_close,
    length_mask,
    max_relative_error,
    random_inputs,
    random_stack,
    random_targets,
    reference_loss,
)

import dprnn_jax as dj

T, M, N, K = 6, 3, 2, 3
LENGTHS = (6, 3, 1)


def make_problem(n_layers, dtype):
    """`n_layers` unidirectional layers of 3 units, inputs (T, M, N), class targets."""
    params = random_stack(0, ("uni",) * n_layers, N, 3, K, dtype)
    return params, random_inputs(1, (T, M, N), dtype), random_targets(2, T, M, K, dtype)


def many_to_one_alone(params, xs, labels, lengths):
    """(1/m) Σ_v CE(readout(h_{L_v−1}), y_v), each sequence run alone."""
    total = 0.0
    for v, length in enumerate(lengths):
        _, finals = alone_states(params, xs[:length, v : v + 1], "tanh")
        logits = finals[-1] @ params.readout.W.T + params.readout.b
        total += optax.softmax_cross_entropy_with_integer_labels(logits, labels[v : v + 1]).sum()
    return total / len(lengths)


@functools.partial(jax.jit, static_argnames=("method",), compiler_options=CHEAP_COMPILE)
def all_results(params, xs, targets, labels, *, method):
    lengths = jnp.asarray(LENGTHS)
    mask = length_mask(LENGTHS, T, xs.dtype)
    # NaN in every padded input: must not reach any valid step or gradient.
    poisoned = jnp.where(mask[..., None] > 0, xs, jnp.nan)
    loss = functools.partial(dj.sequence_loss, method=method)
    return {
        "lengths": jax.grad(loss, (0, 1))(params, xs, targets, lengths=lengths),
        "poisoned": jax.grad(loss)(params, poisoned, targets, lengths=lengths),
        "mask_oracle": jax.grad(reference_loss, (0, 1))(
            params, xs, targets, mask, loss="softmax_cross_entropy", activation="tanh"
        ),
        "alone": jax.grad(alone_loss, (0, 1))(params, xs, targets, LENGTHS),
        "many_to_one": jax.grad(dj.many_to_one_loss)(
            params, xs, labels, lengths=lengths, method=method
        ),
        "many_to_one_alone": jax.grad(many_to_one_alone)(params, xs, labels, LENGTHS),
        "final_states": dj.rnn_forward(params, poisoned, lengths=lengths).final_states,
        "alone_final_states": [
            alone_states(params, xs[:length, v : v + 1], "tanh")[1]
            for v, length in enumerate(LENGTHS)
        ],
    }


def test_mixed_lengths_are_exact_and_equal_to_running_alone(dtype):
    """One method: the padding logic sits outside the custom rules, which the grid of
    test_gradients.py checks with ragged masks for every method."""
    params, xs, targets = make_problem(2, dtype)
    labels = jnp.array([0, 2, 1])
    r = jax.device_get(all_results(params, xs, targets, labels, method=dj.Omega()))
    rtol = RTOL[jnp.dtype(dtype)]
    assert max_relative_error(r["lengths"], r["mask_oracle"]) <= rtol
    assert max_relative_error(r["lengths"], r["alone"]) <= rtol
    assert max_relative_error(r["poisoned"], r["alone"][0]) <= rtol
    assert max_relative_error(r["many_to_one"], r["many_to_one_alone"]) <= rtol
    for v, alone_finals in enumerate(r["alone_final_states"]):
        for layer_final, alone_final in zip(r["final_states"], alone_finals, strict=True):
            assert max_relative_error(layer_final[v], alone_final[0]) <= rtol


def test_lengths_under_vmap_and_zero_length(x64):
    params, xs, _ = make_problem(1, jnp.float64)
    h0 = np.full((M, 3), 0.25)
    batches = np.array([[6, 3, 1], [0, 2, 6]])

    @jax.jit
    def vmapped_and_plain(params, xs, h0):
        finals = jax.vmap(
            lambda lengths: dj.rnn_forward(params, xs, [h0], lengths=lengths).final_states[0]
        )(batches)
        return finals, dj.rnn_layer(params.layers[0], xs, h0)

    finals, hs = jax.device_get(vmapped_and_plain(params, xs, h0))
    # Two computations of the same states (vmapped, with lengths; plain): XLA may sum
    # them in another order, so they agree to rounding, not bitwise.
    assert_trees_close(finals[0], hs[[5, 2, 0], np.arange(M)], rtol=1e-12)
    # Length 0: the sequence is empty, its final state is its initial state.
    assert_trees_close(finals[1][0], h0[0], rtol=1e-12)
    # Under jit a bad length cannot raise: the state is NaN rather than a wrong number.
    bad = jax.jit(lambda L: dj.rnn_forward(params, xs, lengths=L).final_states[0])(
        np.array([7, -1, 2])
    )
    assert np.isnan(bad[:2]).all() and np.isfinite(bad[2]).all()


def test_invalid_lengths_and_targets_are_rejected():
    params, xs, targets = make_problem(1, jnp.float32)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\]"):
        dj.rnn_apply(params, xs, lengths=jnp.array([7, 1, 1]))
    with pytest.raises(ValueError, match="lengths must have shape"):
        dj.rnn_apply(params, xs, lengths=jnp.array([1, 1]))
    with pytest.raises(TypeError, match="lengths must be integers"):
        dj.rnn_apply(params, xs, lengths=jnp.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="not both"):
        dj.sequence_loss(params, xs, targets, mask=jnp.ones((T, M)), lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="one class index per sequence"):
        dj.many_to_one_loss(params, xs, targets, lengths=jnp.array([1, 2, 3]))


# Under jit, lengths cannot be checked: each row is one batch's lengths, the first valid,
# the others each with one length out of [0, T] (too long, negative, far too long).
JIT_LENGTHS = np.array([[4, 2], [5, 2], [-1, 2], [4, 9]])
LAYERS = {"elman": dj.rnn_layer, "gru": dj.gru_layer, "lstm": dj.lstm_layer}


@pytest.mark.parametrize("cells", [("elman",), ("gru", "lstm")], ids="-".join)
def test_out_of_range_lengths_under_jit_give_nan_and_leave_valid_lengths_alone(cells):
    """Every loss (value and gradient), the network's outputs and final states and each
    cell's layer states are NaN for a batch with a length outside [0, T], not those of a
    clamped length; the sequences with a valid length keep their numbers, and a batch
    of valid lengths keeps finite gradients. An Elman stack and a GRU-LSTM stack: their
    checkpointed losses take different paths."""
    T, m, n, d, k = 4, 2, 2, 2, 2
    params = dj.init_rnn(jax.random.key(0), n, (d,) * len(cells), k, cell=cells)
    both_ways = dj.init_bidirectional_layer(jax.random.key(1), n, d, cell=cells[-1])
    xs = random_inputs(1, (T, m, n), np.float32)
    tokens = jnp.array([[0, 1], [1, 1], [1, 0], [0, 0]])
    targets, labels = jnp.array([[0, 1], [1, 1], [1, 0], [0, 1]]), jnp.array([1, 0])

    def results(lengths):
        r = {}
        for name, method in (("omega", dj.Omega()), ("sqrt", dj.BPTT(checkpoint="sqrt"))):
            options = dict(lengths=lengths, method=method)
            r[f"{name} sequence"], r[f"{name} sequence gradient"] = jax.value_and_grad(
                dj.sequence_loss
            )(params, xs, targets, **options)
            # The value only: its gradient would cost a compile of its own, and the NaN
            # factor is the one the gradients above check.
            r[f"{name} many-to-one"] = dj.many_to_one_loss(params, xs, labels, **options)
        r["omega mean"] = dj.sequence_loss(params, xs, targets, reduction="mean", lengths=lengths)
        forward = dj.rnn_forward(params, xs, lengths=lengths)
        r["outputs"], r["final states"] = forward.outputs, forward.final_states
        r["token outputs"] = dj.rnn_apply(params, tokens, lengths=lengths)
        for l, cell in enumerate(cells):
            layer = LAYERS[cell](params.layers[l], xs, lengths=lengths)  # n = d
            r[f"{cell} layer"] = layer[0] if cell == "lstm" else layer
        r["bidirectional"] = dj.bidirectional_layer(both_ways, xs, lengths=lengths)
        return r

    r = jax.device_get(jax.jit(jax.vmap(results), compiler_options=CHEAP_COMPILE)(JIT_LENGTHS))
    # (That valid lengths give exact gradients, the tests above and those of
    # test_cells.py and test_checkpointed_loss.py check against oracles.)
    for name in ("omega", "sqrt"):
        gradient = jax.tree.leaves(r.pop(f"{name} sequence gradient"))
        assert all(np.isfinite(leaf[0]).all() for leaf in gradient), name
        assert all(np.isnan(leaf[1:]).all() for leaf in gradient), name
    for name in ("omega sequence", "sqrt sequence", "omega many-to-one", "sqrt many-to-one"):
        assert np.isfinite(r[name][0]) and np.isnan(r[name][1:]).all(), name
    assert np.isfinite(r["omega mean"][0]) and np.isnan(r["omega mean"][1:]).all()
    # A sequence with a bad length is NaN at every step; the other one is untouched.
    bad = (JIT_LENGTHS < 0) | (JIT_LENGTHS > T)  # (rows, m)
    states = ["outputs", "token outputs", "bidirectional", *(f"{cell} layer" for cell in cells)]
    for name in states:
        per_sequence = np.moveaxis(r[name], 2, 1)  # (rows, m, T, features)
        assert np.isnan(per_sequence[bad]).all(), name
        assert np.isfinite(per_sequence[~bad]).all(), name
        # The same sequence and length in another row of the batch: the same numbers, to
        # rounding (rows of a vmapped program may be summed in another order).
        for i, v in zip(*np.nonzero(~bad)):
            np.testing.assert_allclose(
                per_sequence[i, v], per_sequence[0, v], rtol=1e-6, atol=1e-7, err_msg=name
            )
    for final in jax.tree.leaves(r["final states"]):
        assert np.isnan(final[bad]).all() and np.isfinite(final[~bad]).all()
