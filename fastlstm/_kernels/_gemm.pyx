# cython: language_level=3
"""fastlstm's own single-precision GEMM for AVX-512 and AVX2 CPUs (``own_gemm.h``).

One copy of the kernel and of its on/off switch serves every caller: the
Cython kernels call :c:func:`sgemm` (a ``cimport`` of this module), the numba
kernels call the C function at :func:`numba_entry_address` (registered with
LLVM by ``numba_lstm``), and Python (tests, benchmarks) calls :func:`matmul`.
The same header's transpose, which turns the weights into the GEMM's
row-contiguous operands, is reached the same three ways
(:c:func:`stranspose`, :func:`numba_transpose_address`, :func:`transpose`).

The kernel is used where the CPU has AVX-512 or AVX2 with FMA (the best of
the two), for float32 only; elsewhere, and for float64 (where the kernels must
agree with the NumPy reference to 1e-9, and BLAS's double-precision kernels
are what a user expects), every caller uses BLAS. Both instruction sets sum
every element in the same order, so they give the same bits.
``FASTLSTM_OWN_GEMM`` in the environment, read at import: ``0`` turns the
kernel off (to compare against BLAS, or to rule it out when debugging),
``avx2`` runs the AVX2 tiles on an AVX-512 CPU.
"""

import os

import numpy as np

from libc.stdint cimport int64_t, uintptr_t


cdef extern from "own_gemm.h" nogil:
    int FASTLSTM_ISA_NONE, FASTLSTM_ISA_AVX2, FASTLSTM_ISA_AVX512
    int fastlstm_gemm_cpu_supported()
    int fastlstm_gemm_enabled()
    void fastlstm_gemm_set_enabled(int enabled)
    int fastlstm_gemm_set_isa(int isa)
    int fastlstm_sgemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                       Py_ssize_t a_row_stride, Py_ssize_t a_col_stride, const float *b,
                       Py_ssize_t ldb, int accumulate, float *c, Py_ssize_t ldc)
    int fastlstm_sgemm_addresses(int64_t m, int64_t n, int64_t k, uintptr_t a,
                                 int64_t a_row_stride, int64_t a_col_stride, uintptr_t b,
                                 int64_t ldb, int64_t accumulate, uintptr_t c, int64_t ldc)
    int fastlstm_packing_state
    void fastlstm_set_packing(int enabled)
    int fastlstm_pack_b(Py_ssize_t k, Py_ssize_t n, const float *b, Py_ssize_t ldb,
                        int transposed, float *out)
    int fastlstm_sgemm_packed(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                              Py_ssize_t a_row_stride, Py_ssize_t a_col_stride,
                              const float *packed_b, int accumulate, float *c, Py_ssize_t ldc)
    int fastlstm_pack_b_addresses(int64_t k, int64_t n, uintptr_t b, int64_t ldb,
                                  int64_t transposed, uintptr_t out)
    int fastlstm_sgemm_packed_addresses(int64_t m, int64_t n, int64_t k, uintptr_t a,
                                        int64_t a_row_stride, int64_t a_col_stride,
                                        uintptr_t packed_b, int64_t accumulate, uintptr_t c,
                                        int64_t ldc)
    int fastlstm_transpose(Py_ssize_t m, Py_ssize_t n, const float *a, Py_ssize_t lda,
                           float *out, Py_ssize_t ldo)
    int fastlstm_transpose_isa(int isa, Py_ssize_t m, Py_ssize_t n, const float *a,
                               Py_ssize_t lda, float *out, Py_ssize_t ldo)
    int fastlstm_transpose_addresses(int64_t m, int64_t n, uintptr_t a, int64_t lda,
                                     uintptr_t out, int64_t ldo)


cdef int sgemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
               Py_ssize_t a_row_stride, Py_ssize_t a_col_stride, const float *b,
               Py_ssize_t ldb, bint accumulate, float *c, Py_ssize_t ldc) noexcept nogil:
    """``C = [C +] A B`` (see own_gemm.h); 0 if done, 1 if the caller must use BLAS."""
    return fastlstm_sgemm(m, n, k, a, a_row_stride, a_col_stride, b, ldb, accumulate, c, ldc)


