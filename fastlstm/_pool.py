"""A persistent thread pool whose hand-offs spin briefly before they sleep.

fastlstm's parallel work comes in phases: the (shard, direction) tasks of one
layer, run at once, then the caller goes on alone (the output layer, the
loss, the optimiser) until the next phase. On small networks a phase lasts a
few hundred microseconds, and a pool that puts its threads to sleep between
phases (``concurrent.futures.ThreadPoolExecutor``) pays a kernel wake-up at
each end of every phase: 90 us per phase measured on the project machine,
0.2 ms of a 2 ms W1 step. Here both sides of a hand-off first spin, without
the GIL, on an atomic flag (``_spin``), and sleep only when the other side
has not answered within ``spin_ns``: 12 us per phase on the same
measurement. The spinning is bounded, so an idle pool sleeps and a busy
machine loses at most ``spin_ns`` of a core per hand-off.

A fit raises the spin for its whole length (:meth:`SpinPool.spinning`): the
Python between two phases of a training step (loss, clipping, optimiser, the
next batch) can outlast the default spin, and a worker that has gone to
sleep costs more than its wake-up's latency: on a virtual machine its idle
virtual CPU is given up to the host, and the phase it is woken for starts
late and runs slow.

A phase is either Python tasks (:meth:`SpinPool.run`), which a worker runs
with the GIL, or a native job (:meth:`SpinPool.run_job`): C calls that a
spinning worker makes from its loop in ``_spin.serve``, never taking the
GIL. A worker that takes the GIL starts its task only once the calling
thread lets it go, in its own first kernel call: 23-51 us into a W1 phase,
measured.
"""

import _thread
import itertools
import threading
import time
from contextlib import contextmanager

import numpy as np

from ._cpu_load import other_processes_load
from ._spin import (
    CAN_SPIN,
    SEEN,
    TIMED_OUT,
    WAKE_WAITER,
    compare_and_swap,
    load,
    now_ns,
    publish_job,
    run_job,
    serve,
    signal_then_spin_until,
    spin_until,
    store,
    take_job_times,
)

# How long a thread spins for its partner before it sleeps: longer than the
# Python between two back-to-back predictions' phases (0.3-1 ms, checking,
# packing, output layer), short enough to cost little where the calls are
# far apart (a busy core stops the spinning anyway, see _note_core_share).
# Measured on the project machine, W1 predictions in blocks of 15 calls
# alternated in one process, medians with 0.3 / 1 / 3 / 10 ms:
# network_outputs 1.54 / 1.44 / 1.44 / 1.46 ms and 1.71 / 1.53 / 1.54 / 1.56
# ms, predict_proba 2.23 / 1.96 / 1.92 / 1.99 ms and 2.71 / 2.20 / 2.06 / 2.05
# ms (two processes).
SPIN_NS = 3_000_000
# How long they spin between the phases of a fit (see SpinPool.spinning), as
# long as PyTorch's OpenMP threads spin after their work. Measured on the
# project machine, in a Japanese Vowels fit of 100 epochs (2000 phases): the
# worker was asleep when 918 phases started with SPIN_NS, 1 with this; the
# caller waited for it 46 -> 13 us (median), 214 -> 126 us (mean). Fresh
# processes alternated: against SPIN_NS patched in, four times, fits 4.91-5.55
# -> 3.80-4.12 s, W1 training steps 4.72-6.36 -> 3.72-4.67 ms, W2 4.25-4.76
# -> 3.45-3.89 ms; against the code before, six times, medians 3.95 -> 3.74 s,
# 4.77 -> 4.49 ms, 4.02 -> 3.33 ms (the machine's noise is as large as the
# gain). With the other core busy the pool stops spinning anyway
# (_note_core_share): no change there.
FIT_SPIN_NS = 10_000_000
# Tasks of at least this long that got less than this share of a core tell
# that their thread shares the core with another process; when many do, the
# pool stops spinning, then runs phases on one thread, for a while (see
# SpinPool._note_core_share).
_SHARED_CORE_MIN_NS = 100_000
_SHARED_CORE_CPU_SHARE = 0.7
_STARVED_DECAY = 0.75
_NO_SPIN_RATE = 0.4
_SERIAL_RATE = 0.6
_NO_SPIN_NS = 5_000_000
_SUSTAINED_NS = 20_000_000
_SERIAL_MIN_NS = 50_000_000
_SERIAL_MAX_NS = 400_000_000
# How long a worker that has seen its start signal waits before it takes the
# GIL, which the caller still holds while it calls its own first kernel.
SETTLE_NS = 5_000


