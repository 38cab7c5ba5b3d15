# cython: language_level=3
# distutils: extra_compile_args = -fno-trapping-math
"""Cython kernels: one direction of one LSTM layer over a packed batch.

This is the ahead-of-time compiled twin of ``numba_lstm.py``: ``forward`` and
``backward`` take exactly the arguments of ``lstm_forward`` and
``lstm_backward`` there, in the same order and with the same meaning, and
write the same outputs.

Layout (see ``numba_lstm.py`` and ``reference.py`` for the full story):

- The batch is sorted by length, longest first, and packed time-major: the
  rows of step t are a prefix of the batch, ``batch_sizes[t]`` rows, and they
  are one contiguous block of ``X`` (N, I). No row holds padding.
- Weights use ``torch.nn.LSTM``'s layout: ``W`` (4H, I), ``R`` (4H, P), gates
  stacked i, f, g, o; ``bias`` (4H,) is ``b_ih + b_hh``.
- With a projection (``W_proj`` of shape (P, H) with P > 0 rows) the hidden
  state is ``h = W_proj (o * act(c))``; without one ``W_proj`` has 0 rows and
  P = H.
- ``gate_kind``: 0 sigmoid, 1 hard sigmoid clip(0.2 x + 0.5, 0, 1);
  ``state_kind``: 0 tanh, 1 softsign x / (1 + |x|) (see ``_activations.py``).

Why a Cython backend next to numba: it is compiled when the package is built,
so a user never waits for a JIT compilation (numba's first call, or its first
call after a cache miss, costs seconds), and the whole computation runs
without the GIL, so threads can run the two directions of a layer, or several
shards of a batch, in parallel.

Speed: the same algorithm as the numba kernels (``FAST_KERNELS.md``). The
input projection ``X W^T`` is one GEMM over every step; each step does one
GEMM on its active rows only, accumulated straight into the gates buffer
(beta = 1, so the ``work`` buffer is not needed), and one fused loop over
rows and hidden units for the bias, the activations and the cell update.
The backward pass does only the pointwise part and ``dh = dG R`` per step and
leaves dW, dR, dX and dW_proj to whole-batch GEMMs after the loop.

Conventions (as in ``_packing.pyx``):

- IN views are read-only (``const``, so read-only arrays such as joblib's
  memmaps work), OUT views are write-only. The caller allocates every output
  and workspace; nothing is allocated here. Outputs must not overlap each
  other or the inputs.
- All float arrays of one call share one dtype, float32 or float64 (the fused
  type ``floating``); every array is C-contiguous.
- The arrays that only exist with a projection (``M`` in ``forward``,
  ``dW_proj``, ``dH_total`` and ``dM`` in ``backward``) are plain Python
  arguments: without a projection they only need 0 rows and are never
  touched, so a shared, read-only placeholder such as ``np.zeros((0, 0))``
  works, as it does with numba.
- GEMMs go through SciPy's BLAS (``scipy.linalg.cython_blas``), which is
  column-major. A C-contiguous matrix is the transpose of a column-major one,
  so ``C = op(A) op(B)`` on C-contiguous arrays is computed as
  ``C^T = op(B)^T op(A)^T``: swap the operands, keep the flags (``_gemm``).
  Transposed operands are expressed through the flags, never copied.
  In float32, where the CPU has AVX-512 or AVX2, ``_gemm`` hands the product to
  fastlstm's own GEMM instead (``own_gemm.h``, through ``_gemm.pyx``), which
  needs ``b`` row-contiguous: the forward pass then transposes ``W`` and
  ``R`` once into the ``work`` buffer.
- Activations: in float32, tanh is the rational (13, 6) minimax form of
  ``_activations.py`` (clamped input and output), which the C compiler
  vectorises, and sigmoid is 0.5 + 0.5 tanh(x / 2). In float64 tanh is libm's
  exact ``tanh``, so that float64 results agree with the NumPy reference to
  1e-9.
- The activation kinds are dispatched once per step, outside the loops: each
  of the four (gate, state) combinations gets its own copy of the loop, in
  which the activation is a compile-time constant.
- ``boundscheck``, ``wraparound`` and ``cdivision`` are set in setup.py. The
  one extra C flag, ``-fno-trapping-math`` (``# distutils:`` line above), is
  needed for gcc to vectorise the float32 tanh: without it gcc will not turn
  the clamps into branch-free selects once it has moved arithmetic into their
  branches, because that arithmetic could raise a floating-point trap. The
  flag only lets the compiler ignore floating-point exception flags and
  traps; it changes no computed value (no reassociation, no contraction
  beyond the default, no finite-math assumptions), so float64 stays exact
  and NaN still propagates. Compilers without the flag (MSVC) ignore it with
  a warning.
"""

from cython cimport floating
from libc.math cimport tanh as libm_tanh
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

from fastlstm._kernels._gemm cimport sgemm_enabled as own_sgemm_enabled
from fastlstm._kernels._gemm cimport avx2_tiles as own_avx2_tiles
from fastlstm._kernels._row_major cimport gemm as _gemm
from fastlstm._kernels._gemm cimport stranspose as own_transpose
from fastlstm._kernels._gemm cimport spack as own_pack, sgemm_packed as own_sgemm_packed

