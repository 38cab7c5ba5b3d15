"""The one-call streaming path of predict_and_update_state (``_streaming``).

It must answer exactly what the general path answers (to rounding), take
only what it can do, and leave everything else (ragged input, errors, other
backends) to the general path.
"""

import pickle

import numpy as np
import pytest

import fastlstm._trainer
from fastlstm import LSTMClassifier, LSTMRegressor
from fastlstm._streaming import StreamingNetwork, pack_stream_weights

COMMON = dict(hidden_size=6, batch_size=8, max_epochs=2, random_state=0, n_jobs=1,
              backend="numba")
NETWORKS = {
    "one-layer": {},
    "two-layers-projection": dict(num_layers=2, proj_size=3),
    "hard-sigmoid-softsign": dict(gate_activation="hard-sigmoid", state_activation="softsign"),
    # 4H = 160: weight panels of 64, 64 and 32 columns (numba_stream.PANEL).
    "wide-two-layers-projection": dict(hidden_size=40, num_layers=2, proj_size=20),
}
TOLERANCE = {"float64": dict(rtol=1e-12, atol=1e-14), "float32": dict(rtol=1e-5, atol=1e-6)}


def data(per_step, classifier, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((rng.integers(4, 12), 3)) * 5 + 2 for _ in range(24)]
    if classifier:
        y = [(np.cumsum(x[:, 0]) > 0).astype(int) for x in X] if per_step else \
            np.array([int(x[:, 0].sum() > 0) for x in X])
    else:
        y = [np.cumsum(x[:, :2], axis=0) for x in X] if per_step else \
            np.array([x[:, 0].sum() for x in X])
    return X, y


