"""Gate and state activations for the numba kernels.

numba lowers ``math.tanh``/``math.exp`` to scalar libm calls (about 80 ns per
element on the project machine) that block SIMD. In float32 we use a rational
approximation of tanh that LLVM vectorises (well under 1 ns per element), with
a maximum absolute error of about 3e-7 on the whole real line: below float32's
resolution for the values an LSTM produces. In float64 the kernels must agree
with the NumPy reference to 1e-9, so there we keep the exact ``math.tanh``.

The dispatch on dtype happens at compile time through ``numba.extending.overload``,
so one kernel source serves both precisions and each specialisation only
contains the code for its own dtype.
"""

import math

import numba
import numpy as np
from numba.extending import overload

# The float32 approximation is only accurate on [-9, 9]; outside, tanh(x)
# rounds to +-1 in float32 anyway.
_TANH_CLAMP = 9.0

# tanh(x) ~= x * P(x^2) / Q(x^2): a minimax rational approximation of degree
# (13, 6) in x, the form Eigen uses for its vectorised float tanh. Coefficients
# are from the published minimax fit (not tuned here); the test suite checks the
# error bound.
_P = (
    -2.76076847742355e-16,
    2.00018790482477e-13,
    -8.60467152213735e-11,
    5.12229709037114e-08,
    1.48572235717979e-05,
    6.37261928875436e-04,
    4.89352455891786e-03,
)
_Q = (
    1.19825839466702e-06,
    1.18534705686654e-04,
    2.26843463243900e-03,
    4.89352518554385e-03,
)


def act_tanh(x):
    """Hyperbolic tangent, vectorisable in float32 (pure-Python fallback)."""
    return np.tanh(x)


def act_sigmoid(x):
    """Logistic sigmoid as 0.5 + 0.5 tanh(x / 2) (pure-Python fallback)."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


# The fast-math flags of every numba kernel. nnan/ninf/nsz let LLVM use
# min/max instructions and vectorise the gate loops; contract fuses multiply
# and add. Left out on purpose: arcp and afn, under which LLVM divides by a
# reciprocal estimate in vectorised code but exactly in the scalar remainder
# of a loop, and reassoc. Without them an element's result does not depend
# on where a loop starts or stops, so kernels that cut the hidden units
# into parts (``numba_lstm``'s cooperative forward) give the same bits as
# kernels that run whole rows. The exact division cost nothing measurable:
# a loop over W1's gates took 150 us with it, 194 us with the estimate and
# its Newton step, and the W1/W2 kernels' times stayed within the noise.
FASTMATH = {"nnan", "ninf", "nsz", "contract"}  # a set: numba takes no frozenset

_JIT_OPTIONS = {"fastmath": FASTMATH, "error_model": "numpy"}


@overload(act_tanh, jit_options=_JIT_OPTIONS)
def _act_tanh_impl(x):
    if x == numba.float32:
        f32 = numba.float32
        clamp = f32(_TANH_CLAMP)
        one = f32(1.0)
        p0, p1, p2, p3, p4, p5, p6 = (f32(v) for v in _P)
        q0, q1, q2, q3 = (f32(v) for v in _Q)

        def tanh_float32(x):
            x = min(max(x, -clamp), clamp)
            x2 = x * x
            p = x2 * p0 + p1
            p = x2 * p + p2
            p = x2 * p + p3
            p = x2 * p + p4
            p = x2 * p + p5
            p = x2 * p + p6
            q = x2 * q0 + q1
            q = x2 * q + q2
            q = x2 * q + q3
            # The fit overshoots 1 by an ulp near the clamp; |tanh| > 1 would
            # make 1 - tanh^2 negative in the backward pass.
            return min(max(x * p / q, -one), one)

        return tanh_float32

    def tanh_exact(x):
        return math.tanh(x)

    return tanh_exact


@overload(act_sigmoid, jit_options=_JIT_OPTIONS)
def _act_sigmoid_impl(x):
    # One tanh instead of exp + division keeps the sigmoid on the vectorised path.
    # The constant is typed like x so that float32 arithmetic stays float32.
    half = x(0.5)

    def sigmoid(x):
        return half + half * act_tanh(half * x)

    return sigmoid


# Activation choices, passed to the kernels as small integers so that one
# compiled kernel serves every variant (the branch is loop-invariant, and LLVM
# hoists it out of the gate loop).
SIGMOID, HARD_SIGMOID = 0, 1
TANH, SOFTSIGN = 0, 1
GATE_ACTIVATIONS = {"sigmoid": SIGMOID, "hard-sigmoid": HARD_SIGMOID}
STATE_ACTIVATIONS = {"tanh": TANH, "softsign": SOFTSIGN}


def gate_activation(x, kind):
    """Gate activation: sigmoid, or MATLAB's/Keras's hard sigmoid clip(0.2 x + 0.5, 0, 1)."""
    raise NotImplementedError("only callable from numba-compiled code")


def gate_derivative(y, kind):
    """Derivative of :func:`gate_activation`, from its output ``y``."""
    raise NotImplementedError("only callable from numba-compiled code")


def state_activation(x, kind):
    """State activation: tanh, or softsign x / (1 + |x|)."""
    raise NotImplementedError("only callable from numba-compiled code")


def state_derivative(y, kind):
    """Derivative of :func:`state_activation`, from its output ``y``."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(gate_activation, jit_options=_JIT_OPTIONS)
def _gate_activation_impl(x, kind):
    zero, one, slope, half = x(0.0), x(1.0), x(0.2), x(0.5)

    def impl(x, kind):
        if kind == HARD_SIGMOID:
            return min(max(slope * x + half, zero), one)
        return act_sigmoid(x)

    return impl


@overload(gate_derivative, jit_options=_JIT_OPTIONS)
def _gate_derivative_impl(y, kind):
    zero, one, slope = y(0.0), y(1.0), y(0.2)

    def impl(y, kind):
        if kind == HARD_SIGMOID:
            return slope if zero < y < one else zero
        return y * (one - y)

    return impl


@overload(state_activation, jit_options=_JIT_OPTIONS)
def _state_activation_impl(x, kind):
    one = x(1.0)

    def impl(x, kind):
        if kind == SOFTSIGN:
            return x / (one + abs(x))
        return act_tanh(x)

    return impl


@overload(state_derivative, jit_options=_JIT_OPTIONS)
def _state_derivative_impl(y, kind):
    one = y(1.0)

    def impl(y, kind):
        if kind == SOFTSIGN:
            # d/dx x / (1 + |x|) = 1 / (1 + |x|)^2 = (1 - |y|)^2
            return (one - abs(y)) * (one - abs(y))
        return one - y * y

    return impl
