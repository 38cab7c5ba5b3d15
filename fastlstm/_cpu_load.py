"""How busy other processes keep this process's CPUs (Linux, ``/proc/stat``).

The thread pool (``_pool.py``) runs a phase's tasks on two or more threads;
when another process keeps a core busy, one of them shares its core and the
phase, which ends with its last task, waits for that thread's time slices.
Measured on the project machine with a busy-loop process on the other core,
blocks of training steps alternated in one process: two threads took
1.22x (W1) and 1.31x (W2) the time of ``n_jobs=1``, the pool's calling
thread alone 1.04-1.05x. The pool can tell that its threads get less than
their cores, but not why, nor whether the competition has ended while it
runs on one thread; the kernel's CPU accounting tells both: the CPUs' busy
time less this process's own CPU time is what the other processes used.

``/proc/stat`` counts in clock ticks (``USER_HZ``, 100 per second), so a
window of 50 ms on two CPUs reads others' load to about +-0.2 of a core,
hence the margins below.
"""

import os
import threading
import time

# The load is measured over windows at least this long.
WINDOW_NS = 50_000_000
# Phases run on one thread from a window that leaves fewer than
# CROWDED_FREE_CORES to this process (with about one core left, two threads
# would share it) until one leaves more than UNCROWDED_FREE_CORES. Measured
# there over 200 windows of W2 training each, the cores others used: no
# other process, 0.01 on average (at most 0.35); a busy loop, 0.80 (5 %
# below 0.40) while the pool ran on two threads, 1.01 (at least 0.75) on one.
CROWDED_FREE_CORES = 1.5
UNCROWDED_FREE_CORES = 1.7

_STAT = "/proc/stat"
# /proc/stat's per-CPU fields: user nice system idle iowait irq softirq steal
# (guest time is included in user). Idle, I/O wait and the time the
# hypervisor took (steal) are nobody's work on the CPU.
_BUSY_FIELDS = (0, 1, 2, 5, 6)


class OtherProcessesLoad:
    """Whether other processes leave this process about one core or less.

    Parameters
    ----------
    read_busy_ns : callable
        ``read_busy_ns() -> int``: CPU time spent on the CPUs this process
        may use, by every process, in ns since some fixed time.
    read_own_ns : callable
        ``read_own_ns() -> int``: this process's CPU time (all its threads),
        in ns.
    n_cpus : int
        How many CPUs ``read_busy_ns`` covers.
    clock_ns : callable, default=time.perf_counter_ns
    """

    def __init__(self, read_busy_ns, read_own_ns, n_cpus, clock_ns=time.perf_counter_ns):
        self._read_busy_ns = read_busy_ns
        self._read_own_ns = read_own_ns
        self.n_cpus = n_cpus
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._sample = None  # (time, busy, own) at the start of the current window
        self.others = None  # cores other processes used in the last window
        self.crowded = False

    def update(self):
        """Re-measure if a window has passed since the last measurement; return ``crowded``.

        Cheap between measurements (one clock read); a measurement reads
        ``/proc/stat`` (30-60 us). Safe to call from several threads: one
        measures, the others return the last decision.
        """
        now = self._clock_ns()
        sample = self._sample
        if sample is not None and now - sample[0] < WINDOW_NS:
            return self.crowded
        if not self._lock.acquire(blocking=False):
            return self.crowded
        try:
            busy, own = self._read_busy_ns(), self._read_own_ns()
            if sample is not None:
                self.others = ((busy - sample[1]) - (own - sample[2])) / (now - sample[0])
                free = self.n_cpus - self.others
                self.crowded = free < (UNCROWDED_FREE_CORES if self.crowded
                                       else CROWDED_FREE_CORES)
            self._sample = (now, busy, own)
        finally:
            self._lock.release()
        return self.crowded


def _busy_reader(cpus):
    """``read_busy_ns`` over ``cpus`` from ``/proc/stat``; None if it cannot be read so."""
    ticks_per_second = os.sysconf("SC_CLK_TCK")

    def cpu_lines(text):
        return {line.split(None, 1)[0]: line for line in text.splitlines()
                if line.startswith("cpu") and line[3:4].isdigit()}

    with open(_STAT) as file:
        text = file.read()
    lines = cpu_lines(text)
    names = {f"cpu{cpu}" for cpu in cpus}
    if not names <= lines.keys():
        return None
    all_cpus = names == lines.keys()  # then the file's first line sums them

    def busy_ticks(line):
        fields = line.split()[1:]
        return sum(int(fields[index]) for index in _BUSY_FIELDS)

    def read_busy_ns():
        with open(_STAT) as file:
            if all_cpus:
                ticks = busy_ticks(file.readline())
            else:
                ticks = sum(busy_ticks(line) for name, line in cpu_lines(file.read()).items()
                            if name in names)
        return ticks * 1_000_000_000 // ticks_per_second

    return read_busy_ns


def other_processes_load():
    """An :class:`OtherProcessesLoad` for this process's CPUs, or None where the
    system does not tell (no ``/proc/stat``, no CPU affinity: not Linux)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        read_busy_ns = _busy_reader(cpus)
        if read_busy_ns is None:
            return None
        read_busy_ns()
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    return OtherProcessesLoad(read_busy_ns, time.process_time_ns, len(cpus))
