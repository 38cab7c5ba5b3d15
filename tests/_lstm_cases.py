"""Random packed batches and a runner that drives any backend the same way."""

import numpy as np

from fastlstm._bucketing import PackedBatch


def random_packed_batch(rng, lengths, n_features, dtype):
    """A packed batch of random inputs with the given lengths (any order)."""
    lengths = np.sort(np.asarray(lengths))[::-1]
    batch_sizes = np.array([np.sum(lengths > t) for t in range(lengths[0])], dtype=np.int64)
    X = rng.standard_normal((int(lengths.sum()), n_features)).astype(dtype)
    return PackedBatch(X, batch_sizes, np.arange(len(lengths), dtype=np.int64))


def random_layer(rng, n_features, hidden, batch_size, dtype, proj_size=0, scale=0.5):
    """Weights, bias, projection and initial states of one LSTM direction."""
    state = proj_size or hidden

    def draw(*shape):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    return dict(W=draw(4 * hidden, n_features), R=draw(4 * hidden, state), bias=draw(4 * hidden),
                W_proj=draw(proj_size, hidden) if proj_size else np.zeros((0, 0), dtype),
                h0=draw(batch_size, state), c0=draw(batch_size, hidden))


def _nan(shape, dtype):
    return np.full(shape, np.nan, dtype)


def _layer_inputs(batch, layer, reverse, gate_kind, state_kind):
    """The kernels' leading arguments, shared by forward and backward."""
    return (batch.X, batch.batch_sizes, layer["W"], layer["R"], layer["bias"], layer["W_proj"],
            layer["h0"], layer["c0"], reverse, gate_kind, state_kind)


def _forward(backend, batch, layer, reverse, gate_kind, state_kind, keep):
    """Forward through one direction: (outputs by name, what backward reads)."""
    dtype = batch.X.dtype
    n_rows = batch.X.shape[0]
    batch_size, state = layer["h0"].shape
    hidden = layer["c0"].shape[1]
    project = layer["W_proj"].shape[0] > 0
    kept = n_rows if keep else 0
    H, gates = _nan((n_rows, state), dtype), _nan((n_rows, 4 * hidden), dtype)
    Hprev, Cprev, TC = _nan((kept, state), dtype), _nan((kept, hidden), dtype), _nan((kept, hidden), dtype)
    M = _nan((n_rows, hidden), dtype) if project else layer["W_proj"]
    h_n, c_n = _nan((batch_size, state), dtype), _nan((batch_size, hidden), dtype)
    backend.forward(*_layer_inputs(batch, layer, reverse, gate_kind, state_kind),
                    H, Hprev, Cprev, TC, gates, M, h_n, c_n,
                    _nan((batch_size + batch.X.shape[1] + state + 1, 4 * hidden), dtype))
    return dict(H=H, h_n=h_n, c_n=c_n, gates=gates), (Hprev, Cprev, TC, gates, M)


def run_direction(backend, batch, layer, reverse, gate_kind, state_kind, dH, dh_n, dc_n):
    """Forward then backward through one direction; every output by name.

    Outputs start as NaN, so that anything a kernel fails to write shows.
    """
    dtype = batch.X.dtype
    n_rows = batch.X.shape[0]
    batch_size, state = layer["h0"].shape
    hidden = layer["c0"].shape[1]
    project = layer["W_proj"].shape[0] > 0
    outputs, saved = _forward(backend, batch, layer, reverse, gate_kind, state_kind, keep=True)
    M = saved[-1]
    grads = dict(
        dX=np.full_like(batch.X, np.nan), dW=np.full_like(layer["W"], np.nan),
        dR=np.full_like(layer["R"], np.nan), dbias=np.full_like(layer["bias"], np.nan),
        dW_proj=np.full_like(layer["W_proj"], np.nan),
        dh0=np.full_like(layer["h0"], np.nan), dc0=np.full_like(layer["c0"], np.nan),
    )
    backend.backward(
        *_layer_inputs(batch, layer, reverse, gate_kind, state_kind), *saved,
        dH.astype(dtype), dh_n.astype(dtype), dc_n.astype(dtype),
        grads["dX"], grads["dW"], grads["dR"], grads["dbias"], grads["dW_proj"],
        grads["dh0"], grads["dc0"], _nan((n_rows, 4 * hidden), dtype),
        _nan((n_rows, state), dtype) if project else M,
        _nan((batch_size, hidden), dtype) if project else M,
    )
    return dict(H=outputs["H"], h_n=outputs["h_n"], c_n=outputs["c_n"], **grads)


def run_forward(backend, batch, layer, reverse, gate_kind, state_kind, keep):
    """Forward through one direction; with ``keep=False``, Hprev, Cprev and TC
    get 0 rows (prediction: nothing saved for a backward pass)."""
    return _forward(backend, batch, layer, reverse, gate_kind, state_kind, keep)[0]
