"""Cases for backend="cuda", run by tests/test_cuda.py in a fresh process.

On a machine without a GPU, test_cuda.py runs this file with
NUMBA_ENABLE_CUDASIM=1 (numba's CUDA simulator, which must be chosen before
numba is first imported, hence the separate process); on a GPU machine it runs
it again without the simulator. The file name does not match ``test_*.py`` so
that the main test run does not collect it.

The simulator runs one Python thread per GPU thread, so the simulated shapes
stay tiny (B <= 4, H <= 6, T <= 5, I <= 3); they still cover several GEMM tiles
and partial tiles. Cases marked ``gpu_only`` use realistic sizes and run on a
real GPU only.
"""

import dataclasses
import sys

import numpy as np
import pytest
from numba import config, cuda

from fastlstm._backends import get_backend
from fastlstm._kernels import cuda_lstm
from fastlstm._network import NetworkShape, network_backward, network_forward
from fastlstm._weights import init_parameters, parameter_shapes, unflatten

from _lstm_cases import random_layer, random_packed_batch, run_direction, run_forward

SIMULATED = bool(config.ENABLE_CUDASIM)
if SIMULATED:
    # The simulator's threads hand the GIL to each other at every
    # syncthreads(); Python's default 5 ms switch interval makes that the
    # bulk of the run time.
    sys.setswitchinterval(1e-4)

gpu_only = pytest.mark.skipif(SIMULATED, reason="realistic sizes: too slow for the simulator")
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-9}

# (gate kind, state kind, proj_size): each activation kind with and without projection.
VARIANTS = {
    "sigmoid-tanh": (0, 0, 0),
    "hard-softsign": (1, 1, 0),
    "sigmoid-softsign-proj": (0, 1, 2),
    "hard-tanh-proj": (1, 0, 2),
}
RAGGED = [4, 2, 3, 1]


def relative_error(actual, expected):
    if expected.size == 0:
        assert actual.size == 0
        return 0.0
    scale = max(np.abs(expected).max(), 1e-12)
    return np.abs(actual.astype(np.float64) - expected).max() / scale


def compare_direction(backend_name, dtype, reverse, gate_kind, state_kind, lengths,
                      hidden=4, proj_size=0, n_features=3, seed=0, scale=0.5):
    """One direction forward and backward on ``backend_name`` against the float64 reference."""
    state = proj_size or hidden
    rng = np.random.default_rng(seed)
    batch64 = random_packed_batch(rng, lengths, n_features, np.float64)
    layer64 = random_layer(rng, n_features, hidden, len(lengths), np.float64,
                           proj_size=proj_size, scale=scale)
    dH = rng.standard_normal((batch64.X.shape[0], state))
    dh_n = rng.standard_normal((len(lengths), state))
    dc_n = rng.standard_normal((len(lengths), hidden))
    expected = run_direction(get_backend("reference"), batch64, layer64, reverse,
                             gate_kind, state_kind, dH, dh_n, dc_n)
    batch = random_packed_batch(rng, lengths, n_features, dtype)
    batch.X[:] = batch64.X
    layer = {name: value.astype(dtype) for name, value in layer64.items()}
    actual = run_direction(get_backend(backend_name), batch, layer, reverse,
                           gate_kind, state_kind, dH, dh_n, dc_n)
    assert set(actual) == {"H", "h_n", "c_n", "dX", "dW", "dR", "dbias", "dW_proj", "dh0", "dc0"}
    for name in expected:
        assert actual[name].dtype == dtype, name
        error = relative_error(actual[name], expected[name])
        assert error < TOLERANCE[dtype], f"{name}: relative error {error:.3g}"


def direction_cases():
    """Every variant in both directions and both dtypes on a GPU. In the
    simulator, half of them: each (variant, direction) pair once, with the
    dtypes alternating so that every variant and every direction still runs in
    both float32 and float64."""
    cases = []
    for v, (name, variant) in enumerate(VARIANTS.items()):
        for reverse in (False, True):
            for d, dtype in enumerate((np.float32, np.float64)):
                if SIMULATED and (v + reverse + d) % 2:
                    continue
                ids = f"{name}-{'reverse' if reverse else 'forward'}-{dtype.__name__}"
                cases.append(pytest.param(dtype, reverse, variant, id=ids))
    return cases


