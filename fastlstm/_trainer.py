"""The training loop and batched inference, shared by every estimator.

The estimators decide what the output layer means (classes or values) by the
loss they pass in; everything else, bucketing, packing, sharding, the
network, the output layer, clipping, regularisation and the optimiser,
happens here, on arrays only.

Targets come in one of two layouts. Sequence-to-one: one target row per
sequence, compared with the output at the sequence's end. Sequence-to-
sequence: one target row per time step, compared with the output at every
step. Both go through the same weighted loss.

Reproducibility: the mini-batches, their shards, the dropout masks and the
order in which shard gradients are summed depend only on the data, the
parameters and the random state, never on the number of threads, so a seed
gives bit-identical models with any ``n_jobs``.
"""

import functools
import itertools
import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import joblib
import numpy as np
from threadpoolctl import ThreadpoolController

from ._bucketing import length_sorted_batches, pack_batch, shard_orders, time_chunks
from ._fpenv import enable_flush_to_zero, restore
from ._losses import head_loss_and_gradients
from ._network import Workspace, network_backward, network_forward
from ._optim import add_l2_regularization, clip_gradients, learning_rate_at, make_optimizer
from ._pool import FIT_SPIN_NS, SpinPool
from ._weights import unflatten

# Inference needs no gradients, so bigger batches only amortise overhead.
PREDICT_BATCH_SIZE = 256


@dataclass(frozen=True)
class TrainingOptions:
    """The optimisation settings of one fit, checked by the estimator.

    ``sequence_length`` is None to train on whole sequences, "shortest" to
    cut every mini-batch to its shortest sequence, or the chunk length of
    truncated backpropagation through time.
    """

    batch_size: int
    learning_rate: float
    learning_rate_schedule: str
    learning_rate_drop_factor: float
    learning_rate_drop_period: int
    optimizer: str
    momentum: float
    beta1: float
    beta2: float
    epsilon: float
    squared_gradient_decay_factor: float
    gradient_threshold: float | None
    gradient_threshold_method: str
    l2_regularization: float
    shuffle: str
    bucketing: bool
    dropout: float
    sequence_length: object
    early_stopping: bool
    n_iter_no_change: int
    n_threads: int
    verbose: int


@dataclass
class Targets:
    """What the outputs are compared with.

    Attributes
    ----------
    values : ndarray of shape (n_rows, ...)
        Encoded targets, as the loss expects them: one row per sequence, or
        one per time step (all steps of sequence 0, then of sequence 1, ...).
    weights : ndarray of shape (n_rows,)
        Weight of every row in the loss (sample and class weights).
    step_starts : ndarray of shape (n_sequences,), int64, or None
        Per-step targets: the row of each sequence's first step. None for
        one target per sequence.
    """

    values: np.ndarray
    weights: np.ndarray
    step_starts: np.ndarray | None = None

    @property
    def per_step(self):
        return self.step_starts is not None


_blas_libraries_found = None
_executors = {}
_runtime_lock = threading.Lock()


def _blas_libraries():
    """This process's BLAS libraries, as threadpoolctl controllers, found once.

    Finding them (``ThreadpoolController()`` scans every loaded library)
    takes 3.3 ms here, more than a whole W1 inference. SciPy's BLAS, which
    numba's ``np.dot`` calls, is loaded first so that the scan sees it.
    """
    global _blas_libraries_found
    if _blas_libraries_found is None:
        with _runtime_lock:
            if _blas_libraries_found is None:
                import scipy.linalg.cython_blas  # noqa: F401 - loads SciPy's OpenBLAS

                _blas_libraries_found = tuple(
                    ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas_libraries_found


def _executor(n_threads):
    """A persistent pool of ``n_threads - 1`` worker threads (with flush-to-zero set).

    The calling thread is the n-th: it runs tasks too (``SpinPool.run``).
    Starting threads for every call would cost more than small predictions.
    """
    with _runtime_lock:
        if n_threads not in _executors:
            _executors[n_threads] = SpinPool(n_threads - 1, initializer=enable_flush_to_zero)
        return _executors[n_threads]


def _forget_executors():
    # A child process made by fork() has only the forking thread: the pools'
    # workers are not there, and it makes its own pools when it needs them.
    global _runtime_lock
    _executors.clear()
    _runtime_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executors)


