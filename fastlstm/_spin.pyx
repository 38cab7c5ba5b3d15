# cython: language_level=3
"""Atomic flags and bounded spin-waits without the GIL, for ``_pool.SpinPool``.

A training step of a small network hands work to another thread and back
twice, and a prediction once. Through ``concurrent.futures`` each hand-off
puts the waiting thread to sleep in the kernel and costs 50-100 us to wake it
(measured on the project machine: +90 us per two-task phase of a 200 us
kernel), a tenth of a W1 step. Here the waiting thread spins, for a bounded
time and without the GIL, on a flag the other thread sets, and only then
goes to sleep: a hand-off then costs about the time to see a cache line
change (+12 us per phase, same measurement). A phase of native tasks (C
functions on packed arguments) runs here entirely: a worker's loop in
:func:`serve` reports a phase done, spins for the next and runs it, without
taking the GIL at all.

Flags are int64 entries of NumPy arrays, read and written with sequentially
consistent atomics (GCC/Clang builtins). Elsewhere (MSVC) ``CAN_SPIN`` is
False: the functions keep the GIL, which then orders every access, and the
spin-waits give up at once, so that the pool sleeps as a plain thread pool
would.
"""

from libc.stdint cimport int64_t, intptr_t

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__GNUC__) || defined(__clang__)
    #include <time.h>
    #define FASTLSTM_CAN_SPIN 1
    static inline int64_t fastlstm_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void fastlstm_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline int fastlstm_cas(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                           __ATOMIC_SEQ_CST);
    }
    static inline int64_t fastlstm_fetch_add(int64_t *p, int64_t v) {
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    }
    static inline int64_t fastlstm_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    static inline int64_t fastlstm_thread_cpu_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    #if defined(__x86_64__) || defined(__i386__)
    static inline void fastlstm_relax(void) { __builtin_ia32_pause(); }
    #else
    static inline void fastlstm_relax(void) { }
    #endif
    #if defined(_WIN32)
    static inline void fastlstm_yield(void) { }
    #else
    #include <sched.h>
    static inline void fastlstm_yield(void) { sched_yield(); }
    #endif
    #else
    /* Without the builtins the callers keep the GIL, which orders the accesses. */
    #define FASTLSTM_CAN_SPIN 0
    static inline int64_t fastlstm_load(int64_t *p) { return *p; }
    static inline void fastlstm_store(int64_t *p, int64_t v) { *p = v; }
    static inline int fastlstm_cas(int64_t *p, int64_t expected, int64_t desired) {
        if (*p != expected) return 0;
        *p = desired;
        return 1;
    }
    static inline int64_t fastlstm_fetch_add(int64_t *p, int64_t v) {
        int64_t old = *p;
        *p = old + v;
        return old;
    }
    static inline int64_t fastlstm_now_ns(void) { return 0; }
    static inline int64_t fastlstm_thread_cpu_ns(void) { return 0; }
    static inline void fastlstm_relax(void) { }
    static inline void fastlstm_yield(void) { }
    #endif
    /* Counters for kernels whose tasks share phases (numba_lstm's
     * cooperative forward pass calls these by name). Waiting yields the
     * core after a while: on a machine with more busy threads than cores,
     * the thread being waited for may need it. */
    static int64_t fastlstm_counter_load(int64_t *p) { return fastlstm_load(p); }
    static int64_t fastlstm_counter_add_one(int64_t *p) { return fastlstm_fetch_add(p, 1); }
    static void fastlstm_counter_wait(int64_t *p, int64_t value) {
        int64_t spins = 0;
        while (fastlstm_load(p) < value) {
            fastlstm_relax();
            if (++spins >= 4096) {
                spins = 0;
                fastlstm_yield();
            }
        }
    }
    typedef void (*fastlstm_native_task)(int64_t *);
    static inline void fastlstm_call_native(int64_t function, int64_t arguments) {
        ((fastlstm_native_task)(intptr_t)function)((int64_t *)(intptr_t)arguments);
    }
    """
    bint FASTLSTM_CAN_SPIN
    int64_t fastlstm_load(int64_t *p) nogil
    void fastlstm_store(int64_t *p, int64_t v) nogil
    bint fastlstm_cas(int64_t *p, int64_t expected, int64_t desired) nogil
    int64_t fastlstm_fetch_add(int64_t *p, int64_t v) nogil
    int64_t fastlstm_now_ns() nogil
    int64_t fastlstm_thread_cpu_ns() nogil
    void fastlstm_call_native(int64_t function, int64_t arguments) nogil
    void fastlstm_relax() nogil
    int64_t fastlstm_counter_load(int64_t *p) nogil
    int64_t fastlstm_counter_add_one(int64_t *p) nogil
    void fastlstm_counter_wait(int64_t *p, int64_t value) nogil

CAN_SPIN = bool(FASTLSTM_CAN_SPIN)


cdef bint _spin(int64_t *flag, int64_t target, int64_t max_ns, int64_t settle_ns) noexcept nogil:
    """Spin until ``*flag >= target`` or ``max_ns`` pass; then spin ``settle_ns`` more."""
    cdef int64_t deadline = fastlstm_now_ns() + max_ns
    cdef int k
    cdef bint seen = False
    while not seen:
        # Reading the clock costs more than a look at the flag.
        for k in range(64):
            if fastlstm_load(flag) >= target:
                seen = True
                break
            fastlstm_relax()
        if not seen and fastlstm_now_ns() > deadline:
            return False
    if settle_ns > 0:
        deadline = fastlstm_now_ns() + settle_ns
        while fastlstm_now_ns() < deadline:
            fastlstm_relax()
    return True


def counter_addresses():
    """Addresses of ``fastlstm_counter_load``, ``_add_one`` and ``_wait``.

    ``int64_t load(int64_t *counter)`` reads a counter atomically;
    ``int64_t add_one(int64_t *counter)`` adds 1 atomically and returns the
    value before; ``void wait(int64_t *counter, int64_t value)`` spins (then
    yields the core now and then) until ``*counter >= value``. numba kernels
    call them by name (``numba_lstm`` registers the names with LLVM). Without
    atomics (``CAN_SPIN`` False) they are plain reads and writes, for one
    thread only.
    """
    return (<size_t> &fastlstm_counter_load, <size_t> &fastlstm_counter_add_one,
            <size_t> &fastlstm_counter_wait)


def load(int64_t[::1] flags, Py_ssize_t i):
    """``flags[i]``, read atomically."""
    return fastlstm_load(&flags[i])


def store(int64_t[::1] flags, Py_ssize_t i, int64_t value):
    """``flags[i] = value``, written atomically."""
    fastlstm_store(&flags[i], value)


def publish_job(int64_t[::1] job_address, int64_t[::1] job):
    """Write the address of ``job``'s data into ``job_address[0]``, atomically.

    What ``store(job_address, 0, job.ctypes.data)`` does, without NumPy's
    ctypes object: building it took 16-18 us of every phase of a W1
    training step (the interpreter's caches cold after the kernels), 1.6 us
    hot.
    """
    fastlstm_store(&job_address[0], <int64_t> <intptr_t> &job[0])


def take_job_times(int64_t[:, ::1] job_times, Py_ssize_t worker):
    """A worker's (wall, CPU) times in ns on its last native job; both reset to 0.

    Python ints, where indexing the array gives NumPy scalars (about 1 us
    hot, several after the kernels have evicted the interpreter's data).
    """
    cdef int64_t wall = job_times[worker, 0], cpu = job_times[worker, 1]
    job_times[worker, 0] = 0
    job_times[worker, 1] = 0
    return wall, cpu


def compare_and_swap(int64_t[::1] flags, Py_ssize_t i, int64_t expected, int64_t desired):
    """Set ``flags[i]`` to ``desired`` if it holds ``expected``; True if it did."""
    return bool(fastlstm_cas(&flags[i], expected, desired))


def spin_until(int64_t[::1] flags, Py_ssize_t i, int64_t target, int64_t max_ns):
    """Wait, spinning without the GIL, until ``flags[i] >= target``.

    Returns False if ``max_ns`` nanoseconds passed first (at once where
    ``CAN_SPIN`` is False).
    """
    cdef int64_t *flag = &flags[i]
    cdef bint seen
    if not FASTLSTM_CAN_SPIN:
        return fastlstm_load(flag) >= target
    with nogil:
        seen = _spin(flag, target, max_ns, 0)
    return seen


# What :func:`signal_then_spin_until` saw.
cdef enum Outcome:
    OUTCOME_TIMED_OUT = 0
    OUTCOME_SEEN = 1
    OUTCOME_WAKE_WAITER = 2

TIMED_OUT, SEEN, WAKE_WAITER = OUTCOME_TIMED_OUT, OUTCOME_SEEN, OUTCOME_WAKE_WAITER


def signal_then_spin_until(int64_t[::1] signal_flags, int64_t[::1] sleeping_flags, Py_ssize_t i,
                           int64_t value, int64_t[::1] flags, Py_ssize_t j, int64_t target,
                           int64_t max_ns, int64_t settle_ns):
    """Signal a waiter, then wait for the next request, without the GIL in between.

    Sets ``signal_flags[i] = value``. If the thread waiting for that signal
    has gone to sleep (``sleeping_flags[i]`` is 1), clears that flag and
    returns ``WAKE_WAITER`` at once: the caller must wake it. Otherwise spins
    until ``flags[j] >= target`` (``SEEN``) or ``max_ns`` pass
    (``TIMED_OUT``). Once the flag is seen, it spins ``settle_ns`` more
    before taking the GIL back: the thread that set the flag still holds the
    GIL for a few microseconds, and a thread that asks for a held GIL sleeps
    in the kernel, the very cost spinning avoids.
    """
    cdef int64_t *flag = &flags[j]
    cdef int64_t *signal = &signal_flags[i]
    cdef int64_t *sleeping = &sleeping_flags[i]
    cdef int outcome = OUTCOME_TIMED_OUT
    if not FASTLSTM_CAN_SPIN:
        fastlstm_store(signal, value)
        if fastlstm_cas(sleeping, 1, 0):
            return WAKE_WAITER
        return SEEN if fastlstm_load(flag) >= target else TIMED_OUT
    with nogil:
        fastlstm_store(signal, value)
        if fastlstm_cas(sleeping, 1, 0):
            outcome = OUTCOME_WAKE_WAITER
        elif _spin(flag, target, max_ns, settle_ns):
            outcome = OUTCOME_SEEN
    return outcome


# Native tasks: compiled functions ``void f(int64_t *arguments)`` (numba
# cfuncs, see ``_kernels.numba_lstm.entry_addresses``) that a thread runs
# without the GIL. A job is an int64 array: [n_tasks, next task to take, then
# per task the function's address and its argument block's address].
cdef enum:
    JOB_HEADER = 2


cdef void _run_job(int64_t *job) noexcept nogil:
    """Take the job's tasks one at a time, until none is left."""
    cdef int64_t index
    while True:
        index = fastlstm_fetch_add(&job[1], 1)
        if index >= job[0]:
            return
        fastlstm_call_native(job[JOB_HEADER + 2 * index], job[JOB_HEADER + 2 * index + 1])


def job_header_size():
    """Entries before the first task in a job array."""
    return JOB_HEADER


def run_job(int64_t[::1] job):
    """Run the job's tasks not yet taken by another thread; return when none is left.

    Without the GIL where ``CAN_SPIN`` (the task counter is then atomic),
    with it elsewhere.
    """
    if not FASTLSTM_CAN_SPIN:
        _run_job(&job[0])
        return
    with nogil:
        _run_job(&job[0])


def serve(int64_t[::1] go, int64_t[::1] done, int64_t[::1] caller_sleeps, Py_ssize_t worker,
          int64_t phase, bint report, int64_t[::1] job_address, int64_t[:, ::1] job_times,
          int64_t[::1] no_spin_until, int64_t[::1] spin_ns, int64_t settle_ns):
    """A worker's loop for as long as its phases are native jobs; without the GIL.

    Repeats: report ``phase`` done (``done[worker] = phase``; skipped the
    first time if ``report`` is False), spin until ``go[worker] > phase``,
    then run the job found at ``job_address[0]`` and write its wall and
    thread CPU times, in ns, to ``job_times[worker]``. Returns ``(outcome,
    phase)`` when the next phase is not a native job (``SEEN``: the worker
    runs it with the GIL; ``job_address[0]`` is 0), when the spin timed out
    (``TIMED_OUT``: the worker goes to sleep), or when the caller, waiting
    for the reported phase, sleeps (``WAKE_WAITER``: the worker wakes it,
    then calls again with ``report`` False). The spin budget is
    ``spin_ns[0]``, read anew before each wait (the pool raises it for the
    length of a fit), or 0 while ``no_spin_until[0]`` (a CLOCK_MONOTONIC
    time in ns) lies ahead; a Python job is given ``settle_ns`` (see
    :func:`signal_then_spin_until`).
    """
    cdef int64_t *go_flag = &go[worker]
    cdef int64_t *done_flag = &done[worker]
    cdef int64_t *sleeping = &caller_sleeps[worker]
    cdef int64_t *address = &job_address[0]
    cdef int64_t budget, job, wall, cpu
    cdef int outcome
    if not FASTLSTM_CAN_SPIN:
        raise RuntimeError("native jobs need atomics (see CAN_SPIN)")
    with nogil:
        while True:
            if report:
                fastlstm_store(done_flag, phase)
                if fastlstm_cas(sleeping, 1, 0):
                    outcome = OUTCOME_WAKE_WAITER
                    break
            report = True
            budget = (0 if fastlstm_now_ns() < fastlstm_load(&no_spin_until[0])
                      else fastlstm_load(&spin_ns[0]))
            if not _spin(go_flag, phase + 1, budget, 0):
                outcome = OUTCOME_TIMED_OUT
                break
            phase += 1
            job = fastlstm_load(address)
            if job == 0:
                _spin(go_flag, phase, 0, settle_ns)
                outcome = OUTCOME_SEEN
                break
            wall = fastlstm_now_ns()
            cpu = fastlstm_thread_cpu_ns()
            _run_job(<int64_t *> <intptr_t> job)
            job_times[worker, 0] = fastlstm_now_ns() - wall
            job_times[worker, 1] = fastlstm_thread_cpu_ns() - cpu
    return outcome, phase


def now_ns():
    """The clock :func:`serve` reads ``no_spin_until`` by (CLOCK_MONOTONIC), in ns."""
    return fastlstm_now_ns()
