"""numba kernel: a whole unidirectional network, step by step, for streaming.

``predict_and_update_state`` on a few new steps (one, in the typical
streaming loop) is dominated by fixed costs on the general path: packing a
batch, one BLAS call per step and layer, the thread pool, the head. This
kernel does a whole call in one compiled function instead: input
normalisation, every layer's cell step, the projection and the output
layer, for each sequence and step, with the running states updated in place.

Weights come pre-transposed in one flat buffer (see
:func:`fastlstm._streaming.pack_stream_weights`), each matrix (n_in, width)
stored as panels of ``PANEL`` columns, one after the other, each panel's
rows contiguous. A step reads every weight once (W4: 272 kB, from L2), and
a panel is one sequential stream the prefetchers follow, where a row-major
matrix makes a 64-column tile jump 4 * width bytes from row to row: 1 x 128
by 128 x 512 on the AMD Zen 3 machine, 3.1-3.3 us in 64-column panels
against 3.9-4.2 us row-major. A layer's input and recurrent weights are
stacked into one matrix, and its input and hidden state side by side into
one vector, so that a layer's step is one product: W4's step, 136 x 512,
took 0.5-0.6 us less (of 5-7 us, medians) than an 8-row product for the
input and a 128-row one for the state, each into its own vector. In
float32 each panel is one call of fastlstm's own GEMM, whose one-row tiles
keep eight sums in registers; otherwise (float64, no AVX2) the gate vector
is a sum of panel rows scaled by the input (``axpy``), which vectorises
along the columns with no reduction. ``layout`` holds the offsets.

The arithmetic follows ``numba_lstm.lstm_forward``: the same activation
functions and the same cell update, so predictions agree with the general
path to rounding (the summation order of the gates' pre-activations:
(input + recurrent) + bias here, input + (recurrent + bias) there).

The end of the file has the kernel's native entry, which
``_stream_call.StreamCall`` calls without numba's dispatcher.
"""

import numpy as np
from numba import carray, njit

from ._activations import FASTMATH, gate_activation, state_activation
from ._entries import EntryTable, address_to_pointer
from .numba_lstm import _own_sgemm, _u

_JIT = dict(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)

# Columns of ``layout``, one row per layer: a layer's input and recurrent
# weights stacked (WEIGHTS), its bias, its projection; the output layer's
# offsets are in the row after the last layer (columns WEIGHTS and BIAS).
WEIGHTS, BIAS, PROJ_WEIGHTS = 0, 1, 2
LAYOUT_COLUMNS = 3

# Columns per weight panel: the width of the own GEMM's widest one-row tile
# (4 x 16 floats with AVX-512, 8 x 8 with AVX2).
PANEL = 64


def panel_layout(matrix):
    """``matrix`` (n_in, width) as its panels of ``PANEL`` columns, flattened.

    Parameters
    ----------
    matrix : ndarray of shape (n_in, width)

    Returns
    -------
    flat : ndarray of shape (n_in * width,)
        Panel p holds columns ``[p * PANEL, min((p + 1) * PANEL, width))``,
        row by row, and starts at ``p * PANEL * n_in``.
    """
    width = matrix.shape[1]
    return np.concatenate([np.ascontiguousarray(matrix[:, start:start + PANEL]).ravel()
                           for start in range(0, width, PANEL)])


def work_size(hidden, state, n_inputs):
    """Length of :func:`stream_forward`'s workspace: gates (4H), the cell
    outputs before any projection (H), a layer's input and hidden state
    side by side (at most max(I, P) + P)."""
    return 5 * hidden + max(n_inputs, state) + state


@njit(**_JIT)
def _matvec(params, offset, n_in, width, vector, vector_start, out, out_start):
    """``out[out_start:][:width] = vector[vector_start:][:n_in] @ M``.

    ``M`` (n_in, width) is stored at ``params[offset:]`` in panels (see
    :func:`panel_layout`). The arrays are 1-D and contiguous; offsets rather
    than views, because each view numba makes takes and drops a reference
    on its array (two atomic operations), and a step makes dozens.
    """
    size = params.itemsize
    for start in range(0, width, PANEL):
        n = min(PANEL, width - start)
        panel = offset + start * n_in
        if size == 4 and _own_sgemm(
                1, n, n_in, vector.ctypes.data + vector_start * size, n_in, 1,
                params.ctypes.data + panel * size, n, 0,
                out.ctypes.data + (out_start + start) * size, width) == 0:
            continue
        # Unsigned indices: numba checks a signed computed index for negative
        # wraparound, which keeps LLVM from vectorising (10x slower here).
        column = _u(out_start + start)
        for j in range(_u(n)):
            out[column + j] = 0
        for k in range(n_in):
            value = vector[_u(vector_start + k)]
            row = _u(panel + k * n)
            for j in range(_u(n)):
                out[column + j] += params[row + j] * value


