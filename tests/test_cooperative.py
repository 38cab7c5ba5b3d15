"""The cooperative forward kernel: runners that share the steps of one direction.

``numba_lstm.lstm_forward_parts`` cuts the hidden units into parts that
runners (threads) take step by step. Its outputs must be the bits of
``lstm_forward`` in float32, the dtype it runs in, whatever the number of
parts and of runners and whenever the runners start; one runner alone must
finish the pass. The network runs it for predictions whose layers have fewer
tasks than threads, and a model's predictions must not depend on that.
"""

import threading
import time

import numpy as np
import pytest

from fastlstm import LSTMRegressor, _network
from fastlstm._backends import get_backend
from fastlstm._kernels import _gemm, reference
from fastlstm._kernels.numba_lstm import lstm_forward_parts
from fastlstm._network import NetworkShape, Workspace, network_forward
from fastlstm._pool import SpinPool
from fastlstm._weights import init_parameters, parameter_shapes, unflatten

from _lstm_cases import random_layer, random_packed_batch, run_forward

CASES = {
    "one sequence": dict(lengths=[40], hidden=24, reverse=False, kinds=(0, 0)),
    "ragged reverse": dict(lengths=[9, 7, 7, 3, 1], hidden=13, reverse=True, kinds=(0, 0)),
    "ragged": dict(lengths=[8, 8, 5, 2], hidden=20, reverse=False, kinds=(0, 0)),
    "hard sigmoid, softsign": dict(lengths=[6, 4, 1], hidden=11, reverse=True, kinds=(1, 1)),
}
N_FEATURES = 5


def _problem(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    batch = random_packed_batch(rng, case["lengths"], N_FEATURES, dtype)
    layer = random_layer(rng, N_FEATURES, case["hidden"], len(case["lengths"]), dtype)
    return batch, layer


def _parts_arrays(batch, layer):
    """Outputs (NaN: anything unwritten shows) and shared workspaces of one pass."""
    dtype = batch.X.dtype
    n_rows, n_steps = batch.X.shape[0], batch.batch_sizes.shape[0]
    batch_size, hidden = layer["c0"].shape

    def nan(*shape):
        return np.full(shape, np.nan, dtype)

    return dict(H=nan(n_rows, hidden), gates=nan(n_rows, 4 * hidden), h_n=nan(batch_size, hidden),
                c_n=nan(batch_size, hidden), states=nan(2 * batch_size, hidden),
                progress=np.zeros(2 * n_steps + 3, np.int64),
                work=nan(batch_size + N_FEATURES + hidden + 2, 4 * hidden))


def _run_parts(batch, layer, case, arrays, n_parts):
    """One runner: a call of the kernel on the shared arrays."""
    lstm_forward_parts(
        batch.X, batch.batch_sizes, layer["W"], layer["R"], layer["bias"], layer["h0"],
        layer["c0"], case["reverse"], *case["kinds"], arrays["H"], arrays["gates"],
        arrays["h_n"], arrays["c_n"], arrays["states"], arrays["progress"], n_parts,
        arrays["work"])


def _run_runners(batch, layer, case, n_parts, n_runners, stagger_s=0.0):
    """``n_runners`` threads running the kernel at once (each later by ``stagger_s``)."""
    arrays = _parts_arrays(batch, layer)
    threads = [threading.Thread(target=_run_parts, args=(batch, layer, case, arrays, n_parts))
               for _ in range(n_runners)]
    for thread in threads:
        thread.start()
        time.sleep(stagger_s)
    for thread in threads:
        thread.join()
    return arrays


def _serial(batch, layer, case):
    return run_forward(get_backend("numba"), batch, layer, case["reverse"], *case["kinds"],
                       keep=False)


def _serial_gates_in_parts_order(gates, hidden, n_parts):
    """The serial kernel's gates (blocks i, f, g, o) with each part's four blocks side by side."""
    columns = []
    for part in range(n_parts):
        first, last = hidden * part // n_parts, hidden * (part + 1) // n_parts
        for gate in range(4):
            columns.extend(range(gate * hidden + first, gate * hidden + last))
    return gates[:, columns]


@pytest.mark.parametrize("n_parts, n_runners", [(1, 1), (2, 1), (2, 2), (3, 2), (4, 4), (2, 5)])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_parts_give_the_serial_kernels_bits(case, n_parts, n_runners):
    batch, layer = _problem(case, np.float32)
    expected = _serial(batch, layer, case)
    actual = _run_runners(batch, layer, case, n_parts, n_runners)
    for name in ("H", "h_n", "c_n"):
        assert not np.isnan(actual[name]).any(), name
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    np.testing.assert_array_equal(
        actual["gates"], _serial_gates_in_parts_order(expected["gates"], case["hidden"], n_parts))
    # Every phase was taken and finished by exactly n_parts parts.
    n_phases = batch.batch_sizes.shape[0] + 1
    finished = actual["progress"][1:2 * n_phases:2]
    np.testing.assert_array_equal(finished, n_parts)
    assert actual["progress"][-1] == n_phases


def test_as_many_parts_as_units_and_runners_that_start_late():
    case = dict(CASES["one sequence"], lengths=[300], hidden=7)
    batch, layer = _problem(case, np.float32, seed=1)
    expected = _serial(batch, layer, case)
    # The later runners start while (or after) the first works through 300 steps.
    actual = _run_runners(batch, layer, case, n_parts=7, n_runners=3, stagger_s=2e-4)
    for name in ("H", "h_n", "c_n"):
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_a_runner_after_the_pass_changes_nothing():
    case = CASES["ragged"]
    batch, layer = _problem(case, np.float32)
    arrays = _run_runners(batch, layer, case, n_parts=2, n_runners=1)
    before = {name: value.copy() for name, value in arrays.items()}
    for name in ("H", "gates", "h_n", "c_n"):
        arrays[name][...] = -1.0  # a runner that wrote anything would show
    _run_parts(batch, layer, case, arrays, 2)
    for name in ("H", "gates", "h_n", "c_n"):
        assert (arrays[name] == -1.0).all(), name
    np.testing.assert_array_equal(arrays["progress"], before["progress"])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_parts_in_float64_agree_with_the_reference(case):
    # float64 is never given parts by the network (no own GEMM: its products
    # are plain loops here), but the kernel must still be right in it.
    batch, layer = _problem(case, np.float64)
    expected = run_forward(reference, batch, layer, case["reverse"], *case["kinds"], keep=False)
    actual = _run_runners(batch, layer, case, n_parts=3, n_runners=2)
    for name in ("H", "h_n", "c_n"):
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-12, atol=1e-12,
                                   err_msg=name)


