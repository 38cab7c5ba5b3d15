# cython: language_level=3
"""Compiled losses, and the output layer around them, for the training step
(see ``_losses.py``).

The loss of a small network's mini-batch is a few hundred numbers (27 rows
of 9 logits for a Japanese-Vowels-sized batch), and its NumPy form,
``_losses.cross_entropy_reference``, makes about fifteen array operations of
them: 14 us per W1 training step (best of repeated calls), against 3.5 us
for ``_losses.cross_entropy`` with this loop, which does the softmax, the
row's loss and its gradient in one pass per row. The arithmetic is the
reference's, in float64 (the row maximum subtracted, ``exp``, the row sum,
the quotient), so the two agree to float64 rounding (the C library's ``exp``
and NumPy's may differ in the last bit).

The output layer's whole step (its affine map, the loss, the gradients of
both) is one call too, :func:`head_cross_entropy` and
:func:`head_squared_error`: in a training step it runs between two phases of
large kernels, with cold caches, where each of the ten NumPy operations it
replaces cost 5-50 us (see ``_losses.head_loss_and_gradients``).
"""

from cython cimport floating
from libc.math cimport exp, log
from libc.stdlib cimport free, malloc

from fastlstm._kernels._gemm cimport sgemm_enabled as own_sgemm_enabled
from fastlstm._kernels._gemm cimport stranspose as own_transpose
from fastlstm._kernels._row_major cimport gemm

# The smallest positive normal float64 (np.finfo(np.float64).tiny): the
# probability of the target class is clipped to it before its log.
cdef double TINY = 2.2250738585072014e-308
# Rows of up to this many classes keep their exponentials between passes.
cdef enum:
    EXP_ROW = 64


cdef double _cross_entropy(Py_ssize_t n_rows, Py_ssize_t n_classes, const floating *logits,
                           const Py_ssize_t *targets, const floating *weights,
                           const Py_ssize_t *rows, double total_weight,
                           floating *d_logits) noexcept nogil:
    """Weighted mean cross-entropy of row-major ``logits``; its gradient to ``d_logits``.

    Row ``i`` has the target ``targets[r]`` and the weight ``weights[r]``,
    where ``r`` is ``rows[i]`` (``i`` itself if ``rows`` is NULL).
    ``d_logits`` may be ``logits``: each entry is read before it is written.
    """
    cdef Py_ssize_t i, j, r
    cdef double weighted_loss = 0.0, row_max, row_sum, probability, scale
    # Each row's exponentials, kept for the second pass where they fit:
    # exp was most of the loop's time (16.7 us of 64 rows of 10 classes).
    cdef double row_exp[EXP_ROW]
    cdef bint keep = n_classes <= EXP_ROW
    cdef const floating *row
    cdef floating *d_row
    for i in range(n_rows):
        r = i if rows == NULL else rows[i]
        row = logits + i * n_classes
        d_row = d_logits + i * n_classes
        row_max = row[0]
        for j in range(1, n_classes):
            if row[j] > row_max:
                row_max = row[j]
        row_sum = 0.0
        for j in range(n_classes):
            probability = exp(<double>row[j] - row_max)
            if keep:
                row_exp[j] = probability
            row_sum += probability
        scale = weights[r] / total_weight
        for j in range(n_classes):
            probability = (row_exp[j] if keep else exp(<double>row[j] - row_max)) / row_sum
            if j == targets[r]:
                # As np.maximum: a NaN stays NaN (training then stops on it).
                weighted_loss -= weights[r] * log(TINY if probability < TINY else probability)
                probability -= 1.0
            d_row[j] = <floating>(probability * scale)
    return weighted_loss / total_weight


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
    cdef Py_ssize_t n_rows = logits.shape[0], n_classes = logits.shape[1], i
    cdef double total_weight = 0.0, loss
    if not (targets.shape[0] == n_rows and weights.shape[0] == n_rows
            and d_logits.shape[0] == n_rows and d_logits.shape[1] == n_classes):
        raise ValueError("cross_entropy_rows: logits, targets, weights and d_logits disagree "
                         "in shape.")
    if n_classes == 0:
        raise ValueError("cross_entropy_rows: there must be at least one class.")
    if n_rows == 0:
        return float("nan")  # the mean of no rows
    with nogil:
        for i in range(n_rows):
            total_weight += weights[i]
        loss = _cross_entropy(n_rows, n_classes, &logits[0, 0], &targets[0], &weights[0], NULL,
                              total_weight, &d_logits[0, 0])
    return loss


