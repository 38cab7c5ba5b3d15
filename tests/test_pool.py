"""The spinning thread pool (``_pool.SpinPool``) and its atomic flags (``_spin``)."""

import multiprocessing
import threading
import time

import numpy as np
import pytest

from fastlstm import _spin
from fastlstm._pool import SpinPool


def test_flags_store_load_and_compare_and_swap():
    flags = np.zeros(3, dtype=np.int64)
    _spin.store(flags, 1, 7)
    assert _spin.load(flags, 1) == 7 and flags.tolist() == [0, 7, 0]
    assert not _spin.compare_and_swap(flags, 1, 6, 9)
    assert flags[1] == 7
    assert _spin.compare_and_swap(flags, 1, 7, 9)
    assert flags[1] == 9


def test_spin_until_sees_a_set_flag_and_gives_up_on_an_unset_one():
    flags = np.array([0, 5], dtype=np.int64)
    assert _spin.spin_until(flags, 1, 5, 10**9)
    start = time.perf_counter()
    assert not _spin.spin_until(flags, 0, 1, 2_000_000)  # 2 ms
    if _spin.CAN_SPIN:
        assert time.perf_counter() - start >= 0.002


@pytest.mark.skipif(not _spin.CAN_SPIN, reason="no atomics: nothing spins")
def test_spin_until_sees_a_flag_set_by_another_thread():
    flags = np.zeros(1, dtype=np.int64)
    timer = threading.Timer(0.01, _spin.store, args=(flags, 0, 3))
    timer.start()
    assert _spin.spin_until(flags, 0, 3, 5 * 10**9)
    timer.join()


def test_signal_then_spin_until_wakes_a_sleeping_waiter_first():
    done, sleeping, go = (np.zeros(1, dtype=np.int64) for _ in range(3))
    sleeping[0] = 1
    outcome = _spin.signal_then_spin_until(done, sleeping, 0, 4, go, 0, 1, 10**9, 0)
    assert outcome == _spin.WAKE_WAITER
    assert done[0] == 4 and sleeping[0] == 0
    go[0] = 1
    assert _spin.signal_then_spin_until(done, sleeping, 0, 5, go, 0, 1, 10**9, 0) == _spin.SEEN
    assert _spin.signal_then_spin_until(done, sleeping, 0, 6, go, 0, 2, 10**5, 0) == _spin.TIMED_OUT
    assert done[0] == 6


def _within(seconds, function):
    """Run ``function`` on a daemon thread; fail, rather than hang, past ``seconds``."""
    errors = []

    def target():
        try:
            function()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: a lost wake-up?"
    if errors:
        raise errors[0]


def _squares(pool, n_tasks, sleep=None, rng=None):
    out = np.full(n_tasks, -1)

    def task(index):
        if sleep is not None and rng.random() < 0.2:
            time.sleep(sleep)
        out[index] = index * index

    pool.run(task, [(i,) for i in range(n_tasks)])
    return out


# spin_ns=0 makes every hand-off go through the sleeping path; a spin of
# 20 us makes both paths happen, in every interleaving the timing allows.
@pytest.mark.parametrize("spin_ns", [0, 20_000, 300_000], ids=["sleep", "mixed", "spin"])
@pytest.mark.parametrize("n_workers", [1, 3])
def test_every_task_runs_once_over_many_phases(spin_ns, n_workers):
    pool = SpinPool(n_workers, spin_ns=spin_ns)
    rng = np.random.default_rng(0)

    def phases():
        for phase in range(400):
            n_tasks = 2 + phase % 5
            expected = np.arange(n_tasks) ** 2
            np.testing.assert_array_equal(_squares(pool, n_tasks, sleep=1e-4, rng=rng), expected)

    _within(120, phases)


def test_tasks_run_on_the_workers_and_the_calling_thread():
    pool = SpinPool(1, watch_load=False)  # two threads even if other processes are busy
    barrier = threading.Barrier(2, timeout=10)
    threads = set()

    def task():
        threads.add(threading.get_ident())
        barrier.wait()  # both tasks must be running at once

    pool.run(task, [(), ()])
    assert len(threads) == 2 and threading.get_ident() in threads


