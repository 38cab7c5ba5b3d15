"""Native kernel calls: packed arguments, the numba kernels' C entries, native jobs.

A native job runs the same compiled kernels as a call through numba's
dispatcher, so every result here must be bit-identical to that call's (which
test_kernels and test_network check against the NumPy reference), and a
network must give the same bits whichever way its tasks ran: that is what
keeps a model independent of the thread count.
"""

import sys
import threading
import time

import numpy as np
import pytest

from fastlstm import _network, _spin
from fastlstm._backends import get_backend
from fastlstm._kernels._kernel_arguments import BACKWARD, FORWARD, pack, pack_job
from fastlstm._network import Workspace, network_backward, network_forward
from fastlstm._pool import SpinPool
from fastlstm._weights import unflatten

from _lstm_cases import random_layer, random_packed_batch, run_direction, run_forward
from test_network import SHAPES, make_problem


def _forward_arguments(rng, n_rows=7, batch_size=3, n_features=2, hidden=4, dtype=np.float32):
    """A FORWARD-shaped argument tuple (values do not matter to pack)."""
    def matrix(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return (matrix(n_rows, n_features), np.array([3, 2, 2], dtype=np.int64),
            matrix(4 * hidden, n_features), matrix(4 * hidden, hidden), matrix(4 * hidden),
            np.zeros((0, 0), dtype), matrix(batch_size, hidden), matrix(batch_size, hidden),
            True, 1, 0) + tuple(matrix(n_rows, hidden) for _ in range(6)) + (
            matrix(batch_size, hidden), matrix(batch_size, hidden), matrix(9, 4 * hidden))


def test_pack_writes_each_argument_as_address_and_shape_or_value():
    arguments = _forward_arguments(np.random.default_rng(0))
    block = np.full(3 * len(FORWARD), -7, dtype=np.int64)
    assert pack(arguments, FORWARD, block, np.dtype(np.float32).num)
    for index, value in enumerate(arguments):
        entry = block[3 * index:3 * index + 3].tolist()
        if isinstance(value, np.ndarray):
            second = value.shape[1] if value.ndim == 2 else 1
            assert entry == [value.ctypes.data, value.shape[0], second], index
        else:
            assert entry == [int(value), 0, 0], index


@pytest.mark.parametrize("change", [
    "strided view", "other float dtype", "1-D for 2-D", "float batch sizes", "numpy bool",
    "too few arguments", "list for array",
])
def test_pack_refuses_what_the_entry_cannot_read(change):
    arguments = list(_forward_arguments(np.random.default_rng(0)))
    if change == "strided view":
        arguments[11] = np.zeros((7, 8), np.float32)[:, :4]
    elif change == "other float dtype":
        arguments[3] = arguments[3].astype(np.float64)
    elif change == "1-D for 2-D":
        arguments[6] = arguments[6].ravel()
    elif change == "float batch sizes":
        arguments[1] = arguments[1].astype(np.float32)
    elif change == "numpy bool":
        arguments[8] = np.True_
    elif change == "too few arguments":
        arguments = arguments[:-1]
    elif change == "list for array":
        arguments[0] = arguments[0].tolist()
    block = np.zeros(3 * len(FORWARD), dtype=np.int64)
    assert not pack(tuple(arguments), FORWARD, block, np.dtype(np.float32).num)
    assert pack_job(1, FORWARD, [tuple(arguments)], _spin.job_header_size()) is None


class _NativeCalls:
    """The numba kernels called through their native entries, with a backend's interface."""

    def __init__(self, dtype):
        self._entries = get_backend("numba").native_entries(dtype)

    def forward(self, *arguments):
        self._call(self._entries[0], FORWARD, arguments)

    def backward(self, *arguments):
        self._call(self._entries[1], BACKWARD, arguments)

    @staticmethod
    def _call(entry, signature, arguments):
        job = pack_job(entry, signature, [arguments], _spin.job_header_size())
        assert job is not None, "the arguments should fit the entry"
        _spin.run_job(job)
        assert job[1] >= job[0] == 1  # the one task was taken


def test_a_backend_around_other_functions_runs_them_not_the_native_entries():
    # bench/profile_step.py times the kernels by wrapping them in a Backend of
    # the same name: its calls must reach the wrappers.
    from fastlstm._backends import Backend

    numba = get_backend("numba")
    calls = []

    def counted(kernel):
        return lambda *arguments: (calls.append(kernel.__name__), kernel(*arguments))[1]

    wrapped = Backend("numba", counted(numba.forward), counted(numba.backward))
    assert wrapped.native_entries(np.float32) is None
    shape = SHAPES["uni-1"]
    problem = make_problem(shape, np.float32)
    params = unflatten(problem["flat"], problem["shapes"])
    network_forward(params, shape, problem["shards"], wrapped, keep_outputs=False)
    assert calls == ["lstm_forward"] * len(problem["shards"])


def test_only_float32_has_native_entries():
    backend = get_backend("numba")
    assert backend.native_entries(np.float64) is None
    assert get_backend("cython").native_entries(np.float32) is None
    entries = backend.native_entries(np.float32)  # forward, backward, cooperative forward
    assert len(entries) == len(set(entries)) == 3 and min(entries) > 0


DIRECTION_CASES = {
    "plain": dict(proj_size=0, reverse=False, gate_kind=0, state_kind=0),
    "reverse": dict(proj_size=0, reverse=True, gate_kind=0, state_kind=0),
    "projection": dict(proj_size=2, reverse=True, gate_kind=0, state_kind=0),
    "hard-softsign": dict(proj_size=0, reverse=False, gate_kind=1, state_kind=1),
}


@pytest.mark.parametrize("case", DIRECTION_CASES.values(), ids=DIRECTION_CASES)
def test_native_entries_give_the_dispatchers_bits(case):
    rng = np.random.default_rng(3)
    lengths, n_features, hidden = [6, 2, 5, 1], 3, 5
    batch = random_packed_batch(rng, lengths, n_features, np.float32)
    layer = random_layer(rng, n_features, hidden, len(lengths), np.float32, case["proj_size"])
    state = case["proj_size"] or hidden
    dH = rng.standard_normal((batch.X.shape[0], state))
    dh_n, dc_n = rng.standard_normal((len(lengths), state)), rng.standard_normal((len(lengths), hidden))
    kinds = (case["reverse"], case["gate_kind"], case["state_kind"])
    expected = run_direction(get_backend("numba"), batch, layer, *kinds, dH, dh_n, dc_n)
    actual = run_direction(_NativeCalls(np.float32), batch, layer, *kinds, dH, dh_n, dc_n)
    assert set(actual) == set(expected)
    for name in expected:
        assert not np.isnan(actual[name]).any(), name  # every output written
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    for keep in (True, False):  # prediction keeps nothing for backward
        expected = run_forward(get_backend("numba"), batch, layer, *kinds, keep)
        actual = run_forward(_NativeCalls(np.float32), batch, layer, *kinds, keep)
        for name in expected:
            np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def _network_results(shape, problem, executor, keep_outputs, workspace):
    params = unflatten(problem["flat"], problem["shapes"])
    backend = get_backend("numba")
    forward = network_forward(params, shape, problem["shards"], backend,
                              dropout_masks=problem["masks"], h0=problem["h0"], c0=problem["c0"],
                              executor=executor, workspace=workspace, keep_outputs=keep_outputs)
    shard_grads = [np.zeros_like(problem["flat"]) for _ in problem["shards"]]
    backward = network_backward(
        params, [unflatten(g, problem["shapes"]) for g in shard_grads], shape,
        problem["shards"], backend, forward,
        d_final_hidden=[f.astype(np.float32) for f in problem["d_final"]],
        dropout_masks=problem["masks"], executor=executor, workspace=workspace)
    arrays = dict(grads=sum(shard_grads))
    for s, (f, b) in enumerate(zip(forward, backward)):
        arrays.update({f"h_n{s}": f.h_n, f"c_n{s}": f.c_n, f"d_inputs{s}": b.d_inputs,
                       f"d_h0{s}": b.d_h0, f"d_c0{s}": b.d_c0})
        if keep_outputs:
            arrays[f"outputs{s}"] = f.outputs
    # Copies: a workspace's buffers are overwritten by the next pass.
    return {name: np.array(value) for name, value in arrays.items()}


@pytest.mark.parametrize("n_workers", [None, 1, 3], ids=["serial", "2 threads", "4 threads"])
@pytest.mark.parametrize("shape_name", ["uni-1", "uni-2", "bi-1", "bi-2-proj-hard-softsign"])
def test_a_network_gives_the_same_bits_with_and_without_native_jobs(shape_name, n_workers,
                                                                    monkeypatch):
    shape = SHAPES[shape_name]
    problem = make_problem(shape, np.float32)
    executor = None if n_workers is None else SpinPool(n_workers)
    jobs = []
    for module, name in ((_network, "run_job"), (SpinPool, "run_job")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original: (jobs.append(a), _f(*a))[1])
    for keep_outputs in (True, False):
        workspace = Workspace()  # twice: the second pass reuses its buffers
        native = [_network_results(shape, problem, executor, keep_outputs, workspace)
                  for _ in range(2)]
        n_native_jobs = len(jobs)
        with monkeypatch.context() as without:
            without.setattr(_network, "_native_entries", lambda backend, dtype: (None,) * 3)
            python = _network_results(shape, problem, executor, keep_outputs, Workspace())
        assert len(jobs) == n_native_jobs  # the second run had none
        for name in python:
            np.testing.assert_array_equal(native[0][name], python[name], err_msg=name)
            np.testing.assert_array_equal(native[1][name], python[name], err_msg=name)
    # Two shards: a one-direction layer's tasks are native whatever the
    # threads; a two-direction layer's are 4 tasks, which 2 threads run as
    # Python tasks (each thread's scratch), serial and 4 threads natively.
    if shape.n_directions == 1 or n_workers != 1:
        assert jobs
    else:
        assert not jobs


_native_task = None


def _native_task_address():
    """A native task: write pthread_self(), block[1] squared and a hash into block[2:5],
    and count its runs in block[5]."""
    global _native_task
    if _native_task is None:
        from numba import cfunc, types

        pthread_self = types.ExternalFunction("pthread_self", types.uint64())

        @cfunc(types.void(types.CPointer(types.int64)), nopython=True, nogil=True)
        def task(block):
            # Some work, so that threads overlap: a chain no compiler can
            # shorten (about 1 ns per step).
            state = block[1]
            for _ in range(block[0]):
                state = state * 6364136223846793005 + 1442695040888963407
            block[2] = pthread_self()
            block[3] = block[1] * block[1]
            block[4] = state
            block[5] += 1

        _native_task = task
    return _native_task.address


def _squares_job(n_tasks, work):
    """A job of ``n_tasks`` native tasks, and the blocks they write."""
    header = _spin.job_header_size()
    blocks = np.zeros((n_tasks, 6), dtype=np.int64)
    blocks[:, 0], blocks[:, 1], blocks[:, 3] = work, np.arange(n_tasks), -1
    job = np.zeros(header + 2 * n_tasks, dtype=np.int64)
    job[0] = n_tasks
    job[header::2] = _native_task_address()
    job[header + 1::2] = blocks.ctypes.data + blocks.strides[0] * np.arange(n_tasks)
    return job, blocks


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _spin.CAN_SPIN,
                    reason="the test task calls pthread_self; native jobs need atomics")
