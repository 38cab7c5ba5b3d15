"""Optimisers, L2 regularisation, schedules and clipping on the flat vector.

Each optimiser is checked twice: against a textbook NumPy loop written here
(so the checks run without torch) and against ``torch.optim`` (skipped
without torch). Tolerances: 1e-12 in float64, 1e-6 in float32; the
implementations only differ in the order of roundings.
"""

import tracemalloc

import numpy as np
import pytest

from fastlstm._optim import (
    add_l2_regularization_reference,
    CLIP_METHODS,
    OPTIMIZERS,
    SCHEDULES,
    Adam,
    RMSProp,
    SGDMomentum,
    add_l2_regularization,
    clip_gradients,
    learning_rate_at,
    make_optimizer,
)

N_PARAMETERS = 37
N_STEPS = 20
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-6}
# Not the defaults, so that a hyper-parameter that is not passed through
# would show.
HYPER = dict(momentum=0.8, beta1=0.85, beta2=0.99, epsilon=1e-7,
             squared_gradient_decay_factor=0.95)


def random_problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(N_PARAMETERS).astype(dtype)
    grads = [rng.standard_normal(N_PARAMETERS).astype(dtype) for _ in range(N_STEPS)]
    return params, grads


def constant_rate(step):
    return 1e-2


def changing_rate(step):
    # Drops part-way, as a piecewise schedule would between epochs.
    return 1e-2 if step < N_STEPS // 2 else 3e-3


def run_ours(name, params, grads, rate):
    params = params.copy()
    optimizer = make_optimizer(name, params.size, params.dtype, rate(0), **HYPER)
    for step, grad in enumerate(grads):
        optimizer.learning_rate = rate(step)
        optimizer.step(params, grad)
    return params


# Textbook versions, written as in the papers / MATLAB's documentation, with
# no attention to allocation or to the order of operations.

def textbook_adam(params, grads, rate):
    beta1, beta2, epsilon = HYPER["beta1"], HYPER["beta2"], HYPER["epsilon"]
    p, m, v = params.copy(), np.zeros_like(params), np.zeros_like(params)
    for step, g in enumerate(grads):
        t = step + 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        p = p - rate(step) * m_hat / (np.sqrt(v_hat) + epsilon)
    return p


def textbook_sgdm(params, grads, rate):
    # MATLAB: v = momentum v - lr g; p = p + v.
    p, velocity = params.copy(), np.zeros_like(params)
    for step, g in enumerate(grads):
        velocity = HYPER["momentum"] * velocity - rate(step) * g
        p = p + velocity
    return p


def textbook_rmsprop(params, grads, rate):
    rho, epsilon = HYPER["squared_gradient_decay_factor"], HYPER["epsilon"]
    p, v = params.copy(), np.zeros_like(params)
    for step, g in enumerate(grads):
        v = rho * v + (1 - rho) * g**2
        p = p - rate(step) * g / (np.sqrt(v) + epsilon)
    return p


TEXTBOOK = {"adam": textbook_adam, "sgdm": textbook_sgdm, "rmsprop": textbook_rmsprop}


