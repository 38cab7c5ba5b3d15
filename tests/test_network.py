"""Stacked and bidirectional networks: the reference against central finite
differences, and every compiled backend against the reference, for every
variant (directions, layers, projection, activations, initial states, shards)."""

import numpy as np
import pytest

from fastlstm._backends import get_backend
from fastlstm._network import NetworkShape, Workspace, network_backward, network_forward
from fastlstm._weights import init_parameters, parameter_shapes, unflatten

from _lstm_cases import random_packed_batch

COMPILED_BACKENDS = ["numba", "cython"]

SHAPES = {
    "uni-1": NetworkShape(hidden_size=4, num_layers=1, bidirectional=False),
    "bi-1": NetworkShape(hidden_size=4, num_layers=1, bidirectional=True),
    "uni-2": NetworkShape(hidden_size=3, num_layers=2, bidirectional=False),
    "bi-2": NetworkShape(hidden_size=3, num_layers=2, bidirectional=True),
    "bi-2-proj": NetworkShape(hidden_size=4, num_layers=2, bidirectional=True, proj_size=2),
    "uni-1-hard-softsign": NetworkShape(hidden_size=4, num_layers=1, bidirectional=False,
                                        gate_kind=1, state_kind=1),
    "bi-2-proj-hard-softsign": NetworkShape(hidden_size=3, num_layers=2, bidirectional=True,
                                            proj_size=2, gate_kind=1, state_kind=1),
}
SHARD_LENGTHS = [[6, 2, 4, 4, 1], [5, 3, 3]]
N_FEATURES = 3


def make_problem(shape, dtype, seed=0, shard_lengths=SHARD_LENGTHS):
    """Two shards, random parameters, initial states, output gradients and masks."""
    rng = np.random.default_rng(seed)
    shards = [random_packed_batch(rng, lengths, N_FEATURES, dtype) for lengths in shard_lengths]
    shapes = parameter_shapes(N_FEATURES, shape.hidden_size, shape.num_layers,
                              shape.bidirectional, n_outputs=1, proj_size=shape.proj_size)
    flat = init_parameters(shapes, np.random.RandomState(seed), dtype)
    # Random biases too, so that no gradient is trivially zero.
    flat += (0.3 * rng.standard_normal(flat.shape)).astype(dtype)
    n_stack = shape.num_layers * shape.n_directions
    h0 = [(0.5 * rng.standard_normal((n_stack, s.size, shape.state_size))).astype(dtype) for s in shards]
    c0 = [(0.5 * rng.standard_normal((n_stack, s.size, shape.hidden_size))).astype(dtype) for s in shards]
    d_outputs = [rng.standard_normal((s.X.shape[0], shape.n_features_out)) for s in shards]
    d_final = [rng.standard_normal((s.size, shape.n_features_out)) for s in shards]
    masks = None
    if shape.num_layers > 1:
        masks = [[(rng.uniform(size=(s.X.shape[0], shape.n_features_out)) < 0.7).astype(dtype)
                  / dtype(0.7)] for s in shards]
    return dict(shards=shards, shapes=shapes, flat=flat, h0=h0, c0=c0, d_outputs=d_outputs,
                d_final=d_final, masks=masks)


def objective(problem, shape, backend):
    """A scalar that depends on every output: <outputs, A> + <final_hidden, B>."""
    results = network_forward(unflatten(problem["flat"], problem["shapes"]), shape,
                              problem["shards"], backend, dropout_masks=problem["masks"],
                              h0=problem["h0"], c0=problem["c0"])
    return float(sum(np.sum(r.outputs * d) + np.sum(r.final_hidden * f)
                     for r, d, f in zip(results, problem["d_outputs"], problem["d_final"])))


def gradients(problem, shape, backend, executor=None, input_gradients=True, workspace=None,
              output_gradients=True):
    flat, shapes, dtype = problem["flat"], problem["shapes"], problem["flat"].dtype
    params = unflatten(flat, shapes)
    shard_flat = [np.zeros_like(flat) for _ in problem["shards"]]
    results = network_forward(params, shape, problem["shards"], backend,
                              dropout_masks=problem["masks"], h0=problem["h0"], c0=problem["c0"],
                              executor=executor, workspace=workspace)
    backward = network_backward(
        params, [unflatten(g, shapes) for g in shard_flat], shape, problem["shards"], backend,
        results,
        d_outputs=[d.astype(dtype) for d in problem["d_outputs"]] if output_gradients else None,
        d_final_hidden=[f.astype(dtype) for f in problem["d_final"]],
        dropout_masks=problem["masks"], executor=executor, input_gradients=input_gradients,
        workspace=workspace,
    )
    return results, sum(shard_flat), backward


