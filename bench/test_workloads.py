"""fastlstm against PyTorch, workload by workload, in one pytest-benchmark run.

One benchmark group per workload; inside a group the fastlstm and PyTorch
entries run one right after the other, so their ratio comes from the same run
(the machine's speed drifts over minutes: compare entries of one run only).
For W1 and W2 training, and W1 inference, an extra entry also interleaves them
block by block.

Time budgets: each per-call entry runs ``max_rounds`` rounds, or fewer when
its warm-up shows they would take longer than ``ENTRY_BUDGET_S`` (never fewer
than ``MIN_ROUNDS``); the end-to-end PyTorch fits stop at a deadline and are
extrapolated to 100 epochs. On a quiet 2-core machine the whole suite takes
about 3-4 minutes; on a loaded one PyTorch at 2 threads can slow down by 10x
or more (OpenMP threads waiting on a busy core) and the budgets keep the
suite's duration bounded. The rounds actually run are in ``extra_info``.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import _workloads as wl
import numpy as np
import pytest
from conftest import TORCH_THREADS, record, torch_threads

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_subprocess_worker.py")

ENTRY_BUDGET_S = 2.5
MIN_ROUNDS = 10
# (max rounds, warm-up rounds) of the training-step entries.
TRAIN_ROUNDS = {"W1": (150, 10), "W2": (150, 10), "W3": (4, 1)}
INFER_ROUNDS = (200, 10)
BUSY_ROUNDS = (60, 5)
INTERLEAVED_BLOCKS, INTERLEAVED_BLOCK, INTERLEAVED_BLOCK_WARMUP = 24, 12, 2
INTERLEAVED_BUDGET_S = 5.0
# Per workload: (blocks, steps per block, uncounted steps per block, budget in
# seconds, warm-up steps before the first block). A W3 step takes 0.5-1 s:
# two ABBA cycles of 3-step blocks, 8 counted steps each, ~30 s.
INTERLEAVED_TRAIN = {
    "W1": (INTERLEAVED_BLOCKS, INTERLEAVED_BLOCK, INTERLEAVED_BLOCK_WARMUP,
           INTERLEAVED_BUDGET_S, 5),
    "W2": (INTERLEAVED_BLOCKS, INTERLEAVED_BLOCK, INTERLEAVED_BLOCK_WARMUP,
           INTERLEAVED_BUDGET_S, 5),
    "W3": (8, 3, 1, 60.0, 1),
}
INFER_INTERLEAVED_BLOCK, INFER_INTERLEAVED_WARMUP = 60, 20
INFER_INTERLEAVED_BUDGET_S = 3.0
JV_EPOCHS, JV_QUICK_EPOCHS = 100, 10
JV_TORCH_DEADLINE_S, JV_TORCH_QUICK_DEADLINE_S = 30.0, 8.0


QUIET_S = 0.3


def run_budgeted(benchmark, function, *, max_rounds, warmup_rounds, iterations=1,
                 budget_s=ENTRY_BUDGET_S, min_rounds=MIN_ROUNDS):
    """``benchmark.pedantic`` with as many rounds as fit the time budget.

    The warm-up rounds run here, timed, and their median sets the number of
    measured rounds: ``max_rounds`` at most, ``min_rounds`` at least.
    """
    # The previous entry's threads go idle first: PyTorch's OpenMP threads
    # keep spinning for a while after their work, and a fastlstm entry right
    # after a PyTorch one found its threads short of their cores (and so ran
    # on one thread, see fastlstm/_pool.py). Every entry waits alike.
    time.sleep(QUIET_S)
    warm = []
    for _ in range(max(warmup_rounds, 1)):
        start = time.perf_counter()
        for _ in range(iterations):
            function()
        warm.append(time.perf_counter() - start)
    per_round = float(np.median(warm))
    rounds = max_rounds
    if per_round > 0:
        rounds = int(min(max_rounds, max(min_rounds, budget_s // per_round)))
    benchmark.extra_info["rounds_run"] = rounds
    return benchmark.pedantic(function, rounds=rounds, iterations=iterations, warmup_rounds=0)


def run_once(benchmark, function, setup=None, rounds=1):
    if setup is None:
        return benchmark.pedantic(function, rounds=rounds, iterations=1)
    return benchmark.pedantic(function, setup=setup, rounds=rounds)


def _torch_label(base, threads):
    if threads == TORCH_THREADS:
        return base
    return f"{base} {threads} thread" + ("s" if threads > 1 else "")


# ======================================================================================
# W1, W2, W3: one training iteration
# ======================================================================================


def _train_fastlstm(benchmark, name, n_jobs, *, group, rounds, device="cpu", **extra):
    spec = wl.SPECS[name]
    if device == "cuda":
        step = wl.FastlstmDeviceTrainStep(spec)
        extra["device"] = device
    else:
        step = wl.FastlstmTrainStep(spec, n_jobs=n_jobs)
    label = "fastlstm" if n_jobs is None else f"fastlstm n_jobs={n_jobs}"
    record(benchmark, workload=group, impl="fastlstm", label=label, primary=n_jobs is None,
           flops=spec.train_flops(), threads=step.n_threads, backend=step.backend.name,
           n_shards=len(step.chunk), **extra)
    with step:
        run_budgeted(benchmark, step.step, max_rounds=rounds[0], warmup_rounds=rounds[1])


def _train_torch(benchmark, torch, device, name, threads, *, group, rounds, fused_adam=False,
                 **extra):
    spec = wl.SPECS[name]
    step = wl.TorchTrainStep(spec, device=device, fused_adam=fused_adam)
    label = _torch_label("torch" + (" fused Adam" if fused_adam else ""), threads)
    record(benchmark, workload=group, impl="torch", label=label, flops=spec.train_flops(),
           threads=threads, device=device, torch_version=torch.__version__, **extra)
    with torch_threads(threads):
        run_budgeted(benchmark, step.step, max_rounds=rounds[0], warmup_rounds=rounds[1])


# Per workload, fastlstm and PyTorch entries next to each other: the time
# between them is short, so drift changes their ratio little.
TRAIN_CASES = [
    pytest.param(name, impl, variant, id=f"{name}-{impl}" + (f"-{variant}" if variant else ""))
    for name in ("W1", "W2", "W3")
    for impl, variant in (("fastlstm", None), ("fastlstm", "n_jobs=1"), ("torch", None),
                          ("torch", "1-thread"))
    + ((("torch", "fused-adam"),) if name == "W1" else ())
]


@pytest.mark.parametrize(("name", "impl", "variant"), TRAIN_CASES)
def test_train(benchmark, device, request, name, impl, variant):
    """One training iteration on a fixed batch.

    fastlstm: ``Trainer._step`` (forward, loss, backward, L2, Adam) with the
    estimator's defaults, ``n_jobs`` default (all cores) or 1. PyTorch:
    zero_grad, forward, loss, backward, Adam step, at 2 threads (and 1).
    """
    benchmark.group = f"{name}-train"
    rounds = TRAIN_ROUNDS[name]
    if impl == "fastlstm":
        request.getfixturevalue("fastlstm_ready")
        n_jobs = 1 if variant == "n_jobs=1" else None
        if device == "cuda" and n_jobs is not None:
            pytest.skip("n_jobs sets CPU threads; the cuda entry is the default one")
        _train_fastlstm(benchmark, name, n_jobs, group=benchmark.group, rounds=rounds,
                        device=device)
    else:
        torch = request.getfixturevalue("torch_ready")
        threads = 1 if variant == "1-thread" else TORCH_THREADS
        _train_torch(benchmark, torch, device, name, threads, group=benchmark.group,
                     rounds=rounds, fused_adam=variant == "fused-adam")


def _alternate_blocks(calls, *, block, block_warmup, budget_s, max_cycles=None):
    """Time ``calls`` (name -> callable) in blocks of back-to-back calls.

    Cycles of blocks in the order A B ... B A (ABBA for two), until a cycle
    ends past ``budget_s`` or after ``max_cycles``. The first
    ``block_warmup`` calls of each block are not counted. Returns each
    name's counted durations in seconds.
    """
    order = list(calls) + list(reversed(calls))
    times = {name: [] for name in calls}
    start_all = time.perf_counter()
    for _ in itertools.count() if max_cycles is None else range(max_cycles):
        for name in order:
            for index in range(block):
                start = time.perf_counter()
                calls[name]()
                if index >= block_warmup:
                    times[name].append(time.perf_counter() - start)
        if time.perf_counter() - start_all > budget_s:
            break
    return times


@pytest.mark.parametrize("name", list(INTERLEAVED_TRAIN))
def test_train_interleaved(benchmark, fastlstm_ready, torch_ready, device, name):
    """fastlstm and PyTorch (2 threads) in alternating blocks, so that drift
    hits both alike.

    Blocks of back-to-back steps (``INTERLEAVED_TRAIN``: 12 for W1 and W2,
    3 for W3), in ABBA order; the first steps of each block (2, or 1 for
    W3) are not counted.
    (Alternating single steps penalises whichever runs second: measured
    here, a fastlstm W1 step right after a PyTorch step takes 7.5-8 ms
    instead of 4.9 ms, with cold caches and a sleeping worker thread;
    a sleep between steps to let PyTorch's OpenMP threads go idle adds ~1 ms
    by itself.) The timed call is the whole alternation; the per-library
    medians are in ``extra_info["medians_s"]``.
    """
    if device != "cpu":
        pytest.skip("interleaving compares CPU implementations")
    spec = wl.SPECS[name]
    benchmark.group = f"{name}-train-interleaved"
    fast = wl.FastlstmTrainStep(spec)
    torch_step = wl.TorchTrainStep(spec, device=device)
    times = {}
    n_blocks, block, block_warmup, budget_s, warmup = INTERLEAVED_TRAIN[name]

    def alternate():
        with fast, torch_threads(TORCH_THREADS):
            for _ in range(warmup):
                fast.step()
                torch_step.step()
            times.update(_alternate_blocks(
                {"fastlstm": fast.step, "torch": torch_step.step}, block=block,
                block_warmup=block_warmup, budget_s=budget_s, max_cycles=n_blocks // 4))

    run_once(benchmark, alternate)
    medians = {name: float(np.median(values)) for name, values in times.items()}
    record(benchmark, workload=f"{name}-train", impl="interleaved", label="interleaved A/B",
           flops=spec.train_flops(), medians_s=medians, labels={"torch": "torch"},
           speedup=medians["torch"] / medians["fastlstm"],
           counted=f"{len(times['fastlstm'])} steps each, blocks of {block} "
                   "back-to-back steps in ABBA order",
           block=block, block_warmup=block_warmup,
           threads_fastlstm=fast.n_threads, threads_torch=TORCH_THREADS)


# ======================================================================================
# Inference of a batch (W1, W2)
# ======================================================================================


def _onnxruntime_inference(torch, spec, tmp_path):
    """The workload's PyTorch model exported to ONNX: (ONNX Runtime's call, its version).

    Skips the test when onnxruntime is missing or the export fails.
    """
    ort = pytest.importorskip("onnxruntime")
    infer = wl.TorchInference(spec)
    path = str(tmp_path / f"{spec.name}.onnx")
    try:
        try:
            torch.onnx.export(infer.model, (infer.X,), path, input_names=["x"],
                              output_names=["y"], dynamo=False)
        except TypeError:  # an exporter without the dynamo switch
            torch.onnx.export(infer.model, (infer.X,), path, input_names=["x"],
                              output_names=["y"])
    except Exception as error:  # noqa: BLE001 - a missing exporter dependency, say
        pytest.skip(f"could not export the {spec.name} model to ONNX: {error}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = TORCH_THREADS
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"x": infer.X.numpy()}
    return (lambda: session.run(None, feed)), ort.__version__


def _infer_onnxruntime(benchmark, torch, spec, tmp_path):
    run, version = _onnxruntime_inference(torch, spec, tmp_path)
    record(benchmark, workload=benchmark.group, impl="onnxruntime", label="onnxruntime",
           flops=spec.forward_flops(), threads=TORCH_THREADS, ort_version=version)
    run_budgeted(benchmark, run, max_rounds=INFER_ROUNDS[0], warmup_rounds=INFER_ROUNDS[1])


INFER_CASES = [
    pytest.param("W1", "fastlstm", id="W1-fastlstm"),
    pytest.param("W1", "fastlstm-predict_proba", id="W1-fastlstm-predict_proba"),
    pytest.param("W1", "torch", id="W1-torch"),
    pytest.param("W1", "torch-1-thread", id="W1-torch-1-thread"),
    pytest.param("W1", "onnxruntime", id="W1-onnxruntime"),
    pytest.param("W2", "fastlstm", id="W2-fastlstm"),
    pytest.param("W2", "torch", id="W2-torch"),
]


@pytest.mark.parametrize(("name", "impl"), INFER_CASES)
def test_infer(benchmark, device, request, tmp_path, name, impl):
    """Inference of the workload's batch.

    fastlstm: ``network_outputs`` (the network and output layer, as
    ``predict`` runs them after checking and scaling the input), and for W1
    also ``predict_proba`` on a fitted estimator (the whole user call).
    PyTorch: a ``no_grad`` forward at 2 threads (and 1). ONNX Runtime (if
    installed, CPU only): the PyTorch model exported to ONNX, 2 threads.
    """
    spec = wl.SPECS[name]
    benchmark.group = f"{name}-infer"
    rounds = {"max_rounds": INFER_ROUNDS[0], "warmup_rounds": INFER_ROUNDS[1]}
    if impl == "fastlstm":
        ready = request.getfixturevalue("fastlstm_ready")
        infer = wl.FastlstmInference(spec, backend=ready)
        record(benchmark, workload=benchmark.group, impl="fastlstm",
               label="fastlstm network_outputs", primary=True, flops=spec.forward_flops(),
               threads=infer.n_threads, backend=ready, device=device)
        run_budgeted(benchmark, infer, **rounds)
    elif impl == "fastlstm-predict_proba":
        ready = request.getfixturevalue("fastlstm_ready")
        clf = wl.fitted_fastlstm_estimator(spec, backend=ready)
        sequences = list(wl.make_data(spec)[0])
        record(benchmark, workload=benchmark.group, impl="fastlstm",
               label="fastlstm predict_proba", flops=spec.forward_flops(), backend=clf.backend_)
        run_budgeted(benchmark, lambda: clf.predict_proba(sequences), **rounds)
    elif impl.startswith("torch"):
        torch = request.getfixturevalue("torch_ready")
        threads = 1 if impl == "torch-1-thread" else TORCH_THREADS
        infer = wl.TorchInference(spec, device=device)
        record(benchmark, workload=benchmark.group, impl="torch",
               label=_torch_label("torch", threads), flops=spec.forward_flops(),
               threads=threads, device=device)
        with torch_threads(threads):
            run_budgeted(benchmark, infer, **rounds)
    else:
        torch = request.getfixturevalue("torch_ready")
        if device != "cpu":
            pytest.skip("the ONNX Runtime entry runs on the CPU only")
        _infer_onnxruntime(benchmark, torch, spec, tmp_path)


def test_infer_interleaved(benchmark, fastlstm_ready, torch_ready, device, tmp_path):
    """W1 inference of fastlstm, PyTorch (2 threads) and ONNX Runtime (2 threads,
    if installed) in alternating blocks, so that drift hits all alike.

    Blocks of ``INFER_INTERLEAVED_BLOCK`` back-to-back calls in the order
    A B C C B A, repeated; the first ``INFER_INTERLEAVED_WARMUP`` calls of each
    block are not counted. The W1 inference entries above run one after the
    other, about 2.5 s each, and the machine's speed can change by 20 % or more
    in that time (in one full run fastlstm's took 0.77 ms, in the two before
    0.42 ms). The per-library medians are in ``extra_info["medians_s"]``.
    """
    if device != "cpu":
        pytest.skip("interleaving compares CPU implementations")
    spec = wl.W1
    benchmark.group = "W1-infer-interleaved"
    fast = wl.FastlstmInference(spec, backend=fastlstm_ready)
    calls = {"fastlstm": fast, "torch": wl.TorchInference(spec, device=device)}
    labels = {"torch": "torch"}  # of the alternatives, as report.py names them
    try:
        calls["onnxruntime"], _ = _onnxruntime_inference(torch_ready, spec, tmp_path)
        labels["onnxruntime"] = "onnxruntime"
    except pytest.skip.Exception:
        pass
    times = {}

    def alternate():
        with torch_threads(TORCH_THREADS):
            for call in calls.values():
                for _ in range(INFER_INTERLEAVED_WARMUP):
                    call()
            times.update(_alternate_blocks(
                calls, block=INFER_INTERLEAVED_BLOCK, block_warmup=INFER_INTERLEAVED_WARMUP,
                budget_s=INFER_INTERLEAVED_BUDGET_S))

    run_once(benchmark, alternate)
    medians = {name: float(np.median(values)) for name, values in times.items()}
    record(benchmark, workload="W1-infer", impl="interleaved", label="interleaved A/B",
           flops=spec.forward_flops(), medians_s=medians,
           labels=labels,
           counted=f"{len(times['fastlstm'])} calls each, blocks of {INFER_INTERLEAVED_BLOCK} "
                   "back-to-back calls in ABC CBA order",
           block=INFER_INTERLEAVED_BLOCK,
           block_warmup=INFER_INTERLEAVED_WARMUP, threads_fastlstm=fast.n_threads,
           threads_torch=TORCH_THREADS)


# ======================================================================================
# W4: streaming inference, batch 1
# ======================================================================================

W4_STEP_ROUNDS = {"max_rounds": 60, "warmup_rounds": 2, "iterations": 50}
W4_SEQUENCE_ROUNDS = {"max_rounds": 40, "warmup_rounds": 3}


@pytest.fixture(scope="module")
def w4_regressor(fastlstm_ready):
    """A fitted per-step LSTMRegressor (input 8, hidden 128)."""
    if fastlstm_ready == "cuda":
        pytest.skip("streaming prediction is a CPU path (one step is too little GPU work)")
    return wl.fitted_fastlstm_estimator(wl.W4, per_step=True, n_sequences=8, n_steps=20)


@pytest.mark.parametrize("n_jobs", [None, 1], ids=["default", "n_jobs=1"])
def test_w4_step_fastlstm(benchmark, w4_regressor, n_jobs):
    """predict_and_update_state on one step of one sequence, state carried."""
    benchmark.group = "W4-step"
    regressor = w4_regressor.set_params(n_jobs=n_jobs)
    regressor.reset_state()
    x = np.random.RandomState(0).standard_normal((1, 1, wl.W4.input_size)).astype(wl.DTYPE)
    label = "fastlstm" if n_jobs is None else f"fastlstm n_jobs={n_jobs}"
    record(benchmark, workload=benchmark.group, impl="fastlstm", label=label,
           primary=n_jobs is None, flops=wl.W4.forward_flops(1), backend=regressor.backend_)
    try:
        run_budgeted(benchmark, lambda: regressor.predict_and_update_state(x), **W4_STEP_ROUNDS)
    finally:
        regressor.set_params(n_jobs=None).reset_state()


def test_w4_step_torch(benchmark, torch_ready, device):
    """``nn.LSTMCell`` and the linear head, one step, state carried, ``no_grad``."""
    benchmark.group = "W4-step"
    step = wl.TorchStreamingStep(wl.W4, device=device)
    record(benchmark, workload=benchmark.group, impl="torch", label="torch LSTMCell",
           flops=wl.W4.forward_flops(1), threads=TORCH_THREADS, device=device)
    with torch_threads(TORCH_THREADS):
        run_budgeted(benchmark, step, **W4_STEP_ROUNDS)


def test_w4_sequence_fastlstm(benchmark, w4_regressor):
    """predict on one (1000, 8) sequence, an output at every step."""
    benchmark.group = "W4-1000-steps"
    x = np.random.RandomState(0).standard_normal(
        (wl.W4_LONG_STEPS, wl.W4.input_size)).astype(wl.DTYPE)
    record(benchmark, workload=benchmark.group, impl="fastlstm", label="fastlstm", primary=True,
           flops=wl.W4.forward_flops(wl.W4_LONG_STEPS), backend=w4_regressor.backend_)
    run_budgeted(benchmark, lambda: w4_regressor.predict([x]), **W4_SEQUENCE_ROUNDS)


def test_w4_sequence_torch(benchmark, torch_ready, device):
    """``nn.LSTM`` over the (1000, 1, 8) sequence and the head on every step."""
    benchmark.group = "W4-1000-steps"
    infer = wl.TorchSequenceInference(wl.W4, wl.W4_LONG_STEPS, device=device)
    record(benchmark, workload=benchmark.group, impl="torch", label="torch nn.LSTM",
           flops=wl.W4.forward_flops(wl.W4_LONG_STEPS), threads=TORCH_THREADS, device=device)
    with torch_threads(TORCH_THREADS):
        run_budgeted(benchmark, infer, **W4_SEQUENCE_ROUNDS)


@pytest.fixture(scope="module")
def w4_forecaster(fastlstm_ready):
    """A fitted per-step LSTMRegressor predicting its own 8 inputs (hidden 128)."""
    if fastlstm_ready == "cuda":
        pytest.skip("closed-loop forecasting steps one sequence at a time: a CPU path")
    return wl.fitted_fastlstm_estimator(wl.W4_FORECAST, per_step=True, n_sequences=8)


def test_w4_forecast_fastlstm(benchmark, w4_forecaster):
    """``forecast``: read 20 observed steps of one series, then 100 closed-loop steps."""
    benchmark.group = "W4-forecast"
    spec = wl.W4_FORECAST
    x = np.random.RandomState(0).standard_normal(
        (spec.n_steps, spec.input_size)).astype(wl.DTYPE)
    record(benchmark, workload=benchmark.group, impl="fastlstm", label="fastlstm forecast",
           primary=True, flops=spec.forward_flops(spec.n_steps + wl.W4_FORECAST_STEPS - 1),
           backend=w4_forecaster.backend_)
    forecast = run_budgeted(benchmark, lambda: w4_forecaster.forecast([x], wl.W4_FORECAST_STEPS),
                            **W4_SEQUENCE_ROUNDS)
    assert forecast.shape == (1, wl.W4_FORECAST_STEPS, spec.n_outputs)


def test_w4_forecast_torch(benchmark, torch_ready, device):
    """The same closed loop in PyTorch: ``nn.LSTM`` read, ``nn.LSTMCell`` steps."""
    benchmark.group = "W4-forecast"
    spec = wl.W4_FORECAST
    loop = wl.TorchClosedLoopForecast(spec, wl.W4_FORECAST_STEPS, device=device)
    record(benchmark, workload=benchmark.group, impl="torch", label="torch LSTM + LSTMCell loop",
           flops=spec.forward_flops(spec.n_steps + wl.W4_FORECAST_STEPS - 1),
           threads=TORCH_THREADS, device=device)
    with torch_threads(TORCH_THREADS):
        run_budgeted(benchmark, loop, **W4_SEQUENCE_ROUNDS)


# ======================================================================================
# Japanese Vowels: the MATLAB recipe end to end
# ======================================================================================


@pytest.fixture(scope="module")
def jv_data():
    return wl.japanese_vowels()


def _jv_flops(X_train, epochs):
    total_steps = sum(len(seq) for seq in X_train)
    return wl.TRAIN_FLOP_FACTOR * wl.lstm_forward_flops(
        X_train[0].shape[1], 100, 1, True, total_steps) * epochs


def test_jv_full_fastlstm(benchmark, fastlstm_ready, jv_data, quick):
    """``LSTMClassifier(...).fit`` on the 270 training sequences (timed), then
    its test accuracy (not timed)."""
    benchmark.group = "JV-full"
    epochs = JV_QUICK_EPOCHS if quick else JV_EPOCHS
    X_train, y_train, X_test, y_test = jv_data
    backend = "cuda" if fastlstm_ready == "cuda" else "auto"
    fitted = []
    run_once(benchmark, lambda: fitted.append(
        wl.fastlstm_jv_fit(X_train, y_train, epochs, backend=backend)))
    clf = fitted[-1]
    seconds = benchmark.stats.stats.median
    epoch_seconds = [entry["seconds"] for entry in clf.history_]
    record(benchmark, workload=benchmark.group, impl="fastlstm", label="fastlstm fit()",
           primary=True, flops=_jv_flops(X_train, epochs), epochs=epochs,
           target_epochs=JV_EPOCHS, epoch_seconds=epoch_seconds,
           estimate_target_epochs_s=wl.extrapolate(seconds, epoch_seconds, JV_EPOCHS),
           test_accuracy=float(clf.score(X_test, y_test)), backend=clf.backend_)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_jv_full_torch(benchmark, torch_ready, device, jv_data, quick, packed):
    """The same recipe in PyTorch (2 threads), stopped at a deadline and then
    extrapolated to 100 epochs if it is slower than the budget allows."""
    benchmark.group = "JV-full"
    epochs = JV_QUICK_EPOCHS if quick else JV_EPOCHS
    deadline = JV_TORCH_QUICK_DEADLINE_S if quick else JV_TORCH_DEADLINE_S
    X_train, y_train, X_test, y_test = jv_data
    fitted = []
    with torch_threads(TORCH_THREADS):
        run_once(benchmark, lambda: fitted.append(wl.torch_jv_fit(
            X_train, y_train, epochs, packed=packed, device=device, deadline_s=deadline)))
        predict, epoch_seconds = fitted[-1]
        accuracy = float(np.mean(predict(X_test) == np.asarray(y_test)))
    seconds = benchmark.stats.stats.median
    done = len(epoch_seconds)
    record(benchmark, workload=benchmark.group, impl="torch",
           label="torch packed" if packed else "torch padded",
           flops=_jv_flops(X_train, done), epochs=done, epochs_asked=epochs,
           target_epochs=JV_EPOCHS, epoch_seconds=epoch_seconds,
           estimate_target_epochs_s=wl.extrapolate(seconds, epoch_seconds, JV_EPOCHS),
           stopped_at_deadline=done < epochs, deadline_s=deadline, test_accuracy=accuracy,
           threads=TORCH_THREADS, device=device)


# ======================================================================================
# W1 and W2 training with the other core busy
# ======================================================================================

BUSY_CASES = [
    pytest.param(name, impl, threads, id=f"{name}-{impl}-{threads or 'default'}")
    for name in ("W1", "W2")
    for impl, threads in (("fastlstm", None), ("fastlstm", 1), ("torch", 2), ("torch", 1))
]


@pytest.mark.parametrize(("name", "impl", "threads"), BUSY_CASES)
def test_train_busy(benchmark, busy_core, device, name, impl, threads, request):
    """One training iteration while a busy-loop process holds one core."""
    if device != "cpu":
        pytest.skip("the busy-core entries measure CPU contention")
    group = f"{name}-train-busy"
    benchmark.group = group
    if impl == "fastlstm":
        request.getfixturevalue("fastlstm_ready")
        _train_fastlstm(benchmark, name, threads, group=group, rounds=BUSY_ROUNDS,
                        other_core_busy=True)
    else:
        torch = request.getfixturevalue("torch_ready")
        _train_torch(benchmark, torch, device, name, threads, group=group, rounds=BUSY_ROUNDS,
                     other_core_busy=True)


@pytest.mark.parametrize("name", ["W1", "W2"])
def test_train_busy_interleaved(benchmark, busy_core, fastlstm_ready, torch_ready, device, name):
    """The busy-core entries' four variants in alternating blocks (ABCD DCBA).

    The separate entries run a few seconds apart, and the machine's speed
    drifts as much as the effect they measure (fastlstm's default against
    ``n_jobs=1``: 0.76-1.42x in six runs of the same code). Blocks as in
    ``INTERLEAVED_TRAIN``, their first steps not counted (PyTorch's thread
    count changes at a block's first step).
    """
    if device != "cpu":
        pytest.skip("the busy-core entries measure CPU contention")
    spec = wl.SPECS[name]
    benchmark.group = f"{name}-train-busy-interleaved"
    fast, fast_one = wl.FastlstmTrainStep(spec), wl.FastlstmTrainStep(spec, n_jobs=1)
    torch_step = wl.TorchTrainStep(spec, device=device)
    times = {}
    n_blocks, block, block_warmup, budget_s, warmup = INTERLEAVED_TRAIN[name]

    def at_threads(n_threads):
        def step():
            if torch_ready.get_num_threads() != n_threads:
                torch_ready.set_num_threads(n_threads)
            torch_step.step()
        return step

    calls = {"fastlstm": fast.step, "fastlstm n_jobs=1": fast_one.step,
             "torch": at_threads(TORCH_THREADS), "torch 1 thread": at_threads(1)}

    def alternate():
        with fast, fast_one, torch_threads(TORCH_THREADS):
            for _ in range(warmup):
                for call in calls.values():
                    call()
            times.update(_alternate_blocks(
                calls, block=block, block_warmup=block_warmup, budget_s=budget_s,
                max_cycles=n_blocks // 8))

    run_once(benchmark, alternate)
    medians = {key: float(np.median(values)) for key, values in times.items()}
    record(benchmark, workload=f"{name}-train-busy", impl="interleaved", label="interleaved A/B",
           flops=spec.train_flops(), medians_s=medians,
           labels={key: key for key in calls if key != "fastlstm"},
           counted=f"{len(times['fastlstm'])} steps each, blocks of {block} "
                   "back-to-back steps in ABCD DCBA order",
           block=block, block_warmup=block_warmup,
           threads_fastlstm=fast.n_threads, threads_torch=TORCH_THREADS,
           other_core_busy=True)


# ======================================================================================
# W3 peak memory (fresh processes)
# ======================================================================================


def _run_worker(args, env=None, timeout=300):
    completed = subprocess.run([sys.executable, WORKER, *args], check=False,
                               capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["fastlstm", "torch"])
def test_w3_peak_rss(benchmark, device, impl, request):
    """Peak resident memory (VmHWM) of a fresh process running a W3 training step."""
    if device != "cpu":
        pytest.skip("peak RSS is measured for the CPU implementations")
    request.getfixturevalue("fastlstm_ready" if impl == "fastlstm" else "torch_ready")
    benchmark.group = "W3-peak-RSS"
    result = {}
    run_once(benchmark, lambda: result.update(_run_worker(["rss", impl, "1"])))
    result.pop("impl", None)
    record(benchmark, workload=benchmark.group, impl=impl, label=impl, primary=impl == "fastlstm",
           **result)


# ======================================================================================
# Cold start (fresh processes)
# ======================================================================================


def _child_env(cache_dir=None):
    env = dict(os.environ)
    # The "auto" backend would otherwise start a detached numba compilation
    # that would keep running (and taking a core) into the next entries.
    env["FASTLSTM_NO_BACKGROUND_COMPILE"] = "1"
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    return env


@pytest.fixture(scope="module")
def cache_root():
    root = tempfile.mkdtemp(prefix="fastlstm-bench-numba-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_numba_cache(cache_root):
    """A numba cache dir that the empty-cache numba entry fills and the warm
    entries reuse (filled here if that entry did not run)."""
    path = os.path.join(cache_root, "shared")
    os.makedirs(path)
    return path


def _cache_filled(path):
    return any(name.endswith(".nbi") for _, _, files in os.walk(path) for name in files)


@pytest.mark.parametrize("what", ["baseline", "baseline-sklearn"])
def test_cold_baseline(benchmark, device, what):
    """A fresh process importing numpy, scikit-learn and numba (and, for
    baseline-sklearn, the scikit-learn modules fastlstm imports)."""
    if device != "cpu":
        pytest.skip("cold start is measured on the CPU")
    benchmark.group = "cold-start"
    result = {}
    run_once(benchmark, lambda: result.update(_run_worker([what], _child_env())), rounds=3)
    record(benchmark, workload=benchmark.group, impl="baseline",
           label="import numpy, sklearn, numba" if what == "baseline"
           else "import numpy, numba, sklearn modules fastlstm uses",
           kind=what, child=result)


@pytest.mark.parametrize("backend", ["auto", "numba"])
def test_cold_empty_cache(benchmark, fastlstm_ready, cache_root, shared_numba_cache, backend):
    """A fresh process: import fastlstm, fit and predict a tiny model, with an
    empty numba cache (a new NUMBA_CACHE_DIR every round)."""
    if fastlstm_ready == "cuda":
        pytest.skip("cold start is measured on the CPU")
    benchmark.group = "cold-start"
    result = {}
    counter = iter(range(1000))

    def setup():
        if backend == "numba":
            # One round: it fills the cache the warm entries use.
            return (shared_numba_cache,), {}
        path = os.path.join(cache_root, f"{backend}-{next(counter)}")
        os.makedirs(path)
        return (path,), {}

    def run(path):
        result.update(_run_worker(["cold", backend], _child_env(path)))

    run_once(benchmark, run, setup=setup, rounds=1 if backend == "numba" else 2)
    record(benchmark, workload=benchmark.group, impl="fastlstm",
           label=f"fastlstm backend={backend}, empty numba cache", primary=backend == "auto",
           kind="empty", backend=backend, child=result,
           background_compile="disabled (FASTLSTM_NO_BACKGROUND_COMPILE=1)")


@pytest.mark.parametrize("backend", ["auto", "numba"])
def test_cold_warm_cache(benchmark, fastlstm_ready, shared_numba_cache, backend):
    """The same fresh process with numba's cache already filled."""
    if fastlstm_ready == "cuda":
        pytest.skip("cold start is measured on the CPU")
    benchmark.group = "cold-start"
    if not _cache_filled(shared_numba_cache):
        _run_worker(["cold", "numba"], _child_env(shared_numba_cache))
    result = {}
    run_once(benchmark, lambda: result.update(
        _run_worker(["cold", backend], _child_env(shared_numba_cache))), rounds=2)
    record(benchmark, workload=benchmark.group, impl="fastlstm",
           label=f"fastlstm backend={backend}, warm numba cache", kind="warm", backend=backend,
           child=result)
