"""Cases for the device-resident CUDA trainer, run by tests/test_cuda_training.py.

Like ``cuda_kernel_cases.py``, this file runs in a fresh process with
NUMBA_ENABLE_CUDASIM=1 (numba's CUDA simulator) when there is no GPU, and
again without it on a GPU machine; its name does not match ``test_*.py`` so
that the main run does not collect it. Shapes stay tiny (6 sequences of
length <= 5, hidden 3, 1-3 epochs).
"""

import sys

import numpy as np
import pytest
from numba import config, cuda

from fastlstm._backends import get_backend
from fastlstm._cuda_training import DeviceTrainer
from fastlstm._losses import cross_entropy, mean_squared_error
from fastlstm._network import NetworkShape
from fastlstm._trainer import Targets, Trainer, TrainingOptions
from fastlstm._weights import init_parameters, parameter_shapes

SIMULATED = bool(config.ENABLE_CUDASIM)
if SIMULATED:
    sys.setswitchinterval(1e-4)  # see cuda_kernel_cases.py

LENGTHS = [3, 5, 1, 4, 2]
N_FEATURES, HIDDEN = 2, 3
# Host backend and tolerance per dtype. In the simulator the float64 device
# loop does the reference's operations in the reference's order, so they agree
# to rounding. A GPU contracts a * b + c into fused multiply-adds: float64
# then agrees to rounding per operation, not in the last bits of every one,
# hence the looser bound there. numba's float32 kernels sum in other orders.
HOST = {np.float64: ("reference", 1e-9 if SIMULATED else 1e-6), np.float32: ("numba", 1e-4)}


def options(**changes):
    values = {
        "batch_size": 2, "learning_rate": 0.05, "learning_rate_schedule": "piecewise",
        "learning_rate_drop_factor": 0.5, "learning_rate_drop_period": 1, "optimizer": "adam",
        "momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
        "squared_gradient_decay_factor": 0.9, "gradient_threshold": None,
        "gradient_threshold_method": "l2norm", "l2_regularization": 0.0, "shuffle": "every-epoch",
        "bucketing": True, "dropout": 0.0, "sequence_length": None, "early_stopping": False,
        "n_iter_no_change": 5, "n_threads": 1, "verbose": 0,
    }
    values.update(changes)
    return TrainingOptions(**values)


def problem(dtype, classifier, bidirectional, num_layers, seed=0):
    rng = np.random.default_rng(seed)
    sequences = [rng.standard_normal((n, N_FEATURES)).astype(dtype) for n in LENGTHS]
    lengths = np.array(LENGTHS, dtype=np.int64)
    weights = rng.uniform(0.5, 2.0, size=len(LENGTHS)).astype(dtype)
    if classifier:
        n_outputs = 3
        values = rng.integers(0, n_outputs, size=len(LENGTHS))
    else:
        n_outputs = 2
        values = rng.standard_normal((len(LENGTHS), n_outputs)).astype(dtype)
    shapes = parameter_shapes(N_FEATURES, HIDDEN, num_layers, bidirectional, n_outputs)
    flat = init_parameters(shapes, np.random.RandomState(seed), dtype)
    net_shape = NetworkShape(hidden_size=HIDDEN, num_layers=num_layers,
                             bidirectional=bidirectional)
    loss = cross_entropy if classifier else mean_squared_error
    return sequences, lengths, Targets(values, weights), shapes, flat, net_shape, loss


def train(trainer_class, backend_name, dtype, classifier, bidirectional, num_layers,
          n_epochs=2, **changes):
    sequences, lengths, targets, shapes, flat, net_shape, loss = problem(
        dtype, classifier, bidirectional, num_layers)
    trainer = trainer_class(flat, shapes, net_shape, loss, options(**changes),
                            get_backend(backend_name))
    history = trainer.run_epochs(sequences, lengths, targets, n_epochs, np.random.RandomState(1))
    return trainer, history