# Cython has no ``restrict``; these typedefs give the pointwise loops C99
# restrict-qualified pointers (see "Pointwise part of one step").
cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTLSTM_RESTRICT __restrict__
    #elif defined(_MSC_VER)
    #define FASTLSTM_RESTRICT __restrict
    #else
    #define FASTLSTM_RESTRICT
    #endif
    """
    ctypedef float *float_rp "float * FASTLSTM_RESTRICT"
    ctypedef double *double_rp "double * FASTLSTM_RESTRICT"

ctypedef fused floating_rp:
    float_rp
    double_rp

# Activation codes, as in ``_activations.py``.
cdef enum:
    SIGMOID = 0
    HARD_SIGMOID = 1
    TANH = 0
    SOFTSIGN = 1

# BLAS takes int dimensions.
cdef Py_ssize_t _INT_MAX = 2147483647


# --- Activations ------------------------------------------------------------
# Small inline functions on scalars: after inlining into the gate loops they
# are straight-line arithmetic and selects (the conditional expressions
# compile to max/min or compare-and-blend instructions), which gcc -O3
# vectorises.

cdef inline floating _clip(floating x, floating low, floating high) noexcept nogil:
    """Clip x to [low, high]; a NaN stays NaN, as in numba and NumPy."""
    x = low if x < low else x
    return high if x > high else x


cdef inline floating _abs(floating x) noexcept nogil:
    return x if x >= 0 else -x


cdef inline floating _tanh(floating x) noexcept nogil:
    """tanh: rational approximation in float32, libm in float64."""
    cdef float x2, p, q
    if floating is double:
        return libm_tanh(x)
    else:
        # tanh(x) ~= x P(x^2) / Q(x^2) on [-9, 9], the form and coefficients
        # of _activations.py (maximum absolute error about 3e-7); outside
        # that interval tanh rounds to +-1 in float32 anyway.
        x = _clip(x, <float>-9.0, <float>9.0)
        x2 = x * x
        p = x2 * <float>-2.76076847742355e-16 + <float>2.00018790482477e-13
        p = x2 * p + <float>-8.60467152213735e-11
        p = x2 * p + <float>5.12229709037114e-08
        p = x2 * p + <float>1.48572235717979e-05
        p = x2 * p + <float>6.37261928875436e-04
        p = x2 * p + <float>4.89352455891786e-03
        q = x2 * <float>1.19825839466702e-06 + <float>1.18534705686654e-04
        q = x2 * q + <float>2.26843463243900e-03
        q = x2 * q + <float>4.89352518554385e-03
        # The fit overshoots 1 by an ulp near the clamp; |tanh| > 1 would
        # make 1 - tanh^2 negative in the backward pass.
        return _clip(x * p / q, <float>-1.0, <float>1.0)


cdef inline floating _gate(floating x, int kind) noexcept nogil:
    """Gate activation: sigmoid, or the hard sigmoid clip(0.2 x + 0.5, 0, 1)."""
    cdef floating zero = 0.0, half = 0.5, one = 1.0, slope = 0.2
    if kind == HARD_SIGMOID:
        return _clip(slope * x + half, zero, one)
    # One tanh instead of exp and a division keeps float32 on the SIMD path.
    return half + half * _tanh(half * x)


cdef inline floating _gate_derivative(floating y, int kind) noexcept nogil:
    """Derivative of :func:`_gate`, from its output ``y``."""
    cdef floating zero = 0.0, one = 1.0, slope = 0.2
    if kind == HARD_SIGMOID:
        return slope if (y > zero and y < one) else zero
    return y * (one - y)


cdef inline floating _state(floating x, int kind) noexcept nogil:
    """State activation: tanh, or softsign x / (1 + |x|)."""
    cdef floating one = 1.0
    if kind == SOFTSIGN:
        return x / (one + _abs(x))
    return _tanh(x)


cdef inline floating _state_derivative(floating y, int kind) noexcept nogil:
    """Derivative of :func:`_state`, from its output ``y``."""
    cdef floating one = 1.0
    if kind == SOFTSIGN:
        # d/dx x / (1 + |x|) = 1 / (1 + |x|)^2 = (1 - |y|)^2
        return (one - _abs(y)) * (one - _abs(y))
    return one - y * y


# --- BLAS and small array helpers -------------------------------------------

# A whole-sequence product at least this deep and this wide goes to BLAS
# (see _sequence_gemm).
cdef enum:
    SEQUENCE_BLAS_MIN = 128


cdef inline void _sequence_gemm(
    bint trans_a, bint trans_b, int m, int n, int k, floating alpha, const floating *a, int lda,
    const floating *b, int ldb, floating beta, floating *c, int ldc,
) noexcept nogil:
    """:func:`_gemm` for a product over every row of a batch: BLAS where it
    is at least ``SEQUENCE_BLAS_MIN`` deep and wide and the own GEMM runs
    its AVX2 tiles (as ``numba_lstm``'s ``_sequence_matmul``, which gives
    the measurements), else the own GEMM where it runs."""
    _gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
          k < SEQUENCE_BLAS_MIN or n < SEQUENCE_BLAS_MIN or not own_avx2_tiles())


cdef inline bint _pack(
    Py_ssize_t k,
    Py_ssize_t n,
    const floating *b,      # IN  [k, n], or [n, k] if transposed
    Py_ssize_t ldb,         # IN  row stride of b
    bint transposed,
    floating *out,          # OUT [k * n]
) noexcept nogil:
    """Pack ``op(b)`` for :func:`_packed_gemm` where the AVX2 tiles run the
    products (``own_gemm_avx2.h``: every step of a sequence then reads its
    recurrent weights in order); False, with ``out`` untouched, elsewhere
    (float64, BLAS, AVX-512)."""
    if floating is float:
        return own_pack(k, n, b, ldb, transposed, out) == 0
    else:
        return False


cdef inline void _packed_gemm(
    Py_ssize_t m,
    Py_ssize_t n,
    Py_ssize_t k,
    const floating *a,      # IN  [m, k]
    const floating *packed, # IN  B [k, n] packed by _pack
    bint accumulate,
    floating *c,            # IN/OUT [m, n]
) noexcept nogil:
    """``c = [c +] a B``: the bits of :func:`_gemm`'s own-GEMM product."""
    if floating is float:
        own_sgemm_packed(m, n, k, a, k, 1, packed, accumulate, c, n)


cdef inline void _copy(
    Py_ssize_t size,
    const floating *src,    # IN  [size]
    floating *dst,          # OUT [size]
) noexcept nogil:
    if size > 0:
        memcpy(dst, src, size * sizeof(floating))


cdef void _transpose(
    Py_ssize_t rows,
    Py_ssize_t cols,
    const floating *src,    # IN  [rows, cols]
    floating *dst,          # OUT [cols, rows]
) noexcept nogil:
    # float32 in register blocks where the CPU has AVX-512 or AVX2 (own_gemm.h);
    # else column by column of dst's rows: reads stride through src, writes
    # are sequential (13 us for a W1 direction's W and R, against 4).
    cdef Py_ssize_t i, j
    if floating is float:
        if rows > 0 and cols > 0 and own_transpose(rows, cols, src, cols, dst, rows) == 0:
            return
    for j in range(cols):
        for i in range(rows):
            dst[j * rows + i] = src[i * cols + j]