@contextmanager
def compute_environment(n_threads=1, *, fit=False):
    """The thread settings fastlstm computes under, restored on exit.

    Yields an executor for fastlstm's own parallel tasks (None with one
    thread). With ``fit``, its workers spin between phases for up to
    ``FIT_SPIN_NS`` rather than ``SPIN_NS`` (see ``_pool``).

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
        with single_threaded_blas():
            if n_threads <= 1:
                yield None
            elif fit:
                with _executor(n_threads).spinning(FIT_SPIN_NS) as executor:
                    yield executor
            else:
                yield _executor(n_threads)
    finally:
        restore(previous)


def single_threaded_blas():
    """A context in which BLAS runs on one thread (see :func:`compute_environment`)."""
    return _SingleThreadedBlas(_blas_libraries())


class _SingleThreadedBlas:
    """Set every BLAS library to one thread, and back on exit.

    What ``ThreadpoolController.limit(limits=1, user_api="blas")`` does, on
    the libraries found once: its bookkeeping cost 9 us of every prediction
    (a W1 ``predict_proba`` takes about 0.6 ms), this one ctypes call per
    library and one more per library not already on one thread.
    """

    def __init__(self, libraries):
        self._libraries = libraries
        self._restore = []

    def __enter__(self):
        for library in self._libraries:
            n_threads = library.get_num_threads()
            if n_threads != 1:
                library.set_num_threads(1)
                self._restore.append((library, n_threads))
        return self

    def __exit__(self, *exc_info):
        for library, n_threads in reversed(self._restore):
            library.set_num_threads(n_threads)
        self._restore = []


@functools.lru_cache(maxsize=1)
def _cpu_count():
    # joblib reads the cgroup limits from files on every call; they do not
    # change within a process, and predict calls this for every batch.
    return joblib.cpu_count()


def effective_n_threads(n_jobs):
    """Threads for an ``n_jobs`` parameter, as scikit-learn counts them.

    None means every core fastlstm may use: the CPUs of this process (cgroup
    and affinity limits included, through joblib), capped by the
    ``OMP_NUM_THREADS`` limit that joblib and dask set inside their workers, so
    that parallel cross-validation does not oversubscribe the machine.
    Negative values count back from all cores (-1 = all, -2 = all but one).
    """
    n_cpus = _cpu_count()
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


def _head_forward(params, features):
    return features @ params["head.weight"].T + params["head.bias"]


def _joined(parts):
    """``np.concatenate(parts)``, without the copy when there is one part."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def split_rows(array, sizes):
    """``array`` cut into consecutive row blocks of ``sizes``; views, not copies."""
    # Slices rather than np.split, which took 28 us for two parts inside a W2
    # training step (5 us alone); these take 2-3 us.
    if len(sizes) == 1:
        return [array]
    ends = list(itertools.accumulate(sizes))
    return [array[start:end] for start, end in zip([0] + ends[:-1], ends)]


def pack_shards(sequences, lengths, order, *, max_length=None, step_starts=None):
    """Pack one mini-batch as its list of shards."""
    return [pack_batch(sequences, lengths, shard, max_length=max_length, step_starts=step_starts)
            for shard in shard_orders(order)]


def _chunked(shards, chunk_length):
    """Truncated-BPTT chunks of a sharded batch: list of [(shard, n_continuing)]."""
    per_shard = [time_chunks(shard, chunk_length) for shard in shards]
    n_chunks = max(len(chunks) for chunks in per_shard)
    return [[chunks[k] for chunks in per_shard if k < len(chunks)] for k in range(n_chunks)]


