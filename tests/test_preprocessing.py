"""Tests for fastlstm.preprocessing: SequenceScaler, FrameTransformer, make_windows.

References are independent of the code under test: numpy statistics and
scikit-learn's StandardScaler / MinMaxScaler / PCA fitted on the stacked
frames, and a plain Python loop for make_windows.
"""

import doctest

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    Normalizer,
    OneHotEncoder,
    StandardScaler,
)
from sklearn.utils.estimator_checks import parametrize_with_checks

import fastlstm.preprocessing
from fastlstm.datasets import load_airline, load_japanese_vowels
from fastlstm.preprocessing import FrameTransformer, SequenceScaler, make_windows

METHODS = ["zscore", "zerocenter", "rescale-symmetric", "rescale-zero-one"]


def ragged(seed=0, n_sequences=7, n_features=3, lengths=None, dtype=np.float64):
    """Sequences of different lengths, each feature with its own mean and spread."""
    rng = np.random.default_rng(seed)
    if lengths is None:
        lengths = rng.integers(1, 20, size=n_sequences)
    offset = rng.normal(scale=5.0, size=n_features)
    spread = rng.uniform(0.5, 4.0, size=n_features)
    return [
        (offset + spread * rng.normal(size=(int(t), n_features))).astype(dtype)
        for t in lengths
    ]


def nan_pad(sequences):
    """3-D array with the shorter sequences ending in NaN rows (tslearn style)."""
    n_steps = max(len(s) for s in sequences)
    out = np.full((len(sequences), n_steps) + sequences[0].shape[1:], np.nan)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = seq
    return out


def sklearn_reference(method):
    """The scikit-learn scaler that does ``method`` on a 2-D table."""
    return {
        "zscore": StandardScaler(),
        "zerocenter": StandardScaler(with_std=False),
        "rescale-symmetric": MinMaxScaler(feature_range=(-1, 1)),
        "rescale-zero-one": MinMaxScaler(),
    }[method]


# -- SequenceScaler: statistics -------------------------------------------------


def test_statistics_equal_numpy_on_concatenated_frames():
    X = ragged()
    frames = np.concatenate(X)
    zscore = SequenceScaler().fit(X)
    assert zscore.n_features_in_ == 3
    assert_array_equal(zscore.n_steps_seen_, [len(frames)] * 3)
    assert_allclose(zscore.mean_, frames.mean(axis=0), rtol=1e-12)
    assert_allclose(zscore.var_, frames.var(axis=0), rtol=1e-12)
    assert_allclose(zscore.scale_, frames.std(axis=0), rtol=1e-12)
    assert not hasattr(zscore, "data_min_")

    center = SequenceScaler(method="zerocenter").fit(X)
    assert_allclose(center.mean_, frames.mean(axis=0), rtol=1e-12)
    assert not hasattr(center, "scale_")

    for method in ("rescale-symmetric", "rescale-zero-one"):
        rescale = SequenceScaler(method=method).fit(X)
        assert_array_equal(rescale.data_min_, frames.min(axis=0))
        assert_array_equal(rescale.data_max_, frames.max(axis=0))
        assert_array_equal(rescale.data_range_, np.ptp(frames, axis=0))
        assert not hasattr(rescale, "mean_")


def test_statistics_are_per_feature_not_per_time_step():
    # Two sequences of equal length: StandardScaler on the flattened (n, T*C)
    # table would normalise each (step, feature) cell separately; ours pools
    # all steps of a feature.
    X = np.array(ragged(lengths=[6, 6]))
    scaler = SequenceScaler().fit(X)
    assert scaler.mean_.shape == (3,)
    assert_allclose(scaler.mean_, X.reshape(-1, 3).mean(axis=0))