def test_the_initializer_runs_in_each_worker():
    seen = []
    pool = SpinPool(2, initializer=lambda: seen.append(threading.current_thread().name))
    _squares(pool, 6)
    assert sorted(seen) == ["fastlstm-0", "fastlstm-1"]


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_an_exception_reaches_the_caller_and_the_pool_still_works(failing):
    pool = SpinPool(1)
    barrier = threading.Barrier(2, timeout=10)
    ran = []

    def task(index):
        if index < 2:
            barrier.wait()  # tasks 0 and 1 on different threads
        ran.append(index)
        if index == failing:
            raise KeyError(index)

    with pytest.raises(KeyError) as info:
        pool.run(task, [(0,), (1,), (2,)])
    assert info.value.args == (failing,)
    assert sorted(ran) == [0, 1, 2]  # the other thread goes on with the remaining task
    np.testing.assert_array_equal(_squares(pool, 4), np.arange(4) ** 2)


def test_callers_in_several_threads_all_finish():
    pool = SpinPool(1, spin_ns=20_000)
    failures = []

    def caller(seed):
        rng = np.random.default_rng(seed)
        for _ in range(150):
            n_tasks = int(rng.integers(2, 6))
            if not np.array_equal(_squares(pool, n_tasks, sleep=5e-5, rng=rng),
                                  np.arange(n_tasks) ** 2):
                failures.append(seed)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a caller hung"
    assert failures == []


def _predict_in_child(queue):
    import fastlstm._trainer as trainer

    # The parent's pool threads do not exist here; the pool must be new.
    pool = trainer._executor(2)
    out = np.zeros(4)

    def task(i):
        out[i] = i + 1

    pool.run(task, [(i,) for i in range(4)])
    queue.put(out.tolist())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_gets_its_own_pool():
    import fastlstm._trainer as trainer

    _squares(trainer._executor(2), 3)  # the parent's pool exists and has run
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_predict_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's pool")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == [1.0, 2.0, 3.0, 4.0]


def _threads_used(pool, n_tasks=2):
    threads = set()
    never = np.zeros(1, dtype=np.int64)

    def task():
        threads.add(threading.get_ident())
        # 2 ms on the CPU without the GIL: long enough for the other thread
        # to take the other task, and not short of a core (on an idle machine).
        _spin.spin_until(never, 0, 1, 2_000_000)

    pool.run(task, [() for _ in range(n_tasks)])
    return threads


@pytest.mark.skipif(not _spin.CAN_SPIN, reason="the tasks burn CPU by spinning")
def test_threads_short_of_their_cores_stop_the_spinning_then_the_parallelism_for_a_while(
        monkeypatch):
    from fastlstm import _pool

    monkeypatch.setattr(_pool, "_NO_SPIN_NS", 30_000_000)
    monkeypatch.setattr(_pool, "_SUSTAINED_NS", 20_000_000)
    monkeypatch.setattr(_pool, "_SERIAL_MIN_NS", 40_000_000)
    monkeypatch.setattr(_pool, "_SERIAL_MAX_NS", 100_000_000)
    pool = SpinPool(1, spin_ns=123_000, watch_load=False)
    caller = pool.n_workers

    def report(wall_ns, cpu_ns, thread=caller, times=1):
        for _ in range(times):
            pool._note_core_share(thread, wall_ns=wall_ns, cpu_ns=cpu_ns)

    def serial():
        return pool._serial_until > time.perf_counter_ns()

    report(10_000, 1_000, times=5)  # too short to tell
    report(1_000_000, 950_000, times=5)  # had its core
    assert pool._spin_budget() == 123_000 and not serial()
    # Once is a hiccup, on either thread.
    report(1_000_000, 300_000)
    report(1_000_000, 300_000, thread=0)
    assert pool._spin_budget() == 123_000 and not serial()
    report(1_000_000, 950_000, times=5)
    report(1_000_000, 450_000, times=2)  # twice in a row: no spinning
    assert pool._spin_budget() == 0 and not serial()
    report(1_000_000, 450_000, times=2)  # four times: one thread, once it lasts
    assert not serial()
    time.sleep(0.021)
    report(1_000_000, 950_000, thread=0)  # the other thread's share does not interrupt it
    report(1_000_000, 450_000)
    assert serial()
    assert _threads_used(pool) == {threading.get_ident()}
    time.sleep(0.041)
    assert not serial() and pool._spin_budget() == 123_000
    # Then two threads again (a loaded machine may start another window).
    assert any(len(_threads_used(pool)) == 2 for _ in range(100))