def n_recurrent(shapes):
    """Parameters before the output layer (head.* is not part of the network)."""
    return sum(int(np.prod(s)) for name, s in shapes if not name.startswith("head"))


def central_difference(problem, shape, backend, array, index, step=1e-6):
    original = array[index]
    array[index] = original + step
    plus = objective(problem, shape, backend)
    array[index] = original - step
    minus = objective(problem, shape, backend)
    array[index] = original
    return (plus - minus) / (2 * step)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_reference_matches_finite_differences(shape):
    problem = make_problem(shape, np.float64)
    backend = get_backend("reference")
    _, flat_grads, backward = gradients(problem, shape, backend)
    flat = problem["flat"]
    numeric = [central_difference(problem, shape, backend, flat, (i,))
               for i in range(n_recurrent(problem["shapes"]))]
    np.testing.assert_allclose(flat_grads[:len(numeric)], numeric, rtol=1e-6, atol=1e-8)
    # Inputs and initial states, shard by shard.
    for s, shard in enumerate(problem["shards"]):
        for array, analytic in [(shard.X, backward[s].d_inputs),
                                (problem["h0"][s], backward[s].d_h0),
                                (problem["c0"][s], backward[s].d_c0)]:
            numeric = np.array([central_difference(problem, shape, backend, array, index)
                                for index in np.ndindex(array.shape)]).reshape(array.shape)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-9)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_backend_network_matches_reference(shape, dtype, tolerance, backend_name):
    expected_problem = make_problem(shape, np.float64, seed=3)
    expected, expected_grads, expected_backward = gradients(
        expected_problem, shape, get_backend("reference"))

    problem = make_problem(shape, dtype, seed=3)
    for key in ("flat",):
        problem[key][:] = expected_problem[key]
    for s in range(len(problem["shards"])):
        problem["shards"][s].X[:] = expected_problem["shards"][s].X
        problem["h0"][s][:] = expected_problem["h0"][s]
        problem["c0"][s][:] = expected_problem["c0"][s]
        if problem["masks"] is not None:
            problem["masks"][s][0][:] = expected_problem["masks"][s][0]
    actual, actual_grads, actual_backward = gradients(problem, shape, get_backend(backend_name))

    def check(name, got, want):
        scale = max(np.abs(want).max(), 1e-12)
        error = np.abs(got.astype(np.float64) - want).max() / scale
        assert error < tolerance, f"{name}: relative error {error:.3g}"

    for s in range(len(problem["shards"])):
        check("outputs", actual[s].outputs, expected[s].outputs)
        check("h_n", actual[s].h_n, expected[s].h_n)
        check("c_n", actual[s].c_n, expected[s].c_n)
        check("d_inputs", actual_backward[s].d_inputs, expected_backward[s].d_inputs)
        check("d_h0", actual_backward[s].d_h0, expected_backward[s].d_h0)
        check("d_c0", actual_backward[s].d_c0, expected_backward[s].d_c0)
    actual_views = unflatten(actual_grads, problem["shapes"])
    expected_views = unflatten(expected_grads, problem["shapes"])
    for name, _ in problem["shapes"]:
        if not name.startswith("head"):
            check(name, actual_views[name], expected_views[name])


@pytest.mark.parametrize("shape", [SHAPES["bi-2"], SHAPES["bi-2-proj"]], ids=["bi-2", "bi-2-proj"])
def test_parallel_tasks_give_identical_results(shape):
    from fastlstm._pool import SpinPool

    problem = make_problem(shape, np.float32)
    serial, serial_grads, serial_backward = gradients(problem, shape, get_backend("numba"))
    parallel, parallel_grads, parallel_backward = gradients(
        problem, shape, get_backend("numba"), SpinPool(1))
    np.testing.assert_array_equal(serial_grads, parallel_grads)
    for s in range(len(serial)):
        np.testing.assert_array_equal(serial[s].outputs, parallel[s].outputs)
        np.testing.assert_array_equal(serial_backward[s].d_inputs, parallel_backward[s].d_inputs)


