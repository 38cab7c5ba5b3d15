"""The fast path of ``predict_and_update_state``: one compiled call per call.

A streaming loop calls ``predict_and_update_state`` once per new time step,
so the fixed cost of a call is the whole cost. The general path (validate a
list of sequences, normalise, pack a batch, run each layer through the
backend with its thread pool, then the head) costs a few hundred
microseconds for a single step; :class:`StreamingNetwork` keeps the weights
pre-transposed in one buffer and runs the whole network over the new steps
in one call of :func:`fastlstm._kernels.numba_stream.stream_forward`, through
its native entry (:class:`fastlstm._kernels._stream_call.StreamCall`).

It takes only what it can do exactly as the general path does: a float 3-D
array (n_sequences, T, n_features), or a list of float arrays (T,
n_features) of one shape, of finite values, for a unidirectional network on
the numba backend. Everything else (ragged or univariate sequences, NaN
padding, errors, other backends) goes the general way, which also produces
every error message.
"""

import numpy as np

from ._kernels._stream_call import StreamCall
from ._kernels.numba_stream import (
    BIAS,
    LAYOUT_COLUMNS,
    PROJ_WEIGHTS,
    WEIGHTS,
    entry_address,
    panel_layout,
    work_size,
)
from ._network import layer_name


def pack_stream_weights(weights, net_shape, dtype):
    """Pre-transpose a unidirectional network's weights into one buffer, in panels.

    Parameters
    ----------
    weights : dict of str to ndarray
        ``weights_`` of a fitted estimator (torch names).
    net_shape : NetworkShape
    dtype : numpy dtype

    Returns
    -------
    params : ndarray of shape (n,)
        Each matrix transposed to (n_in, width) and stored in panels (see
        :func:`fastlstm._kernels.numba_stream.panel_layout`), a layer's input
        weights stacked over its recurrent weights; biases as they are.
    layout : ndarray of shape (num_layers + 1, LAYOUT_COLUMNS), int64
    sizes : ndarray of shape (4,), int64
        Hidden size, state size, number of outputs, number of layers.
    """
    num_layers = net_shape.num_layers
    blocks, offset = [], 0
    layout = np.full((num_layers + 1, LAYOUT_COLUMNS), -1, dtype=np.int64)

    def add(array, row, column):
        nonlocal offset
        array = np.asarray(array, dtype=dtype)
        block = panel_layout(array) if array.ndim == 2 else array
        layout[row, column] = offset
        blocks.append(block)
        offset += block.size

    for layer in range(num_layers):
        name = layer_name(layer, 0)
        add(np.concatenate([weights[f"weight_ih_{name}"].T.astype(dtype),
                            weights[f"weight_hh_{name}"].T.astype(dtype)]), layer, WEIGHTS)
        # Summed in the model's dtype, as the general path sums them.
        add(weights[f"bias_ih_{name}"].astype(dtype) + weights[f"bias_hh_{name}"].astype(dtype),
            layer, BIAS)
        if net_shape.proj_size > 0:
            add(weights[f"weight_hr_{name}"].T.astype(dtype), layer, PROJ_WEIGHTS)
    add(weights["head.weight"].T.astype(dtype), num_layers, WEIGHTS)
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
    decode : {"values", "first value", "argmax"}, default="values"
        What :meth:`predict` makes of the outputs (see ``StreamCall.predict``).
    """

    def __init__(self, weights, net_shape, scaler, dtype, per_step, decode="values"):
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
        work = np.empty(work_size(net_shape.hidden_size, net_shape.state_size, self.n_features),
                        dtype=self.dtype)
        self._call = StreamCall(entry_address(self.dtype), self.params, self.layout, self.sizes,
                                self.affine, work, self.per_step, net_shape.gate_kind,
                                net_shape.state_kind, decode)

    def step(self, X, state):
        """Run the network over X's steps from ``state``, advancing it in place.

        Parameters
        ----------
        X : object
            The new steps. Taken where it is a float array (n_sequences, T,
            n_features), or a list or tuple of float arrays (T, n_features)
            of one shape (stacked into one: the usual way to pass fastlstm
            sequences, which took the general path at about 0.2 ms per step).
        state : tuple of (h, c), or None
            As an earlier call returned it (None: zeros). ``h`` (num_layers,
            n_sequences, state_size), ``c`` (num_layers, n_sequences,
            hidden_size), C-contiguous, of the model's dtype.

        Returns
        -------
        result : tuple of (outputs, state), or None
            ``outputs`` (n_sequences, T or 1, n_outputs), a buffer that the
            next call reuses (read or copy it before); ``state`` the (h, c)
            reached. None, with ``state`` untouched, where X is not taken,
            holds NaN or infinity, or ``state`` does not fit it: the general
            path must answer.
        """
        if type(X) in (list, tuple):
            X = stack_if_equal_shapes(X)
        return self._call.step(X, state)

    def predict(self, X, state):
        """:meth:`step`, with the outputs decoded as ``decode`` says.

        Returns
        -------
        result : tuple of (values, state), or None
            ``values`` a new array of shape (n_sequences, T) per step, or
            (n_sequences,) at the last step, followed by (n_outputs,) for
            ``decode="values"``: float64 outputs, or with "argmax" the index
            of each row's largest output. None as :meth:`step`.
        """
        if type(X) in (list, tuple):
            X = stack_if_equal_shapes(X)
        return self._call.predict(X, state)


def stack_if_equal_shapes(sequences):
    """Equal-shaped 2-D float arrays as one new 3-D array, or None."""
    if 0 < len(sequences) and all(type(seq) is np.ndarray and seq.ndim == 2
                                  and seq.dtype.kind == "f" for seq in sequences):
        shape = sequences[0].shape
        if all(seq.shape == shape for seq in sequences):
            return np.stack(sequences)  # a new array: the caller's are only read
    return None


def warm_up_streaming(dtype):
    """Compile (or load from numba's cache) the streaming entry for ``dtype``."""
    from ._network import NetworkShape

    dtype = np.dtype(dtype)
    shape = NetworkShape(hidden_size=2, num_layers=1, bidirectional=False)
    weights = {"weight_ih_l0": np.ones((8, 1)), "weight_hh_l0": np.ones((8, 2)),
               "bias_ih_l0": np.zeros(8), "bias_hh_l0": np.zeros(8),
               "head.weight": np.ones((1, 2)), "head.bias": np.zeros(1)}
    network = StreamingNetwork(weights, shape, None, dtype, per_step=True)
    network.step(np.ones((1, 1, 1), dtype=dtype), None)
