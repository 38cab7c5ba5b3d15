"""Training options: optimisers, schedules, regularisation, weights, validation,
early stopping, warm starts, partial_fit, normalisation and progress output."""

import numpy as np
import pytest

from fastlstm import LSTMClassifier, LSTMRegressor

FAST = dict(hidden_size=12, batch_size=16, learning_rate=1e-2, random_state=0, n_jobs=1)


def sign_task(n_sequences=120, seed=0, n_classes=2):
    rng = np.random.default_rng(seed)
    X = [rng.standard_normal((rng.integers(3, 12), 2)).astype(np.float32) for _ in range(n_sequences)]
    y = np.array([int(s[:, 0].sum() > 0) for s in X])
    if n_classes == 3:
        y = np.array([min(2, int(abs(s[:, 0].sum()))) for s in X])
    return X, y


@pytest.mark.parametrize("optimizer", ["adam", "sgdm", "rmsprop"])
def test_every_optimizer_learns(optimizer):
    X, y = sign_task(200)
    learning_rate = 0.1 if optimizer == "sgdm" else 1e-2
    clf = LSTMClassifier(optimizer=optimizer, max_epochs=25,
                         **{**FAST, "learning_rate": learning_rate}).fit(X, y)
    assert clf.score(X, y) > 0.85


def test_piecewise_schedule_is_recorded_per_epoch():
    X, y = sign_task(32)
    clf = LSTMClassifier(max_epochs=7, learning_rate_schedule="piecewise",
                         learning_rate_drop_factor=0.5, learning_rate_drop_period=3,
                         **FAST).fit(X, y)
    rates = [entry["learning_rate"] for entry in clf.history_]
    np.testing.assert_allclose(rates, [1e-2] * 3 + [5e-3] * 3 + [2.5e-3])


def test_l2_regularization_shrinks_weights():
    X, y = sign_task(64)
    plain = LSTMClassifier(max_epochs=10, l2_regularization=0.0, **FAST).fit(X, y)
    strong = LSTMClassifier(max_epochs=10, l2_regularization=1.0, **FAST).fit(X, y)
    for name in ("weight_ih_l0", "weight_hh_l0", "head.weight"):
        assert np.linalg.norm(strong.weights_[name]) < np.linalg.norm(plain.weights_[name])


def test_validation_history_and_early_stopping_restore_the_best_weights():
    X, y = sign_task(200)
    X_val, y_val = sign_task(60, seed=1)
    clf = LSTMClassifier(max_epochs=60, early_stopping=True, n_iter_no_change=3,
                         learning_rate=5e-2, **{k: v for k, v in FAST.items() if k != "learning_rate"})
    clf.fit(X, y, validation_data=(X_val, y_val))
    val_losses = [entry["val_loss"] for entry in clf.history_]
    assert clf.n_iter_ < 60 and len(val_losses) == clf.n_iter_
    best = int(np.argmin(val_losses))
    assert clf.n_iter_ == best + 1 + 3  # stopped after 3 epochs without improvement
    # The kept model is the best epoch's: its validation score is recomputed.
    assert clf.score(X_val, y_val) == pytest.approx(clf.history_[best]["val_score"])
    assert all(0 <= entry["val_score"] <= 1 for entry in clf.history_)


def test_validation_fraction_holds_out_data():
    X, y = sign_task(100)
    clf = LSTMRegressor(max_epochs=3, validation_fraction=0.2, **FAST).fit(X, y.astype(float))
    assert all(entry["val_loss"] is not None for entry in clf.history_)
    with pytest.raises(ValueError, match="early_stopping=True needs validation data"):
        LSTMClassifier(early_stopping=True, **FAST).fit(X, y)


def test_all_ones_sample_weight_is_exactly_the_unweighted_model():
    X, y = sign_task(50)
    plain = LSTMClassifier(max_epochs=3, **FAST).fit(X, y)
    weighted = LSTMClassifier(max_epochs=3, **FAST).fit(X, y, sample_weight=np.ones(50))
    for name, value in plain.weights_.items():
        np.testing.assert_array_equal(weighted.weights_[name], value)


