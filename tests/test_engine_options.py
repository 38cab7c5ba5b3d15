"""Estimator-level checks of the engine options: variants, backends, threads."""

import numpy as np
import pytest

from fastlstm import LSTMClassifier, LSTMRegressor
from fastlstm import _backends
from fastlstm import _trainer as trainer_module
from fastlstm._trainer import effective_n_threads


def ragged_data(n_sequences=96, n_features=3, seed=0):
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((rng.integers(2, 15), n_features)).astype(np.float32)
         for _ in range(n_sequences)]
    y = np.array([int(seq[:, 0].sum() > 0) for seq in X])
    return X, y


OPTIONS = {
    "projection": dict(proj_size=3),
    "hard-sigmoid": dict(gate_activation="hard-sigmoid"),
    "softsign": dict(state_activation="softsign"),
    "he-he": dict(input_weights_initializer="he", recurrent_weights_initializer="he"),
    "narrow-zeros": dict(input_weights_initializer="narrow-normal",
                         recurrent_weights_initializer="zeros", bias_initializer="zeros"),
    "orthogonal-input": dict(input_weights_initializer="orthogonal", bias_initializer="ones"),
    "truncated": dict(sequence_length=4, bidirectional=False),
    "stacked-dropout": dict(num_layers=3, dropout=0.5),
    "sgdm-clipped": dict(optimizer="sgdm", gradient_threshold=0.5,
                         gradient_threshold_method="global-l2norm"),
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_every_option_trains(options):
    X, y = ragged_data()
    params = dict(hidden_size=8, bidirectional=True, max_epochs=4, batch_size=16,
                  random_state=0, learning_rate=1e-2)
    params.update(options)
    clf = LSTMClassifier(**params).fit(X, y)
    assert clf.predict(X).shape == (len(X),)
    assert np.isfinite(clf.history_[-1]["loss"])
    assert clf.history_[-1]["loss"] < clf.history_[0]["loss"]


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_bit_identical_with_one_and_two_threads(backend):
    X, y = ragged_data(150)
    params = dict(hidden_size=12, num_layers=2, bidirectional=True, dropout=0.3,
                  batch_size=70, max_epochs=3, random_state=0, backend=backend)
    one = LSTMClassifier(n_jobs=1, **params).fit(X, y)
    two = LSTMClassifier(n_jobs=2, **params).fit(X, y)
    for name, value in one.weights_.items():
        np.testing.assert_array_equal(value, two.weights_[name], err_msg=name)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float64", 1e-9)])
def test_numba_and_cython_fits_agree(dtype, tolerance):
    X, y = ragged_data(64)
    params = dict(hidden_size=10, num_layers=2, bidirectional=True, proj_size=4,
                  batch_size=32, max_epochs=2, random_state=0, dtype=dtype)
    numba_model = LSTMRegressor(backend="numba", **params).fit(X, y.astype(float))
    cython_model = LSTMRegressor(backend="cython", **params).fit(X, y.astype(float))
    for name, value in numba_model.weights_.items():
        other = cython_model.weights_[name]
        error = np.abs(value.astype(float) - other).max() / np.abs(value).max()
        assert error < tolerance, f"{name}: relative difference {error:.3g}"
    np.testing.assert_allclose(numba_model.predict(X), cython_model.predict(X),
                               rtol=tolerance * 10, atol=tolerance)


def test_auto_backend_is_resolved_once_and_recorded():
    X, y = ragged_data(32)
    first = LSTMClassifier(hidden_size=4, max_epochs=1, random_state=0).fit(X, y)
    second = LSTMClassifier(hidden_size=4, max_epochs=1, random_state=0).fit(X, y)
    assert first.backend_ in ("numba", "cython")
    assert second.backend_ == first.backend_ == _backends.resolve_auto()
    for name, value in first.weights_.items():
        np.testing.assert_array_equal(value, second.weights_[name])


def test_auto_uses_cython_and_warms_numba_when_the_cache_is_cold(monkeypatch):
    started = []
    monkeypatch.setattr(_backends, "_auto_choice", None)
    monkeypatch.setattr(_backends, "numba_kernels_cached", lambda: False)
    monkeypatch.setattr(_backends, "_warm_numba_in_background", lambda: started.append(True))
    assert _backends.resolve_auto() == "cython"
    assert started == [True]
    monkeypatch.setattr(_backends, "_auto_choice", None)
    monkeypatch.setattr(_backends, "numba_kernels_cached", lambda: True)
    assert _backends.resolve_auto() == "numba"


def test_n_threads_follow_n_jobs_and_worker_limits(monkeypatch):

    monkeypatch.setattr(trainer_module, "_cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert effective_n_threads(None) == 8
    assert effective_n_threads(3) == 3
    assert effective_n_threads(-1) == 8
    assert effective_n_threads(-3) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # as joblib's loky workers set it
    assert effective_n_threads(None) == 2
    with pytest.raises(ValueError, match="n_jobs == 0"):
        effective_n_threads(0)


def test_invalid_combinations_are_explained():
    X, y = ragged_data(8)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        LSTMClassifier(hidden_size=4, proj_size=4).fit(X, y)
    with pytest.raises(ValueError, match="gate_activation"):
        LSTMClassifier(gate_activation="relu").fit(X, y)
    with pytest.raises(ValueError, match="sequence_length"):
        LSTMClassifier(sequence_length="shortest-ish").fit(X, y)


def test_background_compile_starts_once_and_can_be_disabled(monkeypatch, tmp_path):
    launched = []
    monkeypatch.setattr(_backends.subprocess, "Popen", lambda *a, **k: launched.append(a[0]))
    lock = tmp_path / "compile.lock"
    monkeypatch.setattr(_backends, "_compile_lock_path", lambda: str(lock))
    monkeypatch.setenv("FASTLSTM_NO_BACKGROUND_COMPILE", "1")
    _backends._warm_numba_in_background()
    assert launched == []
    monkeypatch.delenv("FASTLSTM_NO_BACKGROUND_COMPILE")
    _backends._warm_numba_in_background()
    _backends._warm_numba_in_background()  # the lock is held: no second process
    assert len(launched) == 1
    assert launched[0][1:4] == ["-m", "fastlstm._backends", "--compile-numba"]
    assert lock.exists()
