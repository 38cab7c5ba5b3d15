"""numba.cuda kernels: one direction of one LSTM layer over a packed batch, on a GPU.

The layout and the meaning of every argument are those of
:mod:`fastlstm._kernels.numba_lstm` (read its docstrings): a length-sorted
batch packed time-major, the active rows of step t being the prefix of
``batch_sizes[t]`` rows, weights in ``torch.nn.LSTM``'s layout (gates i, f, g,
o), an optional projection (``W_proj`` with 0 rows means none), ``reverse``,
the activation codes ``gate_kind`` (0 sigmoid, 1 hard sigmoid) and
``state_kind`` (0 tanh, 1 softsign), and outputs and workspaces allocated by
the caller. :func:`forward` and :func:`backward` have exactly the signatures of
``lstm_forward`` and ``lstm_backward``.

What runs where
---------------
Everything arithmetic runs on the GPU; the host only walks the steps (it reads
``batch_sizes``, a short list of ints) and launches kernels on the default
stream:

- ``gemm``: a tiled shared-memory GEMM, ``C[c_off:c_off+m] (+)= op(A)[a_off:a_off+m] op(B)``
  with either operand transposed. It does the hoisted input projection
  ``X W^T`` over all packed rows at once, the recurrent ``h[:n] R^T`` of each
  step on the active rows only (accumulated into the gate buffer), the
  projection ``M W_proj^T``, the per-step ``dh = dG R`` (and ``dM = dH W_proj``),
  and after the backward loop the whole-batch ``dW = dG^T X``,
  ``dR = dG^T Hprev``, ``dX = dG W`` and ``dW_proj = dH_total^T M``.
- ``gates_forward``: one thread per (active row, hidden unit) of a step: bias,
  activations, cell and hidden update, and the saved ``Hprev``, ``Cprev``,
  ``TC``, ``gates`` and ``M``. Padding rows do not exist, so no thread works on
  one.
- ``gates_backward``: the pointwise part of one backward step, writing ``dG``
  and the running ``dc``.
- ``column_sum``: ``dbias``, a deterministic column sum of ``dG``.
- ``copy_rows`` and ``add_rows``: row-block copies of the running states.

The device code uses exact ``math.exp``/``math.tanh`` in both float32 and
float64, and every reduction runs in a fixed order, so a call is reproducible.

Shared memory is dynamic (``cuda.shared.array(0, ...)``, its size given at
launch by :func:`launch_gemm` and :func:`launch_column_sum`), never a static
``cuda.shared.array(shape, ...)``. On a GPU the two are the same memory. In
numba's CUDA simulator a static shared array is made lazily by whichever
simulated thread of the block reaches it first, with an unlocked
look-up-then-create keyed by source line: when the GIL passes to another
thread between the look-up and the store (more likely on a loaded machine),
two threads of one block get different arrays, and a reader sees ``np.empty``
garbage where the other thread's writes went. That made simulator results
vary from run to run. The dynamic buffer is made once, before any thread of
the launch starts, so every thread sees the same memory.

Host or device arrays
---------------------
Every array argument may be a NumPy array or a numba device array (anything
``numba.cuda.is_cuda_array`` accepts). A NumPy input is copied to the GPU once
per call and a NumPy output copied back once at the end of the call; device
arrays are used in place, with no copy, and the call then returns without
waiting for the GPU (the kernels are queued on the default stream). Workspaces
given as NumPy arrays are replaced by device scratch arrays and not copied
back; ``work`` is not used at all (the recurrent GEMM accumulates straight
into ``gates``).

Scope
-----
This is the kernel level: with NumPy arrays, as the network and the host
trainer pass them, every call pays host-device copies of its inputs, saved
buffers and gradients. A fit with backend="cuda" trains in
:class:`fastlstm._cuda_training.DeviceTrainer` instead wherever it supports
the options, passing device arrays that stay on the GPU for the whole fit;
prediction goes through the network with NumPy arrays.

Without a usable GPU (no driver, no device, and not the numba CUDA simulator
``NUMBA_ENABLE_CUDASIM=1``) this module still imports; calling :func:`forward`
or :func:`backward` raises a ``RuntimeError`` that says why.
"""