@pytest.mark.parametrize("method", METHODS)
def test_transform_equals_sklearn_scaler_on_stacked_frames(method):
    X = ragged(seed=1)
    frames = np.concatenate(X)
    reference = sklearn_reference(method).fit(frames)
    scaler = SequenceScaler(method=method).fit(X)
    assert_allclose(np.concatenate(scaler.transform(X)), reference.transform(frames),
                    rtol=1e-12, atol=1e-12)
    if method == "zscore":
        assert_allclose(scaler.scale_, reference.scale_, rtol=1e-12)
    if method in ("zscore", "zerocenter"):
        assert_allclose(scaler.mean_, reference.mean_, rtol=1e-12)
    else:
        assert_allclose(scaler.data_min_, reference.data_min_)
        assert_allclose(scaler.data_max_, reference.data_max_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_scaling_stacked_frames_equals_transform(method, dtype):
    # The estimators scale their checked sequences stacked (scale_stacked):
    # bit for bit what transform gives sequence by sequence.
    X = [seq.astype(dtype) for seq in ragged(seed=2)]
    scaler = SequenceScaler(method=method).fit(X)
    stacked = fastlstm.preprocessing.scale_stacked(scaler, np.concatenate(X)).astype(dtype)
    assert_array_equal(stacked, np.concatenate(scaler.transform(X)))


@pytest.mark.parametrize("method", METHODS)
def test_constant_feature_behaves_like_sklearn(method):
    X = ragged(seed=2)
    for seq in X:
        seq[:, 1] = 0.1  # 0.1 is not exact in binary: the mean rounds
    frames = np.concatenate(X)
    scaler = SequenceScaler(method=method).fit(X)
    if method == "zscore":
        assert scaler.scale_[1] == 1.0
    expected = sklearn_reference(method).fit_transform(frames)
    assert_allclose(np.concatenate(scaler.transform(X)), expected, atol=1e-12)
    assert np.all(np.isfinite(np.concatenate(scaler.transform(X))))


# -- SequenceScaler: containers -------------------------------------------------


def test_list_in_list_out_new_arrays_caller_unchanged():
    X = ragged(seed=3)
    X_copy = [seq.copy() for seq in X]
    scaler = SequenceScaler().fit(X)
    Z = scaler.transform(X)
    back = scaler.inverse_transform(Z)
    assert isinstance(Z, list) and len(Z) == len(X)
    for seq, seq_copy, z, b in zip(X, X_copy, Z, back):
        assert_array_equal(seq, seq_copy)  # the caller's arrays are untouched
        assert z.shape == seq.shape
        assert not np.shares_memory(z, seq)
        assert not np.shares_memory(b, z)
        assert_allclose(b, seq, rtol=1e-12, atol=1e-12)


def test_fit_transform_and_tuple_input():
    X = ragged(seed=3)
    scaler = SequenceScaler()
    Z = scaler.fit_transform(tuple(X))
    assert isinstance(Z, list)
    for z, expected in zip(Z, scaler.transform(X)):
        assert_array_equal(z, expected)


def test_1d_sequences_in_a_list_are_univariate():
    rng = np.random.default_rng(4)
    X = [rng.normal(size=t) for t in (3, 8, 5)]
    scaler = SequenceScaler().fit(X)
    assert scaler.n_features_in_ == 1
    Z = scaler.transform(X)
    assert [z.shape for z in Z] == [(3,), (8,), (5,)]
    values = np.concatenate(X)
    assert_allclose(np.concatenate(Z), (values - values.mean()) / values.std())


@pytest.mark.parametrize("dtype, expected", [
    (np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float64),
    (np.int32, np.float64),
])
def test_output_dtype(dtype, expected):
    X = [(10 * seq).astype(dtype) for seq in ragged(seed=5)]
    scaler = SequenceScaler().fit(X)
    assert all(z.dtype == expected for z in scaler.transform(X))
    assert scaler.transform(np.array(X[:1])).dtype == expected
    assert scaler.mean_.dtype == np.float64


def test_3d_array_in_3d_array_out_equals_list():
    X = np.stack(ragged(seed=6, lengths=[9] * 5))
    X_copy = X.copy()
    scaler = SequenceScaler().fit(X)
    Z = scaler.transform(X)
    assert isinstance(Z, np.ndarray) and Z.shape == X.shape
    assert not np.shares_memory(Z, X)
    assert_array_equal(X, X_copy)
    from_list = SequenceScaler().fit(list(X))
    assert_allclose(from_list.mean_, scaler.mean_, rtol=1e-12)
    assert_allclose(np.stack(from_list.transform(list(X))), Z, rtol=1e-12)
    # Lists and arrays can be mixed between fit and transform.
    assert_allclose(np.stack(scaler.transform(list(X))), Z, rtol=1e-12)


def test_object_array_of_sequences_is_a_list():
    X = ragged(seed=7)
    objects = np.empty(len(X), dtype=object)
    objects[:] = X
    scaler = SequenceScaler().fit(objects)
    assert_allclose(scaler.mean_, np.concatenate(X).mean(axis=0))
    assert isinstance(scaler.transform(objects), list)


@pytest.mark.parametrize("method", METHODS)
def test_nan_padded_3d_array(method):
    X = ragged(seed=8)
    padded = nan_pad(X)
    on_list = SequenceScaler(method=method).fit(X)
    on_padded = SequenceScaler(method=method).fit(padded)
    for name in ("n_steps_seen_", "mean_", "var_", "scale_", "data_min_", "data_max_"):
        if hasattr(on_list, name):
            assert_allclose(getattr(on_padded, name), getattr(on_list, name), rtol=1e-12)
    Z = on_padded.transform(padded)
    assert Z.shape == padded.shape
    assert_array_equal(np.isnan(Z), np.isnan(padded))  # NaN rows stay NaN
    for z, expected in zip(Z, on_list.transform(X)):
        assert_allclose(z[: len(expected)], expected, rtol=1e-12, atol=1e-12)
    # scikit-learn's scalers also ignore NaN in fit and keep it in transform.
    reference = sklearn_reference(method).fit(padded.reshape(-1, 3))
    assert_allclose(Z.reshape(-1, 3), reference.transform(padded.reshape(-1, 3)),
                    rtol=1e-12, atol=1e-12)
    assert_allclose(on_padded.inverse_transform(Z), padded, rtol=1e-12, atol=1e-12)


def test_nan_inside_lists_is_a_missing_value():
    X = ragged(seed=9)
    X[0][1, 2] = np.nan
    X[3][0, :] = np.nan
    frames = np.concatenate(X)
    scaler = SequenceScaler().fit(X)
    assert_allclose(scaler.mean_, np.nanmean(frames, axis=0))
    assert_allclose(scaler.scale_, np.nanstd(frames, axis=0))
    assert_array_equal(scaler.n_steps_seen_, (~np.isnan(frames)).sum(axis=0))
    Z = scaler.transform(X)
    assert np.isnan(Z[0][1, 2]) and np.isnan(Z[3][0]).all()


@pytest.mark.parametrize("method", METHODS)
def test_2d_array_is_univariate_sequences(method):
    rng = np.random.default_rng(10)
    X = 3.0 + 2.0 * rng.normal(size=(6, 11))  # 6 sequences of 11 steps
    scaler = SequenceScaler(method=method).fit(X)
    assert scaler.n_features_in_ == 1
    Z = scaler.transform(X)
    assert Z.shape == X.shape  # 2-D in, 2-D out
    # One statistic over all values, not one per column (time step).
    expected = sklearn_reference(method).fit_transform(X.reshape(-1, 1)).reshape(X.shape)
    assert_allclose(Z, expected, rtol=1e-12, atol=1e-12)
    assert_allclose(Z, scaler.transform(X[:, :, np.newaxis])[:, :, 0])
    # A univariate fit also transforms sequences of another length.
    assert scaler.transform(X[:2, :4]).shape == (2, 4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layout", ["list", "3d", "2d", "padded"])
def test_inverse_transform_round_trip(method, layout):
    X = ragged(seed=11, lengths=[5, 8, 8, 2])
    if layout == "3d":
        X = np.stack([seq[:2] for seq in X])
    elif layout == "2d":
        X = np.stack([seq[:2, 0] for seq in X])
    elif layout == "padded":
        X = nan_pad(X)
    scaler = SequenceScaler(method=method).fit(X)
    back = scaler.inverse_transform(scaler.transform(X))
    if layout == "list":
        for b, seq in zip(back, X):
            assert_allclose(b, seq, rtol=1e-12, atol=1e-12)
    else:
        assert type(back) is np.ndarray and back.shape == X.shape
        assert_allclose(back, X, rtol=1e-12, atol=1e-12)


def test_japanese_vowels_zscore():
    X_train, _, X_test, _ = load_japanese_vowels()
    X_copy = [x.copy() for x in X_train]
    scaler = SequenceScaler().fit(X_train)
    Z = scaler.transform(X_train)
    frames = np.concatenate(X_train).astype(np.float64)
    assert_allclose(scaler.mean_, frames.mean(axis=0), rtol=1e-10)
    assert_allclose(scaler.scale_, frames.std(axis=0), rtol=1e-10)
    stacked = np.concatenate(Z)
    assert stacked.dtype == np.float32
    assert_allclose(stacked.mean(axis=0, dtype=np.float64), 0, atol=1e-5)
    assert_allclose(stacked.std(axis=0, dtype=np.float64), 1, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(X_train, X_copy))
    assert [z.shape for z in scaler.transform(X_test)] == [x.shape for x in X_test]


def test_get_feature_names_out():
    scaler = SequenceScaler().fit(ragged())
    assert_array_equal(scaler.get_feature_names_out(), ["x0", "x1", "x2"])
    assert_array_equal(scaler.get_feature_names_out(["a", "b", "c"]), ["a", "b", "c"])


# -- SequenceScaler: partial_fit ------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_partial_fit_over_chunks_equals_fit(method):
    X = ragged(seed=12, lengths=[4, 1, 9, 6, 3, 12, 2, 7, 5, 8, 1, 1, 10, 3, 6])
    X[4][2, 1] = np.nan
    chunks = [X[:3], np.stack([s[:1] for s in X[3:4]]), X[4:11], X[11:12], X[12:]]
    streamed = SequenceScaler(method=method)
    for chunk in chunks:
        assert streamed.partial_fit(chunk) is streamed
    full = SequenceScaler(method=method).fit(X[:3] + [X[3][:1]] + X[4:])
    assert_array_equal(streamed.n_steps_seen_, full.n_steps_seen_)
    for name in ("mean_", "var_", "scale_", "data_min_", "data_max_", "data_range_"):
        assert hasattr(streamed, name) == hasattr(full, name)
        if hasattr(full, name):
            assert_allclose(getattr(streamed, name), getattr(full, name), rtol=1e-12)
    assert_allclose(np.concatenate(streamed.transform(X)),
                    np.concatenate(full.transform(X)), rtol=1e-10, atol=1e-12)


def test_partial_fit_is_numerically_stable():
    # A large offset: running sums of squares would lose every digit of the
    # variance (1e16 * eps ~ 1); the pairwise merge keeps it.
    rng = np.random.default_rng(13)
    X = [1e8 + rng.normal(size=(int(t), 2)) for t in rng.integers(50, 100, size=30)]
    streamed = SequenceScaler()
    for seq in X:
        streamed.partial_fit([seq])
    frames = np.concatenate(X)
    assert_allclose(streamed.mean_, frames.mean(axis=0), rtol=1e-14)
    assert_allclose(streamed.var_, frames.var(axis=0), rtol=1e-7)


def test_partial_fit_feature_without_values_yet():
    first = [np.array([[1.0, np.nan], [3.0, np.nan]])]
    second = [np.array([[5.0, 2.0], [7.0, 4.0]])]
    scaler = SequenceScaler().partial_fit(first)
    assert np.isnan(scaler.mean_[1]) and scaler.scale_[1] == 1.0
    scaler.partial_fit(second)
    assert_allclose(scaler.mean_, [4.0, 3.0])
    assert_allclose(scaler.var_, [5.0, 1.0])
    assert_array_equal(scaler.n_steps_seen_, [4, 2])


def test_fit_restarts_partial_fit_and_drops_other_methods_statistics():
    X = ragged(seed=14)
    scaler = SequenceScaler().partial_fit(X[:2]).partial_fit(X[2:])
    scaler.fit(X[:1])
    assert_array_equal(scaler.n_steps_seen_, [len(X[0])] * 3)
    scaler.set_params(method="rescale-zero-one").fit(X)
    assert not hasattr(scaler, "mean_") and hasattr(scaler, "data_min_")


def test_refit_with_another_feature_count():
    scaler = SequenceScaler().fit(ragged(n_features=3))
    scaler.fit(ragged(n_features=5))
    assert scaler.n_features_in_ == 5 and scaler.mean_.shape == (5,)
    folding = FrameTransformer(StandardScaler()).fit(videos())
    folding.fit(ragged(n_features=5))
    assert folding.frame_shape_ == (5,)


def test_method_changed_after_fit_raises():
    scaler = SequenceScaler(method="zerocenter").fit(ragged())
    scaler.set_params(method="zscore")
    with pytest.raises(ValueError, match="fitted with another method.*Call fit again"):
        scaler.transform(ragged())
    with pytest.raises(ValueError, match="fitted with another method"):
        scaler.partial_fit(ragged())


# -- SequenceScaler: errors -----------------------------------------------------


def test_inconsistent_feature_counts_name_the_sequence():
    X = ragged(seed=15)
    X[4] = X[4][:, :2]
    with pytest.raises(ValueError, match="Sequence 4 of X has 2 features per time step, "
                                         "expected 3"):
        SequenceScaler().fit(X)


@pytest.mark.parametrize("X", [[], (), np.empty((0, 5, 3)), np.empty((0, 4))],
                         ids=["list", "tuple", "3d", "2d"])
def test_empty_X_raises(X):
    with pytest.raises(ValueError, match="X contains no sequences"):
        SequenceScaler().fit(X)


def test_no_values_raises():
    with pytest.raises(ValueError, match="no values to fit on"):
        SequenceScaler().fit([np.empty((0, 3))])
    with pytest.raises(ValueError, match="no values to fit on"):
        SequenceScaler().fit(np.full((2, 3, 1), np.nan))


def test_wrong_feature_count_at_transform():
    scaler = SequenceScaler().fit(ragged())
    bad = ragged(n_features=4)
    with pytest.raises(ValueError, match="Sequence 0 of X has 4 features per time step, "
                                         "but SequenceScaler was fitted with 3"):
        scaler.transform(bad)
    with pytest.raises(ValueError, match="X has 4 features per time step, but "
                                         "SequenceScaler was fitted with 3"):
        scaler.transform(np.stack([s[:1] for s in bad]))
    with pytest.raises(ValueError, match="read as univariate sequences"):
        scaler.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="was fitted with 3"):
        scaler.partial_fit(bad)


@pytest.mark.parametrize("X, error, match", [
    (np.zeros(5), ValueError, "Reshape your data"),
    (np.zeros((2, 3, 4, 5)), ValueError, "FrameTransformer"),
    ([np.zeros((2, 3, 4))], ValueError, "Sequence 0 of X has shape"),
    (sp.csr_matrix(np.ones((3, 3))), TypeError, "sparse"),
    ([sp.csr_matrix(np.ones((3, 3)))], TypeError, "Sequence 0 of X is a sparse"),
    (np.ones((3, 3), dtype=complex), ValueError, "Complex data not supported"),
    ([np.array([["a", "b"]])], TypeError, "Sequence 0 of X has dtype <U1"),
    ([[[1.0, 2.0], [3.0]]], ValueError, "Sequence 0 of X is not a rectangular array"),
    ("abc", TypeError, "got str"),
    ([np.array([[1.0, np.inf]])], ValueError, "Sequence 0 of X contains infinity"),
    (np.array([[[1.0], [-np.inf]]]), ValueError, "X contains infinity"),
])
def test_bad_input_raises(X, error, match):
    with pytest.raises(error, match=match):
        SequenceScaler().fit(X)


def test_infinity_at_transform_names_the_sequence():
    scaler = SequenceScaler().fit(ragged())
    X = ragged()
    X[3][0, 0] = np.inf
    with pytest.raises(ValueError, match="Sequence 3 of X contains infinity"):
        scaler.transform(X)


def test_invalid_method_and_unfitted():
    with pytest.raises(ValueError, match="method"):
        SequenceScaler(method="minmax").fit(ragged())
    with pytest.raises(NotFittedError):
        SequenceScaler().transform(ragged())
    with pytest.raises(NotFittedError):
        SequenceScaler().inverse_transform(ragged())


# -- FrameTransformer -----------------------------------------------------------


def videos(seed=0, lengths=(3, 7, 1, 5, 9), frame_shape=(4, 5)):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(20, 20))  # correlated pixels, so PCA has structure
    return [(rng.normal(size=(t, 20)) @ mixing).reshape((t,) + frame_shape)
            for t in lengths]