def test_integer_sample_weight_equals_repeating_sequences():
    X, y = sign_task(20)
    weights = np.array([2] + [1] * 19)
    params = dict(max_epochs=3, batch_size=64, shuffle="never", bucketing=False,
                  normalization=None, **{k: v for k, v in FAST.items() if k != "batch_size"})
    weighted = LSTMClassifier(**params).fit(X, y, sample_weight=weights)
    repeated = LSTMClassifier(**params).fit(X + [X[0]], np.append(y, y[0]))
    for name, value in weighted.weights_.items():
        np.testing.assert_allclose(repeated.weights_[name], value, rtol=1e-4, atol=1e-6)


def test_balanced_class_weight_equals_its_dict():
    X, y = sign_task(90, n_classes=3)
    counts = np.bincount(y)
    balanced = {c: len(y) / (3 * counts[c]) for c in range(3)}
    by_name = LSTMClassifier(max_epochs=3, class_weight="balanced", **FAST).fit(X, y)
    by_dict = LSTMClassifier(max_epochs=3, class_weight=balanced, **FAST).fit(X, y)
    plain = LSTMClassifier(max_epochs=3, **FAST).fit(X, y)
    for name, value in by_name.weights_.items():
        np.testing.assert_allclose(by_dict.weights_[name], value, rtol=1e-6, atol=1e-7)
    assert not np.allclose(plain.weights_["head.bias"], by_name.weights_["head.bias"])


def test_bad_sample_weight_is_explained():
    X, y = sign_task(10)
    with pytest.raises(ValueError, match=r"sample_weight has shape \(9,\); expected \(10,\)"):
        LSTMClassifier(**FAST).fit(X, y, sample_weight=np.ones(9))
    with pytest.raises(ValueError, match="finite and non-negative"):
        LSTMClassifier(**FAST).fit(X, y, sample_weight=-np.ones(10))


def test_warm_start_continues_from_the_fitted_weights():
    X, y = sign_task(100)
    clf = LSTMClassifier(max_epochs=5, warm_start=True, **FAST).fit(X, y)
    after_five = clf.history_[-1]["loss"]
    first_weights = {k: v.copy() for k, v in clf.weights_.items()}
    clf.fit(X, y)
    assert clf.history_[0]["loss"] < LSTMClassifier(max_epochs=1, **FAST).fit(X, y).history_[0]["loss"]
    assert clf.history_[0]["loss"] < after_five * 1.5
    assert not np.array_equal(first_weights["weight_hh_l0"], clf.weights_["weight_hh_l0"])
    with pytest.raises(ValueError, match="2 features, expected 3|has 3 features, expected 2"):
        clf.fit([np.zeros((4, 3))] * 4, [0, 1, 0, 1])


def test_partial_fit_streams_chunks():
    X, y = sign_task(300)
    clf = LSTMClassifier(**FAST)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X[:50], y[:50])
    for _ in range(8):
        for start in range(0, 300, 100):
            clf.partial_fit(X[start:start + 100], y[start:start + 100], classes=[0, 1])
    assert clf.n_iter_ == 24 and len(clf.history_) == 24
    X_test, y_test = sign_task(100, seed=1)
    assert clf.score(X_test, y_test) > 0.85
    with pytest.raises(ValueError, match="not among the classes"):
        clf.partial_fit(X[:10], np.full(10, 7))
    reg = LSTMRegressor(**FAST)
    reg.partial_fit(X[:50], y[:50].astype(float))
    reg.partial_fit(X[50:100], y[50:100].astype(float))
    assert reg.n_iter_ == 2


