"""LSTMClassifier and LSTMRegressor: the scikit-learn contract, end to end."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score

from fastlstm import LSTMClassifier, LSTMRegressor
from fastlstm.datasets import load_japanese_vowels

FAST = dict(hidden_size=16, max_epochs=3, batch_size=16, random_state=0)


@pytest.fixture(scope="module")
def vowels():
    X_train, y_train, X_test, y_test = load_japanese_vowels()
    return X_train, y_train, X_test, y_test


def make_sign_task(n_sequences=120, seed=0):
    """Label = whether the first step's feature is positive: the network must
    carry information across the whole (variable) length."""
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((rng.integers(3, 12), 2)).astype(np.float32) for _ in range(n_sequences)]
    y = np.array(["pos" if seq[0, 0] > 0 else "neg" for seq in X])
    return X, y


def test_classifier_learns_a_long_range_task():
    X, y = make_sign_task(300)
    X_test, y_test = make_sign_task(200, seed=1)
    clf = LSTMClassifier(hidden_size=16, max_epochs=40, batch_size=16, bidirectional=True,
                         learning_rate=1e-2, random_state=0).fit(X, y)
    assert clf.score(X_test, y_test) > 0.9
    assert clf.history_[-1]["loss"] < clf.history_[0]["loss"]


def test_classifier_fitted_attributes(vowels):
    X_train, y_train, X_test, _ = vowels
    clf = LSTMClassifier(bidirectional=True, **FAST).fit(X_train, y_train)
    np.testing.assert_array_equal(clf.classes_, np.array(list("123456789")))
    assert clf.n_features_in_ == 12
    assert clf.n_iter_ == 3 and len(clf.history_) == 3
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 9)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X_test), clf.classes_[proba.argmax(axis=1)])
    assert 0 <= clf.score(X_test, clf.predict(X_test)) == 1.0


def test_weights_use_torch_names_and_layout(vowels):
    X_train, y_train, _, _ = vowels
    clf = LSTMClassifier(hidden_size=8, num_layers=2, bidirectional=True, max_epochs=1,
                         random_state=0).fit(X_train, y_train)
    shapes = {name: value.shape for name, value in clf.weights_.items()}
    assert shapes == {
        "weight_ih_l0": (32, 12), "weight_hh_l0": (32, 8), "bias_ih_l0": (32,), "bias_hh_l0": (32,),
        "weight_ih_l0_reverse": (32, 12), "weight_hh_l0_reverse": (32, 8),
        "bias_ih_l0_reverse": (32,), "bias_hh_l0_reverse": (32,),
        "weight_ih_l1": (32, 16), "weight_hh_l1": (32, 8), "bias_ih_l1": (32,), "bias_hh_l1": (32,),
        "weight_ih_l1_reverse": (32, 16), "weight_hh_l1_reverse": (32, 8),
        "bias_ih_l1_reverse": (32,), "bias_hh_l1_reverse": (32,),
        "head.weight": (9, 16), "head.bias": (9,),
    }


def test_unit_forget_gate_initialisation(vowels):
    X_train, y_train, _, _ = vowels
    clf = LSTMClassifier(hidden_size=4, max_epochs=1, learning_rate=1e-12,
                         random_state=0).fit(X_train, y_train)
    bias_ih = clf.weights_["bias_ih_l0"]
    np.testing.assert_allclose(bias_ih[4:8], 1, atol=1e-6)
    np.testing.assert_allclose(np.delete(bias_ih, np.s_[4:8]), 0, atol=1e-6)
    np.testing.assert_allclose(clf.weights_["bias_hh_l0"], 0, atol=1e-6)


def test_same_seed_gives_identical_model(vowels):
    X_train, y_train, _, _ = vowels
    first = LSTMClassifier(bidirectional=True, dropout=0.3, num_layers=2, **FAST).fit(X_train, y_train)
    second = LSTMClassifier(bidirectional=True, dropout=0.3, num_layers=2, **FAST).fit(X_train, y_train)
    for name, value in first.weights_.items():
        np.testing.assert_array_equal(value, second.weights_[name])
    third = LSTMClassifier(bidirectional=True, dropout=0.3, num_layers=2,
                           **{**FAST, "random_state": 1}).fit(X_train, y_train)
    assert not np.array_equal(first.weights_["weight_hh_l0"], third.weights_["weight_hh_l0"])


def test_three_d_input_equals_list_input():
    rng = np.random.default_rng(0)
    X3 = rng.standard_normal((40, 6, 3)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    from_array = LSTMClassifier(**FAST).fit(X3, y)
    from_list = LSTMClassifier(**FAST).fit(list(X3), y)
    np.testing.assert_array_equal(from_array.predict_proba(X3), from_list.predict_proba(list(X3)))


def test_prediction_does_not_depend_on_batch_companions(vowels):
    X_train, y_train, X_test, _ = vowels
    clf = LSTMClassifier(bidirectional=True, **FAST).fit(X_train, y_train)
    together = clf.predict_proba(X_test)
    alone = np.vstack([clf.predict_proba([seq]) for seq in X_test[:20]])
    np.testing.assert_allclose(alone, together[:20], rtol=1e-5, atol=1e-7)


def test_regressor_one_and_several_outputs():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((rng.integers(2, 10), 2)).astype(np.float32) for _ in range(300)]
    y = np.array([seq[:, 0].mean() for seq in X])
    y2 = np.column_stack([y, [seq[-1, 1] for seq in X]])
    reg = LSTMRegressor(hidden_size=16, max_epochs=60, batch_size=16, learning_rate=1e-2,
                        random_state=0).fit(X, y)
    assert reg.predict(X).shape == (300,)
    assert reg.score(X, y) > 0.9
    reg2 = LSTMRegressor(hidden_size=16, max_epochs=60, batch_size=16, learning_rate=1e-2,
                         random_state=0).fit(X, y2)
    assert reg2.predict(X).shape == (300, 2) and reg2.n_outputs_ == 2
    assert reg2.score(X, y2) > 0.9


def test_fit_does_not_modify_inputs(vowels):
    X_train, y_train, _, _ = vowels
    X = [seq.copy() for seq in X_train[:60]]
    y = y_train[:60].copy()
    LSTMClassifier(**FAST).fit(X, y)
    for seq, original in zip(X, X_train[:60]):
        np.testing.assert_array_equal(seq, original)
    np.testing.assert_array_equal(y, y_train[:60])


def test_read_only_and_float64_inputs(vowels):
    X_train, y_train, _, _ = vowels
    X = [seq.astype(np.float64) for seq in X_train[::5]]
    for seq in X:
        seq.setflags(write=False)
    clf = LSTMClassifier(**FAST).fit(X, y_train[::5])
    assert clf.predict(X).shape == (len(X),)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_parameter(dtype, vowels):
    X_train, y_train, _, _ = vowels
    clf = LSTMClassifier(dtype=dtype, **FAST).fit(X_train[::5], y_train[::5])
    assert all(value.dtype == np.dtype(dtype) for value in clf.weights_.values())


def test_sklearn_api(vowels):
    X_train, y_train, _, _ = vowels
    clf = LSTMClassifier(**FAST)
    assert clone(clf).get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        clf.predict(X_train)
    scores = cross_val_score(clf, X_train[::3], y_train[::3], cv=3)
    assert scores.shape == (3,)
    clf.fit(X_train, y_train)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X_train), clf.predict_proba(X_train))


# -- bad input ---------------------------------------------------------------------


def test_error_messages_name_the_problem(vowels):
    X_train, y_train, _, _ = vowels
    clf = LSTMClassifier(**FAST)
    X = [seq for seq in X_train[:20]]
    y = y_train[:20].copy()
    y[10:] = "2"
    bad_features = X[:5] + [X[5][:, :11]] + X[6:]
    with pytest.raises(ValueError, match="Sequence 5 of X has 11 features, expected 12"):
        clf.fit(bad_features, y)
    with pytest.raises(ValueError, match="Sequence 3 of X is empty"):
        clf.fit(X[:3] + [np.empty((0, 12))] + X[4:], y)
    with_nan = X[7].copy()
    with_nan[2, 4] = np.nan
    with pytest.raises(ValueError, match=r"Sequence 7 of X contains NaN or infinity \(first at step 2\)"):
        clf.fit(X[:7] + [with_nan] + X[8:], y)
    with pytest.raises(ValueError, match="X has 20 sequences but y has 19 targets"):
        clf.fit(X, y[:19])
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(X, np.full(20, "1"))
    with pytest.raises(ValueError, match="X contains no sequences"):
        clf.fit([], [])
    with pytest.raises(TypeError, match="Sequence 0 of X has dtype"):
        clf.fit([np.array([["a", "b"]])] + X[1:], y)
    with pytest.raises(ValueError, match="optimizer"):
        LSTMClassifier(optimizer="adamw").fit(X, y)
    with pytest.raises(ValueError, match="backend"):
        LSTMClassifier(backend="gpu").fit(X, y)
    clf.fit(X, y)
    with pytest.raises(ValueError, match="Sequence 0 of X has 3 features, expected 12"):
        clf.predict([np.zeros((4, 3))])


def test_failed_fit_keeps_the_earlier_model(vowels):
    X_train, y_train, _, _ = vowels
    clf = LSTMClassifier(**FAST).fit(X_train, y_train)
    before = {name: value.copy() for name, value in clf.weights_.items()}
    with pytest.raises(ValueError):
        clf.fit(X_train[:5] + [X_train[5][:, :3]], y_train[:6])
    for name, value in before.items():
        np.testing.assert_array_equal(clf.weights_[name], value)
    assert clf.n_features_in_ == 12


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_diverging_loss_stops_with_a_clear_error():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((5, 2)).astype(np.float32) for _ in range(32)]
    y = np.full(32, 3e38)
    reg = LSTMRegressor(hidden_size=4, max_epochs=5, learning_rate=1.0, optimizer="sgdm",
                        random_state=0)
    with pytest.raises(FloatingPointError, match="training loss became"):
        reg.fit(X, y)
    assert not hasattr(reg, "weights_")


def test_compute_environment_runs_blas_on_one_thread_and_restores_it():
    from threadpoolctl import threadpool_info, threadpool_limits

    from fastlstm._trainer import compute_environment

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info()
                if info["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with compute_environment():
            inside = blas_threads()
            with compute_environment():  # nested: the inner one has nothing to restore
                pass
            still_inside = blas_threads()
        after = blas_threads()
    assert set(before.values()) == {2}, before
    assert inside.keys() == before.keys() and set(inside.values()) == {1}
    assert still_inside == inside
    assert after == before


def test_weights_are_initialised_with_blas_on_one_thread(monkeypatch):
    # The orthogonal initialiser's QR runs on NumPy's BLAS: with several BLAS
    # threads and a busy core it took 1 s instead of 1 ms.
    from threadpoolctl import threadpool_info

    import fastlstm._estimators as estimators

    seen = []
    original = estimators.init_parameters

    def recording(*args, **kwargs):
        seen.append({info["filepath"]: info["num_threads"] for info in threadpool_info()
                     if info["user_api"] == "blas"})
        return original(*args, **kwargs)

    monkeypatch.setattr(estimators, "init_parameters", recording)
    X, y = make_sign_task(20)
    LSTMClassifier(**FAST).fit(X, y)
    assert len(seen) == 1 and seen[0] and set(seen[0].values()) == {1}, seen


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0, 0), (40, 3), (95, 499), (99, 0)])
def test_a_non_finite_value_is_named_by_sequence_and_step_in_any_group(where, bad_value):
    # Finiteness is checked over groups of sequences at once (_FINITE_GROUP
    # values): 100 sequences of 500 x 12 make several groups, and the error
    # must still name the first offending sequence and step.
    from fastlstm._validation import _FINITE_GROUP, check_sequences

    rng = np.random.default_rng(0)
    X = [rng.standard_normal((500, 12)) for _ in range(100)]
    assert sum(x.size for x in X) > 3 * _FINITE_GROUP
    sequence, step = where
    # Later bad values, in the same sequence and in the last one, are not the first.
    for index, row, column in ((sequence, step, 5), (sequence, -1, 0), (99, -1, -1)):
        X[index][row, column] = bad_value
    with pytest.raises(ValueError, match=rf"Sequence {sequence} of X contains NaN or infinity "
                                         rf"\(first at step {step}\)"):
        check_sequences(X, dtype=np.dtype(np.float32))
