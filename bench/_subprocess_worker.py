"""Measurements that need a fresh Python process, run by the benchmark suite.

Usage (the suite builds these command lines; each prints one JSON line last):

    python bench/_subprocess_worker.py baseline            # import numpy, sklearn, numba
    python bench/_subprocess_worker.py baseline-sklearn    # ... + sklearn modules fastlstm uses
    python bench/_subprocess_worker.py cold BACKEND        # import fastlstm, fit a tiny model
    python bench/_subprocess_worker.py rss IMPL [N_STEPS]  # peak RSS (VmHWM) of W3 training steps

The caller sets ``NUMBA_CACHE_DIR`` for the cold-start runs. Times printed
here are measured inside the process (after interpreter start-up); the
suite also times the whole process from outside.
"""

import json
import os
import resource
import sys
import time

START = time.perf_counter()


def _maxrss_mib():
    """Peak resident memory of this process so far, in MiB.

    ``VmHWM`` from /proc (Linux): the high-water mark of this process's own
    address space. ``getrusage(RUSAGE_SELF).ru_maxrss`` is the fallback, but
    on Linux it keeps the parent's peak across fork + exec, so a worker
    started from a big process (pytest with torch loaded) reports its
    parent's size.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def baseline(with_sklearn_modules):
    import numba  # noqa: F401
    import numpy  # noqa: F401
    import sklearn

    if with_sklearn_modules:
        # What fastlstm's own imports pull in from scikit-learn.
        import sklearn.base
        import sklearn.metrics
        import sklearn.model_selection
        import sklearn.utils.validation  # noqa: F401
    return {"import_s": time.perf_counter() - START}


def cold(backend):
    import numpy as np

    import fastlstm
    from fastlstm import LSTMClassifier

    imported = time.perf_counter()
    rng = np.random.RandomState(0)
    X = [rng.standard_normal((int(n), 3)).astype(np.float32) for n in rng.randint(4, 12, 20)]
    y = np.arange(20) % 2
    clf = LSTMClassifier(hidden_size=8, max_epochs=2, batch_size=8, backend=backend,
                         random_state=0).fit(X, y)
    clf.predict(X)
    done = time.perf_counter()
    return {"import_s": imported - START, "fit_s": done - imported, "total_s": done - START,
            "backend_used": clf.backend_, "fastlstm_file": fastlstm.__file__}


def rss(impl, n_steps):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _workloads as wl

    if impl == "torch":
        import torch

        torch.set_num_threads(2)
    after_import = _maxrss_mib()
    if impl == "fastlstm":
        step = wl.FastlstmTrainStep(wl.W3)
        after_setup = _maxrss_mib()
        with step:
            for _ in range(n_steps):
                step.step()
    elif impl == "torch":
        step = wl.TorchTrainStep(wl.W3)
        after_setup = _maxrss_mib()
        for _ in range(n_steps):
            step.step()
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    return {"impl": impl, "n_steps": n_steps, "maxrss_after_import_mib": after_import,
            "maxrss_after_setup_mib": after_setup, "peak_rss_mib": _maxrss_mib(),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main(argv):
    mode = argv[0]
    if mode == "baseline":
        result = baseline(False)
    elif mode == "baseline-sklearn":
        result = baseline(True)
    elif mode == "cold":
        result = cold(argv[1])
    elif mode == "rss":
        result = rss(argv[1], int(argv[2]) if len(argv) > 2 else 1)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