@pytest.mark.parametrize("spin_ns", [0, 20_000, 300_000], ids=["sleep", "mixed", "spin"])
def test_native_and_python_phases_interleave_and_every_task_runs_once(spin_ns):
    from test_pool import _squares, _within

    pool = SpinPool(2, spin_ns=spin_ns, watch_load=False)
    rng = np.random.default_rng(0)
    threads, callers = set(), set()

    def phases():
        callers.add(threading.get_ident())
        for phase in range(300):
            n_tasks = 2 + phase % 4
            if rng.random() < 0.5:
                job, blocks = _squares_job(n_tasks, work=int(rng.integers(0, 300_000)))
                pool.run_job(job)
                np.testing.assert_array_equal(blocks[:, 3], np.arange(n_tasks) ** 2)
                np.testing.assert_array_equal(blocks[:, 5], 1)  # each task once
                assert job[1] >= n_tasks
                threads.update(blocks[:, 2].tolist())
            else:
                np.testing.assert_array_equal(_squares(pool, n_tasks), np.arange(n_tasks) ** 2)

    _within(120, phases)
    workers = {thread.ident for thread in threading.enumerate()
               if thread.name.startswith("fastlstm-")}
    # Any fastlstm pool's workers, this one's among them: tasks ran on the
    # calling thread and on at least one worker, and nowhere else.
    assert callers <= threads and threads & workers
    assert threads <= workers | callers


