# cython: language_level=3
"""Kernel arguments packed into one int64 block, for native kernel entries.

A native entry (``numba_lstm.entry_addresses``) is a compiled function ``void f(int64_t
*block)`` that a pool thread calls without the GIL and without numba's
dispatcher, which spends 10-15 us per W1 kernel call on its 20-29 arrays
(measured on the project machine; the kernel itself takes 330 us). The block
holds three int64 per argument, in the kernel's argument order:

- an array: its data address and its shape (a 1-D array's second entry is 1);
- a bool or an int: its value, then two zeros.

The entry reads each slot as the type its signature says, so :func:`pack`
checks every array against the same signature first: dtype, number of
dimensions, C-contiguity and alignment. Reading them through NumPy's C API
costs well under a microsecond for a whole call.
"""

cimport numpy as cnp
from libc.stdint cimport int64_t, intptr_t

cnp.import_array()

# One character per argument: "m" a 2-D array and "v" a 1-D array of the
# floating dtype, "n" a 1-D int64 array, "b" a bool, "k" an int.
FORWARD = b"mnmmvmmmbkkmmmmmmmmm"
BACKWARD = b"mnmmvmmmbkkmmmmmmmmmmmvmmmmmm"
FORWARD_PARTS = b"mnmmvmmbkkmmmmmnkm"


cdef bint _is_array(object value, int ndim, int typenum):
    cdef cnp.ndarray array
    if not cnp.PyArray_CheckExact(value):
        return False
    array = <cnp.ndarray> value
    return (cnp.PyArray_NDIM(array) == ndim and cnp.PyArray_TYPE(array) == typenum
            and cnp.PyArray_CHKFLAGS(array, cnp.NPY_ARRAY_C_CONTIGUOUS | cnp.NPY_ARRAY_ALIGNED))


def pack(tuple arguments, const unsigned char[:] signature, int64_t[::1] block, int float_typenum):
    """Write ``arguments`` into ``block`` as the entry of ``signature`` reads them.

    Parameters
    ----------
    arguments : tuple
        The kernel's arguments, in order.
    signature : bytes
        :data:`FORWARD`, :data:`BACKWARD` or :data:`FORWARD_PARTS`.
    block : ndarray of shape (3 * len(signature),), int64
        OUT.
    float_typenum : int
        ``dtype.num`` of the floating arrays.

    Returns
    -------
    packed : bool
        False if an argument does not match the signature (the entry cannot
        read it; the caller then calls the kernel through Python).
    """
    return _pack(arguments, signature, block, float_typenum)


cdef bint _pack(tuple arguments, const unsigned char[:] signature, int64_t[::1] block,
                int float_typenum):
    cdef Py_ssize_t i, n = len(arguments)
    cdef object value
    cdef cnp.ndarray array
    cdef unsigned char kind
    if n != signature.shape[0] or block.shape[0] != 3 * n:
        return False
    for i in range(n):
        value = arguments[i]
        kind = signature[i]
        if kind == ord("b") or kind == ord("k"):
            if not isinstance(value, (bool, int)):
                return False
            block[3 * i] = value
            block[3 * i + 1] = 0
            block[3 * i + 2] = 0
            continue
        if not _is_array(value, 1 if kind != ord("m") else 2,
                         cnp.NPY_INT64 if kind == ord("n") else float_typenum):
            return False
        array = <cnp.ndarray> value
        block[3 * i] = <int64_t> <intptr_t> cnp.PyArray_DATA(array)
        block[3 * i + 1] = cnp.PyArray_DIM(array, 0)
        block[3 * i + 2] = cnp.PyArray_DIM(array, 1) if kind == ord("m") else 1
    return True


def pack_job(int64_t entry, const unsigned char[:] signature, list kernel_arguments,
             Py_ssize_t header):
    """A job of native calls of ``entry``, one per argument tuple, or None.

    The job is laid out as ``_spin.run_job`` reads it: ``header`` entries
    (the number of tasks, then 0: the next task to take), then per task the
    entry's address and its argument block's address; the argument blocks
    follow in the same array, so that they live as long as the job. None if
    an argument does not fit ``signature`` (see :func:`pack`).
    """
    cdef Py_ssize_t n_tasks = len(kernel_arguments), block_size = 3 * signature.shape[0]
    cdef Py_ssize_t blocks_start = header + 2 * n_tasks, index, start
    cdef cnp.ndarray job_array = cnp.PyArray_EMPTY(
        1, [blocks_start + n_tasks * block_size], cnp.NPY_INT64, 0)
    cdef int64_t[::1] job = job_array
    cdef int float_typenum
    if n_tasks == 0 or not cnp.PyArray_Check(kernel_arguments[0][0]):
        return None
    float_typenum = cnp.PyArray_TYPE(kernel_arguments[0][0])
    job[0] = n_tasks
    job[1] = 0
    for index in range(n_tasks):
        start = blocks_start + index * block_size
        if not _pack(kernel_arguments[index], signature, job[start:start + block_size],
                     float_typenum):
            return None
        job[header + 2 * index] = entry
        job[header + 2 * index + 1] = <int64_t> <intptr_t> &job[start]
    return job_array
