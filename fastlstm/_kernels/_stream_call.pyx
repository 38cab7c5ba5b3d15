# cython: language_level=3
"""One streaming call: numba's compiled entry on the call's arrays.

``predict_and_update_state`` in a streaming loop runs one step of a small
network per call, so what a call costs before and after the kernel counts
as much as the kernel: through numba's dispatcher, ``stream_forward``
spends about 2 us typing its 12 arguments and a finiteness check another
0.5 us (AMD Zen 3), against about 4 us of arithmetic for W4's step.
:class:`StreamCall` holds a network's fixed arrays (weights, layout,
normalisation, workspace) and the address of the kernel's native entry
(``numba_stream.entry_address``); :meth:`StreamCall.step` checks the
call's arrays through NumPy's C API (converting X, creating the state where
there is none), checks that X is finite, writes the addresses and sizes
into an int64 block (slots as ``numba_stream.SLOT_*``) and calls the entry
without the GIL. :meth:`StreamCall.predict` also decodes the outputs into
what the estimator returns (float64 values, or the index of each row's
largest output for a classifier) in the same call: NumPy's ``astype`` and
indexing around it cost 1-2 us of a W4 step.
"""

cimport numpy as cnp
from libc.math cimport isfinite
from libc.stdint cimport int64_t, intptr_t
from libc.string cimport memcpy

cnp.import_array()

# The block's slots, as numba_stream.SLOT_* (a test compares the two).
cdef enum:
    SLOT_X, SLOT_B, SLOT_T, SLOT_I, SLOT_AFFINE, SLOT_AFFINE_ROWS, SLOT_PARAMS,
    SLOT_PARAMS_SIZE, SLOT_LAYOUT, SLOT_SIZES, SLOT_H, SLOT_C, SLOT_OUT, SLOT_OUT_STEPS,
    SLOT_WORK, SLOT_WORK_SIZE, SLOT_PER_STEP, SLOT_GATE_KIND, SLOT_STATE_KIND, N_SLOTS

SLOTS = {
    "SLOT_X": SLOT_X, "SLOT_B": SLOT_B, "SLOT_T": SLOT_T, "SLOT_I": SLOT_I,
    "SLOT_AFFINE": SLOT_AFFINE, "SLOT_AFFINE_ROWS": SLOT_AFFINE_ROWS,
    "SLOT_PARAMS": SLOT_PARAMS, "SLOT_PARAMS_SIZE": SLOT_PARAMS_SIZE,
    "SLOT_LAYOUT": SLOT_LAYOUT, "SLOT_SIZES": SLOT_SIZES, "SLOT_H": SLOT_H, "SLOT_C": SLOT_C,
    "SLOT_OUT": SLOT_OUT, "SLOT_OUT_STEPS": SLOT_OUT_STEPS, "SLOT_WORK": SLOT_WORK,
    "SLOT_WORK_SIZE": SLOT_WORK_SIZE, "SLOT_PER_STEP": SLOT_PER_STEP,
    "SLOT_GATE_KIND": SLOT_GATE_KIND, "SLOT_STATE_KIND": SLOT_STATE_KIND, "N_SLOTS": N_SLOTS,
}

# What StreamCall.predict makes of the outputs (see its docstring).
cdef enum:
    DECODE_VALUES, DECODE_FIRST_VALUE, DECODE_ARGMAX

DECODES = {"values": DECODE_VALUES, "first value": DECODE_FIRST_VALUE, "argmax": DECODE_ARGMAX}

ctypedef void (*entry_function)(int64_t *) noexcept nogil


cdef cnp.ndarray _checked(object value, str name, int ndim, int typenum):
    """``value`` as an aligned C-contiguous array of ``ndim`` dimensions and ``typenum``
    (any dtype where ``typenum`` is negative)."""
    cdef cnp.ndarray array
    if not cnp.PyArray_Check(value):
        raise TypeError(f"{name} must be a NumPy array, got {type(value).__name__}.")
    array = <cnp.ndarray> value
    if cnp.PyArray_NDIM(array) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got {cnp.PyArray_NDIM(array)}-D.")
    if typenum >= 0 and cnp.PyArray_TYPE(array) != typenum:
        raise ValueError(f"{name} must be an array of {cnp.PyArray_DescrFromType(typenum)}; "
                         f"got {(<object> array).dtype}.")
    if not cnp.PyArray_CHKFLAGS(array, cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED):
        raise ValueError(f"{name} must be C-contiguous and aligned.")
    return array


