"""numba kernels: one direction of one LSTM layer over a packed batch.

Layout (shared by every backend, see ``reference.py`` for the plain version):

- A mini-batch of B sequences is sorted by length, longest first, and packed
  time-major: the rows of step t are the sequences still active at t, and they
  are a prefix of the batch (``batch_sizes[t]`` rows). ``X`` is (N, I) with
  N = sum of lengths. No row ever holds padding.
- Weights use ``torch.nn.LSTM``'s layout: ``W`` (4H, I), ``R`` (4H, H), gates
  stacked in the order i, f, g, o; ``bias`` (4H,) is ``b_ih + b_hh``.
- ``reverse=True`` runs the recurrence from each sequence's last step to its
  first; sequence j then starts at its own step T_j - 1, which is where it joins
  the active prefix when the steps are walked backwards.
- With a projection (``torch.nn.LSTM(proj_size=P)``, MATLAB's
  ``lstmProjectedLayer``), the hidden state is ``h = W_proj (o * act(c))`` of
  size P, and ``R`` is (4H, P). Without one, ``W_proj`` has 0 rows and P = H.
- ``gate_kind`` and ``state_kind`` pick the activations (see ``_activations``).

Speed (see ``../shared/research/FAST_KERNELS.md``): the input projection is one
GEMM over all steps, each step does one GEMM on its active rows only and one
fused loop for the gate arithmetic, and the backward pass does only the
pointwise part and ``dh = dG R`` per step, leaving dW, dR and dX to three
whole-batch GEMMs after the loop. In float32 the GEMMs run on fastlstm's own
AVX-512 or AVX2 kernel where the CPU has one (``own_gemm.h``, via
``_matmul``), else on BLAS through ``np.dot``.

Every array, outputs and workspaces included, is allocated by the caller.
The end of the file has the kernels' native entries: C functions that run
them on packed arguments, without the GIL (see "Native entries").
"""

import llvmlite.binding
import numpy as np
from numba import carray, njit, types

from .. import _spin
from . import _gemm
from ._activations import (
    FASTMATH,
    SIGMOID,
    TANH,
    act_tanh,
    gate_activation,
    gate_derivative,
    state_activation,
    state_derivative,
)
from ._entries import EntryTable, address_to_pointer

# FASTMATH lets LLVM vectorise the gate loops; error_model="numpy" removes the
# division-by-zero checks that would otherwise block SIMD in act_tanh. Both
# kernels are serial (no parallel=True), so their compiled code can be cached
# on disk safely.
_JIT = dict(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)

# fastlstm's own float32 GEMM (``own_gemm.h``, compiled into ``_gemm``),
# called by its C name: LLVM resolves the name through add_symbol when it
# links a kernel, which also works for kernels loaded from numba's on-disk
# cache (a raw function address baked into the code would not).
llvmlite.binding.add_symbol("fastlstm_sgemm_addresses", _gemm.numba_entry_address())
_own_sgemm = types.ExternalFunction(
    "fastlstm_sgemm_addresses",
    types.intc(types.int64, types.int64, types.int64, types.uintp, types.int64, types.int64,
               types.uintp, types.int64, types.int64, types.uintp, types.int64),
)


