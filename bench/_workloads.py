"""Workload definitions and the code that runs them, for fastlstm and PyTorch.

Shared by the pytest-benchmark suite (``test_workloads.py``), the
subprocess measurements (``_subprocess_worker.py``) and ``profile_step.py``.
Nothing here times anything: the callers do.

Every builder prepares its data, parameters and optimiser state once, and
exposes a ``step()`` (or ``__call__``) that does exactly the work that is
timed.
"""

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

DTYPE = np.float32


# --------------------------------------------------------------------------------------
# Workload shapes and FLOP counts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Shape of one benchmark workload (equal-length sequences)."""

    name: str
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    batch_size: int
    n_steps: int
    task: str  # "classification" or "regression"
    n_outputs: int

    @property
    def n_directions(self):
        return 2 if self.bidirectional else 1

    def forward_flops(self, total_steps=None):
        """FLOPs of the recurrent layers' forward pass over the batch."""
        if total_steps is None:
            total_steps = self.batch_size * self.n_steps
        return lstm_forward_flops(self.input_size, self.hidden_size, self.num_layers,
                                  self.bidirectional, total_steps)

    def train_flops(self, total_steps=None):
        return TRAIN_FLOP_FACTOR * self.forward_flops(total_steps)


# Forward, plus backward counted as twice the forward (dX/dh and dW/dR GEMMs).
TRAIN_FLOP_FACTOR = 3


def lstm_forward_flops(input_size, hidden_size, num_layers, bidirectional, total_steps):
    """2 * 4H * (I + H) FLOPs per step, per sequence, per direction, per layer.

    ``I`` is the layer's own input size (the previous layer's output size
    for layers after the first); ``total_steps`` is the sum of the lengths of
    the sequences (batch size x T for equal lengths). The output layer and the
    elementwise gate arithmetic are not counted.
    """
    n_directions = 2 if bidirectional else 1
    per_step = 0
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden_size * n_directions
        per_step += 2 * 4 * hidden_size * (layer_input + hidden_size) * n_directions
    return int(per_step) * int(total_steps)


W1 = Spec("W1", input_size=12, hidden_size=100, num_layers=1, bidirectional=True,
          batch_size=27, n_steps=20, task="classification", n_outputs=9)
W2 = Spec("W2", input_size=28, hidden_size=64, num_layers=1, bidirectional=False,
          batch_size=64, n_steps=28, task="classification", n_outputs=10)
W3 = Spec("W3", input_size=32, hidden_size=256, num_layers=2, bidirectional=False,
          batch_size=128, n_steps=100, task="regression", n_outputs=1)
W4 = Spec("W4", input_size=8, hidden_size=128, num_layers=1, bidirectional=False,
          batch_size=1, n_steps=1, task="regression", n_outputs=1)
W4_LONG_STEPS = 1000
# Closed-loop forecasting: W4's network predicting its own 8 inputs, reading
# an observed stretch of one series, then feeding each prediction back.
W4_FORECAST = Spec("W4-forecast", input_size=8, hidden_size=128, num_layers=1,
                   bidirectional=False, batch_size=1, n_steps=20, task="regression",
                   n_outputs=8)
W4_FORECAST_STEPS = 100

SPECS = {spec.name: spec for spec in (W1, W2, W3, W4)}


def make_data(spec, seed=0):
    """Random inputs (batch, T, I) and targets for a workload."""
    rng = np.random.RandomState(seed)
    X = rng.standard_normal((spec.batch_size, spec.n_steps, spec.input_size)).astype(DTYPE)
    if spec.task == "classification":
        # Every class present, so that a fitted classifier has them all.
        y = np.arange(spec.batch_size) % spec.n_outputs
        rng.shuffle(y)
    else:
        y = rng.standard_normal((spec.batch_size, spec.n_outputs)).astype(DTYPE)
    return X, y


# --------------------------------------------------------------------------------------
# fastlstm
# --------------------------------------------------------------------------------------