cdef int stranspose(Py_ssize_t m, Py_ssize_t n, const float *a, Py_ssize_t lda, float *out,
                   Py_ssize_t ldo) noexcept nogil:
    """``out = a^T`` in register blocks (see own_gemm.h); 0 if done, 1 without AVX2."""
    return fastlstm_transpose(m, n, a, lda, out, ldo)


cdef int spack(Py_ssize_t k, Py_ssize_t n, const float *b, Py_ssize_t ldb, bint transposed,
               float *out) noexcept nogil:
    """Pack ``B`` (k x n; ``B^T`` if transposed) into ``out`` for :c:func:`sgemm_packed`;
    0 if done, 1 where the products do not read the packed layout (see own_gemm.h)."""
    return fastlstm_pack_b(k, n, b, ldb, transposed, out)


cdef int sgemm_packed(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                      Py_ssize_t a_row_stride, Py_ssize_t a_col_stride, const float *packed_b,
                      bint accumulate, float *c, Py_ssize_t ldc) noexcept nogil:
    """``C = [C +] A B`` with B packed by :c:func:`spack`; 0 if done (see own_gemm.h)."""
    return fastlstm_sgemm_packed(m, n, k, a, a_row_stride, a_col_stride, packed_b, accumulate,
                                 c, ldc)


cdef bint sgemm_enabled() noexcept nogil:
    """Whether :c:func:`sgemm` computes float32 products now (else it returns 1)."""
    return fastlstm_gemm_enabled() != 0


cdef int avx2_tiles() noexcept nogil:
    """1 if :c:func:`sgemm` runs the AVX2 tiles now, else 0 (AVX-512, or BLAS).

    The kernels hand wide whole-sequence products to BLAS only then: that
    is where it was measured (``numba_lstm._sequence_matmul``).
    """
    return 1 if fastlstm_gemm_enabled() == FASTLSTM_ISA_AVX2 else 0


_ISA_NAMES = {FASTLSTM_ISA_AVX2: "avx2", FASTLSTM_ISA_AVX512: "avx512"}
_ISA_CODES = {name: code for code, name in _ISA_NAMES.items()}


def cpu_supported():
    """Whether this CPU (and its OS) can run the kernel: AVX-512F, or AVX2 and FMA."""
    return fastlstm_gemm_cpu_supported() != FASTLSTM_ISA_NONE


def supported_isas():
    """The instruction sets the kernel can use on this CPU: ``"avx2"``, ``"avx512"``.

    An AVX-512 CPU runs the AVX2 tiles too (the tests check both there).
    """
    best = fastlstm_gemm_cpu_supported()
    return [name for code, name in sorted(_ISA_NAMES.items()) if code <= best]


def isa():
    """The instruction set float32 GEMMs use now, or None where BLAS does."""
    return _ISA_NAMES.get(fastlstm_gemm_enabled())


def enabled():
    """Whether float32 GEMMs of the CPU kernels use the kernel now."""
    return fastlstm_gemm_enabled() != FASTLSTM_ISA_NONE


def set_enabled(flag):
    """Use the kernel (``True``: the best instruction set the CPU supports) or
    BLAS (``False``).

    Returns the previous setting, so that a caller can restore it. Meant for
    tests and benchmarks: switching while a fit runs mixes the two in one
    model.
    """
    previous = enabled()
    fastlstm_gemm_set_enabled(1 if flag else 0)
    return previous


def set_isa(name):
    """Use the kernel with one instruction set (``"avx2"``, ``"avx512"``) or
    BLAS (None); returns the previous one, for :func:`set_isa` to restore.

    Raises ValueError for an instruction set this CPU does not support.
    """
    previous = isa()
    code = FASTLSTM_ISA_NONE if name is None else _ISA_CODES.get(name, -1)
    if code < 0 or fastlstm_gemm_set_isa(code) != 0:
        raise ValueError(f"fastlstm's own GEMM cannot use {name!r} on this CPU; "
                         f"it supports {supported_isas()}")
    return previous


def numba_entry_address():
    """Address of the C function numba calls (``fastlstm_sgemm_addresses``)."""
    return <size_t> &fastlstm_sgemm_addresses


