"""Turning what users pass as X into the list of sequences the engine reads.

Accepted: a list (or tuple, or 1-D object array) of ``(T_i, n_features)``
arrays, a 3-D array ``(n_sequences, T, n_features)``, or a 2-D array
``(n_sequences, T)`` of univariate sequences. In the array forms, shorter
sequences may end in rows of NaN (tslearn's convention): those rows are
padding, not data. Each sequence becomes a C-contiguous array of the model's
dtype; an array that already is one is used as it is (never written to, so
read-only memory maps work), any other is copied once.
"""

import functools

import numpy as np
from scipy import sparse


def _strip_nan_padding(X):
    """Views of the sequences of a 3-D array without their trailing NaN rows."""
    if not np.issubdtype(X.dtype, np.floating):
        return list(X)
    is_data = ~np.isnan(X).all(axis=2)
    # Length = one past the last row that is not entirely NaN.
    lengths = X.shape[1] - np.argmax(is_data[:, ::-1], axis=1)
    lengths[~is_data.any(axis=1)] = 0
    return [X[i, :length] for i, length in enumerate(lengths)]


def _as_sequence_list(X):
    """Split X into a list of per-sequence arrays, without copying data."""
    if sparse.issparse(X):
        raise TypeError(
            "Sparse input is not supported: an LSTM reads dense sequences. Pass "
            "X.toarray() (a 2-D array is read as univariate sequences (n_sequences, T))."
        )
    if not isinstance(X, (list, tuple, np.ndarray)) and hasattr(X, "__array__"):
        X = np.asarray(X)  # array-likes (DataFrame, xarray): by rows, not by iteration
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim in (2, 3) and 0 in X.shape[1:]:
            raise ValueError(
                f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is "
                "required: X must have at least one time step and one feature."
            )
        if X.ndim == 3:
            return _strip_nan_padding(X)
        if X.ndim == 2:
            # (n_sequences, T): univariate sequences, so that 2-D tabular
            # input (as in scikit-learn's own checks) has a meaning.
            return _strip_nan_padding(X[:, :, np.newaxis])
        raise ValueError(
            "X must be a list of (T_i, n_features) arrays, a 3-D array "
            f"(n_sequences, T, n_features) or a 2-D array (n_sequences, T); got an "
            f"array with {X.ndim} dimension(s) of shape {X.shape}. Reshape your data: "
            "X[np.newaxis] is one univariate sequence."
        )
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
        raise TypeError(
            "X must be a list of (T_i, n_features) arrays or an array of sequences; "
            f"got {type(X).__name__}."
        )
    return list(X)


@functools.lru_cache(maxsize=64)
def _is_numeric(dtype):
    # np.issubdtype takes microseconds, and predict asks once per sequence.
    return np.issubdtype(dtype, np.number) or dtype.kind == "b"


def check_sequences(X, *, dtype, n_features=None):
    """Validate and convert X into a list of C-contiguous float arrays.

    Parameters
    ----------
    X : list of array-like of shape (T_i, n_features), or ndarray
        The sequences (see the module docstring for the accepted layouts).
    dtype : numpy dtype
        Float dtype of the model.
    n_features : int, default=None
        Expected feature count (at predict time); None accepts the count of the
        first sequence and requires it of all others.

    Returns
    -------
    sequences : list of ndarray of shape (T_i, n_features)
    lengths : ndarray of shape (n_sequences,), int64

    Raises
    ------
    ValueError
        With the index of the offending sequence: empty X, empty sequence,
        wrong number of dimensions or features, NaN or infinite values.
    TypeError
        If X, or one of its sequences, is not numeric.
    """
    raw = _as_sequence_list(X)
    if len(raw) == 0:
        raise ValueError("X contains no sequences; at least one is required.")
    sequences = []
    for index, seq in enumerate(raw):
        try:
            seq = np.asarray(seq)
        except ValueError as error:  # e.g. a ragged nested list inside one sequence
            raise ValueError(f"Sequence {index} of X is not a rectangular array: {error}") from None
        if seq.dtype.kind == "c":
            raise ValueError(f"Complex data not supported (sequence {index} of X).")
        if seq.dtype == object:  # numbers stored as objects, as check_array converts
            try:
                seq = seq.astype(np.float64)
            except (TypeError, ValueError) as error:
                raise TypeError(
                    f"Sequence {index} of X has dtype object with non-numeric elements: {error}"
                ) from None
        if not _is_numeric(seq.dtype):
            raise TypeError(
                f"Sequence {index} of X has dtype {seq.dtype}; expected numbers."
            )
        if seq.ndim == 1:
            seq = seq[:, np.newaxis]
        if seq.ndim != 2:
            raise ValueError(
                f"Sequence {index} of X has shape {seq.shape}; expected a 2-D array "
                "(n_steps, n_features) (or 1-D for a univariate sequence)."
            )
        if seq.shape[0] == 0:
            raise ValueError(f"Sequence {index} of X is empty (0 time steps).")
        if n_features is None:
            n_features = seq.shape[1]
        if seq.shape[1] != n_features:
            raise ValueError(
                f"Sequence {index} of X has {seq.shape[1]} features, expected {n_features}."
            )
        sequences.append(np.ascontiguousarray(seq, dtype=dtype))
    _check_finite(sequences)
    lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
    return sequences, lengths