@pytest.mark.parametrize("dtype, reverse, variant", direction_cases())
def test_direction_matches_reference(dtype, reverse, variant):
    gate_kind, state_kind, proj_size = variant
    compare_direction("cuda", dtype, reverse, gate_kind, state_kind, RAGGED,
                      proj_size=proj_size, seed=10 * reverse + gate_kind)


@pytest.mark.parametrize("proj_size", [0, 2], ids=["no-proj", "proj"])
def test_forward_without_saved_states_gives_the_same_outputs(proj_size):
    # Prediction passes Hprev, Cprev and TC with 0 rows (nothing kept).
    rng = np.random.default_rng(proj_size)
    batch = random_packed_batch(rng, RAGGED, 3, np.float32)
    layer = random_layer(rng, 3, 4, len(RAGGED), np.float32, proj_size=proj_size)
    backend = get_backend("cuda")
    kept = run_forward(backend, batch, layer, True, 0, 0, keep=True)
    not_kept = run_forward(backend, batch, layer, True, 0, 0, keep=False)
    for name, value in kept.items():
        np.testing.assert_array_equal(not_kept[name], value, err_msg=name)


@pytest.mark.parametrize("lengths", [[3, 3], [5], [1, 1, 1]], ids=["equal", "single", "all-ones"])
def test_length_patterns_match_reference(lengths):
    compare_direction("cuda", np.float64, True, 0, 0, lengths, hidden=3, proj_size=2,
                      n_features=2, seed=len(lengths))


@pytest.mark.parametrize("proj", [0, 2], ids=["no-proj", "proj"])
def test_device_arrays_are_used_in_place(proj, monkeypatch):
    """Device arrays in, device arrays out: same numbers as NumPy in, NumPy out,
    with no transfer and no allocation inside the calls."""
    dtype, reverse, gate_kind, state_kind = np.float32, True, 0, 1
    rng = np.random.default_rng(5)
    lengths, hidden, n_features = [3, 2, 1], 3, 2
    state = proj or hidden
    batch = random_packed_batch(rng, lengths, n_features, dtype)
    layer = random_layer(rng, n_features, hidden, len(lengths), dtype, proj_size=proj)
    dH = rng.standard_normal((batch.X.shape[0], state)).astype(dtype)
    dh_n = rng.standard_normal((len(lengths), state)).astype(dtype)
    dc_n = rng.standard_normal((len(lengths), hidden)).astype(dtype)
    on_host = run_direction(get_backend("cuda"), batch, layer, reverse, gate_kind,
                            state_kind, dH, dh_n, dc_n)

    n_rows, batch_size = batch.X.shape[0], len(lengths)

    def empty(*shape):
        return cuda.device_array(shape, dtype)

    inputs = [cuda.to_device(layer[name]) for name in ("W", "R", "bias", "W_proj", "h0", "c0")]
    X = cuda.to_device(batch.X)
    # batch_sizes stays on the host: the host walks the steps.
    args = (X, batch.batch_sizes, *inputs, reverse, gate_kind, state_kind)
    H, Hprev = empty(n_rows, state), empty(n_rows, state)
    M = empty(n_rows, hidden) if proj else inputs[3]  # the (0, 0) W_proj, as the network does
    Cprev, TC, gates = empty(n_rows, hidden), empty(n_rows, hidden), empty(n_rows, 4 * hidden)
    h_n, c_n = empty(batch_size, state), empty(batch_size, hidden)
    grads = dict(dX=empty(n_rows, n_features), dW=empty(4 * hidden, n_features),
                 dR=empty(4 * hidden, state), dbias=empty(4 * hidden),
                 dW_proj=empty(proj, hidden) if proj else M,
                 dh0=empty(batch_size, state), dc0=empty(batch_size, hidden))
    workspaces = (empty(n_rows, 4 * hidden), empty(n_rows, state) if proj else M,
                  empty(batch_size, hidden) if proj else M)
    gradients_in = [cuda.to_device(a) for a in (dH, dh_n, dc_n)]
    work = empty(batch_size + X.shape[1] + state + 1, 4 * hidden)

    def refuse(*args, **kwargs):
        raise AssertionError("a transfer or allocation with device arrays only")

    with monkeypatch.context() as patch:
        patch.setattr(cuda, "to_device", refuse)
        patch.setattr(cuda, "device_array", refuse)
        cuda_lstm.forward(*args, H, Hprev, Cprev, TC, gates, M, h_n, c_n, work)
        cuda_lstm.backward(*args, Hprev, Cprev, TC, gates, M, *gradients_in, *grads.values(),
                           *workspaces)
    on_device = dict(H=H, h_n=h_n, c_n=c_n, **grads)
    for name, expected in on_host.items():
        np.testing.assert_array_equal(on_device[name].copy_to_host(), expected, err_msg=name)
    # The inputs are left as they were.
    np.testing.assert_array_equal(X.copy_to_host(), batch.X)
    for device, host in zip(inputs, layer.values()):
        np.testing.assert_array_equal(device.copy_to_host(), host)


