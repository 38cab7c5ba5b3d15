# cython: language_level=3
# distutils: extra_compile_args = -ffp-contract=off -fno-math-errno -fno-trapping-math
"""One-pass kernels for the optimiser step (see ``_optim.py``).

A training step of a small network spends a noticeable share of its time in
the optimiser: NumPy's Adam makes nine passes over the parameter vector and
the masked L2 term two. These loops make one pass each (Adam's can take the
L2 term in its own pass) and give bit for bit the NumPy results, which stay
in ``_optim.py`` as the readable reference (``Adam.reference_step``,
``add_l2_regularization_reference``): every operation is done in the
array's dtype and rounded where NumPy rounds it. Adam's scalars come in that
dtype too: computing its last three operations in float64, as it once did,
doubled a float32 step (32 instead of 15.5 us for W1's 92,000 parameters,
in cache). ``-ffp-contract=off`` keeps the compiler from fusing a multiply
and an add into one FMA, which would round once instead of twice;
``-fno-math-errno`` lets it vectorise ``sqrt`` (still the correctly rounded
IEEE square root, only without setting errno for negative inputs, which
cannot occur here); ``-fno-trapping-math`` lets it compute the L2 update on
masked-out entries and discard it, which is what makes that loop vectorise
(it changes no value). The loops themselves are in ``_optim_loops.h``.
"""


ctypedef fused floating:
    float
    double


cdef extern from "_optim_loops.h" nogil:
    void fastlstm_adam_float(Py_ssize_t n, float *params, float *grads, float *m, float *v,
                             float beta1, float one_minus_beta1, float beta2,
                             float one_minus_beta2, float step_size, float epsilon_hat,
                             float l2_factor, const unsigned char *l2_mask)
    void fastlstm_adam_double(Py_ssize_t n, double *params, double *grads, double *m,
                              double *v, double beta1, double one_minus_beta1, double beta2,
                              double one_minus_beta2, double step_size, double epsilon_hat,
                              double l2_factor, const unsigned char *l2_mask)
    void fastlstm_masked_l2_float(Py_ssize_t n, float *grads, const float *params,
                                  float factor, const unsigned char *mask)
    void fastlstm_masked_l2_double(Py_ssize_t n, double *grads, const double *params,
                                   double factor, const unsigned char *mask)


def adam_update(floating[::1] params, floating[::1] grads, floating[::1] first_moment,
                floating[::1] second_moment, floating beta1, floating one_minus_beta1,
                floating beta2, floating one_minus_beta2, floating step_size,
                floating epsilon_hat, floating l2_factor=0, const unsigned char[::1] l2_mask=None):
    """One Adam step in place, as ``_optim.Adam.reference_step``.

    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g**2``,
    ``p -= step_size * (m / (sqrt(v) + epsilon_hat))``, with the bias
    corrections folded into ``step_size`` and ``epsilon_hat``. With
    ``l2_mask``, first ``g += l2_factor * p`` where ``l2_mask`` (as
    :func:`add_masked_l2`, written back to ``grads``), in the same pass;
    without it ``grads`` is only read. The loop is in ``_optim_loops.h``.
    """
    cdef Py_ssize_t n = params.shape[0]
    cdef const unsigned char *mask = NULL
    if not (grads.shape[0] == n and first_moment.shape[0] == n and second_moment.shape[0] == n):
        raise ValueError("adam_update: params, grads and the moments must have one length.")
    if l2_mask is not None:
        if l2_mask.shape[0] != n:
            raise ValueError("adam_update: l2_mask must have the length of params.")
        if n > 0:
            mask = &l2_mask[0]
    if n == 0:
        return
    with nogil:
        if floating is float:
            fastlstm_adam_float(n, &params[0], &grads[0], &first_moment[0], &second_moment[0],
                                beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                                epsilon_hat, l2_factor, mask)
        else:
            fastlstm_adam_double(n, &params[0], &grads[0], &first_moment[0], &second_moment[0],
                                 beta1, one_minus_beta1, beta2, one_minus_beta2, step_size,
                                 epsilon_hat, l2_factor, mask)


def add_masked_l2(floating[::1] grads, const floating[::1] params, floating factor,
                  const unsigned char[::1] mask):
    """``grads[i] += factor * params[i]`` where ``mask[i]``, in place (``_optim_loops.h``)."""
    cdef Py_ssize_t n = grads.shape[0]
    if not (params.shape[0] == n and mask.shape[0] == n):
        raise ValueError("add_masked_l2: grads, params and mask must have one length.")
    if n == 0:
        return
    with nogil:
        if floating is float:
            fastlstm_masked_l2_float(n, &grads[0], &params[0], factor, &mask[0])
        else:
            fastlstm_masked_l2_double(n, &grads[0], &params[0], factor, &mask[0])