cdef inline void _add(
    Py_ssize_t size,
    const floating *a,      # IN  [size]
    const floating *b,      # IN  [size]
    floating *out,          # OUT [size], may be a
) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(size):
        out[j] = a[j] + b[j]


# --- Pointwise part of one step ---------------------------------------------
# The two loops below are where the kernels spend their time outside BLAS,
# and gcc vectorises them only with some help:
#
# - The pointers they write through are restrict-qualified (``floating_rp``).
#   Without that, gcc must version the loop with a run-time overlap test for
#   every pair of arrays (more than the 10 it allows) and leaves it scalar.
#   The arrays they receive never overlap. (Read-only pointers need no
#   qualifier: restrict already rules out their aliasing the written arrays.)
# - Every access is ``ptr[k]``, one pointer per gate block: with Python's
#   ``-fwrapv`` an index such as ``hidden + k`` may wrap, and gcc does not
#   vectorise an access it cannot prove affine.
# - The activation kinds are constants in each of the four copies of a loop
#   that its dispatch function inlines, so the loop bodies are branch-free.
# - ``-fno-trapping-math`` (file header) lets gcc if-convert the clamps of
#   the float32 tanh.

cdef inline void _cell_forward(
    Py_ssize_t n_active,
    Py_ssize_t hidden,
    floating_rp gates,          # IN/OUT [n_active, 4H]: pre-activations without
                                #        bias in, activated gates out
    const floating *bias,       # IN     [4H]
    floating_rp c_state,        # IN/OUT [n_active, H]: cell state entering and
                                #        leaving the step
    floating_rp tc,             # OUT    [n_active, H]: act(c) after the step
    floating_rp m,              # OUT    [n_active, H]: o * act(c)
    int gate_kind,
    int state_kind,
) noexcept nogil:
    """Bias, activations, cell and hidden update of one step, fused."""
    cdef Py_ssize_t r, k
    cdef const floating *b_i = bias
    cdef const floating *b_f = bias + hidden
    cdef const floating *b_g = bias + 2 * hidden
    cdef const floating *b_o = bias + 3 * hidden
    cdef floating_rp z_i            # the gates, one pointer per block
    cdef floating_rp z_f
    cdef floating_rp z_g
    cdef floating_rp z_o
    cdef floating_rp c
    cdef floating_rp tc_row
    cdef floating_rp m_row
    cdef floating i_gate, f_gate, g_gate, o_gate, c_new, act_c
    for r in range(n_active):
        z_i = gates + r * 4 * hidden
        z_f = z_i + hidden
        z_g = z_i + 2 * hidden
        z_o = z_i + 3 * hidden
        c = c_state + r * hidden
        tc_row = tc + r * hidden
        m_row = m + r * hidden
        for k in range(hidden):
            i_gate = _gate(z_i[k] + b_i[k], gate_kind)
            f_gate = _gate(z_f[k] + b_f[k], gate_kind)
            g_gate = _state(z_g[k] + b_g[k], state_kind)
            o_gate = _gate(z_o[k] + b_o[k], gate_kind)
            c_new = f_gate * c[k] + i_gate * g_gate
            act_c = _state(c_new, state_kind)
            z_i[k] = i_gate
            z_f[k] = f_gate
            z_g[k] = g_gate
            z_o[k] = o_gate
            c[k] = c_new
            tc_row[k] = act_c
            m_row[k] = o_gate * act_c


cdef void _cell_forward_dispatch(
    Py_ssize_t n_active, Py_ssize_t hidden, floating *gates, const floating *bias,
    floating *c_state, floating *tc, floating *m, int gate_kind, int state_kind,
) noexcept nogil:
    """Call :func:`_cell_forward` with the activation kinds as constants."""
    if gate_kind == SIGMOID:
        if state_kind == TANH:
            _cell_forward(n_active, hidden, gates, bias, c_state, tc, m, SIGMOID, TANH)
        else:
            _cell_forward(n_active, hidden, gates, bias, c_state, tc, m, SIGMOID, SOFTSIGN)
    else:
        if state_kind == TANH:
            _cell_forward(n_active, hidden, gates, bias, c_state, tc, m, HARD_SIGMOID, TANH)
        else:
            _cell_forward(n_active, hidden, gates, bias, c_state, tc, m, HARD_SIGMOID, SOFTSIGN)


cdef inline void _cell_backward(
    Py_ssize_t n_active,
    Py_ssize_t hidden,
    const floating *gates,      # IN     [n_active, 4H]: activated gates
    const floating *tc,         # IN     [n_active, H]: act(c) after the step
    const floating *c_prev,     # IN     [n_active, H]: c entering the step
    const floating *dm,         # IN     [n_active, H]: gradient of o * act(c)
    floating_rp dc_state,       # IN/OUT [n_active, H]: gradient of c after the
                                #        step in, before the step out
    floating_rp dg,             # OUT    [n_active, 4H]: gradient of the gate
                                #        pre-activations
    int gate_kind,
    int state_kind,
) noexcept nogil:
    """Pointwise backward of one step, fused."""
    cdef Py_ssize_t r, k
    cdef const floating *y_i        # the activated gates, one pointer per block
    cdef const floating *y_f
    cdef const floating *y_g
    cdef const floating *y_o
    cdef floating_rp d_i            # their pre-activations' gradients
    cdef floating_rp d_f
    cdef floating_rp d_g
    cdef floating_rp d_o
    cdef const floating *tc_row
    cdef const floating *cp_row
    cdef const floating *dm_row
    cdef floating_rp dc
    cdef floating i_gate, f_gate, g_gate, o_gate, act_c, dm_k, dc_k
    for r in range(n_active):
        y_i = gates + r * 4 * hidden
        y_f = y_i + hidden
        y_g = y_i + 2 * hidden
        y_o = y_i + 3 * hidden
        d_i = dg + r * 4 * hidden
        d_f = d_i + hidden
        d_g = d_i + 2 * hidden
        d_o = d_i + 3 * hidden
        tc_row = tc + r * hidden
        cp_row = c_prev + r * hidden
        dm_row = dm + r * hidden
        dc = dc_state + r * hidden
        for k in range(hidden):
            i_gate = y_i[k]
            f_gate = y_f[k]
            g_gate = y_g[k]
            o_gate = y_o[k]
            act_c = tc_row[k]
            dm_k = dm_row[k]
            dc_k = dc[k] + dm_k * o_gate * _state_derivative(act_c, state_kind)
            dc[k] = dc_k * f_gate
            d_i[k] = dc_k * g_gate * _gate_derivative(i_gate, gate_kind)
            d_f[k] = dc_k * cp_row[k] * _gate_derivative(f_gate, gate_kind)
            d_g[k] = dc_k * i_gate * _state_derivative(g_gate, state_kind)
            d_o[k] = dm_k * act_c * _gate_derivative(o_gate, gate_kind)