@njit(**_JIT)
def _own_gemm(A, B, C, accumulate):
    """``C = [C +] A @ B`` with fastlstm's own GEMM; False where it cannot run.

    ``A`` may be a transposed view; ``B`` and ``C`` need contiguous rows. It
    cannot run on float64, on other layouts, when it is off, or without
    AVX2; ``C`` is then untouched and the caller uses BLAS.
    """
    size = A.itemsize
    if size != 4 or B.strides[1] != size or C.strides[1] != size:
        return False
    status = _own_sgemm(A.shape[0], B.shape[1], A.shape[1], A.ctypes.data,
                        A.strides[0] // size, A.strides[1] // size, B.ctypes.data,
                        B.strides[0] // size, 1 if accumulate else 0, C.ctypes.data,
                        C.strides[0] // size)
    return status == 0


# Products with a packed B (``own_gemm_avx2.h``): the recurrent weights of
# every step's product, packed once per kernel call.
_pack_b_address, _sgemm_packed_address = _gemm.numba_pack_addresses()
llvmlite.binding.add_symbol("fastlstm_pack_b_addresses", _pack_b_address)
llvmlite.binding.add_symbol("fastlstm_sgemm_packed_addresses", _sgemm_packed_address)
_own_pack_b = types.ExternalFunction(
    "fastlstm_pack_b_addresses",
    types.intc(types.int64, types.int64, types.uintp, types.int64, types.int64, types.uintp),
)
_own_sgemm_packed = types.ExternalFunction(
    "fastlstm_sgemm_packed_addresses",
    types.intc(types.int64, types.int64, types.int64, types.uintp, types.int64, types.int64,
               types.uintp, types.int64, types.uintp, types.int64),
)


@njit(**_JIT)
def _pack(B, transposed, out):
    """Pack ``B`` (or ``B.T`` if ``transposed``) into ``out``'s memory for :func:`_own_gemm_packed`.

    ``out`` is only storage: a contiguous array of as many elements as
    ``B``. False, leaving ``out`` untouched, where the products do not run
    on the AVX2 tiles that read the packed layout (float64, BLAS, AVX-512)
    or an array's layout does not fit; the caller then uses ``B`` as it is.
    """
    size = B.itemsize
    if (size != 4 or out.itemsize != 4 or B.strides[1] != size or out.size != B.size
            or out.strides[1] != size or out.strides[0] != out.shape[1] * size):
        return False
    k, n = (B.shape[1], B.shape[0]) if transposed else (B.shape[0], B.shape[1])
    return _own_pack_b(k, n, B.ctypes.data, B.strides[0] // size, 1 if transposed else 0,
                       out.ctypes.data) == 0


@njit(**_JIT)
def _own_gemm_packed(A, packed, n_columns, C, accumulate):
    """``C = [C +] A @ B`` for ``B`` (``n_columns`` wide) packed into ``packed`` by :func:`_pack`.

    The same bits as :func:`_own_gemm`; ``C`` needs contiguous rows.
    """
    size = A.itemsize
    status = _own_sgemm_packed(A.shape[0], n_columns, A.shape[1], A.ctypes.data,
                               A.strides[0] // size, A.strides[1] // size, packed.ctypes.data,
                               1 if accumulate else 0, C.ctypes.data, C.strides[0] // size)
    return status == 0


llvmlite.binding.add_symbol("fastlstm_transpose_addresses", _gemm.numba_transpose_address())
_own_transpose = types.ExternalFunction(
    "fastlstm_transpose_addresses",
    types.intc(types.int64, types.int64, types.uintp, types.int64, types.uintp, types.int64),
)


@njit(**_JIT)
def _transpose(A, out):
    """``out[:] = A.T``.

    In 16 x 16 or 8 x 8 register blocks (``own_gemm.h``) for float32 with
    contiguous rows where the CPU has AVX-512 or AVX2, else numba's copy of the transposed view: a
    W1 direction's W and R in about 4 us instead of 13 for the copy, which
    reads a column at a time.
    """
    size = A.itemsize
    if (size != 4 or A.shape[0] == 0 or A.shape[1] == 0 or A.strides[1] != size
            or out.strides[1] != size or _own_transpose(
                A.shape[0], A.shape[1], A.ctypes.data, A.strides[0] // size,
                out.ctypes.data, out.strides[0] // size) != 0):
        out[:] = A.T


@njit(**_JIT)
def _matmul(A, B, C):
    """``C = A @ B``: fastlstm's own GEMM in float32 where it runs, else BLAS."""
    if not _own_gemm(A, B, C, False):
        np.dot(A, B, C)


# A whole-sequence product whose inner dimension and number of columns are
# both at least this goes to BLAS where the own GEMM runs its AVX2 tiles
# (see _sequence_matmul).
SEQUENCE_BLAS_MIN = 128
llvmlite.binding.add_symbol("fastlstm_avx2_tiles", _gemm.numba_avx2_tiles_address())
_avx2_tiles = types.ExternalFunction("fastlstm_avx2_tiles", types.intc())


@njit(**_JIT)
def _sequence_matmul(A, B, C):
    """``C = A @ B`` for a product over every row of a batch (thousands of rows).

    Measured on Zen 3, one thread, alternated blocks: the own GEMM's AVX2
    tiles win on the narrow products (an inner dimension or a width of
    12-32, the input features: own / OpenBLAS time 0.62-0.92), OpenBLAS on
    W3's wide ones (k 256-3200, n 256-1024: 1.09-1.15), where its packing
    pays over thousands of rows; a W3 step took 0.945x as long with them on
    OpenBLAS (paired median of 26 alternated processes). W1's and W2's
    ``dG^T Hprev`` (n 100 and 64) measured 1.04-1.16 alone, but with this
    threshold at 64, which sent them to OpenBLAS, W1 and W2 steps took
    1.02-1.03x as long (12 alternated processes each): hence 128. The choice
    depends on the shapes only, which do not depend on the number of
    threads, so results keep the same bits whatever the thread count. The
    own AVX-512 tiles (measured only on per-step shapes, 1.3-2.7x faster
    than OpenBLAS) keep every product.
    """
    if (A.shape[1] >= SEQUENCE_BLAS_MIN and B.shape[1] >= SEQUENCE_BLAS_MIN
            and _avx2_tiles() == 1):
        np.dot(A, B, C)
    else:
        _matmul(A, B, C)


# Row helpers take whole 2-D arrays and row numbers, never row views: every
# view numba makes (``gates[row]``, ``g_row[:hidden]``) takes and drops a
# reference on the array's memory, two atomic calls that numba does not prune
# here. Per row of 64 units that was half the pointwise time (W2's backward
# pointwise part: 233 -> 114 ns per row without views, same results).
# Column offsets are unsigned (``_u``): numba checks a signed index like
# ``2 * hidden + k`` for negative wraparound, which keeps LLVM from
# vectorising the loop (10x slower); an unsigned one it does not check.
_u = types.uint64


@njit(**_JIT)
def _add_row(destination, destination_row, source, source_row):
    """``destination[destination_row] += source[source_row]``."""
    d, s = _u(destination_row), _u(source_row)
    for k in range(_u(source.shape[1])):
        destination[d, k] += source[s, k]


@njit(**_JIT)
def _copy_rows(destination, source):
    """``destination[:] = source`` for 2-D arrays of one shape, as plain loops.

    numba's slice assignment first checks whether the two arrays overlap and
    copies ``source`` to a temporary if they might; in the forward kernel's
    step loop those copies cost 12-14 % of a W1/W2 forward pass.
    """
    for r in range(_u(source.shape[0])):
        for k in range(_u(source.shape[1])):
            destination[r, k] = source[r, k]


@njit(**_JIT)
def _set_activation_scales(scales, start, stride, width):
    """Per gate column ``s``: 0.5 for the sigmoid gates i, f, o, 1 for the
    tanh gate g (gate blocks laid out as in :func:`_activate_gates`)."""
    half = scales.dtype.type(0.5)
    one = scales.dtype.type(1.0)
    for gate in range(4):
        for k in range(start + gate * stride, start + gate * stride + width):
            scales[k] = one if gate == 2 else half


@njit(**_JIT)
def _activate_gates_scaled(gates, row, bias, scales, start, stop):
    """Add the bias to a row's gate columns ``start`` to ``stop`` (excluded)
    and activate them in one loop: ``s tanh(s (x + b)) + (1 - s)``.

    With ``s`` = 0.5 that is the sigmoid (``act_sigmoid``'s own formula), with
    ``s`` = 1 the tanh, so one loop over all 4H columns does what the four
    loops of :func:`_activate_gates` do, with the same arithmetic. It pays on
    hidden sizes that are not multiples of 16: each loop of
    ``_activate_gates`` ends in a scalar remainder (the forward pass of W1,
    hidden 100, is 6-10 % faster).
    """
    one = gates.dtype.type(1.0)
    r = _u(row)
    for k in range(_u(start), _u(stop)):
        scale = scales[k]
        gates[r, k] = scale * act_tanh(scale * (gates[r, k] + bias[k])) + (one - scale)


@njit(**_JIT)
def _activate_gates(gates, row, bias, start, stride, width, gate_kind, state_kind):
    """Add the bias to one row's gate blocks i, f, g, o and activate them in
    place (any activation kinds).

    Gate block ``b`` is columns ``start + b * stride`` on, ``width`` of them:
    ``(0, H, H)`` for a whole row, other values for a part of the units (see
    :func:`lstm_forward_parts`).
    """
    # Offsets stay unsigned: numba types an int64 plus a uint64 as int64,
    # which brings the wraparound check back.
    r, n = _u(row), _u(width)
    for gate in range(_u(4)):
        block = _u(start) + gate * _u(stride)
        if gate == 2:
            for k in range(block, block + n):
                gates[r, k] = state_activation(gates[r, k] + bias[k], state_kind)
        else:
            for k in range(block, block + n):
                gates[r, k] = gate_activation(gates[r, k] + bias[k], gate_kind)


@njit(**_JIT)
def _update_cell(gates, row, start, stride, c_state, state_row, act_c_out, act_c_row, m_out,
                 m_row, first, last, state_kind):
    """c = f c + i g, act(c) and m = o act(c) for one row, c updated in place.

    The units ``first`` to ``last`` (excluded) are updated: columns ``first``
    on of the cell state ``c_state[state_row]`` (read and written), of
    ``act_c_out[act_c_row]`` (act(c)) and of ``m_out[m_row]`` (m). Their
    gates are read from ``gates[row]``, gate block ``b`` from column
    ``start + b * stride`` on (``start, stride = first, H`` in the kernels'
    usual layout).
    """
    r, s, a, m = _u(row), _u(state_row), _u(act_c_row), _u(m_row)
    i_start, f_start = _u(start), _u(start) + _u(stride)
    g_start, o_start = f_start + _u(stride), f_start + _u(stride) + _u(stride)
    unit = _u(first)
    for k in range(_u(last) - unit):
        c_new = (gates[r, f_start + k] * c_state[s, unit + k]
                 + gates[r, i_start + k] * gates[r, g_start + k])
        act_c = state_activation(c_new, state_kind)
        c_state[s, unit + k] = c_new
        act_c_out[a, unit + k] = act_c
        m_out[m, unit + k] = gates[r, o_start + k] * act_c


@njit(**_JIT)
def lstm_forward(
    X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
    H, Hprev, Cprev, TC, gates, M, h_n, c_n, work,
):
    """Run one LSTM direction over a packed batch.

    Parameters
    ----------
    X : ndarray of shape (N, I)
        IN. Packed inputs.
    batch_sizes : ndarray of shape (T,), int64
        IN. Active rows at each step, non-increasing.
    W : ndarray of shape (4H, I)
        IN. Input weights (gates i, f, g, o).
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
        IN. Gate and state activations.
    H : ndarray of shape (N, P)
        OUT. Hidden state after every step (the layer's output).
    Hprev : ndarray of shape (N, P), or with 0 rows
        OUT. Hidden state entering every step (kept for backward). With 0
        rows (prediction: no backward pass follows), ``Hprev``, ``Cprev``
        and ``TC`` are not kept.
    Cprev : ndarray of shape (N, H), or with 0 rows
        OUT. Cell state entering every step (kept for backward).
    TC : ndarray of shape (N, H), or with 0 rows
        OUT. State activation of the cell state after every step.
    gates : ndarray of shape (N, 4H)
        OUT. Activated gates i, f, g, o of every step (kept for backward).
    M : ndarray of shape (N, H), or (0, 0) without projection
        OUT. Hidden state before projection, ``o * act(c)``.
    h_n : ndarray of shape (B, P)
        OUT. Each sequence's final hidden state: after its last step, or after
        its first step when ``reverse``.
    c_n : ndarray of shape (B, H)
        OUT. Each sequence's final cell state.
    work : ndarray of shape (B + I + P + 1, 4H)
        Workspace: in float32 rows B to B + I + P take ``W`` and ``R``
        transposed, the row-contiguous operands fastlstm's own GEMM needs
        (``R^T`` packed, see :func:`_pack`, where the AVX2 tiles run);
        the first B rows take the recurrent product where BLAS computes it
        (the own GEMM adds it to ``gates`` directly); the last row takes the
        per-column scales of the gate activations.
    """
    n_steps = batch_sizes.shape[0]
    hidden = c0.shape[1]
    n_rows = X.shape[0]
    project = W_proj.shape[0] > 0
    batch_size = h0.shape[0]
    keep = Hprev.shape[0] > 0 or n_rows == 0
    # The own GEMM (float32) wants W^T and R^T row-contiguous: transpose them
    # once for all steps, R^T packed for the steps' products where the AVX2
    # tiles run them (R_t then holds its panels, not its rows). BLAS
    # (float64) reads the transposes in place.
    transposed = X.itemsize == 4
    W_t = work[batch_size:batch_size + X.shape[1]]
    R_t = work[batch_size + X.shape[1]:work.shape[0] - 1]
    scales = work[work.shape[0] - 1]
    scaled_activations = gate_kind == SIGMOID and state_kind == TANH
    if scaled_activations:
        _set_activation_scales(scales, 0, hidden, hidden)
    # Hoisted input projection: gates = X W^T, one GEMM for every step of
    # every sequence. The bias is added where the gates are activated: a
    # separate pass over all the gates cost 2 % of a W1 forward pass.
    packed = False
    if transposed:
        _transpose(W, W_t)
        packed = _pack(R, True, R_t)
        if not packed:
            _transpose(R, R_t)
        _sequence_matmul(X, W_t, gates)
    else:
        np.dot(X, W.T, gates)
    # h_n/c_n double as the running state: a sequence that has finished is
    # never touched again, so its final state stays in place.
    h_n[:] = h0
    c_n[:] = c0
    offset = 0 if not reverse else n_rows
    for step in range(n_steps):
        t = n_steps - 1 - step if reverse else step
        n_active = batch_sizes[t]
        if reverse:
            offset -= n_active
        # The recurrent part: the own GEMM adds it to the active rows' gates
        # in place; BLAS writes it to work, added row by row below.
        added = False
        if packed:
            added = _own_gemm_packed(h_n[:n_active], R_t, R_t.shape[1],
                                     gates[offset:offset + n_active], True)
        elif transposed:
            added = _own_gemm(h_n[:n_active], R_t, gates[offset:offset + n_active], True)
            if not added:
                np.dot(h_n[:n_active], R_t, work[:n_active])
        else:
            np.dot(h_n[:n_active], R.T, work[:n_active])
        if keep:
            _copy_rows(Hprev[offset:offset + n_active], h_n[:n_active])
            _copy_rows(Cprev[offset:offset + n_active], c_n[:n_active])
        # Without keeping TC, the rows of work the recurrent product has left
        # (added to the gates first) take it.
        act_c_out = TC if keep else work
        m_out = M if project else H
        for r in range(n_active):
            row = offset + r
            # Separate simple loops rather than one fused loop: each touches
            # few arrays, so LLVM needs few run-time overlap checks and
            # vectorises all of them (the fused loop exceeded its check budget
            # and ran scalar). Everything stays in L1 between the loops.
            if not added:
                _add_row(gates, row, work, r)
            if scaled_activations:
                _activate_gates_scaled(gates, row, bias, scales, 0, 4 * hidden)
            else:
                _activate_gates(gates, row, bias, 0, hidden, hidden, gate_kind, state_kind)
            _update_cell(gates, row, 0, hidden, c_n, r, act_c_out, row if keep else r, m_out, row,
                         0, hidden, state_kind)
        if project:
            np.dot(M[offset:offset + n_active], W_proj.T, h_n[:n_active])
            _copy_rows(H[offset:offset + n_active], h_n[:n_active])
        else:
            _copy_rows(h_n[:n_active], H[offset:offset + n_active])
        if not reverse:
            offset += n_active


# -- The cooperative forward pass (prediction) ----------------------------------------
# It lives here, beside lstm_forward, because it is made of the same helpers
# and numba's cache knows only the file of each compiled function: a change
# to a helper in another file would leave its cached entry stale.

# Counters shared by the tasks of a cooperative kernel (``_spin.pyx``),
# called by name like the own GEMM.
_counter_load_address, _counter_add_one_address, _counter_wait_address = (
    _spin.counter_addresses())
llvmlite.binding.add_symbol("fastlstm_counter_load", _counter_load_address)
llvmlite.binding.add_symbol("fastlstm_counter_add_one", _counter_add_one_address)
llvmlite.binding.add_symbol("fastlstm_counter_wait", _counter_wait_address)
_counter_load = types.ExternalFunction("fastlstm_counter_load", types.int64(types.uintp))
_counter_add_one = types.ExternalFunction("fastlstm_counter_add_one", types.int64(types.uintp))
_counter_wait = types.ExternalFunction("fastlstm_counter_wait",
                                       types.void(types.uintp, types.int64))


@njit(**_JIT)
def _gemm_columns(A, a_row, n_rows, B, column, n_columns, C, c_row, accumulate):
    """``C[c_row:, column:][:n_rows, :n_columns] (+)= A[a_row:][:n_rows] @ B[:, column:][:, :n_columns]``.

    fastlstm's own GEMM on the blocks' addresses (no views: each would cost
    two atomic reference-count updates per call); where it cannot run
    (float64, no AVX2), plain loops, whose sums are close to BLAS's but not
    its bits (the network gives parts only to the own GEMM).
    """
    size = A.itemsize
    if size == 4 and A.strides[1] == size and B.strides[1] == size and C.strides[1] == size:
        status = _own_sgemm(n_rows, n_columns, A.shape[1],
                            A.ctypes.data + a_row * A.strides[0], A.strides[0] // size, 1,
                            B.ctypes.data + column * size, B.strides[0] // size,
                            1 if accumulate else 0,
                            C.ctypes.data + c_row * C.strides[0] + column * size,
                            C.strides[0] // size)
        if status == 0:
            return
    zero = C.dtype.type(0.0)
    for i in range(n_rows):
        for j in range(column, column + n_columns):
            total = zero
            for p in range(A.shape[1]):
                total += A[a_row + i, p] * B[p, j]
            C[c_row + i, j] = C[c_row + i, j] + total if accumulate else total


@njit(**_JIT)
def _prepare_part(X, W, R, bias, h0, c0, hidden, first, last, scaled_activations, gates,
                  h_n, c_n, states, W_t, R_t, part_bias, scales):
    """Phase 0 of a cooperative forward pass, for units ``first`` to ``last``.

    Lays out the part's gate columns side by side (columns ``4 first`` to
    ``4 last``: its i, f, g, o blocks): its rows of ``W`` and ``R``
    transposed, its bias and activation scales; computes its input
    projection for every step; and starts its units' states.
    """
    batch_size = h0.shape[0]
    width = last - first
    start = 4 * first
    for gate in range(4):
        rows = gate * hidden + first
        column = start + gate * width
        _transpose(W[rows:rows + width], W_t[:, column:column + width])
        _transpose(R[rows:rows + width], R_t[:, column:column + width])
        for k in range(width):
            part_bias[column + k] = bias[rows + k]
    _gemm_columns(X, 0, X.shape[0], W_t, start, 4 * width, gates, 0, False)
    if scaled_activations:
        _set_activation_scales(scales, start, width, width)
    for r in range(batch_size):
        for k in range(first, last):
            c_n[r, k] = c0[r, k]
            h_n[r, k] = h0[r, k]
            states[r, k] = h0[r, k]
            states[batch_size + r, k] = h0[r, k]


@njit(**_JIT)
def _step_part(step, offset, n_active, R_t, part_bias, scales, first, last, scaled_activations,
               gate_kind, state_kind, H, gates, h_n, c_n, states, act_c_rows):
    """One step of a cooperative forward pass, for units ``first`` to ``last``.

    The hidden states entering the step are rows ``(step % 2) B`` on of
    ``states``, written by every part in the step before; this part writes
    its units of the next ones to the other half, which no part reads
    during this step.
    """
    batch_size = h_n.shape[0]
    source = (step % 2) * batch_size
    target = batch_size - source  # the other half
    width = last - first
    start = 4 * first
    _gemm_columns(states, source, n_active, R_t, start, 4 * width, gates, offset, True)
    for r in range(n_active):
        row = offset + r
        if scaled_activations:
            _activate_gates_scaled(gates, row, part_bias, scales, start, start + 4 * width)
        else:
            _activate_gates(gates, row, part_bias, start, width, width, gate_kind, state_kind)
        _update_cell(gates, row, start, width, c_n, r, act_c_rows, r, H, row, first, last,
                     state_kind)
        for k in range(first, last):
            states[target + r, k] = H[row, k]
            h_n[r, k] = H[row, k]


@njit(**_JIT)
def lstm_forward_parts(
    X, batch_sizes, W, R, bias, h0, c0, reverse, gate_kind, state_kind,
    H, gates, h_n, c_n, states, progress, n_parts, work,
):
    """:func:`lstm_forward` for prediction, as one of several runners that share the steps.

    The hidden units are cut into ``n_parts`` parts; every step has one task
    per part (its units' gate columns: the recurrent product, the
    activations, the cell update), and a step starts once every part of
    the one before has finished, because its product reads the whole
    hidden state. One call of this function is one runner: it takes parts
    not yet taken, step after step, until every step is done. So any
    number of runners, started at any time, finish the pass together, one
    alone too, and none ever waits for a part that no runner has taken.
    Each unit's arithmetic is that of :func:`lstm_forward`, whichever
    runner does it, so the outputs are the same bits (tested). For a layer
    with fewer (shard, direction) tasks than threads, as with one sequence,
    this puts the idle threads to work: a step's product is then a
    matrix-vector product, bounded by the speed of one core's cache.

    Parameters
    ----------
    X, batch_sizes, W, R, bias, h0, c0, reverse, gate_kind, state_kind
        IN. As in :func:`lstm_forward` (no projection: ``R`` is (4H, H)).
    H, h_n, c_n
        OUT. As in :func:`lstm_forward`.
    gates : ndarray of shape (N, 4H)
        OUT. The activated gates, each part's four blocks side by side
        (columns ``4 first`` to ``4 last`` for units ``first`` to ``last``).
    states : ndarray of shape (2 B, H)
        Shared workspace: the hidden states entering a step, and those
        entering the next one.
    progress : ndarray of shape (2 (T + 1) + 1,), int64
        Shared, zeros before the first runner starts: per phase (the
        preparation, then the T steps), how many of its parts runners have
        taken and how many they have finished; last, how many phases are
        finished.
    n_parts : int
        Parts per step, at most the number of hidden units.
    work : ndarray of shape (B + I + H + 2, 4H)
        Shared workspace, in the parts' column order: rows ``B`` on ``W``
        and ``R`` transposed, then the bias, then the activations' scales;
        the first ``B`` rows take act(c). Every part writes only its own
        columns.

    Every runner is given the same arrays.
    """
    n_steps = batch_sizes.shape[0]
    hidden = c0.shape[1]
    batch_size = h0.shape[0]
    n_inputs = X.shape[1]
    W_t = work[batch_size:batch_size + n_inputs]
    R_t = work[batch_size + n_inputs:batch_size + n_inputs + hidden]
    part_bias = work[work.shape[0] - 2]
    scales = work[work.shape[0] - 1]
    scaled_activations = gate_kind == SIGMOID and state_kind == TANH
    n_phases = n_steps + 1
    counters = progress.ctypes.data
    phases_finished = counters + 8 * 2 * n_phases
    # A runner that starts late skips the phases already finished.
    phase = _counter_load(phases_finished)
    offset = 0
    for skipped in range(max(phase - 1, 0)):
        offset += batch_sizes[n_steps - 1 - skipped if reverse else skipped]
    if reverse:
        offset = X.shape[0] - offset
    while phase < n_phases:
        claimed = counters + 8 * 2 * phase
        finished = claimed + 8
        step = phase - 1
        n_active = 0
        if phase > 0:
            n_active = batch_sizes[n_steps - 1 - step if reverse else step]
            if reverse:
                offset -= n_active
        while True:
            part = _counter_add_one(claimed)
            if part >= n_parts:
                break
            first = hidden * part // n_parts
            last = hidden * (part + 1) // n_parts
            if phase == 0:
                _prepare_part(X, W, R, bias, h0, c0, hidden, first, last, scaled_activations,
                              gates, h_n, c_n, states, W_t, R_t, part_bias, scales)
            else:
                _step_part(step, offset, n_active, R_t, part_bias, scales, first, last,
                           scaled_activations, gate_kind, state_kind, H, gates, h_n, c_n,
                           states, work)
            if _counter_add_one(finished) == n_parts - 1:
                _counter_add_one(phases_finished)
        _counter_wait(finished, n_parts)
        if phase > 0 and not reverse:
            offset += n_active
        phase += 1


@njit(**_JIT)
def _gates_backward(gates, TC, Cprev, row, dm, dc_state, state_row, dG, hidden, gate_kind,
                    state_kind):
    """One row's pointwise backward step: dG from dm and dc; dc carried back.

    ``dm[state_row]`` is the whole gradient of the unprojected hidden state
    ``o * act(c)``; ``dc_state[state_row]`` holds the gradient of the cell
    state coming from the next step and is replaced by the one going to the
    previous step. ``gates``, ``TC``, ``Cprev`` and ``dG`` are read or written
    at ``row``.
    """
    r, s, h = _u(row), _u(state_row), _u(hidden)
    f_start, g_start, o_start = h, h + h, h + h + h
    # Two loops, each writing one array: LLVM vectorises a loop only when its
    # run-time overlap checks (one per array written against each other
    # array) fit its budget of 8. The first writes dG and reads five arrays;
    # it computes the new dc on the fly and leaves storing it, after the
    # multiplication by f, to the second. A single loop writing both was
    # over budget and ran scalar; six loops of one gate each, as before,
    # took twice as long (102 against 52 ns per row of 64 units).
    for k in range(h):
        dm_k = dm[s, k]
        tc = TC[r, k]
        i_gate, f_gate = gates[r, k], gates[r, f_start + k]
        g_gate, o_gate = gates[r, g_start + k], gates[r, o_start + k]
        dc = dc_state[s, k] + dm_k * o_gate * state_derivative(tc, state_kind)
        dG[r, k] = dc * g_gate * gate_derivative(i_gate, gate_kind)
        dG[r, f_start + k] = dc * Cprev[r, k] * gate_derivative(f_gate, gate_kind)
        dG[r, g_start + k] = dc * i_gate * state_derivative(g_gate, state_kind)
        dG[r, o_start + k] = dm_k * tc * gate_derivative(o_gate, gate_kind)
    for k in range(h):
        dc = dc_state[s, k] + dm[s, k] * gates[r, o_start + k] * state_derivative(TC[r, k],
                                                                                   state_kind)
        dc_state[s, k] = dc * gates[r, f_start + k]


@njit(**_JIT)
def lstm_backward(
    X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
    Hprev, Cprev, TC, gates, M, dH, dh_n, dc_n,
    dX, dW, dR, dbias, dW_proj, dh0, dc0, dG, dH_total, dM,
):
    """Backpropagate through one LSTM direction over a packed batch.

    Parameters
    ----------
    X, batch_sizes, W, R, W_proj, reverse, gate_kind, state_kind
        IN. As given to :func:`lstm_forward`.
    bias, h0, c0
        Unused: the saved buffers already hold what they determine. They are
        part of the signature so that every backend has the same interface.
    Hprev, Cprev, TC, gates, M
        IN. As written by :func:`lstm_forward`.
    dH : ndarray of shape (N, P)
        IN. Gradient of the loss with respect to ``H``.
    dh_n : ndarray of shape (B, P)
        IN. Gradient with respect to the final hidden states.
    dc_n : ndarray of shape (B, H)
        IN. Gradient with respect to the final cell states.
    dX : ndarray of shape (N, I), or with 0 rows
        OUT. Gradient with respect to ``X``; with 0 rows it is not computed
        (a network's first layer: nothing needs the gradient of its input).
    dW, dR, dbias, dW_proj
        OUT. Gradients with respect to ``W``, ``R``, ``bias`` and ``W_proj``
        (``dW_proj`` has 0 rows without projection). Until its own product
        after the steps, ``dR`` holds ``R`` packed for them (see
        :func:`_pack`).
    dh0 : ndarray of shape (B, P)
        OUT. Gradient with respect to the initial hidden state.
    dc0 : ndarray of shape (B, H)
        OUT. Gradient with respect to the initial cell state.
    dG : ndarray of shape (N, 4H)
        Workspace: gradients with respect to the gate pre-activations.
    dH_total : ndarray of shape (N, P), or (0, 0) without projection
        Workspace: total gradient of every step's hidden state.
    dM : ndarray of shape (B, H), or (0, 0) without projection
        Workspace: gradient of one step's unprojected hidden state.
    """
    n_steps = batch_sizes.shape[0]
    hidden = c0.shape[1]
    n_rows = X.shape[0]
    project = W_proj.shape[0] > 0
    # dh0/dc0 carry the running state gradient; a row keeps dh_n/dc_n until
    # the backward walk reaches the step where that row's final state was made.
    dh0[:] = dh_n
    dc0[:] = dc_n
    # R packed for the steps' dG R where the AVX2 tiles run them, in dR's
    # memory: dR is written only after the loop, by its own product.
    packed = _pack(R, False, dR)
    offset = n_rows if not reverse else 0
    for step in range(n_steps):
        t = step if reverse else n_steps - 1 - step
        n_active = batch_sizes[t]
        if not reverse:
            offset -= n_active
        if project:
            for r in range(_u(n_active)):
                for k in range(_u(dH.shape[1])):
                    dH_total[offset + r, k] = dh0[r, k] + dH[offset + r, k]
            _matmul(dH_total[offset:offset + n_active], W_proj, dM[:n_active])
        for r in range(n_active):
            row = offset + r
            if not project:
                # dm = dh0 + dH, in place: dh0's active rows are overwritten
                # by dG R below anyway.
                _add_row(dh0, r, dH, row)
            _gates_backward(gates, TC, Cprev, row, dM if project else dh0, dc0, r, dG, hidden,
                            gate_kind, state_kind)
        # Only the recurrent part of dh is needed inside the loop.
        if packed:
            _own_gemm_packed(dG[offset:offset + n_active], dR, R.shape[1], dh0[:n_active], False)
        else:
            _matmul(dG[offset:offset + n_active], R, dh0[:n_active])
        if reverse:
            offset += n_active
    # Whole-batch GEMMs instead of one small GEMM per step.
    _sequence_matmul(dG.T, X, dW)
    _sequence_matmul(dG.T, Hprev, dR)
    if dX.shape[0] > 0:
        _sequence_matmul(dG, W, dX)
    if project:
        _sequence_matmul(dH_total.T, M, dW_proj)
    dbias[:] = 0
    for row in range(_u(n_rows)):
        for k in range(_u(dbias.shape[0])):
            dbias[k] += dG[row, k]


# Native entries -------------------------------------------------------------
# ``lstm_forward`` and ``lstm_backward`` called from Python go through numba's
# dispatcher, which types every argument (10-15 us per W1 call) and needs the
# GIL to start and to return. A pool worker that calls them so takes the GIL
# twice per phase, each time after the calling thread let it go: in a W1
# training step the worker's kernel started 23-51 us after the caller's. The
# C functions below take the kernel's arguments packed by
# ``_kernel_arguments.pack`` into one int64 block, rebuild the arrays from
# their addresses and shapes, and call the same compiled kernel, so that
# ``_spin.serve`` runs a whole phase without the GIL; they give the
# dispatcher's bits (tested). Only float32 has entries (fastlstm's default,
# the dtype of the own GEMM); float64 and the other backends run through
# Python. They live in this file because numba's cache keys them by this
# file's source: a change to the kernels recompiles them too. Importing the
# module compiles none of them; :func:`entry_addresses` compiles a dtype's,
# or loads them from the cache, on first use.


# Argument i occupies block[3 i : 3 i + 3] (see _kernel_arguments).
@njit(inline="always")
def _matrix(block, i, dtype):
    return carray(address_to_pointer(block[3 * i]), (block[3 * i + 1], block[3 * i + 2]), dtype)


@njit(inline="always")
def _vector(block, i, dtype):
    return carray(address_to_pointer(block[3 * i]), (block[3 * i + 1],), dtype)


_F32 = np.float32


@njit(inline="always")
def _leading_float32(block):
    """Arguments 0-10, the same in both kernels: inputs, weights, initial states, kinds."""
    m, v = _matrix, _vector
    return (m(block, 0, _F32), v(block, 1, np.int64), m(block, 2, _F32), m(block, 3, _F32),
            v(block, 4, _F32), m(block, 5, _F32), m(block, 6, _F32), m(block, 7, _F32),
            block[3 * 8] != 0, block[3 * 9], block[3 * 10])


def _forward_float32(block):
    """:func:`lstm_forward` on the arguments packed in ``block`` (signature ``FORWARD``)."""
    m = _matrix
    lstm_forward(*_leading_float32(block),
                 m(block, 11, _F32), m(block, 12, _F32), m(block, 13, _F32), m(block, 14, _F32),
                 m(block, 15, _F32), m(block, 16, _F32), m(block, 17, _F32), m(block, 18, _F32),
                 m(block, 19, _F32))


def _backward_float32(block):
    """:func:`lstm_backward` on the arguments packed in ``block`` (signature ``BACKWARD``)."""
    m = _matrix
    lstm_backward(*_leading_float32(block),
                  m(block, 11, _F32), m(block, 12, _F32), m(block, 13, _F32), m(block, 14, _F32),
                  m(block, 15, _F32), m(block, 16, _F32), m(block, 17, _F32), m(block, 18, _F32),
                  m(block, 19, _F32), m(block, 20, _F32), m(block, 21, _F32),
                  _vector(block, 22, _F32), m(block, 23, _F32), m(block, 24, _F32),
                  m(block, 25, _F32), m(block, 26, _F32), m(block, 27, _F32), m(block, 28, _F32))


def _forward_parts_float32(block):
    """:func:`lstm_forward_parts` on the arguments in ``block`` (signature ``FORWARD_PARTS``)."""
    m, v = _matrix, _vector
    lstm_forward_parts(
        m(block, 0, _F32), v(block, 1, np.int64), m(block, 2, _F32), m(block, 3, _F32),
        v(block, 4, _F32), m(block, 5, _F32), m(block, 6, _F32), block[3 * 7] != 0,
        block[3 * 8], block[3 * 9], m(block, 10, _F32), m(block, 11, _F32),
        m(block, 12, _F32), m(block, 13, _F32), m(block, 14, _F32), v(block, 15, np.int64),
        block[3 * 16], m(block, 17, _F32))


# dtype -> its (forward, backward, cooperative forward) entries.
_ENTRIES = EntryTable({np.float32: (_forward_float32, _backward_float32,
                                    _forward_parts_float32)})


def entry_addresses(dtype):
    """The addresses of the (forward, backward, cooperative forward) entries for ``dtype``, or None.

    Compiled, or loaded from numba's on-disk cache, on the first call for a
    dtype (see :class:`fastlstm._kernels._entries.EntryTable`).
    """
    return _ENTRIES.addresses(dtype)


def entries_cached():
    """Whether numba's on-disk cache holds every entry (compiles nothing)."""
    return _ENTRIES.cached()