def fastlstm_estimator(spec, **params):
    """The estimator a user would build for the workload (defaults otherwise)."""
    from fastlstm import LSTMClassifier, LSTMRegressor

    cls = LSTMClassifier if spec.task == "classification" else LSTMRegressor
    return cls(hidden_size=spec.hidden_size, num_layers=spec.num_layers,
               bidirectional=spec.bidirectional, batch_size=spec.batch_size, **params)


class FastlstmTrainStep:
    """One ``Trainer._step`` on a pre-packed mini-batch, as ``fit`` runs it.

    The trainer is built from the estimator's defaults (optimiser, L2
    regularisation, initialisers, backend, ``n_jobs``); the batch is sorted,
    packed and sharded once here, as ``Trainer.prepare`` does once per fit.
    Use as a context manager: the compute environment (BLAS limits,
    flush-to-zero, thread pool) is entered once, as ``run_epochs`` does for
    all the epochs of a fit.
    """

    def __init__(self, spec, *, n_jobs=None, seed=0, backend=None):
        from fastlstm._backends import get_backend
        from fastlstm._bucketing import length_sorted_batches
        from fastlstm._trainer import Targets, Trainer, pack_shards
        from fastlstm._weights import init_parameters

        params = {} if backend is None else {"backend": backend}
        estimator = fastlstm_estimator(spec, n_jobs=n_jobs, **params)
        X, y = make_data(spec, seed)
        self.spec = spec
        self.sequences = [np.ascontiguousarray(x) for x in X]
        self.lengths = np.full(spec.batch_size, spec.n_steps, dtype=np.int64)
        if spec.task == "classification":
            values = y.astype(np.intp)
        else:
            values = y.reshape(len(y), -1).astype(DTYPE)
        self.targets = Targets(values, np.ones(spec.batch_size, dtype=DTYPE))
        self.rng = np.random.RandomState(seed)
        self.shapes = estimator._parameter_shapes(spec.input_size, spec.n_outputs)
        self.flat_params = init_parameters(
            self.shapes, self.rng, np.dtype(DTYPE),
            input_weights_initializer=estimator.input_weights_initializer,
            recurrent_weights_initializer=estimator.recurrent_weights_initializer,
            bias_initializer=estimator.bias_initializer,
        )
        self.net_shape = estimator._network_shape()
        self.options = estimator._training_options()
        self.backend = get_backend(estimator.backend)
        self.trainer = Trainer(self.flat_params, self.shapes, self.net_shape, estimator._loss(),
                               self.options, self.backend)
        order = length_sorted_batches(self.lengths, spec.batch_size)[0]
        self.order = order
        self.chunk = [(shard, 0) for shard in pack_shards(self.sequences, self.lengths, order)]
        self.executor = None
        self._stack = None

    @property
    def n_threads(self):
        return self.options.n_threads

    def __enter__(self):
        from fastlstm._trainer import compute_environment

        self._stack = ExitStack()
        self.executor = self._stack.enter_context(
            compute_environment(self.options.n_threads, fit=True))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self._stack = self.executor = None
        return False

    def step(self):
        return self.trainer._step(self.chunk, None, self.targets, self.rng, self.executor)


class FastlstmDeviceTrainStep(FastlstmTrainStep):
    """One step of the device-resident CUDA trainer (``backend="cuda"``) on the
    workload's batch, uploaded once, as ``fit`` uploads its batches once.

    The step returns the loss, a one-value copy to the host, so the timed call
    includes waiting for the GPU to finish.
    """

    def __init__(self, spec, *, seed=0):
        from fastlstm._cuda_training import DeviceTrainer

        super().__init__(spec, seed=seed, backend="cuda")
        self.trainer = DeviceTrainer(self.flat_params, self.shapes, self.net_shape,
                                     self.trainer.loss, self.options, self.backend)
        self.trainer._params.copy_to_device(self.flat_params)
        (self.batch,) = self.trainer._upload(self.sequences, self.lengths, self.targets,
                                             np.random.RandomState(seed))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def step(self):
        return self.trainer._device_step(self.batch)


