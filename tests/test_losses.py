"""The losses: the NumPy references against central finite differences and
torch, and the compiled cross-entropy against its reference."""

import numpy as np
import pytest

from fastlstm._losses import cross_entropy, cross_entropy_reference, mean_squared_error


def classification_rows(dtype, n_rows=7, n_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((n_rows, n_classes))).astype(dtype)
    targets = rng.integers(0, n_classes, n_rows).astype(np.intp)
    weights = rng.uniform(0.2, 2.0, n_rows).astype(dtype)
    weights[1] = 0  # a row that must not count
    return logits, targets, weights


def central_differences(function, array, step=1e-6):
    gradient = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + step
        plus = function(array)
        array[index] = original - step
        minus = function(array)
        array[index] = original
        gradient[index] = (plus - minus) / (2 * step)
    return gradient


def test_cross_entropy_reference_matches_finite_differences():
    logits, targets, weights = classification_rows(np.float64)
    _, d_logits = cross_entropy_reference(logits, targets, weights)
    numeric = central_differences(lambda x: cross_entropy_reference(x, targets, weights)[0],
                                  logits.copy())
    np.testing.assert_allclose(d_logits, numeric, rtol=1e-6, atol=1e-9)
    assert np.abs(d_logits[1]).max() == 0  # the zero-weight row


def test_mean_squared_error_matches_finite_differences():
    rng = np.random.default_rng(1)
    predictions = rng.standard_normal((6, 3))
    targets = rng.standard_normal((6, 3))
    weights = rng.uniform(0.2, 2.0, 6)
    _, d_predictions = mean_squared_error(predictions, targets, weights)
    numeric = central_differences(lambda x: mean_squared_error(x, targets, weights)[0],
                                  predictions.copy())
    np.testing.assert_allclose(d_predictions, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_cross_entropy_matches_its_reference(dtype):
    logits, targets, weights = classification_rows(dtype, n_rows=40, n_classes=9)
    logits[3, 2] = 80  # a row whose softmax needs the shift by the row maximum
    originals = [a.copy() for a in (logits, targets, weights)]
    loss, d_logits = cross_entropy(logits, targets, weights)
    expected_loss, expected = cross_entropy_reference(logits, targets, weights)
    assert d_logits.dtype == dtype
    assert loss == pytest.approx(expected_loss, rel=1e-13)
    # Both compute in float64, with exp and the row sums of different
    # libraries (a few float64 rounding steps apart), then round to dtype.
    if dtype == np.float32:
        np.testing.assert_array_max_ulp(d_logits, expected, maxulp=1)
    else:
        np.testing.assert_allclose(d_logits, expected, rtol=1e-13, atol=1e-300)
    for original, array in zip(originals, (logits, targets, weights)):
        np.testing.assert_array_equal(array, original)  # inputs untouched


def test_compiled_cross_entropy_keeps_a_nan():
    # A NaN logit must give a NaN loss, which stops training, not a finite
    # value from clipping the probability.
    logits, targets, weights = classification_rows(np.float32)
    logits[2, targets[2]] = np.nan
    assert np.isnan(cross_entropy(logits, targets, weights)[0])
    assert np.isnan(cross_entropy_reference(logits, targets, weights)[0])


def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    logits, targets, weights = classification_rows(np.float64)
    loss, d_logits = cross_entropy(logits, targets, weights)
    theirs = torch.tensor(logits, requires_grad=True)
    per_row = torch.nn.functional.cross_entropy(theirs, torch.tensor(targets), reduction="none")
    w = torch.tensor(weights)
    their_loss = (per_row * w).sum() / w.sum()
    their_loss.backward()
    assert loss == pytest.approx(their_loss.item(), rel=1e-12)
    np.testing.assert_allclose(d_logits, theirs.grad.numpy(), rtol=1e-10, atol=1e-14)