def test_pca_on_frames_equals_pca_on_stacked_flattened_frames():
    X = videos()
    X_copy = [x.copy() for x in X]
    pca = PCA(n_components=3, svd_solver="full")
    folding = FrameTransformer(pca).fit(X)
    stacked = np.concatenate([x.reshape(len(x), -1) for x in X])
    reference = PCA(n_components=3, svd_solver="full").fit(stacked)
    assert folding.frame_shape_ == (4, 5)
    assert folding.n_features_in_ == 20
    assert_allclose(folding.transformer_.components_, reference.components_, atol=1e-10)
    assert_allclose(folding.transformer_.mean_, reference.mean_, atol=1e-10)
    Z = folding.transform(X)
    assert isinstance(Z, list)
    assert [z.shape for z in Z] == [(len(x), 3) for x in X]
    assert_allclose(np.concatenate(Z), reference.transform(stacked), atol=1e-9)
    # The inner transformer is cloned, never fitted in place.
    assert folding.transformer_ is not pca and not hasattr(pca, "components_")
    assert all(np.array_equal(a, b) for a, b in zip(X, X_copy))


def test_fit_transform_equals_fit_then_transform():
    X = videos(seed=1)
    Z1 = FrameTransformer(PCA(n_components=4)).fit_transform(X)
    Z2 = FrameTransformer(PCA(n_components=4)).fit(X).transform(X)
    for a, b in zip(Z1, Z2):
        assert_allclose(a, b, atol=1e-9)