@pytest.fixture
def general_path_forbidden(monkeypatch):
    """Make the general path fail, to show that a call took the fast path."""
    def fail(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(fastlstm._estimators, "network_outputs", fail, raising=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("per_step", [True, False], ids=["per-step", "last"])
@pytest.mark.parametrize("Estimator", [LSTMRegressor, LSTMClassifier])
def test_fast_path_answers_as_the_general_path(Estimator, per_step, network, dtype):
    X, y = data(per_step, Estimator is LSTMClassifier)
    model = Estimator(dtype=dtype, **{**COMMON, **NETWORKS[network]}).fit(X, y)
    stream = np.random.default_rng(1).standard_normal((3, 9, 3)) * 5 + 2
    # The general path, fed nested lists (which the fast path does not take).
    expected = model.reset_state().predict_and_update_state(
        [seq.tolist() for seq in stream[:, :4]])
    expected_rest = model.predict_and_update_state([seq.tolist() for seq in stream[:, 4:]])
    h, c = (a.copy() for a in model._state)
    model.reset_state()
    fast = model.predict_and_update_state(stream[:, :4])
    assert model._streaming[3] is not None
    fast_rest = [model.predict_and_update_state(stream[:, t:t + 1]) for t in range(4, 9)]
    np.testing.assert_allclose(model._state[0], h, **TOLERANCE[dtype])
    np.testing.assert_allclose(model._state[1], c, **TOLERANCE[dtype])
    if per_step:
        assert isinstance(fast, list) and len(fast) == 3
        for i in range(3):
            assert fast[i].shape == expected[i].shape and fast[i].dtype == expected[i].dtype
            rest = np.concatenate([piece[i] for piece in fast_rest])
            if Estimator is LSTMClassifier:
                np.testing.assert_array_equal(fast[i], expected[i])
                np.testing.assert_array_equal(rest, expected_rest[i])
            else:
                np.testing.assert_allclose(fast[i], expected[i], **TOLERANCE[dtype])
                np.testing.assert_allclose(rest, expected_rest[i], **TOLERANCE[dtype])
    else:
        assert fast.shape == expected.shape and fast.dtype == expected.dtype
        if Estimator is LSTMClassifier:
            np.testing.assert_array_equal(fast, expected)
            np.testing.assert_array_equal(fast_rest[-1], expected_rest)
        else:
            np.testing.assert_allclose(fast, expected, **TOLERANCE[dtype])
            np.testing.assert_allclose(fast_rest[-1], expected_rest, **TOLERANCE[dtype])


@pytest.mark.parametrize("Estimator", [LSTMRegressor, LSTMClassifier])
def test_one_stream_per_step_answers_as_the_general_path(Estimator):
    # One stream has its own branch in building the list of per-step outputs.
    X, y = data(True, Estimator is LSTMClassifier)
    model = Estimator(**COMMON).fit(X, y)
    stream = np.random.default_rng(2).standard_normal((1, 5, 3)).astype(np.float32)
    expected = model.reset_state().predict_and_update_state([stream[0].tolist()])
    fast = model.reset_state().predict_and_update_state(stream)
    assert model._streaming[3] is not None
    assert isinstance(fast, list) and len(fast) == 1
    assert fast[0].shape == expected[0].shape and fast[0].shape[0] == 5
    assert fast[0].dtype == expected[0].dtype
    if Estimator is LSTMClassifier:
        np.testing.assert_array_equal(fast[0], expected[0])
    else:
        np.testing.assert_allclose(fast[0], expected[0], **TOLERANCE["float32"])


def test_one_step_calls_take_the_fast_path(general_path_forbidden):
    X, y = data(True, False)
    model = LSTMRegressor(**COMMON).fit(X, y)
    x = np.ones((1, 1, 3), dtype=np.float32)
    first = model.predict_and_update_state(x)
    second = model.predict_and_update_state(x)
    assert not np.array_equal(first[0], second[0])  # the state moved on
    # float64 input into a float32 model, and a non-contiguous view.
    wide = np.ones((1, 1, 6))[:, :, ::2]
    model.predict_and_update_state(wide)


def test_a_list_of_equal_shaped_arrays_takes_the_fast_path(monkeypatch):
    X, y = data(True, False)
    model = LSTMRegressor(**COMMON).fit(X, y)
    steps = np.random.default_rng(3).standard_normal((4, 2, 2, 3))  # 4 calls, 2 streams
    expected = [model.predict_and_update_state(step) for step in steps]
    model.reset_state()
    with monkeypatch.context() as patch:
        patch.setattr(fastlstm._estimators, "network_outputs",
                      lambda *a, **k: pytest.fail("the general path ran"))
        got = [model.predict_and_update_state(list(step)) for step in steps]
        # One shape, another float dtype than the model's: still one stack.
        model.predict_and_update_state((steps[0, 0].astype(np.float32), steps[0, 1]))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Unequal lengths go the general way (and still answer).
    model.reset_state()
    ragged = model.predict_and_update_state([steps[0, 0], steps[0, 1, :1]])
    assert [len(piece) for piece in ragged] == [2, 1]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("per_step", [True, False], ids=["sequence-model", "window-model"])
def test_forecast_steps_take_the_fast_path(per_step, network, dtype, monkeypatch):
    rng = np.random.default_rng(3)
    X = [rng.standard_normal((8, 3)) for _ in range(24)]
    # As many outputs as features: each prediction is the next input.
    y = [np.cumsum(x, axis=0) * 0.1 for x in X] if per_step else \
        np.array([x.mean(axis=0) for x in X])
    model = LSTMRegressor(dtype=dtype, **{**COMMON, **NETWORKS[network]}).fit(X, y)
    observed = [x[:6] for x in X[:3]]  # windows of one shape: the fast path takes them
    with monkeypatch.context() as patch:
        patch.setattr(model, "_streaming_network", lambda: None)
        expected = model.forecast(observed, 7)
    calls = []
    general = fastlstm._estimators.network_outputs
    monkeypatch.setattr(fastlstm._estimators, "network_outputs",
                        lambda *a, **k: calls.append(1) or general(*a, **k))
    forecast = model.forecast(observed, 7)
    # A sequence model reads what was observed through the general path
    # (ragged in general), then steps on the fast one; a window model never
    # leaves it.
    assert len(calls) == (1 if per_step else 0)
    assert forecast.shape == expected.shape == (3, 7, 3)
    np.testing.assert_allclose(forecast, expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("per_step", [True, False], ids=["sequence-model", "window-model"])
def test_forecast_goes_on_the_general_way_when_the_fast_path_declines(per_step, monkeypatch):
    rng = np.random.default_rng(4)
    X = [rng.standard_normal((8, 3)) for _ in range(24)]
    y = [np.cumsum(x, axis=0) * 0.1 for x in X] if per_step else \
        np.array([x.mean(axis=0) for x in X])
    model = LSTMRegressor(dtype="float64", **COMMON).fit(X, y)
    observed = [x[:6] for x in X[:3]]
    with monkeypatch.context() as patch:
        patch.setattr(model, "_streaming_network", lambda: None)
        expected = model.forecast(observed, 6)
    network = model._streaming_network()
    step, calls = network.step, []

    def step_twice(*args):  # then answers None, as it does for non-finite input
        calls.append(1)
        return step(*args) if len(calls) <= 2 else None

    monkeypatch.setattr(network, "step", step_twice)
    forecast = model.forecast(observed, 6)
    np.testing.assert_allclose(forecast, expected, **TOLERANCE["float64"])
    assert len(calls) > 2  # it declined at least once and the forecast went on


def test_fast_path_never_writes_the_callers_arrays():
    X, y = data(True, False)
    model = LSTMRegressor(**COMMON).fit(X, y)
    x = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    x.flags.writeable = False
    before = x.copy()
    first = model.predict_and_update_state(x)[0].copy()
    model.predict_and_update_state(x)  # reuses the kernel's output buffer
    np.testing.assert_array_equal(x, before)
    model.reset_state()
    np.testing.assert_array_equal(model.predict_and_update_state(x)[0], first)


def test_nan_padded_and_bad_input_go_the_general_way():
    X, y = data(True, False)
    model = LSTMRegressor(**COMMON).fit(X, y)
    rng = np.random.default_rng(2)
    ragged = [rng.standard_normal((5, 3)), rng.standard_normal((3, 3))]
    padded = np.full((2, 5, 3), np.nan)
    padded[0], padded[1, :3] = ragged
    expected = model.reset_state().predict_and_update_state(ragged)
    got = model.reset_state().predict_and_update_state(padded)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, **TOLERANCE["float32"])
    model.reset_state()
    with pytest.raises(ValueError, match="infinit"):
        model.predict_and_update_state(np.full((1, 2, 3), np.inf))
    assert model._state is None  # a refused call leaves the state alone
    with pytest.raises(ValueError, match="3"):
        model.predict_and_update_state(np.ones((1, 2, 4)))
    model.predict_and_update_state(np.ones((2, 1, 3)))
    with pytest.raises(ValueError, match="kept state is for 2 sequences but X has 1"):
        model.predict_and_update_state(np.ones((1, 1, 3)))


def test_refit_and_set_params_rebuild_the_streaming_network():
    X, y = data(True, False)
    model = LSTMRegressor(**COMMON).fit(X, y)
    x = np.ones((1, 3, 3))
    before = model.reset_state().predict_and_update_state(x)[0]
    network = model._streaming[3]
    model.set_params(random_state=1).fit(X, y)
    after = model.reset_state().predict_and_update_state(x)[0]
    assert model._streaming[3] is not network
    # To rounding: the streaming kernel's loops split vector and scalar work
    # differently from the general kernel's.
    np.testing.assert_allclose(after, model.predict(list(x))[0], **TOLERANCE["float32"])
    assert not np.allclose(before, after)
    model.set_params(backend="cython")
    model.reset_state().predict_and_update_state(x)
    assert model._streaming[3] is None  # only the numba backend has the fast path


def test_bidirectional_models_are_still_refused():
    X, y = data(True, False)
    model = LSTMRegressor(bidirectional=True, **COMMON).fit(X, y)
    with pytest.raises(ValueError, match="unidirectional"):
        model.predict_and_update_state(np.ones((1, 1, 3)))


def test_pickle_drops_the_cache_and_keeps_the_state():
    X, y = data(True, False)
    model = LSTMRegressor(**COMMON).fit(X, y)
    stream = np.random.default_rng(3).standard_normal((2, 6, 3))
    model.predict_and_update_state(stream[:, :3])
    copy = pickle.loads(pickle.dumps(model))
    assert "_streaming" not in copy.__dict__
    np.testing.assert_array_equal(copy.predict_and_update_state(stream[:, 3:])[1],
                                  model.predict_and_update_state(stream[:, 3:])[1])


def test_panel_layout_stores_column_panels_one_after_the_other():
    from fastlstm._kernels.numba_stream import PANEL, panel_layout

    matrix = np.arange(5 * (2 * PANEL + 3), dtype=np.float64).reshape(5, 2 * PANEL + 3)
    flat = panel_layout(matrix)
    assert flat.shape == (matrix.size,)
    for p, width in enumerate([PANEL, PANEL, 3]):
        panel = flat[p * PANEL * 5:][:5 * width].reshape(5, width)
        np.testing.assert_array_equal(panel, matrix[:, p * PANEL:p * PANEL + width])


def _unpanel(params, offset, n_in, width):
    """The (n_in, width) matrix stored at params[offset:] in panels."""
    from fastlstm._kernels.numba_stream import PANEL

    columns = []
    for start in range(0, width, PANEL):
        n = min(PANEL, width - start)
        columns.append(params[offset + start * n_in:][:n_in * n].reshape(n_in, n))
    return np.hstack(columns)


def test_packed_weights_are_the_transposed_torch_weights():
    from fastlstm._kernels.numba_stream import BIAS, PROJ_WEIGHTS, WEIGHTS
    from fastlstm._network import NetworkShape

    rng = np.random.default_rng(0)
    H, P, n_in = 20, 2, 3  # 4H = 80: two panels
    weights = {"weight_ih_l0": rng.random((4 * H, n_in)), "weight_hh_l0": rng.random((4 * H, P)),
               "bias_ih_l0": rng.random(4 * H), "bias_hh_l0": rng.random(4 * H),
               "weight_hr_l0": rng.random((P, H)),
               "head.weight": rng.random((2, P)), "head.bias": rng.random(2)}
    shape = NetworkShape(hidden_size=H, num_layers=1, bidirectional=False, proj_size=P)
    params, layout, sizes = pack_stream_weights(weights, shape, np.float64)
    stacked = _unpanel(params, layout[0, WEIGHTS], n_in + P, 4 * H)
    np.testing.assert_array_equal(stacked[:n_in], weights["weight_ih_l0"].T)
    np.testing.assert_array_equal(stacked[n_in:], weights["weight_hh_l0"].T)
    np.testing.assert_array_equal(params[layout[0, BIAS]:][:4 * H],
                                  weights["bias_ih_l0"] + weights["bias_hh_l0"])
    np.testing.assert_array_equal(_unpanel(params, layout[0, PROJ_WEIGHTS], H, P),
                                  weights["weight_hr_l0"].T)
    np.testing.assert_array_equal(_unpanel(params, layout[1, WEIGHTS], P, 2),
                                  weights["head.weight"].T)
    np.testing.assert_array_equal(params[layout[1, BIAS]:][:2], weights["head.bias"])
    assert list(sizes) == [H, P, 2, 1]
    with pytest.raises(ValueError, match="unidirectional"):
        StreamingNetwork(weights, NetworkShape(hidden_size=H, num_layers=1, bidirectional=True),
                         None, np.float64, True)


def test_stream_call_slots_are_the_entrys():
    from fastlstm._kernels import _stream_call, numba_stream

    assert _stream_call.SLOTS == {name: getattr(numba_stream, name)
                                  for name in _stream_call.SLOTS}


def test_the_entries_count_as_cached_only_where_numbas_cache_holds_them(tmp_path, monkeypatch):
    import numba

    from fastlstm import _backends
    from fastlstm._kernels import numba_stream

    for dtype in (np.float32, np.float64):
        numba_stream.entry_address(dtype)  # compiled, or loaded, and in the cache
    assert numba_stream.entries_cached()
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path))  # an empty cache
    assert not numba_stream.entries_cached()
    assert not _backends.numba_kernels_cached()


