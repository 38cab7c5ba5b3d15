"""Every compiled backend against the NumPy reference: outputs and every gradient,
for every kernel variant (direction, activations, projection, ragged lengths,
initial states), in float32 and float64."""

import numpy as np
import pytest

from fastlstm._backends import get_backend

from _lstm_cases import random_layer, random_packed_batch, run_direction, run_forward

COMPILED_BACKENDS = ["numba", "cython"]

# float32 kernels use a rational tanh (error ~3e-7) and float32 arithmetic.
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-9}

LENGTH_CASES = {
    "ragged": [7, 3, 3, 1, 5, 2],
    "equal": [4, 4, 4],
    "single": [6],
    "all-ones": [1, 1, 1, 1],
}
# (gate kind, state kind, proj_size)
VARIANTS = {
    "sigmoid-tanh": (0, 0, 0),
    "hard-sigmoid": (1, 0, 0),
    "softsign": (0, 1, 0),
    "hard-softsign-proj": (1, 1, 3),
    "projection": (0, 0, 3),
}


def assert_relative_close(actual, expected, tolerance, name):
    if expected.size == 0:
        assert actual.size == 0
        return
    scale = max(np.abs(expected).max(), 1e-12)
    error = np.abs(actual.astype(np.float64) - expected).max() / scale
    assert error < tolerance, f"{name}: relative error {error:.3g} >= {tolerance}"


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("lengths", LENGTH_CASES.values(), ids=LENGTH_CASES.keys())
def test_direction_matches_reference(backend_name, dtype, reverse, variant, lengths):
    gate_kind, state_kind, proj_size = variant
    hidden, state = 5, proj_size or 5
    rng = np.random.default_rng(len(lengths) * 10 + reverse)
    batch64 = random_packed_batch(rng, lengths, n_features=3, dtype=np.float64)
    layer64 = random_layer(rng, 3, hidden, len(lengths), np.float64, proj_size=proj_size)
    dH = rng.standard_normal((batch64.X.shape[0], state))
    dh_n = rng.standard_normal((len(lengths), state))
    dc_n = rng.standard_normal((len(lengths), hidden))
    expected = run_direction(get_backend("reference"), batch64, layer64, reverse,
                             gate_kind, state_kind, dH, dh_n, dc_n)

    batch = random_packed_batch(rng, lengths, 3, dtype)
    batch.X[:] = batch64.X
    layer = {name: value.astype(dtype) for name, value in layer64.items()}
    actual = run_direction(get_backend(backend_name), batch, layer, reverse,
                           gate_kind, state_kind, dH, dh_n, dc_n)
    for name in expected:
        assert actual[name].dtype == dtype
        assert_relative_close(actual[name], expected[name], TOLERANCE[dtype], name)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_direction_matches_reference_with_wide_products(backend_name, dtype, reverse):
    # 130 inputs, 128 hidden units and 150 rows: the whole-sequence products
    # (X W^T, dG^T X, dG^T Hprev, dG W) are wide enough for the kernels to
    # hand them to BLAS where the own GEMM runs its AVX2 tiles
    # (numba_lstm.SEQUENCE_BLAS_MIN); the small cases above keep them on
    # the own GEMM.
    from fastlstm._kernels.numba_lstm import SEQUENCE_BLAS_MIN

    n_features, hidden, lengths = 130, 128, [40, 35, 30, 25, 20]
    assert min(n_features, hidden, sum(lengths)) >= SEQUENCE_BLAS_MIN
    rng = np.random.default_rng(7 + reverse)
    batch64 = random_packed_batch(rng, lengths, n_features, np.float64)
    layer64 = random_layer(rng, n_features, hidden, len(lengths), np.float64, scale=0.05)
    dH = rng.standard_normal((batch64.X.shape[0], hidden))
    dh_n = rng.standard_normal((len(lengths), hidden))
    dc_n = rng.standard_normal((len(lengths), hidden))
    expected = run_direction(get_backend("reference"), batch64, layer64, reverse, 0, 0, dH,
                             dh_n, dc_n)
    batch = random_packed_batch(rng, lengths, n_features, dtype)
    batch.X[:] = batch64.X
    layer = {name: value.astype(dtype) for name, value in layer64.items()}
    actual = run_direction(get_backend(backend_name), batch, layer, reverse, 0, 0, dH, dh_n,
                           dc_n)
    for name in expected:
        assert actual[name].dtype == dtype
        assert_relative_close(actual[name], expected[name], TOLERANCE[dtype], name)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS)
def test_kernels_leave_inputs_untouched(backend_name):
    rng = np.random.default_rng(0)
    batch = random_packed_batch(rng, [5, 3, 2], 4, np.float32)
    layer = random_layer(rng, 4, 6, 3, np.float32, proj_size=2)
    before = {name: value.copy() for name, value in layer.items()}
    X_before = batch.X.copy()
    dH = rng.standard_normal((batch.X.shape[0], 2))
    run_direction(get_backend(backend_name), batch, layer, True, 0, 0, dH,
                  rng.standard_normal((3, 2)), rng.standard_normal((3, 6)))
    np.testing.assert_array_equal(batch.X, X_before)
    for name, value in before.items():
        np.testing.assert_array_equal(layer[name], value)


@pytest.mark.parametrize("backend_name", COMPILED_BACKENDS + ["reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_forward_without_saved_states_gives_the_same_outputs(backend_name, dtype, reverse,
                                                             variant):
    # Prediction passes Hprev, Cprev and TC with 0 rows: nothing is kept for
    # a backward pass, and every output must be what it is otherwise.
    gate_kind, state_kind, proj_size = variant
    rng = np.random.default_rng(3)
    lengths = LENGTH_CASES["ragged"]
    batch = random_packed_batch(rng, lengths, 3, dtype)
    layer = random_layer(rng, 3, 5, len(lengths), dtype, proj_size=proj_size)
    backend = get_backend(backend_name)
    kept = run_forward(backend, batch, layer, reverse, gate_kind, state_kind, keep=True)
    not_kept = run_forward(backend, batch, layer, reverse, gate_kind, state_kind, keep=False)
    for name in ("H", "h_n", "c_n") + (("gates",) if backend_name != "reference" else ()):
        np.testing.assert_array_equal(not_kept[name], kept[name], err_msg=name)
        assert not np.isnan(kept[name]).any(), name