def test_array_of_frames_in_array_out():
    X = np.stack(videos(seed=2, lengths=(6, 6, 6)))  # (3, 6, 4, 5)
    folding = FrameTransformer(PCA(n_components=2)).fit(X)
    Z = folding.transform(X)
    assert isinstance(Z, np.ndarray) and Z.shape == (3, 6, 2)
    assert_allclose(Z, np.stack(folding.transform(list(X))))
    # 3-D (n, T, n_features): frames are vectors.
    vectors = X.reshape(3, 6, 20)
    Zv = FrameTransformer(PCA(n_components=2)).fit(vectors).transform(vectors)
    assert_allclose(Zv, Z, atol=1e-9)


def test_2d_array_is_univariate_frames():
    rng = np.random.default_rng(3)
    X = 5 + 3 * rng.normal(size=(4, 10))
    folding = FrameTransformer(StandardScaler()).fit(X)
    assert folding.frame_shape_ == (1,) and folding.n_features_in_ == 1
    Z = folding.transform(X)
    assert Z.shape == (4, 10)  # one output per frame: 2-D in, 2-D out
    assert_allclose(Z, (X - X.mean()) / X.std())


def test_nan_padded_frames_are_skipped_and_stay_nan():
    X = videos(seed=4)
    padded = nan_pad(X)  # (5, 9, 4, 5), trailing all-NaN frames
    on_list = FrameTransformer(PCA(n_components=3, svd_solver="full")).fit(X)
    on_padded = FrameTransformer(PCA(n_components=3, svd_solver="full")).fit(padded)
    assert_allclose(on_padded.transformer_.components_, on_list.transformer_.components_,
                    atol=1e-10)
    Z = on_padded.transform(padded)
    assert Z.shape == (5, 9, 3)
    for z, x, expected in zip(Z, X, on_list.transform(X)):
        assert_allclose(z[: len(x)], expected, atol=1e-9)
        assert np.isnan(z[len(x):]).all()