def run_torch(name, params, grads, rate, weight_decay=0.0):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.from_numpy(params.copy()))
    if name == "adam":
        optimizer = torch.optim.Adam([p], lr=rate(0), betas=(HYPER["beta1"], HYPER["beta2"]),
                                     eps=HYPER["epsilon"], weight_decay=weight_decay)
    elif name == "sgdm":
        optimizer = torch.optim.SGD([p], lr=rate(0), momentum=HYPER["momentum"],
                                    dampening=0, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.RMSprop([p], lr=rate(0),
                                        alpha=HYPER["squared_gradient_decay_factor"],
                                        eps=HYPER["epsilon"], centered=False, momentum=0,
                                        weight_decay=weight_decay)
    for step, grad in enumerate(grads):
        optimizer.param_groups[0]["lr"] = rate(step)
        p.grad = torch.from_numpy(grad.copy())
        optimizer.step()
    return p.detach().numpy()


def test_public_names():
    assert OPTIMIZERS == ("adam", "sgdm", "rmsprop")
    assert CLIP_METHODS == ("l2norm", "global-l2norm", "absolute-value")
    assert SCHEDULES == ("none", "piecewise")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rate", [constant_rate, changing_rate])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matches_textbook(name, rate, dtype):
    params, grads = random_problem(dtype)
    ours = run_ours(name, params, grads, rate)
    expected = TEXTBOOK[name](params, grads, rate)
    assert ours.dtype == dtype
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(ours, expected, rtol=tol, atol=tol)
    # The parameters did move: the comparison is not between two copies.
    assert np.abs(ours - params).max() > 100 * tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matches_torch_constant_rate(name, dtype):
    params, grads = random_problem(dtype)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(run_ours(name, params, grads, constant_rate),
                               run_torch(name, params, grads, constant_rate),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_matches_torch_changing_rate(name, dtype):
    # Adam's bias correction keeps counting steps since creation when the
    # rate changes, as torch's does.
    params, grads = random_problem(dtype)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(run_ours(name, params, grads, changing_rate),
                               run_torch(name, params, grads, changing_rate),
                               rtol=tol, atol=tol)


def test_sgdm_differs_from_torch_when_the_rate_changes():
    # MATLAB's velocity carries the old rate (v = m v - lr g), torch's buffer
    # does not (p -= lr buf): after a drop, torch rescales the accumulated
    # momentum at once. The estimators follow MATLAB; this pins the
    # documented difference.
    params, grads = random_problem(np.float64)
    ours = run_ours("sgdm", params, grads, changing_rate)
    np.testing.assert_allclose(ours, textbook_sgdm(params, grads, changing_rate), rtol=1e-12)
    theirs = run_torch("sgdm", params, grads, changing_rate)
    assert np.abs(ours - theirs).max() > 1e-4


def test_adam_bias_correction_counts_steps_since_creation():
    # A caller that changes learning_rate must not restart the bias
    # correction: after a drop at step 5 the update is the textbook one for
    # t = 6, not t = 1 (which would be ~10x larger here).
    params, grads = random_problem(np.float64)
    p = params.copy()
    optimizer = Adam(N_PARAMETERS, np.float64, 1e-2, beta1=HYPER["beta1"],
                     beta2=HYPER["beta2"], epsilon=HYPER["epsilon"])
    for grad in grads[:5]:
        optimizer.step(p, grad)
    optimizer.learning_rate = 1e-3
    optimizer.step(p, grads[5])
    assert optimizer.n_steps == 6
    expected = textbook_adam(params, grads[:6], lambda step: 1e-2 if step < 5 else 1e-3)
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, cls, attribute, value", [
    ("adam", Adam, "beta1", HYPER["beta1"]),
    ("adam", Adam, "beta2", HYPER["beta2"]),
    ("adam", Adam, "epsilon", HYPER["epsilon"]),
    ("sgdm", SGDMomentum, "momentum", HYPER["momentum"]),
    ("rmsprop", RMSProp, "squared_gradient_decay_factor",
     HYPER["squared_gradient_decay_factor"]),
    ("rmsprop", RMSProp, "epsilon", HYPER["epsilon"]),
])
def test_make_optimizer_passes_hyper_parameters(name, cls, attribute, value):
    optimizer = make_optimizer(name, 3, np.float32, 0.5, **HYPER)
    assert type(optimizer) is cls
    assert optimizer.learning_rate == 0.5
    assert getattr(optimizer, attribute) == value


def test_make_optimizer_defaults_are_matlabs():
    adam = make_optimizer("adam", 3, np.float64, 1e-3)
    assert (adam.beta1, adam.beta2, adam.epsilon) == (0.9, 0.999, 1e-8)
    assert make_optimizer("sgdm", 3, np.float64, 1e-2).momentum == 0.9
    rmsprop = make_optimizer("rmsprop", 3, np.float64, 1e-3)
    assert (rmsprop.squared_gradient_decay_factor, rmsprop.epsilon) == (0.9, 1e-8)