def set_packing(flag):
    """Let :func:`pack` (and the CPU kernels, which pack their recurrent
    weights) pack B (``True``, the default) or refuse (``False``); returns
    the previous setting. Meant for tests and benchmarks, which compare the
    two: the products give the same bits either way.
    """
    previous = fastlstm_packing_state != 0
    fastlstm_set_packing(1 if flag else 0)
    return previous


def numba_pack_addresses():
    """Addresses of the C functions numba calls for products with a packed B
    (``fastlstm_pack_b_addresses``, ``fastlstm_sgemm_packed_addresses``)."""
    return <size_t> &fastlstm_pack_b_addresses, <size_t> &fastlstm_sgemm_packed_addresses


def numba_avx2_tiles_address():
    """Address of :c:func:`avx2_tiles`, which numba's kernels call."""
    return <size_t> &avx2_tiles


def numba_transpose_address():
    """Address of the C function numba calls to transpose (``fastlstm_transpose_addresses``)."""
    return <size_t> &fastlstm_transpose_addresses


def transpose(A, out=None, *, isa=None):
    """``out = A.T`` for a float32 matrix with contiguous rows, in register blocks.

    ``out`` (shape ``A.T``'s) needs contiguous rows too. Unlike
    :func:`matmul` this does not depend on the on/off switch, only on the
    CPU: its best instruction set (16 x 16 blocks with AVX-512, else 8 x 8
    with AVX2), or ``isa`` (``"avx2"``, ``"avx512"``) to test one. Raises
    RuntimeError where the CPU has neither (or not ``isa``).
    """
    cdef const float[:, :] a = A
    if out is None:
        out = np.empty((A.shape[1], A.shape[0]), dtype=np.float32)
    cdef float[:, :] o = out
    if o.shape[0] != a.shape[1] or o.shape[1] != a.shape[0]:
        raise ValueError(f"out has shape {out.shape}, the transpose of {A.shape} is needed")
    if (a.shape[1] > 1 and a.strides[1] != sizeof(float)) or (
            o.shape[1] > 1 and o.strides[1] != sizeof(float)):
        raise ValueError("A and out need contiguous rows (column stride of one element)")
    cdef int code = fastlstm_gemm_cpu_supported() if isa is None else _ISA_CODES.get(isa, -1)
    if code <= FASTLSTM_ISA_NONE or code > fastlstm_gemm_cpu_supported():
        raise RuntimeError(f"this CPU has no {isa or 'AVX2'} for fastlstm's transpose")
    if a.shape[0] == 0 or a.shape[1] == 0:
        return out
    cdef int status
    with nogil:
        status = fastlstm_transpose_isa(code, a.shape[0], a.shape[1], &a[0, 0],
                                        a.strides[0] // sizeof(float), &o[0, 0],
                                        o.strides[0] // sizeof(float))
    assert status == 0
    return out


def matmul(A, B, C=None, *, accumulate=False):
    """``C = [C +] A @ B`` with the kernel, for float32 matrices.

    ``A`` may be any 2-D float32 array whose strides are whole elements
    (transposed views included); ``B`` and ``C`` need contiguous rows.
    Raises RuntimeError where the kernel is off or unsupported.
    """
    cdef const float[:, :] a = A
    cdef const float[:, :] b = B
    if C is None:
        C = np.zeros((A.shape[0], B.shape[1]), dtype=np.float32)
    cdef float[:, :] c = C
    if a.shape[1] != b.shape[0] or c.shape[0] != a.shape[0] or c.shape[1] != b.shape[1]:
        raise ValueError(f"shapes {A.shape} @ {B.shape} -> {C.shape} do not match")
    if (b.shape[1] > 1 and b.strides[1] != sizeof(float)) or (
            c.shape[1] > 1 and c.strides[1] != sizeof(float)):
        raise ValueError("B and C need contiguous rows (column stride of one element)")
    cdef Py_ssize_t m = a.shape[0], n = b.shape[1], k = a.shape[1]
    cdef Py_ssize_t a_rs = a.strides[0] // sizeof(float), a_cs = a.strides[1] // sizeof(float)
    cdef Py_ssize_t ldb = b.strides[0] // sizeof(float), ldc = c.strides[0] // sizeof(float)
    cdef bint add = accumulate
    cdef int status
    # An empty dimension can leave a view's data pointer NULL; there is then
    # nothing to read, so any valid address will do.
    cdef float dummy = 0
    cdef const float *a_ptr = &a[0, 0] if m > 0 and k > 0 else &dummy
    cdef const float *b_ptr = &b[0, 0] if k > 0 and n > 0 else &dummy
    cdef float *c_ptr = &c[0, 0] if m > 0 and n > 0 else &dummy
    with nogil:
        status = fastlstm_sgemm(m, n, k, a_ptr, a_rs, a_cs, b_ptr, ldb, add, c_ptr, ldc)
    if status != 0:
        raise RuntimeError("fastlstm's own GEMM is off or not supported on this CPU")
    return C


_setting = os.environ.get("FASTLSTM_OWN_GEMM", "1").strip().lower()
if _setting == "0":
    set_enabled(False)
elif _setting == "avx2" and "avx2" in supported_isas():
    set_isa("avx2")


def pack(B):
    """``B`` (k x n, float32) in the packed layout of ``own_gemm_avx2.h``, for
    :func:`matmul_packed`: a new 1-D array of k * n floats.

    ``B`` needs contiguous rows or contiguous columns (a transposed view,
    which is packed from its rows: how the forward kernel packs ``R^T``
    from ``R``). Returns None where the products do not run on the AVX2
    tiles (the kernel off, AVX-512, no AVX2) or packing is switched off
    (:func:`set_packing`): the callers then keep ``B`` as it is.
    """
    cdef const float[:, :] b = B
    cdef Py_ssize_t k = b.shape[0], n = b.shape[1], ldb
    cdef int transposed
    if n <= 1 or b.strides[1] == sizeof(float):
        transposed, ldb = 0, b.strides[0] // sizeof(float)
    elif k <= 1 or b.strides[0] == sizeof(float):
        transposed, ldb = 1, b.strides[1] // sizeof(float)
    else:
        raise ValueError("B needs contiguous rows or contiguous columns")
    out = np.empty(k * n, dtype=np.float32)
    cdef float[:] o = out
    cdef float dummy = 0
    cdef int status
    with nogil:
        status = fastlstm_pack_b(k, n, &b[0, 0] if k > 0 and n > 0 else &dummy, ldb,
                                 transposed, &o[0] if k > 0 and n > 0 else &dummy)
    return None if status != 0 else out


def matmul_packed(A, packed_B, n, C=None, *, accumulate=False):
    """``C = [C +] A @ B`` for ``packed_B = pack(B)``, B with ``n`` columns.

    ``A`` as in :func:`matmul`; every element of ``C`` is the same bits as
    :func:`matmul`'s. Raises RuntimeError where the CPU has no AVX2.
    """
    cdef const float[:, :] a = A
    cdef const float[:] packed = packed_B
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], columns = n
    if packed.shape[0] != k * columns:
        raise ValueError(f"packed_B has {packed.shape[0]} floats, {k} x {columns} needs "
                         f"{k * columns}")
    if C is None:
        C = np.zeros((m, columns), dtype=np.float32)
    cdef float[:, :] c = C
    if c.shape[0] != m or c.shape[1] != columns:
        raise ValueError(f"C has shape {C.shape}, ({m}, {columns}) is needed")
    if columns > 1 and c.strides[1] != sizeof(float):
        raise ValueError("C needs contiguous rows (column stride of one element)")
    cdef Py_ssize_t a_rs = a.strides[0] // sizeof(float), a_cs = a.strides[1] // sizeof(float)
    cdef float dummy = 0
    cdef const float *a_ptr = &a[0, 0] if m > 0 and k > 0 else &dummy
    cdef const float *b_ptr = &packed[0] if k > 0 and columns > 0 else &dummy
    cdef float *c_ptr = &c[0, 0] if m > 0 and columns > 0 else &dummy
    cdef bint add = accumulate
    cdef int status
    with nogil:
        status = fastlstm_sgemm_packed(m, columns, k, a_ptr, a_rs, a_cs, b_ptr, add, c_ptr,
                                       c.strides[0] // sizeof(float))
    if status != 0:
        raise RuntimeError("this CPU has no AVX2 for fastlstm's packed products")
    return C