cdef void _cell_backward_dispatch(
    Py_ssize_t n_active, Py_ssize_t hidden, const floating *gates,
    const floating *tc, const floating *c_prev, const floating *dm,
    floating *dc_state, floating *dg, int gate_kind, int state_kind,
) noexcept nogil:
    """Call :func:`_cell_backward` with the activation kinds as constants."""
    if gate_kind == SIGMOID:
        if state_kind == TANH:
            _cell_backward(n_active, hidden, gates, tc, c_prev, dm, dc_state, dg,
                           SIGMOID, TANH)
        else:
            _cell_backward(n_active, hidden, gates, tc, c_prev, dm, dc_state, dg,
                           SIGMOID, SOFTSIGN)
    else:
        if state_kind == TANH:
            _cell_backward(n_active, hidden, gates, tc, c_prev, dm, dc_state, dg,
                           HARD_SIGMOID, TANH)
        else:
            _cell_backward(n_active, hidden, gates, tc, c_prev, dm, dc_state, dg,
                           HARD_SIGMOID, SOFTSIGN)


# --- Whole passes, without the GIL ------------------------------------------

cdef void _forward_pass(
    const floating *X,          # IN  [N, I]
    const int64_t *batch_sizes, # IN  [T]
    const floating *W,          # IN  [4H, I]
    const floating *R,          # IN  [4H, P]
    const floating *bias,       # IN  [4H]
    const floating *W_proj,     # IN  [P, H], or NULL without projection
    const floating *h0,         # IN  [B, P]
    const floating *c0,         # IN  [B, H]
    bint reverse,
    int gate_kind,
    int state_kind,
    floating *H,                # OUT [N, P]
    floating *Hprev,            # OUT [N, P], or NULL: not kept
    floating *Cprev,            # OUT [N, H], or NULL: not kept
    floating *TC,               # OUT [N, H], or [B, H] scratch when Hprev is NULL
    floating *gates,            # OUT [N, 4H]
    floating *M,                # OUT [N, H], or NULL without projection
    floating *h_n,              # OUT [B, P]
    floating *c_n,              # OUT [B, H]
    floating *weights_t,        # OUT [I + P, 4H] (workspace: W^T, R^T or R^T packed), or NULL
    Py_ssize_t n_rows,
    Py_ssize_t n_steps,
    Py_ssize_t batch_size,
    Py_ssize_t n_in,
    Py_ssize_t hidden,
    Py_ssize_t state,
) noexcept nogil:
    cdef Py_ssize_t n_gates = 4 * hidden
    cdef Py_ssize_t step, t, n_active, offset
    cdef bint project = W_proj != NULL
    cdef bint keep = Hprev != NULL
    cdef floating *m
    # The GEMMs below multiply by W^T and R^T. BLAS reads a transposed
    # operand in place; the own GEMM wants it row-contiguous, so with a
    # weights_t workspace the two are transposed once here, for all steps.
    cdef bint transposed = weights_t != NULL
    cdef const floating *W_op = W
    cdef const floating *R_op = R
    cdef int ld_W = n_in, ld_R = state
    # R^T packed for the steps' products where the AVX2 tiles run them.
    cdef bint packed = False
    if transposed:
        _transpose(n_gates, n_in, W, weights_t)
        packed = _pack(state, n_gates, R, state, True, weights_t + n_in * n_gates)
        if not packed:
            _transpose(n_gates, state, R, weights_t + n_in * n_gates)
        W_op, R_op = weights_t, weights_t + n_in * n_gates
        ld_W = ld_R = n_gates

    # Hoisted input projection: gates = X W^T, one GEMM for every step.
    _sequence_gemm(False, not transposed, n_rows, n_gates, n_in, 1, X, n_in, W_op, ld_W, 0,
                   gates, n_gates)
    # h_n and c_n double as the running state: a sequence that has finished
    # is never touched again, so its final state stays in place.
    _copy(batch_size * state, h0, h_n)
    _copy(batch_size * hidden, c0, c_n)
    offset = n_rows if reverse else 0
    for step in range(n_steps):
        t = n_steps - 1 - step if reverse else step
        n_active = batch_sizes[t]
        if reverse:
            offset -= n_active
        # The recurrent GEMM on the active rows only, added to the input part.
        if packed:
            _packed_gemm(n_active, n_gates, state, h_n, R_op, True, gates + offset * n_gates)
        else:
            _gemm(False, not transposed, n_active, n_gates, state, 1, h_n, state, R_op, ld_R,
                  1, gates + offset * n_gates, n_gates)
        if keep:
            _copy(n_active * state, h_n, Hprev + offset * state)
            _copy(n_active * hidden, c_n, Cprev + offset * hidden)
        # The unprojected hidden state goes straight to the outputs, or to M
        # for the projection GEMM.
        m = (M if project else H) + offset * hidden
        _cell_forward_dispatch(n_active, hidden, gates + offset * n_gates, bias,
                               c_n, TC + offset * hidden if keep else TC, m, gate_kind,
                               state_kind)
        if project:
            _gemm(False, True, n_active, state, hidden, 1, m, hidden, W_proj, hidden,
                  0, h_n, state)
            _copy(n_active * state, h_n, H + offset * state)
        else:
            _copy(n_active * hidden, m, h_n)
        if not reverse:
            offset += n_active


