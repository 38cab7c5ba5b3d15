"""scikit-learn compatibility: common checks, model selection, metadata routing,
persistence across processes, and the parameter protocol.

A 2-D X is read as ``(n_sequences, T)`` univariate sequences, so
``n_features_in_`` counts channels (1 there), and a different T at predict
time is legal. scikit-learn's checks that assume otherwise are listed in
``_expected_failed_checks`` with the reason, and, where the rest of such a
check still says something, it is run here on an adapted estimator.
"""

import inspect
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
from joblib import parallel_config
from numpy.testing import assert_allclose, assert_array_equal
from scipy.stats import loguniform
from sklearn import config_context
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.model_selection import (
    GridSearchCV,
    KFold,
    RandomizedSearchCV,
    StratifiedKFold,
    check_cv,
    cross_val_predict,
    cross_val_score,
    cross_validate,
)
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import (
    check_classifiers_train,
    check_estimators_pickle,
    check_methods_sample_order_invariance,
    check_methods_subset_invariance,
    check_sample_weight_equivalence_on_dense_data,
    parametrize_with_checks,
)

import fastlstm
from fastlstm import LSTMClassifier, LSTMRegressor
from fastlstm._kernels import _gemm

BACKENDS = ("cython", "numba")
FAST = {"hidden_size": 8, "batch_size": 16, "learning_rate": 1e-2, "random_state": 0,
        "n_jobs": 1}


# -- data ----------------------------------------------------------------------------


def make_sequences(n_sequences=48, n_features=2, seed=0, dtype=np.float64):
    """Ragged sequences (3 to 9 steps); the label is the sign of the first step's
    first feature, the regression target the mean of the first feature."""
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((int(rng.integers(3, 10)), n_features)).astype(dtype)
         for _ in range(n_sequences)]
    y_class = np.array(["pos" if seq[0, 0] > 0 else "neg" for seq in X])
    y_value = np.array([seq[:, 0].mean() for seq in X])
    return X, y_class, y_value


def pad_with_nan(X):
    """The 3-D (n, T_max, n_features) array of ragged sequences, NaN after each end."""
    out = np.full((len(X), max(map(len, X)), X[0].shape[1]), np.nan, dtype=X[0].dtype)
    for i, seq in enumerate(X):
        out[i, :len(seq)] = seq
    return out


# -- 1. scikit-learn's common checks -------------------------------------------------


def _check_estimators():
    for backend in BACKENDS:
        yield LSTMClassifier(max_epochs=10, backend=backend, **FAST)
        # check_regressors_train asks for R^2 > 0.5, which takes ~30 epochs here.
        yield LSTMRegressor(max_epochs=40, backend=backend, **FAST)


# The checks below assume 2-D X is tabular: (n_samples, n_features). Here it is
# (n_sequences, T), so X[:, :k] holds shorter sequences, not fewer features.
_SEQUENCE_SEMANTICS = {
    "check_n_features_in": (
        "2-D X is (n_sequences, T) univariate sequences: n_features_in_ is 1 (channels), "
        "not X.shape[1] (steps); see test_n_features_in_counts_channels"),
    "check_n_features_in_after_fitting": (
        "2-D X is (n_sequences, T): predicting on X[:, [1]] is legal (one-step "
        "sequences), and n_features_in_ is 1; see test_n_features_in_counts_channels"),
    "check_estimators_partial_fit_n_features": (
        "partial_fit on X[:, :-1] continues on shorter univariate sequences; a change "
        "of channels is rejected, see test_n_features_in_counts_channels"),
    "check_classifiers_train": (
        "expects predict(X.T) to fail, but X.T is 2 valid sequences of 300 steps; the "
        "rest of the check passes, see test_check_classifiers_train_on_fixed_length"),
    "check_estimators_pickle": (
        "puts NaN at random places, but NaN is accepted only as trailing padding "
        "(allow_nan=True) and a NaN inside a sequence is an error; the check passes "
        "without the NaN, see test_check_estimators_pickle_without_nan"),
    "check_sample_weight_equivalence_on_dense_data": (
        "mini-batch training: repeating a row adds rows to mini-batches (and batches "
        "per epoch) where a weight does not; the check passes with one full batch, "
        "see test_sample_weight_equivalence_check_with_one_batch"),
}