import contextlib
import math
import threading
import warnings
from functools import cache

import numpy as np

try:
    import numba
    from numba import cuda
except Exception as error:  # noqa: BLE001 - a numba without a usable CUDA target
    numba = cuda = None
    _IMPORT_ERROR = error
else:
    _IMPORT_ERROR = None

SIGMOID, HARD_SIGMOID = 0, 1
TANH, SOFTSIGN = 0, 1

# numba warns at every launch of fewer than 128 blocks. A step's kernels cover
# only its active rows, so small grids are expected here, not a mistake.
warnings.filterwarnings(
    "ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")


def _simulated():
    """Whether numba.cuda is the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(numba is not None and getattr(numba.config, "ENABLE_CUDASIM", False))


# Launch geometry. The simulator runs one Python thread per GPU thread, so it
# gets small blocks; the kernels are the same code for any sizes.
if _simulated():
    GEMM_TILE, POINTWISE_THREADS, SUM_COLUMNS, SUM_ROWS = 4, 16, 4, 2
else:
    GEMM_TILE, POINTWISE_THREADS, SUM_COLUMNS, SUM_ROWS = 16, 128, 32, 8

_available = False
# The simulator runs one kernel at a time in the whole process; calls from the
# network's worker threads take turns there. A real GPU needs no such lock.
# Reentrant, so that a caller holding it (simulator_turn) can call forward and
# backward, which take it too.
_SIMULATOR_LOCK = threading.RLock() if _simulated() else None


def simulator_turn():
    """A context in which this thread's kernel launches do not interleave with
    another thread's in numba's CUDA simulator; it does nothing on a GPU.

    The simulator swaps ``cuda`` in the kernel module's globals for the
    length of each launch and supports one launch at a time per process, so
    code that launches its own kernels while other threads may launch too
    (the device training loop, say) holds this around them.
    """
    return _SIMULATOR_LOCK if _SIMULATOR_LOCK is not None else contextlib.nullcontext()


def _require_cuda():
    """Raise a RuntimeError unless numba.cuda can run kernels here."""
    global _available
    if _available:
        return
    if cuda is None:
        raise RuntimeError(
            "backend='cuda' needs numba's CUDA target, which did not import "
            f"({_IMPORT_ERROR}); install it with `pip install fastlstm[cuda]`."
        )
    try:
        available, reason = cuda.is_available(), None
    except Exception as error:  # noqa: BLE001 - any driver failure is the reason
        available, reason = False, error
    if not available:
        if reason is None:
            try:
                reason = cuda.cuda_error()
            except Exception as error:  # noqa: BLE001
                reason = error
        reason = " ".join(str(reason or "").split()).rstrip(".: ")
        if not reason:
            reason = ("no CUDA driver and device, or no libNVVM (the CUDA compiler, "
                      "from `pip install fastlstm[cuda]` or a CUDA toolkit), was found")
        raise RuntimeError(
            "backend='cuda' needs an NVIDIA GPU with a working CUDA driver "
            f"(numba.cuda.is_available() is False): {reason}. Use backend='numba' "
            "or 'cython' on the CPU, or set NUMBA_ENABLE_CUDASIM=1 before importing "
            "numba to run the kernels in numba's (slow) CUDA simulator."
        )
    _available = True


@cache
def kernels(dtype_name, tile=None):
    """The compiled-on-demand kernels for one float dtype.

    Parameters
    ----------
    dtype_name : {"float32", "float64"}
    tile : int, default=None
        Side of the GEMM's square thread block and shared-memory tiles;
        None means :data:`GEMM_TILE`.

    Returns
    -------
    kernels : types.SimpleNamespace
        ``gemm``, ``gates_forward``, ``gates_backward``, ``column_sum``,
        ``copy_rows``, ``add_rows``, ``tile``, and the dynamic shared memory
        the GEMM and the column sum need per block, ``gemm_shared_bytes`` and
        ``column_sum_shared_bytes`` (launch them with :func:`launch_gemm` and
        :func:`launch_column_sum`).
    """
    from types import SimpleNamespace

    _require_cuda()
    tile = GEMM_TILE if tile is None else int(tile)
    pad = tile + 1  # a padded row keeps the transposed tile stores off one bank
    sum_rows, sum_columns = SUM_ROWS, SUM_COLUMNS
    scalar = np.dtype(dtype_name).type
    element = numba.from_dtype(np.dtype(dtype_name))
    # Constants typed like the data, so that float32 arithmetic stays float32.
    zero, one, half, slope = scalar(0.0), scalar(1.0), scalar(0.5), scalar(0.2)

    @cuda.jit(device=True)
    def gate_activation(x, kind):
        if kind == HARD_SIGMOID:
            return min(max(slope * x + half, zero), one)
        if x >= zero:  # exp of a non-positive number: no overflow either way
            return one / (one + math.exp(-x))
        e = math.exp(x)
        return e / (one + e)

    @cuda.jit(device=True)
    def gate_derivative(y, kind):
        if kind == HARD_SIGMOID:
            return slope if zero < y < one else zero
        return y * (one - y)

    @cuda.jit(device=True)
    def state_activation(x, kind):
        if kind == SOFTSIGN:
            return x / (one + abs(x))
        return math.tanh(x)

    @cuda.jit(device=True)
    def state_derivative(y, kind):
        if kind == SOFTSIGN:
            return (one - abs(y)) * (one - abs(y))
        return one - y * y

    @cuda.jit
    def gemm(A, B, C, m, n, k, a_off, c_off, trans_a, trans_b, accumulate):
        """C[c_off + i, j] (+)= sum_p op(A)[a_off + i, p] op(B)[p, j], i < m, j < n.

        op(A) is A (rows of A offset by a_off) or, with trans_a, A^T (columns
        offset). op(B) is B (k, n) or, with trans_b, B^T for B (n, k). A block
        of tile x tile threads computes one tile of C; thread x runs along
        the columns of C so that its reads and writes of C coalesce, and the
        transposed loads swap roles so that global reads stay coalesced too.

        Both tiles live in one dynamic shared array (see the module
        docstring): a_tile[i, p] at tiles[i * pad + p] and b_tile[p, j] at
        tiles[b_base + p * pad + j].
        """
        tiles = cuda.shared.array(0, element)
        b_base = tile * pad
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        i0 = cuda.blockIdx.x * tile
        j0 = cuda.blockIdx.y * tile
        acc = zero
        for p0 in range(0, k, tile):
            value = zero
            if trans_a:
                if p0 + ty < k and i0 + tx < m:
                    value = A[p0 + ty, a_off + i0 + tx]
                tiles[tx * pad + ty] = value
            else:
                if i0 + ty < m and p0 + tx < k:
                    value = A[a_off + i0 + ty, p0 + tx]
                tiles[ty * pad + tx] = value
            value = zero
            if trans_b:
                if j0 + ty < n and p0 + tx < k:
                    value = B[j0 + ty, p0 + tx]
                tiles[b_base + tx * pad + ty] = value
            else:
                if p0 + ty < k and j0 + tx < n:
                    value = B[p0 + ty, j0 + tx]
                tiles[b_base + ty * pad + tx] = value
            cuda.syncthreads()
            for q in range(tile):
                acc += tiles[ty * pad + q] * tiles[b_base + q * pad + tx]
            cuda.syncthreads()
        i = i0 + ty
        j = j0 + tx
        if i < m and j < n:
            if accumulate:
                C[c_off + i, j] += acc
            else:
                C[c_off + i, j] = acc

    @cuda.jit
    def gates_forward(gates, bias, h_state, c_state, Hprev, Cprev, TC, M, offset,
                      n_active, hidden, state, project, gate_kind, state_kind, keep):
        """One step's pointwise work: thread (r, k) for active row r, unit k.

        ``gates[offset + r]`` holds the input and recurrent parts of the gate
        pre-activations on entry and the activated gates on exit. ``M`` is
        the projection's input, or ``H`` itself without projection, when the
        running hidden state ``h_state`` is updated here as well. Without
        ``keep``, ``Hprev``, ``Cprev`` and ``TC`` are not written.
        """
        index = cuda.grid(1)
        if index >= n_active * hidden:
            return
        r = index // hidden
        k = index - r * hidden
        row = offset + r
        # Each thread saves its own columns of the entering hidden state;
        # without projection (state == hidden) that is column k alone, which
        # this same thread overwrites below.
        c = c_state[r, k]
        if keep:
            for j in range(k, state, hidden):
                Hprev[row, j] = h_state[r, j]
            Cprev[row, k] = c
        i_gate = gate_activation(gates[row, k] + bias[k], gate_kind)
        f_gate = gate_activation(gates[row, hidden + k] + bias[hidden + k], gate_kind)
        g_gate = state_activation(gates[row, 2 * hidden + k] + bias[2 * hidden + k],
                                  state_kind)
        o_gate = gate_activation(gates[row, 3 * hidden + k] + bias[3 * hidden + k], gate_kind)
        gates[row, k] = i_gate
        gates[row, hidden + k] = f_gate
        gates[row, 2 * hidden + k] = g_gate
        gates[row, 3 * hidden + k] = o_gate
        c = f_gate * c + i_gate * g_gate
        act_c = state_activation(c, state_kind)
        c_state[r, k] = c
        if keep:
            TC[row, k] = act_c
        m = o_gate * act_c
        M[row, k] = m
        if not project:
            h_state[r, k] = m

    @cuda.jit
    def gates_backward(gates, TC, Cprev, dH, dh_state, dc_state, dM, dG, offset,
                       n_active, hidden, project, gate_kind, state_kind):
        """One backward step's pointwise work: thread (r, k) as in gates_forward.

        ``dM`` holds the gradient of the unprojected hidden state (with
        projection); without projection it is ``dh_state + dH``, read here.
        """
        index = cuda.grid(1)
        if index >= n_active * hidden:
            return
        r = index // hidden
        k = index - r * hidden
        row = offset + r
        i_gate = gates[row, k]
        f_gate = gates[row, hidden + k]
        g_gate = gates[row, 2 * hidden + k]
        o_gate = gates[row, 3 * hidden + k]
        act_c = TC[row, k]
        if project:
            dm = dM[r, k]
        else:
            dm = dh_state[r, k] + dH[row, k]
        dc = dc_state[r, k] + dm * o_gate * state_derivative(act_c, state_kind)
        dc_state[r, k] = dc * f_gate
        dG[row, k] = dc * g_gate * gate_derivative(i_gate, gate_kind)
        dG[row, hidden + k] = dc * Cprev[row, k] * gate_derivative(f_gate, gate_kind)
        dG[row, 2 * hidden + k] = dc * i_gate * state_derivative(g_gate, state_kind)
        dG[row, 3 * hidden + k] = dm * act_c * gate_derivative(o_gate, gate_kind)

    @cuda.jit
    def column_sum(A, out, n_rows, n_cols):
        """out[j] = sum_r A[r, j]: a block of sum_columns x sum_rows threads
        per sum_columns columns, partial sums in (dynamic) shared memory,
        partial[ty, tx] at partial[ty * sum_columns + tx], added in a fixed
        order (deterministic)."""
        partial = cuda.shared.array(0, element)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        j = cuda.blockIdx.x * sum_columns + tx
        acc = zero
        if j < n_cols:
            for r in range(ty, n_rows, sum_rows):
                acc += A[r, j]
        partial[ty * sum_columns + tx] = acc
        cuda.syncthreads()
        if ty == 0 and j < n_cols:
            total = zero
            for q in range(sum_rows):
                total += partial[q * sum_columns + tx]
            out[j] = total

    @cuda.jit
    def copy_rows(src, src_off, dst, dst_off, n_rows, n_cols):
        """dst[dst_off:dst_off + n_rows, :n_cols] = src[src_off:src_off + n_rows, :n_cols]."""
        index = cuda.grid(1)
        if index < n_rows * n_cols:
            r = index // n_cols
            j = index - r * n_cols
            dst[dst_off + r, j] = src[src_off + r, j]

    @cuda.jit
    def add_rows(a, b, b_off, out, out_off, n_rows, n_cols):
        """out[out_off + r, j] = a[r, j] + b[b_off + r, j]."""
        index = cuda.grid(1)
        if index < n_rows * n_cols:
            r = index // n_cols
            j = index - r * n_cols
            out[out_off + r, j] = a[r, j] + b[b_off + r, j]

    itemsize = np.dtype(dtype_name).itemsize
    return SimpleNamespace(
        tile=tile, gemm=gemm, gates_forward=gates_forward, gates_backward=gates_backward,
        column_sum=column_sum, copy_rows=copy_rows, add_rows=add_rows,
        gemm_shared_bytes=2 * tile * pad * itemsize,
        column_sum_shared_bytes=sum_rows * sum_columns * itemsize,
    )


def _blocks(n_threads, per_block):
    return (n_threads + per_block - 1) // per_block


def launch_gemm(K, A, B, C, m, n, k, a_off=0, c_off=0, trans_a=False, trans_b=False,
                accumulate=False):
    """``C[c_off:c_off+m, :n] (+)= op(A)[a_off:a_off+m] @ op(B)`` on the GPU.

    Blocks along x walk the rows of C (the long dimension: grid x has no
    65535 limit), blocks along y its columns.
    """
    if m == 0 or n == 0:
        return
    tile = K.tile
    K.gemm[(_blocks(m, tile), _blocks(n, tile)), (tile, tile), 0, K.gemm_shared_bytes](
        A, B, C, m, n, k, a_off, c_off, int(trans_a), int(trans_b), int(accumulate))


def launch_column_sum(K, A, out, n_rows, n_cols):
    """``out[:n_cols] = A[:n_rows, :n_cols].sum(axis=0)`` on the GPU, in a fixed order."""
    if n_cols == 0:
        return
    K.column_sum[_blocks(n_cols, SUM_COLUMNS), (SUM_COLUMNS, SUM_ROWS), 0,
                 K.column_sum_shared_bytes](A, out, n_rows, n_cols)


def _pointwise(kernel, n_threads, *args):
    if n_threads:
        kernel[_blocks(n_threads, POINTWISE_THREADS), POINTWISE_THREADS](*args)


def _is_device_array(a):
    is_cuda_array = getattr(cuda, "is_cuda_array", None)
    if is_cuda_array is not None and is_cuda_array(a):
        return True
    # numba's own device arrays, the simulator's included (they carry no
    # __cuda_array_interface__ there).
    return bool(getattr(a, "__cuda_ndarray__", False))


class _Transfers:
    """Puts a call's arguments on the device and brings NumPy outputs back."""

    def __init__(self):
        self._copy_back = []

    @staticmethod
    def _device(a):
        if getattr(a, "__cuda_ndarray__", False):
            return a
        return cuda.as_cuda_array(a)  # e.g. CuPy: zero-copy view

    def input(self, a):
        if _is_device_array(a):
            return self._device(a)
        return cuda.to_device(np.ascontiguousarray(a))

    def output(self, a):
        """A device array for output ``a``, copied back into it by :meth:`finish`."""
        if _is_device_array(a):
            return self._device(a)
        device = cuda.device_array(a.shape, dtype=a.dtype)
        self._copy_back.append((device, a))
        return device

    def scratch(self, a):
        """A device array for workspace ``a``: ``a`` itself on the device, else a new one."""
        if _is_device_array(a):
            return self._device(a)
        return cuda.device_array(a.shape, dtype=a.dtype)

    def finish(self):
        for device, host in self._copy_back:
            if host.flags.c_contiguous:
                device.copy_to_host(host)
            else:
                host[...] = device.copy_to_host()
        self._copy_back = []


