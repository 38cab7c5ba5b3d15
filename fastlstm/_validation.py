"""Turning what users pass as X into the list of sequences the engine reads.

Accepted: a list (or tuple, or 1-D object array) of ``(T_i, n_features)``
arrays, a 3-D array ``(n_sequences, T, n_features)``, or a 2-D array
``(n_sequences, T)`` of univariate sequences. Each sequence becomes a
C-contiguous array of the model's dtype; an array that already is one is
used as it is (never written to), any other is copied once.
"""

import numbers

import numpy as np


def _as_sequence_list(X):
    """Split X into a list of per-sequence arrays, without copying data."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 3:
            return list(X)
        if X.ndim == 2:
            # (n_sequences, T): univariate sequences, so that 2-D tabular
            # input (as in scikit-learn's own checks) has a meaning.
            return list(X[:, :, np.newaxis])
        raise ValueError(
            "X must be a list of (T_i, n_features) arrays, a 3-D array "
            f"(n_sequences, T, n_features) or a 2-D array (n_sequences, T); got an "
            f"array with {X.ndim} dimension(s) of shape {X.shape}."
        )
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
        raise TypeError(
            "X must be a list of (T_i, n_features) arrays or an array of sequences; "
            f"got {type(X).__name__}."
        )
    return list(X)


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
        if seq.dtype == object or not (
            np.issubdtype(seq.dtype, np.number) or seq.dtype == bool
        ):
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
        seq = np.ascontiguousarray(seq, dtype=dtype)
        if not np.isfinite(seq).all():
            step = int(np.nonzero(~np.isfinite(seq).all(axis=1))[0][0])
            raise ValueError(
                f"Sequence {index} of X contains NaN or infinity (first at step {step})."
            )
        sequences.append(seq)
    lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
    return sequences, lengths


def check_positive_int(value, name):
    """Raise a clear error unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