def test_make_optimizer_rejects_unknown_name_and_positional_hyper_parameters():
    with pytest.raises(ValueError, match="valid optimizers are"):
        make_optimizer("adagrad", 3, np.float64, 1e-3)
    with pytest.raises(TypeError):
        make_optimizer("sgdm", 3, np.float64, 1e-3, 0.9)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_does_not_allocate(name):
    n = 200_000
    params = np.zeros(n)
    grads = np.random.default_rng(0).standard_normal(n)
    optimizer = make_optimizer(name, n, np.float64, 1e-3)
    optimizer.step(params, grads)
    tracemalloc.start()
    try:
        optimizer.step(params, grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy reports its data buffers to tracemalloc; a temporary vector
    # would show as n * 8 bytes.
    assert peak < n * 8 // 10


# State: early stopping keeps the best epoch's state, warm start reloads it.

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trip_continues_identically(name, dtype):
    params, grads = random_problem(dtype)
    p = params.copy()
    original = make_optimizer(name, N_PARAMETERS, dtype, 1e-2, **HYPER)
    for grad in grads[:7]:
        original.step(p, grad)
    state, saved_params = original.state_dict(), p.copy()

    for grad in grads[7:]:
        original.step(p, grad)

    restored = make_optimizer(name, N_PARAMETERS, dtype, 1e-2, **HYPER)
    restored.load_state_dict(state)
    q = saved_params.copy()
    for grad in grads[7:]:
        restored.step(q, grad)
    np.testing.assert_array_equal(q, p)
    assert restored.n_steps == original.n_steps == N_STEPS


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_holds_copies(name):
    params, grads = random_problem(np.float64)
    optimizer = make_optimizer(name, N_PARAMETERS, np.float64, 1e-2)
    optimizer.step(params, grads[0])
    state = optimizer.state_dict()
    snapshot = {key: np.copy(value) for key, value in state.items()}
    optimizer.step(params, grads[1])
    for key, value in state.items():
        np.testing.assert_array_equal(value, snapshot[key])
    # Loading copies too: stepping after a load leaves the dict alone.
    optimizer.load_state_dict(state)
    optimizer.step(params, grads[2])
    for key, value in state.items():
        np.testing.assert_array_equal(value, snapshot[key])
    assert state["n_steps"] == 1 and isinstance(state["n_steps"], int)


def test_state_dict_keys():
    assert set(Adam(2, np.float64, 1.0).state_dict()) == {"first_moment", "second_moment",
                                                          "n_steps"}
    assert set(SGDMomentum(2, np.float64, 1.0).state_dict()) == {"velocity", "n_steps"}
    assert set(RMSProp(2, np.float64, 1.0).state_dict()) == {"square_average", "n_steps"}


def test_load_state_dict_rejects_a_foreign_state():
    adam = Adam(4, np.float64, 1e-3)
    with pytest.raises(ValueError, match="keys"):
        adam.load_state_dict(SGDMomentum(4, np.float64, 1e-3).state_dict())
    bigger = Adam(5, np.float64, 1e-3)
    bigger.n_steps = 3
    with pytest.raises(ValueError, match="shape"):
        adam.load_state_dict(bigger.state_dict())
    assert adam.n_steps == 0  # a rejected state leaves the optimiser as it was


# L2 regularisation

def weight_bias_problem(dtype=np.float64):
    rng = np.random.default_rng(1)
    params = rng.standard_normal(N_PARAMETERS).astype(dtype)
    grads = rng.standard_normal(N_PARAMETERS).astype(dtype)
    mask = np.zeros(N_PARAMETERS, dtype=bool)
    mask[:12] = True  # a weight matrix
    mask[16:30] = True  # another, after a bias
    return params, grads, mask


@pytest.mark.parametrize("use_scratch", [False, True])
def test_l2_regularization_touches_weights_only(use_scratch):
    params, grads, mask = weight_bias_problem()
    before, params_before = grads.copy(), params.copy()
    scratch = np.empty_like(grads) if use_scratch else None
    add_l2_regularization(grads, params, 1e-2, mask, scratch=scratch)
    np.testing.assert_array_equal(grads[~mask], before[~mask])
    np.testing.assert_allclose(grads[mask], before[mask] + 1e-2 * params[mask], rtol=1e-15)
    np.testing.assert_array_equal(params, params_before)


def test_l2_regularization_zero_factor_is_a_no_op():
    params, grads, mask = weight_bias_problem()
    before = grads.copy()
    add_l2_regularization(grads, params, 0.0, mask)
    np.testing.assert_array_equal(grads, before)


def test_l2_regularization_rejects_a_non_boolean_mask():
    params, grads, mask = weight_bias_problem()
    with pytest.raises(ValueError, match="boolean"):
        add_l2_regularization(grads, params, 1e-2, mask.astype(np.float64))
    with pytest.raises(ValueError, match="boolean"):
        add_l2_regularization(grads, params, 1e-2, np.flatnonzero(mask))


def test_l2_regularization_with_scratch_does_not_allocate():
    n = 200_000
    params, grads = np.ones(n), np.zeros(n)
    mask, scratch = np.arange(n) % 3 > 0, np.empty(n)
    tracemalloc.start()
    try:
        add_l2_regularization(grads, params, 0.5, mask, scratch=scratch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 8 // 10


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_l2_on_every_entry_is_torch_weight_decay(name):
    # Torch's weight_decay adds weight_decay * p to the gradient before the
    # update (not AdamW's decoupled decay), which is MATLAB's L2 term.
    params, grads = random_problem(np.float64)
    factor, mask = 0.05, np.ones(N_PARAMETERS, dtype=bool)
    p = params.copy()
    optimizer = make_optimizer(name, N_PARAMETERS, np.float64, 1e-2, **HYPER)
    fused = make_optimizer(name, N_PARAMETERS, np.float64, 1e-2, **HYPER)
    p_fused = params.copy()
    for grad in grads:
        g = grad.copy()
        add_l2_regularization(g, p, factor, mask)
        optimizer.step(p, g)
        fused.regularised_step(p_fused, grad.copy(), factor, mask)
    expected = run_torch(name, params, grads, constant_rate, weight_decay=factor)
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p_fused, expected, rtol=1e-12, atol=1e-12)


# Learning-rate schedules

@pytest.mark.parametrize("epoch, expected", [
    (1, 0.2), (2, 0.2), (3, 0.2),
    (4, 0.1), (5, 0.1), (6, 0.1),
    (7, 0.05), (9, 0.05),
    (10, 0.025), (30, 0.2 * 0.5**9),
])
def test_piecewise_schedule_table(epoch, expected):
    # Powers of one half: every rate is exact in binary.
    assert learning_rate_at(epoch, 0.2, "piecewise", 0.5, 3) == expected


def test_piecewise_schedule_matlab_defaults():
    # MATLAB's defaults: drop by 0.1 every 10 epochs.
    rates = [learning_rate_at(epoch, 1e-2, "piecewise", 0.1, 10) for epoch in range(1, 32)]
    np.testing.assert_allclose(rates, [1e-2] * 10 + [1e-3] * 10 + [1e-4] * 10 + [1e-5],
                               rtol=1e-15)


def test_piecewise_schedule_drop_every_epoch():
    assert [learning_rate_at(epoch, 1.0, "piecewise", 0.5, 1) for epoch in (1, 2, 3)] == \
        [1.0, 0.5, 0.25]


def test_constant_schedule():
    assert {learning_rate_at(epoch, 3e-3, "none", 0.1, 1) for epoch in range(1, 50)} == {3e-3}


def test_schedule_errors():
    with pytest.raises(ValueError, match="valid schedules"):
        learning_rate_at(1, 1e-3, "cosine", 0.1, 10)
    with pytest.raises(ValueError, match="counted from 1"):
        learning_rate_at(0, 1e-3, "piecewise", 0.1, 10)
    with pytest.raises(ValueError, match="drop_period"):
        learning_rate_at(1, 1e-3, "piecewise", 0.1, 0)


# Gradient clipping

def grad_buffer(dtype=np.float64):
    """A flat gradient with two views: a (4, 3) weight, a (4,) bias."""
    rng = np.random.default_rng(2)
    flat = np.empty(16, dtype=dtype)
    views = {"weight": flat[:12].reshape(4, 3), "bias": flat[12:]}
    views["weight"][:] = 3 * rng.standard_normal((4, 3))  # norm ~ 10
    views["bias"][:] = 0.1 * rng.standard_normal(4)  # norm ~ 0.2
    return flat, views


def test_clip_l2norm_per_tensor():
    flat, views = grad_buffer()
    weight, bias = views["weight"].copy(), views["bias"].copy()
    threshold = 1.0
    assert np.linalg.norm(weight) > threshold > np.linalg.norm(bias)
    clip_gradients(flat, views, threshold, "l2norm")
    np.testing.assert_allclose(views["weight"], weight * threshold / np.linalg.norm(weight),
                               rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(views["weight"]), threshold, rtol=1e-14)
    np.testing.assert_array_equal(views["bias"], bias)


def test_clip_global_l2norm():
    flat, views = grad_buffer()
    before = flat.copy()
    threshold = 2.0
    norm = np.sqrt(np.sum(before**2))
    clip_gradients(flat, views, threshold, "global-l2norm")
    np.testing.assert_allclose(flat, before * threshold / norm, rtol=1e-14)
    # Below the threshold nothing changes.
    again = flat.copy()
    clip_gradients(flat, views, 10 * threshold, "global-l2norm")
    np.testing.assert_array_equal(flat, again)


def test_clip_global_l2norm_matches_torch():
    torch = pytest.importorskip("torch")
    flat, views = grad_buffer()
    tensors = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64))
               for v in views.values()]
    for tensor, view in zip(tensors, views.values()):
        tensor.grad = torch.from_numpy(view.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm=2.0)
    clip_gradients(flat, views, 2.0, "global-l2norm")
    # torch scales by max_norm / (norm + 1e-6), MATLAB (and we) by
    # max_norm / norm: with norm ~ 10 they differ by ~1e-7 relative.
    for tensor, view in zip(tensors, views.values()):
        np.testing.assert_allclose(view, tensor.grad.numpy(), rtol=1e-6)


