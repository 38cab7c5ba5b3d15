"""Plain NumPy reference for the LSTM kernels (float64, readable, slow).

It is the oracle every backend is tested against, and it is itself tested
against central finite differences. It shares no code with the fast kernels:
it unpacks the packed batch and runs each sequence on its own, one step at a
time, with the textbook equations

    i = gate(W_i x + R_i h + b_i)         f = gate(W_f x + R_f h + b_f)
    g = state(W_g x + R_g h + b_g)        o = gate(W_o x + R_o h + b_o)
    c' = f * c + i * g                    h' = W_proj (o * state(c'))

where gate is the sigmoid or the hard sigmoid clip(0.2 x + 0.5, 0, 1), state
is tanh or softsign x / (1 + |x|), and W_proj is the identity when the layer
has no projection.

``forward`` and ``backward`` have the same signature as the numba kernels in
``numba_lstm.py`` so that the network code can run on either. The saved
buffers written by ``forward`` have the same meaning too, but ``backward``
recomputes what it needs from the inputs instead of trusting them.
"""

import numpy as np


SIGMOID, HARD_SIGMOID = 0, 1
TANH, SOFTSIGN = 0, 1


def _gate(x, kind):
    if kind == HARD_SIGMOID:
        return np.clip(0.2 * x + 0.5, 0.0, 1.0)
    return 1.0 / (1.0 + np.exp(-x))


def _gate_grad(x, kind):
    """Derivative at the pre-activation x."""
    if kind == HARD_SIGMOID:
        return np.where(np.abs(x) < 2.5, 0.2, 0.0)
    s = 1.0 / (1.0 + np.exp(-x))
    return s * (1.0 - s)


def _state(x, kind):
    if kind == SOFTSIGN:
        return x / (1.0 + np.abs(x))
    return np.tanh(x)


def _state_grad(x, kind):
    if kind == SOFTSIGN:
        return 1.0 / (1.0 + np.abs(x)) ** 2
    return 1.0 - np.tanh(x) ** 2


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


def sequence_forward(x, W, R, bias, W_proj, h0, c0, gate_kind, state_kind):
    """Run an LSTM over one sequence.

    Parameters
    ----------
    x : ndarray of shape (T, I)
    W : ndarray of shape (4H, I)
    R : ndarray of shape (4H, P)
    bias : ndarray of shape (4H,)
    W_proj : ndarray of shape (P, H), or with 0 rows for no projection
    h0 : ndarray of shape (P,)
    c0 : ndarray of shape (H,)
    gate_kind, state_kind : int

    Returns
    -------
    hs : ndarray of shape (T, P)
        Hidden states after every step.
    cs : ndarray of shape (T, H)
        Cell states after every step.
    zs : ndarray of shape (T, 4H)
        Gate pre-activations.
    """
    hidden = c0.shape[0]
    h, c = h0, c0
    hs, cs, zs = [], [], []
    for x_t in x:
        z = W @ x_t + R @ h + bias
        i = _gate(z[:hidden], gate_kind)
        f = _gate(z[hidden:2 * hidden], gate_kind)
        g = _state(z[2 * hidden:3 * hidden], state_kind)
        o = _gate(z[3 * hidden:], gate_kind)
        c = f * c + i * g
        h = o * _state(c, state_kind)
        if W_proj.shape[0]:
            h = W_proj @ h
        hs.append(h)
        cs.append(c)
        zs.append(z)
    return np.array(hs), np.array(cs), np.array(zs)