class Trainer:
    """Mini-batch training of a flat parameter vector, epoch by epoch.

    The trainer keeps the optimiser's state between calls of
    :meth:`run_epochs`, so that ``partial_fit`` continues where it stopped.

    Parameters
    ----------
    flat_params : ndarray of shape (n_parameters,)
        IN/OUT. Updated in place.
    shapes : list of (str, tuple)
    net_shape : NetworkShape
    loss : callable
        ``loss(outputs, values, weights) -> (value, d_outputs)``.
    options : TrainingOptions
    backend : Backend
    """

    def __init__(self, flat_params, shapes, net_shape, loss, options, backend):
        self.flat_params = flat_params
        self.shapes = shapes
        self.net_shape = net_shape
        self.loss = loss
        self.options = options
        self.backend = backend
        self.params = unflatten(flat_params, shapes)
        self.flat_grads = np.zeros_like(flat_params)
        self.grads = unflatten(self.flat_grads, shapes)
        # The step's activations and gradient buffers, kept from step to step.
        self._workspace = Workspace()
        # L2 regularisation acts on weights, not biases (as in MATLAB).
        self.weight_mask = np.concatenate([
            np.full(int(np.prod(shape)), name.startswith(("weight", "head.weight")))
            for name, shape in shapes
        ])
        self.optimizer = make_optimizer(
            options.optimizer, flat_params.size, flat_params.dtype, options.learning_rate,
            momentum=options.momentum, beta1=options.beta1, beta2=options.beta2,
            epsilon=options.epsilon,
            squared_gradient_decay_factor=options.squared_gradient_decay_factor,
        )
        self.epochs_done = 0
        self.iterations_done = 0
        self._shard_flat_grads = []
        self._shard_grad_views = []

    # -- data ------------------------------------------------------------------

    def prepare(self, sequences, lengths, targets, rng):
        """Cut, pack and shard the training data once for all its epochs.

        Returns
        -------
        batches : list of list of list of (PackedBatch, int)
            Per mini-batch, its truncated-BPTT chunks (one without
            truncation), each a list of (shard, sequences continuing).
        """
        options = self.options
        batches = []
        shuffle_rng = None if options.shuffle == "never" else rng
        for order in length_sorted_batches(lengths, options.batch_size, shuffle_rng,
                                           by_length=options.bucketing):
            max_length = int(lengths[order].min()) if options.sequence_length == "shortest" else None
            shards = pack_shards(sequences, lengths, order, max_length=max_length,
                                 step_starts=targets.step_starts)
            chunk_length = options.sequence_length if isinstance(options.sequence_length, int) else None
            batches.append(_chunked(shards, chunk_length))
        return batches

    def _shard_gradients(self, n_shards):
        """Per-shard gradient buffers (flat) and their named views, made once."""
        while len(self._shard_flat_grads) < n_shards:
            buffer = np.zeros_like(self.flat_params)
            self._shard_flat_grads.append(buffer)
            self._shard_grad_views.append(unflatten(buffer, self.shapes))
        return self._shard_flat_grads[:n_shards], self._shard_grad_views[:n_shards]

    # -- one update ----------------------------------------------------------------

    def _step(self, chunk, carried, targets, rng, executor):
        """Forward and backward through one chunk, then an optimiser step.

        Returns the chunk's loss, the number of target rows it covered and the
        states to carry into the next chunk.
        """
        params, net_shape, options = self.params, self.net_shape, self.options
        shards = [shard for shard, _ in chunk]
        n_continuing = [n for _, n in chunk]
        h0 = c0 = None
        if carried is not None:
            h0 = [h[:, :shard.size] for h, shard in zip(carried[0], shards)]
            c0 = [c[:, :shard.size] for c, shard in zip(carried[1], shards)]
        masks = None
        if options.dropout > 0 and net_shape.num_layers > 1:
            keep = 1.0 - options.dropout
            dtype = self.flat_params.dtype
            masks = [[(rng.uniform(size=(shard.X.shape[0], net_shape.n_features_out)) < keep)
                      .astype(dtype) / dtype.type(keep) for _ in range(net_shape.num_layers - 1)]
                     for shard in shards]
        forward = network_forward(params, net_shape, shards, self.backend, dropout_masks=masks,
                                  h0=h0, c0=c0, executor=executor, workspace=self._workspace,
                                  keep_outputs=targets.per_step)
        carried = ([f.h_n[:, :n] for f, n in zip(forward, n_continuing)],
                   [f.c_n[:, :n] for f, n in zip(forward, n_continuing)])
        if targets.per_step:
            features = _joined([f.outputs for f in forward])
            rows = _joined([shard.target_rows for shard in shards])
            sizes = [f.outputs.shape[0] for f in forward]
        else:
            # A sequence's target is compared with the output where it ends;
            # a chunk in which none ends has nothing to learn from.
            features = _joined([f.final_hidden[n:] for f, n in zip(forward, n_continuing)])
            rows = _joined([s.order[n:] for s, n in zip(shards, n_continuing)])
            sizes = [s.size - n for s, n in zip(shards, n_continuing)]
        if len(rows) == 0:
            return 0.0, 0, carried
        flat_grads, grads = self.flat_grads, self.grads
        if len(shards) == 1:
            # One shard writes its gradients where the optimiser reads them.
            shard_grads = [grads]
        else:
            shard_flat_grads, shard_grads = self._shard_gradients(len(shards))
        # The output layer's gradients go with the first shard: the others'
        # stay zero (network_backward writes only the recurrent entries), so
        # the sum below leaves them as they are.
        d_features = self._workspace.empty(("d_features",), features.shape, features.dtype)
        value = head_loss_and_gradients(
            self.loss, features, params["head.weight"], params["head.bias"], targets.values,
            targets.weights, rows, d_features, shard_grads[0]["head.weight"],
            shard_grads[0]["head.bias"])
        if value is None:  # no weight in the chunk's rows
            return 0.0, 0, carried
        if not math.isfinite(value):
            raise FloatingPointError(
                f"The training loss became {value} at epoch {self.epochs_done + 1}; training "
                "stopped. Lower learning_rate, set gradient_threshold, or normalise the inputs."
            )
        d_features = split_rows(d_features, sizes)
        if targets.per_step:
            backward_args = dict(d_outputs=d_features)
        else:
            d_final_hidden = []
            for f, n, d in zip(forward, n_continuing, d_features):
                if n > 0:  # sequences continuing into the next chunk get no gradient here
                    d = np.concatenate([np.zeros((n, d.shape[1]), d.dtype), d])
                d_final_hidden.append(d)
            backward_args = dict(d_final_hidden=d_final_hidden)
        network_backward(params, shard_grads, net_shape, shards, self.backend, forward,
                         dropout_masks=masks, executor=executor, input_gradients=False,
                         workspace=self._workspace, **backward_args)
        if len(shards) > 1:
            # Shard gradients summed in a fixed order: reproducible.
            flat_grads[:] = shard_flat_grads[0]
            for buffer in shard_flat_grads[1:]:
                flat_grads += buffer
        if options.gradient_threshold is None:
            # Nothing between the L2 term and the update: one pass for both.
            self.optimizer.regularised_step(self.flat_params, flat_grads,
                                            options.l2_regularization, self.weight_mask)
        else:
            if options.l2_regularization > 0:
                add_l2_regularization(flat_grads, self.flat_params, options.l2_regularization,
                                      self.weight_mask)
            clip_gradients(flat_grads, grads, options.gradient_threshold,
                           options.gradient_threshold_method)
            self.optimizer.step(self.flat_params, flat_grads)
        self.iterations_done += 1
        return value, len(rows), carried

    # -- epochs ----------------------------------------------------------------------

    def run_epochs(self, sequences, lengths, targets, n_epochs, rng, *, validate=None, log=None):
        """Train for up to ``n_epochs`` epochs.

        Parameters
        ----------
        sequences : list of ndarray of shape (T_i, n_features)
        lengths : ndarray of shape (n_sequences,), int64
        targets : Targets
        n_epochs : int
        rng : numpy.random.RandomState
        validate : callable, default=None
            ``validate() -> (loss, score)`` on held-out data after every epoch.
        log : TrainingLog, default=None
            Prints progress, as ``options.verbose`` asks.

        Returns
        -------
        history : list of dict
            Per epoch: ``epoch``, ``loss``, ``val_loss``, ``val_score``,
            ``learning_rate``, ``seconds``.
        """
        options = self.options
        batches = self.prepare(sequences, lengths, targets, rng)
        # Without bucketing, "every-epoch" shuffles the sequences themselves
        # into new batches; with it, the order of the length-sorted batches.
        rebatch = options.shuffle == "every-epoch" and not options.bucketing
        schedule = np.arange(len(batches))
        if options.shuffle == "once":
            schedule = rng.permutation(schedule)
        epochs = EpochRecord(self, validate, log)
        with compute_environment(options.n_threads, fit=True) as executor:
            for _ in range(n_epochs):
                epoch = self.epochs_done + 1
                start = time.perf_counter()
                self.optimizer.learning_rate = learning_rate_at(
                    epoch, options.learning_rate, options.learning_rate_schedule,
                    options.learning_rate_drop_factor, options.learning_rate_drop_period)
                if rebatch and epochs.history:  # the first epoch uses the batches above
                    batches = self.prepare(sequences, lengths, targets, rng)
                if options.shuffle == "every-epoch":
                    schedule = rng.permutation(len(batches))
                total_loss, total_rows = 0.0, 0
                for done, batch_index in enumerate(schedule, start=1):
                    carried = None
                    for chunk in batches[batch_index]:
                        value, n_rows, carried = self._step(chunk, carried, targets, rng, executor)
                        total_loss += value * n_rows
                        total_rows += n_rows
                    if log is not None:
                        log.progress(epoch, done, len(schedule))
                self.epochs_done = epoch
                if epochs.end(epoch, total_loss, total_rows, start):
                    break
        best = epochs.best()
        if best is not None:
            # Restore the weights of the best validation loss.
            self.flat_params[:] = best[0]
            self.optimizer.load_state_dict(best[1])
        return epochs.history