def _wide_network(dtype, per_step=True):
    X, y = data(True, False)
    model = LSTMRegressor(dtype=dtype, **{**COMMON, **NETWORKS["wide-two-layers-projection"]})
    model.fit(X, y)
    return model._streaming_network() if per_step else StreamingNetwork(
        model.weights_, model._network_shape(), model.scaler_, np.dtype(dtype), False)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("per_step", [True, False], ids=["per-step", "last"])
def test_the_entry_gives_the_dispatchers_bits(dtype, per_step):
    """StreamCall's native entry and numba's dispatcher run the same compiled kernel."""
    from fastlstm._kernels.numba_stream import stream_forward, work_size

    network = _wide_network(dtype, per_step)
    X = np.random.default_rng(5).standard_normal((3, 4, 3)).astype(dtype) * 3
    outputs, (h, c) = network.step(X, None)
    outputs = outputs.copy()
    shape = network.net_shape
    h0 = np.zeros_like(h)
    c0 = np.zeros_like(c)
    expected = np.empty_like(outputs)
    stream_forward(X, network.affine, network.params, network.layout, network.sizes, h0, c0,
                   expected, np.empty(work_size(shape.hidden_size, shape.state_size, 3),
                                      dtype=dtype), per_step,
                   shape.gate_kind, shape.state_kind)
    np.testing.assert_array_equal(outputs, expected)
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(c, c0)
    assert np.abs(outputs).max() > 0 and np.abs(h).max() > 0