def test_inverse_transform_reconstructs_frames():
    X = videos(seed=5)
    folding = FrameTransformer(PCA(n_components=20)).fit(X)
    back = folding.inverse_transform(folding.transform(X))
    assert [b.shape for b in back] == [x.shape for x in X]
    for b, x in zip(back, X):
        assert_allclose(b, x, atol=1e-9)
    padded = nan_pad(X)
    back_padded = folding.inverse_transform(folding.transform(padded))
    assert back_padded.shape == padded.shape
    assert_allclose(back_padded, padded, atol=1e-9)  # NaN frames stay NaN
    assert not hasattr(FrameTransformer(Normalizer()), "inverse_transform")


def test_get_feature_names_out_comes_from_inner_transformer():
    folding = FrameTransformer(PCA(n_components=2)).fit(videos())
    assert_array_equal(folding.get_feature_names_out(), ["pca0", "pca1"])


def test_sparse_inner_output_becomes_dense():
    rng = np.random.default_rng(6)
    X = [rng.integers(0, 3, size=(t, 2)) for t in (4, 2, 6)]
    folding = FrameTransformer(OneHotEncoder(sparse_output=True)).fit(X)
    Z = folding.transform(X)
    assert all(isinstance(z, np.ndarray) and z.shape == (len(x), 6) for z, x in zip(Z, X))
    assert_array_equal(np.concatenate(Z).sum(axis=1), 2)