cdef void _matmul(bint trans_a, bint trans_b, int m, int n, int k, const floating *a, int lda,
                  const floating *b, int ldb, bint accumulate, floating *c,
                  int ldc) noexcept nogil:
    """Row-major ``c = [c +] op(a) @ op(b)``, ``m, n, k > 0`` (``_row_major.gemm``).

    With ``op(b) = b^T`` in float32, on a transposed copy of ``b`` where the
    own GEMM runs, since it takes ``b`` untransposed only: with it a W1
    step's output layer call (27 rows, 200 features, 9 classes) took 11.0
    instead of 17.3 us with OpenBLAS's products, W2's (64 rows, 64
    features, 10 classes) 21.9 instead of 26.7 us (medians of 20 alternated
    blocks, hot caches).
    """
    cdef floating beta = 1 if accumulate else 0
    cdef float *b_transposed
    if floating is float:
        if trans_b and own_sgemm_enabled():
            b_transposed = <float *> malloc(k * n * sizeof(float))
            if b_transposed != NULL:
                if own_transpose(n, k, b, ldb, b_transposed, n) == 0:
                    gemm(trans_a, False, m, n, k, 1, a, lda, b_transposed, n, beta, c, ldc)
                    free(b_transposed)
                    return
                free(b_transposed)
    gemm(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)


cdef void _affine(const floating[:, ::1] features, const floating[:, ::1] weight,
                  const floating[::1] bias, floating[:, ::1] scores) noexcept nogil:
    """``scores = features @ weight.T + bias``."""
    cdef Py_ssize_t i, j
    cdef int n_rows = scores.shape[0], n_outputs = scores.shape[1], n_features = features.shape[1]
    for i in range(n_rows):
        for j in range(n_outputs):
            scores[i, j] = bias[j]
    _matmul(False, True, n_rows, n_outputs, n_features, &features[0, 0], n_features,
            &weight[0, 0], n_features, True, &scores[0, 0], n_outputs)


cdef void _affine_backward(const floating[:, ::1] d_scores, const floating[:, ::1] features,
                           const floating[:, ::1] weight, floating[:, ::1] d_features,
                           floating[:, ::1] d_weight, floating[::1] d_bias) noexcept nogil:
    """The gradients of :func:`_affine` from those of its scores."""
    cdef Py_ssize_t i, j
    cdef int n_rows = d_scores.shape[0], n_outputs = d_scores.shape[1]
    cdef int n_features = features.shape[1]
    _matmul(False, False, n_rows, n_features, n_outputs, &d_scores[0, 0], n_outputs,
            &weight[0, 0], n_features, False, &d_features[0, 0], n_features)
    _matmul(True, False, n_outputs, n_features, n_rows, &d_scores[0, 0], n_outputs,
            &features[0, 0], n_features, False, &d_weight[0, 0], n_features)
    for j in range(n_outputs):
        d_bias[j] = 0
    for i in range(n_rows):
        for j in range(n_outputs):
            d_bias[j] += d_scores[i, j]


cdef _check_head(const floating[:, ::1] features, const floating[:, ::1] weight,
                 const floating[::1] bias, Py_ssize_t n_targets, const floating[::1] weights,
                 const Py_ssize_t[::1] rows, floating[:, ::1] scores,
                 floating[:, ::1] d_features, floating[:, ::1] d_weight, floating[::1] d_bias):
    """Raise ValueError unless the output layer's arrays agree in shape."""
    cdef Py_ssize_t n_rows = features.shape[0], n_features = features.shape[1]
    cdef Py_ssize_t n_outputs = weight.shape[0], i
    if not (n_rows > 0 and n_features > 0 and n_outputs > 0
            and weight.shape[1] == n_features and bias.shape[0] == n_outputs
            and rows.shape[0] == n_rows and weights.shape[0] == n_targets
            and scores.shape[0] == n_rows and scores.shape[1] == n_outputs
            and d_features.shape[0] == n_rows and d_features.shape[1] == n_features
            and d_weight.shape[0] == n_outputs and d_weight.shape[1] == n_features
            and d_bias.shape[0] == n_outputs):
        raise ValueError("The output layer's features, weights, targets and gradient buffers "
                         "disagree in shape (or one is empty).")
    for i in range(n_rows):
        if not 0 <= rows[i] < n_targets:
            raise ValueError(f"Target row {rows[i]} is out of range for {n_targets} targets.")