@pytest.mark.parametrize("hidden, proj_size, n_features", [(40, 20, 3), (6, 0, 10)],
                         ids=["state-wider-than-input", "input-wider-than-state"])
def test_the_kernel_stays_inside_its_workspace(hidden, proj_size, n_features):
    """work_size is enough, and the kernel writes nothing beyond it."""
    from fastlstm._kernels.numba_stream import stream_forward, work_size
    from fastlstm._network import NetworkShape
    from fastlstm._weights import parameter_shapes

    rng = np.random.default_rng(6)
    shape = NetworkShape(hidden_size=hidden, num_layers=2, bidirectional=False,
                         proj_size=proj_size)
    weights = {name: rng.standard_normal(size) * 0.5 for name, size in
               parameter_shapes(n_features, hidden, 2, False, 2, proj_size)}
    network = StreamingNetwork(weights, shape, None, np.float64, True)
    X = rng.standard_normal((2, 3, n_features))
    outputs, (h, c) = network.step(X, None)
    needed = work_size(hidden, shape.state_size, n_features)
    work = np.full(needed + 16, 7.0)
    h0, c0, expected = np.zeros_like(h), np.zeros_like(c), np.empty_like(outputs)
    stream_forward(X, network.affine, network.params, network.layout, network.sizes, h0, c0,
                   expected, work, True, shape.gate_kind, shape.state_kind)
    np.testing.assert_array_equal(work[needed:], 7.0)
    np.testing.assert_array_equal(expected, outputs)
    np.testing.assert_array_equal(h0, h)