def test_frame_shape_errors():
    X = videos()
    X[3] = np.zeros((2, 4, 6))
    with pytest.raises(ValueError, match=r"Sequence 3 of X has frames of shape \(4, 6\), "
                                         r"expected \(4, 5\) \(as in sequence 0\)"):
        FrameTransformer(PCA(2)).fit(X)
    folding = FrameTransformer(PCA(2)).fit(videos())
    with pytest.raises(ValueError, match=r"Sequence 0 of X has frames of shape \(5, 4\), "
                                         r"expected \(4, 5\) \(as in fit\)"):
        folding.transform([np.zeros((3, 5, 4))])
    with pytest.raises(ValueError, match=r"X has frames of shape \(20,\), but "
                                         r"FrameTransformer was fitted with frames of "
                                         r"shape \(4, 5\)"):
        folding.transform(np.zeros((2, 3, 20)))
    with pytest.raises(ValueError, match="Sequence 1 of X is a scalar"):
        FrameTransformer(PCA(1)).fit([np.zeros(3), 1.0])


def test_frame_transformer_other_errors():
    with pytest.raises(ValueError, match="X contains no sequences"):
        FrameTransformer(PCA(1)).fit([])
    with pytest.raises(ValueError, match="no frames to fit on"):
        FrameTransformer(StandardScaler()).fit([np.empty((0, 3))])
    with pytest.raises(ValueError, match="transformer"):
        FrameTransformer("pca").fit(videos())
    with pytest.raises(NotFittedError):
        FrameTransformer(PCA(1)).transform(videos())
    with pytest.raises(TypeError, match="sparse"):
        FrameTransformer(PCA(1)).fit(sp.csr_matrix(np.ones((3, 3))))