@pytest.mark.parametrize("backend_name", ["numba", "cython", "reference"])
@pytest.mark.parametrize("shape", [SHAPES["bi-2"], SHAPES["bi-2-proj"]], ids=["bi-2", "bi-2-proj"])
def test_skipping_the_input_gradient_changes_no_weight_gradient(shape, backend_name):
    # Training asks for no input gradient: the first layer's kernels get a
    # dX with 0 rows and skip that GEMM; every weight gradient must be the same.
    problem = make_problem(shape, np.float32)
    backend = get_backend(backend_name)
    _, with_inputs, backward = gradients(problem, shape, backend)
    _, without_inputs, skipped = gradients(problem, shape, backend, input_gradients=False)
    np.testing.assert_array_equal(without_inputs, with_inputs)
    assert all(b.d_inputs is not None for b in backward)
    assert all(b.d_inputs is None for b in skipped)
    for full, short in zip(backward, skipped):
        np.testing.assert_array_equal(short.d_h0, full.d_h0)
        np.testing.assert_array_equal(short.d_c0, full.d_c0)


@pytest.mark.parametrize("backend_name", ["numba", "cython", "reference"])
@pytest.mark.parametrize("shape", [SHAPES["bi-1"], SHAPES["bi-2-proj"]], ids=["bi-1", "bi-2-proj"])
def test_not_keeping_the_outputs_changes_no_final_state_or_gradient(shape, backend_name):
    # A sequence-to-one model reads only the final states: the last layer's
    # outputs are not gathered, and nothing the model reads may change.
    from fastlstm._pool import SpinPool

    problem = make_problem(shape, np.float32)
    backend = get_backend(backend_name)
    params = unflatten(problem["flat"], problem["shapes"])
    results = {}
    for keep in (True, False):
        forward = network_forward(params, shape, problem["shards"], backend,
                                  dropout_masks=problem["masks"], h0=problem["h0"],
                                  c0=problem["c0"], executor=SpinPool(1), keep_outputs=keep)
        shard_grads = [np.zeros_like(problem["flat"]) for _ in problem["shards"]]
        backward = network_backward(
            params, [unflatten(g, problem["shapes"]) for g in shard_grads], shape,
            problem["shards"], backend, forward,
            d_final_hidden=[f.astype(np.float32) for f in problem["d_final"]],
            dropout_masks=problem["masks"])
        results[keep] = forward, sum(shard_grads), backward
    (kept, kept_grads, kept_backward), (dropped, dropped_grads, dropped_backward) = (
        results[True], results[False])
    np.testing.assert_array_equal(dropped_grads, kept_grads)
    for s in range(len(problem["shards"])):
        assert kept[s].outputs is not None and dropped[s].outputs is None
        np.testing.assert_array_equal(dropped[s].final_hidden, kept[s].final_hidden)
        np.testing.assert_array_equal(dropped[s].c_n, kept[s].c_n)
        np.testing.assert_array_equal(dropped_backward[s].d_inputs, kept_backward[s].d_inputs)


def test_workspace_hands_out_views_of_kept_buffers():
    workspace = Workspace()
    first = workspace.empty(("a", 0), (5, 3), np.float32)
    assert first.shape == (5, 3) and first.flags.c_contiguous
    fewer = workspace.empty(("a", 0), (2, 3), np.float32)
    assert np.shares_memory(first, fewer) and fewer.shape == (2, 3)
    more = workspace.empty(("a", 0), (9, 3), np.float32)
    assert not np.shares_memory(first, more) and more.shape == (9, 3)
    assert not np.shares_memory(more, workspace.empty(("a", 1), (9, 3), np.float32))
    assert workspace.empty(("a", 0), (9, 3), np.float64).dtype == np.float64
    assert workspace.empty(("a", 0), (4, 2), np.float64).shape == (4, 2)


def test_workspace_zeros_are_zero_and_keyed_by_their_trailing_shape():
    workspace = Workspace()
    first = workspace.zeros(("z",), (4, 3), np.float32)
    assert first.shape == (4, 3) and not first.any()
    assert np.shares_memory(first, workspace.zeros(("z",), (2, 3), np.float32))
    other = workspace.zeros(("z",), (4, 5), np.float32)
    assert other.shape == (4, 5) and not np.shares_memory(first, other)
    # An entry never changes trailing shape, so an earlier view stays valid.
    assert np.shares_memory(first, workspace.zeros(("z",), (3, 3), np.float32))
    assert workspace.nbytes == (4 * 3 + 4 * 5) * 4