cdef bint _all_finite(cnp.ndarray X, int typenum) noexcept:
    cdef Py_ssize_t i, n = cnp.PyArray_SIZE(X)
    cdef const float *single
    cdef const double *double_
    if typenum == cnp.NPY_FLOAT32:
        single = <const float *> cnp.PyArray_DATA(X)
        for i in range(n):
            if not isfinite(single[i]):
                return False
    else:
        double_ = <const double *> cnp.PyArray_DATA(X)
        for i in range(n):
            if not isfinite(double_[i]):
                return False
    return True


cdef class StreamCall:
    """A network's streaming kernel, ready to run on each call's arrays.

    Parameters
    ----------
    entry : int
        Address of the native entry (``numba_stream.entry_address(dtype)``).
    params, layout, sizes, affine, work : ndarray
        The fixed arguments of ``numba_stream.stream_forward``: weights in
        the model's dtype (float32 or float64), int64 layout and sizes,
        float64 affine, workspace in the model's dtype. Kept (referenced)
        for as long as this object lives, and never copied: ``params`` and
        ``work`` are read and written by every :meth:`step` and :meth:`predict`.
    per_step : bool
    gate_kind, state_kind : int
    decode : {"values", "first value", "argmax"}, default="values"
        What :meth:`predict` returns (see there).
    """

    cdef entry_function entry
    cdef int64_t block[N_SLOTS]
    cdef object arrays
    cdef cnp.ndarray out
    cdef int typenum, decode
    cdef Py_ssize_t n_features, n_layers, hidden, state, n_outputs
    cdef bint per_step

    def __init__(self, Py_ssize_t entry, params, layout, sizes, affine, work, bint per_step,
                 int gate_kind, int state_kind, str decode="values"):
        cdef cnp.ndarray params_array, layout_array, sizes_array, affine_array, work_array
        cdef const int64_t *size_values
        cdef Py_ssize_t needed
        cdef cnp.npy_intp dims[3]
        if entry == 0:
            raise ValueError("entry must be the address of a compiled function.")
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {sorted(DECODES)}, got {decode!r}.")
        self.decode = DECODES[decode]
        params_array = _checked(params, "params", 1, -1)
        self.typenum = cnp.PyArray_TYPE(params_array)
        if self.typenum != cnp.NPY_FLOAT32 and self.typenum != cnp.NPY_FLOAT64:
            raise ValueError(f"params must be float32 or float64, got {(<object> params_array).dtype}.")
        sizes_array = _checked(sizes, "sizes", 1, cnp.NPY_INT64)
        if cnp.PyArray_DIM(sizes_array, 0) != 4:
            raise ValueError(f"sizes must have 4 entries, got {cnp.PyArray_DIM(sizes_array, 0)}.")
        size_values = <const int64_t *> cnp.PyArray_DATA(sizes_array)
        self.hidden, self.state = size_values[0], size_values[1]
        self.n_outputs, self.n_layers = size_values[2], size_values[3]
        layout_array = _checked(layout, "layout", 2, cnp.NPY_INT64)
        if cnp.PyArray_DIM(layout_array, 0) != self.n_layers + 1:
            raise ValueError(f"layout must have {self.n_layers + 1} rows, "
                             f"got {cnp.PyArray_DIM(layout_array, 0)}.")
        affine_array = _checked(affine, "affine", 2, cnp.NPY_FLOAT64)
        self.n_features = cnp.PyArray_DIM(affine_array, 1)
        if cnp.PyArray_DIM(affine_array, 0) not in (0, 3):
            raise ValueError(f"affine must have 0 or 3 rows, got {cnp.PyArray_DIM(affine_array, 0)}.")
        work_array = _checked(work, "work", 1, self.typenum)
        # numba_stream.work_size
        needed = 5 * self.hidden + max(self.n_features, self.state) + self.state
        if cnp.PyArray_DIM(work_array, 0) < needed:
            raise ValueError(f"work must hold {needed} values, "
                             f"got {cnp.PyArray_DIM(work_array, 0)}.")
        self.entry = <entry_function> <void *> <intptr_t> entry
        self.arrays = (params_array, layout_array, sizes_array, affine_array, work_array)
        self.per_step = per_step
        self.block[SLOT_I] = self.n_features
        self.block[SLOT_AFFINE] = <int64_t> <intptr_t> cnp.PyArray_DATA(affine_array)
        self.block[SLOT_AFFINE_ROWS] = cnp.PyArray_DIM(affine_array, 0)
        self.block[SLOT_PARAMS] = <int64_t> <intptr_t> cnp.PyArray_DATA(params_array)
        self.block[SLOT_PARAMS_SIZE] = cnp.PyArray_DIM(params_array, 0)
        self.block[SLOT_LAYOUT] = <int64_t> <intptr_t> cnp.PyArray_DATA(layout_array)
        self.block[SLOT_SIZES] = <int64_t> <intptr_t> cnp.PyArray_DATA(sizes_array)
        self.block[SLOT_WORK] = <int64_t> <intptr_t> cnp.PyArray_DATA(work_array)
        self.block[SLOT_WORK_SIZE] = cnp.PyArray_DIM(work_array, 0)
        self.block[SLOT_PER_STEP] = per_step
        self.block[SLOT_GATE_KIND] = gate_kind
        self.block[SLOT_STATE_KIND] = state_kind
        dims[0], dims[1], dims[2] = 0, 0, self.n_outputs
        self.out = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)

    def step(self, X, state):
        """Run the network over X's steps from ``state``, advancing it.

        Parameters
        ----------
        X : object
            The new steps: taken where it is a float ndarray (B, T,
            n_features) with B, T > 0; converted to the model's dtype and
            C order where it is not already (a copy: X is never written).
        state : tuple of (h, c), or None
            ``h`` (num_layers, B, state_size) and ``c`` (num_layers, B,
            hidden_size), C-contiguous, of the model's dtype: advanced in
            place. None: zeros, in new arrays.

        Returns
        -------
        result : tuple of (outputs, state), or None
            ``outputs`` (B, T or 1, n_outputs), a buffer that the next call
            reuses; ``state`` the (h, c) tuple reached. None, with nothing
            written, where X is not taken, holds NaN or infinity, or
            ``state`` does not fit it.
        """
        return self._run(X, state)

    def predict(self, X, state):
        """:meth:`step`, its outputs decoded into a new array.

        Returns
        -------
        result : tuple of (values, state), or None
            As :meth:`step`, with ``values`` of shape (B, T) per step, or
            (B,) at the last step, followed by (n_outputs,) for ``decode``
            "values": float64 outputs ("values": every output; "first
            value": the first); intp indices of the largest output
            ("argmax": the first of equal ones, or the first NaN, as
            ``np.argmax``).
        """
        result = self._run(X, state)
        if result is None:
            return None
        return self._decoded(self.out), result[1]

    cdef object _run(self, X, state):
        cdef cnp.ndarray X_array, h_array, c_array
        cdef Py_ssize_t n_sequences, n_steps, out_steps
        cdef cnp.npy_intp dims[3]
        cdef int64_t block[N_SLOTS]
        if not cnp.PyArray_Check(X):
            return None
        X_array = <cnp.ndarray> X
        if (cnp.PyArray_NDIM(X_array) != 3 or cnp.PyArray_DIM(X_array, 0) == 0
                or cnp.PyArray_DIM(X_array, 1) == 0
                or cnp.PyArray_DIM(X_array, 2) != self.n_features
                or not cnp.PyArray_ISFLOAT(X_array)):
            return None
        X_array = cnp.PyArray_FROMANY(X_array, self.typenum, 3, 3,
                                      cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED
                                      | cnp.NPY_ARRAY_FORCECAST)
        n_sequences, n_steps = cnp.PyArray_DIM(X_array, 0), cnp.PyArray_DIM(X_array, 1)
        if state is None:
            dims[0], dims[1], dims[2] = self.n_layers, n_sequences, self.state
            h_array = cnp.PyArray_ZEROS(3, dims, self.typenum, 0)
            dims[2] = self.hidden
            c_array = cnp.PyArray_ZEROS(3, dims, self.typenum, 0)
            state = (h_array, c_array)
        else:
            if type(state) is not tuple or len(<tuple> state) != 2:
                return None
            h, c = <tuple> state
            if not (self._fits(h, n_sequences, self.state)
                    and self._fits(c, n_sequences, self.hidden)):
                return None
            h_array, c_array = <cnp.ndarray> h, <cnp.ndarray> c
        if not _all_finite(X_array, self.typenum):
            return None
        out_steps = n_steps if self.per_step else 1
        if (cnp.PyArray_DIM(self.out, 0) != n_sequences
                or cnp.PyArray_DIM(self.out, 1) != out_steps):
            dims[0], dims[1], dims[2] = n_sequences, out_steps, self.n_outputs
            self.out = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
        # The fixed slots copied into a block on the stack: a call leaves no
        # state in the object but the output buffer.
        memcpy(block, self.block, sizeof(block))
        block[SLOT_X] = <int64_t> <intptr_t> cnp.PyArray_DATA(X_array)
        block[SLOT_B] = n_sequences
        block[SLOT_T] = n_steps
        block[SLOT_H] = <int64_t> <intptr_t> cnp.PyArray_DATA(h_array)
        block[SLOT_C] = <int64_t> <intptr_t> cnp.PyArray_DATA(c_array)
        block[SLOT_OUT] = <int64_t> <intptr_t> cnp.PyArray_DATA(self.out)
        block[SLOT_OUT_STEPS] = out_steps
        with nogil:
            self.entry(block)
        return self.out, state

    cdef cnp.ndarray _decoded(self, cnp.ndarray out):
        """``out`` (B, T or 1, n_outputs) as :meth:`predict` returns it."""
        cdef Py_ssize_t n_rows = cnp.PyArray_DIM(out, 0) * cnp.PyArray_DIM(out, 1)
        cdef Py_ssize_t width = self.n_outputs, row, k, best
        cdef const float *single = <const float *> cnp.PyArray_DATA(out)
        cdef const double *double_ = <const double *> cnp.PyArray_DATA(out)
        cdef double value, best_value
        cdef double *values
        cdef cnp.npy_intp *indices
        cdef cnp.npy_intp dims[3]
        cdef int ndim = 2 if self.per_step else 1
        cdef bint is_single = self.typenum == cnp.NPY_FLOAT32
        cdef cnp.ndarray decoded
        dims[0], dims[1] = cnp.PyArray_DIM(out, 0), cnp.PyArray_DIM(out, 1)
        if self.decode == DECODE_VALUES:
            dims[ndim] = width
            decoded = cnp.PyArray_EMPTY(ndim + 1, dims, cnp.NPY_FLOAT64, 0)
            values = <double *> cnp.PyArray_DATA(decoded)
            for k in range(n_rows * width):
                values[k] = single[k] if is_single else double_[k]
        elif self.decode == DECODE_FIRST_VALUE:
            decoded = cnp.PyArray_EMPTY(ndim, dims, cnp.NPY_FLOAT64, 0)
            values = <double *> cnp.PyArray_DATA(decoded)
            for row in range(n_rows):
                values[row] = single[row * width] if is_single else double_[row * width]
        else:
            decoded = cnp.PyArray_EMPTY(ndim, dims, cnp.NPY_INTP, 0)
            indices = <cnp.npy_intp *> cnp.PyArray_DATA(decoded)
            for row in range(n_rows):
                best = 0
                best_value = single[row * width] if is_single else double_[row * width]
                if best_value == best_value:  # not NaN, which np.argmax takes at once
                    for k in range(1, width):
                        value = (single[row * width + k] if is_single
                                 else double_[row * width + k])
                        if value != value:
                            best = k
                            break
                        if value > best_value:
                            best, best_value = k, value
                indices[row] = best
        return decoded

    cdef bint _fits(self, object value, Py_ssize_t n_sequences, Py_ssize_t width):
        """Whether ``value`` is a state array (num_layers, n_sequences, width) it can write."""
        cdef cnp.ndarray array
        if not cnp.PyArray_Check(value):
            return False
        array = <cnp.ndarray> value
        return (cnp.PyArray_NDIM(array) == 3 and cnp.PyArray_TYPE(array) == self.typenum
                and cnp.PyArray_DIM(array, 0) == self.n_layers
                and cnp.PyArray_DIM(array, 1) == n_sequences
                and cnp.PyArray_DIM(array, 2) == width
                and cnp.PyArray_CHKFLAGS(array, cnp.NPY_ARRAY_C_CONTIGUOUS
                                         | cnp.NPY_ARRAY_ALIGNED | cnp.NPY_ARRAY_WRITEABLE))
