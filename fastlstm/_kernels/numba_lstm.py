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

Speed (see ``../shared/research/FAST_KERNELS.md``): the input projection is one
GEMM over all steps, each step does one GEMM on its active rows only and one
fused loop for the gate arithmetic, and the backward pass does only the
pointwise part and ``dh = dG R`` per step, leaving dW, dR and dX to three
whole-batch GEMMs after the loop.

Every array, outputs and workspaces included, is allocated by the caller.
"""

import numpy as np
from numba import njit

from ._activations import act_sigmoid, act_tanh

# fastmath lets LLVM vectorise the gate loops; error_model="numpy" removes the
# division-by-zero checks that would otherwise block SIMD in act_tanh. Both
# kernels are serial (no parallel=True), so their compiled code can be cached
# on disk safely.
_JIT = dict(nogil=True, fastmath=True, error_model="numpy", cache=True)


@njit(**_JIT)
def lstm_forward(
    X, batch_sizes, W, R, bias, h0, c0, reverse,
    H, Hprev, Cprev, TC, gates, h_n, c_n, work,
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
    R : ndarray of shape (4H, H)
        IN. Recurrent weights.
    bias : ndarray of shape (4H,)
        IN. Sum of the input and recurrent biases.
    h0, c0 : ndarray of shape (B, H)
        IN. Initial states.
    reverse : bool
        IN. Walk the sequences from their ends to their starts.
    H : ndarray of shape (N, H)
        OUT. Hidden state after every step (the layer's output).
    Hprev, Cprev : ndarray of shape (N, H)
        OUT. Hidden and cell state entering every step (kept for backward).
    TC : ndarray of shape (N, H)
        OUT. tanh of the cell state after every step (kept for backward).
    gates : ndarray of shape (N, 4H)
        OUT. Activated gates i, f, g, o of every step (kept for backward).
    h_n, c_n : ndarray of shape (B, H)
        OUT. Each sequence's final state: after its last step, or after its
        first step when ``reverse``.
    work : ndarray of shape (B, 4H)
        Workspace for the recurrent GEMM.
    """
    n_steps = batch_sizes.shape[0]
    hidden = R.shape[1]
    n_rows = X.shape[0]
    # Hoisted input projection: one GEMM for every step of every sequence.
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
        np.dot(h_n[:n_active], R.T, work[:n_active])
        for r in range(n_active):
            row = offset + r
            g_row = gates[row]
            w_row = work[r]
            h_state = h_n[r]
            c_state = c_n[r]
            h_prev_row = Hprev[row]
            c_prev_row = Cprev[row]
            h_row = H[row]
            tc_row = TC[row]
            # One fused pass: bias, activations, cell and hidden update, and
            # everything backward needs, with no temporaries.
            for k in range(hidden):
                i_gate = act_sigmoid(g_row[k] + w_row[k] + bias[k])
                f_gate = act_sigmoid(
                    g_row[hidden + k] + w_row[hidden + k] + bias[hidden + k]
                )
                g_gate = act_tanh(
                    g_row[2 * hidden + k] + w_row[2 * hidden + k] + bias[2 * hidden + k]
                )
                o_gate = act_sigmoid(
                    g_row[3 * hidden + k] + w_row[3 * hidden + k] + bias[3 * hidden + k]
                )
                c_prev = c_state[k]
                c_new = f_gate * c_prev + i_gate * g_gate
                tanh_c = act_tanh(c_new)
                h_new = o_gate * tanh_c
                h_prev_row[k] = h_state[k]
                c_prev_row[k] = c_prev
                g_row[k] = i_gate
                g_row[hidden + k] = f_gate
                g_row[2 * hidden + k] = g_gate
                g_row[3 * hidden + k] = o_gate
                tc_row[k] = tanh_c
                c_state[k] = c_new
                h_state[k] = h_new
                h_row[k] = h_new
        if not reverse:
            offset += n_active


@njit(**_JIT)
def lstm_backward(
    X, batch_sizes, W, R, bias, h0, c0, reverse,
    Hprev, Cprev, TC, gates, dH, dh_n, dc_n,
    dX, dW, dR, dbias, dh0, dc0, dG,
):
    """Backpropagate through one LSTM direction over a packed batch.

    Parameters
    ----------
    X, batch_sizes, W, R, reverse
        IN. As given to :func:`lstm_forward`.
    bias, h0, c0
        Unused: the saved buffers already hold what they determine. They are
        part of the signature so that every backend has the same interface.
    Hprev, Cprev, TC, gates
        IN. As written by :func:`lstm_forward`.
    dH : ndarray of shape (N, H)
        IN. Gradient of the loss with respect to ``H``.
    dh_n, dc_n : ndarray of shape (B, H)
        IN. Gradient with respect to the final states.
    dX : ndarray of shape (N, I)
        OUT. Gradient with respect to ``X``.
    dW, dR, dbias
        OUT. Gradients with respect to ``W``, ``R`` and ``bias``.
    dh0, dc0 : ndarray of shape (B, H)
        OUT. Gradients with respect to the initial states.
    dG : ndarray of shape (N, 4H)
        Workspace: gradients with respect to the gate pre-activations.
    """
    n_steps = batch_sizes.shape[0]
    hidden = R.shape[1]
    n_rows = X.shape[0]
    # dh0/dc0 carry the running state gradient; a row keeps dh_n/dc_n until
    # the backward walk reaches the step where that row's final state was made.
    dh0[:] = dh_n
    dc0[:] = dc_n
    offset = n_rows if not reverse else 0
    for step in range(n_steps):
        t = step if reverse else n_steps - 1 - step
        n_active = batch_sizes[t]
        if not reverse:
            offset -= n_active
        for r in range(n_active):
            row = offset + r
            g_row = gates[row]
            dg_row = dG[row]
            dh_out = dH[row]
            tc_row = TC[row]
            c_prev_row = Cprev[row]
            dh_state = dh0[r]
            dc_state = dc0[r]
            for k in range(hidden):
                i_gate = g_row[k]
                f_gate = g_row[hidden + k]
                g_gate = g_row[2 * hidden + k]
                o_gate = g_row[3 * hidden + k]
                tanh_c = tc_row[k]
                dh = dh_state[k] + dh_out[k]
                dc = dc_state[k] + dh * o_gate * (1 - tanh_c * tanh_c)
                dc_state[k] = dc * f_gate
                dg_row[k] = dc * g_gate * i_gate * (1 - i_gate)
                dg_row[hidden + k] = dc * c_prev_row[k] * f_gate * (1 - f_gate)
                dg_row[2 * hidden + k] = dc * i_gate * (1 - g_gate * g_gate)
                dg_row[3 * hidden + k] = dh * tanh_c * o_gate * (1 - o_gate)
        # Only the recurrent part of dh is needed inside the loop.
        np.dot(dG[offset:offset + n_active], R, dh0[:n_active])
        if reverse:
            offset += n_active
    # Whole-batch GEMMs instead of one small GEMM per step.
    np.dot(dG.T, X, dW)
    np.dot(dG.T, Hprev, dR)
    np.dot(dG, W, dX)
    dbias[:] = 0
    for row in range(n_rows):
        dg_row = dG[row]
        for k in range(4 * hidden):
            dbias[k] += dg_row[k]