@pytest.mark.parametrize("backend_name", ["numba", "cython", "reference"])
def test_kernels_leave_the_shared_zero_buffers_zero(backend_name):
    # Zero initial states and the zero gradient of unread outputs come from
    # buffers filled once (Workspace.zeros) and shared by every task and step:
    # a kernel writing to one of its inputs would corrupt the next step.
    shape = SHAPES["bi-2-proj"]
    problem = dict(make_problem(shape, np.float32), h0=None, c0=None)
    problem["h0"] = problem["c0"] = [None] * len(problem["shards"])
    workspace = Workspace()
    for _ in range(2):
        gradients(problem, shape, get_backend(backend_name), workspace=workspace,
                  output_gradients=False)
    zeros = {key: array for key, array in workspace._arrays.items() if key[0] == "zeros"}
    assert {key[1] for key in zeros} == {"h0", "c0", "dH", "dc_n"}
    for key, array in zeros.items():
        assert not array.any(), key


@pytest.mark.parametrize("output_gradients", [True, False], ids=["d_outputs", "final-only"])
@pytest.mark.parametrize("shape", [SHAPES["bi-2"], SHAPES["bi-2-proj"]], ids=["bi-2", "bi-2-proj"])
def test_reused_workspace_gives_the_results_of_fresh_arrays(shape, output_gradients):
    # A workspace keeps each buffer at its largest size and hands out its
    # first rows: steps of other lengths, before and after, must not leak
    # into a step (stale rows, a zero fill that is skipped: without output
    # gradients, as in training, the last layer's dH is a zeroed buffer).
    backend = get_backend("numba")
    problem = make_problem(shape, np.float32)
    # More rows than `problem` under every key.
    longer = make_problem(shape, np.float32, seed=1,
                          shard_lengths=[[2 * n for n in lengths] for lengths in SHARD_LENGTHS])
    _, expected_grads, expected = gradients(problem, shape, backend,
                                            output_gradients=output_gradients)
    workspace = Workspace()
    for before in (problem, longer):
        gradients(before, shape, backend, workspace=workspace)
        _, grads, backward = gradients(problem, shape, backend, workspace=workspace,
                                       output_gradients=output_gradients)
        np.testing.assert_array_equal(grads, expected_grads)
        for ours, theirs in zip(backward, expected):
            np.testing.assert_array_equal(ours.d_inputs, theirs.d_inputs)
            np.testing.assert_array_equal(ours.d_h0, theirs.d_h0)


def test_final_states_are_read_at_each_sequence_end():
    """h_n of the forward direction equals the output at the sequence's last step,
    and the reverse direction's equals its output at step 0."""
    shape = SHAPES["bi-1"]
    problem = make_problem(shape, np.float64)
    results = network_forward(unflatten(problem["flat"], problem["shapes"]), shape,
                              problem["shards"], get_backend("numba"))
    shard, result = problem["shards"][0], results[0]
    offsets = np.concatenate([[0], np.cumsum(shard.batch_sizes)])
    hidden = shape.hidden_size
    for j in range(shard.size):
        length = int(np.sum(shard.batch_sizes > j))
        last_row, first_row = offsets[length - 1] + j, offsets[0] + j
        np.testing.assert_array_equal(result.h_n[0, j], result.outputs[last_row, :hidden])
        np.testing.assert_array_equal(result.h_n[1, j], result.outputs[first_row, hidden:])


def test_predictions_reuse_their_buffers_up_to_a_limit(monkeypatch):
    import fastlstm._trainer as trainer
    from fastlstm import LSTMClassifier

    rng = np.random.default_rng(0)
    X = [rng.standard_normal((int(n), 2)).astype(np.float32) for n in rng.integers(3, 9, 40)]
    y = np.arange(40) % 3
    clf = LSTMClassifier(hidden_size=4, max_epochs=2, n_jobs=2, random_state=0).fit(X, y)
    first = clf.predict_proba(X)
    kept = trainer._prediction_buffers.workspace
    assert isinstance(kept, Workspace) and kept.nbytes > 0
    saved = first.copy()
    other = clf.predict_proba(X[:7][::-1])  # other lengths through the same buffers
    assert trainer._prediction_buffers.workspace is kept
    np.testing.assert_array_equal(first, saved)  # results are not views of the buffers
    np.testing.assert_array_equal(clf.predict_proba(X), first)
    np.testing.assert_array_equal(clf.predict_proba(X[:7][::-1]), other)
    monkeypatch.setattr(trainer, "PREDICTION_WORKSPACE_BYTES", 0)
    np.testing.assert_array_equal(clf.predict_proba(X), first)
    assert trainer._prediction_buffers.workspace is None
