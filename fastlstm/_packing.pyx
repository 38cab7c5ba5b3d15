# cython: language_level=3
"""Pack ragged sequences into the kernels' time-major layout, and back.

The kernels never see Python objects: they read one packed buffer per
mini-batch. The mini-batch is a list of indices into the user's sequences,
sorted so that lengths are non-increasing. Step t of the packed buffer holds
one row per sequence still active at t (``T_i > t``). Those sequences are a
prefix of the sorted batch, so step t is one contiguous block of
``batch_sizes[t]`` rows, starting at the sum of the earlier batch sizes. This
is the layout of ``torch.nn.utils.rnn.PackedSequence.data``.

Conventions:

- IN views are read-only, OUT views are write-only. The caller allocates
  every output.
- Each public function works in two passes. The first holds the GIL and does
  everything that touches Python objects: it reads the list, checks
  shapes and dtypes, and collects raw data pointers. The second copies
  without the GIL, in parallel over sequences. Each sequence owns its rows of
  the packed buffer, so threads never write the same memory.
- ``boundscheck``, ``wraparound`` and ``cdivision`` are set in setup.py,
  not in this header, so that ``FASTLSTM_CYTHON_DEBUG=1`` can turn the checks
  back on. (A header directive would override setup.py.)
"""

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport int64_t
from libc.string cimport memcpy

cnp.import_array()


def pack_sequences(
    list sequences,                 # IN  n_sequences arrays [T_i, n_features]
    const int64_t[::1] order,       # IN  [batch_size] indices, longest first
    floating[:, ::1] out,           # OUT [sum of T_i over order, n_features]
    *,
    int n_threads=1,
):
    """Copy one mini-batch of sequences into the packed time-major layout.

    Parameters
    ----------
    sequences : list of ndarray of shape (T_i, n_features)
        C-contiguous arrays with the dtype of ``out`` (float32 or float64).
        Read-only arrays, such as joblib's memmaps, are accepted.
    order : ndarray of shape (batch_size,), dtype int64
        Indices into ``sequences`` forming the mini-batch, sorted so that
        lengths are non-increasing. An index may repeat.
    out : ndarray of shape (sum of lengths, n_features), float32 or float64
        Packed buffer, filled so that
        ``out[offset_t + j] == sequences[order[j]][t]`` for every step t and
        every j with ``T_{order[j]} > t``. ``offset_t`` is the number of rows
        of the steps before t.
    n_threads : int, default=1
        Number of OpenMP threads. It has no effect when the extension was
        built without OpenMP.

    Raises
    ------
    ValueError
        If an index is out of range, if ``order`` is not sorted by
        non-increasing length, if a sequence is not a C-contiguous 2-D array
        of ``out``'s dtype with ``out.shape[1]`` features, if ``out`` has the
        wrong number of rows, or if ``n_threads < 1``.
    """
    cdef Py_ssize_t batch_size = order.shape[0]
    cdef Py_ssize_t n_features = out.shape[1]
    cdef const floating **rows_in = NULL
    cdef int64_t *lengths = NULL
    cdef int64_t *offsets = NULL
    cdef int64_t max_length

    _check_n_threads(n_threads)
    rows_in = <const floating **> _alloc(batch_size * sizeof(floating *))
    lengths = <int64_t *> _alloc(batch_size * sizeof(int64_t))
    try:
        _gather_read_pointers(sequences, order, n_features, rows_in, lengths)
        _check_total_rows(lengths, batch_size, out.shape[0], "out")
        max_length = lengths[0] if batch_size > 0 else 0
        offsets = <int64_t *> _alloc(max_length * sizeof(int64_t))
        with nogil:
            _fill_step_offsets(lengths, batch_size, offsets)
            if n_features > 0 and out.shape[0] > 0:
                _scatter_to_packed(rows_in, lengths, offsets, batch_size,
                                   n_features, &out[0, 0], n_threads)
    finally:
        PyMem_Free(rows_in)
        PyMem_Free(lengths)
        PyMem_Free(offsets)