def test_clip_absolute_value():
    flat, views = grad_buffer()
    before = flat.copy()
    clip_gradients(flat, views, 0.5, "absolute-value")
    np.testing.assert_array_equal(flat, np.minimum(np.maximum(before, -0.5), 0.5))
    assert np.any(np.abs(before) > 0.5) and np.any(np.abs(before) < 0.5)


def test_clip_absolute_value_matches_torch():
    torch = pytest.importorskip("torch")
    flat, views = grad_buffer()
    tensor = torch.nn.Parameter(torch.zeros(16, dtype=torch.float64))
    tensor.grad = torch.from_numpy(flat.copy())
    torch.nn.utils.clip_grad_value_([tensor], clip_value=0.5)
    clip_gradients(flat, views, 0.5, "absolute-value")
    np.testing.assert_array_equal(flat, tensor.grad.numpy())


@pytest.mark.parametrize("method", CLIP_METHODS)
def test_clip_writes_through_the_views(method):
    # The views and the flat vector must stay one buffer after clipping.
    flat, views = grad_buffer(np.float32)
    clip_gradients(flat, views, 0.5, method)
    np.testing.assert_array_equal(flat[:12].reshape(4, 3), views["weight"])
    np.testing.assert_array_equal(flat[12:], views["bias"])
    assert flat.dtype == np.float32