cdef void _backward_pass(
    const floating *X,          # IN  [N, I]
    const int64_t *batch_sizes, # IN  [T]
    const floating *W,          # IN  [4H, I]
    const floating *R,          # IN  [4H, P]
    const floating *W_proj,     # IN  [P, H], or NULL without projection
    bint reverse,
    int gate_kind,
    int state_kind,
    const floating *Hprev,      # IN  [N, P]
    const floating *Cprev,      # IN  [N, H]
    const floating *TC,         # IN  [N, H]
    const floating *gates,      # IN  [N, 4H]
    const floating *M,          # IN  [N, H], or NULL without projection
    const floating *dH,         # IN  [N, P]
    const floating *dh_n,       # IN  [B, P]
    const floating *dc_n,       # IN  [B, H]
    floating *dX,               # OUT [N, I], or NULL: not computed
    floating *dW,               # OUT [4H, I]
    floating *dR,               # OUT [4H, P]; R packed (_pack) until the product after the steps
    floating *dbias,            # OUT [4H]
    floating *dW_proj,          # OUT [P, H], or NULL without projection
    floating *dh0,              # OUT [B, P]
    floating *dc0,              # OUT [B, H]
    floating *dG,               # OUT [N, 4H] (workspace)
    floating *dH_total,         # OUT [N, P] (workspace), or NULL
    floating *dM,               # OUT [B, H] (workspace), or NULL
    Py_ssize_t n_rows,
    Py_ssize_t n_steps,
    Py_ssize_t batch_size,
    Py_ssize_t n_in,
    Py_ssize_t hidden,
    Py_ssize_t state,
) noexcept nogil:
    cdef Py_ssize_t n_gates = 4 * hidden
    cdef Py_ssize_t step, t, n_active, offset, row, k
    cdef bint project = W_proj != NULL
    cdef const floating *dm
    cdef const floating *dg_row
    # R packed for the steps' dG R where the AVX2 tiles run them, in dR's
    # memory: dR is written only after the loop, by its own product.
    cdef bint packed = _pack(n_gates, state, R, state, False, dR)

    # dh0/dc0 carry the running state gradient; a row keeps dh_n/dc_n until
    # the backward walk reaches the step where that row's final state was made.
    _copy(batch_size * state, dh_n, dh0)
    _copy(batch_size * hidden, dc_n, dc0)
    offset = 0 if reverse else n_rows
    for step in range(n_steps):
        t = step if reverse else n_steps - 1 - step
        n_active = batch_sizes[t]
        if not reverse:
            offset -= n_active
        # dm: the gradient of the step's unprojected hidden state o * act(c).
        if project:
            _add(n_active * state, dh0, dH + offset * state, dH_total + offset * state)
            _gemm(False, False, n_active, hidden, state, 1, dH_total + offset * state,
                  state, W_proj, hidden, 0, dM, hidden)
            dm = dM
        else:
            # In place: dh0's active rows are overwritten by dG R below anyway.
            _add(n_active * state, dh0, dH + offset * state, dh0)
            dm = dh0
        _cell_backward_dispatch(n_active, hidden, gates + offset * n_gates,
                                TC + offset * hidden, Cprev + offset * hidden, dm,
                                dc0, dG + offset * n_gates, gate_kind, state_kind)
        # Only the recurrent part of dh is needed inside the loop.
        if packed:
            _packed_gemm(n_active, state, n_gates, dG + offset * n_gates, dR, False, dh0)
        else:
            _gemm(False, False, n_active, state, n_gates, 1, dG + offset * n_gates,
                  n_gates, R, state, 0, dh0, state)
        if reverse:
            offset += n_active
    # Whole-batch GEMMs instead of one small GEMM per step.
    _sequence_gemm(True, False, n_gates, n_in, n_rows, 1, dG, n_gates, X, n_in, 0, dW, n_in)
    _sequence_gemm(True, False, n_gates, state, n_rows, 1, dG, n_gates, Hprev, state, 0, dR,
                   state)
    if dX != NULL:
        _sequence_gemm(False, False, n_rows, n_in, n_gates, 1, dG, n_gates, W, n_in, 0, dX,
                       n_in)
    if project:
        _sequence_gemm(True, False, state, hidden, n_rows, 1, dH_total, state, M, hidden,
                       0, dW_proj, hidden)
    # dbias: column sums of dG, row by row so that the inner loop vectorises.
    if n_gates > 0:
        memset(dbias, 0, n_gates * sizeof(floating))
    for row in range(n_rows):
        dg_row = dG + row * n_gates
        for k in range(n_gates):
            dbias[k] += dg_row[k]


# --- Python-side checks: run with the GIL, raise on bad input ----------------

cdef _check_shape(str name, Py_ssize_t rows, Py_ssize_t cols,
                  Py_ssize_t expected_rows, Py_ssize_t expected_cols):
    if rows != expected_rows or cols != expected_cols:
        raise ValueError(
            f"{name} has shape ({rows}, {cols}), expected "
            f"({expected_rows}, {expected_cols})."
        )


cdef _check_no_rows(str name, Py_ssize_t rows):
    if rows != 0:
        raise ValueError(
            f"{name} must have 0 rows without a projection (W_proj has 0 rows), "
            f"got {rows}."
        )