def _steps(batch_sizes):
    if _is_device_array(batch_sizes):
        batch_sizes = batch_sizes.copy_to_host()
    return [int(n) for n in np.asarray(batch_sizes)]


def _kernels_for(X):
    _require_cuda()
    dtype = np.dtype(X.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"backend='cuda' computes in float32 or float64, not {dtype}.")
    return kernels(dtype.name)


def forward(
    X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
    H, Hprev, Cprev, TC, gates, M, h_n, c_n, work,
):
    """Run one LSTM direction over a packed batch on the GPU.

    The arguments are those of :func:`fastlstm._kernels.numba_lstm.lstm_forward`
    (same shapes, same meaning, same outputs), as NumPy or numba device
    arrays; ``work`` is not used.
    """
    K = _kernels_for(X)
    args = (K, X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
            H, Hprev, Cprev, TC, gates, M, h_n, c_n)
    if _SIMULATOR_LOCK is None:
        return _forward(*args)
    with _SIMULATOR_LOCK:
        return _forward(*args)


def _forward(K, X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
             H, Hprev, Cprev, TC, gates, M, h_n, c_n):
    io = _Transfers()
    sizes = _steps(batch_sizes)
    n_rows, n_inputs = X.shape
    batch_size, state = h0.shape
    hidden = c0.shape[1]
    project = W_proj.shape[0] > 0
    # Hprev, Cprev and TC with 0 rows: not kept (no backward pass follows).
    keep = Hprev.shape[0] > 0 or n_rows == 0
    d_X, d_W, d_R, d_bias = io.input(X), io.input(W), io.input(R), io.input(bias)
    d_h0, d_c0 = io.input(h0), io.input(c0)
    d_W_proj = io.input(W_proj) if project else None
    d_H, d_gates = io.output(H), io.output(gates)
    if keep:
        d_Hprev, d_Cprev, d_TC = io.output(Hprev), io.output(Cprev), io.output(TC)
    else:
        d_Hprev = d_Cprev = d_TC = d_gates  # never written: keep is False
    d_M = io.output(M) if project else d_H
    d_h_n, d_c_n = io.output(h_n), io.output(c_n)

    # Hoisted input projection over every packed row.
    launch_gemm(K, d_X, d_W, d_gates, n_rows, 4 * hidden, n_inputs, trans_b=True)
    # h_n/c_n are the running state, as in the numba kernel.
    _pointwise(K.copy_rows, batch_size * state, d_h0, 0, d_h_n, 0, batch_size, state)
    _pointwise(K.copy_rows, batch_size * hidden, d_c0, 0, d_c_n, 0, batch_size, hidden)
    offset = n_rows if reverse else 0
    for step in range(len(sizes)):
        n_active = sizes[len(sizes) - 1 - step] if reverse else sizes[step]
        if reverse:
            offset -= n_active
        # gates[offset:offset + n] += h[:n] R^T, on the active rows only.
        launch_gemm(K, d_h_n, d_R, d_gates, n_active, 4 * hidden, state, c_off=offset,
                    trans_b=True, accumulate=True)
        _pointwise(K.gates_forward, n_active * hidden,
                   d_gates, d_bias, d_h_n, d_c_n, d_Hprev, d_Cprev, d_TC, d_M, offset,
                   n_active, hidden, state, int(project), int(gate_kind), int(state_kind),
                   int(keep))
        if project:
            launch_gemm(K, d_M, d_W_proj, d_H, n_active, state, hidden, a_off=offset,
                        c_off=offset, trans_b=True)
            _pointwise(K.copy_rows, n_active * state, d_H, offset, d_h_n, 0, n_active, state)
        if not reverse:
            offset += n_active
    io.finish()