# (dtype, classifier, bidirectional, num_layers, clipping method or None, l2)
CASES = [
    (np.float64, True, False, 1, None, 0.0),
    (np.float64, False, True, 1, "l2norm", 0.01),
    (np.float64, True, True, 2, "global-l2norm", 0.0),
    (np.float64, False, False, 2, "absolute-value", 0.01),
    (np.float32, True, True, 1, "l2norm", 0.01),
    (np.float32, False, False, 1, None, 0.0),
    (np.float32, True, False, 2, "absolute-value", 0.0),
    (np.float32, False, True, 1, "global-l2norm", 0.01),
]


def case_id(case):
    dtype, classifier, bidirectional, num_layers, clip, l2 = case
    return (f"{dtype.__name__}-{'clf' if classifier else 'reg'}-"
            f"{'bi' if bidirectional else 'uni'}{num_layers}-{clip or 'noclip'}-l2={l2}")


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_device_trainer_matches_host_trainer(case):
    dtype, classifier, bidirectional, num_layers, clip, l2 = case
    host_backend, tolerance = HOST[dtype]
    # Thresholds small enough that clipping acts on these gradients.
    threshold = {None: None, "l2norm": 0.05, "global-l2norm": 0.1, "absolute-value": 0.01}[clip]
    changes = {"gradient_threshold": threshold, "l2_regularization": l2}
    if dtype == np.float32:
        # Adam's m / sqrt(v) turns float32 rounding in near-zero gradients
        # into whole learning-rate steps; a smaller rate keeps 1e-4 meaningful.
        changes["learning_rate"] = 0.01
    if clip is not None:
        changes["gradient_threshold_method"] = clip
    host, host_history = train(Trainer, host_backend, dtype, classifier, bidirectional,
                               num_layers, **changes)
    device, device_history = train(DeviceTrainer, "cuda", dtype, classifier, bidirectional,
                                   num_layers, **changes)
    assert device.flat_params.dtype == dtype
    scale = np.abs(host.flat_params).max()
    error = np.abs(device.flat_params.astype(np.float64) - host.flat_params).max() / scale
    assert error < tolerance, f"parameters: relative error {error:.3g}"
    assert device.iterations_done == host.iterations_done == 6
    assert device.epochs_done == host.epochs_done == 2
    for ours, theirs in zip(device_history, host_history, strict=True):
        assert ours.keys() == theirs.keys()
        assert ours["learning_rate"] == theirs["learning_rate"]
        np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=tolerance)
    # The optimiser state comes back in the host optimiser's format.
    device_state, host_state = device.optimizer.state_dict(), host.optimizer.state_dict()
    assert device_state.keys() == host_state.keys()
    assert device_state["n_steps"] == host_state["n_steps"]
    np.testing.assert_allclose(device_state["first_moment"], host_state["first_moment"],
                               rtol=tolerance * 100, atol=tolerance * 1e-2)


def test_continuing_from_a_host_optimizer_state_matches():
    """run_epochs twice (partial_fit) and a host state loaded in between."""
    dtype = np.float64
    sequences, lengths, targets, shapes, flat, net_shape, loss = problem(dtype, True, True, 1)
    host = Trainer(flat.copy(), shapes, net_shape, loss, options(), get_backend("reference"))
    host.run_epochs(sequences, lengths, targets, 1, np.random.RandomState(2))
    device = DeviceTrainer(host.flat_params.copy(), shapes, net_shape, loss, options(),
                           get_backend("cuda"))
    device.optimizer.load_state_dict(host.optimizer.state_dict())
    device.epochs_done, device.iterations_done = host.epochs_done, host.iterations_done
    for trainer in (host, device):
        trainer.run_epochs(sequences, lengths, targets, 1, np.random.RandomState(3))
    tolerance = HOST[dtype][1]
    np.testing.assert_allclose(device.flat_params, host.flat_params, rtol=tolerance,
                               atol=tolerance * 1e-3)
    assert device.epochs_done == host.epochs_done == 2