# -- the network's choice ------------------------------------------------------------

WIDE = NetworkShape(hidden_size=96, num_layers=2, bidirectional=False)  # 4 * 96 * 96 >= 32768


def _parts_of(shape, executor, n_tasks=1, dtype=np.float32, batch_size=1):
    entry = get_backend("numba").native_entries(np.float32)[2]
    return _network._parts_per_task(executor, n_tasks, batch_size, shape, np.dtype(dtype), entry)


def test_parts_only_where_threads_would_idle_and_a_step_is_worth_sharing():
    pool = SpinPool(1)
    assert _parts_of(WIDE, pool) == 2
    assert _parts_of(WIDE, SpinPool(3)) == 4
    assert _parts_of(WIDE, SpinPool(3), n_tasks=2) == 2  # two directions, four threads
    assert _parts_of(WIDE, pool, batch_size=_network.COOPERATIVE_MAX_ROWS) == 2
    assert _parts_of(WIDE, pool, batch_size=_network.COOPERATIVE_MAX_ROWS + 1) == 1
    assert _parts_of(WIDE, None) == 1
    assert _parts_of(WIDE, pool, n_tasks=2) == 1
    assert _parts_of(WIDE, pool, dtype=np.float64) == 1
    small = NetworkShape(hidden_size=64, num_layers=1, bidirectional=False)  # 16384 per step
    assert _parts_of(small, pool) == 1
    assert _parts_of(small, pool, batch_size=2) == 2
    projected = NetworkShape(hidden_size=96, num_layers=1, bidirectional=False, proj_size=8)
    assert _parts_of(projected, pool) == 1
    assert _network._parts_per_task(pool, 1, 1, WIDE, np.dtype(np.float32), None) == 1
    was_enabled = _gemm.enabled()
    try:
        _gemm.set_enabled(False)
        assert _parts_of(WIDE, pool) == 1
    finally:
        _gemm.set_enabled(was_enabled)


def _network_outputs(shape, shards, executor, for_backward):
    shapes = parameter_shapes(N_FEATURES, shape.hidden_size, shape.num_layers,
                              shape.bidirectional, n_outputs=1)
    params = unflatten(init_parameters(shapes, np.random.RandomState(0), np.dtype(np.float32)),
                       shapes)
    results = network_forward(params, shape, shards, get_backend("numba"), executor=executor,
                              workspace=Workspace(), for_backward=for_backward)
    return [np.array(r.outputs) for r in results], [np.array(r.h_n) for r in results]


@pytest.mark.parametrize("shape, n_workers", [
    (WIDE, 1),
    (NetworkShape(hidden_size=96, num_layers=1, bidirectional=True), 3),  # Python tasks
], ids=["one direction, 2 threads", "two directions, 4 threads"])
def test_predictions_share_a_direction_among_threads_with_the_same_bits(shape, n_workers,
                                                                        monkeypatch):
    rng = np.random.default_rng(0)
    shards = [random_packed_batch(rng, [30], N_FEATURES, np.float32)]
    signatures = []
    original = _network._run_kernel_tasks
    monkeypatch.setattr(_network, "_run_kernel_tasks",
                        lambda ex, entry, signature, *rest: (signatures.append(signature),
                                                             original(ex, entry, signature,
                                                                      *rest))[1])
    expected = _network_outputs(shape, shards, None, for_backward=False)
    assert _network.FORWARD_PARTS not in signatures
    actual = _network_outputs(shape, shards, SpinPool(n_workers), for_backward=False)
    assert signatures.count(_network.FORWARD_PARTS) == shape.num_layers
    for got, want in zip(actual, expected):
        np.testing.assert_array_equal(got, want)
    # Training keeps what backward reads: no parts there.
    signatures.clear()
    _network_outputs(shape, shards, SpinPool(n_workers), for_backward=True)
    assert _network.FORWARD_PARTS not in signatures


def test_a_models_predictions_do_not_depend_on_the_threads(monkeypatch):
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((int(n), 3)).astype(np.float32) for n in rng.integers(5, 12, 20)]
    y = rng.standard_normal(20)
    params = dict(hidden_size=96, max_epochs=2, batch_size=8, random_state=0, backend="numba")
    one = LSTMRegressor(n_jobs=1, **params).fit(X, y)
    two = LSTMRegressor(n_jobs=2, **params).fit(X, y)
    shared = []
    original = _network._run_kernel_tasks
    monkeypatch.setattr(_network, "_run_kernel_tasks",
                        lambda ex, entry, signature, *rest: (shared.append(signature),
                                                             original(ex, entry, signature,
                                                                      *rest))[1])
    long_sequence = [rng.standard_normal((200, 3)).astype(np.float32)]
    np.testing.assert_array_equal(one.predict(long_sequence), two.predict(long_sequence))
    assert _network.FORWARD_PARTS in shared