@njit(**_JIT)
def stream_forward(X, affine, params, layout, sizes, h, c, out, work, per_step,
                   gate_kind, state_kind):
    """Run the network over new steps of each sequence, from and into ``h``/``c``.

    Parameters
    ----------
    X : ndarray of shape (B, T, I)
        IN. T new steps of each of B sequences (model dtype), finite.
    affine : ndarray of shape (3, I), float64, or (0, I)
        IN. Input normalisation ``(x - affine[0]) / affine[1] + affine[2]``,
        computed in float64 as :class:`fastlstm.SequenceScaler` does; no
        normalisation with 0 rows.
    params : ndarray of shape (n,)
        IN. Pre-transposed weights in panels (see the module docstring).
    layout : ndarray of shape (L + 1, LAYOUT_COLUMNS), int64
        IN. Offsets in ``params``; PROJ_WEIGHTS is -1 without projection.
    sizes : ndarray of shape (4,), int64
        IN. Hidden size H, state size P (H without projection), number of
        outputs, number of layers L.
    h : ndarray of shape (L, B, P)
        IN/OUT. Hidden state of every layer and sequence.
    c : ndarray of shape (L, B, H)
        IN/OUT. Cell state.
    out : ndarray of shape (B, T or 1, n_outputs)
        OUT. Output layer at every step (``per_step``) or at the last one.
    work : ndarray of shape (:func:`work_size`,)
        Workspace.
    per_step : bool
    gate_kind, state_kind : int

    Every array is C-contiguous.
    """
    hidden, state, n_outputs, n_layers = sizes[0], sizes[1], sizes[2], sizes[3]
    n_sequences, n_steps, n_inputs = X.shape[0], X.shape[1], X.shape[2]
    width = 4 * hidden
    x_flat, h_flat, c_flat = X.reshape(-1), h.reshape(-1), c.reshape(-1)
    out_flat = out.reshape(-1)
    # work: gates | o * act(c), before any projection | the layer's input and
    # its hidden state from the step before, side by side, so that one
    # product with the stacked weights gives the gates' pre-activations.
    # Indices into the arrays are unsigned (``_u``) and so is every term
    # added to them: numba types int64 + uint64 as float64.
    normalise = affine.shape[0] == 3
    i0, f0, g0, o0 = _u(0), _u(hidden), _u(2 * hidden), _u(3 * hidden)
    m0, v0, width_u = _u(width), _u(width + hidden), _u(width)
    for b in range(n_sequences):
        for t in range(n_steps):
            x_row = _u((b * n_steps + t) * n_inputs)
            for k in range(_u(n_inputs)):
                if normalise:
                    value = (np.float64(x_flat[x_row + k]) - affine[0, k]) / affine[1, k] \
                        + affine[2, k]
                    work[v0 + k] = value
                else:
                    work[v0 + k] = x_flat[x_row + k]
            n_in = n_inputs
            for layer in range(n_layers):
                h_row = (layer * n_sequences + b) * state
                c_row = _u((layer * n_sequences + b) * hidden)
                if layer > 0:  # the input: the layer below's new hidden state
                    below = _u(h_row - n_sequences * state)
                    for k in range(_u(state)):
                        work[v0 + k] = h_flat[below + k]
                    n_in = state
                for k in range(_u(state)):
                    work[v0 + _u(n_in) + k] = h_flat[_u(h_row) + k]
                _matvec(params, layout[layer, WEIGHTS], n_in + state, width, work, v0, work, 0)
                bias = _u(layout[layer, BIAS])
                # (input + recurrent) + bias; then each gate's activation, in
                # loops that vectorise.
                for j in range(width_u):
                    work[j] += params[bias + j]
                for j in range(_u(hidden)):
                    work[i0 + j] = gate_activation(work[i0 + j], gate_kind)
                for j in range(_u(hidden)):
                    work[f0 + j] = gate_activation(work[f0 + j], gate_kind)
                for j in range(_u(hidden)):
                    work[g0 + j] = state_activation(work[g0 + j], state_kind)
                for j in range(_u(hidden)):
                    work[o0 + j] = gate_activation(work[o0 + j], gate_kind)
                for j in range(_u(hidden)):
                    c_new = work[f0 + j] * c_flat[c_row + j] + work[i0 + j] * work[g0 + j]
                    c_flat[c_row + j] = c_new
                    work[m0 + j] = work[o0 + j] * state_activation(c_new, state_kind)
                projection = layout[layer, PROJ_WEIGHTS]
                if projection >= 0:
                    _matvec(params, projection, hidden, state, work, m0, h_flat, h_row)
                else:
                    for j in range(_u(hidden)):
                        h_flat[_u(h_row) + j] = work[m0 + j]
            if per_step or t == n_steps - 1:
                row = (b * out.shape[1] + (t if per_step else 0)) * n_outputs
                head_bias = _u(layout[n_layers, BIAS])
                top = ((n_layers - 1) * n_sequences + b) * state
                _matvec(params, layout[n_layers, WEIGHTS], state, n_outputs, h_flat, top,
                        out_flat, row)
                for j in range(_u(n_outputs)):
                    out_flat[_u(row) + j] += params[head_bias + j]


