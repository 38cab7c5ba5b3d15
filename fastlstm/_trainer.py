"""The training loop and batched inference, shared by every estimator.

The estimators decide what the output layer means (classes or values) by the
loss they pass in; everything else, bucketing, packing, the network, the
output layer, clipping and the optimiser, happens here, on arrays only.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ._bucketing import length_sorted_batches, pack_batch
from ._fpenv import enable_flush_to_zero, restore
from ._network import network_backward, network_forward
from ._optim import clip_gradients, make_optimizer
from ._weights import unflatten

# Inference needs no gradients, so bigger batches only amortise overhead.
PREDICT_BATCH_SIZE = 256


@dataclass(frozen=True)
class TrainingOptions:
    """The optimisation settings of one fit, checked by the estimator."""

    max_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    momentum: float
    gradient_threshold: float | None
    gradient_threshold_method: str
    shuffle: str
    dropout: float
    verbose: int


@contextmanager
def compute_environment():
    """The thread settings fastlstm computes under, restored on exit.

    - BLAS runs single-threaded. The per-step GEMMs are small, and numba's
      ``np.dot`` uses SciPy's OpenBLAS while NumPy has its own: two pools of
      spinning threads on few cores. Measured on Japanese Vowels with the
      other core busy: epochs of 1-5 s with the default threads, 0.05 s with
      one. fastlstm's own parallelism does not go through BLAS threads.
    - Subnormal floats flush to zero (see ``_fpenv.pyx``): late in training,
      gradients and optimiser moments can decay into the subnormal range,
      where each operation costs about 100 times more.
    """
    previous = enable_flush_to_zero()
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        restore(previous)


def _head_forward(params, features):
    return features @ params["head.weight"].T + params["head.bias"]


def _dropout_masks(rng, shape, n_rows, dropout, dtype):
    if dropout == 0 or shape.num_layers == 1:
        return None
    keep = 1.0 - dropout
    return [
        (rng.uniform(size=(n_rows, shape.n_features_out)) < keep).astype(dtype) / dtype.type(keep)
        for _ in range(shape.num_layers - 1)
    ]


def train(flat_params, shapes, net_shape, sequences, lengths, targets, loss, options,
          rng, backend):
    """Fit the parameters in place by mini-batch training.

    Parameters
    ----------
    flat_params : ndarray of shape (n_parameters,)
        IN/OUT. Initial parameters, updated in place.
    shapes : list of (str, tuple)
        Parameter layout (see ``_weights.parameter_shapes``).
    net_shape : NetworkShape
    sequences : list of ndarray of shape (T_i, n_features)
    lengths : ndarray of shape (n_sequences,), int64
    targets : ndarray of shape (n_sequences, ...)
        Encoded targets, as ``loss`` expects them.
    loss : callable
        ``loss(outputs, targets) -> (value, d_outputs)`` on the output layer.
    options : TrainingOptions
    rng : numpy.random.RandomState
        The fit's only source of randomness.
    backend : Backend

    Returns
    -------
    history : list of dict
        One entry per epoch: ``epoch``, ``loss`` (mean over its batches),
        ``learning_rate`` and ``seconds``.
    """
    with compute_environment():
        return _train(flat_params, shapes, net_shape, sequences, lengths, targets, loss,
                      options, rng, backend)


def _train(flat_params, shapes, net_shape, sequences, lengths, targets, loss, options,
           rng, backend):
    params = unflatten(flat_params, shapes)
    flat_grads = np.zeros_like(flat_params)
    grads = unflatten(flat_grads, shapes)
    optimizer = make_optimizer(
        options.optimizer, flat_params.size, flat_params.dtype,
        options.learning_rate, options.momentum,
    )
    # Batches are cut once (ties broken at random) and packed once per fit:
    # packing is then off the per-epoch path entirely.
    batch_orders = length_sorted_batches(lengths, options.batch_size, rng)
    batches = [pack_batch(sequences, lengths, order) for order in batch_orders]
    schedule = np.arange(len(batches))
    if options.shuffle == "once":
        schedule = rng.permutation(schedule)

    history = []
    for epoch in range(1, options.max_epochs + 1):
        start = time.perf_counter()
        if options.shuffle == "every-epoch":
            schedule = rng.permutation(len(batches))
        epoch_loss = 0.0
        for batch_index in schedule:
            batch = batches[batch_index]
            masks = _dropout_masks(rng, net_shape, batch.X.shape[0], options.dropout,
                                   flat_params.dtype)
            forward = network_forward(params, net_shape, batch, backend, masks)
            outputs = _head_forward(params, forward.final_hidden)
            value, d_outputs = loss(outputs, targets[batch.order])
            if not np.isfinite(value):
                raise FloatingPointError(
                    f"The training loss became {value} at epoch {epoch}; training stopped. "
                    "Lower learning_rate, set gradient_threshold, or normalise the inputs."
                )
            grads["head.weight"][:] = d_outputs.T @ forward.final_hidden
            grads["head.bias"][:] = d_outputs.sum(axis=0)
            d_final_hidden = d_outputs @ params["head.weight"]
            network_backward(params, grads, net_shape, batch, backend, forward,
                             d_final_hidden=d_final_hidden, dropout_masks=masks)
            if options.gradient_threshold is not None:
                clip_gradients(flat_grads, grads, options.gradient_threshold,
                               options.gradient_threshold_method)
            optimizer.step(flat_params, flat_grads)
            epoch_loss += value * batch.size
        epoch_loss /= len(sequences)
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch, "loss": epoch_loss,
                        "learning_rate": options.learning_rate, "seconds": seconds})
        if options.verbose:
            print(f"epoch {epoch:4d}  loss {epoch_loss:.6f}  ({seconds:.3f} s)")
    return history


def predict_outputs(flat_params, shapes, net_shape, sequences, lengths, backend):
    """Output-layer values for every sequence, in the order given.

    Parameters
    ----------
    flat_params : ndarray of shape (n_parameters,)
    shapes : list of (str, tuple)
    net_shape : NetworkShape
    sequences : list of ndarray of shape (T_i, n_features)
    lengths : ndarray of shape (n_sequences,), int64
    backend : Backend

    Returns
    -------
    outputs : ndarray of shape (n_sequences, n_outputs)
    """
    params = unflatten(flat_params, shapes)
    n_outputs = params["head.bias"].shape[0]
    outputs = np.empty((len(sequences), n_outputs), dtype=flat_params.dtype)
    with compute_environment():
        for order in length_sorted_batches(lengths, PREDICT_BATCH_SIZE):
            batch = pack_batch(sequences, lengths, order)
            forward = network_forward(params, net_shape, batch, backend)
            outputs[order] = _head_forward(params, forward.final_hidden)
    return outputs


def warm_up(backend, dtype):
    """Compile (or load from numba's cache) the kernels for ``dtype``.

    Runs one forward and backward pass of a tiny network, so that the one-off
    cost of making the kernels ready is paid, and can be measured, apart
    from any real work.

    Parameters
    ----------
    backend : Backend
    dtype : numpy dtype
    """
    from ._bucketing import PackedBatch
    from ._network import NetworkShape
    from ._weights import init_parameters, parameter_shapes

    net_shape = NetworkShape(hidden_size=2, num_layers=1, bidirectional=True)
    shapes = parameter_shapes(1, 2, 1, True, 1)
    flat_params = init_parameters(shapes, np.random.RandomState(0), dtype)
    params = unflatten(flat_params, shapes)
    grads = unflatten(np.zeros_like(flat_params), shapes)
    batch = PackedBatch(X=np.ones((3, 1), dtype=dtype),
                        batch_sizes=np.array([2, 1], dtype=np.int64),
                        order=np.arange(2, dtype=np.int64))
    with compute_environment():
        forward = network_forward(params, net_shape, batch, backend)
        network_backward(params, grads, net_shape, batch, backend, forward,
                         d_final_hidden=np.ones_like(forward.final_hidden))
