"""Task types inferred from y, input layouts and batching options."""

import numpy as np
import pytest

from fastlstm import LSTMClassifier, LSTMRegressor

FAST = dict(hidden_size=16, batch_size=16, learning_rate=1e-2, random_state=0, n_jobs=1)


def ragged(n_sequences, n_features=2, low=3, high=15, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rng.integers(low, high), n_features)).astype(np.float32)
            for _ in range(n_sequences)]


# -- task types --------------------------------------------------------------------


def test_sequence_to_sequence_classification():
    X, X_test = ragged(300), ragged(100, seed=1)

    def labels(seq):  # sign of the running sum: needs the past, not just the present
        return np.where(np.cumsum(seq[:, 0]) > 0, "up", "down")

    y = [labels(seq) for seq in X]
    clf = LSTMClassifier(max_epochs=30, **FAST).fit(X, y)
    assert clf.output_mode_ == "sequence"
    predicted = clf.predict(X_test)
    assert isinstance(predicted, list) and len(predicted) == len(X_test)
    assert all(p.shape == (len(seq),) for p, seq in zip(predicted, X_test))
    proba = clf.predict_proba(X_test)
    assert all(p.shape == (len(seq), 2) for p, seq in zip(proba, X_test))
    np.testing.assert_allclose(np.concatenate(proba).sum(axis=1), 1, rtol=1e-6)
    y_test = [labels(seq) for seq in X_test]
    accuracy = np.mean(np.concatenate(predicted) == np.concatenate(y_test))
    assert accuracy > 0.9
    assert clf.score(X_test, y_test) == pytest.approx(accuracy)


@pytest.mark.parametrize("two_d", [False, True], ids=["1-D steps", "2-D steps"])
def test_sequence_to_sequence_regression(two_d):
    X, X_test = ragged(300), ragged(100, seed=1)

    def targets(seq):  # running mean of feature 0 (and of feature 1)
        means = np.cumsum(seq, axis=0) / np.arange(1, len(seq) + 1)[:, None]
        return means if two_d else means[:, 0]

    reg = LSTMRegressor(max_epochs=30, **FAST).fit(X, [targets(s) for s in X])
    predicted = reg.predict(X_test)
    expected_shape = (lambda s: (len(s), 2)) if two_d else (lambda s: (len(s),))
    assert all(p.shape == expected_shape(s) for p, s in zip(predicted, X_test))
    y_test = [targets(s) for s in X_test]
    assert reg.score(X_test, y_test) > 0.9
    flat_true, flat_pred = np.concatenate(y_test), np.concatenate(predicted)
    from sklearn.metrics import r2_score
    assert reg.score(X_test, y_test) == pytest.approx(r2_score(flat_true, flat_pred), rel=1e-6)


def test_per_step_targets_must_match_lengths():
    X = ragged(10)
    y = [np.zeros(len(s)) for s in X]
    y[3] = np.zeros(len(X[3]) + 1)
    with pytest.raises(ValueError, match=r"Target sequence 3 has \d+ steps but sequence 3 of X has"):
        LSTMRegressor(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="expected one per sequence"):
        LSTMRegressor(**FAST).fit(X, [np.zeros(len(s)) for s in X[:9]])


def test_mode_of_y_must_match_the_fitted_model():
    X = ragged(20)
    reg = LSTMRegressor(max_epochs=1, **FAST).fit(X, np.zeros(20))
    with pytest.raises(ValueError, match="fitted with one target per sequence"):
        reg.score(X, [np.zeros(len(s)) for s in X])


# -- input layouts --------------------------------------------------------------------


def nan_padded(sequences):
    longest = max(len(s) for s in sequences)
    X = np.full((len(sequences), longest, sequences[0].shape[1]), np.nan, dtype=np.float32)
    for i, seq in enumerate(sequences):
        X[i, :len(seq)] = seq
    return X


def test_input_layouts_give_the_same_model(tmp_path):
    X = ragged(60)
    y = np.array([int(s[0, 0] > 0) for s in X])
    reference = LSTMClassifier(max_epochs=2, **FAST).fit(X, y)
    objects = np.empty(len(X), dtype=object)
    objects[:] = X
    padded = nan_padded(X)
    np.save(tmp_path / "padded.npy", padded)
    memmap = np.load(tmp_path / "padded.npy", mmap_mode="r")  # read-only, as joblib passes it
    for layout in (padded, objects, memmap, tuple(X)):
        model = LSTMClassifier(max_epochs=2, **FAST).fit(layout, y)
        for name, value in reference.weights_.items():
            np.testing.assert_array_equal(model.weights_[name], value)
        np.testing.assert_array_equal(model.predict_proba(layout), reference.predict_proba(X))