def test_step_declines_what_it_cannot_run_and_writes_nothing():
    network = _wide_network("float32")
    X = np.ones((2, 1, 3), dtype=np.float32)
    _, state = network.step(X, None)
    h, c = (a.copy() for a in state)
    declined = {
        "nested lists": ([[[1.0, 2.0, 3.0]]], state),
        "integers": (np.ones((2, 1, 3), dtype=np.int64), state),
        "4 features": (np.ones((2, 1, 4), dtype=np.float32), state),
        "no steps": (np.ones((2, 0, 3), dtype=np.float32), state),
        "NaN": (np.full((2, 1, 3), np.nan, dtype=np.float32), state),
        "infinity": (np.full((2, 1, 3), np.inf), state),
        "state for 2 sequences": (np.ones((1, 1, 3), dtype=np.float32), state),
        "float64 state": (X, tuple(a.astype(np.float64) for a in state)),
        "strided state": (X, (np.repeat(state[0], 2, axis=2)[:, :, ::2], state[1])),
        "read-only state": (X, (np.frombuffer(state[0].tobytes(), dtype=np.float32)
                                .reshape(state[0].shape), state[1])),
        "one array": (X, state[0]),
    }
    for name, (X_bad, state_bad) in declined.items():
        assert network.step(X_bad, state_bad) is None, name
        np.testing.assert_array_equal(state[0], h, err_msg=name)
        np.testing.assert_array_equal(state[1], c, err_msg=name)
    # What it takes: another float dtype, a strided view (converted copies).
    wide = np.ones((2, 1, 6))[:, :, ::2]
    assert network.step(wide, state) is not None
    assert not np.array_equal(state[0], h)


