"""numba kernel: a whole unidirectional network, step by step, for streaming.

``predict_and_update_state`` on a few new steps (one, in the typical
streaming loop) is dominated by fixed costs on the general path: packing a
batch, one BLAS call per step and layer, the thread pool, the head. This
kernel does a whole call in one compiled function instead: input
normalisation, every layer's cell step, the projection and the output
layer, for each sequence and step, with the running states updated in place.

Weights come pre-transposed in one flat buffer (see
:func:`fastlstm._streaming.pack_stream_weights`): each layer's input and
recurrent weights as (n_in, 4H) and (P, 4H): row-contiguous, as fastlstm's
own float32 GEMM reads them; otherwise (float64, no AVX2) a gate vector
is a sum of rows scaled by the input (``axpy``), which vectorises along the
4H gates with no reduction. ``layout`` holds the offsets.

The arithmetic follows ``numba_lstm.lstm_forward``: gate pre-activation =
input part + (recurrent part + bias), the same activation functions and
the same cell update, so predictions agree with the general path to
rounding (summation order of the matrix-vector products).
"""

import numpy as np
from numba import njit

from ._activations import gate_activation, state_activation
from .numba_lstm import _own_gemm

_JIT = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)

# Columns of ``layout``, one row per layer; the head's offsets are in the
# row after the last layer (columns IN_WEIGHTS and BIAS).
IN_WEIGHTS, REC_WEIGHTS, BIAS, PROJ_WEIGHTS = 0, 1, 2, 3
LAYOUT_COLUMNS = 4


@njit(**_JIT)
def _matvec_add(params, offset, n_in, width, vector, acc):
    """acc[:width] += vector[:n_in] @ params[offset:].reshape(n_in, width)."""
    matrix = params[offset:offset + n_in * width].reshape((n_in, width))
    # In float32, fastlstm's own GEMM where it runs: its one-row tiles keep
    # eight independent sums in registers, where the loop below reloads and
    # stores acc for every k (128 x 512: 2.0 against 2.5 us; a whole W4 step
    # 3.4 against 5.1 us, measured in one process).
    if _own_gemm(vector[:n_in].reshape((1, n_in)), matrix, acc[:width].reshape((1, width)),
                 True):
        return
    # Row views rather than params[offset + k * width + j]: numba's indexing
    # with a computed index checks for negative wraparound, which keeps
    # LLVM from vectorising (10x slower here).
    for k in range(n_in):
        value = vector[k]
        row = matrix[k]
        for j in range(width):
            acc[j] += row[j] * value


# Without fastmath, and called on its own (not from stream_forward): fastmath
# assumes no NaN and no infinity, which folds this check to True, even when
# inlined into a fastmath function.
@njit(nogil=True, cache=True)
def all_finite(X):
    """Whether every value of the 3-D array X is finite."""
    for i in range(X.shape[0]):
        for t in range(X.shape[1]):
            for k in range(X.shape[2]):
                if not np.isfinite(X[i, t, k]):
                    return False
    return True


@njit(**_JIT)
def stream_forward(X, affine, params, layout, sizes, h, c, out, work, per_step,
                   gate_kind, state_kind):
    """Run the network over new steps of each sequence, from and into ``h``/``c``.

    Parameters
    ----------
    X : ndarray of shape (B, T, I)
        IN. T new steps of each of B sequences (model dtype).
    affine : ndarray of shape (3, I), float64, or (0, I)
        IN. Input normalisation ``(x - affine[0]) / affine[1] + affine[2]``,
        computed in float64 as :class:`fastlstm.SequenceScaler` does; no
        normalisation with 0 rows.
    params : ndarray of shape (n,)
        IN. Pre-transposed weights (see the module docstring).
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
    work : ndarray of shape (8H + max(I, P) + H,)
        Workspace.
    per_step : bool
    gate_kind, state_kind : int

    X must be finite (see :func:`all_finite`).
    """
    hidden, state, n_outputs, n_layers = sizes[0], sizes[1], sizes[2], sizes[3]
    n_inputs = X.shape[2]
    width = 4 * hidden
    n_in_max = max(n_inputs, state)
    gates = work[:width]
    input_part = work[width:2 * width]
    layer_in = work[2 * width:2 * width + n_in_max]
    m = work[2 * width + n_in_max:2 * width + n_in_max + hidden]
    normalise = affine.shape[0] == 3
    head = layout[n_layers]
    for b in range(X.shape[0]):
        for t in range(X.shape[1]):
            for k in range(n_inputs):
                if normalise:
                    value = (np.float64(X[b, t, k]) - affine[0, k]) / affine[1, k] + affine[2, k]
                    layer_in[k] = value
                else:
                    layer_in[k] = X[b, t, k]
            n_in = n_inputs
            for layer in range(n_layers):
                offsets = layout[layer]
                h_row = h[layer, b]
                c_row = c[layer, b]
                gates[:] = 0
                input_part[:] = 0
                _matvec_add(params, offsets[REC_WEIGHTS], state, width, h_row, gates)
                _matvec_add(params, offsets[IN_WEIGHTS], n_in, width, layer_in, input_part)
                bias = params[offsets[BIAS]:offsets[BIAS] + width]
                # input + (recurrent + bias), the general kernel's order.
                for j in range(width):
                    gates[j] = input_part[j] + (gates[j] + bias[j])
                # Views from 0, as in numba_lstm, so that the loops vectorise.
                i_gate, f_gate = gates[:hidden], gates[hidden:2 * hidden]
                g_gate, o_gate = gates[2 * hidden:3 * hidden], gates[3 * hidden:width]
                for j in range(hidden):
                    i_gate[j] = gate_activation(i_gate[j], gate_kind)
                for j in range(hidden):
                    f_gate[j] = gate_activation(f_gate[j], gate_kind)
                for j in range(hidden):
                    g_gate[j] = state_activation(g_gate[j], state_kind)
                for j in range(hidden):
                    o_gate[j] = gate_activation(o_gate[j], gate_kind)
                for j in range(hidden):
                    c_new = f_gate[j] * c_row[j] + i_gate[j] * g_gate[j]
                    c_row[j] = c_new
                    m[j] = o_gate[j] * state_activation(c_new, state_kind)
                if offsets[PROJ_WEIGHTS] >= 0:
                    h_row[:] = 0
                    _matvec_add(params, offsets[PROJ_WEIGHTS], hidden, state, m, h_row)
                else:
                    h_row[:] = m
                layer_in[:state] = h_row
                n_in = state
            if per_step or t == X.shape[1] - 1:
                row = out[b, t if per_step else 0]
                row[:] = 0
                _matvec_add(params, head[IN_WEIGHTS], state, n_outputs, layer_in, row)
                head_bias = params[head[BIAS]:head[BIAS] + n_outputs]
                for j in range(n_outputs):
                    row[j] += head_bias[j]