def test_two_d_array_is_univariate_sequences():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 7))
    y = (X[:, 0] > 0).astype(int)
    clf = LSTMClassifier(max_epochs=2, **FAST).fit(X, y)
    assert clf.n_features_in_ == 1
    np.testing.assert_array_equal(clf.predict_proba(X),
                                  clf.predict_proba([row[:, None] for row in X]))


def test_nan_inside_a_sequence_is_an_error():
    padded = nan_padded(ragged(10))
    padded[4, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"Sequence 4 of X contains NaN or infinity \(first at step 1\)"):
        LSTMClassifier(**FAST).fit(padded, np.arange(10) % 2)


def test_callers_arrays_are_not_modified():
    X = ragged(40)
    copies = [s.copy() for s in X]
    padded = nan_padded(X)
    padded_copy = padded.copy()
    y = [np.cumsum(s[:, 0]) for s in X]
    y_copy = [t.copy() for t in y]
    LSTMRegressor(max_epochs=1, **FAST).fit(X, y)
    LSTMClassifier(max_epochs=1, **FAST).fit(padded, np.arange(40) % 2)
    for seq, copy in zip(X, copies):
        np.testing.assert_array_equal(seq, copy)
    np.testing.assert_array_equal(padded, padded_copy)
    for t, copy in zip(y, y_copy):
        np.testing.assert_array_equal(t, copy)


# -- batching --------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", ["every-epoch", "once", "never"])
@pytest.mark.parametrize("bucketing", [True, False])
def test_shuffle_and_bucketing_options_train(shuffle, bucketing):
    X = ragged(80)
    y = np.array([int(s[:, 0].sum() > 0) for s in X])
    clf = LSTMClassifier(max_epochs=15, shuffle=shuffle, bucketing=bucketing, **FAST).fit(X, y)
    assert clf.history_[-1]["loss"] < clf.history_[0]["loss"]


def test_never_shuffling_does_not_depend_on_the_seed_for_batches():
    from fastlstm._bucketing import length_sorted_batches
    lengths = np.array([5, 3, 5, 2, 7])
    batches = length_sorted_batches(lengths, 2, None)
    assert [b.tolist() for b in batches] == [[4, 0], [2, 1], [3]]
    mixed = length_sorted_batches(lengths, 2, None, by_length=False)
    assert [b.tolist() for b in mixed] == [[0, 1], [2, 3], [4]]


def test_shortest_truncates_each_batch_to_its_shortest_sequence():
    from fastlstm._bucketing import pack_batch
    X = [np.arange(n * 2, dtype=np.float64).reshape(n, 2) for n in (6, 4, 3)]
    lengths = np.array([6, 4, 3])
    packed = pack_batch(X, lengths, np.array([0, 1, 2]), max_length=3)
    assert packed.batch_sizes.tolist() == [3, 3, 3]
    np.testing.assert_array_equal(packed.X[:3], [X[0][0], X[1][0], X[2][0]])
    np.testing.assert_array_equal(packed.order, [0, 1, 2])
    # The label of a sequence-to-label task is then read at the truncated end:
    # a signal only in the last step of long sequences cannot be learnt.
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((n, 1)).astype(np.float32) for n in [4] * 60 + [20] * 60]
    y = np.array([int(s[-1, 0] > 0) for s in X])
    params = dict(max_epochs=40, batch_size=120, shuffle="never", **{k: v for k, v in FAST.items() if k != "batch_size"})
    whole = LSTMClassifier(sequence_length="longest", **params).fit(X, y)
    short = LSTMClassifier(sequence_length="shortest", **params).fit(X, y)
    assert whole.score(X[60:], y[60:]) > 0.9
    assert short.score(X[60:], y[60:]) < 0.8


def test_list_of_equal_length_targets_hints_at_a_2d_array():
    X = ragged(10, low=3, high=9)
    with pytest.raises(ValueError, match=r"pass it as a 2-D array of shape \(n_sequences, n_outputs\)"):
        LSTMRegressor(**FAST).fit(X, [[1.0, 2.0]] * 10)
    reg = LSTMRegressor(max_epochs=1, **FAST).fit(X, np.array([[1.0, 2.0]] * 10))
    assert reg.predict(X).shape == (10, 2)
