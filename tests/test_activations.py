"""The vectorisable activations against NumPy's exact functions."""

import numpy as np
import pytest
from numba import njit

from fastlstm._kernels._activations import act_sigmoid, act_tanh


@njit
def _apply_tanh(x, out):
    for i in range(x.shape[0]):
        out[i] = act_tanh(x[i])


@njit
def _apply_sigmoid(x, out):
    for i in range(x.shape[0]):
        out[i] = act_sigmoid(x[i])


X = np.concatenate([np.linspace(-30, 30, 200_001), [-np.inf, np.inf, 0.0, -0.0, 1e-30, -1e-30]])


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 5e-7), (np.float64, 1e-15)])
def test_tanh_error_bound(dtype, tolerance):
    x = X.astype(dtype)
    out = np.empty_like(x)
    _apply_tanh(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert out.dtype == dtype
    assert np.abs(out - exact).max() < tolerance
    assert np.all(np.abs(out) <= 1)
    # Odd symmetry, and tanh(0) exactly 0, so that zero states stay zero.
    mirrored = np.empty_like(x)
    _apply_tanh(-x, mirrored)
    np.testing.assert_array_equal(out, -mirrored)
    assert out[-4] == 0


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 5e-7), (np.float64, 1e-15)])
def test_sigmoid_error_bound(dtype, tolerance):
    x = X.astype(dtype)
    out = np.empty_like(x)
    _apply_sigmoid(x, out)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert out.dtype == dtype
    assert np.abs(out - exact).max() < tolerance
    assert np.all((out >= 0) & (out <= 1))