_FLOAT32_REGRESSOR = {
    name: ("float32 model on BLAS: BLAS rounding depends on a sequence's place in its "
           "mini-batch, so predictions move by ~1 ulp (1e-7 relative) with the batch's "
           "composition, beyond the check's rtol=1e-7; passes in float64, see "
           "test_invariance_checks_pass_in_float64, and with fastlstm's own GEMM "
           "(AVX2, AVX-512), which sums every row in one fixed order")
    for name in ("check_methods_sample_order_invariance", "check_methods_subset_invariance")
}


def _expected_failed_checks(estimator):
    failed = dict(_SEQUENCE_SEMANTICS)
    if is_regressor(estimator) and not _gemm.enabled():
        failed.update(_FLOAT32_REGRESSOR)
    return failed


@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_complex_X_is_rejected(cls):
    X, y_class, y_value = make_sequences(12)
    with pytest.raises(ValueError, match="Complex data not supported"):
        cls(max_epochs=1, **FAST).fit([seq + 1j for seq in X],
                                      y_class if cls is LSTMClassifier else y_value)


@parametrize_with_checks(list(_check_estimators()),
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# Adapted estimators for the checks whose premise does not hold here; defined at
# module level so that they pickle.


class _FixedLengthClassifier(LSTMClassifier):
    """Rejects a 2-D X of another T than fit's, as a tabular model would."""

    def fit(self, X, y, **fit_params):
        self._fit_length = np.shape(X)[1]
        return super().fit(X, y, **fit_params)

    def _reject_other_length(self, X):
        if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] != self._fit_length:
            raise ValueError("X has a different number of steps than in fit")

    def predict(self, X):
        self._reject_other_length(X)
        return super().predict(X)

    def predict_proba(self, X):
        self._reject_other_length(X)
        return super().predict_proba(X)


class _NoNaNClassifier(LSTMClassifier):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class _NoNaNRegressor(LSTMRegressor):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_classifiers_train_on_fixed_length(backend):
    # Everything in the check but "predict(X.T) must fail": fit/predict on 2-D
    # and on lists, training accuracy > 0.83, predict_proba agreeing with predict.
    estimator = _FixedLengthClassifier(max_epochs=10, backend=backend, **FAST)
    check_classifiers_train("LSTMClassifier", estimator)
    check_classifiers_train("LSTMClassifier", estimator, readonly_memmap=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("readonly_memmap", [False, True])
@pytest.mark.parametrize("cls", [_NoNaNClassifier, _NoNaNRegressor])
def test_check_estimators_pickle_without_nan(cls, readonly_memmap, backend):
    check_estimators_pickle(cls.__name__, cls(max_epochs=5, backend=backend, **FAST),
                            readonly_memmap=readonly_memmap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check", [check_methods_sample_order_invariance,
                                   check_methods_subset_invariance])
@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_invariance_checks_pass_in_float64(cls, check, backend):
    check(cls.__name__, cls(max_epochs=10, dtype="float64", backend=backend, **FAST))


@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_predictions_do_not_depend_on_the_batch_beyond_float32_rounding(cls):
    X, y_class, y_value = make_sequences(60, dtype=np.float32)
    y = y_class if cls is LSTMClassifier else y_value
    model = cls(max_epochs=5, **FAST).fit(X, y)
    method = model.predict_proba if cls is LSTMClassifier else model.predict
    whole = method(X)
    order = np.random.default_rng(1).permutation(len(X))
    assert_allclose(method([X[i] for i in order]), whole[order], rtol=1e-5, atol=1e-6)
    one_by_one = np.concatenate([method(X[i:i + 1]) for i in range(len(X))])
    assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_sample_weight_equivalence_check_with_one_batch(cls, backend):
    # One full batch per epoch and no data-dependent normalisation: weighting a
    # row by k is then training on k copies of it, to float64 rounding.
    params = {**FAST, "batch_size": 1000}
    estimator = cls(max_epochs=10, dtype="float64", shuffle="never", normalization=None,
                    backend=backend, **params)
    check_sample_weight_equivalence_on_dense_data(cls.__name__, estimator)