@pytest.mark.parametrize("tile", [None, 3], ids=["default-tile", "tile-3"])
def test_gemm_transposes_offsets_and_accumulation(tile):
    K = cuda_lstm.kernels("float64", tile)
    rng = np.random.default_rng(1)
    m, n, k, a_off, c_off = 5, 7, 6, 2, 1
    for trans_a in (False, True):
        for trans_b in (False, True):
            A = rng.standard_normal((k, m + a_off) if trans_a else (m + a_off + 1, k))
            B = rng.standard_normal((n, k) if trans_b else (k, n))
            C = rng.standard_normal((m + c_off + 2, n))
            op_a = A.T[a_off:a_off + m] if trans_a else A[a_off:a_off + m]
            op_b = B.T if trans_b else B
            for accumulate in (False, True):
                expected = C.copy()
                expected[c_off:c_off + m] = (C[c_off:c_off + m] if accumulate else 0) + op_a @ op_b
                d_C = cuda.to_device(C)
                cuda_lstm.launch_gemm(K, cuda.to_device(A), cuda.to_device(B), d_C, m, n, k,
                                      a_off, c_off, trans_a, trans_b, accumulate)
                np.testing.assert_allclose(d_C.copy_to_host(), expected, rtol=1e-12,
                                           atol=1e-12, err_msg=f"{trans_a=} {trans_b=}")