def unpack_sequences(
    const floating[:, ::1] packed,  # IN  [sum of T_i over order, width]
    const int64_t[::1] order,       # IN  [batch_size] indices, longest first
    list out_sequences,             # OUT arrays [T_i, width]
    *,
    int n_threads=1,
):
    """Copy a packed time-major buffer back into one array per sequence.

    This is the inverse of :func:`pack_sequences`, for sequence-to-sequence
    outputs. Only the arrays named by ``order`` are written.

    Parameters
    ----------
    packed : ndarray of shape (sum of lengths, width), float32 or float64
        Packed rows, laid out as :func:`pack_sequences` writes them.
    order : ndarray of shape (batch_size,), dtype int64
        Indices into ``out_sequences``, sorted so that lengths are
        non-increasing. Indices must be distinct, because two copies into
        one array would race.
    out_sequences : list of ndarray of shape (T_i, width)
        Writable, C-contiguous arrays with the dtype of ``packed``, allocated
        by the caller. Their lengths give the layout of ``packed``.
        ``out_sequences[order[j]][t] = packed[offset_t + j]``.
    n_threads : int, default=1
        Number of OpenMP threads. It has no effect when the extension was
        built without OpenMP.

    Raises
    ------
    ValueError
        If an index is out of range or repeated, if ``order`` is not sorted
        by non-increasing length, if an output array is read-only or is not a
        C-contiguous 2-D array of ``packed``'s dtype and width, if ``packed``
        has the wrong number of rows, or if ``n_threads < 1``.
    """
    cdef Py_ssize_t batch_size = order.shape[0]
    cdef Py_ssize_t width = packed.shape[1]
    cdef floating **rows_out = NULL
    cdef int64_t *lengths = NULL
    cdef int64_t *offsets = NULL
    cdef int64_t max_length

    _check_n_threads(n_threads)
    rows_out = <floating **> _alloc(batch_size * sizeof(floating *))
    lengths = <int64_t *> _alloc(batch_size * sizeof(int64_t))
    try:
        _gather_write_pointers(out_sequences, order, width, rows_out, lengths)
        _check_total_rows(lengths, batch_size, packed.shape[0], "packed")
        max_length = lengths[0] if batch_size > 0 else 0
        offsets = <int64_t *> _alloc(max_length * sizeof(int64_t))
        with nogil:
            _fill_step_offsets(lengths, batch_size, offsets)
            if width > 0 and packed.shape[0] > 0:
                _gather_from_packed(&packed[0, 0], lengths, offsets,
                                    batch_size, width, rows_out, n_threads)
    finally:
        PyMem_Free(rows_out)
        PyMem_Free(lengths)
        PyMem_Free(offsets)


def batch_sizes_from_lengths(
    const int64_t[::1] sorted_lengths,  # IN  [batch_size], non-increasing
    int64_t[::1] out,                   # OUT [sorted_lengths[0]]
):
    """Count the sequences still active at each step.

    Parameters
    ----------
    sorted_lengths : ndarray of shape (batch_size,), dtype int64
        Non-negative lengths, non-increasing.
    out : ndarray of shape (sorted_lengths[0],), dtype int64
        ``out[t]`` is the number of sequences with length greater than t.
        It has shape (0,) when ``sorted_lengths`` is empty.

    Raises
    ------
    ValueError
        If a length is negative, if the lengths are not non-increasing, or if
        ``out`` does not have one entry per step of the longest sequence.
    """
    cdef Py_ssize_t batch_size = sorted_lengths.shape[0]
    cdef Py_ssize_t j
    cdef int64_t max_length = sorted_lengths[0] if batch_size > 0 else 0

    for j in range(batch_size):
        if sorted_lengths[j] < 0:
            raise ValueError(
                f"sorted_lengths[{j}] = {sorted_lengths[j]} is negative."
            )
        if j > 0 and sorted_lengths[j] > sorted_lengths[j - 1]:
            raise ValueError(
                f"sorted_lengths must be non-increasing, but "
                f"sorted_lengths[{j}] = {sorted_lengths[j]} > "
                f"sorted_lengths[{j - 1}] = {sorted_lengths[j - 1]}."
            )
    if out.shape[0] != max_length:
        raise ValueError(
            f"out must have one entry per step of the longest sequence: "
            f"expected shape ({max_length},), got ({out.shape[0]},)."
        )
    if max_length > 0:
        with nogil:
            _fill_batch_sizes(&sorted_lengths[0], batch_size, &out[0])


# --- Python-side helpers: run with the GIL, raise on bad input --------------


cdef void *_alloc(size_t n_bytes) except NULL:
    # PyMem_Malloc(0) may return NULL, which would read as a failure.
    cdef void *buffer = PyMem_Malloc(n_bytes if n_bytes > 0 else 1)
    if buffer == NULL:
        raise MemoryError()
    return buffer


cdef int _check_n_threads(int n_threads) except -1:
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}.")
    return 0


cdef int _check_total_rows(const int64_t *lengths, Py_ssize_t batch_size,
                           Py_ssize_t n_rows, str name) except -1:
    cdef Py_ssize_t j
    cdef int64_t total = 0
    for j in range(batch_size):
        total += lengths[j]
    if n_rows != total:
        raise ValueError(
            f"{name} must have one row per step of every sequence in order: "
            f"expected {total} rows, got {n_rows}."
        )
    return 0