# -- Pipelines ------------------------------------------------------------------


class SequenceMeanRegressor(RegressorMixin, BaseEstimator):
    """Predict from each sequence's mean over time; accepts lists of arrays."""

    def fit(self, X, y):
        assert isinstance(X, list), "the pipeline must hand sequences on as a list"
        self.seen_ = X
        means = np.array([seq.mean(axis=0) for seq in X])
        design = np.column_stack([np.ones(len(X)), means])
        self.coef_ = np.linalg.lstsq(design, np.asarray(y), rcond=None)[0]
        return self

    def predict(self, X):
        means = np.array([seq.mean(axis=0) for seq in X])
        return np.column_stack([np.ones(len(X)), means]) @ self.coef_


def test_pipeline_hands_transformed_sequences_to_the_final_estimator():
    X = videos(seed=7, lengths=range(2, 14))
    y = np.array([x.mean() for x in X])
    pipe = Pipeline([
        ("scale", SequenceScaler()),  # each pixel: a feature over all frames
        ("fold", FrameTransformer(PCA(n_components=3, svd_solver="full"))),
        ("model", SequenceMeanRegressor()),
    ])
    # SequenceScaler works on (T_i, n_features); flatten the images for it.
    flat = [x.reshape(len(x), -1) for x in X]
    pipe.fit(flat, y)
    stacked = np.concatenate(flat)
    reference = PCA(n_components=3, svd_solver="full").fit_transform(
        StandardScaler().fit_transform(stacked))
    seen = pipe.named_steps["model"].seen_
    assert [s.shape for s in seen] == [(len(x), 3) for x in X]
    assert_allclose(np.concatenate(seen), reference, atol=1e-9)
    assert pipe.predict(flat).shape == (len(X),)


def test_pipeline_in_cross_validation_on_ragged_lists():
    X_train, _, _, _ = load_japanese_vowels()
    X = X_train[::9]
    y = np.array([x[:, 0].mean() for x in X])
    pipe = Pipeline([("scale", SequenceScaler()), ("model", SequenceMeanRegressor())])
    scores = cross_val_score(pipe, X, y, cv=KFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,) and np.all(scores > 0.9)


# -- make_windows ---------------------------------------------------------------


def windows_by_hand(series, window, horizon, stride):
    X, y = [], []
    start = 0
    while start + window + horizon <= len(series):
        X.append(series[start:start + window])
        y.append(series[start + window:start + window + horizon])
        start += stride
    return X, y


@pytest.mark.parametrize("window", [1, 4, 7])
@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize("stride", [1, 2, 5])
@pytest.mark.parametrize("n_features", [None, 2])
def test_make_windows_equals_hand_loop(window, horizon, stride, n_features):
    rng = np.random.default_rng(window * 100 + horizon * 10 + stride)
    series = rng.normal(size=30 if n_features is None else (30, n_features))
    X, y = make_windows(series, window, horizon, stride=stride)
    X_ref, y_ref = windows_by_hand(series, window, horizon, stride)
    n_windows = len(X_ref)
    assert n_windows == (30 - window - horizon) // stride + 1
    if n_features is None:
        assert X.shape == (n_windows, window, 1)
        assert_array_equal(X[:, :, 0], np.array(X_ref))
        expected_y = np.array(y_ref)[:, 0] if horizon == 1 else np.array(y_ref)
    else:
        assert X.shape == (n_windows, window, n_features)
        assert_array_equal(X, np.array(X_ref))
        expected_y = np.array(y_ref)[:, 0] if horizon == 1 else np.array(y_ref)
    assert y.shape == expected_y.shape
    assert_array_equal(y, expected_y)


