"""Fixtures and helpers of the fastlstm benchmark suite (pytest-benchmark).

Run from the repository root (``testpaths`` keeps ``bench/`` out of a plain
``pytest`` run)::

    python -m pytest bench -q -p no:cacheprovider --benchmark-json /tmp/bench.json
    python bench/report.py /tmp/bench.json

Options:

``--device {cpu,cuda}``
    Where both sides run (default cpu). With ``cuda``: PyTorch on the GPU
    (cuDNN), fastlstm with ``backend="cuda"`` (the W1, W2 and W3 training
    steps in the device-resident trainer, inference through the cuda
    kernels); the CPU-only entries (busy core, peak RSS, cold start, W4,
    JV-full for fastlstm, ONNX Runtime) skip. Every entry skips without a
    CUDA GPU; numba's CUDA simulator does not count.
``--quick``
    Fewer epochs for the end-to-end Japanese Vowels fits (the report
    extrapolates their time to 100 epochs).

Every entry records in ``benchmark.extra_info``: ``workload`` (the group),
``impl`` (fastlstm, torch, onnxruntime), ``label`` (the row name in the
report), ``primary`` (the entry the targets are checked on), ``flops`` (the
FLOPs of the timed call, see ``_workloads.lstm_forward_flops``; training
counts 3 x forward) and how it was run (threads, backend, device).
"""

import multiprocessing
import os
import resource
import sys
import time
from contextlib import contextmanager

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TORCH_THREADS = 2
# A busy-loop process never outlives this, whatever happens to the test.
BUSY_LOOP_MAX_SECONDS = 120.0


def pytest_addoption(parser):
    group = parser.getgroup("fastlstm benchmarks")
    group.addoption("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where PyTorch and fastlstm run; cuda needs an NVIDIA GPU")
    group.addoption("--quick", action="store_true", default=False,
                    help="fewer epochs for the end-to-end Japanese Vowels fits")


def _version(module_name):
    """A module's ``__version__``, or None where it does not import."""
    try:
        module = __import__(module_name)
    except Exception:  # not installed, or broken: the run goes on without it
        return None
    return getattr(module, "__version__", None)


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add what the ratios depend on besides the CPU to the JSON's ``machine_info``.

    pytest-benchmark records the CPU (``machine_info["cpu"]``); the report
    prints it with these, because the same code gives very different ratios
    on another CPU or with another PyTorch or BLAS build.
    """
    from threadpoolctl import threadpool_info

    from fastlstm._kernels import _gemm

    info = {
        "versions": {name: _version(name) for name in
                     ("fastlstm", "numpy", "numba", "scipy", "sklearn", "torch", "onnxruntime")},
        "own_gemm": _gemm.isa(),  # "avx512", "avx2", or None (BLAS)
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "blas": sorted({f"{pool.get('internal_api')} {pool.get('version')} "
                        f"({pool.get('architecture')})"
                        for pool in threadpool_info() if pool.get("user_api") == "blas"}),
    }
    machine_info["fastlstm"] = info


@pytest.fixture(scope="session")
def device(request):
    """The device of the run; skips every entry when cuda is asked for but absent."""
    name = request.config.getoption("--device")
    if name == "cuda":
        from numba import config, cuda

        if config.ENABLE_CUDASIM or not cuda.is_available():
            pytest.skip("--device cuda: numba finds no CUDA GPU on this machine "
                        "(the CUDA simulator is not benchmarked)")
    return name


@pytest.fixture(scope="session")
def quick(request):
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def fastlstm_ready(device):
    """The backend of the fastlstm entries: "cuda" with ``--device cuda``;
    otherwise make ``backend="auto"`` mean numba, and return what it resolves to.

    ``"auto"`` picks the ahead-of-time Cython kernels (and starts a background
    compilation) whenever numba's on-disk cache is cold. To benchmark the
    kernels a user gets from the second process on, compile numba's kernels
    into the cache first, before anything resolves ``"auto"``.
    """
    if device == "cuda":
        return "cuda"
    os.environ.setdefault("FASTLSTM_NO_BACKGROUND_COMPILE", "1")
    from fastlstm._backends import (
        compile_numba_kernels,
        get_backend,
        numba_kernels_cached,
    )

    if not numba_kernels_cached():
        compile_numba_kernels()
    backend = get_backend("auto")
    return backend.name


@pytest.fixture(scope="session")
def torch_ready(device):
    """Import torch once, at ``TORCH_THREADS`` threads, flushing subnormals.

    fastlstm flushes subnormal floats to zero while it computes (see
    ``fastlstm._trainer.compute_environment``); PyTorch gets the same, so that
    neither can hit the subnormal slowdown the other avoids.
    """
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: PyTorch has no CUDA here (a CPU-only build?)")
    torch.set_num_threads(TORCH_THREADS)
    torch.set_flush_denormal(True)
    return torch


@contextmanager
def torch_threads(n):
    """Run PyTorch at ``n`` threads inside the block, then back at the default."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def torch_threads_ctx():
    return torch_threads