def backward(
    X, batch_sizes, W, R, bias, W_proj, h0, c0, reverse, gate_kind, state_kind,
    Hprev, Cprev, TC, gates, M, dH, dh_n, dc_n,
    dX, dW, dR, dbias, dW_proj, dh0, dc0, dG, dH_total, dM,
):
    """Backpropagate through one LSTM direction over a packed batch on the GPU.

    The arguments are those of :func:`fastlstm._kernels.numba_lstm.lstm_backward`,
    as NumPy or numba device arrays. ``bias``, ``h0`` and ``c0`` are not
    read (not even copied to the GPU); only their shapes are used.
    """
    K = _kernels_for(X)
    args = (K, X, batch_sizes, W, R, W_proj, h0, c0, reverse, gate_kind, state_kind,
            Hprev, Cprev, TC, gates, M, dH, dh_n, dc_n,
            dX, dW, dR, dbias, dW_proj, dh0, dc0, dG, dH_total, dM)
    if _SIMULATOR_LOCK is None:
        return _backward(*args)
    with _SIMULATOR_LOCK:
        return _backward(*args)


def _backward(K, X, batch_sizes, W, R, W_proj, h0, c0, reverse, gate_kind, state_kind,
              Hprev, Cprev, TC, gates, M, dH, dh_n, dc_n,
              dX, dW, dR, dbias, dW_proj, dh0, dc0, dG, dH_total, dM):
    io = _Transfers()
    sizes = _steps(batch_sizes)
    n_rows, n_inputs = X.shape
    batch_size, state = h0.shape
    hidden = c0.shape[1]
    project = W_proj.shape[0] > 0
    d_X, d_W, d_R = io.input(X), io.input(W), io.input(R)
    d_Hprev, d_Cprev = io.input(Hprev), io.input(Cprev)
    d_TC, d_gates = io.input(TC), io.input(gates)
    d_dH, d_dh_n, d_dc_n = io.input(dH), io.input(dh_n), io.input(dc_n)
    d_dX, d_dW, d_dR, d_dbias = io.output(dX), io.output(dW), io.output(dR), io.output(dbias)
    d_dh0, d_dc0 = io.output(dh0), io.output(dc0)
    d_dG = io.scratch(dG)
    if project:
        d_W_proj, d_M = io.input(W_proj), io.input(M)
        d_dW_proj, d_dH_total, d_dM = io.output(dW_proj), io.scratch(dH_total), io.scratch(dM)
    else:  # placeholders the kernels never read
        d_dM = d_dh0

    # dh0/dc0 carry the running state gradient, as in the numba kernel.
    _pointwise(K.copy_rows, batch_size * state, d_dh_n, 0, d_dh0, 0, batch_size, state)
    _pointwise(K.copy_rows, batch_size * hidden, d_dc_n, 0, d_dc0, 0, batch_size, hidden)
    offset = 0 if reverse else n_rows
    for step in range(len(sizes)):
        n_active = sizes[step] if reverse else sizes[len(sizes) - 1 - step]
        if not reverse:
            offset -= n_active
        if project:
            _pointwise(K.add_rows, n_active * state, d_dh0, d_dH, offset, d_dH_total, offset,
                       n_active, state)
            launch_gemm(K, d_dH_total, d_W_proj, d_dM, n_active, hidden, state, a_off=offset)
        _pointwise(K.gates_backward, n_active * hidden,
                   d_gates, d_TC, d_Cprev, d_dH, d_dh0, d_dc0, d_dM, d_dG, offset,
                   n_active, hidden, int(project), int(gate_kind), int(state_kind))
        # Only the recurrent part of dh is needed inside the loop.
        launch_gemm(K, d_dG, d_R, d_dh0, n_active, state, 4 * hidden, a_off=offset)
        if reverse:
            offset += n_active
    # Whole-batch GEMMs instead of one small GEMM per step.
    launch_gemm(K, d_dG, d_X, d_dW, 4 * hidden, n_inputs, n_rows, trans_a=True)
    launch_gemm(K, d_dG, d_Hprev, d_dR, 4 * hidden, state, n_rows, trans_a=True)
    if d_dX.shape[0] > 0:
        launch_gemm(K, d_dG, d_W, d_dX, n_rows, n_inputs, 4 * hidden)
    if project:
        launch_gemm(K, d_dH_total, d_M, d_dW_proj, state, hidden, n_rows, trans_a=True)
    launch_column_sum(K, d_dG, d_dbias, n_rows, 4 * hidden)
    io.finish()
