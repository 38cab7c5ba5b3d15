"""Stacked and bidirectional networks: numba against the reference, and the
reference against central finite differences."""

import numpy as np
import pytest

from fastlstm._backends import get_backend
from fastlstm._network import NetworkShape, network_backward, network_forward
from fastlstm._weights import init_parameters, parameter_shapes, unflatten

from _lstm_cases import random_packed_batch

SHAPES = [
    NetworkShape(hidden_size=4, num_layers=1, bidirectional=False),
    NetworkShape(hidden_size=4, num_layers=1, bidirectional=True),
    NetworkShape(hidden_size=3, num_layers=2, bidirectional=False),
    NetworkShape(hidden_size=3, num_layers=2, bidirectional=True),
]
SHAPE_IDS = ["uni-1", "bi-1", "uni-2", "bi-2"]
LENGTHS = [6, 2, 4, 4, 1]
N_FEATURES = 3


def make_problem(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    batch = random_packed_batch(rng, LENGTHS, N_FEATURES, dtype)
    shapes = parameter_shapes(N_FEATURES, shape.hidden_size, shape.num_layers,
                              shape.bidirectional, n_outputs=1)
    flat = init_parameters(shapes, np.random.RandomState(seed), dtype)
    # Random biases too, so that no gradient is trivially zero.
    flat += (0.3 * rng.standard_normal(flat.shape)).astype(dtype)
    d_outputs = rng.standard_normal((batch.X.shape[0], shape.n_features_out))
    d_final = rng.standard_normal((batch.size, shape.n_features_out))
    masks = None
    if shape.num_layers > 1:
        masks = [(rng.uniform(size=(batch.X.shape[0], shape.n_features_out)) < 0.7).astype(dtype) / dtype(0.7)]
    return batch, shapes, flat, d_outputs, d_final, masks


def objective(flat, shapes, shape, batch, backend, d_outputs, d_final, masks):
    """A scalar that depends on every output: <outputs, A> + <final_hidden, B>."""
    result = network_forward(unflatten(flat, shapes), shape, batch, backend, masks)
    return float(np.sum(result.outputs * d_outputs) + np.sum(result.final_hidden * d_final))


def gradients(flat, shapes, shape, batch, backend, d_outputs, d_final, masks):
    params = unflatten(flat, shapes)
    flat_grads = np.zeros_like(flat)
    grads = unflatten(flat_grads, shapes)
    result = network_forward(params, shape, batch, backend, masks)
    d_inputs = network_backward(params, grads, shape, batch, backend, result,
                                d_outputs=d_outputs.astype(flat.dtype),
                                d_final_hidden=d_final.astype(flat.dtype), dropout_masks=masks)
    return result, flat_grads, d_inputs


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_reference_matches_finite_differences(shape):
    batch, shapes, flat, d_outputs, d_final, masks = make_problem(shape, np.float64)
    backend = get_backend("reference")
    _, flat_grads, d_inputs = gradients(flat, shapes, shape, batch, backend, d_outputs, d_final, masks)
    # head.* do not enter the recurrent network: their gradient is not set here.
    n_recurrent = flat.size - sum(int(np.prod(s)) for name, s in shapes if name.startswith("head"))
    step = 1e-6
    numeric = np.empty(n_recurrent)
    for index in range(n_recurrent):
        plus, minus = flat.copy(), flat.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (
            objective(plus, shapes, shape, batch, backend, d_outputs, d_final, masks)
            - objective(minus, shapes, shape, batch, backend, d_outputs, d_final, masks)
        ) / (2 * step)
    np.testing.assert_allclose(flat_grads[:n_recurrent], numeric, rtol=1e-6, atol=1e-8)

    # And with respect to the inputs.
    numeric_inputs = np.empty_like(batch.X)
    X = batch.X
    for index in np.ndindex(X.shape):
        original = X[index]
        X[index] = original + step
        plus = objective(flat, shapes, shape, batch, backend, d_outputs, d_final, masks)
        X[index] = original - step
        minus = objective(flat, shapes, shape, batch, backend, d_outputs, d_final, masks)
        X[index] = original
        numeric_inputs[index] = (plus - minus) / (2 * step)
    np.testing.assert_allclose(d_inputs, numeric_inputs, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-5), (np.float64, 1e-9)])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_numba_network_matches_reference(shape, dtype, tolerance):
    batch64, shapes, flat64, d_outputs, d_final, masks64 = make_problem(shape, np.float64, seed=3)
    expected, expected_grads, expected_d_inputs = gradients(
        flat64, shapes, shape, batch64, get_backend("reference"), d_outputs, d_final, masks64)

    batch, _, flat, _, _, masks = make_problem(shape, dtype, seed=3)
    batch.X[:] = batch64.X
    flat[:] = flat64
    if masks is not None:
        masks[0][:] = masks64[0]
    actual, actual_grads, actual_d_inputs = gradients(
        flat, shapes, shape, batch, get_backend("numba"), d_outputs, d_final, masks)

    def check(name, got, want):
        scale = max(np.abs(want).max(), 1e-12)
        error = np.abs(got.astype(np.float64) - want).max() / scale
        assert error < tolerance, f"{name}: relative error {error:.3g}"

    check("outputs", actual.outputs, expected.outputs)
    check("final_hidden", actual.final_hidden, expected.final_hidden)
    check("d_inputs", actual_d_inputs, expected_d_inputs)
    actual_views, expected_views = unflatten(actual_grads, shapes), unflatten(expected_grads, shapes)
    for name, _ in shapes:
        if not name.startswith("head"):
            check(name, actual_views[name], expected_views[name])