# Native entry ---------------------------------------------------------------
# Called through numba's dispatcher, ``stream_forward`` costs about 2 us per
# call before it starts (typing its 12 arguments, on the Zen 3 machine), a
# fifth of a W4 step. ``_stream_call.StreamCall`` instead calls the C
# function below with the arguments' addresses and sizes in one int64 block
# (slots ``SLOT_*``); it rebuilds the arrays and runs the same compiled
# kernel. As ``numba_lstm``'s entries, it lives in this file so that numba's
# cache, keyed by this file's source, recompiles it with the kernel.

(SLOT_X, SLOT_B, SLOT_T, SLOT_I, SLOT_AFFINE, SLOT_AFFINE_ROWS, SLOT_PARAMS, SLOT_PARAMS_SIZE,
 SLOT_LAYOUT, SLOT_SIZES, SLOT_H, SLOT_C, SLOT_OUT, SLOT_OUT_STEPS, SLOT_WORK, SLOT_WORK_SIZE,
 SLOT_PER_STEP, SLOT_GATE_KIND, SLOT_STATE_KIND) = range(19)
N_SLOTS = 19


@njit(inline="always")
def _array(block, slot, shape, dtype):
    return carray(address_to_pointer(block[slot]), shape, dtype)


@njit(inline="always")
def _run_entry(block, dtype):
    n_sequences, n_inputs = block[SLOT_B], block[SLOT_I]
    sizes = _array(block, SLOT_SIZES, (4,), np.int64)
    hidden, state, n_outputs, n_layers = sizes[0], sizes[1], sizes[2], sizes[3]
    stream_forward(
        _array(block, SLOT_X, (n_sequences, block[SLOT_T], n_inputs), dtype),
        _array(block, SLOT_AFFINE, (block[SLOT_AFFINE_ROWS], n_inputs), np.float64),
        _array(block, SLOT_PARAMS, (block[SLOT_PARAMS_SIZE],), dtype),
        _array(block, SLOT_LAYOUT, (n_layers + 1, LAYOUT_COLUMNS), np.int64),
        sizes,
        _array(block, SLOT_H, (n_layers, n_sequences, state), dtype),
        _array(block, SLOT_C, (n_layers, n_sequences, hidden), dtype),
        _array(block, SLOT_OUT, (n_sequences, block[SLOT_OUT_STEPS], n_outputs), dtype),
        _array(block, SLOT_WORK, (block[SLOT_WORK_SIZE],), dtype),
        block[SLOT_PER_STEP] != 0, block[SLOT_GATE_KIND], block[SLOT_STATE_KIND])


_F32, _F64 = np.float32, np.float64


def _entry_float32(block):
    """:func:`stream_forward` on the float32 arguments in ``block``."""
    _run_entry(block, _F32)


def _entry_float64(block):
    """:func:`stream_forward` on the float64 arguments in ``block``."""
    _run_entry(block, _F64)


_ENTRIES = EntryTable({np.float32: (_entry_float32,), np.float64: (_entry_float64,)})


def entry_address(dtype):
    """The address of the entry for ``dtype`` (float32 or float64).

    Compiled, or loaded from numba's on-disk cache, on the first call for a
    dtype (see :class:`fastlstm._kernels._entries.EntryTable`).
    """
    return _ENTRIES.addresses(dtype)[0]


def entries_cached():
    """Whether numba's on-disk cache holds both entries (compiles nothing)."""
    return _ENTRIES.cached()
