# Row-major matrix products for fastlstm's Cython modules (``cython_lstm``,
# ``_loss_kernels``): fastlstm's own GEMM in float32 where it runs, else
# Fortran BLAS. Defined inline here, so each module that cimports it
# compiles its own copy.

from cython cimport floating
from libc.string cimport memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

from fastlstm._kernels._gemm cimport sgemm as own_sgemm


cdef inline void gemm(
    bint trans_a,
    bint trans_b,
    int m,
    int n,
    int k,
    floating alpha,
    const floating *a,      # IN  op(a) is [m, k]; a is [m, k], or [k, m] if trans_a
    int lda,                # IN  row stride of a
    const floating *b,      # IN  op(b) is [k, n]; b is [k, n], or [n, k] if trans_b
    int ldb,                # IN  row stride of b
    floating beta,
    floating *c,            # IN/OUT [m, n]
    int ldc,                # IN  row stride of c
    bint own_allowed=True,  # IN  False: BLAS even where the own GEMM runs
) noexcept nogil:
    """Row-major ``c = alpha op(a) op(b) + beta c``.

    ``beta`` is 0 or 1 (see the empty-sum case below). In float32, with
    ``alpha`` 1 and ``b`` not transposed, fastlstm's own GEMM computes it
    where it runs (``_gemm.pyx``); otherwise Fortran BLAS does.

    The row-major trick: BLAS sees each C-contiguous matrix as its
    transpose, so it computes ``c^T = op(b)^T op(a)^T``, which is the call
    with the operands swapped and the same transpose flags.
    """
    cdef char transa = b'T' if trans_a else b'N'
    cdef char transb = b'T' if trans_b else b'N'
    cdef Py_ssize_t row
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        # An empty sum, so c = beta c, with beta 0 or 1 for its callers. (Some
        # BLAS implementations reject the leading dimensions of empty operands.)
        if beta == 0:
            for row in range(m):
                memset(c + row * ldc, 0, n * sizeof(floating))
        return
    if floating is float:
        if own_allowed and not trans_b and alpha == 1 and own_sgemm(
                m, n, k, a, 1 if trans_a else lda, lda if trans_a else 1, b, ldb,
                beta != 0, c, ldc) == 0:
            return
        sgemm(&transb, &transa, &n, &m, &k, &alpha, <float *> b, &ldb,
              <float *> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&transb, &transa, &n, &m, &k, &alpha, <double *> b, &ldb,
              <double *> a, &lda, &beta, c, &ldc)
