"""Tests for fastlstm._packing against plain NumPy versions written here."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fastlstm._packing import (
    batch_sizes_from_lengths,
    pack_sequences,
    unpack_sequences,
)

DTYPES = [np.float32, np.float64]

# Each case is the list of sequence lengths; the batch order is computed.
LENGTH_CASES = {
    "ties": [3, 5, 1, 5, 3, 3, 2],
    "single": [7],
    "all_equal": [4, 4, 4, 4],
    "all_length_one": [1, 1, 1],
    "one_step_each_but_one": [1, 6, 1, 1],
    "random": list(np.random.RandomState(0).randint(1, 30, size=40)),
}


# --- NumPy versions, written from the definition of the layout --------------


def pack_naive(sequences, order):
    """Step by step, the rows of the sequences still active at that step."""
    lengths = [len(sequences[i]) for i in order]
    rows = [
        sequences[i][t]
        for t in range(max(lengths, default=0))
        for i in order
        if len(sequences[i]) > t
    ]
    n_features = sequences[order[0]].shape[1] if len(order) else 0
    return np.array(rows, dtype=np.float64).reshape(-1, n_features)


def unpack_naive(packed, lengths_in_order):
    """Inverse of pack_naive: deal the packed rows back out, step by step."""
    sequences = [[] for _ in lengths_in_order]
    row = 0
    for t in range(max(lengths_in_order, default=0)):
        for j, length in enumerate(lengths_in_order):
            if length > t:
                sequences[j].append(packed[row])
                row += 1
    assert row == len(packed)
    return [np.array(rows).reshape(-1, packed.shape[1]) for rows in sequences]


def batch_sizes_naive(sorted_lengths):
    lengths = np.asarray(sorted_lengths)
    return np.array([(lengths > t).sum() for t in range(lengths.max())])


# --- helpers -----------------------------------------------------------------


def make_sequences(lengths, n_features, dtype, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.normal(size=(length, n_features)).astype(dtype) for length in lengths]


def longest_first(sequences, indices=None):
    """Indices sorted by non-increasing length, ties kept in index order."""
    if indices is None:
        indices = np.arange(len(sequences))
    lengths = np.array([len(sequences[i]) for i in indices])
    return np.asarray(indices, dtype=np.int64)[np.argsort(-lengths, kind="stable")]


def packed_rows(sequences, order):
    return sum(len(sequences[i]) for i in order)


# --- pack / unpack -----------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", LENGTH_CASES.values(), ids=LENGTH_CASES.keys())
@pytest.mark.parametrize("n_threads", [1, 4])
def test_pack_matches_naive(lengths, dtype, n_threads):
    sequences = make_sequences(lengths, n_features=3, dtype=dtype)
    order = longest_first(sequences)
    out = np.full((packed_rows(sequences, order), 3), np.nan, dtype=dtype)

    pack_sequences(sequences, order, out, n_threads=n_threads)

    assert_array_equal(out, pack_naive(sequences, order).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_subset_of_sequences(dtype):
    # A mini-batch names only some of the sequences, in its own order.
    sequences = make_sequences([4, 2, 6, 2, 5, 1], n_features=2, dtype=dtype)
    order = longest_first(sequences, indices=[5, 3, 0, 2])
    assert_array_equal(order, [2, 0, 3, 5])
    out = np.empty((packed_rows(sequences, order), 2), dtype=dtype)

    pack_sequences(sequences, order, out)

    assert_array_equal(out, pack_naive(sequences, order).astype(dtype))


def test_pack_layout_by_hand():
    # Row values encode (sequence, step) so the layout can be read directly.
    sequences = [
        np.array([[10.0], [11.0]]),
        np.array([[20.0], [21.0], [22.0]]),
        np.array([[30.0]]),
    ]
    order = np.array([1, 0, 2], dtype=np.int64)
    out = np.empty((6, 1))

    pack_sequences(sequences, order, out)

    assert_array_equal(out.ravel(), [20, 10, 30, 21, 11, 22])


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_accepts_read_only_inputs(dtype):
    sequences = make_sequences([5, 3, 3], n_features=4, dtype=dtype)
    for sequence in sequences:
        sequence.setflags(write=False)
    order = longest_first(sequences)
    order.setflags(write=False)
    out = np.empty((11, 4), dtype=dtype)

    pack_sequences(sequences, order, out)

    assert_array_equal(out, pack_naive(sequences, order).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_reads_every_kind_of_buffer_alike(dtype):
    # Plain ndarrays are read through NumPy's C API, anything else through a
    # typed view: a buffer that is not an ndarray, an unaligned array and an
    # ndarray subclass must pack exactly like plain arrays.
    sequences = make_sequences([5, 4, 3, 2], n_features=3, dtype=dtype)
    raw = np.zeros(sequences[1].nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=dtype, count=sequences[1].size,
                              offset=1).reshape(sequences[1].shape)
    unaligned[...] = sequences[1]
    assert not unaligned.flags.aligned
    mixed = [sequences[0], unaligned, memoryview(sequences[2]), sequences[3].view(np.matrix)]
    order = longest_first(sequences)
    out = np.full((14, 3), np.nan, dtype=dtype)

    pack_sequences(mixed, order, out)

    assert_array_equal(out, pack_naive(sequences, order).astype(dtype))


def test_pack_repeated_index():
    # Repeating a sequence is harmless when packing (only reads are shared).
    sequences = make_sequences([3, 2], n_features=2, dtype=np.float64)
    order = np.array([0, 0, 1], dtype=np.int64)
    out = np.empty((8, 2))

    pack_sequences(sequences, order, out)

    assert_array_equal(out, pack_naive(sequences, order))


def test_empty_sequences_and_batches():
    # Zero-length sequences sort last and contribute no rows.
    sequences = make_sequences([3, 0, 2], n_features=2, dtype=np.float64)
    order = np.array([0, 2, 1], dtype=np.int64)
    out = np.empty((5, 2))
    pack_sequences(sequences, order, out)
    assert_array_equal(out, pack_naive(sequences, order))

    back = [np.empty_like(s) for s in sequences]
    unpack_sequences(out, order, back)
    for expected, got in zip(sequences, back):
        assert_array_equal(got, expected)

    no_order = np.array([], dtype=np.int64)
    pack_sequences(sequences, no_order, np.empty((0, 2)))
    unpack_sequences(np.empty((0, 2)), no_order, back)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", LENGTH_CASES.values(), ids=LENGTH_CASES.keys())
@pytest.mark.parametrize("n_threads", [1, 4])
def test_unpack_matches_naive(lengths, dtype, n_threads):
    rng = np.random.RandomState(1)
    out_sequences = [np.full((length, 5), np.nan, dtype=dtype) for length in lengths]
    order = longest_first(out_sequences)
    packed = rng.normal(size=(sum(lengths), 5)).astype(dtype)
    packed.setflags(write=False)

    unpack_sequences(packed, order, out_sequences, n_threads=n_threads)

    expected = unpack_naive(packed, [lengths[i] for i in order])
    for j, index in enumerate(order):
        assert_array_equal(out_sequences[index], expected[j])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", LENGTH_CASES.values(), ids=LENGTH_CASES.keys())
def test_round_trip(lengths, dtype):
    sequences = make_sequences(lengths, n_features=3, dtype=dtype, seed=2)
    order = longest_first(sequences)
    packed = np.empty((sum(lengths), 3), dtype=dtype)
    back = [np.empty_like(s) for s in sequences]

    pack_sequences(sequences, order, packed, n_threads=2)
    unpack_sequences(packed, order, back, n_threads=2)

    for expected, got in zip(sequences, back):
        assert_array_equal(got, expected)


def test_unpack_leaves_other_arrays_alone():
    out_sequences = [np.zeros((2, 1)), np.zeros((3, 1)), np.zeros((1, 1))]
    order = np.array([1, 2], dtype=np.int64)
    packed = np.arange(4.0).reshape(4, 1)

    unpack_sequences(packed, order, out_sequences)

    assert_array_equal(out_sequences[0], 0.0)
    assert_array_equal(out_sequences[1].ravel(), [0, 2, 3])
    assert_array_equal(out_sequences[2].ravel(), [1])


def test_pack_matches_torch_packed_sequence():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_sequence

    sequences = make_sequences(LENGTH_CASES["random"], n_features=3, dtype=np.float64)
    order = longest_first(sequences)
    out = np.empty((packed_rows(sequences, order), 3))

    pack_sequences(sequences, order, out)

    packed = pack_sequence([torch.from_numpy(sequences[i]) for i in order])
    assert_array_equal(out, packed.data.numpy())
    lengths = np.array([len(sequences[i]) for i in order])
    batch_sizes = np.empty(lengths[0], dtype=np.int64)
    batch_sizes_from_lengths(lengths, batch_sizes)
    assert_array_equal(batch_sizes, packed.batch_sizes.numpy())


# --- batch sizes -------------------------------------------------------------


@pytest.mark.parametrize("lengths", LENGTH_CASES.values(), ids=LENGTH_CASES.keys())
def test_batch_sizes_match_naive(lengths):
    sorted_lengths = np.sort(np.asarray(lengths, dtype=np.int64))[::-1].copy()
    out = np.full(sorted_lengths[0], -1, dtype=np.int64)

    batch_sizes_from_lengths(sorted_lengths, out)

    assert_array_equal(out, batch_sizes_naive(sorted_lengths))
    assert out.sum() == sorted_lengths.sum()


def test_batch_sizes_edge_cases():
    out = np.empty(3, dtype=np.int64)
    batch_sizes_from_lengths(np.array([3, 3, 0], dtype=np.int64), out)
    assert_array_equal(out, [2, 2, 2])

    empty = np.empty(0, dtype=np.int64)
    batch_sizes_from_lengths(empty, empty)
    batch_sizes_from_lengths(np.zeros(2, dtype=np.int64), empty)


# --- errors ------------------------------------------------------------------


@pytest.fixture
def batch():
    sequences = make_sequences([4, 2, 3], n_features=2, dtype=np.float64)
    order = np.array([0, 2, 1], dtype=np.int64)
    return sequences, order, np.empty((9, 2))


def test_pack_rejects_unsorted_order(batch):
    sequences, _, out = batch
    order = np.array([0, 1, 2], dtype=np.int64)
    msg = r"non-increasing length.*sequences\[2\] \(order\[2\]\) has length 3"
    with pytest.raises(ValueError, match=msg):
        pack_sequences(sequences, order, out)


@pytest.mark.parametrize("bad_index", [3, -1])
def test_pack_rejects_out_of_range_index(batch, bad_index):
    sequences, order, out = batch
    order[1] = bad_index
    msg = rf"order\[1\] = {bad_index} is out of range for sequences of length 3"
    with pytest.raises(ValueError, match=msg):
        pack_sequences(sequences, order, out)


def test_pack_rejects_feature_mismatch(batch):
    sequences, order, out = batch
    sequences[2] = np.zeros((3, 5))
    msg = r"sequences\[2\] has 5 features, expected 2 \(out.shape\[1\]\)"
    with pytest.raises(ValueError, match=msg):
        pack_sequences(sequences, order, out)


def test_pack_rejects_wrong_out_width(batch):
    sequences, order, _ = batch
    msg = r"sequences\[0\] has 2 features, expected 3 \(out.shape\[1\]\)"
    with pytest.raises(ValueError, match=msg):
        pack_sequences(sequences, order, np.empty((9, 3)))


def test_pack_rejects_dtype_mismatch(batch):
    sequences, order, out = batch
    sequences[1] = sequences[1].astype(np.float32)
    msg = r"sequences\[1\] has dtype float32, expected float64 \(the dtype of out\)"
    with pytest.raises(ValueError, match=msg):
        pack_sequences(sequences, order, out)


def test_pack_rejects_wrong_out_rows(batch):
    sequences, order, _ = batch
    msg = "out must have one row per step.*expected 9 rows, got 8"
    with pytest.raises(ValueError, match=msg):
        pack_sequences(sequences, order, np.empty((8, 2)))


@pytest.mark.parametrize(
    "bad, reason",
    [
        (np.zeros((6, 2))[::2], "C-contiguous"),
        (np.zeros(3), "dimensions"),
        ([[0.0, 0.0]] * 3, ""),
    ],
    ids=["strided", "1-D", "list"],
)
def test_pack_rejects_non_arrays(batch, bad, reason):
    sequences, order, out = batch
    sequences[2] = bad
    msg = r"sequences\[2\] cannot be read as a C-contiguous 2-D float64 array.*"
    with pytest.raises(ValueError, match=msg + reason):
        pack_sequences(sequences, order, out)


def test_pack_rejects_unsupported_out_dtype(batch):
    # Dispatch happens on out's dtype: only float32 and float64 exist.
    sequences, order, _ = batch
    with pytest.raises(TypeError):
        pack_sequences(sequences, order, np.empty((9, 2), dtype=np.float16))


def test_rejects_bad_n_threads(batch):
    sequences, order, out = batch
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        pack_sequences(sequences, order, out, n_threads=0)
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        unpack_sequences(out, order, sequences, n_threads=0)


def test_unpack_rejects_repeated_index(batch):
    sequences, _, packed = batch
    order = np.array([0, 0], dtype=np.int64)
    with pytest.raises(ValueError, match=r"order\[1\] = 0 repeats an earlier index"):
        unpack_sequences(packed[:8], order, sequences)


def test_unpack_rejects_read_only_output(batch):
    sequences, order, packed = batch
    sequences[1].setflags(write=False)
    msg = r"out_sequences\[1\] cannot be written as a writable.*read-only"
    with pytest.raises(ValueError, match=msg):
        unpack_sequences(packed, order, sequences)


def test_unpack_rejects_mismatches(batch):
    sequences, order, packed = batch
    with pytest.raises(ValueError, match=r"out_sequences\[0\] has dtype float64, "
                       r"expected float32 \(the dtype of packed\)"):
        unpack_sequences(packed.astype(np.float32), order, sequences)
    with pytest.raises(ValueError, match=r"out_sequences\[0\] has 2 features, "
                       r"expected 4 \(packed.shape\[1\]\)"):
        unpack_sequences(np.empty((9, 4)), order, sequences)
    with pytest.raises(ValueError, match="packed must have one row per step.*"
                       "expected 9 rows, got 10"):
        unpack_sequences(np.empty((10, 2)), order, sequences)
    with pytest.raises(ValueError, match="non-increasing length"):
        unpack_sequences(packed, order[::-1].copy(), sequences)
    with pytest.raises(ValueError, match=r"order\[2\] = 7 is out of range for "
                       "out_sequences of length 3"):
        unpack_sequences(packed, np.array([0, 2, 7], dtype=np.int64), sequences)


def test_batch_sizes_errors():
    out = np.empty(3, dtype=np.int64)
    with pytest.raises(ValueError, match=r"sorted_lengths must be non-increasing, "
                       r"but sorted_lengths\[2\] = 3 > sorted_lengths\[1\] = 1"):
        batch_sizes_from_lengths(np.array([3, 1, 3], dtype=np.int64), out)
    with pytest.raises(ValueError, match=r"sorted_lengths\[1\] = -1 is negative"):
        batch_sizes_from_lengths(np.array([3, -1], dtype=np.int64), out)
    with pytest.raises(ValueError, match=r"expected shape \(4,\), got \(3,\)"):
        batch_sizes_from_lengths(np.array([4, 1], dtype=np.int64), out)
