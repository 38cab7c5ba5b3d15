"""The training loop and batched inference, shared by every estimator.

The estimators decide what the output layer means (classes or values) by the
loss they pass in; everything else, bucketing, packing, sharding, the
network, the output layer, clipping and the optimiser, happens here, on
arrays only.

Reproducibility: the mini-batches, their shards, the dropout masks and the
order in which shard gradients are summed depend only on the data, the
parameters and the random state, never on the number of threads, so a seed
gives bit-identical models with any ``n_jobs``.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from ._bucketing import length_sorted_batches, pack_batch, shard_orders, time_chunks
from ._fpenv import enable_flush_to_zero, restore
from ._network import network_backward, network_forward
from ._optim import clip_gradients, make_optimizer
from ._weights import unflatten

# Inference needs no gradients, so bigger batches only amortise overhead.
PREDICT_BATCH_SIZE = 256


@dataclass(frozen=True)
class TrainingOptions:
    """The optimisation settings of one fit, checked by the estimator.

    ``sequence_length`` is None to backpropagate through whole sequences, or
    the chunk length of truncated backpropagation through time.
    """

    max_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    momentum: float
    gradient_threshold: float | None
    gradient_threshold_method: str
    shuffle: str
    dropout: float
    sequence_length: int | None
    n_threads: int
    verbose: int


@contextmanager
def compute_environment(n_threads=1):
    """The thread settings fastlstm computes under, restored on exit.

    Yields an executor for fastlstm's own parallel tasks (None with one
    thread).

    - BLAS runs single-threaded. The per-step GEMMs are small, and numba's
      ``np.dot`` uses SciPy's OpenBLAS while NumPy has its own: two pools of
      spinning threads on few cores. Measured on Japanese Vowels with the
      other core busy: epochs of 1-5 s with the default threads, 0.05 s with
      one. fastlstm parallelises over directions and shards instead.
    - Subnormal floats flush to zero (see ``_fpenv.pyx``): late in training,
      gradients and optimiser moments can decay into the subnormal range,
      where each operation costs about 100 times more. The setting is per
      thread, so the worker threads set it too.
    """
    previous = enable_flush_to_zero()
    try:
        with ExitStack() as stack:
            stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
            executor = None
            if n_threads > 1:
                executor = stack.enter_context(ThreadPoolExecutor(
                    max_workers=n_threads, thread_name_prefix="fastlstm",
                    initializer=enable_flush_to_zero,
                ))
            yield executor
    finally:
        restore(previous)


def _head_forward(params, features):
    return features @ params["head.weight"].T + params["head.bias"]


def _dropout_masks(rng, shape, shards, dropout, dtype):
    if dropout == 0 or shape.num_layers == 1:
        return None
    keep = 1.0 - dropout
    return [
        [(rng.uniform(size=(shard.X.shape[0], shape.n_features_out)) < keep).astype(dtype)
         / dtype.type(keep) for _ in range(shape.num_layers - 1)]
        for shard in shards
    ]


def pack_shards(sequences, lengths, order):
    """Pack one mini-batch as its list of shards."""
    return [pack_batch(sequences, lengths, shard) for shard in shard_orders(order)]


def _chunked(shards, chunk_length):
    """Truncated-BPTT chunks of a sharded batch: list of (shards, n_continuing)."""
    per_shard = [time_chunks(shard, chunk_length) for shard in shards]
    n_chunks = max(len(chunks) for chunks in per_shard)
    return [
        [chunks[k] for chunks in per_shard if k < len(chunks)]
        for k in range(n_chunks)
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
        One entry per epoch: ``epoch``, ``loss`` (mean over its sequences),
        ``learning_rate`` and ``seconds``.
    """
    with compute_environment(options.n_threads) as executor:
        return _train(flat_params, shapes, net_shape, sequences, lengths, targets, loss,
                      options, rng, backend, executor)


