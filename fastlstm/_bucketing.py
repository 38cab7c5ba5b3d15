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
    target_rows : ndarray of shape (n_rows,), int64, or None
        For per-step targets: the row of each packed step in the table of all
        steps' targets.
    """

    X: np.ndarray
    batch_sizes: np.ndarray
    order: np.ndarray
    target_rows: np.ndarray | None = None

    @property
    def size(self):
        return self.order.shape[0]


def length_sorted_batches(lengths, batch_size, rng=None, *, by_length=True):
    """Cut the dataset into mini-batches, by default of sequences of similar length.

    Parameters
    ----------
    lengths : ndarray of shape (n_sequences,)
    batch_size : int
    rng : numpy.random.RandomState, default=None
        Shuffles the sequences first (with ``by_length``, that only breaks
        ties between equal lengths); None keeps dataset order.
    by_length : bool, default=True
        Sort the sequences by length before cutting (bucketing). Without it,
        batches mix lengths; each is still sorted longest first for packing.

    Returns
    -------
    batches : list of ndarray of int64
        Sequence indices of each batch, longest first.
    """
    lengths = np.asarray(lengths)
    order = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    if by_length:
        # A stable sort on -length keeps the (possibly shuffled) order among ties.
        order = order[np.argsort(-lengths[order], kind="stable")]
    order = order.astype(np.int64)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if not by_length:
        batches = [batch[np.argsort(-lengths[batch], kind="stable")] for batch in batches]
    return batches


def pack_batch(sequences, lengths, order, *, max_length=None, step_starts=None):
    """Pack the sequences ``order`` (longest first) into a :class:`PackedBatch`.

    Parameters
    ----------
    sequences : list of ndarray of shape (T_i, n_features)
        C-contiguous, all of the same float dtype.
    lengths : ndarray of shape (n_sequences,), int64
    order : ndarray of int64
        From :func:`length_sorted_batches`.
    max_length : int, default=None
        Keep only the first ``max_length`` steps of every sequence.
    step_starts : ndarray of shape (n_sequences,), default=None
        For per-step targets, the row of each sequence's first step in the
        targets table; sets ``target_rows``.

    Returns
    -------
    batch : PackedBatch
    """
    if max_length is not None and max_length < lengths[order].max():
        # Views, not copies: the packing pass is the only copy.
        sequences = [sequences[i][:max_length] for i in order]
        lengths = np.minimum(lengths[order], max_length)
        packed = pack_batch(sequences, lengths, np.arange(len(order), dtype=np.int64))
        packed.order = order
    else:
        batch_lengths = np.ascontiguousarray(lengths[order], dtype=np.int64)
        n_features = sequences[order[0]].shape[1]
        X = np.empty((int(batch_lengths.sum()), n_features), dtype=sequences[order[0]].dtype)
        pack_sequences(sequences, order, X)
        batch_sizes = np.empty(int(batch_lengths[0]), dtype=np.int64)
        batch_sizes_from_lengths(batch_lengths, batch_sizes)
        packed = PackedBatch(X, batch_sizes, order)
    if step_starts is not None:
        # Packed row (t, j) is step t of sequence order[j].
        # Both from np.repeat: an arange per step cost 0.7 ms of a 1000-step
        # prediction of one sequence (2.9 ms).
        sizes = packed.batch_sizes
        steps = np.repeat(np.arange(len(sizes)), sizes)
        positions = np.arange(len(steps)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        packed.target_rows = step_starts[packed.order[positions]] + steps
    return packed


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
        rows = slice(offsets[start], offsets[stop])
        chunk = PackedBatch(batch.X[rows], batch.batch_sizes[start:stop], batch.order[:n_active],
                            None if batch.target_rows is None else batch.target_rows[rows])
        n_continuing = int(batch.batch_sizes[stop]) if stop < n_steps else 0
        chunks.append((chunk, n_continuing))
    return chunks
