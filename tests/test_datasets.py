"""Tests for the bundled datasets in fastlstm.datasets."""

import numpy as np
import pytest

from fastlstm.datasets import load_airline, load_japanese_vowels

CLASSES = [str(k) for k in range(1, 10)]


@pytest.fixture(scope="module")
def vowels():
    return load_japanese_vowels()


def test_japanese_vowels_counts(vowels):
    X_train, y_train, X_test, y_test = vowels
    assert isinstance(X_train, list) and isinstance(X_test, list)
    assert len(X_train) == len(y_train) == 270
    assert len(X_test) == len(y_test) == 370


@pytest.mark.parametrize(
    "split, lo, hi, total", [(0, 7, 26, 4274), (2, 7, 29, 5687)]
)
def test_japanese_vowels_sequences(vowels, split, lo, hi, total):
    X = vowels[split]
    for x in X:
        assert isinstance(x, np.ndarray)
        assert x.ndim == 2 and x.shape[1] == 12
        assert x.dtype == np.float32
        assert x.flags.c_contiguous and x.flags.writeable and x.flags.owndata
        assert np.all(np.isfinite(x))
    lengths = [x.shape[0] for x in X]
    assert min(lengths) == lo
    assert max(lengths) == hi
    assert sum(lengths) == total


def test_japanese_vowels_labels(vowels):
    _, y_train, _, y_test = vowels
    assert y_train.dtype == np.dtype("<U1")
    assert y_test.dtype == np.dtype("<U1")
    assert sorted(set(y_train)) == CLASSES
    assert sorted(set(y_test)) == CLASSES
    labels, counts = np.unique(y_train, return_counts=True)
    assert list(labels) == CLASSES
    assert np.all(counts == 30)


def test_japanese_vowels_first_frame(vowels):
    # First line of UCI ae.train; pins parsing and case order.
    first = vowels[0][0][0]
    np.testing.assert_allclose(
        first[:4], [1.860936, -0.207383, 0.261557, -0.214562], rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(first[-1], 0.088728, rtol=0, atol=1e-6)


def test_japanese_vowels_sequences_are_independent():
    X_train, _, _, _ = load_japanese_vowels()
    original = X_train[0].copy()
    neighbour = X_train[1].copy()
    X_train[0][:] = 123.0
    X_train[0][0, 0] = -1.0
    np.testing.assert_array_equal(X_train[1], neighbour)
    X_again, _, _, _ = load_japanese_vowels()
    np.testing.assert_array_equal(X_again[0], original)


def test_airline():
    y, dates = load_airline()
    assert y.shape == (144,)
    assert y.dtype == np.float64
    assert y.min() == 104
    assert y.max() == 622
    assert dates.shape == (144,)
    assert dates[0] == "1949-01"
    assert dates[-1] == "1960-12"