cdef _check_common(const int64_t[::1] batch_sizes, Py_ssize_t n_rows,
                   Py_ssize_t n_in, Py_ssize_t batch_size, Py_ssize_t hidden,
                   Py_ssize_t state, Py_ssize_t W_rows, Py_ssize_t W_cols,
                   Py_ssize_t R_rows, Py_ssize_t R_cols, Py_ssize_t bias_size,
                   Py_ssize_t proj_rows, Py_ssize_t proj_cols, Py_ssize_t c0_rows,
                   int gate_kind, int state_kind):
    """Check the arguments shared by forward and backward."""
    cdef Py_ssize_t t, total = 0, previous = batch_size
    if hidden == 0:
        raise ValueError("c0 has 0 columns: the hidden size must be positive.")
    if gate_kind != SIGMOID and gate_kind != HARD_SIGMOID:
        raise ValueError(f"gate_kind must be 0 (sigmoid) or 1 (hard sigmoid), got {gate_kind}.")
    if state_kind != TANH and state_kind != SOFTSIGN:
        raise ValueError(f"state_kind must be 0 (tanh) or 1 (softsign), got {state_kind}.")
    _check_shape("c0", c0_rows, hidden, batch_size, hidden)
    _check_shape("W", W_rows, W_cols, 4 * hidden, n_in)
    _check_shape("R", R_rows, R_cols, 4 * hidden, state)
    if bias_size != 4 * hidden:
        raise ValueError(f"bias has shape ({bias_size},), expected ({4 * hidden},).")
    if proj_rows > 0:
        _check_shape("W_proj", proj_rows, proj_cols, state, hidden)
    elif state != hidden:
        raise ValueError(
            f"Without a projection h0 must have as many columns as c0 "
            f"(got {state} and {hidden})."
        )
    if max(n_rows, 4 * hidden, n_in, state) > _INT_MAX:
        raise ValueError("Array dimensions must be below 2**31 for BLAS.")
    for t in range(batch_sizes.shape[0]):
        if batch_sizes[t] < 0 or batch_sizes[t] > previous:
            raise ValueError(
                f"batch_sizes must be non-negative, non-increasing and at most "
                f"the batch size {batch_size}; batch_sizes[{t}] = {batch_sizes[t]}."
            )
        previous = batch_sizes[t]
        total += batch_sizes[t]
    if total != n_rows:
        raise ValueError(
            f"batch_sizes sums to {total}, but X has {n_rows} rows."
        )


# --- Public kernels ------------------------------------------------------------

def forward(
    const floating[:, ::1] X,           # IN  [N, I]
    const int64_t[::1] batch_sizes,     # IN  [T]
    const floating[:, ::1] W,           # IN  [4H, I]
    const floating[:, ::1] R,           # IN  [4H, P]
    const floating[::1] bias,           # IN  [4H]
    const floating[:, ::1] W_proj,      # IN  [P, H], or (0, 0)
    const floating[:, ::1] h0,          # IN  [B, P]
    const floating[:, ::1] c0,          # IN  [B, H]
    bint reverse,                       # IN
    int gate_kind,                      # IN
    int state_kind,                     # IN
    floating[:, ::1] H,                 # OUT [N, P]
    floating[:, ::1] Hprev,             # OUT [N, P]
    floating[:, ::1] Cprev,             # OUT [N, H]
    floating[:, ::1] TC,                # OUT [N, H]
    floating[:, ::1] gates,             # OUT [N, 4H]
    M,                                  # OUT [N, H], or 0 rows (untouched)
    floating[:, ::1] h_n,               # OUT [B, P]
    floating[:, ::1] c_n,               # OUT [B, H]
    floating[:, ::1] work,              # workspace [B + I + P + 1, 4H]
):
    """Run one LSTM direction over a packed batch.

    Same arguments and outputs as
    :func:`fastlstm._kernels.numba_lstm.lstm_forward`, which documents each
    one. All float arrays share one dtype (float32 or float64) and are
    C-contiguous; the inputs may be read-only.

    Parameters
    ----------
    X : ndarray of shape (N, I)
        IN. Packed inputs.
    batch_sizes : ndarray of shape (T,), int64
        IN. Active rows at each step, non-increasing, summing to N.
    W : ndarray of shape (4H, I)
        IN. Input weights, gates i, f, g, o.
    R : ndarray of shape (4H, P)
        IN. Recurrent weights.
    bias : ndarray of shape (4H,)
        IN. Sum of the input and recurrent biases.
    W_proj : ndarray of shape (P, H), or (0, 0) without projection
        IN. Projection of the hidden state.
    h0 : ndarray of shape (B, P)
        IN. Initial hidden state.
    c0 : ndarray of shape (B, H)
        IN. Initial cell state.
    reverse : bool
        IN. Walk the sequences from their ends to their starts.
    gate_kind, state_kind : int
        IN. Gate activation (0 sigmoid, 1 hard sigmoid) and state activation
        (0 tanh, 1 softsign).
    H : ndarray of shape (N, P)
        OUT. Hidden state after every step.
    Hprev : ndarray of shape (N, P), or with 0 rows
        OUT. Hidden state entering every step. With 0 rows (prediction: no
        backward pass follows), ``Hprev``, ``Cprev`` and ``TC`` are not kept.
    Cprev : ndarray of shape (N, H), or with 0 rows
        OUT. Cell state entering every step.
    TC : ndarray of shape (N, H), or with 0 rows
        OUT. State activation of the cell state after every step.
    gates : ndarray of shape (N, 4H)
        OUT. Activated gates of every step.
    M : ndarray of shape (N, H), or with 0 rows without projection
        OUT. Hidden state before projection. Without projection it is never
        touched (it may then be read-only).
    h_n : ndarray of shape (B, P)
        OUT. Each sequence's final hidden state.
    c_n : ndarray of shape (B, H)
        OUT. Each sequence's final cell state.
    work : ndarray of shape (B + I + P + 1, 4H)
        Workspace. In float32, where fastlstm's own GEMM runs, rows B to
        B + I + P take ``W`` and ``R`` transposed (the recurrent GEMM
        accumulates into ``gates``, so the first B rows are not needed here).
        The last row is the numba kernel's (activation scales); this kernel
        leaves it alone, so that both take one workspace.

    Raises
    ------
    ValueError
        If the shapes are inconsistent, ``batch_sizes`` is not a valid packed
        layout for ``X`` and ``h0``, or an activation code is unknown.
        (Cython itself raises ValueError or TypeError for a wrong dtype, a
        mixed dtype, a non-contiguous array or a read-only output.)
    """
    cdef Py_ssize_t n_rows = X.shape[0], n_in = X.shape[1]
    cdef Py_ssize_t batch_size = h0.shape[0], state = h0.shape[1]
    cdef Py_ssize_t hidden = c0.shape[1]
    cdef Py_ssize_t n_steps = batch_sizes.shape[0]
    cdef bint project = W_proj.shape[0] > 0
    cdef const floating *W_proj_ptr = NULL
    cdef floating *M_ptr = NULL
    cdef floating *weights_t = NULL
    cdef floating[:, ::1] M_view

    _check_common(batch_sizes, n_rows, n_in, batch_size, hidden, state,
                  W.shape[0], W.shape[1], R.shape[0], R.shape[1], bias.shape[0],
                  W_proj.shape[0], W_proj.shape[1], c0.shape[0], gate_kind, state_kind)
    _check_shape("H", H.shape[0], H.shape[1], n_rows, state)
    # Hprev, Cprev and TC with 0 rows: not kept (no backward pass follows).
    cdef bint keep = Hprev.shape[0] > 0 or n_rows == 0
    if keep:
        _check_shape("Hprev", Hprev.shape[0], Hprev.shape[1], n_rows, state)
        _check_shape("Cprev", Cprev.shape[0], Cprev.shape[1], n_rows, hidden)
        _check_shape("TC", TC.shape[0], TC.shape[1], n_rows, hidden)
    elif Cprev.shape[0] != 0 or TC.shape[0] != 0:
        raise ValueError(
            "Hprev has 0 rows (states not kept), so Cprev and TC must have 0 rows too; got "
            f"{Cprev.shape[0]} and {TC.shape[0]}."
        )
    _check_shape("gates", gates.shape[0], gates.shape[1], n_rows, 4 * hidden)
    _check_shape("h_n", h_n.shape[0], h_n.shape[1], batch_size, state)
    _check_shape("c_n", c_n.shape[0], c_n.shape[1], batch_size, hidden)
    _check_shape("work", work.shape[0], work.shape[1], batch_size + n_in + state + 1, 4 * hidden)
    if project:
        M_view = M
        _check_shape("M", M_view.shape[0], M_view.shape[1], n_rows, hidden)
    else:
        _check_no_rows("M", M.shape[0])
    if batch_size == 0:
        return  # Nothing to compute (and no row of any array to point at).
    if project:
        W_proj_ptr = &W_proj[0, 0]
        if n_rows > 0:
            M_ptr = &M_view[0, 0]
    if floating is float:
        if own_sgemm_enabled() and hidden > 0:
            weights_t = &work[batch_size, 0]

    with nogil:
        _forward_pass(
            &X[0, 0] if n_rows > 0 and n_in > 0 else NULL,
            &batch_sizes[0] if n_steps > 0 else NULL,
            &W[0, 0] if n_in > 0 else NULL, &R[0, 0], &bias[0], W_proj_ptr,
            &h0[0, 0], &c0[0, 0], reverse, gate_kind, state_kind,
            &H[0, 0] if n_rows > 0 else NULL,
            &Hprev[0, 0] if n_rows > 0 and keep else NULL,
            &Cprev[0, 0] if n_rows > 0 and keep else NULL,
            # Not kept, TC goes to the first B rows of work, free here.
            (&TC[0, 0] if keep else &work[0, 0]) if n_rows > 0 else NULL,
            &gates[0, 0] if n_rows > 0 else NULL,
            M_ptr, &h_n[0, 0], &c_n[0, 0], weights_t,
            n_rows, n_steps, batch_size, n_in, hidden, state,
        )