# Sequences are checked for NaN and infinity in groups of about this many
# values, concatenated: one isfinite per group instead of one per sequence
# (8 instead of 37 us for W1's 27 sequences, most of a prediction's checks),
# with a temporary copy no larger than this.
_FINITE_GROUP = 1 << 16


def _check_finite(sequences):
    """Raise, naming the first sequence and step, if any value is NaN or infinite."""
    start = 0
    while start < len(sequences):
        stop, size = start, 0
        while stop < len(sequences) and (stop == start or size + sequences[stop].size <= _FINITE_GROUP):
            size += sequences[stop].size
            stop += 1
        group = sequences[start:stop]
        if not np.isfinite(group[0] if len(group) == 1 else np.concatenate(group)).all():
            for index in range(start, stop):
                finite_rows = np.isfinite(sequences[index]).all(axis=1)
                if not finite_rows.all():
                    step = int(np.argmin(finite_rows))
                    raise ValueError(
                        f"Sequence {index} of X contains NaN or infinity (first at step {step})."
                    )
        start = stop


def is_per_step_target(y):
    """Whether y holds one target array per sequence (sequence-to-sequence).

    A list, tuple or object array whose elements are arrays (not scalars) is
    per-step targets; anything else (a 1-D or 2-D numeric array) holds one
    target per sequence.
    """
    if isinstance(y, np.ndarray) and y.dtype != object:
        return False
    if not isinstance(y, (list, tuple, np.ndarray)) or len(y) == 0:
        return False
    return np.ndim(y[0]) >= 1


def check_step_targets(y, lengths):
    """Validate per-step targets against the sequences' lengths.

    Parameters
    ----------
    y : list of array-like of shape (T_i,) or (T_i, n_outputs)
    lengths : ndarray of shape (n_sequences,)

    Returns
    -------
    targets : ndarray of shape (sum of T_i,) or (sum of T_i, n_outputs)
        All steps' targets, sequence after sequence.
    starts : ndarray of shape (n_sequences,), int64
        Row of each sequence's first step in ``targets``.
    """
    if len(y) != len(lengths):
        raise ValueError(
            f"X has {len(lengths)} sequences but y has {len(y)} target sequences; "
            "expected one per sequence."
        )
    arrays = []
    for index, (target, length) in enumerate(zip(y, lengths)):
        target = np.asarray(target)
        if target.ndim not in (1, 2):
            raise ValueError(
                f"Target sequence {index} has shape {target.shape}; expected (T_i,) or "
                "(T_i, n_outputs)."
            )
        if target.shape[0] != length:
            hint = ""
            if len({np.shape(t)[:1] for t in y}) == 1:
                # Every target has the same length: most likely several
                # outputs per sequence, given as a list of lists.
                hint = (" If y holds several outputs per sequence, pass it as a 2-D array "
                        "of shape (n_sequences, n_outputs).")
            raise ValueError(
                f"Target sequence {index} has {target.shape[0]} steps but sequence {index} "
                f"of X has {length}; per-step targets need one target per time step.{hint}"
            )
        if arrays and target.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"Target sequence {index} has shape {target.shape}; the first has "
                f"{arrays[0].shape}: every step needs the same number of outputs."
            )
        arrays.append(target)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.concatenate(arrays), starts