def test_tags():
    for cls in (LSTMClassifier, LSTMRegressor):
        tags = get_tags(cls())
        assert tags.input_tags.two_d_array and tags.input_tags.three_d_array
        assert tags.input_tags.allow_nan and not tags.input_tags.sparse
        assert not tags.non_deterministic
    assert is_classifier(LSTMClassifier()) and is_regressor(LSTMRegressor())
    assert get_tags(LSTMRegressor()).target_tags.multi_output
    # A classifier gets stratified folds from an integer cv.
    _, y, _ = make_sequences()
    assert isinstance(check_cv(3, y, classifier=is_classifier(LSTMClassifier())),
                      StratifiedKFold)


def test_n_features_in_counts_channels():
    X, y, _ = make_sequences(30, n_features=3)
    clf = LSTMClassifier(max_epochs=2, **FAST)
    assert clf.fit(X, y).n_features_in_ == 3
    assert clf.fit(pad_with_nan(X), y).n_features_in_ == 3
    assert clf.fit(np.stack([seq[:3, 0] for seq in X]), y).n_features_in_ == 1
    clf.fit(pad_with_nan(X), y)
    # Another number of steps is fine; another number of channels is not.
    assert clf.predict(pad_with_nan(X)[:, :2]).shape == (30,)
    assert clf.predict([seq[:1] for seq in X]).shape == (30,)
    with pytest.raises(ValueError, match="features"):
        clf.predict(pad_with_nan(X)[:, :, :2])
    with pytest.raises(ValueError, match="features"):
        clf.predict([seq[:, :2] for seq in X])
    with pytest.raises(ValueError, match="features"):
        clf.score([seq[:, :2] for seq in X], y)
    # partial_fit: shorter sequences continue, fewer channels do not.
    clf = LSTMClassifier(**FAST).partial_fit(pad_with_nan(X), y, classes=np.unique(y))
    clf.partial_fit(pad_with_nan(X)[:, :2], y)
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(pad_with_nan(X)[:, :, :2], y)


def test_nan_is_only_trailing_padding():
    X, y, _ = make_sequences(30)
    clf = LSTMClassifier(max_epochs=3, **FAST).fit(X, y)
    padded = pad_with_nan(X)
    # Trailing NaN rows of a 3-D array and trailing NaN of a 2-D row are padding.
    assert_array_equal(clf.predict_proba(padded), clf.predict_proba(X))
    assert_array_equal(
        LSTMClassifier(max_epochs=3, **FAST).fit(padded, y).weights_["head.weight"],
        clf.weights_["head.weight"])
    univariate = padded[:, :, 0]
    clf_1 = LSTMClassifier(max_epochs=3, **FAST).fit(univariate, y)
    assert_array_equal(clf_1.predict_proba(univariate),
                       clf_1.predict_proba([seq[:, 0] for seq in X]))
    # A NaN with data after it, or a partly NaN last row, is an error.
    inside = padded.copy()
    inside[3, 1, :] = np.nan
    partly = padded.copy()
    partly[5, len(X[5]) - 1, 0] = np.nan
    gap_2d = univariate.copy()
    gap_2d[2, 0] = np.nan
    for bad in (inside, partly, gap_2d):
        with pytest.raises(ValueError, match="NaN"):
            LSTMClassifier(max_epochs=1, **FAST).fit(bad, y)
        with pytest.raises(ValueError, match="NaN"):
            (clf_1 if bad.ndim == 2 else clf).predict(bad)


# -- 2. model selection with ragged and 3-D X, in parallel ------------------------------