def test_make_windows_airline_shapes():
    passengers, _ = load_airline()
    X, y = make_windows(passengers, window=12)
    assert X.shape == (132, 12, 1) and y.shape == (132,)
    assert_array_equal(X[-1, :, 0], passengers[-13:-1])
    assert y[-1] == passengers[-1]
    X, y = make_windows(passengers, window=12, horizon=6)
    assert X.shape == (127, 12, 1) and y.shape == (127, 6)
    assert_array_equal(y[-1], passengers[-6:])
    X, y = make_windows(passengers, window=24, horizon=12, stride=12)
    assert X.shape == (10, 24, 1) and y.shape == (10, 12)
    two = np.column_stack([passengers, np.log(passengers)])
    X, y = make_windows(two, window=12)
    assert X.shape == (132, 12, 2) and y.shape == (132, 2)
    X, y = make_windows(two, window=12, horizon=3)
    assert X.shape == (130, 12, 2) and y.shape == (130, 3, 2)


def test_make_windows_copies_and_keeps_dtype():
    series = np.arange(20, dtype=np.float32)
    X, y = make_windows(series, 5, 2)
    assert X.dtype == np.float32 and y.dtype == np.float32
    assert X.flags.c_contiguous and y.flags.c_contiguous
    assert not np.shares_memory(X, series) and not np.shares_memory(y, series)
    X[0, 0, 0] = -1.0
    assert series[0] == 0.0
    X, y = make_windows(list(range(10)), 3)  # a list works too
    assert X.shape == (7, 3, 1) and y[0] == 3


def test_make_windows_minimum_length():
    X, y = make_windows(np.arange(5.0), window=3, horizon=2)
    assert X.shape == (1, 3, 1) and y.shape == (1, 2)
    with pytest.raises(ValueError, match=r"series has 4 steps, but window=3 and "
                                         r"horizon=2 need at least 5"):
        make_windows(np.arange(4.0), window=3, horizon=2)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 0}, "window must be an integer >= 1, got 0"),
    ({"window": 2.0}, "window must be an integer >= 1"),
    ({"window": True}, "window must be an integer >= 1"),
    ({"window": 3, "horizon": 0}, "horizon must be an integer >= 1"),
    ({"window": 3, "stride": -1}, "stride must be an integer >= 1"),
])
def test_make_windows_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_windows(np.arange(10.0), **kwargs)


def test_make_windows_bad_series():
    with pytest.raises(ValueError, match="series must be 1-D"):
        make_windows(np.zeros((10, 2, 2)), 3)
    with pytest.raises(ValueError, match="series must be 1-D"):
        make_windows(np.float64(3.0), 1)


# -- docstrings and scikit-learn's common checks ----------------------------------


def test_docstring_examples():
    result = doctest.testmod(fastlstm.preprocessing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


_SEQUENCE_SEMANTICS = {
    # 2-D X is (n_sequences, T) univariate sequences: its columns are time
    # steps, not features, and a different T at transform time is legal.
    "check_n_features_in": "n_features_in_ counts features per time step "
                           "(1 for a 2-D array), not the columns of X",
    "check_n_features_in_after_fitting": "fewer columns in a 2-D X are shorter "
                                         "univariate sequences, which are valid",
    "check_transformer_general": "its last step expects transform(X[:, :-1]) to "
                                 "fail; fewer columns are shorter sequences, valid",
    "check_transformer_data_not_an_array": "X.tolist() is a list of sequences, and "
                                           "a list in gives a list out (no .shape)",
    "check_estimators_empty_data_messages": "a (12, 0) array is 12 empty univariate "
                                            "sequences; the error says so instead "
                                            "of '0 feature(s)'",
}


def _expected_failed_checks(estimator):
    return _SEQUENCE_SEMANTICS


@parametrize_with_checks(
    [SequenceScaler(method=method) for method in METHODS]
    + [FrameTransformer(StandardScaler()), FrameTransformer(PCA(n_components=1))],
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