class FastlstmInference:
    """``network_outputs`` on the workload's batch (what ``predict`` runs, minus
    input checking and scaling), with the estimator's default threads."""

    def __init__(self, spec, *, n_jobs=None, seed=0, backend=None):
        from fastlstm._trainer import effective_n_threads

        self.train = FastlstmTrainStep(spec, n_jobs=n_jobs, seed=seed, backend=backend)
        self.n_threads = effective_n_threads(n_jobs)

    def __call__(self):
        from fastlstm._trainer import network_outputs

        t = self.train
        return network_outputs(t.trainer.params, t.net_shape, t.sequences, t.lengths,
                               t.backend, per_step=False, n_threads=self.n_threads)


def fitted_fastlstm_estimator(spec, *, seed=0, per_step=False, n_sequences=None, n_steps=None,
                              **params):
    """A quickly fitted estimator of the workload's architecture.

    One epoch on random data: the weights do not matter for timing, only
    that the estimator is fitted.
    """
    n_sequences = n_sequences or max(spec.batch_size, spec.n_outputs)
    n_steps = n_steps or spec.n_steps
    rng = np.random.RandomState(seed)
    X = rng.standard_normal((n_sequences, n_steps, spec.input_size)).astype(DTYPE)
    if per_step:
        shape = (n_steps,) if spec.n_outputs == 1 else (n_steps, spec.n_outputs)
        y = [rng.standard_normal(shape).astype(DTYPE) for _ in range(n_sequences)]
    elif spec.task == "classification":
        y = np.arange(n_sequences) % spec.n_outputs
    else:
        y = rng.standard_normal(n_sequences).astype(DTYPE)
    estimator = fastlstm_estimator(spec, max_epochs=1, random_state=seed, **params)
    return estimator.fit(list(X), y)


# --------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------