def _train(flat_params, shapes, net_shape, sequences, lengths, targets, loss, options,
           rng, backend, executor):
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
    batches = [_chunked(pack_shards(sequences, lengths, order), options.sequence_length)
               for order in batch_orders]
    max_shards = max(len(chunk) for batch in batches for chunk in batch)
    shard_flat_grads = [np.zeros_like(flat_params) for _ in range(max_shards)]
    shard_grads = [unflatten(buffer, shapes) for buffer in shard_flat_grads]
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
            carried = None
            for chunk in batches[batch_index]:
                shards = [shard for shard, _ in chunk]
                n_continuing = [n for _, n in chunk]
                h0 = c0 = None
                if carried is not None:
                    h0 = [h[:, :shard.size] for h, shard in zip(carried[0], shards)]
                    c0 = [c[:, :shard.size] for c, shard in zip(carried[1], shards)]
                masks = _dropout_masks(rng, net_shape, shards, options.dropout,
                                       flat_params.dtype)
                forward = network_forward(params, net_shape, shards, backend,
                                          dropout_masks=masks, h0=h0, c0=c0, executor=executor)
                carried = ([f.h_n[:, :n] for f, n in zip(forward, n_continuing)],
                           [f.c_n[:, :n] for f, n in zip(forward, n_continuing)])
                # The loss of a sequence is read where it ends; chunks in
                # which none ends have nothing to learn from.
                features = np.concatenate([f.final_hidden[n:] for f, n in zip(forward, n_continuing)])
                if len(features) == 0:
                    continue
                ending = np.concatenate([s.order[n:] for s, n in zip(shards, n_continuing)])
                outputs = _head_forward(params, features)
                value, d_outputs = loss(outputs, targets[ending])
                if not np.isfinite(value):
                    raise FloatingPointError(
                        f"The training loss became {value} at epoch {epoch}; training "
                        "stopped. Lower learning_rate, set gradient_threshold, or "
                        "normalise the inputs."
                    )
                d_features = d_outputs @ params["head.weight"]
                d_final_hidden, start_row = [], 0
                for f, n in zip(forward, n_continuing):
                    d_shard = np.zeros_like(f.final_hidden)
                    n_ending = d_shard.shape[0] - n
                    d_shard[n:] = d_features[start_row:start_row + n_ending]
                    d_final_hidden.append(d_shard)
                    start_row += n_ending
                network_backward(params, shard_grads[:len(shards)], net_shape, shards, backend,
                                 forward, d_final_hidden=d_final_hidden, dropout_masks=masks,
                                 executor=executor)
                # Shard gradients summed in a fixed order: reproducible.
                flat_grads[:] = shard_flat_grads[0]
                for buffer in shard_flat_grads[1:len(shards)]:
                    flat_grads += buffer
                grads["head.weight"][:] = d_outputs.T @ features
                grads["head.bias"][:] = d_outputs.sum(axis=0)
                if options.gradient_threshold is not None:
                    clip_gradients(flat_grads, grads, options.gradient_threshold,
                                   options.gradient_threshold_method)
                optimizer.step(flat_params, flat_grads)
                epoch_loss += value * len(ending)
        epoch_loss /= len(sequences)
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch, "loss": epoch_loss,
                        "learning_rate": options.learning_rate, "seconds": seconds})
        if options.verbose:
            print(f"epoch {epoch:4d}  loss {epoch_loss:.6f}  ({seconds:.3f} s)")
    return history


def predict_outputs(flat_params, shapes, net_shape, sequences, lengths, backend, n_threads=1):
    """Output-layer values for every sequence, in the order given.

    Parameters
    ----------
    flat_params : ndarray of shape (n_parameters,)
    shapes : list of (str, tuple)
    net_shape : NetworkShape
    sequences : list of ndarray of shape (T_i, n_features)
    lengths : ndarray of shape (n_sequences,), int64
    backend : Backend
    n_threads : int, default=1

    Returns
    -------
    outputs : ndarray of shape (n_sequences, n_outputs)
    """
    params = unflatten(flat_params, shapes)
    n_outputs = params["head.bias"].shape[0]
    outputs = np.empty((len(sequences), n_outputs), dtype=flat_params.dtype)
    with compute_environment(n_threads) as executor:
        for order in length_sorted_batches(lengths, PREDICT_BATCH_SIZE):
            shards = pack_shards(sequences, lengths, order)
            forward = network_forward(params, net_shape, shards, backend, executor=executor)
            for shard, result in zip(shards, forward):
                outputs[shard.order] = _head_forward(params, result.final_hidden)
    return outputs


def warm_up(backend, dtype):
    """Compile (or load from numba's cache) the kernels for ``dtype``.

    Runs one forward and backward pass of a tiny network, so that the one-off
    cost of making the kernels ready is paid, and can be measured, apart
    from any real work. Variants (projections, activations) are arguments of
    the same compiled kernels, so one call per dtype covers them all.

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
        forward = network_forward(params, net_shape, [batch], backend)
        network_backward(params, [grads], net_shape, [batch], backend, forward,
                         d_final_hidden=[np.ones_like(forward[0].final_hidden)])


def effective_n_threads(n_jobs):
    """Threads for an ``n_jobs`` parameter, as scikit-learn counts them.

    None means every core fastlstm may use: the CPUs of this process (cgroup
    and affinity limits included, through joblib), capped by the
    ``OMP_NUM_THREADS`` limit that joblib and dask set inside their workers, so
    that parallel cross-validation does not oversubscribe the machine.
    Negative values count back from all cores (-1 = all, -2 = all but one).
    """
    n_cpus = joblib.cpu_count()
    if n_jobs is None:
        limit = os.environ.get("OMP_NUM_THREADS", "")
        n_threads = n_cpus
        if limit.isdigit() and int(limit) > 0:
            n_threads = min(n_threads, int(limit))
        return n_threads
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 has no meaning; use None, a positive or a negative integer.")
    if n_jobs < 0:
        return max(1, n_cpus + 1 + n_jobs)
    return int(n_jobs)