def sequence_backward(x, W, R, bias, W_proj, h0, c0, gate_kind, state_kind,
                      dhs, dh_last, dc_last):
    """Backpropagation through time for one sequence.

    Parameters
    ----------
    x, W, R, bias, W_proj, h0, c0, gate_kind, state_kind
        As for :func:`sequence_forward`.
    dhs : ndarray of shape (T, P)
        Gradient of the loss with respect to every hidden state.
    dh_last : ndarray of shape (P,)
        Gradient with respect to the final hidden state.
    dc_last : ndarray of shape (H,)
        Gradient with respect to the final cell state.

    Returns
    -------
    dx, dW, dR, dbias, dW_proj, dh0, dc0
        Gradients with respect to each input.
    """
    hs, cs, zs = sequence_forward(x, W, R, bias, W_proj, h0, c0, gate_kind, state_kind)
    h_prev = np.vstack([h0[None], hs[:-1]])
    c_prev = np.vstack([c0[None], cs[:-1]])
    dx = np.zeros_like(x)
    dW, dR, dbias = np.zeros_like(W), np.zeros_like(R), np.zeros_like(bias)
    dW_proj = np.zeros_like(W_proj)
    dh_next, dc_next = dh_last.copy(), dc_last.copy()
    for t in reversed(range(len(x))):
        z_i, z_f, z_g, z_o = np.split(zs[t], 4)
        i, f = _gate(z_i, gate_kind), _gate(z_f, gate_kind)
        g, o = _state(z_g, state_kind), _gate(z_o, gate_kind)
        dh = dhs[t] + dh_next
        state_c = _state(cs[t], state_kind)
        if W_proj.shape[0]:
            dW_proj += np.outer(dh, o * state_c)
            dh = W_proj.T @ dh  # gradient of the unprojected hidden state
        dc = dc_next + dh * o * _state_grad(cs[t], state_kind)
        dz = np.concatenate([
            dc * g * _gate_grad(z_i, gate_kind),
            dc * c_prev[t] * _gate_grad(z_f, gate_kind),
            dc * i * _state_grad(z_g, state_kind),
            dh * state_c * _gate_grad(z_o, gate_kind),
        ])
        dx[t] = W.T @ dz
        dW += np.outer(dz, x[t])
        dR += np.outer(dz, h_prev[t])
        dbias += dz
        dh_next = R.T @ dz
        dc_next = dc * f
    return dx, dW, dR, dbias, dW_proj, dh_next, dc_next


def forward(
    X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
    H, Hprev, Cprev, TC, gates, M, h_n, c_n, work,
):
    """Reference twin of :func:`fastlstm._kernels.numba_lstm.lstm_forward`.

    Only ``H``, ``h_n`` and ``c_n`` are written: the saved buffers and
    workspaces are the fast kernels' business, and the reference backward
    recomputes what it needs.
    """
    for j in range(h0.shape[0]):
        rows = packed_rows(batch_sizes, j)
        if reverse:
            rows = rows[::-1]
        hs, cs, _ = sequence_forward(X[rows], W, R, bias, W_proj, h0[j], c0[j],
                                     gate_kind, state_kind)
        H[rows] = hs
        h_n[j] = hs[-1]
        c_n[j] = cs[-1]


def backward(
    X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
    Hprev, Cprev, TC, gates, M, dH, dh_n, dc_n,
    dX, dW, dR, dbias, dW_proj, dh0, dc0, dG, dH_total, dM,
):
    """Reference twin of :func:`fastlstm._kernels.numba_lstm.lstm_backward`.

    It recomputes the forward pass from ``X``, the weights and the initial
    states, so the saved buffers and workspaces are unused.
    """
    dW[:] = 0
    dR[:] = 0
    dbias[:] = 0
    dW_proj[:] = 0
    for j in range(h0.shape[0]):
        rows = packed_rows(batch_sizes, j)
        if reverse:
            rows = rows[::-1]
        dx, dWj, dRj, dbj, dWpj, dh0[j], dc0[j] = sequence_backward(
            X[rows], W, R, bias, W_proj, h0[j], c0[j], gate_kind, state_kind,
            dH[rows], dh_n[j], dc_n[j],
        )
        if dX.shape[0] > 0:
            dX[rows] = dx
        dW += dWj
        dR += dRj
        dbias += dbj
        dW_proj += dWpj
