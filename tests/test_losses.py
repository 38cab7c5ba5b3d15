"""The losses: the NumPy references against central finite differences and
torch, and the compiled cross-entropy and output-layer step against their
references."""

import numpy as np
import pytest

from fastlstm._losses import (
    cross_entropy,
    cross_entropy_reference,
    head_loss_and_gradients,
    head_loss_and_gradients_reference,
    mean_squared_error,
)


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


# -- the output layer and the loss in one call ---------------------------------------


def head_case(loss, dtype, n_rows=23, n_features=13, n_outputs=4, n_targets=31, seed=2):
    """Features, the layer's parameters, targets for ``loss`` and the rows that use them."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_rows, n_features)).astype(dtype)
    weight = (0.5 * rng.standard_normal((n_outputs, n_features))).astype(dtype)
    bias = rng.standard_normal(n_outputs).astype(dtype)
    if loss is cross_entropy:
        targets = rng.integers(0, n_outputs, n_targets).astype(np.intp)
    else:
        targets = rng.standard_normal((n_targets, n_outputs)).astype(dtype)
    weights = rng.uniform(0.2, 2.0, n_targets).astype(dtype)
    weights[rng.integers(0, n_targets)] = 0
    # Rows in no order, some targets used twice, some not at all.
    rows = rng.integers(0, n_targets, n_rows).astype(np.intp)
    return features, weight, bias, targets, weights, rows


def head_outputs(n_rows, n_features, n_outputs, dtype):
    """(d_features, d_weight, d_bias), NaN until written."""
    return (np.full((n_rows, n_features), np.nan, dtype),
            np.full((n_outputs, n_features), np.nan, dtype), np.full(n_outputs, np.nan, dtype))


@pytest.mark.parametrize("loss", [cross_entropy, mean_squared_error])
def test_head_reference_matches_finite_differences(loss):
    features, weight, bias, targets, weights, rows = head_case(loss, np.float64)
    gradients = head_outputs(*features.shape, weight.shape[0], np.float64)
    head_loss_and_gradients_reference(loss, features, weight, bias, targets, weights, rows,
                                      *gradients)

    def value(f=features, w=weight, b=bias):
        return head_loss_and_gradients_reference(
            loss, f, w, b, targets, weights, rows, *head_outputs(*f.shape, w.shape[0], np.float64))

    for array, gradient, call in [
        (features, gradients[0], lambda x: value(f=x)),
        (weight, gradients[1], lambda x: value(w=x)),
        (bias, gradients[2], lambda x: value(b=x)),
    ]:
        numeric = central_differences(call, array.copy())
        np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("own_gemm", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", [cross_entropy, mean_squared_error])
@pytest.mark.parametrize("shape", [(23, 13, 4), (27, 200, 9), (1, 1, 1), (300, 40, 70)])
def test_compiled_head_matches_its_reference(loss, dtype, own_gemm, shape):
    from fastlstm._kernels import _gemm

    n_rows, n_features, n_outputs = shape
    case = head_case(loss, dtype, n_rows, n_features, n_outputs)
    originals = [a.copy() for a in case]
    expected = head_outputs(n_rows, n_features, n_outputs, dtype)
    # Against NumPy throughout: the reference with the NumPy cross-entropy.
    numpy_loss = cross_entropy_reference if loss is cross_entropy else loss
    expected_value = head_loss_and_gradients_reference(numpy_loss, *case, *expected)
    got = head_outputs(n_rows, n_features, n_outputs, dtype)
    previous = _gemm.enabled()
    _gemm.set_enabled(own_gemm)
    try:
        value = head_loss_and_gradients(loss, *case, *got)
    finally:
        _gemm.set_enabled(previous)
    assert isinstance(value, float)
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    assert value == pytest.approx(expected_value, rel=tolerance)
    for array, reference in zip(got, expected):
        scale = np.abs(reference).max()
        np.testing.assert_allclose(array, reference, rtol=tolerance, atol=tolerance * scale)
    for original, array in zip(originals, case):
        np.testing.assert_array_equal(array, original)  # inputs untouched


@pytest.mark.parametrize("loss", [cross_entropy, mean_squared_error])
def test_compiled_head_is_used_in_training(loss, monkeypatch):
    # The compiled call must be the one training takes: a reference that
    # raises must not be reached with the arrays a trainer passes.
    import fastlstm._losses as losses

    def refuse(*args):
        raise AssertionError("the NumPy reference ran")

    monkeypatch.setattr(losses, "head_loss_and_gradients_reference", refuse)
    case = head_case(loss, np.float32)
    got = head_outputs(*case[0].shape, case[1].shape[0], np.float32)
    assert np.isfinite(head_loss_and_gradients(loss, *case, *got))


def test_head_falls_back_to_the_reference_for_other_losses():
    def half_squared_error(outputs, targets, weights):
        residual = outputs - targets
        return (float(np.sum(weights[:, None] * residual**2) / (2 * weights.sum())),
                weights[:, None] * residual / weights.sum())

    case = head_case(mean_squared_error, np.float64)
    got = head_outputs(*case[0].shape, case[1].shape[0], np.float64)
    expected = head_outputs(*case[0].shape, case[1].shape[0], np.float64)
    value = head_loss_and_gradients(half_squared_error, *case, *got)
    mse_value = head_loss_and_gradients(mean_squared_error, *case, *expected)
    n_outputs = case[1].shape[0]
    # The mean over outputs doubles the half squared error's sum.
    assert value == pytest.approx(mse_value * n_outputs / 2, rel=1e-12)
    for array, reference in zip(got, expected):
        np.testing.assert_allclose(array, reference * n_outputs / 2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", [cross_entropy, mean_squared_error])
def test_head_without_weight_writes_nothing(loss):
    features, weight, bias, targets, weights, rows = head_case(loss, np.float32)
    weights[rows] = 0
    for function in (head_loss_and_gradients, head_loss_and_gradients_reference):
        got = head_outputs(*features.shape, weight.shape[0], np.float32)
        assert function(loss, features, weight, bias, targets, weights, rows, *got) is None
        for array in got:
            assert np.isnan(array).all()


def test_compiled_head_checks_shapes_and_rows():
    from fastlstm._loss_kernels import head_cross_entropy

    features, weight, bias, targets, weights, rows = head_case(cross_entropy, np.float32)
    d_features, d_weight, d_bias = head_outputs(*features.shape, weight.shape[0], np.float32)
    scores = np.empty((features.shape[0], weight.shape[0]), np.float32)
    with pytest.raises(ValueError, match="disagree in shape"):
        head_cross_entropy(features, weight[:, :-1].copy(), bias, targets, weights, rows, scores,
                           d_features, d_weight, d_bias)
    rows[3] = len(targets)
    with pytest.raises(ValueError, match=f"Target row {len(targets)} is out of range"):
        head_cross_entropy(features, weight, bias, targets, weights, rows, scores, d_features,
                           d_weight, d_bias)


def test_compiled_cross_entropy_with_many_classes():
    # Past the row length whose exponentials the loop keeps, it computes
    # them twice: the same values either way.
    logits, targets, weights = classification_rows(np.float64, n_rows=9, n_classes=150)
    loss, d_logits = cross_entropy(logits, targets, weights)
    expected_loss, expected = cross_entropy_reference(logits, targets, weights)
    assert loss == pytest.approx(expected_loss, rel=1e-13)
    np.testing.assert_allclose(d_logits, expected, rtol=1e-13, atol=1e-300)


def test_head_matches_torch():
    torch = pytest.importorskip("torch")
    features, weight, bias, targets, weights, rows = head_case(cross_entropy, np.float64)
    got = head_outputs(*features.shape, weight.shape[0], np.float64)
    value = head_loss_and_gradients(cross_entropy, features, weight, bias, targets, weights, rows,
                                    *got)
    tensors = [torch.tensor(a, requires_grad=True) for a in (features, weight, bias)]
    logits = torch.nn.functional.linear(*tensors)
    per_row = torch.nn.functional.cross_entropy(logits, torch.tensor(targets[rows]),
                                                reduction="none")
    w = torch.tensor(weights[rows])
    their_loss = (per_row * w).sum() / w.sum()
    their_loss.backward()
    assert value == pytest.approx(their_loss.item(), rel=1e-12)
    for array, tensor in zip(got, tensors):
        np.testing.assert_allclose(array, tensor.grad.numpy(), rtol=1e-10, atol=1e-14)
