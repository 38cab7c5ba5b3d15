"""Length bucketing: mini-batches of similar lengths, packed without padding.

Sorting by length before cutting mini-batches means the sequences of a batch
have nearly the same length, so the kernels' active prefix shrinks slowly and
no time is spent on steps a sequence does not have.
"""

from dataclasses import dataclass

import numpy as np

from ._packing import batch_sizes_from_lengths, pack_sequences


@dataclass
class PackedBatch:
    """One mini-batch in the kernels' packed, time-major layout.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features)
        Rows of step t are the sequences still active at t, longest first.
    batch_sizes : ndarray of shape (max_length,), int64
        Active sequences at each step.
    order : ndarray of shape (batch_size,), int64
        Indices of the batch's sequences in the dataset, longest first.
    """

    X: np.ndarray
    batch_sizes: np.ndarray
    order: np.ndarray

    @property
    def size(self):
        return self.order.shape[0]


def length_sorted_batches(lengths, batch_size, rng=None):
    """Cut the dataset into mini-batches of sequences of similar length.

    Parameters
    ----------
    lengths : ndarray of shape (n_sequences,)
    batch_size : int
    rng : numpy.random.RandomState, default=None
        Breaks ties between equal lengths at random; None keeps dataset order.

    Returns
    -------
    batches : list of ndarray of int64
        Sequence indices of each batch, longest first.
    """
    lengths = np.asarray(lengths)
    candidates = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    # A stable sort on -length keeps the (possibly shuffled) order among ties.
    order = candidates[np.argsort(-lengths[candidates], kind="stable")].astype(np.int64)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def pack_batch(sequences, lengths, order):
    """Pack the sequences ``order`` (longest first) into a :class:`PackedBatch`.

    Parameters
    ----------
    sequences : list of ndarray of shape (T_i, n_features)
        C-contiguous, all of the same float dtype.
    lengths : ndarray of shape (n_sequences,), int64
    order : ndarray of int64
        From :func:`length_sorted_batches`.

    Returns
    -------
    batch : PackedBatch
    """
    batch_lengths = np.ascontiguousarray(lengths[order], dtype=np.int64)
    n_features = sequences[order[0]].shape[1]
    X = np.empty((int(batch_lengths.sum()), n_features), dtype=sequences[order[0]].dtype)
    pack_sequences(sequences, order, X)
    batch_sizes = np.empty(int(batch_lengths[0]), dtype=np.int64)
    batch_sizes_from_lengths(batch_lengths, batch_sizes)
    return PackedBatch(X, batch_sizes, order)


# Sequences per shard at most. Shards are the unit of parallel work inside a
# mini-batch; they are fixed by the batch size alone, never by the number of
# threads, so that results do not depend on the thread count.
MAX_SHARD_SIZE = 32


def shard_orders(order, max_shard_size=MAX_SHARD_SIZE):
    """Split one mini-batch into shards of at most ``max_shard_size`` sequences.

    Sequences are dealt round-robin, so every shard gets long and short ones
    alike and the shards take about the same time; each shard stays sorted
    longest first.

    Parameters
    ----------
    order : ndarray of int64
        A mini-batch, longest first.
    max_shard_size : int

    Returns
    -------
    shards : list of ndarray of int64
    """
    n_shards = -(-len(order) // max_shard_size)
    return [np.ascontiguousarray(order[start::n_shards]) for start in range(n_shards)]


def time_chunks(batch, chunk_length):
    """Cut a packed batch into consecutive chunks of ``chunk_length`` steps.

    Because the layout is time-major, a chunk is a contiguous block of rows,
    and the sequences active in it are a prefix of the batch.

    Parameters
    ----------
    batch : PackedBatch
    chunk_length : int or None
        None returns the whole batch as a single chunk.

    Returns
    -------
    chunks : list of (PackedBatch, int)
        Each chunk and the number of its sequences that go on into the next
        chunk (those are its first rows; the others end inside it).
    """
    n_steps = len(batch.batch_sizes)
    if chunk_length is None or chunk_length >= n_steps:
        return [(batch, 0)]
    offsets = np.concatenate([[0], np.cumsum(batch.batch_sizes)])
    chunks = []
    for start in range(0, n_steps, chunk_length):
        stop = min(start + chunk_length, n_steps)
        n_active = int(batch.batch_sizes[start])
        chunk = PackedBatch(batch.X[offsets[start]:offsets[stop]],
                            batch.batch_sizes[start:stop], batch.order[:n_active])
        n_continuing = int(batch.batch_sizes[stop]) if stop < n_steps else 0
        chunks.append((chunk, n_continuing))
    return chunks