def torch_model(spec, device="cpu", seed=0):
    """``nn.LSTM`` (time-major, torch's default) and a linear layer on ``h_n``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(spec.input_size, spec.hidden_size, num_layers=spec.num_layers,
                                bidirectional=spec.bidirectional)
            self.head = nn.Linear(spec.hidden_size * spec.n_directions, spec.n_outputs)

        def forward(self, x):
            _, (h_n, _) = self.lstm(x)
            if spec.bidirectional:
                features = torch.cat([h_n[-2], h_n[-1]], dim=1)
            else:
                features = h_n[-1]
            return self.head(features)

    return Model().to(device)


def _sync(device):
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class TorchTrainStep:
    """zero_grad, forward on the padded (here: equal-length) batch, loss,
    backward, Adam step: the standard PyTorch training loop body."""

    def __init__(self, spec, *, device="cpu", seed=0, fused_adam=False):
        import torch

        self.device = device
        self.model = torch_model(spec, device, seed)
        X, y = make_data(spec, seed)
        self.X = torch.as_tensor(np.ascontiguousarray(X.transpose(1, 0, 2)), device=device)
        if spec.task == "classification":
            self.y = torch.as_tensor(y, dtype=torch.long, device=device)
            self.loss_fn = torch.nn.CrossEntropyLoss()
        else:
            self.y = torch.as_tensor(y, device=device)
            self.loss_fn = torch.nn.MSELoss()
        kwargs = {"fused": True} if fused_adam else {}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, **kwargs)

    def step(self):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.X), self.y)
        loss.backward()
        self.optimizer.step()
        _sync(self.device)
        return loss


class TorchInference:
    def __init__(self, spec, *, device="cpu", seed=0):
        import torch

        self.device = device
        self.model = torch_model(spec, device, seed).eval()
        X, _ = make_data(spec, seed)
        self.X = torch.as_tensor(np.ascontiguousarray(X.transpose(1, 0, 2)), device=device)

    def __call__(self):
        import torch

        with torch.no_grad():
            out = self.model(self.X)
        _sync(self.device)
        return out


class TorchStreamingStep:
    """W4: one ``nn.LSTMCell`` step and the linear head, state carried."""

    def __init__(self, spec, *, device="cpu", seed=0):
        import torch

        torch.manual_seed(seed)
        self.device = device
        self.cell = torch.nn.LSTMCell(spec.input_size, spec.hidden_size).to(device).eval()
        self.head = torch.nn.Linear(spec.hidden_size, spec.n_outputs).to(device).eval()
        rng = np.random.RandomState(seed)
        self.x = torch.as_tensor(rng.standard_normal((1, spec.input_size)).astype(DTYPE),
                                 device=device)
        self.h = torch.zeros(1, spec.hidden_size, device=device)
        self.c = torch.zeros(1, spec.hidden_size, device=device)

    def __call__(self):
        import torch

        with torch.no_grad():
            self.h, self.c = self.cell(self.x, (self.h, self.c))
            out = self.head(self.h)
        _sync(self.device)
        return out


class TorchClosedLoopForecast:
    """W4-forecast: ``nn.LSTM`` reads the observed steps, then ``nn.LSTMCell``
    (the same weights) and the head predict each next input from the last."""

    def __init__(self, spec, n_forecast, *, device="cpu", seed=0):
        import torch

        torch.manual_seed(seed)
        self.device, self.n_forecast = device, n_forecast
        self.lstm = torch.nn.LSTM(spec.input_size, spec.hidden_size).to(device).eval()
        self.cell = torch.nn.LSTMCell(spec.input_size, spec.hidden_size).to(device).eval()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(self.lstm, f"{name}_l0"))
        self.head = torch.nn.Linear(spec.hidden_size, spec.n_outputs).to(device).eval()
        rng = np.random.RandomState(seed)
        self.x = torch.as_tensor(
            rng.standard_normal((spec.n_steps, 1, spec.input_size)).astype(DTYPE),
            device=device)

    def __call__(self):
        import torch

        with torch.no_grad():
            out, (h, c) = self.lstm(self.x)
            h, c = h[0], c[0]
            y = self.head(out[-1])
            steps = [y]
            for _ in range(self.n_forecast - 1):
                h, c = self.cell(y, (h, c))
                y = self.head(h)
                steps.append(y)
            forecast = torch.stack(steps, dim=1)
        _sync(self.device)
        return forecast


class TorchSequenceInference:
    """W4 long: ``nn.LSTM`` over one (T, 1, I) sequence, head on every step."""

    def __init__(self, spec, n_steps, *, device="cpu", seed=0):
        import torch

        torch.manual_seed(seed)
        self.device = device
        self.lstm = torch.nn.LSTM(spec.input_size, spec.hidden_size).to(device).eval()
        self.head = torch.nn.Linear(spec.hidden_size, spec.n_outputs).to(device).eval()
        rng = np.random.RandomState(seed)
        self.x = torch.as_tensor(
            rng.standard_normal((n_steps, 1, spec.input_size)).astype(DTYPE), device=device)

    def __call__(self):
        import torch

        with torch.no_grad():
            out, _ = self.lstm(self.x)
            y = self.head(out)
        _sync(self.device)
        return y


# --------------------------------------------------------------------------------------
# Japanese Vowels, the MATLAB recipe end to end
# --------------------------------------------------------------------------------------

JV_PARAMS = {"hidden_size": 100, "bidirectional": True, "batch_size": 27, "learning_rate": 1e-3,
             "gradient_threshold": 1.0, "l2_regularization": 1e-4}


def japanese_vowels():
    from fastlstm.datasets import load_japanese_vowels

    return load_japanese_vowels()


def fastlstm_jv_fit(X_train, y_train, epochs, seed=0, backend="auto"):
    """fastlstm's fit() with the MATLAB recipe; returns the fitted classifier."""
    from fastlstm import LSTMClassifier

    clf = LSTMClassifier(max_epochs=epochs, random_state=seed, backend=backend, **JV_PARAMS)
    return clf.fit(X_train, y_train)


