"""fastlstm.interop: fitted estimators to torch modules and back.

Skipped when torch is not installed: it is never a dependency of fastlstm.
"""

import functools
import pickle
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

torch = pytest.importorskip("torch")

from fastlstm import LSTMClassifier, LSTMRegressor  # noqa: E402
from fastlstm.interop import from_torch, to_torch  # noqa: E402

N_FEATURES = 3
HIDDEN_SIZE = 6
CLASSES = np.array([10, 20, 30])

# rtol alone fails on outputs near zero, whose float32 rounding (about 2e-8
# here, from the head's sum of terms of order 0.1 and fastlstm's float32 tanh
# approximation) is large relative to them; hence a small atol as well.
TOLERANCES = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-13)}
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}

KINDS = ["classifier", "regressor-1", "regressor-2"]
network_variants = pytest.mark.parametrize(
    "bidirectional, num_layers, proj_size",
    [(bi, layers, proj) for bi in (False, True) for layers in (1, 2) for proj in (0, 3)],
    ids=lambda value: repr(value),
)
dtypes = pytest.mark.parametrize("dtype", ["float32", "float64"])
kinds = pytest.mark.parametrize("kind", KINDS)


def ragged_sequences(n_sequences, seed):
    """Random sequences of 1 to 9 steps, the shortest and longest included."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([[1, 9], rng.integers(1, 10, n_sequences - 2)])
    return [rng.standard_normal((n, N_FEATURES)) for n in lengths]


def targets(kind, n_sequences, seed):
    rng = np.random.default_rng(seed)
    if kind == "classifier":
        return rng.permutation(np.resize(CLASSES, n_sequences))
    if kind == "regressor-1":
        return rng.standard_normal(n_sequences)
    return rng.standard_normal((n_sequences, 2))


@functools.lru_cache(maxsize=None)
def fitted(kind, bidirectional, num_layers, proj_size, dtype, normalization="zscore"):
    """A small model after a few epochs, shared by the tests that only read it."""
    Estimator = LSTMClassifier if kind == "classifier" else LSTMRegressor
    # Dropout is on so that the torch module must be in eval mode to agree.
    estimator = Estimator(hidden_size=HIDDEN_SIZE, num_layers=num_layers,
                          bidirectional=bidirectional, proj_size=proj_size, dropout=0.3 if num_layers > 1 else 0.0,
                          max_epochs=3, batch_size=8, learning_rate=1e-2, dtype=dtype,
                          normalization=normalization, random_state=0)
    return estimator.fit(ragged_sequences(30, seed=1), targets(kind, 30, seed=2))


def estimator_outputs(estimator, X):
    """What the torch module must reproduce: probabilities, or 2-D predictions."""
    if isinstance(estimator, LSTMClassifier):
        return estimator.predict_proba(X)
    return estimator.predict(X).reshape(len(X), -1)


def module_outputs(estimator, outputs):
    outputs = outputs.detach().numpy()
    if isinstance(estimator, LSTMClassifier):
        return torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
    return outputs


def as_tensors(X, dtype):
    return [torch.as_tensor(seq, dtype=TORCH_DTYPES[dtype]) for seq in X]


def torch_reference(lstm, head, X):
    """Outputs of lstm + head, one sequence at a time: no padding, no packing."""
    dtype = head.weight.dtype
    n_directions = 2 if lstm.bidirectional else 1
    lstm, head = lstm.eval(), head.eval()
    rows = []
    with torch.no_grad():
        for seq in X:
            x = torch.as_tensor(seq, dtype=dtype).unsqueeze(0 if lstm.batch_first else 1)
            _, (h_n, _) = lstm(x)
            rows.append(head(torch.cat(list(h_n[-n_directions:, 0]))).numpy())
    return np.array(rows)


# -- to_torch ------------------------------------------------------------------


@kinds
@network_variants
@dtypes
def test_to_torch_matches_estimator(kind, bidirectional, num_layers, proj_size, dtype):
    estimator = fitted(kind, bidirectional, num_layers, proj_size, dtype)
    model = to_torch(estimator)
    assert not model.training
    assert all(p.dtype == TORCH_DTYPES[dtype] for p in model.parameters())
    assert model.lstm.batch_first
    assert (model.lstm.num_layers, model.lstm.bidirectional, model.lstm.proj_size) == (
        num_layers, bidirectional, proj_size)

    X = ragged_sequences(12, seed=3)
    expected = estimator_outputs(estimator, X)
    tensors = as_tensors(X, dtype)
    # Padding that is not zero: it must not reach any state.
    padded = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=5.0)
    lengths = torch.tensor([len(seq) for seq in X])
    packed = torch.nn.utils.rnn.pack_sequence(tensors, enforce_sorted=False)
    with torch.no_grad():
        from_padded = model(padded, lengths)
        from_packed = model(packed)
    assert from_padded.shape == (len(X), expected.shape[1])
    assert_allclose(module_outputs(estimator, from_padded), expected, **TOLERANCES[dtype])
    assert_allclose(module_outputs(estimator, from_packed), expected, **TOLERANCES[dtype])


@kinds
@network_variants
@dtypes
def test_round_trip_reproduces_predictions_exactly(kind, bidirectional, num_layers, proj_size,
                                                   dtype):
    # A torch LSTM and Linear carry no input normalisation, so only a model
    # trained without one can come back exactly.
    estimator = fitted(kind, bidirectional, num_layers, proj_size, dtype, normalization=None)
    model = to_torch(estimator)
    back = from_torch(model.lstm, model.head, classes=getattr(estimator, "classes_", None),
                      dtype=dtype)
    assert type(back) is type(estimator)
    for name in ("hidden_size", "num_layers", "bidirectional", "proj_size", "dropout", "dtype"):
        assert back.get_params()[name] == estimator.get_params()[name]
    assert back.weights_.keys() == estimator.weights_.keys()
    for name, value in estimator.weights_.items():
        assert back.weights_[name].dtype == value.dtype
        assert_array_equal(back.weights_[name], value)
    X = ragged_sequences(12, seed=4)
    assert_array_equal(back.predict(X), estimator.predict(X))
    if kind == "classifier":
        assert_array_equal(back.classes_, estimator.classes_)
        assert_array_equal(back.predict_proba(X), estimator.predict_proba(X))


# torch's own notice that its oneDNN path lacks projections; it falls back.
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")
def test_forward_without_lengths_and_with_numpy_input():
    estimator = fitted("regressor-2", True, 2, 3, "float32")
    model = to_torch(estimator)
    X = np.random.default_rng(5).standard_normal((4, 7, N_FEATURES))  # float64, equal lengths
    with torch.no_grad():
        outputs = model(X)  # converted to the module's float32
    assert outputs.dtype == torch.float32
    assert_allclose(outputs.numpy(), estimator.predict(X), **TOLERANCES["float32"])


def test_forward_rejects_bad_input():
    model = to_torch(fitted("classifier", False, 1, 0, "float32"))
    x = torch.zeros(2, 4, N_FEATURES)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 2], batch_first=True)
    with pytest.raises(ValueError, match="PackedSequence"):
        model(packed, lengths=[4, 2])
    with pytest.raises(ValueError, match="3-D"):
        model(torch.zeros(4, N_FEATURES))


def test_to_torch_leaves_torch_random_state_alone():
    estimator = fitted("classifier", True, 2, 0, "float32")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    to_torch(estimator)
    assert torch.equal(torch.rand(3), expected)


def test_to_torch_copies_the_weights():
    estimator = fitted("classifier", False, 1, 0, "float64")
    before = {name: value.copy() for name, value in estimator.weights_.items()}
    model = to_torch(estimator)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    for name, value in estimator.weights_.items():
        assert_array_equal(value, before[name])


def test_torch_module_pickles_in_a_fresh_process(tmp_path):
    estimator = fitted("regressor-1", True, 1, 0, "float64")
    X = np.random.default_rng(6).standard_normal((3, 5, N_FEATURES))
    model = to_torch(estimator)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    # The class is built lazily; a new process must still find it by name.
    script = (
        "import sys, numpy as np, torch\n"
        f"model = torch.load({str(path)!r}, weights_only=False)\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "with torch.no_grad():\n"
        "    np.save(sys.argv[1], model(x).numpy())\n"
    )
    np.save(tmp_path / "x.npy", X)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.npy")], check=True)
    assert_array_equal(np.load(tmp_path / "out.npy")[:, 0],
                       pickle.loads(pickle.dumps(model))(torch.from_numpy(X)).detach()[:, 0])
    assert_allclose(np.load(tmp_path / "out.npy")[:, 0], estimator.predict(X),
                    **TOLERANCES["float64"])


@pytest.mark.parametrize("activation", [dict(gate_activation="hard-sigmoid"),
                                        dict(state_activation="softsign")],
                         ids=["hard-sigmoid", "softsign"])
def test_to_torch_rejects_activations_torch_lacks(activation):
    estimator = LSTMClassifier(hidden_size=4, max_epochs=1, random_state=0, **activation)
    estimator.fit(ragged_sequences(10, seed=0), targets("classifier", 10, seed=0))
    with pytest.raises(ValueError, match=next(iter(activation))):
        to_torch(estimator)


def test_to_torch_needs_a_fitted_fastlstm_estimator():
    with pytest.raises(NotFittedError):
        to_torch(LSTMClassifier())
    with pytest.raises(NotFittedError):
        to_torch(LSTMRegressor())
    with pytest.raises(TypeError, match="LSTMClassifier or LSTMRegressor"):
        to_torch(torch.nn.LSTM(2, 3))


# -- from_torch ----------------------------------------------------------------


def torch_network(bidirectional, num_layers, proj_size, dtype, n_outputs, bias=True,
                  batch_first=False, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(N_FEATURES, HIDDEN_SIZE, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=0.25 if num_layers > 1 else 0.0,
                         bidirectional=bidirectional, proj_size=proj_size,
                         dtype=TORCH_DTYPES[dtype])
    n_features_out = (2 if bidirectional else 1) * (proj_size or HIDDEN_SIZE)
    head = torch.nn.Linear(n_features_out, n_outputs, bias=bias, dtype=TORCH_DTYPES[dtype])
    return lstm, head


@kinds
@network_variants
@dtypes
@pytest.mark.parametrize("bias, batch_first", [(True, False), (False, True)],
                         ids=["bias", "no-bias-batch-first"])
def test_from_torch_matches_torch(kind, bidirectional, num_layers, proj_size, dtype, bias,
                                  batch_first):
    n_outputs = {"classifier": 3, "regressor-1": 1, "regressor-2": 2}[kind]
    lstm, head = torch_network(bidirectional, num_layers, proj_size, dtype, n_outputs,
                               bias=bias, batch_first=batch_first)
    classes = CLASSES if kind == "classifier" else None
    estimator = from_torch(lstm, head, classes=classes, dtype=dtype)
    check_is_fitted(estimator)
    assert all(value.dtype == np.dtype(dtype) for value in estimator.weights_.values())
    if not bias:
        for name, value in estimator.weights_.items():
            if name.startswith("bias_") or name == "head.bias":
                assert_array_equal(value, 0)

    X = ragged_sequences(12, seed=7)
    expected = torch_reference(lstm, head, X)
    if kind == "classifier":
        assert isinstance(estimator, LSTMClassifier)
        expected_proba = torch.softmax(torch.from_numpy(expected), dim=1).numpy()
        assert_allclose(estimator.predict_proba(X), expected_proba, **TOLERANCES[dtype])
        assert_array_equal(estimator.predict(X), CLASSES[expected.argmax(axis=1)])
    else:
        assert isinstance(estimator, LSTMRegressor)
        predictions = estimator.predict(X)
        assert predictions.ndim == (1 if n_outputs == 1 else 2)
        assert_allclose(predictions.reshape(len(X), -1), expected, **TOLERANCES[dtype])


def test_from_torch_sorts_classes_with_the_head_rows():
    lstm, head = torch_network(True, 1, 0, "float64", 3)
    labels = np.array(["eel", "cat", "dog"])
    estimator = from_torch(lstm, head, classes=labels, dtype="float64")
    assert_array_equal(estimator.classes_, ["cat", "dog", "eel"])
    X = ragged_sequences(12, seed=8)
    logits = torch_reference(lstm, head, X)
    proba = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    order = np.argsort(labels)
    assert_allclose(estimator.predict_proba(X), proba[:, order], **TOLERANCES["float64"])
    assert_array_equal(estimator.predict(X), labels[logits.argmax(axis=1)])


def test_from_torch_fitted_state():
    lstm, head = torch_network(False, 2, 0, "float32", 3, seed=1)
    estimator = from_torch(lstm, head, classes=["a", "b", "c"], max_epochs=2, batch_size=8,
                           random_state=0)
    assert estimator.n_features_in_ == N_FEATURES
    assert estimator.n_iter_ == 0 and estimator.history_ == []
    assert estimator.backend_ is None
    assert estimator.get_params()["max_epochs"] == 2
    assert estimator.get_params()["dropout"] == 0.25
    X = ragged_sequences(20, seed=9)
    before = estimator.predict_proba(X)

    # The estimator owns its weights: changing the torch module changes nothing.
    with torch.no_grad():
        lstm.weight_ih_l0.add_(1.0)
        head.bias.add_(1.0)
    assert_array_equal(estimator.predict_proba(X), before)

    assert estimator.score(X, estimator.predict(X)) == 1.0
    unpickled = pickle.loads(pickle.dumps(estimator))
    assert_array_equal(unpickled.predict_proba(X), before)

    # Keyword parameters serve later refits.
    refit = clone(estimator).fit(X, np.resize(["a", "b", "c"], len(X)))
    assert refit.n_iter_ == 2


def test_from_torch_regressor_fitted_state():
    lstm, head = torch_network(True, 1, 2, "float64", 2)
    estimator = from_torch(lstm, head, dtype="float64")
    assert estimator.n_outputs_ == 2
    X = ragged_sequences(10, seed=10)
    predictions = estimator.predict(X)
    assert predictions.shape == (10, 2)
    assert estimator.score(X, predictions) == 1.0
    assert_array_equal(pickle.loads(pickle.dumps(estimator)).predict(X), predictions)


def test_from_torch_accepts_consistent_hyper_parameters():
    lstm, head = torch_network(True, 1, 0, "float32", 1)
    estimator = from_torch(lstm, head, n_features_in=N_FEATURES, hidden_size=HIDDEN_SIZE,
                           bidirectional=True, gate_activation="sigmoid")
    assert estimator.hidden_size == HIDDEN_SIZE


@pytest.mark.parametrize("head_in", [HIDDEN_SIZE, 2 * HIDDEN_SIZE + 1])
def test_from_torch_rejects_head_size_mismatch(head_in):
    lstm, _ = torch_network(True, 1, 0, "float32", 1)
    with pytest.raises(ValueError, match="in_features"):
        from_torch(lstm, torch.nn.Linear(head_in, 2))


def test_from_torch_rejects_head_size_mismatch_with_projection():
    lstm, _ = torch_network(False, 2, 3, "float32", 1)
    with pytest.raises(ValueError, match="proj_size or hidden_size"):
        from_torch(lstm, torch.nn.Linear(HIDDEN_SIZE, 2))


@pytest.mark.parametrize("classes, match", [
    (["a", "b"], "one label per output"),
    ([["a", "b", "c"]], "one label per output"),
    (["a", "b", "a"], "repeated"),
])
def test_from_torch_rejects_bad_classes(classes, match):
    lstm, head = torch_network(False, 1, 0, "float32", 3)
    with pytest.raises(ValueError, match=match):
        from_torch(lstm, head, classes=classes)


def test_from_torch_rejects_single_logit_classifier():
    lstm, head = torch_network(False, 1, 0, "float32", 1)
    with pytest.raises(ValueError, match="at least two classes"):
        from_torch(lstm, head, classes=["yes"])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_features_in=N_FEATURES + 1), ValueError, "input_size"),
    (dict(hidden_size=HIDDEN_SIZE + 1), ValueError, "hidden_size is fixed"),
    (dict(bidirectional=True), ValueError, "bidirectional is fixed"),
    (dict(gate_activation="hard-sigmoid"), ValueError, "gate_activation"),
    (dict(state_activation="softsign"), ValueError, "state_activation"),
    (dict(max_epochs=0), ValueError, "max_epochs"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(no_such_parameter=1), TypeError, "no_such_parameter"),
])
def test_from_torch_rejects_bad_parameters(kwargs, error, match):
    lstm, head = torch_network(False, 1, 0, "float32", 2)
    with pytest.raises(error, match=match):
        from_torch(lstm, head, **kwargs)


def test_from_torch_rejects_wrong_module_types():
    lstm, head = torch_network(False, 1, 0, "float32", 2)
    with pytest.raises(TypeError, match="torch.nn.LSTM"):
        from_torch(torch.nn.GRU(N_FEATURES, HIDDEN_SIZE), head)
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        from_torch(lstm, torch.nn.Sequential(head))


def test_from_torch_rejects_non_finite_weights():
    lstm, head = torch_network(False, 1, 0, "float32", 2)
    with torch.no_grad():
        lstm.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight_hh_l0"):
        from_torch(lstm, head)


# -- torch stays optional ------------------------------------------------------


def test_interop_imports_without_torch():
    # A finder that refuses torch, rather than sys.modules["torch"] = None,
    # which scipy's array-API helpers (imported by scikit-learn) trip over.
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import fastlstm, fastlstm.interop\n"
        "from fastlstm.interop import from_torch, to_torch\n"
        "try:\n"
        "    from_torch(None, None)\n"
        "except ImportError as error:\n"
        "    assert 'pip install torch' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_importing_interop_does_not_import_torch():
    script = (
        "import sys, fastlstm.interop\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_clear_error_without_torch(monkeypatch):
    estimator = fitted("classifier", False, 1, 0, "float32")
    lstm, head = torch_network(False, 1, 0, "float32", 3)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        to_torch(estimator)
    with pytest.raises(ImportError, match="pip install torch"):
        from_torch(lstm, head, classes=CLASSES)


def test_partial_fit_continues_a_model_imported_from_torch():
    lstm = torch.nn.LSTM(3, HIDDEN_SIZE)
    head = torch.nn.Linear(HIDDEN_SIZE, 2)
    estimator = from_torch(lstm, head, classes=np.array(["a", "b"]), random_state=0)
    X = ragged_sequences(20, seed=5)
    y = np.array(["a", "b"] * 10)
    before = {name: value.copy() for name, value in estimator.weights_.items()}
    estimator.partial_fit(X, y)
    assert estimator.n_iter_ == 1
    assert not np.array_equal(before["weight_hh_l0"], estimator.weights_["weight_hh_l0"])
