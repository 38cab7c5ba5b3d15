"""Random packed batches and a runner that drives any backend the same way."""

import numpy as np

from fastlstm._bucketing import PackedBatch


def random_packed_batch(rng, lengths, n_features, dtype):
    """A packed batch of random inputs with the given lengths (any order)."""
    lengths = np.sort(np.asarray(lengths))[::-1]
    batch_sizes = np.array([np.sum(lengths > t) for t in range(lengths[0])], dtype=np.int64)
    X = rng.standard_normal((int(lengths.sum()), n_features)).astype(dtype)
    return PackedBatch(X, batch_sizes, np.arange(len(lengths), dtype=np.int64))


def random_layer(rng, n_features, hidden, batch_size, dtype, scale=0.5):
    """Weights, bias and initial states of one LSTM direction."""
    def draw(*shape):
        return (scale * rng.standard_normal(shape)).astype(dtype)
    return dict(W=draw(4 * hidden, n_features), R=draw(4 * hidden, hidden),
                bias=draw(4 * hidden), h0=draw(batch_size, hidden), c0=draw(batch_size, hidden))


def run_direction(backend, batch, layer, reverse, dH, dh_n, dc_n):
    """Forward then backward through one direction; every output by name."""
    dtype = batch.X.dtype
    n_rows = batch.X.shape[0]
    batch_size, hidden = layer["h0"].shape
    H, Hprev, Cprev, TC = (np.full((n_rows, hidden), np.nan, dtype) for _ in range(4))
    gates = np.full((n_rows, 4 * hidden), np.nan, dtype)
    h_n, c_n = np.full((batch_size, hidden), np.nan, dtype), np.full((batch_size, hidden), np.nan, dtype)
    work = np.full((batch_size, 4 * hidden), np.nan, dtype)
    args = (batch.X, batch.batch_sizes, layer["W"], layer["R"], layer["bias"],
            layer["h0"], layer["c0"], reverse)
    backend.forward(*args, H, Hprev, Cprev, TC, gates, h_n, c_n, work)
    grads = dict(
        dX=np.full_like(batch.X, np.nan), dW=np.full_like(layer["W"], np.nan),
        dR=np.full_like(layer["R"], np.nan), dbias=np.full_like(layer["bias"], np.nan),
        dh0=np.full_like(layer["h0"], np.nan), dc0=np.full_like(layer["c0"], np.nan),
    )
    dG = np.full((n_rows, 4 * hidden), np.nan, dtype)
    backend.backward(*args, Hprev, Cprev, TC, gates, dH.astype(dtype), dh_n.astype(dtype),
                     dc_n.astype(dtype), grads["dX"], grads["dW"], grads["dR"],
                     grads["dbias"], grads["dh0"], grads["dc0"], dG)
    return dict(H=H, h_n=h_n, c_n=c_n, **grads)
