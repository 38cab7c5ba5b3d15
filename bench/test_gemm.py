"""fastlstm's own float32 GEMM against BLAS on the shapes an LSTM step uses.

One group per shape (``GEMM <workload> <product>``), all on one thread:
the own kernel (``fastlstm/_kernels/own_gemm.h``, called through
``_gemm.matmul``), NumPy's ``np.dot`` (OpenBLAS, with whatever core type the
environment gives it: ``OPENBLAS_CORETYPE`` is recorded), and ``torch.matmul``
(MKL) when torch is installed. This is where the kernels' speed comes from:
GEMMs are most of a training step (``bench/profile_step.py``).
"""

import numpy as np
import pytest
from conftest import record
from threadpoolctl import threadpool_limits

from test_workloads import run_budgeted

# name -> (m, k, n, A transposed): C (m, n) = A (m, k) @ B (k, n). "A
# transposed" is the weight-gradient case dW = dG^T X, where A is read from a
# row-major (k, m) array.
SHAPES = {
    "W1 h R^T (per step)": (27, 100, 400, False),
    "W1 dG R (per step)": (27, 400, 100, False),
    "W1 dG^T Hprev": (400, 540, 100, True),
    "W2 h R^T (per step)": (64, 64, 256, False),
    "W3 h R^T (per step)": (128, 256, 1024, False),
    "W3 dG R (per step)": (128, 1024, 256, False),
    "W3 X W^T (layer 2)": (12800, 256, 1024, False),
    "W3 dG^T Hprev": (1024, 12800, 256, True),
}
ROUNDS = (200, 5)


def operands(m, k, n, transposed, seed=0):
    rng = np.random.default_rng(seed)
    if transposed:
        A = rng.standard_normal((k, m)).astype(np.float32).T
    else:
        A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    return A, B, np.empty((m, n), dtype=np.float32)


@pytest.mark.parametrize("impl", ["fastlstm", "fastlstm-packed", "numpy", "torch"])
@pytest.mark.parametrize("name", SHAPES)
def test_gemm(benchmark, device, name, impl):
    if device != "cpu":
        pytest.skip("CPU GEMMs")
    from fastlstm._kernels import _gemm

    m, k, n, transposed = SHAPES[name]
    A, B, C = operands(m, k, n, transposed)
    benchmark.group = f"GEMM {name}"
    extra = dict(flops=2 * m * k * n, primary=True, threads=1, shape=[m, k, n])
    if impl == "fastlstm":
        if not _gemm.enabled():
            pytest.skip("fastlstm's own GEMM is off or needs AVX2 or AVX-512 (BLAS is used instead)")
        record(benchmark, workload=benchmark.group, impl="fastlstm",
               label=f"own GEMM ({_gemm.isa()})", **extra)
        run_budgeted(benchmark, lambda: _gemm.matmul(A, B, C), max_rounds=ROUNDS[0],
                     warmup_rounds=ROUNDS[1])
        np.testing.assert_allclose(C, A.astype(np.float64) @ B, rtol=0, atol=1e-3 * np.sqrt(k))
    elif impl == "fastlstm-packed":
        # The per-step products as the CPU kernels run them with the AVX2
        # tiles: B (the recurrent weights) packed once, outside the timing.
        packed = _gemm.pack(B) if "(per step)" in name else None
        if packed is None:
            pytest.skip("B is packed only for the per-step products, with the AVX2 tiles")
        record(benchmark, workload=benchmark.group, impl="fastlstm",
               label=f"own GEMM ({_gemm.isa()}), B packed", **dict(extra, primary=False))
        run_budgeted(benchmark, lambda: _gemm.matmul_packed(A, packed, n, C),
                     max_rounds=ROUNDS[0], warmup_rounds=ROUNDS[1])
        np.testing.assert_allclose(C, A.astype(np.float64) @ B, rtol=0, atol=1e-3 * np.sqrt(k))
    elif impl == "numpy":
        record(benchmark, workload=benchmark.group, impl="openblas",
               label="np.dot (OpenBLAS)", **extra)
        with threadpool_limits(1, "blas"):
            run_budgeted(benchmark, lambda: np.dot(A, B, C), max_rounds=ROUNDS[0],
                         warmup_rounds=ROUNDS[1])
    else:
        torch = pytest.importorskip("torch")
        from conftest import torch_threads

        tA, tB, tC = torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C)
        record(benchmark, workload=benchmark.group, impl="torch", label="torch.matmul (MKL)",
               **extra)
        with torch_threads(1):
            run_budgeted(benchmark, lambda: torch.matmul(tA, tB, out=tC), max_rounds=ROUNDS[0],
                         warmup_rounds=ROUNDS[1])