class SpinPool:
    """Run phases of independent tasks on the calling thread and ``n_workers`` threads.

    Parameters
    ----------
    n_workers : int
        Worker threads besides the calling one; they start at once and live
        as long as the process (daemon threads).
    initializer : callable, default=None
        Run once in each worker thread before its first task (flush-to-zero
        is a per-thread setting).
    spin_ns, settle_ns : int
        See :data:`SPIN_NS` and :data:`SETTLE_NS`.
    watch_load : bool, default=True
        Run phases on the calling thread alone while other processes leave
        this one about a core or less (see :meth:`_take_for_phase`). Tests
        that need the threads whatever the machine's load pass False.

    Notes
    -----
    One phase runs at a time. A call of :meth:`run` while another thread's
    phase is running (two fits in two threads, say) runs its tasks on its own
    thread rather than waiting: every task writes only its own outputs, so
    where tasks run never changes a result.
    """

    def __init__(self, n_workers, initializer=None, *, spin_ns=SPIN_NS, settle_ns=SETTLE_NS,
                 watch_load=True):
        self.n_workers = n_workers
        self._initializer = initializer
        # The spin budget, read by _spin.serve too: spin_ns, or the largest
        # budget asked for by a caller of spinning().
        self._spin_ns = np.array([spin_ns], dtype=np.int64)
        self._base_spin_ns = spin_ns
        self._raised_spins = []
        self._raised_spins_lock = threading.Lock()
        self._settle_ns = settle_ns
        # Per worker: the phase it is asked to run (go), the last phase it
        # finished (done), and 1 while the worker, or the caller waiting for
        # it, sleeps on its lock rather than spins.
        self._go = np.zeros(n_workers, dtype=np.int64)
        self._done = np.zeros(n_workers, dtype=np.int64)
        self._worker_sleeps = np.zeros(n_workers, dtype=np.int64)
        self._caller_sleeps = np.zeros(n_workers, dtype=np.int64)
        # Locks used as binary semaphores: held until the other side releases.
        self._worker_wakeup = [_locked() for _ in range(n_workers)]
        self._caller_wakeup = [_locked() for _ in range(n_workers)]
        self._job = None
        # The phase's native job (see run_job): the array, and its address
        # for the workers' loop in _spin.serve (0 while the phase is a Python
        # one); each worker's wall and CPU time on it, in ns.
        self._native_job = None
        self._job_address = np.zeros(1, dtype=np.int64)
        self._job_times = np.zeros((n_workers, 2), dtype=np.int64)
        self._errors = [None] * n_workers
        self._phase = 0
        # Times until which no thread spins (_spin.now_ns(), read by
        # _spin.serve too), and until which phases run on the calling thread
        # only (perf_counter_ns()); see _note_core_share.
        self._no_spin_until = np.zeros(1, dtype=np.int64)
        self._serial_until = 0
        self._starved_rate = [0.0] * (n_workers + 1)  # each worker's, then the caller's
        # Since when a thread's rate has stayed above _SERIAL_RATE (0: it has
        # not), and the length of the last serial window.
        self._starved_since = 0
        self._starved_thread = None
        self._serial_ns = _SERIAL_MIN_NS
        # Other processes' load on this process's CPUs, where the system
        # tells it (Linux); None elsewhere.
        self._load = other_processes_load() if watch_load else None
        if self._load is not None:
            self._load.update()  # the first window starts now
        self._busy = threading.Lock()
        for worker in range(n_workers):
            threading.Thread(target=self._serve, args=(worker,), name=f"fastlstm-{worker}",
                             daemon=True).start()

    @contextmanager
    def spinning(self, spin_ns):
        """Spin up to ``spin_ns`` (if longer than the pool's own) while in the context.

        For a fit: its phases come one after the other for its whole length,
        and a worker that sleeps between two of them costs that phase more
        than its wake-up (see the module docstring). Contexts may overlap
        (fits in several threads): the longest budget asked for applies.
        """
        with self._raised_spins_lock:
            self._raised_spins.append(spin_ns)
            self._store_spin_budget()
        try:
            yield self
        finally:
            with self._raised_spins_lock:
                self._raised_spins.remove(spin_ns)
                self._store_spin_budget()

    def _store_spin_budget(self):
        """The budget read by the spinning threads: the longest asked for (holding the lock)."""
        store(self._spin_ns, 0, max(self._raised_spins + [self._base_spin_ns]))

    def run(self, function, tasks):
        """Call ``function(*task)`` for every task and return when all are done.

        The calling thread runs tasks too; each thread takes the next task not
        yet started, so tasks of unequal cost still balance. The first
        exception a task raised is raised here, once every task has ended.
        """
        next_index = itertools.count()  # next() on it is atomic under the GIL

        def work():
            for index in iter(next_index.__next__, None):
                if index >= len(tasks):
                    return
                function(*tasks[index])

        if not self._take_for_phase(len(tasks)):
            work()
            return
        try:
            self._job = work  # _job_address is 0 outside run_job
            self._start_phase()
            try:
                self._caller_runs(work)
            finally:
                # Wait for every worker even if this thread's task failed:
                # they write into buffers the caller owns.
                self._wait_for_workers()
                errors = [error for error in self._errors if error is not None]
                self._errors = [None] * self.n_workers
            if errors:
                raise errors[0]
        finally:
            self._job = None
            self._busy.release()

    def run_job(self, job):
        """Run a job of native tasks (see ``_spin.run_job``); return when all are done.

        Like :meth:`run`, but nothing of the phase takes the GIL: a spinning
        worker runs its share from its loop in ``_spin.serve``, and the
        calling thread from ``_spin.run_job``. Where ``CAN_SPIN`` is False,
        or while :meth:`run` would run on the calling thread alone, the
        calling thread runs every task.
        """
        if not CAN_SPIN or not self._take_for_phase(job[0]):
            run_job(job)
            return
        try:
            self._native_job = job
            publish_job(self._job_address, job)
            self._start_phase()
            self._caller_runs(lambda: run_job(job))
            self._wait_for_workers()
            for worker in range(self.n_workers):
                # The worker could not note them itself without the GIL.
                self._note_core_share(worker, *take_job_times(self._job_times, worker))
        finally:
            store(self._job_address, 0, 0)
            self._native_job = None
            self._busy.release()

    def _take_for_phase(self, n_tasks):
        """Take the pool for a phase of ``n_tasks``; False if the calling thread runs it alone.

        It does with fewer than two tasks, while other processes leave this
        one about a core or less (``_cpu_load``), while phases run on one
        thread (see :meth:`_note_core_share`), and while another thread's
        phase runs.
        """
        if (n_tasks < 2 or (self._load is not None and self._load.update())
                or (self._serial_until and time.perf_counter_ns() < self._serial_until)):
            return False
        return self._busy.acquire(blocking=False)

    def _start_phase(self):
        self._phase += 1
        for worker in range(self.n_workers):
            _signal(self._go, self._worker_sleeps, self._worker_wakeup, worker, self._phase)

    def _caller_runs(self, work):
        """``work()`` on the calling thread, noting the share of its core it got."""
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        try:
            work()
        finally:
            self._note_core_share(self.n_workers, time.perf_counter_ns() - wall,
                                  time.thread_time_ns() - cpu)

    def _wait_for_workers(self):
        for worker in range(self.n_workers):
            self._wait(self._done, self._caller_sleeps, self._caller_wakeup, worker, self._phase)

    def _serve(self, worker):
        if self._initializer is not None:
            self._initializer()
        phase, report = 0, True
        while True:
            # Report the last phase done and look out for the next one,
            # without taking the GIL in between (see _spin); native jobs run
            # there too, so the loop comes back here only for a Python job,
            # to sleep or to wake the caller.
            if CAN_SPIN:
                outcome, phase = serve(self._go, self._done, self._caller_sleeps, worker, phase,
                                       report, self._job_address, self._job_times,
                                       self._no_spin_until, self._spin_ns, self._settle_ns)
            elif report:
                outcome = signal_then_spin_until(self._done, self._caller_sleeps, worker, phase,
                                                 self._go, worker, phase + 1, 0, 0)
                phase += outcome == SEEN
            else:
                outcome = SEEN if load(self._go, worker) > phase else TIMED_OUT
                phase += outcome == SEEN
            report = True
            if outcome == WAKE_WAITER:
                self._caller_wakeup[worker].release()
                report = False
                continue
            if outcome == TIMED_OUT:
                phase += 1
                self._wait(self._go, self._worker_sleeps, self._worker_wakeup, worker, phase,
                           spin=False)
            wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
            if load(self._job_address, 0):
                run_job(self._native_job)
                self._job_times[worker] = (time.perf_counter_ns() - wall,
                                           time.thread_time_ns() - cpu)
                continue
            try:
                self._job()
            except BaseException as error:  # re-raised in the calling thread
                self._errors[worker] = error
            self._note_core_share(worker, time.perf_counter_ns() - wall,
                                  time.thread_time_ns() - cpu)

    def _note_core_share(self, thread, wall_ns, cpu_ns):
        """Stop spinning, then run phases on one thread, while threads get less than their core.

        Such a thread shares its core with another busy process (measured:
        the caller got 51 % of its core in W1 steps with the other core
        busy, in 84 % of its tasks). Spinning then keeps the other core
        occupied when it could take one of the two, and the scheduler makes
        the spinner pay its spun time back during its next task: W1 steps
        took 4.4 ms spinning, 3.3 ms without. And a phase ends with its last
        task, so a thread that waits out the other process's time slices
        holds up the whole phase: on the calling thread alone the phases run
        about as fast as with ``n_jobs=1`` (W1 steps in one process, the
        other core busy: 3.67 ms so, 3.87 ms with ``n_jobs=1``, 4.13 ms on
        two threads through ``ThreadPoolExecutor``; W2 3.61, 3.56, 4.20 ms).

        Each thread keeps a running rate of its tasks short of their core
        (``_STARVED_DECAY``), since on a virtual machine a task now and then
        loses part of its core to the host: above ``_NO_SPIN_RATE`` (two in
        a row) the pool stops spinning for ``_NO_SPIN_NS`` (extended by each
        such task). Above ``_SERIAL_RATE`` (four in a row) for
        ``_SUSTAINED_NS`` it also runs its phases on the calling thread for
        a window, then tries two threads again; the window starts at
        ``_SERIAL_MIN_NS`` and doubles, up to ``_SERIAL_MAX_NS``, each time
        the next one starts within a window's length of the last one's end,
        so that a process that stays busy has the pool trying two threads
        rarely.

        The wait of ``_SUSTAINED_NS`` is for brief competition, which
        costs less on two threads than on one: PyTorch's OpenMP threads spin
        for 8-11 ms after their work in the same process (measured). With
        windows of 50 ms from the fourth short task, W2 training steps in
        blocks between PyTorch's ran on one thread 37 % of the time (median
        step 1.57 ms against 1.00 ms on two threads); W1 steps 4.12 ms,
        against 2.31 ms on two threads throughout. With the wait, none of
        those blocks ran on one thread. With the other core busy, the
        default's steps took 0.85-1.13x of ``n_jobs=1``'s on W1 and
        0.82-1.38x on W2 in five benchmark runs (``bench/``), against
        0.94-1.19x and 0.78-1.34x in three runs before the wait.
        Where the system tells how busy other processes keep the CPUs
        (``_cpu_load``, Linux), the pool also runs its phases on one thread
        while they leave it about one core or less, and on all its threads
        again within 50 ms of their stopping (see :meth:`_take_for_phase`):
        with a busy loop on the other core these windows ran 0-12 of 65
        W1/W2 steps on one thread, that measure all of them. The windows
        stay for what it cannot see: threads of this process, other systems.
        ``thread`` is the worker's index, or ``n_workers`` for the caller.
        """
        if wall_ns < _SHARED_CORE_MIN_NS:
            return
        starved = 1.0 if cpu_ns < _SHARED_CORE_CPU_SHARE * wall_ns else 0.0
        rate = self._starved_rate[thread] = (
            _STARVED_DECAY * self._starved_rate[thread] + (1 - _STARVED_DECAY) * starved)
        if rate > _NO_SPIN_RATE:
            store(self._no_spin_until, 0, now_ns() + _NO_SPIN_NS)
        if rate <= _SERIAL_RATE:
            if thread == self._starved_thread:
                self._starved_since = 0
            return
        now = time.perf_counter_ns()
        if not self._starved_since:
            self._starved_since, self._starved_thread = now, thread
        elif now - self._starved_since >= _SUSTAINED_NS:
            again = now < self._serial_until + self._serial_ns
            self._serial_ns = min(2 * self._serial_ns, _SERIAL_MAX_NS) if again else _SERIAL_MIN_NS
            self._serial_until = now + self._serial_ns
            self._starved_since = 0

    def _spin_budget(self):
        if now_ns() < load(self._no_spin_until, 0):
            return 0
        return load(self._spin_ns, 0)

    def _wait(self, flags, sleeping, wakeups, worker, target, *, spin=True):
        """Return once ``flags[worker] >= target``: spin first, then sleep.

        Going to sleep is announced in ``sleeping[worker]`` before the flag
        is read again; the side that sets the flag clears the announcement
        and releases the lock only if it finds it (both with sequentially
        consistent atomics), so a wake-up is never lost nor left over.
        """
        if spin and spin_until(flags, worker, target, self._spin_budget()):
            return
        store(sleeping, worker, 1)
        if load(flags, worker) >= target and compare_and_swap(sleeping, worker, 1, 0):
            return
        wakeups[worker].acquire()


def _signal(flags, sleeping, wakeups, worker, value):
    """Set ``flags[worker] = value`` and wake the worker's waiter if it sleeps."""
    store(flags, worker, value)
    if compare_and_swap(sleeping, worker, 1, 0):
        wakeups[worker].release()


def _locked():
    lock = _thread.allocate_lock()
    lock.acquire()
    return lock
