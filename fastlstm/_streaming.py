"""The fast path of ``predict_and_update_state``: one compiled call per call.

A streaming loop calls ``predict_and_update_state`` once per new time step,
so the fixed cost of a call is the whole cost. The general path (validate a
list of sequences, normalise, pack a batch, run each layer through the
backend with its thread pool, then the head) costs a few hundred
microseconds for a single step; :class:`StreamingNetwork` keeps the weights
pre-transposed in one buffer and runs the whole network over the new steps
in one call of :func:`fastlstm._kernels.numba_stream.stream_forward`.

It takes only what it can do exactly as the general path does: a float 3-D
array (n_sequences, T, n_features), or a list of float arrays (T,
n_features) of one shape, of finite values, for a unidirectional network on
the numba backend. Everything else (ragged or univariate sequences, NaN
padding, errors, other backends) goes the general way, which also produces
every error message.
"""

import numpy as np

from ._kernels.numba_stream import (
    BIAS,
    IN_WEIGHTS,
    LAYOUT_COLUMNS,
    PROJ_WEIGHTS,
    REC_WEIGHTS,
    all_finite,
    stream_forward,
)
from ._network import layer_name


def pack_stream_weights(weights, net_shape, dtype):
    """Pre-transpose a unidirectional network's weights into one buffer.

    Parameters
    ----------
    weights : dict of str to ndarray
        ``weights_`` of a fitted estimator (torch names).
    net_shape : NetworkShape
    dtype : numpy dtype

    Returns
    -------
    params : ndarray of shape (n,)
    layout : ndarray of shape (num_layers + 1, LAYOUT_COLUMNS), int64
    sizes : ndarray of shape (4,), int64
        Hidden size, state size, number of outputs, number of layers.
    """
    num_layers = net_shape.num_layers
    blocks, offset = [], 0
    layout = np.full((num_layers + 1, LAYOUT_COLUMNS), -1, dtype=np.int64)

    def add(array, row, column):
        nonlocal offset
        block = np.ascontiguousarray(array, dtype=dtype).ravel()
        layout[row, column] = offset
        blocks.append(block)
        offset += block.size

    for layer in range(num_layers):
        name = layer_name(layer, 0)
        add(weights[f"weight_ih_{name}"].T.astype(dtype), layer, IN_WEIGHTS)
        add(weights[f"weight_hh_{name}"].T.astype(dtype), layer, REC_WEIGHTS)
        # Summed in the model's dtype, as the general path sums them.
        add(weights[f"bias_ih_{name}"].astype(dtype) + weights[f"bias_hh_{name}"].astype(dtype),
            layer, BIAS)
        if net_shape.proj_size > 0:
            add(weights[f"weight_hr_{name}"].T.astype(dtype), layer, PROJ_WEIGHTS)
    add(weights["head.weight"].T.astype(dtype), num_layers, IN_WEIGHTS)
    add(weights["head.bias"].astype(dtype), num_layers, BIAS)
    n_outputs = weights["head.bias"].shape[0]
    sizes = np.array([net_shape.hidden_size, net_shape.state_size, n_outputs, num_layers],
                     dtype=np.int64)
    return np.concatenate(blocks), layout, sizes


