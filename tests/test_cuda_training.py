"""The device-resident CUDA trainer (``_cuda_training``) against the host Trainer.

The cases live in ``cuda_training_cases.py`` and run in a fresh process with
numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 must be set before numba is
imported), as in ``test_cuda.py``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "cuda_training_cases.py"


def test_device_trainer_in_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"cuda training cases failed:\n{output}"
    assert " passed" in output and " failed" not in output, output
    print(f"simulator cases: {time.perf_counter() - start:.1f} s\n{output}")
