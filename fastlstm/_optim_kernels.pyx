# cython: language_level=3
# distutils: extra_compile_args = -ffp-contract=off -fno-math-errno
"""One-pass kernels for the optimiser step (see ``_optim.py``).

A training step of a small network spends a noticeable share of its time in
the optimiser: NumPy's Adam makes nine passes over the parameter vector and
the masked L2 term two. These loops make one pass each and give bit for bit
the NumPy results, which stay in ``_optim.py`` as the readable reference
(``Adam.reference_step``, ``add_l2_regularization_reference``): every
operation is rounded to the array's dtype where NumPy rounds it, and where
NumPy computes in float64 (a float64 scalar against a float32 array) so do
these. ``-ffp-contract=off`` keeps the compiler from fusing a multiply and
an add into one FMA, which would round once instead of twice;
``-fno-math-errno`` lets it vectorise ``sqrt`` (still the correctly rounded
IEEE square root, only without setting errno for negative inputs, which
cannot occur here).
"""

from libc.math cimport sqrt, sqrtf

ctypedef fused floating:
    float
    double


def adam_update(floating[::1] params, const floating[::1] grads, floating[::1] first_moment,
                floating[::1] second_moment, floating beta1, floating one_minus_beta1,
                floating beta2, floating one_minus_beta2, double step_size,
                double epsilon_hat):
    """One Adam step in place, as ``_optim.Adam.reference_step``.

    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g**2``,
    ``p -= step_size * m / (sqrt(v) + epsilon_hat)``, with the bias
    corrections folded into ``step_size`` and ``epsilon_hat`` (float64).
    """
    cdef Py_ssize_t i, n = params.shape[0]
    cdef floating g, m, v, root, denominator, ratio
    if not (grads.shape[0] == n and first_moment.shape[0] == n and second_moment.shape[0] == n):
        raise ValueError("adam_update: params, grads and the moments must have one length.")
    with nogil:
        for i in range(n):
            g = grads[i]
            m = first_moment[i] * beta1 + g * one_minus_beta1
            v = second_moment[i] * beta2 + (g * g) * one_minus_beta2
            first_moment[i] = m
            second_moment[i] = v
            if floating is float:
                root = sqrtf(v)
            else:
                root = sqrt(v)
            denominator = <floating>(<double>root + epsilon_hat)
            ratio = m / denominator
            params[i] = params[i] - <floating>(<double>ratio * step_size)


def add_masked_l2(floating[::1] grads, const floating[::1] params, floating factor,
                  const unsigned char[::1] mask):
    """``grads[i] += factor * params[i]`` where ``mask[i]``, in place."""
    cdef Py_ssize_t i, n = grads.shape[0]
    if not (params.shape[0] == n and mask.shape[0] == n):
        raise ValueError("add_masked_l2: grads, params and mask must have one length.")
    with nogil:
        for i in range(n):
            if mask[i]:
                grads[i] = grads[i] + params[i] * factor
