"""Stateful prediction (MATLAB's predictAndUpdateState) and closed-loop forecasting."""

import numpy as np
import pytest

from fastlstm import LSTMClassifier, LSTMRegressor

FAST = dict(hidden_size=12, batch_size=16, learning_rate=1e-2, random_state=0, n_jobs=1)


def series(n_sequences=40, length=30, seed=0):
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, n_sequences)
    t = np.arange(length + 1)
    waves = np.sin(0.3 * t[None, :] + phase[:, None])[..., None].astype(np.float64)
    return [w[:-1] for w in waves], [w[1:] for w in waves]  # predict the next value


@pytest.fixture(scope="module")
def next_step_model():
    X, y = series()
    return LSTMRegressor(max_epochs=40, dtype="float64", **FAST).fit(X, y)


def test_pieces_give_the_one_shot_predictions(next_step_model):
    X, _ = series(5, seed=1)
    whole = next_step_model.predict(X)
    next_step_model.reset_state()
    pieces = [next_step_model.predict_and_update_state([s[start:stop] for s in X])
              for start, stop in [(0, 7), (7, 8), (8, 30)]]
    stitched = [np.concatenate([piece[i] for piece in pieces]) for i in range(5)]
    for a, b in zip(stitched, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # Step by step, one time step per call.
    next_step_model.reset_state()
    steps = [next_step_model.predict_and_update_state([s[t:t + 1] for s in X]) for t in range(30)]
    for i in range(5):
        np.testing.assert_allclose(np.concatenate([step[i] for step in steps]), whole[i],
                                   rtol=1e-12, atol=1e-14)


def test_state_is_kept_until_reset(next_step_model):
    X, _ = series(3, seed=2)
    next_step_model.reset_state()
    first = next_step_model.predict_and_update_state([s[:5] for s in X])
    second = next_step_model.predict_and_update_state([s[:5] for s in X])
    assert not np.allclose(first[0], second[0])  # the state carried over
    next_step_model.reset_state()
    again = next_step_model.predict_and_update_state([s[:5] for s in X])
    np.testing.assert_array_equal(again[0], first[0])
    with pytest.raises(ValueError, match="kept state is for 3 sequences but X has 2"):
        next_step_model.predict_and_update_state([s[:5] for s in X[:2]])
    next_step_model.reset_state()


def test_sequence_to_label_state_updates():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((rng.integers(4, 10), 2)).astype(np.float32) for _ in range(40)]
    y = np.array([int(s[:, 0].sum() > 0) for s in X])
    clf = LSTMClassifier(max_epochs=3, **FAST).fit(X, y)
    whole = clf.predict_proba(X[:4])
    clf.reset_state()
    halves = [s[: len(s) // 2] for s in X[:4]]
    rests = [s[len(s) // 2:] for s in X[:4]]
    clf.predict_and_update_state(halves)
    labels = clf.predict_and_update_state(rests)
    np.testing.assert_array_equal(labels, clf.classes_[whole.argmax(axis=1)])
    bidirectional = LSTMClassifier(max_epochs=1, bidirectional=True, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="needs a unidirectional network"):
        bidirectional.predict_and_update_state(X[:2])


def test_closed_loop_forecast_feeds_predictions_back(next_step_model):
    X, _ = series(4, seed=3)
    forecast = next_step_model.forecast(X, 10)
    assert forecast.shape == (4, 10, 1)
    # By hand: run the observed part, then feed every prediction back.
    next_step_model.reset_state()
    last = [p[-1:] for p in next_step_model.predict_and_update_state(X)]
    by_hand = []
    for _ in range(10):
        by_hand.append(np.concatenate(last))
        last = next_step_model.predict_and_update_state(last)
    np.testing.assert_allclose(forecast, np.stack(by_hand, axis=1), rtol=1e-10, atol=1e-12)
    next_step_model.reset_state()
    # A good next-step model continues the sine wave.
    t = np.arange(30, 40)
    rng = np.random.default_rng(3)
    phase = rng.uniform(0, 2 * np.pi, 4)
    truth = np.sin(0.3 * t[None, :] + phase[:, None])
    assert np.abs(forecast[..., 0] - truth).mean() < 0.2


def test_window_model_forecast_slides_its_window():
    from fastlstm import make_windows

    t = np.arange(400)
    values = np.sin(0.2 * t)
    X, y = make_windows(values[:300], window=12)
    reg = LSTMRegressor(max_epochs=20, dtype="float64", **FAST).fit(X, y)
    forecast = reg.forecast([X[-1]], 5)
    assert forecast.shape == (1, 5)
    window = X[-1].copy()
    for step in range(5):
        value = reg.predict([window])[0]
        assert value == pytest.approx(forecast[0, step], rel=1e-10, abs=1e-12)
        window = np.vstack([window[1:], [[value]]])


def test_forecast_needs_outputs_like_inputs():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((5, 2)) for _ in range(20)]
    reg = LSTMRegressor(max_epochs=1, **FAST).fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="1 outputs and 2 features"):
        reg.forecast(X, 3)
