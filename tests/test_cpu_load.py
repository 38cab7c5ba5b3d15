"""Other processes' load on this process's CPUs (``_cpu_load``), and the pool's use of it."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from fastlstm import _cpu_load, _spin
from fastlstm._cpu_load import WINDOW_NS, OtherProcessesLoad, other_processes_load
from fastlstm._pool import SpinPool

LOAD = other_processes_load()
needs_proc_stat = pytest.mark.skipif(LOAD is None, reason="no /proc/stat (not Linux)")


class FakeMachine:
    """Clock and CPU times advanced by hand: ``run(ms, others=, own=)`` cores."""

    def __init__(self):
        self.now = 10**12
        self.busy = self.own = 0
        self.reads = 0

    def run(self, ms, *, others, own=1.0):
        ns = int(ms * 1e6)
        self.now += ns
        self.own += int(own * ns)
        self.busy += int((own + others) * ns)

    def read_busy(self):
        self.reads += 1
        return self.busy

    def load(self, n_cpus=2):
        return OtherProcessesLoad(self.read_busy, lambda: self.own, n_cpus,
                                  clock_ns=lambda: self.now)


def test_the_load_is_measured_once_per_window_and_other_processes_count_not_this_one():
    machine = FakeMachine()
    load = machine.load()
    assert not load.update() and load.others is None  # no window yet
    machine.run(20, others=1.0, own=2.0)
    assert not load.update() and machine.reads == 1  # within the first window: not read
    machine.run(40, others=1.0, own=2.0)
    assert load.update() and load.others == pytest.approx(1.0)
    assert machine.reads == 2
    # This process's own threads, however many, are not other processes.
    machine.run(60, others=0.0, own=2.0)
    assert not load.update() and load.others == pytest.approx(0.0)


def test_crowded_needs_a_clear_margin_both_ways():
    machine = FakeMachine()
    load = machine.load()
    load.update()
    for others, crowded in [(0.45, False), (0.55, True), (0.35, True), (0.25, False),
                            (0.45, False), (1.0, True)]:
        machine.run(WINDOW_NS / 1e6, others=others)
        assert load.update() == crowded, others


def test_crowded_means_about_one_core_left_whatever_the_number_of_cpus():
    machine = FakeMachine()
    load = machine.load(n_cpus=8)
    load.update()
    machine.run(50, others=6.0)  # two cores left: the threads still have theirs
    assert not load.update()
    machine.run(50, others=6.6)
    assert load.update()


def _spin_in_child(stop):
    while not stop.is_set():
        for _ in range(10000):
            pass


def _spin_for(seconds):
    never = np.zeros(1, dtype=np.int64)
    _spin.spin_until(never, 0, 1, int(seconds * 1e9))


def _skip_unless_quiet():
    """Skip where other processes already keep a third of a core busy: the
    tests below measure the load of their own child process and threads."""
    baseline = _measure(0.3)
    if baseline > 0.3:
        pytest.skip(f"other processes use {baseline:.2f} cores: this test needs a quiet machine")


def _measure(seconds, during=None):
    """Cores others used over ``seconds`` (one window), while ``during(seconds)`` runs here."""
    load = other_processes_load()
    load.update()
    if during is None:
        time.sleep(seconds)
    else:
        during(seconds)
    load.update()
    return load.others


@needs_proc_stat
@pytest.mark.skipif(not _spin.CAN_SPIN, reason="the test spins without the GIL")
def test_proc_stat_tells_a_busy_process_from_this_ones_own_threads():
    _skip_unless_quiet()
    # This process on two threads: not others' load.
    spinner = threading.Thread(target=_spin_for, args=(0.3,))
    spinner.start()
    own = _measure(0.3, during=_spin_for)
    spinner.join()
    # A child process spinning: one core's worth of others' load.
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    child = context.Process(target=_spin_in_child, args=(stop,), daemon=True)
    child.start()
    try:
        time.sleep(0.1)
        others = _measure(0.3)
    finally:
        stop.set()
        child.join(timeout=10)
    assert own < 0.5 < others, (own, others)


@needs_proc_stat
@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2 if hasattr(os, "sched_getaffinity")
                    else True, reason="a busy child leaves one core only on two CPUs")
@pytest.mark.skipif(not _spin.CAN_SPIN, reason="the test spins without the GIL")
def test_the_pool_runs_on_one_thread_while_the_other_core_is_busy_and_on_two_after():
    from test_pool import _threads_used

    _skip_unless_quiet()
    pool = SpinPool(1)
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    child = context.Process(target=_spin_in_child, args=(stop,), daemon=True)
    child.start()
    try:
        deadline = time.perf_counter() + 5
        while not pool._load.crowded and time.perf_counter() < deadline:
            _threads_used(pool)
        assert pool._load.crowded
        assert _threads_used(pool) == {threading.get_ident()}
    finally:
        stop.set()
        child.join(timeout=10)
    deadline = time.perf_counter() + 5
    while pool._load.crowded and time.perf_counter() < deadline:
        _threads_used(pool)
    assert any(len(_threads_used(pool)) == 2 for _ in range(100))


def test_without_proc_stat_there_is_no_load_and_the_pool_does_without(monkeypatch):
    monkeypatch.setattr(_cpu_load, "_STAT", "/nonexistent/stat")
    assert other_processes_load() is None
    assert SpinPool(1)._load is None


def test_proc_stat_is_read_for_this_processs_cpus_only(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  30 3 300 9000 900 3000 30000 300000 0 0\n"
                    "cpu0 10 1 100 4000 400 1000 10000 100000 0 0\n"
                    "cpu1 20 2 200 5000 500 2000 20000 200000 0 0\n"
                    "intr 12345 0 0\nctxt 999\n")
    monkeypatch.setattr(_cpu_load, "_STAT", str(stat))
    ns_per_tick = 10**9 // os.sysconf("SC_CLK_TCK")
    # Idle, I/O wait and steal are nobody's work.
    assert _cpu_load._busy_reader([0, 1])() == 33333 * ns_per_tick
    assert _cpu_load._busy_reader([1])() == 22222 * ns_per_tick
    assert _cpu_load._busy_reader([2]) is None  # not in the file: cannot tell