def test_brief_competition_keeps_two_threads_and_lasting_competition_lengthens_the_windows(
        monkeypatch):
    from fastlstm import _pool

    monkeypatch.setattr(_pool, "_SUSTAINED_NS", 20_000_000)
    monkeypatch.setattr(_pool, "_SERIAL_MIN_NS", 30_000_000)
    monkeypatch.setattr(_pool, "_SERIAL_MAX_NS", 100_000_000)
    pool = SpinPool(1)
    caller = pool.n_workers

    def starve(ms):
        """Short tasks on the caller for ``ms`` milliseconds; True if the pool went serial."""
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pool._note_core_share(caller, wall_ns=1_000_000, cpu_ns=300_000)
            if pool._serial_until > time.perf_counter_ns():
                return True
            time.sleep(0.001)
        return False

    def recover():
        for _ in range(10):
            pool._note_core_share(caller, wall_ns=1_000_000, cpu_ns=950_000)

    # Brief (PyTorch's OpenMP threads spin about 10 ms after their work).
    assert not starve(10)
    recover()
    assert not starve(10)
    # Lasting: a window of the shortest length, then, starting again right
    # after it, twice as long, up to the longest.
    assert starve(100)
    assert pool._serial_ns == 30_000_000
    lengths = []
    for _ in range(3):
        time.sleep((pool._serial_until - time.perf_counter_ns()) / 1e9 + 0.001)
        assert starve(100)
        lengths.append(pool._serial_ns)
    assert lengths == [60_000_000, 100_000_000, 100_000_000]
    # Competition gone for longer than a window: the next one is short again.
    time.sleep((pool._serial_until - time.perf_counter_ns()) / 1e9 + 0.101)
    recover()
    assert starve(100)
    assert pool._serial_ns == 30_000_000


def _worker_sleeps_within(pool, seconds):
    """Whether the pool's worker goes to sleep within ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if _spin.load(pool._worker_sleeps, 0):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.skipif(not _spin.CAN_SPIN, reason="no atomics: workers never spin")
def test_a_raised_spin_keeps_the_worker_up_between_phases_and_ends_with_its_context():
    pool = SpinPool(1, spin_ns=1_000_000)
    pool.run(lambda: None, [(), ()])
    assert _worker_sleeps_within(pool, 5)
    with pool.spinning(3 * 10**9) as same:
        assert same is pool and pool._spin_budget() == 3 * 10**9
        with pool.spinning(2_000_000):  # overlapping and shorter: the longest applies
            assert pool._spin_budget() == 3 * 10**9
        assert pool._spin_budget() == 3 * 10**9
        pool.run(lambda: None, [(), ()])
        assert not _worker_sleeps_within(pool, 0.3)
    assert pool._spin_budget() == 1_000_000
    # The next phase ends the long spin; after it the pool's own budget holds.
    pool.run(lambda: None, [(), ()])
    assert _worker_sleeps_within(pool, 5)
    with pytest.raises(KeyError):
        with pool.spinning(3 * 10**9):
            raise KeyError("the budget is restored however the context ends")
    assert pool._spin_budget() == 1_000_000


def test_fit_raises_the_spin_and_prediction_does_not(monkeypatch):
    from fastlstm import LSTMClassifier
    from fastlstm._pool import FIT_SPIN_NS

    asked = []
    original = SpinPool.spinning

    def spy(self, spin_ns):
        asked.append(spin_ns)
        return original(self, spin_ns)

    monkeypatch.setattr(SpinPool, "spinning", spy)
    rng = np.random.RandomState(0)
    X = [rng.standard_normal((5, 2)) for _ in range(8)]
    y = [0, 1] * 4
    clf = LSTMClassifier(hidden_size=3, bidirectional=True, max_epochs=2, n_jobs=2,
                         random_state=0).fit(X, y)
    assert asked == [FIT_SPIN_NS]
    clf.predict(X)
    assert asked == [FIT_SPIN_NS]
    LSTMClassifier(hidden_size=3, max_epochs=1, n_jobs=1, random_state=0).fit(X, y)
    assert asked == [FIT_SPIN_NS]  # one thread: no pool
