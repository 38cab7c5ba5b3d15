"""Parameter layout and initialisers."""

import numpy as np
import pytest

from fastlstm._weights import (
    BIAS_INITIALIZERS,
    WEIGHT_INITIALIZERS,
    flatten,
    init_parameters,
    parameter_shapes,
    unflatten,
)


def test_layout_matches_torch_state_dict():
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(7, 10, num_layers=2, bidirectional=True, proj_size=4)
    shapes = parameter_shapes(7, 10, 2, True, n_outputs=3, proj_size=4)
    expected = [(name, tuple(value.shape)) for name, value in lstm.state_dict().items()]
    assert shapes[:-2] == expected
    assert shapes[-2:] == [("head.weight", (3, 8)), ("head.bias", (3,))]


def test_flatten_inverts_unflatten_and_checks_shapes():
    shapes = parameter_shapes(3, 4, 1, False, 2)
    flat = np.arange(sum(int(np.prod(s)) for _, s in shapes), dtype=np.float64)
    views = unflatten(flat, shapes)
    np.testing.assert_array_equal(flatten(views, shapes, np.float64), flat)
    views["weight_hh_l0"] = views["weight_hh_l0"][:, :2]
    with pytest.raises(ValueError, match=r"weights_\['weight_hh_l0'\] has shape \(16, 2\), expected \(16, 4\)"):
        flatten(views, shapes, np.float64)


def draw(initializer, shape=(400, 100), seed=0):
    return WEIGHT_INITIALIZERS[initializer](np.random.RandomState(seed), shape)


def test_glorot_is_uniform_within_the_glorot_bound():
    values = draw("glorot")
    limit = np.sqrt(6 / (400 + 100))
    assert np.abs(values).max() <= limit
    assert np.abs(values).max() > 0.99 * limit
    np.testing.assert_allclose(values.std(), limit / np.sqrt(3), rtol=0.02)


def test_he_is_normal_with_variance_two_over_fan_in():
    np.testing.assert_allclose(draw("he").std(), np.sqrt(2 / 100), rtol=0.02)


def test_narrow_normal_and_zeros():
    np.testing.assert_allclose(draw("narrow-normal").std(), 0.01, rtol=0.02)
    assert not draw("zeros").any()


@pytest.mark.parametrize("shape", [(400, 100), (100, 400), (64, 64)])
def test_orthogonal_has_orthonormal_columns_or_rows(shape):
    q = draw("orthogonal", shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(min(shape)), atol=1e-10)


@pytest.mark.parametrize("bias", BIAS_INITIALIZERS)
def test_bias_initializers(bias):
    shapes = parameter_shapes(3, 50, 1, True, 2)
    views = unflatten(init_parameters(shapes, np.random.RandomState(0), np.float64,
                                      bias_initializer=bias), shapes)
    for suffix in ("", "_reverse"):
        effective = views[f"bias_ih_l0{suffix}"] + views[f"bias_hh_l0{suffix}"]
        forget = effective[50:100]
        others = np.delete(effective, np.s_[50:100])
        if bias == "unit-forget-gate":
            assert np.all(forget == 1) and np.all(others == 0)
        elif bias == "ones":
            assert np.all(effective == 1)
        elif bias == "zeros":
            assert np.all(effective == 0)
        else:
            np.testing.assert_allclose(effective.std(), 0.01, rtol=0.2)


def test_initializers_apply_to_their_weights():
    shapes = parameter_shapes(3, 8, 1, False, 2, proj_size=5)
    views = unflatten(init_parameters(shapes, np.random.RandomState(0), np.float64,
                                      input_weights_initializer="zeros",
                                      recurrent_weights_initializer="orthogonal"), shapes)
    assert not views["weight_ih_l0"].any() and not views["weight_hr_l0"].any()
    recurrent = views["weight_hh_l0"]  # (32, 5): orthonormal columns
    np.testing.assert_allclose(recurrent.T @ recurrent, np.eye(5), atol=1e-10)


def test_same_seed_same_parameters():
    shapes = parameter_shapes(3, 8, 2, True, 2)
    first = init_parameters(shapes, np.random.RandomState(7), np.float32)
    second = init_parameters(shapes, np.random.RandomState(7), np.float32)
    np.testing.assert_array_equal(first, second)