class TransferLog:
    """Counts host->device and device->host copies, with their sizes."""

    def __init__(self, monkeypatch):
        self.uploads, self.downloads = [], []
        to_device = cuda.to_device
        array_type = type(cuda.device_array(1))
        copy_to_host = array_type.copy_to_host
        copy_to_device = array_type.copy_to_device

        def counted_to_device(array, *args, **kwargs):
            self.uploads.append(np.size(array))
            return to_device(array, *args, **kwargs)

        def counted_copy_to_host(array, *args, **kwargs):
            self.downloads.append(array.size)
            return copy_to_host(array, *args, **kwargs)

        def counted_copy_to_device(array, source, *args, **kwargs):
            self.uploads.append(np.size(source))
            return copy_to_device(array, source, *args, **kwargs)

        monkeypatch.setattr(cuda, "to_device", counted_to_device)
        monkeypatch.setattr(array_type, "copy_to_host", counted_copy_to_host)
        monkeypatch.setattr(array_type, "copy_to_device", counted_copy_to_device)


def test_only_the_loss_comes_back_per_step(monkeypatch):
    """The per-step traffic is one float64 (the loss) device->host and nothing
    host->device; parameters cross once per run_epochs call, each way."""
    dtype = np.float32
    sequences, lengths, targets, shapes, flat, net_shape, loss = problem(dtype, True, False, 1)
    n_params = flat.size
    counts = {}
    for n_epochs in (1, 2):
        trainer = DeviceTrainer(flat.copy(), shapes, net_shape, loss,
                                options(shuffle="once", gradient_threshold=0.1,
                                        l2_regularization=0.01),
                                get_backend("cuda"))
        log = TransferLog(monkeypatch)
        trainer.run_epochs(sequences, lengths, targets, n_epochs, np.random.RandomState(1))
        counts[n_epochs] = log
        monkeypatch.undo()
        assert trainer.iterations_done == 3 * n_epochs
        # Exactly one parameter-sized copy each way: in at the start, out at the end.
        assert log.uploads.count(n_params) == 1
        assert log.downloads.count(n_params) == 1
        assert all(size < n_params for size in log.uploads + log.downloads
                   if size != n_params)
    one, two = counts[1], counts[2]
    # One more epoch of 3 steps: 3 more one-element downloads, no uploads.
    assert len(two.uploads) == len(one.uploads)
    assert len(two.downloads) - len(one.downloads) == 3
    assert two.downloads.count(1) - one.downloads.count(1) == 3


def test_kernels_receive_device_arrays(monkeypatch):
    from fastlstm._kernels import cuda_lstm

    seen = []
    for name in ("forward", "backward"):
        original = getattr(cuda_lstm, name)

        def spy(*args, original=original, name=name):
            arrays = [a for a in args if isinstance(a, np.ndarray) and a.size > 0]
            seen.append((name, len(arrays)))
            return original(*args)

        monkeypatch.setattr(cuda_lstm, name, spy)
    train(DeviceTrainer, "cuda", np.float32, False, True, 1, n_epochs=1)
    # Host arrays: batch_sizes only (the host walks the steps); empty (0, 0)
    # placeholders stand for the absent projection.
    assert seen and all(count == 1 for _, count in seen), seen
    assert {name for name, _ in seen} == {"forward", "backward"}


@pytest.mark.parametrize("changes, message", [
    ({"dropout": 0.5}, "dropout=0.5 between layers"),
    ({"sequence_length": 2}, "truncated backpropagation through time"),
    ({"optimizer": "sgdm"}, "optimizer='sgdm'"),
])
def test_unsupported_options_raise(changes, message):
    _, _, _, shapes, flat, _, loss = problem(np.float32, True, False, 2)
    net_shape = NetworkShape(hidden_size=HIDDEN, num_layers=2, bidirectional=False)
    with pytest.raises(NotImplementedError, match=message):
        DeviceTrainer(flat, shapes, net_shape, loss, options(**changes), get_backend("cuda"))