cdef Py_ssize_t _check_index(Py_ssize_t n_items, const int64_t[::1] order,
                             Py_ssize_t j, str list_name) except -1:
    cdef int64_t index = order[j]
    if index < 0 or index >= n_items:
        raise ValueError(
            f"order[{j}] = {index} is out of range for {list_name} of "
            f"length {n_items}."
        )
    return index


cdef int _check_length_order(const int64_t *lengths, const int64_t[::1] order,
                             Py_ssize_t j, str list_name) except -1:
    # The kernels rely on the active sequences at every step being a prefix
    # of the batch; that holds exactly when lengths never increase.
    if j > 0 and lengths[j] > lengths[j - 1]:
        raise ValueError(
            f"order must sort the sequences by non-increasing length, but "
            f"{list_name}[{order[j]}] (order[{j}]) has length {lengths[j]}, "
            f"longer than the {lengths[j - 1]} of {list_name}[{order[j - 1]}] "
            f"(order[{j - 1}])."
        )
    return 0


cdef int _check_dtype(object array, Py_ssize_t index, str expected,
                      str list_name, str reference_name) except -1:
    # Cython would also reject a wrong dtype, but with a buffer-format message
    # ("expected 'const float' but got 'double'") that names no sequence.
    dtype = getattr(array, "dtype", None)
    if dtype is not None and dtype != expected:
        raise ValueError(
            f"{list_name}[{index}] has dtype {dtype}, expected {expected} "
            f"(the dtype of {reference_name})."
        )
    return 0


cdef int[2] NPY_FLOATING = [cnp.NPY_FLOAT32, cnp.NPY_FLOAT64]


cdef bint _plain_array(object array, Py_ssize_t n_features, int typenum):
    """Whether ``array`` is an aligned, C-contiguous, native-order 2-D ndarray
    of ``typenum`` with ``n_features`` columns (read-only allowed)."""
    if not cnp.PyArray_Check(array):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> array
    return (cnp.PyArray_NDIM(a) == 2 and cnp.PyArray_TYPE(a) == typenum
            and cnp.PyArray_DIM(a, 1) == n_features and cnp.PyArray_ISCARRAY_RO(a)
            and cnp.PyArray_ISNOTSWAPPED(a))


cdef int _gather_read_pointers(
    list sequences,                 # IN
    const int64_t[::1] order,       # IN  [batch_size]
    Py_ssize_t n_features,
    const floating **rows_in,       # OUT [batch_size] first row of each
    int64_t *lengths,               # OUT [batch_size]
) except -1:
    cdef Py_ssize_t j, index
    cdef Py_ssize_t n_items = len(sequences)
    cdef const floating[:, ::1] view
    cdef str dtype_name = "float32" if floating is float else "float64"

    for j in range(order.shape[0]):
        index = _check_index(n_items, order, j, "sequences")
        array = sequences[index]
        if _plain_array(array, n_features, NPY_FLOATING[floating is double]):
            # The usual case, read through NumPy's C API: taking a typed
            # view costs more than the copy of a short sequence.
            lengths[j] = cnp.PyArray_DIM(<cnp.ndarray> array, 0)
            _check_length_order(lengths, order, j, "sequences")
            rows_in[j] = (<const floating *> cnp.PyArray_DATA(<cnp.ndarray> array)
                          if lengths[j] > 0 and n_features > 0 else NULL)
            continue
        try:
            view = array
        except (TypeError, ValueError) as exc:
            # Checked only now: comparing dtypes costs more than taking the
            # view (a third of packing a W1 batch), and names the sequence.
            _check_dtype(array, index, dtype_name, "sequences", "out")
            raise ValueError(
                f"sequences[{index}] cannot be read as a C-contiguous 2-D "
                f"{dtype_name} array: {exc}"
            ) from exc
        if view.shape[1] != n_features:
            raise ValueError(
                f"sequences[{index}] has {view.shape[1]} features, expected "
                f"{n_features} (out.shape[1])."
            )
        lengths[j] = view.shape[0]
        _check_length_order(lengths, order, j, "sequences")
        # The pointer outlives the view: the list keeps the array alive
        # for the whole call. Empty arrays have no element to point at.
        if view.shape[0] > 0 and n_features > 0:
            rows_in[j] = &view[0, 0]
        else:
            rows_in[j] = NULL
    return 0