@pytest.mark.parametrize("method", ["zscore", "zerocenter", "rescale-symmetric", "rescale-zero-one"])
def test_normalization_is_fitted_on_the_training_data(method):
    X, y = sign_task(60)
    clf = LSTMClassifier(max_epochs=2, normalization=method, **FAST).fit(X, y)
    frames = np.concatenate(clf.scaler_.transform(X))
    if method == "zscore":
        np.testing.assert_allclose(frames.mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(frames.std(axis=0), 1, atol=1e-5)
    elif method == "zerocenter":
        np.testing.assert_allclose(frames.mean(axis=0), 0, atol=1e-5)
    elif method == "rescale-symmetric":
        np.testing.assert_allclose([frames.min(axis=0), frames.max(axis=0)], [[-1, -1], [1, 1]], atol=1e-6)
    else:
        np.testing.assert_allclose([frames.min(axis=0), frames.max(axis=0)], [[0, 0], [1, 1]], atol=1e-6)


@pytest.mark.parametrize("method", ["zscore", "rescale-zero-one"])
def test_prediction_normalises_as_the_scaler_does(method):
    # Prediction normalises the packed copy of the input rows; the result must
    # be, bit for bit, that of an unnormalised model with the same weights fed
    # the scaler's own output.
    X, y = sign_task(60)
    X = [1000.0 * s + 50.0 for s in X]
    clf = LSTMClassifier(max_epochs=2, normalization=method, **FAST).fit(X, y)
    plain = LSTMClassifier(max_epochs=1, normalization=None, **FAST).fit(X, y)
    plain.weights_ = {name: value.copy() for name, value in clf.weights_.items()}
    X_before = [s.copy() for s in X]
    expected = plain.predict_proba(clf.scaler_.transform(X))
    np.testing.assert_array_equal(clf.predict_proba(X), expected)
    for before, after in zip(X_before, X):
        np.testing.assert_array_equal(before, after)


def test_zscore_makes_the_model_invariant_to_input_units():
    X, y = sign_task(60)
    scaled = [1000.0 * s + 50.0 for s in X]
    plain = LSTMClassifier(max_epochs=3, dtype="float64", **FAST).fit(X, y)
    rescaled = LSTMClassifier(max_epochs=3, dtype="float64", **FAST).fit(scaled, y)
    np.testing.assert_allclose(plain.predict_proba(X), rescaled.predict_proba(scaled), rtol=1e-6)


def test_verbose_prints_a_table_and_a_progress_bar(capsys):
    X, y = sign_task(40)
    LSTMClassifier(max_epochs=2, verbose=1, validation_fraction=0.25, **FAST).fit(X, y)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert "epoch" in lines[0] and "val loss" in lines[0] and len(lines) == 3
    LSTMClassifier(max_epochs=1, verbose=2, **FAST).fit(X, y)
    out = capsys.readouterr().out
    assert "[" in out and "#" in out and "3/3\n" in out
    LSTMClassifier(max_epochs=1, **FAST).fit(X, y)
    assert capsys.readouterr().out == ""


def test_invalid_parameter_values_list_the_valid_ones():
    X, y = sign_task(10)
    for name, bad, valid in [
        ("optimizer", "adamw", ["adam", "rmsprop", "sgdm"]),
        ("normalization", "minmax", ["zscore", "zerocenter", "rescale-symmetric", "rescale-zero-one"]),
        ("shuffle", "always", ["every-epoch", "once", "never"]),
    ]:
        with pytest.raises(ValueError, match=f"'{name}' parameter.*Got '{bad}'") as error:
            LSTMClassifier(**{name: bad}).fit(X, y)
        assert all(f"'{option}'" in str(error.value) for option in valid)


def test_weights_with_per_step_targets():
    X, _ = sign_task(60)
    y = [np.where(np.cumsum(s[:, 0]) > 0, "up", "down") for s in X]
    plain = LSTMClassifier(max_epochs=2, **FAST).fit(X, y)
    ones = LSTMClassifier(max_epochs=2, **FAST).fit(X, y, sample_weight=np.ones(60))
    for name, value in plain.weights_.items():
        np.testing.assert_array_equal(ones.weights_[name], value)
    balanced = LSTMClassifier(max_epochs=2, class_weight="balanced", **FAST).fit(X, y)
    assert not np.array_equal(balanced.weights_["head.bias"], plain.weights_["head.bias"])
    half = LSTMClassifier(max_epochs=2, **FAST).fit(X, y, sample_weight=np.r_[np.ones(30), np.zeros(30)])
    assert not np.array_equal(half.weights_["head.bias"], plain.weights_["head.bias"])