cdef double _total_weight(const floating[::1] weights, const Py_ssize_t[::1] rows) noexcept nogil:
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in range(rows.shape[0]):
        total += weights[rows[i]]
    return total


def head_cross_entropy(const floating[:, ::1] features, const floating[:, ::1] weight,
                       const floating[::1] bias, const Py_ssize_t[::1] targets,
                       const floating[::1] weights, const Py_ssize_t[::1] rows,
                       floating[:, ::1] scores, floating[:, ::1] d_features,
                       floating[:, ::1] d_weight, floating[::1] d_bias):
    """The output layer and the cross-entropy, forward and backward, in one call.

    As ``_losses.head_loss_and_gradients_reference`` with ``cross_entropy``,
    and with its arguments: ``targets`` are intp class indices, each in
    ``[0, n_classes)`` (checked by the caller), ``rows`` intp; ``scores``,
    of shape (n_rows, n_classes), is scratch (the logits, then their
    gradient). Returns the loss, or None, with nothing written, if the
    rows' weights sum to zero.
    """
    cdef double total_weight, loss
    _check_head(features, weight, bias, targets.shape[0], weights, rows, scores, d_features,
                d_weight, d_bias)
    total_weight = _total_weight(weights, rows)
    if total_weight == 0:
        return None
    with nogil:
        _affine(features, weight, bias, scores)
        loss = _cross_entropy(scores.shape[0], scores.shape[1], &scores[0, 0], &targets[0],
                              &weights[0], &rows[0], total_weight, &scores[0, 0])
        _affine_backward(scores, features, weight, d_features, d_weight, d_bias)
    return loss


def head_squared_error(const floating[:, ::1] features, const floating[:, ::1] weight,
                       const floating[::1] bias, const floating[:, ::1] targets,
                       const floating[::1] weights, const Py_ssize_t[::1] rows,
                       floating[:, ::1] scores, floating[:, ::1] d_features,
                       floating[:, ::1] d_weight, floating[::1] d_bias):
    """The output layer and the mean squared error, forward and backward, in one call.

    As ``_losses.head_loss_and_gradients_reference`` with
    ``mean_squared_error``; ``targets`` is of shape (n_targets, n_outputs),
    the rest as :func:`head_cross_entropy` takes them.
    """
    cdef double total_weight, loss = 0.0, row_loss, scale
    cdef floating residual
    cdef Py_ssize_t i, j, r, n_outputs = weight.shape[0]
    _check_head(features, weight, bias, targets.shape[0], weights, rows, scores, d_features,
                d_weight, d_bias)
    if targets.shape[1] != n_outputs:
        raise ValueError(f"The targets have {targets.shape[1]} columns; the output layer has "
                         f"{n_outputs} outputs.")
    total_weight = _total_weight(weights, rows)
    if total_weight == 0:
        return None
    with nogil:
        _affine(features, weight, bias, scores)
        for i in range(scores.shape[0]):
            r = rows[i]
            # As the reference: the residual in the dtype, its square and
            # the row's mean in float64, the gradient's scale rounded to the
            # dtype before it multiplies the residual.
            row_loss = 0.0
            scale = (2.0 / (n_outputs * total_weight)) * weights[r]
            for j in range(n_outputs):
                residual = scores[i, j] - targets[r, j]
                row_loss += <double>residual * <double>residual
                scores[i, j] = residual * <floating>scale
            loss += weights[r] * (row_loss / n_outputs)
        _affine_backward(scores, features, weight, d_features, d_weight, d_bias)
    return loss / total_weight