def backward(
    const floating[:, ::1] X,           # IN  [N, I]
    const int64_t[::1] batch_sizes,     # IN  [T]
    const floating[:, ::1] W,           # IN  [4H, I]
    const floating[:, ::1] R,           # IN  [4H, P]
    const floating[::1] bias,           # IN  [4H], unused
    const floating[:, ::1] W_proj,      # IN  [P, H], or (0, 0)
    const floating[:, ::1] h0,          # IN  [B, P], unused
    const floating[:, ::1] c0,          # IN  [B, H], unused
    bint reverse,                       # IN
    int gate_kind,                      # IN
    int state_kind,                     # IN
    const floating[:, ::1] Hprev,       # IN  [N, P]
    const floating[:, ::1] Cprev,       # IN  [N, H]
    const floating[:, ::1] TC,          # IN  [N, H]
    const floating[:, ::1] gates,       # IN  [N, 4H]
    const floating[:, ::1] M,           # IN  [N, H], or (0, 0)
    const floating[:, ::1] dH,          # IN  [N, P]
    const floating[:, ::1] dh_n,        # IN  [B, P]
    const floating[:, ::1] dc_n,        # IN  [B, H]
    floating[:, ::1] dX,                # OUT [N, I]
    floating[:, ::1] dW,                # OUT [4H, I]
    floating[:, ::1] dR,                # OUT [4H, P]
    floating[::1] dbias,                # OUT [4H]
    dW_proj,                            # OUT [P, H], or 0 rows (untouched)
    floating[:, ::1] dh0,               # OUT [B, P]
    floating[:, ::1] dc0,               # OUT [B, H]
    floating[:, ::1] dG,                # workspace [N, 4H]
    dH_total,                           # workspace [N, P], or 0 rows (untouched)
    dM,                                 # workspace [B, H], or 0 rows (untouched)
):
    """Backpropagate through one LSTM direction over a packed batch.

    Same arguments and outputs as
    :func:`fastlstm._kernels.numba_lstm.lstm_backward`, which documents each
    one. All float arrays share one dtype (float32 or float64) and are
    C-contiguous; the inputs may be read-only.

    Parameters
    ----------
    X, batch_sizes, W, R, W_proj, reverse, gate_kind, state_kind
        IN. As given to :func:`forward`.
    bias : ndarray of shape (4H,)
        Unused (its effect is in ``gates``); checked for shape only.
    h0 : ndarray of shape (B, P)
        Unused (its value is in ``Hprev``); checked for shape only.
    c0 : ndarray of shape (B, H)
        Unused (its value is in ``Cprev``); checked for shape only.
    Hprev : ndarray of shape (N, P)
        IN. As written by :func:`forward`.
    Cprev, TC : ndarray of shape (N, H)
        IN. As written by :func:`forward`.
    gates : ndarray of shape (N, 4H)
        IN. As written by :func:`forward`.
    M : ndarray of shape (N, H), or with 0 rows without projection
        IN. As written by :func:`forward`.
    dH : ndarray of shape (N, P)
        IN. Gradient of the loss with respect to ``H``.
    dh_n : ndarray of shape (B, P)
        IN. Gradient with respect to the final hidden states.
    dc_n : ndarray of shape (B, H)
        IN. Gradient with respect to the final cell states.
    dX : ndarray of shape (N, I), or with 0 rows
        OUT. Gradient with respect to ``X``; with 0 rows it is not computed
        (a network's first layer: nothing needs the gradient of its input).
    dW : ndarray of shape (4H, I)
        OUT. Gradient with respect to ``W``.
    dR : ndarray of shape (4H, P)
        OUT. Gradient with respect to ``R``.
    dbias : ndarray of shape (4H,)
        OUT. Gradient with respect to ``bias``.
    dW_proj : ndarray of shape (P, H), or with 0 rows without projection
        OUT. Gradient with respect to ``W_proj``. Without projection it is
        never touched, nor are ``dH_total`` and ``dM``.
    dh0 : ndarray of shape (B, P)
        OUT. Gradient with respect to the initial hidden state.
    dc0 : ndarray of shape (B, H)
        OUT. Gradient with respect to the initial cell state.
    dG : ndarray of shape (N, 4H)
        Workspace: gradients with respect to the gate pre-activations.
    dH_total : ndarray of shape (N, P), or with 0 rows without projection
        Workspace: total gradient of every step's hidden state.
    dM : ndarray of shape (B, H), or with 0 rows without projection
        Workspace: gradient of one step's unprojected hidden state.

    Raises
    ------
    ValueError
        As :func:`forward`.
    """
    cdef Py_ssize_t n_rows = X.shape[0], n_in = X.shape[1]
    cdef Py_ssize_t batch_size = h0.shape[0], state = h0.shape[1]
    cdef Py_ssize_t hidden = c0.shape[1]
    cdef Py_ssize_t n_steps = batch_sizes.shape[0]
    cdef bint project = W_proj.shape[0] > 0
    cdef const floating *W_proj_ptr = NULL
    cdef const floating *M_ptr = NULL
    cdef floating *dW_proj_ptr = NULL
    cdef floating *dH_total_ptr = NULL
    cdef floating *dM_ptr = NULL
    cdef floating[:, ::1] dW_proj_view, dH_total_view, dM_view

    _check_common(batch_sizes, n_rows, n_in, batch_size, hidden, state,
                  W.shape[0], W.shape[1], R.shape[0], R.shape[1], bias.shape[0],
                  W_proj.shape[0], W_proj.shape[1], c0.shape[0], gate_kind, state_kind)
    _check_shape("Hprev", Hprev.shape[0], Hprev.shape[1], n_rows, state)
    _check_shape("Cprev", Cprev.shape[0], Cprev.shape[1], n_rows, hidden)
    _check_shape("TC", TC.shape[0], TC.shape[1], n_rows, hidden)
    _check_shape("gates", gates.shape[0], gates.shape[1], n_rows, 4 * hidden)
    _check_shape("dH", dH.shape[0], dH.shape[1], n_rows, state)
    _check_shape("dh_n", dh_n.shape[0], dh_n.shape[1], batch_size, state)
    _check_shape("dc_n", dc_n.shape[0], dc_n.shape[1], batch_size, hidden)
    if dX.shape[0] > 0:  # 0 rows: the input gradient is not wanted
        _check_shape("dX", dX.shape[0], dX.shape[1], n_rows, n_in)
    _check_shape("dW", dW.shape[0], dW.shape[1], 4 * hidden, n_in)
    _check_shape("dR", dR.shape[0], dR.shape[1], 4 * hidden, state)
    if dbias.shape[0] != 4 * hidden:
        raise ValueError(f"dbias has shape ({dbias.shape[0]},), expected ({4 * hidden},).")
    _check_shape("dh0", dh0.shape[0], dh0.shape[1], batch_size, state)
    _check_shape("dc0", dc0.shape[0], dc0.shape[1], batch_size, hidden)
    _check_shape("dG", dG.shape[0], dG.shape[1], n_rows, 4 * hidden)
    if project:
        _check_shape("M", M.shape[0], M.shape[1], n_rows, hidden)
        dW_proj_view = dW_proj
        dH_total_view = dH_total
        dM_view = dM
        _check_shape("dW_proj", dW_proj_view.shape[0], dW_proj_view.shape[1], state, hidden)
        _check_shape("dH_total", dH_total_view.shape[0], dH_total_view.shape[1],
                     n_rows, state)
        _check_shape("dM", dM_view.shape[0], dM_view.shape[1], batch_size, hidden)
    else:
        _check_no_rows("M", M.shape[0])
        _check_no_rows("dW_proj", dW_proj.shape[0])
        _check_no_rows("dH_total", dH_total.shape[0])
        _check_no_rows("dM", dM.shape[0])
    if batch_size == 0:
        # No sequence: the gradients with respect to the weights are zero.
        dW[:, :] = 0
        dR[:, :] = 0
        dbias[:] = 0
        if project:
            dW_proj_view[:, :] = 0
        return
    if project:
        W_proj_ptr = &W_proj[0, 0]
        dW_proj_ptr = &dW_proj_view[0, 0]
        dM_ptr = &dM_view[0, 0]
        if n_rows > 0:
            M_ptr = &M[0, 0]
            dH_total_ptr = &dH_total_view[0, 0]

    with nogil:
        _backward_pass(
            &X[0, 0] if n_rows > 0 and n_in > 0 else NULL,
            &batch_sizes[0] if n_steps > 0 else NULL,
            &W[0, 0] if n_in > 0 else NULL, &R[0, 0], W_proj_ptr,
            reverse, gate_kind, state_kind,
            &Hprev[0, 0] if n_rows > 0 else NULL,
            &Cprev[0, 0] if n_rows > 0 else NULL,
            &TC[0, 0] if n_rows > 0 else NULL,
            &gates[0, 0] if n_rows > 0 else NULL,
            M_ptr,
            &dH[0, 0] if n_rows > 0 else NULL,
            &dh_n[0, 0], &dc_n[0, 0],
            &dX[0, 0] if dX.shape[0] > 0 and n_in > 0 else NULL,
            &dW[0, 0] if n_in > 0 else NULL, &dR[0, 0], &dbias[0], dW_proj_ptr,
            &dh0[0, 0], &dc0[0, 0],
            &dG[0, 0] if n_rows > 0 else NULL,
            dH_total_ptr, dM_ptr,
            n_rows, n_steps, batch_size, n_in, hidden, state,
        )