def network_problem(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    shards = [random_packed_batch(rng, lengths, 2, np.float64) for lengths in ([4, 1, 3],)]
    shapes = parameter_shapes(2, shape.hidden_size, shape.num_layers, shape.bidirectional,
                              n_outputs=1, proj_size=shape.proj_size)
    flat = init_parameters(shapes, np.random.RandomState(seed), np.float64)
    flat += 0.3 * rng.standard_normal(flat.shape)
    n_stack = shape.num_layers * shape.n_directions
    h0 = [0.5 * rng.standard_normal((n_stack, s.size, shape.state_size)) for s in shards]
    c0 = [0.5 * rng.standard_normal((n_stack, s.size, shape.hidden_size)) for s in shards]
    d_outputs = [rng.standard_normal((s.X.shape[0], shape.n_features_out)) for s in shards]
    d_final = [rng.standard_normal((s.size, shape.n_features_out)) for s in shards]
    masks = [[(rng.uniform(size=(s.X.shape[0], shape.n_features_out)) < 0.7) / 0.7]
             for s in shards]
    cast = [dataclasses.replace(s, X=s.X.astype(dtype)) for s in shards]
    return dict(shards=cast, shapes=shapes, flat=flat.astype(dtype),
                h0=[a.astype(dtype) for a in h0], c0=[a.astype(dtype) for a in c0],
                d_outputs=[a.astype(dtype) for a in d_outputs],
                d_final=[a.astype(dtype) for a in d_final],
                masks=[[m.astype(dtype) for m in ms] for ms in masks])


def network_pass(problem, shape, backend):
    params = unflatten(problem["flat"], problem["shapes"])
    grads = [np.zeros_like(problem["flat"]) for _ in problem["shards"]]
    forward = network_forward(params, shape, problem["shards"], backend,
                              dropout_masks=problem["masks"], h0=problem["h0"], c0=problem["c0"])
    backward = network_backward(params, [unflatten(g, problem["shapes"]) for g in grads], shape,
                                problem["shards"], backend, forward,
                                d_outputs=problem["d_outputs"], d_final_hidden=problem["d_final"],
                                dropout_masks=problem["masks"])
    return forward, sum(grads), backward


NETWORKS = {
    "bi-2": (NetworkShape(hidden_size=3, num_layers=2, bidirectional=True), np.float64),
    "bi-2-proj-hard-softsign-float32": (
        NetworkShape(hidden_size=3, num_layers=2, bidirectional=True, proj_size=2,
                     gate_kind=1, state_kind=1), np.float32),
}


@pytest.mark.parametrize("shape, dtype", NETWORKS.values(), ids=NETWORKS.keys())
def test_network_matches_reference(shape, dtype):
    expected = network_pass(network_problem(shape, np.float64), shape, get_backend("reference"))
    actual = network_pass(network_problem(shape, dtype), shape, get_backend("cuda"))
    (fwd_e, grads_e, bwd_e), (fwd_a, grads_a, bwd_a) = expected, actual
    tolerance = TOLERANCE[dtype]
    pairs = [("parameter gradients", grads_a, grads_e)]
    for s in range(len(fwd_e)):
        pairs += [(f"outputs {s}", fwd_a[s].outputs, fwd_e[s].outputs),
                  (f"h_n {s}", fwd_a[s].h_n, fwd_e[s].h_n),
                  (f"c_n {s}", fwd_a[s].c_n, fwd_e[s].c_n),
                  (f"d_inputs {s}", bwd_a[s].d_inputs, bwd_e[s].d_inputs),
                  (f"d_h0 {s}", bwd_a[s].d_h0, bwd_e[s].d_h0),
                  (f"d_c0 {s}", bwd_a[s].d_c0, bwd_e[s].d_c0)]
    for name, got, want in pairs:
        assert got.dtype == dtype, name
        error = relative_error(got, want)
        assert error < tolerance, f"{name}: relative error {error:.3g}"


@gpu_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj_size", [0, 24], ids=["no-proj", "proj"])
def test_realistic_sizes_match_numba(dtype, reverse, proj_size):
    """Many tiles and blocks: B=48 ragged sequences up to 40 steps, H=64, I=20.

    Weights of scale 1/sqrt(H): larger ones make this layer chaotic over 40
    steps, and float32 rounding then grows far beyond any fixed tolerance.
    """
    lengths = np.random.default_rng(7).integers(1, 41, size=48)
    compare_direction("cuda", dtype, reverse, 0, 0, lengths, hidden=64, proj_size=proj_size,
                      n_features=20, seed=3, scale=0.125)


@gpu_only
def test_gemm_many_tiles():
    K = cuda_lstm.kernels("float64")
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((1000, 70)), rng.standard_normal((130, 70))
    C = cuda.device_array((1000, 130))
    cuda_lstm.launch_gemm(K, cuda.to_device(A), cuda.to_device(B), C, 1000, 130, 70,
                          trans_b=True)
    np.testing.assert_allclose(C.copy_to_host(), A @ B.T, rtol=1e-12, atol=1e-12)


def test_estimator_fit_matches_reference():
    """backend="cuda" through a whole fit and predict, with the network's
    worker threads (n_jobs=2) calling the kernels concurrently."""
    from fastlstm import LSTMClassifier

    rng = np.random.default_rng(0)
    X = [rng.standard_normal((n, 2)) for n in (3, 2, 4, 1, 3, 2)]
    y = [0, 1, 0, 1, 1, 0]
    params = dict(hidden_size=2, bidirectional=True, max_epochs=1, batch_size=6, n_jobs=2,
                  random_state=0, dtype="float64")
    on_cuda = LSTMClassifier(backend="cuda", **params).fit(X, y)
    expected = LSTMClassifier(backend="reference", **params).fit(X, y)
    assert on_cuda.backend_ == "cuda"
    for name, value in expected.weights_.items():
        assert relative_error(on_cuda.weights_[name], value) < 1e-9, name
    np.testing.assert_allclose(on_cuda.predict_proba(X), expected.predict_proba(X),
                               rtol=1e-9, atol=1e-12)