def test_clip_unknown_method():
    flat, views = grad_buffer()
    with pytest.raises(ValueError, match="valid methods"):
        clip_gradients(flat, views, 1.0, "l1norm")


# -- compiled one-pass kernels against their NumPy references ---------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_adam_is_bit_for_bit_the_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    n = 1003
    compiled = Adam(n, dtype, learning_rate=3e-3, beta1=0.85, beta2=0.99, epsilon=1e-7)
    reference = Adam(n, dtype, learning_rate=3e-3, beta1=0.85, beta2=0.99, epsilon=1e-7)
    p_compiled = rng.standard_normal(n).astype(dtype)
    p_reference = p_compiled.copy()
    for step in range(12):
        # Gradients over many magnitudes, some zero, to reach every rounding.
        grads = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 3, n)).astype(dtype)
        grads[::17] = 0
        compiled.learning_rate = reference.learning_rate = 3e-3 * 0.9**step
        compiled.step(p_compiled, grads)
        reference.reference_step(p_reference, grads)
        np.testing.assert_array_equal(p_compiled, p_reference)
        np.testing.assert_array_equal(compiled.first_moment, reference.first_moment)
        np.testing.assert_array_equal(compiled.second_moment, reference.second_moment)
    assert not np.array_equal(p_compiled, rng.standard_normal(n).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regularised_adam_step_is_bit_for_bit_the_two_calls(dtype):
    # One pass (Adam.regularised_step) = add_l2_regularization then step =
    # the NumPy reference, on the parameters, both moments and the
    # regularised gradients left behind.
    rng = np.random.default_rng(2)
    n, factor = 1003, 3e-2
    mask = rng.random(n) < 0.7
    fused, separate, reference = (Adam(n, dtype, learning_rate=3e-3, beta1=0.85, beta2=0.99,
                                       epsilon=1e-7) for _ in range(3))
    p_fused = rng.standard_normal(n).astype(dtype)
    p_separate, p_reference = p_fused.copy(), p_fused.copy()
    for step in range(12):
        grads = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 3, n)).astype(dtype)
        g_fused, g_separate, g_reference = grads.copy(), grads.copy(), grads.copy()
        fused.regularised_step(p_fused, g_fused, factor, mask)
        add_l2_regularization(g_separate, p_separate, factor, mask)
        separate.step(p_separate, g_separate)
        reference.reference_step(p_reference, g_reference, factor, mask)
        for got, want in ((p_fused, p_separate), (p_fused, p_reference),
                          (g_fused, g_separate), (g_fused, g_reference),
                          (fused.first_moment, separate.first_moment),
                          (fused.second_moment, reference.second_moment)):
            np.testing.assert_array_equal(got, want)
        assert not np.array_equal(g_fused[mask], grads[mask])
        np.testing.assert_array_equal(g_fused[~mask], grads[~mask])
    # A zero factor is a plain step.
    plain, zero = Adam(n, dtype, learning_rate=3e-3), Adam(n, dtype, learning_rate=3e-3)
    p_plain, p_zero = p_fused.copy(), p_fused.copy()
    plain.step(p_plain, grads)
    zero.regularised_step(p_zero, grads.copy(), 0.0, mask)
    np.testing.assert_array_equal(p_zero, p_plain)
    with pytest.raises(ValueError, match="boolean array"):
        Adam(n, dtype, 1e-3).regularised_step(p_plain, grads, factor, mask.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("factor", [1e-4, np.float64(3e-2)])
def test_compiled_l2_is_bit_for_bit_the_numpy_reference(dtype, factor):
    rng = np.random.default_rng(1)
    n = 501
    params = rng.standard_normal(n).astype(dtype)
    mask = rng.random(n) < 0.7
    grads = rng.standard_normal(n).astype(dtype)
    compiled, reference = grads.copy(), grads.copy()
    add_l2_regularization(compiled, params, factor, mask)
    add_l2_regularization_reference(reference, params, factor, mask)
    np.testing.assert_array_equal(compiled, reference)
    np.testing.assert_array_equal(compiled[~mask], grads[~mask])
    assert not np.array_equal(compiled[mask], grads[mask])
    # A strided gradient view takes the NumPy path, with the same result.
    wide = np.zeros(2 * n, dtype=dtype)
    wide[::2] = grads
    add_l2_regularization(wide[::2], params, factor, mask)
    np.testing.assert_array_equal(wide[::2], reference)