def record(benchmark, *, workload, impl, label, flops=None, primary=False, **extra):
    """Describe an entry in ``benchmark.extra_info`` for ``report.py``."""
    info = benchmark.extra_info
    info.update(workload=workload, impl=impl, label=label, primary=bool(primary))
    # Other processes share this machine: keep a trace of how busy it was.
    info["loadavg_1min"] = os.getloadavg()[0]
    # OpenBLAS's kernels (AVX2 "Haswell" or AVX-512 "SkylakeX") change fastlstm's GEMMs.
    info["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE")
    if flops is not None:
        info["flops"] = int(flops)
    info.update(extra)
    return info


@pytest.fixture
def describe():
    return record


# -- how busy the machine was -----------------------------------------------------------


def _cpu_snapshot():
    """(wall s, CPU s all processes used, CPU s this process and its children used)."""
    busy = None
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        # user nice system idle iowait irq softirq steal ...
        values = [int(v) for v in fields[1:9]]
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return time.monotonic(), busy, own


@pytest.fixture(autouse=True)
def _other_processes_cpu(request):
    """Record in ``extra_info`` how many cores other processes used during the entry.

    This machine is shared: ``other_cores_busy`` is the CPU time of all
    processes (from /proc/stat) minus this process's and its children's
    (the busy-loop process of the busy-core entries included), per second of
    the entry. On 2 cores, 1.0 means a whole core was taken from the benchmark.
    """
    if "benchmark" not in request.fixturenames:
        yield
        return
    benchmark = request.getfixturevalue("benchmark")
    start = _cpu_snapshot()
    yield
    end = _cpu_snapshot()
    wall = end[0] - start[0]
    if start[1] is None or end[1] is None or wall <= 0:
        return
    others = (end[1] - start[1]) - (end[2] - start[2])
    benchmark.extra_info["other_cores_busy"] = round(max(others, 0.0) / wall, 2)
    benchmark.extra_info["n_cpus"] = os.cpu_count()


# -- the other core busy ----------------------------------------------------------------


def _busy_loop(stop, deadline):
    # A pure-Python spin: one core at 100 % until told to stop or the deadline.
    counter = 0
    while not stop.is_set() and time.monotonic() < deadline:
        for _ in range(10000):
            counter += 1


@pytest.fixture
def busy_core():
    """A background process spinning on one core for the duration of a test.

    Started with ``fork`` (the child runs only the pure-Python loop above), told
    to stop when the test ends, and bounded in time by its own deadline in
    case the stop never arrives.
    """
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    deadline = time.monotonic() + BUSY_LOOP_MAX_SECONDS
    process = context.Process(target=_busy_loop, args=(stop, deadline), daemon=True)
    process.start()
    time.sleep(0.2)  # let it reach full speed
    try:
        yield process.pid
    finally:
        stop.set()
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)
