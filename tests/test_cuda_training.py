"""The device-resident CUDA trainer (``_cuda_training``) against the host Trainer.

The cases live in ``cuda_training_cases.py`` and run in a fresh process: with
numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 must be set before numba is
imported) everywhere, and on the GPU itself where there is one (marked
``cuda``), as in ``test_cuda.py``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from numba import config, cuda

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "cuda_training_cases.py"


def gpu_present():
    """A real GPU that numba can use (the simulator does not count)."""
    return not config.ENABLE_CUDASIM and cuda.is_available()


def run_cases(simulator):
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(CASES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"cuda training cases failed:\n{output}"
    assert " passed" in output and " failed" not in output, output
    return output, time.perf_counter() - start


def test_device_trainer_in_the_cuda_simulator():
    output, seconds = run_cases(simulator=True)
    print(f"simulator cases: {seconds:.1f} s\n{output}")


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU (numba.cuda.is_available())")
def test_device_trainer_on_the_gpu():
    """The same cases, the estimator fits against a CPU fit included, on the GPU."""
    output, seconds = run_cases(simulator=False)
    print(f"GPU cases: {seconds:.1f} s\n{output}")
