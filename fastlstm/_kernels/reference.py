"""Plain NumPy reference for the LSTM kernels (float64, readable, slow).

It is the oracle every backend is tested against, and it is itself tested
against central finite differences. It shares no code with the fast kernels:
it unpacks the packed batch and runs each sequence on its own, one step at a
time, with the textbook equations

    i = sigmoid(W_i x + R_i h + b_i)      f = sigmoid(W_f x + R_f h + b_f)
    g = tanh(W_g x + R_g h + b_g)         o = sigmoid(W_o x + R_o h + b_o)
    c' = f * c + i * g                    h' = o * tanh(c')

``forward`` and ``backward`` have the same signature as the numba kernels in
``numba_lstm.py`` so that the network code can run on either. The saved
buffers written by ``forward`` have the same meaning too, but ``backward``
recomputes what it needs from the inputs instead of trusting them.
"""

import numpy as np


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def packed_rows(batch_sizes, j):
    """Row indices of sequence ``j``'s steps in a packed batch.

    Parameters
    ----------
    batch_sizes : ndarray of shape (T,)
        Active rows at each step.
    j : int
        Position of the sequence in the length-sorted batch.

    Returns
    -------
    rows : ndarray of int
        ``rows[t]`` is the packed row of the sequence's step t.
    """
    offsets = np.concatenate([[0], np.cumsum(batch_sizes)])
    length = int(np.sum(np.asarray(batch_sizes) > j))
    return offsets[:length] + j


def sequence_forward(x, W, R, bias, h0, c0):
    """Run an LSTM over one sequence.

    Parameters
    ----------
    x : ndarray of shape (T, I)
    W : ndarray of shape (4H, I)
    R : ndarray of shape (4H, H)
    bias : ndarray of shape (4H,)
    h0, c0 : ndarray of shape (H,)

    Returns
    -------
    hs, cs : ndarray of shape (T, H)
        Hidden and cell states after every step.
    acts : ndarray of shape (T, 4H)
        Activated gates i, f, g, o.
    """
    hidden = R.shape[1]
    h, c = h0, c0
    hs, cs, acts = [], [], []
    for x_t in x:
        z = W @ x_t + R @ h + bias
        i = _sigmoid(z[:hidden])
        f = _sigmoid(z[hidden:2 * hidden])
        g = np.tanh(z[2 * hidden:3 * hidden])
        o = _sigmoid(z[3 * hidden:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
        acts.append(np.concatenate([i, f, g, o]))
    return np.array(hs), np.array(cs), np.array(acts)


def sequence_backward(x, W, R, bias, h0, c0, dhs, dh_last, dc_last):
    """Backpropagation through time for one sequence.

    Parameters
    ----------
    x, W, R, bias, h0, c0
        As for :func:`sequence_forward`.
    dhs : ndarray of shape (T, H)
        Gradient of the loss with respect to every hidden state.
    dh_last, dc_last : ndarray of shape (H,)
        Gradient with respect to the final hidden and cell state.

    Returns
    -------
    dx, dW, dR, dbias, dh0, dc0
        Gradients with respect to each input.
    """
    hidden = R.shape[1]
    hs, cs, acts = sequence_forward(x, W, R, bias, h0, c0)
    h_prev = np.vstack([h0[None], hs[:-1]])
    c_prev = np.vstack([c0[None], cs[:-1]])
    dx = np.zeros_like(x)
    dW, dR, dbias = np.zeros_like(W), np.zeros_like(R), np.zeros_like(bias)
    dh_next, dc_next = dh_last.copy(), dc_last.copy()
    for t in reversed(range(len(x))):
        i, f, g, o = np.split(acts[t], 4)
        dh = dhs[t] + dh_next
        tanh_c = np.tanh(cs[t])
        dc = dc_next + dh * o * (1 - tanh_c**2)
        dz = np.concatenate([
            dc * g * i * (1 - i),
            dc * c_prev[t] * f * (1 - f),
            dc * i * (1 - g**2),
            dh * tanh_c * o * (1 - o),
        ])
        dx[t] = W.T @ dz
        dW += np.outer(dz, x[t])
        dR += np.outer(dz, h_prev[t])
        dbias += dz
        dh_next = R.T @ dz
        dc_next = dc * f
    return dx, dW, dR, dbias, dh_next, dc_next


def forward(
    X, batch_sizes, W, R, bias, h0, c0, reverse,
    H, Hprev, Cprev, TC, gates, h_n, c_n, work,
):
    """Reference twin of :func:`fastlstm._kernels.numba_lstm.lstm_forward`.

    ``work`` is unused: the reference allocates freely.
    """
    for j in range(h0.shape[0]):
        rows = packed_rows(batch_sizes, j)
        if reverse:
            rows = rows[::-1]
        hs, cs, acts = sequence_forward(X[rows], W, R, bias, h0[j], c0[j])
        H[rows] = hs
        Hprev[rows] = np.vstack([h0[j][None], hs[:-1]])
        Cprev[rows] = np.vstack([c0[j][None], cs[:-1]])
        TC[rows] = np.tanh(cs)
        gates[rows] = acts
        h_n[j] = hs[-1]
        c_n[j] = cs[-1]


def backward(
    X, batch_sizes, W, R, bias, h0, c0, reverse,
    Hprev, Cprev, TC, gates, dH, dh_n, dc_n,
    dX, dW, dR, dbias, dh0, dc0, dG,
):
    """Reference twin of :func:`fastlstm._kernels.numba_lstm.lstm_backward`.

    It recomputes the forward pass from ``X``, the weights and the initial
    states, so ``Hprev``, ``Cprev``, ``TC``, ``gates`` and ``dG`` are unused.
    """
    dW[:] = 0
    dR[:] = 0
    dbias[:] = 0
    for j in range(h0.shape[0]):
        rows = packed_rows(batch_sizes, j)
        if reverse:
            rows = rows[::-1]
        dx, dWj, dRj, dbj, dh0[j], dc0[j] = sequence_backward(
            X[rows], W, R, bias, h0[j], c0[j], dH[rows], dh_n[j], dc_n[j]
        )
        dX[rows] = dx
        dW += dWj
        dR += dRj
        dbias += dbj
