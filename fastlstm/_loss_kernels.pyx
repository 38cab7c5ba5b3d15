# cython: language_level=3
"""One-pass cross-entropy for the training step (see ``_losses.py``).

The loss of a small network's mini-batch is a few hundred numbers (27 rows
of 9 logits for a Japanese-Vowels-sized batch), and its NumPy form,
``_losses.cross_entropy_reference``, makes about fifteen array operations of
them: 14 us per W1 training step (best of repeated calls), against 3.5 us
for ``_losses.cross_entropy`` with this loop, which does the softmax, the
row's loss and its gradient in one pass per row. The arithmetic is the
reference's, in float64 (the row maximum subtracted, ``exp``, the row sum,
the quotient), so the two agree to float64 rounding (the C library's ``exp``
and NumPy's may differ in the last bit).
"""

from libc.math cimport exp, log

ctypedef fused floating:
    float
    double

# The smallest positive normal float64 (np.finfo(np.float64).tiny): the
# probability of the target class is clipped to it before its log.
cdef double TINY = 2.2250738585072014e-308


def cross_entropy_rows(const floating[:, ::1] logits, const Py_ssize_t[::1] targets,
                       const floating[::1] weights, floating[:, ::1] d_logits):
    """Weighted mean cross-entropy and its gradient, as ``cross_entropy_reference``.

    Parameters
    ----------
    logits : ndarray of shape (n_rows, n_classes)
    targets : ndarray of shape (n_rows,), intp
        Class indices, each in ``[0, n_classes)`` (checked by the caller).
    weights : ndarray of shape (n_rows,)
        Their sum must be positive (checked by the caller).
    d_logits : ndarray of shape (n_rows, n_classes)
        OUT: the gradient of the loss with respect to ``logits``.

    Returns
    -------
    loss : float
    """
    cdef Py_ssize_t n_rows = logits.shape[0], n_classes = logits.shape[1]
    cdef Py_ssize_t i, j
    cdef double total_weight = 0.0, weighted_loss = 0.0
    cdef double row_max, row_sum, probability, scale
    if not (targets.shape[0] == n_rows and weights.shape[0] == n_rows
            and d_logits.shape[0] == n_rows and d_logits.shape[1] == n_classes):
        raise ValueError("cross_entropy_rows: logits, targets, weights and d_logits disagree "
                         "in shape.")
    with nogil:
        for i in range(n_rows):
            total_weight += weights[i]
        for i in range(n_rows):
            row_max = logits[i, 0]
            for j in range(1, n_classes):
                if logits[i, j] > row_max:
                    row_max = logits[i, j]
            row_sum = 0.0
            for j in range(n_classes):
                row_sum += exp(<double>logits[i, j] - row_max)
            scale = weights[i] / total_weight
            for j in range(n_classes):
                probability = exp(<double>logits[i, j] - row_max) / row_sum
                if j == targets[i]:
                    # As np.maximum: a NaN stays NaN (training then stops on it).
                    weighted_loss -= weights[i] * log(TINY if probability < TINY else probability)
                    probability -= 1.0
                d_logits[i, j] = <floating>(probability * scale)
    return weighted_loss / total_weight
