"""A stack of (bi)directional LSTM layers over one packed batch.

This module composes the one-direction kernels of a backend into the whole
recurrent network: layers feed each other, the two directions of a layer are
concatenated feature-wise (forward first, as ``torch.nn.LSTM`` does), dropout
masks drawn by the caller are applied between layers, and the backward pass
walks the same path in reverse, writing gradients straight into the views of
a flat gradient vector.
"""

from dataclasses import dataclass, field

import numpy as np

from ._weights import GATES


@dataclass(frozen=True)
class NetworkShape:
    """Sizes that fix the network's structure."""

    hidden_size: int
    num_layers: int
    bidirectional: bool

    @property
    def n_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def n_features_out(self):
        return self.hidden_size * self.n_directions


def _suffix(direction):
    return "_reverse" if direction == 1 else ""


@dataclass
class _DirectionCache:
    # Everything one direction's forward kernel saved for its backward.
    bias: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    Hprev: np.ndarray
    Cprev: np.ndarray
    TC: np.ndarray
    gates: np.ndarray


@dataclass
class ForwardResult:
    """Outputs of :func:`network_forward` and what backward needs.

    Attributes
    ----------
    outputs : ndarray of shape (n_rows, n_directions * hidden_size)
        Last layer's hidden state at every packed step.
    final_hidden : ndarray of shape (batch_size, n_directions * hidden_size)
        Last layer's final hidden state of each sequence and direction: the
        forward direction after the sequence's last step, the reverse
        direction after its first step.
    """

    outputs: np.ndarray
    final_hidden: np.ndarray
    layer_inputs: list = field(default_factory=list)
    directions: list = field(default_factory=list)


def network_forward(params, shape, batch, backend, dropout_masks=None):
    """Run the recurrent layers over a packed batch.

    Parameters
    ----------
    params : dict of str to ndarray
        Parameters named as ``torch.nn.LSTM``'s state dict.
    shape : NetworkShape
    batch : PackedBatch
    backend : Backend
    dropout_masks : list of ndarray or None, default=None
        ``dropout_masks[l - 1]`` (already scaled by 1 / keep probability)
        multiplies the input of layer ``l >= 1``; None means no dropout.

    Returns
    -------
    result : ForwardResult
    """
    hidden = shape.hidden_size
    n_rows = batch.X.shape[0]
    batch_size = batch.size
    dtype = batch.X.dtype
    result = ForwardResult(outputs=None, final_hidden=None)
    layer_input = batch.X
    for layer in range(shape.num_layers):
        if layer > 0 and dropout_masks is not None:
            layer_input = layer_input * dropout_masks[layer - 1]
        result.layer_inputs.append(layer_input)
        outputs = np.empty((n_rows, shape.n_features_out), dtype=dtype)
        final_hidden = np.empty((batch_size, shape.n_features_out), dtype=dtype)
        caches = []
        for direction in range(shape.n_directions):
            name = f"l{layer}{_suffix(direction)}"
            bias = params[f"bias_ih_{name}"] + params[f"bias_hh_{name}"]
            h0 = np.zeros((batch_size, hidden), dtype=dtype)
            c0 = np.zeros((batch_size, hidden), dtype=dtype)
            H, Hprev, Cprev, TC = (np.empty((n_rows, hidden), dtype=dtype) for _ in range(4))
            gates = np.empty((n_rows, GATES * hidden), dtype=dtype)
            h_n = np.empty((batch_size, hidden), dtype=dtype)
            c_n = np.empty((batch_size, hidden), dtype=dtype)
            work = np.empty((batch_size, GATES * hidden), dtype=dtype)
            backend.forward(
                layer_input, batch.batch_sizes,
                params[f"weight_ih_{name}"], params[f"weight_hh_{name}"], bias,
                h0, c0, direction == 1,
                H, Hprev, Cprev, TC, gates, h_n, c_n, work,
            )
            columns = slice(direction * hidden, (direction + 1) * hidden)
            outputs[:, columns] = H
            final_hidden[:, columns] = h_n
            caches.append(_DirectionCache(bias, h0, c0, Hprev, Cprev, TC, gates))
        result.directions.append(caches)
        layer_input = outputs
    result.outputs = outputs
    result.final_hidden = final_hidden
    return result


def network_backward(params, grads, shape, batch, backend, forward_result,
                     d_outputs=None, d_final_hidden=None, dropout_masks=None):
    """Backpropagate through the recurrent layers.

    Parameters
    ----------
    params : dict of str to ndarray
    grads : dict of str to ndarray
        OUT. Gradient views named as ``params``; the recurrent entries are
        overwritten, others are left alone.
    shape : NetworkShape
    batch : PackedBatch
    backend : Backend
    forward_result : ForwardResult
        From :func:`network_forward` on the same batch and parameters.
    d_outputs : ndarray of shape (n_rows, n_directions * hidden_size), default=None
        Gradient with respect to ``forward_result.outputs``; None means zero.
    d_final_hidden : ndarray of shape (batch_size, n_directions * hidden_size), default=None
        Gradient with respect to ``forward_result.final_hidden``; None means zero.
    dropout_masks : list of ndarray or None
        The masks given to :func:`network_forward`.

    Returns
    -------
    d_inputs : ndarray of shape (n_rows, n_features)
        Gradient with respect to the packed inputs ``batch.X``.
    """
    hidden = shape.hidden_size
    n_rows = batch.X.shape[0]
    batch_size = batch.size
    dtype = batch.X.dtype
    zeros_rows = np.zeros((n_rows, hidden), dtype=dtype)
    zeros_state = np.zeros((batch_size, hidden), dtype=dtype)
    for layer in reversed(range(shape.num_layers)):
        layer_input = forward_result.layer_inputs[layer]
        d_input = np.zeros_like(layer_input)
        is_last = layer == shape.num_layers - 1
        for direction in range(shape.n_directions):
            name = f"l{layer}{_suffix(direction)}"
            cache = forward_result.directions[layer][direction]
            columns = slice(direction * hidden, (direction + 1) * hidden)
            dH = zeros_rows if d_outputs is None else np.ascontiguousarray(d_outputs[:, columns])
            if is_last and d_final_hidden is not None:
                dh_n = np.ascontiguousarray(d_final_hidden[:, columns])
            else:
                dh_n = zeros_state
            dX = np.empty_like(layer_input)
            d_bias = grads[f"bias_ih_{name}"]
            backend.backward(
                layer_input, batch.batch_sizes,
                params[f"weight_ih_{name}"], params[f"weight_hh_{name}"],
                cache.bias, cache.h0, cache.c0, direction == 1,
                cache.Hprev, cache.Cprev, cache.TC, cache.gates,
                dH, dh_n, zeros_state,
                dX, grads[f"weight_ih_{name}"], grads[f"weight_hh_{name}"], d_bias,
                np.empty((batch_size, hidden), dtype=dtype),
                np.empty((batch_size, hidden), dtype=dtype),
                np.empty((n_rows, GATES * hidden), dtype=dtype),
            )
            # Both torch biases enter the gates as one sum, so they share a gradient.
            grads[f"bias_hh_{name}"][:] = d_bias
            d_input += dX
        if layer > 0 and dropout_masks is not None:
            d_input *= dropout_masks[layer - 1]
        d_outputs = d_input
    return d_outputs