class EpochRecord:
    """The end of every epoch, for the host and the device trainers alike: the
    history entry, validation, the log line, and early stopping's bookkeeping.

    Parameters
    ----------
    trainer : Trainer or DeviceTrainer
        Read for ``options``, ``optimizer``, ``iterations_done`` and the host
        ``flat_params`` (kept as the best parameters so far).
    validate : callable or None
        ``validate() -> (loss, score)`` on the host parameters.
    log : TrainingLog or None
    before_validate : callable, default=None
        Called before ``validate`` (the device trainer copies its parameters
        to the host there).
    """

    def __init__(self, trainer, validate, log, before_validate=None):
        self.trainer = trainer
        self.validate = validate
        self.log = log
        self.before_validate = before_validate
        self.history = []
        self._best_loss, self._best, self._stale_epochs = np.inf, None, 0

    def end(self, epoch, total_loss, total_rows, start):
        """Record epoch ``epoch`` (started at ``start``, a perf_counter time).

        Returns
        -------
        stop : bool
            True when early stopping ends training here.
        """
        trainer = self.trainer
        entry = {"epoch": epoch, "loss": total_loss / max(total_rows, 1),
                 "val_loss": None, "val_score": None,
                 "learning_rate": trainer.optimizer.learning_rate}
        if self.validate is not None:
            if self.before_validate is not None:
                self.before_validate()
            entry["val_loss"], entry["val_score"] = self.validate()
        entry["seconds"] = time.perf_counter() - start
        self.history.append(entry)
        if self.log is not None:
            self.log.epoch(entry, trainer.iterations_done)
        if self.validate is None or not trainer.options.early_stopping:
            return False
        if entry["val_loss"] < self._best_loss:
            self._best_loss, self._stale_epochs = entry["val_loss"], 0
            self._best = (trainer.flat_params.copy(), trainer.optimizer.state_dict())
            return False
        self._stale_epochs += 1
        return self._stale_epochs >= trainer.options.n_iter_no_change

    def best(self):
        """(parameters, optimiser state) of the best validation loss, or None
        when early stopping did not run."""
        return self._best


