"""Truncated backpropagation through time (integer ``sequence_length``)."""

import tracemalloc

import numpy as np
import pytest

from fastlstm import LSTMClassifier, LSTMRegressor
from fastlstm._backends import get_backend
from fastlstm._bucketing import pack_batch, time_chunks
from fastlstm._network import NetworkShape, network_forward
from fastlstm._weights import init_parameters, parameter_shapes, unflatten


def test_chunks_cover_the_batch_in_order():
    rng = np.random.default_rng(0)
    sequences = [rng.standard_normal((n, 2)) for n in (9, 7, 7, 3, 1)]
    lengths = np.array([9, 7, 7, 3, 1])
    batch = pack_batch(sequences, lengths, np.arange(5))
    chunks = time_chunks(batch, 4)
    assert [len(c.batch_sizes) for c, _ in chunks] == [4, 4, 1]
    assert [c.size for c, _ in chunks] == [5, 3, 1]
    assert [n for _, n in chunks] == [3, 1, 0]
    np.testing.assert_array_equal(np.concatenate([c.X for c, _ in chunks]), batch.X)
    assert time_chunks(batch, 9)[0][0] is batch


@pytest.mark.parametrize("backend_name", ["numba", "cython", "reference"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_state_carried_across_chunks_gives_the_unchunked_forward(num_layers, backend_name):
    rng = np.random.default_rng(1)
    shape = NetworkShape(hidden_size=5, num_layers=num_layers, bidirectional=False)
    sequences = [rng.standard_normal((n, 3)) for n in (13, 11, 6, 6, 2)]
    lengths = np.array([len(s) for s in sequences])
    batch = pack_batch(sequences, lengths, np.arange(5))
    shapes = parameter_shapes(3, 5, num_layers, False, 1)
    params = unflatten(init_parameters(shapes, np.random.RandomState(0), np.float64), shapes)
    backend = get_backend(backend_name)
    (whole,) = network_forward(params, shape, [batch], backend)
    carried, final = None, np.empty_like(whole.final_hidden)
    for chunk, n_continuing in time_chunks(batch, 4):
        h0 = None if carried is None else [carried[0][:, :chunk.size]]
        c0 = None if carried is None else [carried[1][:, :chunk.size]]
        (part,) = network_forward(params, shape, [chunk], backend, h0=h0, c0=c0)
        final[n_continuing:chunk.size] = part.final_hidden[n_continuing:]
        carried = (part.h_n[:, :n_continuing], part.c_n[:, :n_continuing])
    np.testing.assert_allclose(final, whole.final_hidden, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend_name", ["numba", "cython"])
def test_chunk_longer_than_every_sequence_changes_nothing(backend_name):
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((rng.integers(2, 12), 2)).astype(np.float32) for _ in range(50)]
    y = rng.integers(0, 2, 50)
    params = dict(hidden_size=8, max_epochs=3, batch_size=16, random_state=0, backend=backend_name)
    whole = LSTMClassifier(**params).fit(X, y)
    chunked = LSTMClassifier(sequence_length=12, **params).fit(X, y)
    for name, value in whole.weights_.items():
        np.testing.assert_array_equal(value, chunked.weights_[name])


def test_truncated_training_learns_and_differs_from_full_backpropagation():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((rng.integers(20, 40), 1)).astype(np.float32) for _ in range(200)]
    y = np.array([seq[-5:, 0].sum() for seq in X])  # needs only the last 5 steps
    params = dict(hidden_size=16, max_epochs=30, batch_size=16, learning_rate=1e-2,
                  random_state=0, backend="numba")
    chunked = LSTMRegressor(sequence_length=10, **params).fit(X, y)
    assert chunked.score(X, y) > 0.8
    whole = LSTMRegressor(**params).fit(X, y)
    assert not np.array_equal(whole.weights_["weight_hh_l0"], chunked.weights_["weight_hh_l0"])


def test_memory_grows_with_the_chunk_not_the_sequence():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((3000, 4)).astype(np.float32) for _ in range(8)]
    y = rng.standard_normal(8)

    def peak(sequence_length):
        model = LSTMRegressor(hidden_size=32, max_epochs=1, batch_size=8, random_state=0,
                              sequence_length=sequence_length, backend="numba", n_jobs=1)
        model.fit(X[:1], y[:1])  # compile outside the measurement
        tracemalloc.start()
        model.fit(X, y)
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes

    whole, chunked = peak("longest"), peak(100)
    # Saved activations of the whole sequences: 8 x 3000 steps x (5 x 32 + 4 x 32)
    # floats, about 28 MB; a chunk of 100 steps needs 1/30 of that.
    assert whole > 20e6
    assert chunked < whole / 4


def test_truncation_needs_a_unidirectional_network():
    with pytest.raises(ValueError, match="needs bidirectional=False"):
        LSTMClassifier(bidirectional=True, sequence_length=10).fit(
            [np.zeros((3, 1))] * 4, [0, 1, 0, 1])