def test_per_step_targets_raise():
    sequences, lengths, _, shapes, flat, net_shape, loss = problem(np.float32, True, False, 1)
    trainer = DeviceTrainer(flat, shapes, net_shape, loss, options(), get_backend("cuda"))
    per_step = Targets(np.zeros(int(lengths.sum()), np.int64),
                       np.ones(int(lengths.sum()), np.float32),
                       np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    with pytest.raises(NotImplementedError, match="per-step targets"):
        trainer.run_epochs(sequences, lengths, per_step, 1, np.random.RandomState(0))


def relative_error(actual, expected):
    """max |actual - expected| / max |expected|, in float64."""
    scale = max(np.abs(expected).max(), 1e-30)
    return np.abs(np.asarray(actual, np.float64) - expected).max() / scale


# (estimator, dtype, extra parameters): each kind of model in both dtypes; the
# float64 regressor also validates, stops early and predicts from 2 threads.
ESTIMATOR_CASES = [
    ("classifier", np.float32, {"bidirectional": True}),
    ("classifier", np.float64, {"num_layers": 2}),
    ("regressor", np.float32, {"num_layers": 2, "bidirectional": True}),
    ("regressor", np.float64, {"validation_fraction": 0.34, "early_stopping": True,
                                   "n_iter_no_change": 1, "max_epochs": 3, "n_jobs": 2}),
]


def estimator_problem(kind, dtype):
    from fastlstm import LSTMClassifier, LSTMRegressor

    rng = np.random.default_rng(0)
    X = [rng.standard_normal((n, N_FEATURES)).astype(dtype) for n in (3, 5, 1, 4, 2, 4)]
    if kind == "classifier":
        return LSTMClassifier, X, np.array(["a", "b", "c", "a", "b", "c"])
    return LSTMRegressor, X, rng.standard_normal((len(X), 2)).astype(dtype)


@pytest.mark.parametrize("kind, dtype, extra", ESTIMATOR_CASES,
                         ids=[f"{kind}-{dtype.__name__}" for kind, dtype, _ in ESTIMATOR_CASES])
def test_estimator_cuda_fit_matches_a_cpu_fit(monkeypatch, kind, dtype, extra):
    """fit(backend="cuda") trains on the device (DeviceTrainer), matches a CPU fit
    of the same seed to 1e-4 relative on weights_ and predictions, gives NumPy
    weights_, and pickles into a model that predicts on the CPU."""
    import pickle

    from fastlstm import _cuda_training

    cls, X, y = estimator_problem(kind, dtype)
    params = {"hidden_size": HIDDEN, "max_epochs": 2, "batch_size": 3, "learning_rate": 0.01,
                  "random_state": 0, "n_jobs": 1, "dtype": dtype.__name__}
    params.update(extra)
    used = []
    original_init = _cuda_training.DeviceTrainer.__init__

    def spy(self, *args, **kwargs):
        used.append(True)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(_cuda_training.DeviceTrainer, "__init__", spy)
    gpu = cls(backend="cuda", **params).fit(X, y)
    assert used == [True] and gpu.backend_ == "cuda"
    cpu = cls(backend=HOST[dtype][0], **params).fit(X, y)
    assert gpu.n_iter_ == cpu.n_iter_ and len(gpu.history_) == len(cpu.history_)
    assert gpu.weights_.keys() == cpu.weights_.keys()
    errors = {}
    for name, value in cpu.weights_.items():
        assert type(gpu.weights_[name]) is np.ndarray and gpu.weights_[name].dtype == dtype
        errors[name] = relative_error(gpu.weights_[name], value)
    predict = (lambda model: model.predict_proba(X)) if kind == "classifier" else (
        lambda model: model.predict(X))
    on_gpu, on_cpu = predict(gpu), predict(cpu)
    errors["predictions"] = relative_error(on_gpu, on_cpu)
    print(f"{kind}-{dtype.__name__} max relative error: weights "
          f"{max(v for k, v in errors.items() if k != 'predictions'):.3g}, "
          f"predictions {errors['predictions']:.3g}")
    assert max(errors.values()) < 1e-4, errors
    if kind == "classifier":
        np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))
    # A GPU-trained model is an ordinary NumPy model: pickled, it predicts on the CPU.
    restored = pickle.loads(pickle.dumps(gpu)).set_params(backend="numba")
    assert relative_error(predict(restored), on_gpu) < 1e-4


def test_estimator_options_the_device_loop_lacks_train_on_the_host():
    """Projections are not in the device loop: the host loop trains with the
    cuda kernels instead, and the fit still reports backend_ == "cuda"."""
    cls, X, y = estimator_problem("classifier", np.float32)
    projected = cls(backend="cuda", hidden_size=HIDDEN, proj_size=2, max_epochs=1, batch_size=3,
                    random_state=0, n_jobs=1).fit(X, y)
    assert projected.backend_ == "cuda" and np.isfinite(projected.history_[-1]["loss"])