def test_publish_job_stores_the_jobs_address_and_take_job_times_resets_them():
    job = np.zeros(6, dtype=np.int64)
    address = np.zeros(1, dtype=np.int64)
    _spin.publish_job(address, job)
    assert address[0] == job.ctypes.data
    times = np.array([[11, 7], [5, 3]], dtype=np.int64)
    assert _spin.take_job_times(times, 1) == (5, 3)
    assert times.tolist() == [[11, 7], [0, 0]]
    assert all(type(value) is int for value in _spin.take_job_times(times, 0))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _spin.CAN_SPIN,
                    reason="the test task calls pthread_self; native jobs need atomics")
def test_a_native_phase_notes_the_times_of_the_worker_that_ran_a_task():
    # The pool's view of how much of its core each thread got (which stops
    # the spinning on a busy machine) comes from these notes.
    from test_pool import _within

    pool = SpinPool(1, spin_ns=300_000_000, watch_load=False)
    notes = []
    note = pool._note_core_share
    pool._note_core_share = lambda thread, wall_ns, cpu_ns: (
        notes.append((thread, wall_ns, cpu_ns)), note(thread, wall_ns, cpu_ns))

    def phases():
        # Until the worker takes a task: on a busy machine (CI compiles the
        # numba kernels in the background meanwhile) it can come late to
        # many phases, and the pool's own answer to a busy machine, phases
        # on the calling thread alone, is reset each time: this test is
        # about what a phase notes when the worker does take part.
        deadline = time.monotonic() + 100
        while time.monotonic() < deadline:
            pool._serial_until = 0
            _spin.store(pool._no_spin_until, 0, 0)
            notes.clear()
            job, blocks = _squares_job(4, work=20_000_000)
            pool.run_job(job)
            if len(set(blocks[:, 2].tolist())) == 2:  # the worker ran a task
                return
        raise AssertionError("the worker never ran a task")

    _within(120, phases)
    worker_notes = [(wall, cpu) for thread, wall, cpu in notes if thread == 0]
    assert len(worker_notes) == 1 and len(notes) == 2
    wall, cpu = worker_notes[0]
    assert type(wall) is int and type(cpu) is int and wall > 0 and cpu > 0
    assert pool._job_times.tolist() == [[0, 0]]


