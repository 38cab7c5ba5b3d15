"""backend="cuda": the numba.cuda kernels against the NumPy reference.

The kernel cases live in ``cuda_kernel_cases.py``. Without a GPU they run in
numba's CUDA simulator, which has to be switched on (NUMBA_ENABLE_CUDASIM=1)
before numba is first imported; this process has imported numba already, so
they run in a fresh pytest process. On a GPU machine the tests marked
``cuda`` run the same cases (and larger ones) on the device.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from numba import config, cuda

from fastlstm import LSTMClassifier, _backends
from fastlstm._kernels import cuda_lstm

from _lstm_cases import random_layer, random_packed_batch, run_direction

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "cuda_kernel_cases.py"
NO_GPU_MESSAGE = (r"backend='cuda' needs an NVIDIA GPU with a working CUDA driver "
                  r"\(numba\.cuda\.is_available\(\) is False\)")


def gpu_present():
    """A real GPU that numba can use (the simulator does not count)."""
    return not config.ENABLE_CUDASIM and cuda.is_available()


def run_cases(simulator, *extra):
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    seconds = time.perf_counter() - start
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"cuda cases failed (exit {completed.returncode}):\n{output}"
    assert " passed" in output and " failed" not in output, output
    return output, seconds


def test_kernels_match_reference_in_the_cuda_simulator():
    """Every output and gradient, both directions, with and without projection,
    both activation kinds, ragged lengths, float32 and float64, device arrays,
    the GEMM kernel, and a 2-layer bidirectional network, in the simulator."""
    output, seconds = run_cases(simulator=True)
    print(f"simulator cases: {seconds:.1f} s\n{output}")


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU (numba.cuda.is_available())")
def test_kernels_match_reference_on_the_gpu():
    """The same cases, and realistic sizes, compiled for and run on the GPU."""
    output, seconds = run_cases(simulator=False)
    print(f"GPU cases: {seconds:.1f} s\n{output}")


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU (numba.cuda.is_available())")
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_estimator_fits_on_the_gpu_like_on_the_cpu(n_jobs):
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((int(n), 3)) for n in rng.integers(2, 12, size=40)]
    y = np.array([int(x[:, 0].sum() > 0) for x in X])
    params = dict(hidden_size=8, num_layers=2, bidirectional=True, proj_size=4,
                  max_epochs=2, random_state=0, dtype="float64", n_jobs=n_jobs)
    on_gpu = LSTMClassifier(backend="cuda", **params).fit(X, y)
    on_cpu = LSTMClassifier(backend="numba", **params).fit(X, y)
    assert on_gpu.backend_ == "cuda"
    for name, value in on_cpu.weights_.items():
        np.testing.assert_allclose(on_gpu.weights_[name], value, rtol=1e-6, atol=1e-9)


def test_cuda_is_registered():
    assert "cuda" in _backends.BACKEND_NAMES
    backend = _backends.get_backend("cuda")  # imports the module: no GPU needed
    assert backend.forward is cuda_lstm.forward and backend.backward is cuda_lstm.backward


@pytest.fixture
def undecided_auto(monkeypatch):
    """resolve_auto() decides afresh (and starts no compile process)."""
    monkeypatch.setattr(_backends, "_auto_choice", None)
    monkeypatch.setattr(_backends, "_warm_numba_in_background", lambda: None)
    monkeypatch.setattr(_backends, "numba_kernels_cached", lambda: True)


def test_auto_picks_cuda_where_a_real_gpu_is_usable(monkeypatch, undecided_auto):
    """Decided from numba.cuda.is_available() and the simulator flag; no kernel runs."""
    monkeypatch.setattr(config, "ENABLE_CUDASIM", False)
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    assert _backends.gpu_usable()
    assert _backends.resolve_auto() == "cuda"
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    assert _backends.resolve_auto() == "cuda"  # decided once per process


def test_auto_never_picks_the_simulator(monkeypatch, undecided_auto):
    monkeypatch.setattr(config, "ENABLE_CUDASIM", True)
    monkeypatch.setattr(cuda, "is_available", lambda: True)  # as the simulator says
    assert not _backends.gpu_usable()
    assert _backends.resolve_auto() == "numba"


@pytest.mark.parametrize("is_available", ["false", "raises"])
def test_auto_falls_back_to_the_cpu_silently(monkeypatch, undecided_auto, is_available):
    def broken():
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(config, "ENABLE_CUDASIM", False)
    monkeypatch.setattr(cuda, "is_available", broken if is_available == "raises" else lambda: False)
    assert not _backends.gpu_usable()
    assert _backends.resolve_auto() == "numba"
    for cached in (True, False):
        monkeypatch.setattr(_backends, "_auto_choice", None)
        monkeypatch.setattr(_backends, "numba_kernels_cached", lambda cached=cached: cached)
        assert _backends.resolve_auto() == ("numba" if cached else "cython")


@pytest.mark.skipif(gpu_present(), reason="a GPU is usable here")
def test_auto_is_a_cpu_backend_without_a_gpu(monkeypatch):
    """Unpatched, on this machine: no GPU, so no cuda (and no error)."""
    monkeypatch.setattr(_backends, "_auto_choice", None)
    monkeypatch.setattr(_backends, "_warm_numba_in_background", lambda: None)
    assert not _backends.gpu_usable()
    assert _backends.resolve_auto() in ("numba", "cython")


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU (numba.cuda.is_available())")
def test_auto_is_cuda_on_a_gpu(monkeypatch):
    monkeypatch.setattr(_backends, "_auto_choice", None)
    assert _backends.resolve_auto() == "cuda"


@pytest.mark.skipif(gpu_present() or config.ENABLE_CUDASIM,
                    reason="CUDA is usable in this process")
def test_without_a_gpu_calls_raise_a_clear_error():
    rng = np.random.default_rng(0)
    batch = random_packed_batch(rng, [2, 1], 2, np.float32)
    layer = random_layer(rng, 2, 3, 2, np.float32)
    zeros = np.zeros((batch.X.shape[0], 3))
    with pytest.raises(RuntimeError, match=NO_GPU_MESSAGE):
        run_direction(_backends.get_backend("cuda"), batch, layer, False, 0, 0, zeros,
                      np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(RuntimeError, match=NO_GPU_MESSAGE):
        cuda_lstm.backward(*([None] * 29))
    X = [rng.standard_normal((n, 2)) for n in (3, 2, 4, 2)]
    with pytest.raises(RuntimeError, match=NO_GPU_MESSAGE):
        LSTMClassifier(backend="cuda", hidden_size=2, max_epochs=1).fit(X, [0, 1, 0, 1])