class TrainingLog:
    """Progress display: one line per epoch (verbose >= 1), MATLAB's
    verbose table, and a progress bar inside each epoch (verbose >= 2)."""

    def __init__(self, verbose, stream=None):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self._started = time.perf_counter()
        self._header_done = False

    def progress(self, epoch, done, total):
        if self.verbose >= 2:
            width = 30
            filled = int(width * done / total)
            self.stream.write(f"\repoch {epoch:4d} [{'#' * filled}{'.' * (width - filled)}] "
                              f"{done}/{total}")
            self.stream.flush()

    def epoch(self, entry, iteration):
        if self.verbose < 1:
            return
        if self.verbose >= 2:
            self.stream.write("\n")  # keep the finished progress bar on its own line
        if not self._header_done:
            self.stream.write("| epoch | iteration | elapsed (s) | train loss | val loss "
                              "| val score | learning rate |\n")
            self._header_done = True

        def show(value, fmt):
            return format(value, fmt) if value is not None else "-"

        elapsed = time.perf_counter() - self._started
        self.stream.write(
            f"| {entry['epoch']:5d} | {iteration:9d} | {elapsed:11.2f} | "
            f"{entry['loss']:10.4f} | {show(entry['val_loss'], '8.4f'):>8} | "
            f"{show(entry['val_score'], '9.4f'):>9} | {entry['learning_rate']:13.3g} |\n"
        )
        self.stream.flush()