def torch_jv_fit(X_train, y_train, epochs, *, packed, device="cpu", seed=0, deadline_s=None):
    """The same recipe in PyTorch: z-score inputs, length-sorted batches of 27,
    Adam 1e-3 with L2 1e-4, per-tensor gradient-norm clipping at 1 (MATLAB's
    "l2norm" method), batch order shuffled every epoch.

    ``packed=False``: plain zero-padded tensors through ``nn.LSTM`` (oneDNN);
    the forward direction's final state is read from the output at each
    sequence's true last step (exact), the reverse direction's from the output
    at step 0 (it has read the padding first: not exact).
    ``packed=True``: ``pack_padded_sequence``, ``h_n`` of both directions
    (exact, but PyTorch leaves oneDNN when lengths differ).

    ``deadline_s``: stop after the epoch that ends past this many seconds
    (a time budget for loaded machines); the caller extrapolates.

    Returns
    -------
    predict : callable
        ``predict(X) -> labels``.
    epoch_seconds : list of float
        Duration of every epoch run (its length is the number of epochs done).
    """
    import time

    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    hidden, batch_size = JV_PARAMS["hidden_size"], JV_PARAMS["batch_size"]
    classes, codes = np.unique(y_train, return_inverse=True)
    stacked = np.concatenate(X_train)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    std[std == 0] = 1

    def batches(sequences, labels):
        lengths = np.array([len(s) for s in sequences])
        order = np.argsort(-lengths, kind="stable")
        out = []
        for first in range(0, len(order), batch_size):
            idx = order[first:first + batch_size]
            seqs = [torch.as_tensor((sequences[i] - mean) / std, dtype=torch.float32)
                    for i in idx]
            padded = pad_sequence(seqs).to(device)  # (T, B, I), time-major
            lens = torch.as_tensor(lengths[idx])
            target = None if labels is None else torch.as_tensor(labels[idx], device=device)
            out.append((padded, lens, target, idx))
        return out

    lstm = nn.LSTM(X_train[0].shape[1], hidden, bidirectional=True).to(device)
    head = nn.Linear(2 * hidden, len(classes)).to(device)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=JV_PARAMS["learning_rate"],
                                 weight_decay=JV_PARAMS["l2_regularization"])
    loss_fn = nn.CrossEntropyLoss()

    def features(padded, lens):
        if packed:
            packed_input = pack_padded_sequence(padded, lens, enforce_sorted=True)
            _, (h_n, _) = lstm(packed_input)
            return torch.cat([h_n[-2], h_n[-1]], dim=1)
        output, _ = lstm(padded)
        ends = (lens - 1).to(padded.device)
        rows = torch.arange(padded.shape[1], device=padded.device)
        forward_final = output[ends, rows, :hidden]
        reverse_final = output[0, :, hidden:]
        return torch.cat([forward_final, reverse_final], dim=1)

    train_batches = batches(X_train, codes)
    epoch_seconds = []
    for _ in range(epochs):
        epoch_start = time.perf_counter()
        for index in rng.permutation(len(train_batches)):
            padded, lens, target, _ = train_batches[index]
            optimizer.zero_grad()
            loss = loss_fn(head(features(padded, lens)), target)
            loss.backward()
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, JV_PARAMS["gradient_threshold"])
            optimizer.step()
        _sync(device)
        epoch_seconds.append(time.perf_counter() - epoch_start)
        if deadline_s is not None and time.perf_counter() - start > deadline_s:
            break

    def predict(X):
        predicted = np.empty(len(X), dtype=classes.dtype)
        with torch.no_grad():
            for padded, lens, _, idx in batches(X, None):
                predicted[idx] = classes[head(features(padded, lens)).argmax(dim=1).cpu().numpy()]
        return predicted

    return predict, epoch_seconds


def extrapolate(total_seconds, epoch_seconds, target_epochs):
    """Time of ``target_epochs`` epochs from a run that did ``len(epoch_seconds)``.

    The run's whole time (set-up and first epoch included) plus the median
    of its later epochs for each epoch it did not do.
    """
    done = len(epoch_seconds)
    if done >= target_epochs:
        return total_seconds
    steady = float(np.median(epoch_seconds[1:] if done > 1 else epoch_seconds))
    return total_seconds + steady * (target_epochs - done)
