# C-level entry point of fastlstm's own GEMM, for other Cython modules
# (``from fastlstm._kernels._gemm cimport sgemm``). See own_gemm.h.

cdef int sgemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
               Py_ssize_t a_row_stride, Py_ssize_t a_col_stride, const float *b,
               Py_ssize_t ldb, bint accumulate, float *c, Py_ssize_t ldc) noexcept nogil

cdef bint sgemm_enabled() noexcept nogil

cdef int avx2_tiles() noexcept nogil

cdef int stranspose(Py_ssize_t m, Py_ssize_t n, const float *a, Py_ssize_t lda, float *out,
                   Py_ssize_t ldo) noexcept nogil

cdef int spack(Py_ssize_t k, Py_ssize_t n, const float *b, Py_ssize_t ldb, bint transposed,
               float *out) noexcept nogil

cdef int sgemm_packed(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                      Py_ssize_t a_row_stride, Py_ssize_t a_col_stride, const float *packed_b,
                      bint accumulate, float *c, Py_ssize_t ldc) noexcept nogil