class StreamingNetwork:
    """A fitted unidirectional network, ready for one-call streaming steps.

    Parameters
    ----------
    weights : dict of str to ndarray
    net_shape : NetworkShape
        Unidirectional.
    scaler : SequenceScaler or None
        The estimator's fitted input normalisation.
    dtype : numpy dtype
    per_step : bool
        Outputs at every step rather than at the last one.
    """

    def __init__(self, weights, net_shape, scaler, dtype, per_step):
        if net_shape.bidirectional:
            raise ValueError("StreamingNetwork needs a unidirectional network.")
        self.net_shape = net_shape
        self.dtype = np.dtype(dtype)
        self.per_step = bool(per_step)
        self.params, self.layout, self.sizes = pack_stream_weights(weights, net_shape,
                                                                   self.dtype)
        self.n_features = weights[f"weight_ih_{layer_name(0, 0)}"].shape[1]
        if scaler is None:
            self.affine = np.zeros((0, self.n_features), dtype=np.float64)
        else:
            center, scale, shift = scaler._affine()
            self.affine = np.empty((3, self.n_features), dtype=np.float64)
            self.affine[0], self.affine[1], self.affine[2] = center, scale, shift
        hidden = net_shape.hidden_size
        self._out = np.empty((0, 0, int(self.sizes[2])), dtype=self.dtype)
        self.work = np.empty(8 * hidden + max(self.n_features, net_shape.state_size) + hidden,
                             dtype=self.dtype)

    def batch(self, X):
        """X as the 3-D array this path runs, or None where it does not take X.

        It takes a float array (n_sequences, T, n_features), and a list or
        tuple of float arrays (T, n_features) of one shape, stacked into one:
        the usual way to pass fastlstm sequences, which took the general
        path at about 0.2 ms per step. It still checks for NaN when it runs.
        """
        if type(X) in (list, tuple) and 0 < len(X) and all(
                type(seq) is np.ndarray and seq.ndim == 2 for seq in X):
            shape, kind = X[0].shape, X[0].dtype.kind
            if all(seq.shape == shape and seq.dtype.kind == kind for seq in X):
                X = np.stack(X)  # a new array: the caller's are only read
        if (type(X) is np.ndarray and X.ndim == 3 and X.shape[2] == self.n_features
                and X.shape[0] > 0 and X.shape[1] > 0 and X.dtype.kind == "f"):
            return X
        return None

    def new_state(self, n_sequences):
        """Zero hidden and cell states for ``n_sequences`` new sequences."""
        shape = self.net_shape
        return (np.zeros((shape.num_layers, n_sequences, shape.state_size), dtype=self.dtype),
                np.zeros((shape.num_layers, n_sequences, shape.hidden_size), dtype=self.dtype))

    def run(self, X, h, c):
        """Advance the states ``h``, ``c`` (in place) over X's steps.

        Parameters
        ----------
        X : ndarray of shape (B, T, n_features)
            From :meth:`batch`.
        h, c : ndarray
            States as from :meth:`new_state`, for B sequences.

        Returns
        -------
        outputs : ndarray of shape (B, T or 1, n_outputs), or None
            None, with the states untouched, when X holds NaN or infinity.
            A buffer reused by the next call: read it (or copy it) before.
        """
        if X.dtype != self.dtype or not X.flags.c_contiguous:
            X = np.ascontiguousarray(X, dtype=self.dtype)  # a copy: X is only ever read
        B, T = X.shape[0], X.shape[1] if self.per_step else 1
        out = self._out
        if out.shape[0] != B or out.shape[1] != T:
            out = self._out = np.empty((B, T, out.shape[2]), dtype=self.dtype)
        if not all_finite(X):
            return None
        shape = self.net_shape
        stream_forward(X, self.affine, self.params, self.layout, self.sizes, h, c, out,
                       self.work, self.per_step, shape.gate_kind, shape.state_kind)
        return out


def warm_up_streaming(dtype):
    """Compile (or load from numba's cache) :func:`stream_forward` for ``dtype``."""
    from ._network import NetworkShape

    dtype = np.dtype(dtype)
    shape = NetworkShape(hidden_size=2, num_layers=1, bidirectional=False)
    weights = {"weight_ih_l0": np.ones((8, 1)), "weight_hh_l0": np.ones((8, 2)),
               "bias_ih_l0": np.zeros(8), "bias_hh_l0": np.zeros(8),
               "head.weight": np.ones((1, 2)), "head.bias": np.zeros(1)}
    network = StreamingNetwork(weights, shape, None, dtype, per_step=True)
    network.run(np.ones((1, 1, 1), dtype=dtype), *network.new_state(1))