def network_outputs(params, net_shape, sequences, lengths, backend, *, per_step, n_threads=1,
                    h0=None, c0=None, return_states=False, input_transform=None):
    """Output-layer values of a trained network, in the order of ``sequences``.

    Parameters
    ----------
    params : dict of str to ndarray
        Parameters named as ``torch.nn.LSTM``'s state dict, C-contiguous,
        all of one float dtype (see ``_weights.checked_weights``).
    net_shape : NetworkShape
    sequences : list of ndarray of shape (T_i, n_features)
    lengths : ndarray of shape (n_sequences,), int64
    backend : Backend
    per_step : bool
        Outputs at every step (all steps of sequence 0, then sequence 1, ...)
        rather than one per sequence, at its end.
    n_threads : int, default=1
    h0, c0 : ndarray, default=None
        Initial states per sequence, shaped (num_layers * n_directions,
        n_sequences, size) as ``torch.nn.LSTM``'s; None means zeros.
    return_states : bool, default=False
        Also return the final states, shaped like ``h0`` and ``c0``.
    input_transform : callable, default=None
        Applied to each packed batch of input rows (an array of shape
        (n_rows, n_features)); its values replace them. For a per-feature
        normalisation: done on the packed copy, it spares a pass over the
        sequences and their concatenation (15 us of a W1 prediction).

    Returns
    -------
    outputs : ndarray of shape (n_sequences or sum of T_i, n_outputs)
    h_n, c_n : ndarray
        Only with ``return_states``.
    """
    n_outputs = params["head.bias"].shape[0]
    dtype = params["head.bias"].dtype
    n_rows = int(lengths.sum()) if per_step else len(sequences)
    outputs = np.empty((n_rows, n_outputs), dtype=dtype)
    if return_states:
        n_stack = net_shape.num_layers * net_shape.n_directions
        h_n = np.empty((n_stack, len(sequences), net_shape.state_size), dtype=dtype)
        c_n = np.empty((n_stack, len(sequences), net_shape.hidden_size), dtype=dtype)
    step_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if per_step else None
    # Batches of one call share their buffers: each batch's outputs are read
    # out before the next batch overwrites them. Calls share them too.
    workspace = _take_prediction_workspace()
    with compute_environment(n_threads) as executor:
        for order in length_sorted_batches(lengths, PREDICT_BATCH_SIZE):
            shards = pack_shards(sequences, lengths, order, step_starts=step_starts)
            if input_transform is not None:
                for shard in shards:  # packed copies, never the caller's arrays
                    shard.X[...] = input_transform(shard.X)
            initial_h = None if h0 is None else [h0[:, shard.order] for shard in shards]
            initial_c = None if c0 is None else [c0[:, shard.order] for shard in shards]
            forward = network_forward(params, net_shape, shards, backend, h0=initial_h,
                                      c0=initial_c, executor=executor, workspace=workspace,
                                      for_backward=False, keep_outputs=per_step)
            for shard, result in zip(shards, forward):
                if per_step:
                    outputs[shard.target_rows] = _head_forward(params, result.outputs)
                else:
                    outputs[shard.order] = _head_forward(params, result.final_hidden)
                if return_states:
                    h_n[:, shard.order] = result.h_n
                    c_n[:, shard.order] = result.c_n
    _keep_prediction_workspace(workspace)
    if return_states:
        return outputs, h_n, c_n
    return outputs


# Prediction buffers kept between calls, per thread, up to this size. A
# process whose allocator hands every call fresh pages from the operating
# system (glibc's mmap threshold decides, differently from one process to the
# next) page-faults on each of them: 970 faults per W1 prediction, 2.5 ms
# instead of 0.65 ms, in some processes and not others. Small predictions,
# where that matters, fit under the limit; a larger one returns its memory.
PREDICTION_WORKSPACE_BYTES = 64 * 2**20
_prediction_buffers = threading.local()


def _take_prediction_workspace():
    # Taken out while in use, so that a nested call (none today) gets its own.
    workspace = getattr(_prediction_buffers, "workspace", None)
    _prediction_buffers.workspace = None
    return workspace if workspace is not None else Workspace()


def _keep_prediction_workspace(workspace):
    if workspace.nbytes <= PREDICTION_WORKSPACE_BYTES:
        _prediction_buffers.workspace = workspace


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
