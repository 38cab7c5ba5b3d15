"""Where the time of one fastlstm training step goes (W1, W2 by default).

Usage::

    python bench/profile_step.py [W1 W2 ...] [--steps N] [--cprofile]

For each workload it times, over N steps of ``Trainer._step`` on a pre-packed
batch (see ``_workloads.FastlstmTrainStep``), the pieces of the step by
wrapping the functions ``_step`` calls:

- ``network_forward`` and, inside it, the backend's forward kernel;
- the output layer and the loss, forward and backward (``head_loss_and_gradients``);
- ``network_backward`` and, inside it, the backend's backward kernel;
- L2 regularisation, gradient clipping, the optimiser step (which takes the
  L2 term into its own pass when there is no clipping), ``unflatten``;
- what is left of ``_step``: its own Python and NumPy glue.

It does this with one thread (``n_jobs=1``: the pieces add up) and reports
the total with the default threads. It then times, with NumPy's BLAS on one
thread, the GEMMs the kernels do (same shapes), as a floor for the kernels,
and the packing of the batch (done once per fit, not per step).
"""

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _workloads as wl


class Timers:
    def __init__(self):
        self.total = defaultdict(float)
        self.calls = defaultdict(int)

    def wrap(self, name, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.total[name] += time.perf_counter() - start
                self.calls[name] += 1
        return timed


def instrumented_steps(spec, n_steps, n_jobs):
    """Median step time and per-piece mean times (seconds per step)."""
    import fastlstm._network as network_module
    import fastlstm._trainer as trainer_module
    from fastlstm._backends import Backend

    step = wl.FastlstmTrainStep(spec, n_jobs=n_jobs)
    timers = Timers()
    trainer = step.trainer
    backend = trainer.backend
    trainer.backend = Backend(backend.name, timers.wrap("kernel forward", backend.forward),
                              timers.wrap("kernel backward", backend.backward))
    # Without gradient clipping the trainer calls regularised_step (Adam: the
    # L2 term and the update in one pass), otherwise the L2 term, the
    # clipping and step; wrapping only the one called counts nothing twice.
    if trainer.options.gradient_threshold is None:
        trainer.optimizer.regularised_step = timers.wrap(
            "optimizer step", trainer.optimizer.regularised_step)
    else:
        trainer.optimizer.step = timers.wrap("optimizer step", trainer.optimizer.step)
    patched = {
        (trainer_module, "network_forward"): "network_forward",
        (trainer_module, "network_backward"): "network_backward",
        (trainer_module, "head_loss_and_gradients"): "output layer + loss",
        (trainer_module, "add_l2_regularization"): "L2 regularisation",
        (trainer_module, "clip_gradients"): "gradient clipping",
        (trainer_module, "unflatten"): "unflatten (shard grads)",
    }
    originals = {key: getattr(*key) for key in patched}
    for (module, attr), name in patched.items():
        setattr(module, attr, timers.wrap(name, originals[(module, attr)]))
    times = []
    try:
        with step:
            for _ in range(5):
                step.step()
            timers.total.clear()
            timers.calls.clear()
            for _ in range(n_steps):
                start = time.perf_counter()
                step.step()
                times.append(time.perf_counter() - start)
    finally:
        for (module, attr), function in originals.items():
            setattr(module, attr, function)
    assert network_module is not None
    per_step = {name: value / n_steps for name, value in timers.total.items()}
    return float(np.median(times)), float(np.mean(times)), per_step, step


def plain_steps(spec, n_steps, n_jobs):
    step = wl.FastlstmTrainStep(spec, n_jobs=n_jobs)
    times = []
    with step:
        for _ in range(5):
            step.step()
        for _ in range(n_steps):
            start = time.perf_counter()
            step.step()
            times.append(time.perf_counter() - start)
    return float(np.median(times)), step


def gemm_floor(spec, repeats=50):
    """Time the GEMMs of one training step's kernels with NumPy (1 BLAS thread)."""
    from threadpoolctl import threadpool_limits

    B, T, H = spec.batch_size, spec.n_steps, spec.hidden_size
    rng = np.random.default_rng(0)
    f32 = np.float32
    shapes = []  # (label, m, k, n, count per step)
    for layer in range(spec.num_layers):
        I = spec.input_size if layer == 0 else H * spec.n_directions
        N = B * T
        d = spec.n_directions
        shapes += [
            (f"l{layer} fwd X W^T", N, I, 4 * H, d),
            (f"l{layer} fwd h R^T (per step)", B, H, 4 * H, d * T),
            (f"l{layer} bwd dG R (per step)", B, 4 * H, H, d * T),
            (f"l{layer} bwd dG^T X", 4 * H, N, I, d),
            (f"l{layer} bwd dG^T Hprev", 4 * H, N, H, d),
            (f"l{layer} bwd dG W", N, 4 * H, I, d),
        ]
    result = []
    with threadpool_limits(1, "blas"):
        for label, m, k, n, count in shapes:
            a = rng.standard_normal((m, k)).astype(f32)
            b = rng.standard_normal((k, n)).astype(f32)
            out = np.empty((m, n), f32)
            np.dot(a, b, out)
            start = time.perf_counter()
            for _ in range(repeats):
                np.dot(a, b, out)
            seconds = (time.perf_counter() - start) / repeats
            result.append((label, m, k, n, count, seconds * count))
    return result


def packing_time(step, repeats=50):
    from fastlstm._trainer import pack_shards

    start = time.perf_counter()
    for _ in range(repeats):
        pack_shards(step.sequences, step.lengths, step.order)
    return (time.perf_counter() - start) / repeats


def report(spec, n_steps, use_cprofile):
    print(f"## {spec.name}: {spec}")
    median_default, step_default = plain_steps(spec, n_steps, None)
    median_1, mean_1, pieces, step_1 = instrumented_steps(spec, n_steps, 1)
    flops = spec.train_flops()
    print(f"step median, n_jobs default ({step_default.n_threads} threads): "
          f"{median_default * 1e3:.2f} ms ({flops / median_default / 1e9:.1f} GFLOP/s); "
          f"shards: {len(step_default.chunk)}")
    print(f"step median, n_jobs=1 (instrumented): {median_1 * 1e3:.2f} ms "
          f"(mean {mean_1 * 1e3:.2f} ms)")
    forward_py = pieces.get("network_forward", 0) - pieces.get("kernel forward", 0)
    backward_py = pieces.get("network_backward", 0) - pieces.get("kernel backward", 0)
    accounted = sum(pieces.get(name, 0) for name in (
        "network_forward", "network_backward", "output layer + loss", "L2 regularisation",
        "gradient clipping", "optimizer step", "unflatten (shard grads)"))
    rows = [
        ("kernel forward (numba)", pieces.get("kernel forward", 0)),
        ("network_forward Python/NumPy around the kernel", forward_py),
        ("output layer + loss, forward and backward", pieces.get("output layer + loss", 0)),
        ("kernel backward (numba)", pieces.get("kernel backward", 0)),
        ("network_backward Python/NumPy around the kernel", backward_py),
        ("unflatten of shard gradients", pieces.get("unflatten (shard grads)", 0)),
        ("L2 regularisation (separate pass)", pieces.get("L2 regularisation", 0)),
        ("gradient clipping", pieces.get("gradient clipping", 0)),
        ("optimizer step (Adam; with the L2 term unless clipping)",
         pieces.get("optimizer step", 0)),
        ("rest of _step (glue: concatenate, split, grad sums)",
         max(mean_1 - accounted, 0.0)),
    ]
    print("| piece (n_jobs=1) | ms per step | share |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e3:.3f} | {seconds / mean_1 * 100:.0f} % |")
    gemms = gemm_floor(spec)
    total_gemm = sum(row[-1] for row in gemms)
    kernels = pieces.get("kernel forward", 0) + pieces.get("kernel backward", 0)
    print(f"GEMM floor (NumPy/OpenBLAS, 1 thread, same shapes): {total_gemm * 1e3:.2f} ms "
          f"per step; kernels took {kernels * 1e3:.2f} ms")
    for label, m, k, n, count, seconds in gemms:
        print(f"  {label}: {m}x{k}x{n} x{count}: {seconds * 1e3:.3f} ms "
              f"({2 * m * k * n * count / seconds / 1e9:.1f} GFLOP/s)")
    print(f"packing the batch (once per fit): {packing_time(step_1) * 1e3:.3f} ms")
    if use_cprofile:
        profile = cProfile.Profile()
        with step_1:
            profile.enable()
            for _ in range(n_steps):
                step_1.step()
            profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    print()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["W1", "W2"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("FASTLSTM_NO_BACKGROUND_COMPILE", "1")
    for name in args.workloads:
        report(wl.SPECS[name], args.steps, args.cprofile)


if __name__ == "__main__":
    main()