def test_stream_call_refuses_arrays_its_entry_cannot_read():
    from fastlstm._kernels._stream_call import StreamCall
    from fastlstm._kernels.numba_stream import entry_address, work_size

    network = _wide_network("float32")
    call = network._call  # built from these arrays: they fit
    assert call is not None
    needed = work_size(40, 20, 3)  # the wide network: H 40, P 20, 3 features
    good = dict(entry=entry_address(np.float32), params=network.params, layout=network.layout,
                sizes=network.sizes, affine=network.affine,
                work=np.empty(needed, dtype=np.float32))
    StreamCall(*good.values(), True, 0, 0)
    bad = {
        "entry": (0, "address"),
        "params": (network.params.astype(np.int32), "float32 or float64"),
        "sizes": (network.sizes[:3], "4 entries"),
        "layout": (network.layout[:1], "rows"),
        "affine": (np.zeros((2, 3)), "0 or 3 rows"),
        "work": (np.empty(needed - 1, dtype=np.float32), "hold"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises((ValueError, TypeError), match=message):
            StreamCall(*{**good, name: value}.values(), True, 0, 0)
    with pytest.raises(TypeError, match="NumPy array"):
        StreamCall(*{**good, "params": list(network.params)}.values(), True, 0, 0)
    with pytest.raises(ValueError, match="2-D"):
        StreamCall(*{**good, "layout": network.layout.ravel()}.values(), True, 0, 0)
    with pytest.raises(ValueError, match="float32"):
        StreamCall(*{**good, "work": np.empty(8 * 40 + 3)}.values(), True, 0, 0)
    with pytest.raises(ValueError, match="decode must be one of"):
        StreamCall(*good.values(), True, 0, 0, "labels")


def _head_network(per_step, dtype, head_weight, head_bias, seed=5):
    from fastlstm._network import NetworkShape

    rng = np.random.default_rng(seed)
    H, n_features = 5, 3
    weights = {"weight_ih_l0": rng.standard_normal((4 * H, n_features)),
               "weight_hh_l0": rng.standard_normal((4 * H, H)),
               "bias_ih_l0": rng.standard_normal(4 * H), "bias_hh_l0": rng.standard_normal(4 * H),
               "head.weight": head_weight, "head.bias": head_bias}
    shape = NetworkShape(hidden_size=H, num_layers=1, bidirectional=False)
    return lambda decode: StreamingNetwork(weights, shape, None, dtype, per_step, decode)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("per_step", [True, False], ids=["per-step", "last"])
def test_predict_decodes_what_step_outputs(per_step, dtype):
    rng = np.random.default_rng(6)
    network = _head_network(per_step, dtype, rng.standard_normal((4, 5)), rng.standard_normal(4))
    X = (rng.standard_normal((8, 5, 3)) * 3).astype(dtype)
    outputs, _ = network("values").step(X, None)
    outputs = outputs.copy() if per_step else outputs[:, 0].copy()
    expected = {"values": outputs.astype(np.float64),
                "first value": outputs[..., 0].astype(np.float64),
                "argmax": np.argmax(outputs, axis=-1)}
    assert len(np.unique(expected["argmax"])) > 1  # the outputs rank differently row by row
    for decode, want in expected.items():
        got, (h, c) = network(decode).predict(X, None)
        assert got.dtype == want.dtype and got.shape == want.shape, decode
        np.testing.assert_array_equal(got, want)
        assert h.shape == (1, 8, 5) and np.any(h != 0)
    assert network("argmax").predict(X[:, :, :2], None) is None  # declined as step declines


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [[1, 3, 3, 0], [1, np.nan, 3, np.nan], [np.nan, 5, 2, 1],
                                  [-np.inf, -np.inf, -np.inf, -np.inf], [0, 0, 0, np.inf]])
def test_argmax_takes_the_first_of_equal_outputs_and_the_first_nan_as_numpy_does(bias, dtype):
    # A zero head weight makes every output its bias, whatever the state.
    network = _head_network(False, dtype, np.zeros((4, 5)), np.array(bias, dtype=float))
    X = np.ones((2, 1, 3), dtype=dtype)
    indices, _ = network("argmax").predict(X, None)
    expected = np.argmax(np.array([bias, bias], dtype=dtype), axis=-1)
    np.testing.assert_array_equal(indices, expected)