def test_grid_search_on_ragged_list():
    X, y, _ = make_sequences()
    search = GridSearchCV(LSTMClassifier(max_epochs=5, **FAST), {"hidden_size": [4, 8]},
                          cv=StratifiedKFold(3), n_jobs=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_estimator_.n_features_in_ == 2
    assert set(search.predict(X)) <= {"neg", "pos"}
    assert 0 <= search.score(X, y) <= 1


def test_randomized_search_on_ragged_list():
    X, _, y = make_sequences()
    search = RandomizedSearchCV(
        LSTMRegressor(max_epochs=5, **FAST),
        {"learning_rate": loguniform(1e-3, 1e-1), "hidden_size": [4, 8]},
        n_iter=2, cv=KFold(3), n_jobs=2, random_state=0).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert search.predict(X).shape == (len(X),)


def test_cross_val_score_and_predict_on_ragged_list():
    X, y, _ = make_sequences()
    clf = LSTMClassifier(max_epochs=5, **FAST)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(clf, X, y, cv=cv, n_jobs=2)
    assert scores.shape == (3,) and np.all((0 <= scores) & (scores <= 1))
    labels = cross_val_predict(clf, X, y, cv=cv, n_jobs=2)
    assert labels.shape == (len(X),) and set(labels) <= {"neg", "pos"}
    proba = cross_val_predict(clf, X, y, cv=cv, n_jobs=2, method="predict_proba")
    assert proba.shape == (len(X), 2)
    assert_allclose(proba.sum(axis=1), 1)
    assert_array_equal(np.array(["neg", "pos"])[proba.argmax(axis=1)], labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_cross_val_predict_is_bit_identical_to_serial(backend):
    # Models fitted in loky worker processes equal those fitted here.
    X, y, _ = make_sequences()
    clf = LSTMClassifier(max_epochs=5, backend=backend, **FAST)
    serial = cross_val_predict(clf, X, y, cv=3, method="predict_proba")
    parallel = cross_val_predict(clf, X, y, cv=3, method="predict_proba", n_jobs=2)
    assert_array_equal(parallel, serial)


def test_pipeline_with_sequence_scaler_in_grid_search():
    scaler = getattr(fastlstm, "SequenceScaler", None)
    if scaler is None:
        pytest.skip("fastlstm does not export SequenceScaler")
    X, y, _ = make_sequences()
    X = [5 + 3 * seq for seq in X]
    pipe = Pipeline([("scale", scaler()),
                     ("lstm", LSTMClassifier(max_epochs=5, normalization=None, **FAST))])
    search = GridSearchCV(pipe, {"lstm__hidden_size": [4, 8],
                                 "scale__method": ["zscore", "rescale-symmetric"]},
                          cv=StratifiedKFold(3), n_jobs=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert search.predict_proba(X).shape == (len(X), 2)
    # 3-D, NaN-padded X through the same pipeline.
    search.fit(pad_with_nan(X), y)
    assert_allclose(search.predict_proba(pad_with_nan(X)), search.predict_proba(X))


def test_model_selection_on_3d_array():
    X, y, y_value = make_sequences()
    X3 = pad_with_nan(X)
    search = GridSearchCV(LSTMClassifier(max_epochs=5, **FAST), {"hidden_size": [4, 8]},
                          cv=StratifiedKFold(3), n_jobs=2).fit(X3, y)
    assert search.predict(X3).shape == (len(X),)
    proba = cross_val_predict(LSTMClassifier(max_epochs=5, **FAST), X3, y, cv=3, n_jobs=2,
                              method="predict_proba")
    assert proba.shape == (len(X), 2)
    scores = cross_val_score(LSTMRegressor(max_epochs=5, **FAST), X3, y_value, cv=3, n_jobs=2)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


def test_cross_val_score_with_per_step_targets():
    # Sequence-to-sequence y (a list of (T_i,) arrays) is split with X.
    X, _, _ = make_sequences()
    y = [np.cumsum(seq[:, 0]) for seq in X]
    scores = cross_val_score(LSTMRegressor(max_epochs=5, **FAST), X, y, cv=KFold(3), n_jobs=2)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))


# -- 3. metadata routing -----------------------------------------------------------------


# As for scikit-learn's own estimators, score() takes sample_weight too, so routing
# needs set_score_request (True or False) as well as set_fit_request.
@pytest.mark.parametrize("n_jobs, weighted_score", [(1, True), (2, False)])
def test_cross_validate_routes_sample_weight(n_jobs, weighted_score):
    X, y, _ = make_sequences()
    weights = np.random.default_rng(0).uniform(0.5, 2, len(X))
    cv = KFold(3)
    with config_context(enable_metadata_routing=True):
        clf = LSTMClassifier(max_epochs=3, backend="cython", **FAST)
        clf.set_fit_request(sample_weight=True).set_score_request(sample_weight=weighted_score)
        result = cross_validate(clf, X, y, cv=cv, params={"sample_weight": weights},
                                return_estimator=True, n_jobs=n_jobs)
    # Each fold's model is the one fitted on that fold's slice of the weights.
    for (train, test), fitted, score in zip(cv.split(X, y), result["estimator"],
                                            result["test_score"]):
        expected = LSTMClassifier(max_epochs=3, backend="cython", **FAST).fit(
            [X[i] for i in train], y[train], sample_weight=weights[train])
        for name, value in expected.weights_.items():
            assert_array_equal(fitted.weights_[name], value)
        assert score == expected.score([X[i] for i in test], y[test],
                                       sample_weight=weights[test] if weighted_score else None)


def test_grid_search_routes_sample_weight():
    X, y, _ = make_sequences()
    weights = np.random.default_rng(0).uniform(0.5, 2, len(X))
    with config_context(enable_metadata_routing=True):
        clf = LSTMClassifier(max_epochs=3, **FAST).set_fit_request(sample_weight=True)
        clf.set_score_request(sample_weight=True)
        search = GridSearchCV(clf, {"hidden_size": [4, 8]}, cv=3, n_jobs=2)
        search.fit(X, y, sample_weight=weights)
    refit = LSTMClassifier(max_epochs=3, **{**FAST, **search.best_params_})
    refit.fit(X, y, sample_weight=weights)
    for name, value in refit.weights_.items():
        assert_array_equal(search.best_estimator_.weights_[name], value)


@pytest.mark.parametrize("task", ["classifier", "regressor", "per-step"])
def test_unit_sample_weight_gives_the_identical_model(task):
    X, y_class, y_value = make_sequences()
    if task == "classifier":
        make, y = LSTMClassifier, y_class
    else:
        make = LSTMRegressor
        y = y_value if task == "regressor" else [np.cumsum(seq[:, 0]) for seq in X]
    with config_context(enable_metadata_routing=True):
        plain = make(max_epochs=3, **FAST).fit(X, y)
        weighted = make(max_epochs=3, **FAST).set_fit_request(sample_weight=True)
        weighted.set_score_request(sample_weight=False)
        weighted.fit(X, y, sample_weight=np.ones(len(X)))
        assert plain.weights_.keys() == weighted.weights_.keys()
        for name, value in plain.weights_.items():
            assert_array_equal(weighted.weights_[name], value)
        # And through cross_validate, fold by fold.
        cv = KFold(3)
        routed = cross_validate(weighted, X, y, cv=cv, return_estimator=True,
                                params={"sample_weight": np.ones(len(X))})
        unrouted = cross_validate(make(max_epochs=3, **FAST), X, y, cv=cv,
                                  return_estimator=True)
    for a, b in zip(routed["estimator"], unrouted["estimator"]):
        for name, value in a.weights_.items():
            assert_array_equal(b.weights_[name], value)
    assert_array_equal(routed["test_score"], unrouted["test_score"])


# -- 4. persistence across processes ------------------------------------------------------

_PREDICT_IN_FRESH_PROCESS = """
import pickle, sys
import joblib
import numpy as np
data_path, *jobs = sys.argv[1:]
with open(data_path, "rb") as f:
    X = pickle.load(f)
for model_path, how, out_prefix in zip(jobs[::3], jobs[1::3], jobs[2::3]):
    if how == "pickle":
        with open(model_path, "rb") as f:
            model = pickle.load(f)
    else:
        model = joblib.load(model_path)
    prediction = model.predict(X)
    if isinstance(prediction, list):
        prediction = np.concatenate(prediction)
    np.save(out_prefix + "predict.npy", prediction)
    if hasattr(model, "predict_proba"):
        np.save(out_prefix + "predict_proba.npy", model.predict_proba(X))
"""


def _fitted_models(backend):
    X, y_class, y_value = make_sequences()
    per_step = [np.cumsum(seq[:, 0]) for seq in X]
    return X, {
        "classifier": LSTMClassifier(max_epochs=3, backend=backend, **FAST).fit(X, y_class),
        "regressor": LSTMRegressor(max_epochs=3, backend=backend, **FAST).fit(X, y_value),
        "per-step": LSTMRegressor(max_epochs=3, bidirectional=True, backend=backend,
                                  **FAST).fit(X, per_step),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_predictions_in_a_fresh_process_are_identical(backend, tmp_path):
    # Every model is dumped with pickle and with joblib, loaded in one new
    # interpreter, and its predictions there come back through .npy files.
    _, models = _fitted_models(backend)
    X_new, _, _ = make_sequences(20, seed=1)
    data_path = tmp_path / "X.pkl"
    with open(data_path, "wb") as f:
        pickle.dump(X_new, f)
    jobs = []
    for name, model in models.items():
        for how in ("pickle", "joblib"):
            model_path = tmp_path / f"{name}.{how}"
            if how == "pickle":
                with open(model_path, "wb") as f:
                    pickle.dump(model, f)
            else:
                joblib.dump(model, model_path)
            jobs += [str(model_path), how, str(tmp_path / f"{name}-{how}-")]
    subprocess.run([sys.executable, "-c", _PREDICT_IN_FRESH_PROCESS, str(data_path), *jobs],
                   check=True, cwd=tmp_path, timeout=120)
    for name, model in models.items():
        expected = model.predict(X_new)
        if isinstance(expected, list):
            expected = np.concatenate(expected)
        for how in ("pickle", "joblib"):
            assert_array_equal(np.load(tmp_path / f"{name}-{how}-predict.npy"), expected)
            if hasattr(model, "predict_proba"):
                assert_array_equal(np.load(tmp_path / f"{name}-{how}-predict_proba.npy"),
                                   model.predict_proba(X_new))


def test_pickle_round_trip_in_process_keeps_everything():
    X, models = _fitted_models("cython")
    for model in models.values():
        loaded = pickle.loads(pickle.dumps(model))
        assert loaded.get_params() == model.get_params()
        for name, value in model.weights_.items():
            assert_array_equal(loaded.weights_[name], value)
        assert loaded.history_ == model.history_
        # A loaded model trains on from where it was (warm start) like the original.
        for est in (model, loaded):
            est.set_params(warm_start=True, max_epochs=1)
        y = [np.cumsum(seq[:, 0]) for seq in X] if model.output_mode_ == "sequence" else None
        if y is None:
            y = model.predict(X)
        a, b = model.fit(X, y), loaded.fit(X, y)
        for name, value in a.weights_.items():
            assert_array_equal(b.weights_[name], value)
    unfitted = pickle.loads(pickle.dumps(LSTMClassifier(hidden_size=3)))
    assert unfitted.hidden_size == 3 and not hasattr(unfitted, "weights_")


# -- 5. the parameter protocol --------------------------------------------------------


@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_init_stores_parameters_unmodified(cls):
    names = list(inspect.signature(cls.__init__).parameters)[1:]
    sentinels = {name: object() for name in names}
    estimator = cls(**sentinels)
    params = estimator.get_params()
    assert params.keys() == sentinels.keys()
    for name, value in sentinels.items():
        assert params[name] is value
    # Defaults are what the signature says, and every parameter is keyword-only.
    signature = inspect.signature(cls.__init__)
    defaults = cls().get_params()
    for name in names:
        parameter = signature.parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert defaults[name] == parameter.default or (
            defaults[name] is None and parameter.default is None)
    with pytest.raises(TypeError):
        cls(8)


def test_classifier_and_regressor_share_their_parameters():
    classifier = inspect.signature(LSTMClassifier.__init__).parameters
    regressor = inspect.signature(LSTMRegressor.__init__).parameters
    shared = [(name, p.default) for name, p in classifier.items() if name != "class_weight"]
    assert shared == [(name, p.default) for name, p in regressor.items()]


@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_set_params_and_clone_round_trip(cls):
    estimator = cls(**FAST)
    new = {"hidden_size": 5, "max_epochs": 2, "learning_rate": 0.05, "dropout": 0.25,
           "random_state": np.random.RandomState(3), "sequence_length": 4}
    assert estimator.set_params(**new) is estimator
    params = estimator.get_params()
    for name, value in new.items():
        assert params[name] is value
    # set_params(**get_params()) changes nothing; clone copies every parameter.
    estimator.set_params(**estimator.get_params())
    assert estimator.get_params() == params
    cloned = clone(estimator)
    cloned_params = cloned.get_params()
    assert cloned_params.keys() == params.keys()
    for name, value in params.items():
        if name == "random_state":
            assert isinstance(cloned_params[name], np.random.RandomState)
        else:
            assert cloned_params[name] == value
    with pytest.raises(ValueError, match="Invalid parameter"):
        estimator.set_params(hidden_sizes=3)
    # Invalid values are accepted by set_params and rejected by fit.
    estimator.set_params(hidden_size=0)
    X, y_class, y_value = make_sequences(12)
    with pytest.raises(ValueError, match="hidden_size"):
        estimator.fit(X, y_class if is_classifier(estimator) else y_value)


@pytest.mark.parametrize("cls", [LSTMClassifier, LSTMRegressor])
def test_clone_of_a_fitted_model_is_unfitted_and_refits_identically(cls):
    X, y_class, y_value = make_sequences()
    y = y_class if cls is LSTMClassifier else y_value
    model = cls(max_epochs=3, **FAST).fit(X, y)
    cloned = clone(model)
    assert not [name for name in vars(cloned) if name.endswith("_")
                and not name.startswith("__")]
    cloned.fit(X, y)
    for name, value in model.weights_.items():
        assert_array_equal(cloned.weights_[name], value)
    assert model.get_params() == cloned.get_params()


def test_nested_params_through_pipeline():
    pipe = Pipeline([("lstm", LSTMClassifier(**FAST))])
    pipe.set_params(lstm__hidden_size=4, lstm__class_weight={"neg": 1, "pos": 2})
    assert pipe.get_params()["lstm__hidden_size"] == 4
    assert pipe.named_steps["lstm"].class_weight == {"neg": 1, "pos": 2}
    assert clone(pipe).named_steps["lstm"].get_params() == pipe.named_steps["lstm"].get_params()


# -- 6. read-only memory-mapped inputs in workers -----------------------------------------
# (last: its joblib settings start a second pool of workers, which would otherwise
# replace the first one mid-file.)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["list", "3d"])
def test_read_only_memmapped_inputs_in_workers(layout, backend):
    # max_nbytes=0 makes joblib memory-map every array it sends to a worker, read
    # only; float32 C-contiguous sequences reach the kernels without a copy.
    X, y, _ = make_sequences(dtype=np.float32)
    X = X if layout == "list" else pad_with_nan(X)
    clf = LSTMClassifier(max_epochs=3, backend=backend, **FAST)
    serial = cross_val_predict(clf, X, y, cv=3, method="predict_proba")
    with parallel_config(max_nbytes=0):
        parallel = cross_val_predict(clf, X, y, cv=3, method="predict_proba", n_jobs=2)
        GridSearchCV(clf, {"hidden_size": [4]}, cv=2, n_jobs=2).fit(X, y)
    assert_array_equal(parallel, serial)