cdef int _gather_write_pointers(
    list out_sequences,             # IN
    const int64_t[::1] order,       # IN  [batch_size]
    Py_ssize_t width,
    floating **rows_out,            # OUT [batch_size] first row of each
    int64_t *lengths,               # OUT [batch_size]
) except -1:
    cdef Py_ssize_t j, index
    cdef Py_ssize_t n_items = len(out_sequences)
    cdef floating[:, ::1] view
    cdef str dtype_name = "float32" if floating is float else "float64"
    cdef bytearray seen = bytearray(n_items)

    for j in range(order.shape[0]):
        index = _check_index(n_items, order, j, "out_sequences")
        if seen[index]:
            raise ValueError(
                f"order[{j}] = {index} repeats an earlier index; each output "
                f"array can be written only once."
            )
        seen[index] = 1
        array = out_sequences[index]
        try:
            view = array
        except (TypeError, ValueError) as exc:
            _check_dtype(array, index, dtype_name, "out_sequences", "packed")  # see above
            raise ValueError(
                f"out_sequences[{index}] cannot be written as a writable, "
                f"C-contiguous 2-D {dtype_name} array: {exc}"
            ) from exc
        if view.shape[1] != width:
            raise ValueError(
                f"out_sequences[{index}] has {view.shape[1]} features, "
                f"expected {width} (packed.shape[1])."
            )
        lengths[j] = view.shape[0]
        _check_length_order(lengths, order, j, "out_sequences")
        if view.shape[0] > 0 and width > 0:
            rows_out[j] = &view[0, 0]
        else:
            rows_out[j] = NULL
    return 0


# --- nogil cores -------------------------------------------------------------


cdef void _fill_batch_sizes(
    const int64_t *sorted_lengths,  # IN  [batch_size], non-increasing
    Py_ssize_t batch_size,
    int64_t *batch_sizes,           # OUT [sorted_lengths[0]]
) noexcept nogil:
    # Sequences drop out from the end of the batch as t grows, so one
    # backwards-moving counter covers all steps in O(batch_size + T).
    cdef Py_ssize_t n_active = batch_size
    cdef int64_t t
    if batch_size == 0:
        return
    for t in range(sorted_lengths[0]):
        while n_active > 0 and sorted_lengths[n_active - 1] <= t:
            n_active -= 1
        batch_sizes[t] = n_active


cdef void _fill_step_offsets(
    const int64_t *sorted_lengths,  # IN  [batch_size], non-increasing
    Py_ssize_t batch_size,
    int64_t *offsets,               # OUT [sorted_lengths[0]] first row of t
) noexcept nogil:
    cdef int64_t t, n_active, total = 0
    if batch_size == 0:
        return
    # Fill in the batch sizes, then turn them into their exclusive prefix sum
    # in place.
    _fill_batch_sizes(sorted_lengths, batch_size, offsets)
    for t in range(sorted_lengths[0]):
        n_active = offsets[t]
        offsets[t] = total
        total += n_active


cdef void _scatter_to_packed(
    const floating **rows_in,       # IN  [batch_size] -> [T_j, n_features]
    const int64_t *lengths,         # IN  [batch_size]
    const int64_t *offsets,         # IN  [T_max]
    Py_ssize_t batch_size,
    Py_ssize_t n_features,
    floating *packed,               # OUT [sum of T_j, n_features]
    int n_threads,
) noexcept nogil:
    cdef Py_ssize_t j
    cdef int64_t t
    cdef size_t row_bytes = n_features * sizeof(floating)
    # Lengths decrease along the batch, so contiguous blocks would give the
    # first thread the longest sequences; round-robin (chunk 1) evens it out.
    for j in prange(batch_size, schedule="static", chunksize=1,
                    num_threads=n_threads):
        for t in range(lengths[j]):
            memcpy(packed + (offsets[t] + j) * n_features,
                   rows_in[j] + t * n_features, row_bytes)


cdef void _gather_from_packed(
    const floating *packed,         # IN  [sum of T_j, width]
    const int64_t *lengths,         # IN  [batch_size]
    const int64_t *offsets,         # IN  [T_max]
    Py_ssize_t batch_size,
    Py_ssize_t width,
    floating **rows_out,            # OUT [batch_size] -> [T_j, width]
    int n_threads,
) noexcept nogil:
    cdef Py_ssize_t j
    cdef int64_t t
    cdef size_t row_bytes = width * sizeof(floating)
    for j in prange(batch_size, schedule="static", chunksize=1,
                    num_threads=n_threads):
        for t in range(lengths[j]):
            memcpy(rows_out[j] + t * width,
                   packed + (offsets[t] + j) * width, row_bytes)