def test_the_entries_count_as_cached_only_where_numbas_cache_holds_them(tmp_path, monkeypatch):
    import numba

    from fastlstm._kernels import numba_lstm

    numba_lstm.entry_addresses(np.float32)  # compiled, or loaded, and in the cache
    assert numba_lstm.entries_cached()
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))  # an empty cache
    assert not numba_lstm.entries_cached()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _spin.CAN_SPIN,
                    reason="the test task calls pthread_self; native jobs need atomics")
def test_jobs_from_two_threads_at_once_each_run_every_task_once():
    # Two fits in two threads share one pool: while one thread's phase runs,
    # the other runs its tasks on its own thread (SpinPool.run_job).
    from test_pool import _within

    pool = SpinPool(1)
    failures = []

    def submit(seed):
        rng = np.random.default_rng(seed)
        for _ in range(100):
            n_tasks = int(rng.integers(2, 6))
            job, blocks = _squares_job(n_tasks, work=int(rng.integers(0, 300_000)))
            pool.run_job(job)
            if (blocks[:, 3].tolist() != (np.arange(n_tasks) ** 2).tolist()
                    or blocks[:, 5].tolist() != [1] * n_tasks):
                failures.append(blocks[:, [3, 5]].tolist())

    def both():
        threads = [threading.Thread(target=submit, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    _within(120, both)
    assert not failures
