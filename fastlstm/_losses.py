"""Losses on the output layer: value and gradient with respect to its input.

A loss sees one row per target: a sequence (sequence-to-one tasks) or a time
step (sequence-to-sequence tasks). It is the weighted mean of the rows'
losses, sum(w_i l_i) / sum(w_i), as ``torch.nn.CrossEntropyLoss(weight=...)``
normalises. Unweighted training uses weights of one through the same code,
so that all-ones ``sample_weight`` reproduces the unweighted model exactly;
with unit weights the losses are ``torch.nn.CrossEntropyLoss`` and
``torch.nn.MSELoss`` with ``reduction="mean"``.
"""

import numpy as np

from ._loss_kernels import cross_entropy_rows, head_cross_entropy, head_squared_error


def softmax(logits):
    """Row-wise softmax, shifted by the row maximum for stability."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(logits, targets, weights):
    """Weighted mean cross-entropy of integer class targets.

    One compiled pass (``_loss_kernels.cross_entropy_rows``) where the
    arrays suit it, which they do in training; otherwise, and as the
    readable definition, :func:`cross_entropy_reference`.

    Parameters
    ----------
    logits : ndarray of shape (n_rows, n_classes)
    targets : ndarray of shape (n_rows,), int
    weights : ndarray of shape (n_rows,)

    Returns
    -------
    loss : float
    d_logits : ndarray of shape (n_rows, n_classes)
    """
    if (logits.dtype in (np.float32, np.float64) and weights.dtype == logits.dtype
            and targets.dtype == np.intp and logits.ndim == 2 and logits.shape[1] > 0):
        d_logits = np.empty(logits.shape, dtype=logits.dtype)
        loss = cross_entropy_rows(np.ascontiguousarray(logits), np.ascontiguousarray(targets),
                                  np.ascontiguousarray(weights), d_logits)
        return loss, d_logits
    return cross_entropy_reference(logits, targets, weights)


def cross_entropy_reference(logits, targets, weights):
    """:func:`cross_entropy` in NumPy (softmax in float64): the reference.

    Takes and returns what :func:`cross_entropy` does, for any integer
    targets and float weights.
    """
    rows = np.arange(logits.shape[0])
    proba = softmax(logits.astype(np.float64))
    losses = -np.log(np.maximum(proba[rows, targets], np.finfo(np.float64).tiny))
    total_weight = weights.sum(dtype=np.float64)
    loss = float(np.dot(weights, losses) / total_weight)
    proba[rows, targets] -= 1.0
    proba *= (weights / total_weight)[:, np.newaxis]
    return loss, proba.astype(logits.dtype)


def mean_squared_error(predictions, targets, weights):
    """Weighted mean over rows of each row's mean squared error.

    Parameters
    ----------
    predictions : ndarray of shape (n_rows, n_outputs)
    targets : ndarray of shape (n_rows, n_outputs)
    weights : ndarray of shape (n_rows,)

    Returns
    -------
    loss : float
    d_predictions : ndarray of shape (n_rows, n_outputs)
    """
    residual = predictions - targets
    n_outputs = residual.shape[1]
    total_weight = weights.sum(dtype=np.float64)
    losses = np.mean(np.square(residual, dtype=np.float64), axis=1)
    loss = float(np.dot(weights, losses) / total_weight)
    scale = (2.0 / (n_outputs * total_weight)) * weights
    return loss, (residual * scale[:, np.newaxis].astype(residual.dtype))


def head_loss_and_gradients(loss, features, weight, bias, targets, weights, rows, d_features,
                            d_weight, d_bias):
    """The output layer's forward pass, the loss, and the gradients of both.

    The part of a training step between the recurrent layers' forward and
    backward passes. For :func:`cross_entropy` and
    :func:`mean_squared_error` on arrays that suit it, which they do in
    training, it is one compiled call (``_loss_kernels.head_cross_entropy``,
    ``head_squared_error``). It runs between the two phases of a step, on
    the calling thread while the other threads wait, with caches cold from
    the kernels: there the ten NumPy operations of
    :func:`head_loss_and_gradients_reference` cost 5-50 us each, and the
    calling thread's time outside the phases of a W1 step (two threads)
    fell from 0.41-0.44 ms to 0.25-0.32 ms with this call (medians of 300
    steps; steps 0.93x as long, W2's 0.955x, paired medians of 16
    alternated processes).

    Parameters
    ----------
    loss : callable
        ``loss(outputs, targets, weights) -> (value, d_outputs)``.
    features : ndarray of shape (n_rows, n_features)
    weight : ndarray of shape (n_outputs, n_features)
    bias : ndarray of shape (n_outputs,)
    targets : ndarray of shape (n_targets, ...)
        All the targets, as ``loss`` takes them.
    weights : ndarray of shape (n_targets,)
    rows : ndarray of shape (n_rows,), int
        The target (and weight) of each row of ``features``.
    d_features : ndarray of shape (n_rows, n_features)
        OUT: the gradient with respect to ``features``.
    d_weight : ndarray of shape (n_outputs, n_features)
        OUT: the gradient with respect to ``weight``.
    d_bias : ndarray of shape (n_outputs,)
        OUT: the gradient with respect to ``bias``.

    Returns
    -------
    value : float or None
        The loss; None, with nothing written, if the rows' weights sum to zero.
    """
    kernel = _HEAD_KERNELS.get(loss)
    dtype = features.dtype
    if (kernel is not None and dtype in (np.float32, np.float64) and rows.dtype == np.intp
            and all(a.dtype == dtype and a.flags.c_contiguous
                    for a in (weight, bias, weights, d_features, d_weight, d_bias))
            and (targets.dtype == np.intp if loss is cross_entropy else targets.dtype == dtype)):
        scores = np.empty((features.shape[0], weight.shape[0]), dtype)
        return kernel(np.ascontiguousarray(features), weight, bias,
                      np.ascontiguousarray(targets), weights, np.ascontiguousarray(rows), scores,
                      d_features, d_weight, d_bias)
    return head_loss_and_gradients_reference(loss, features, weight, bias, targets, weights,
                                             rows, d_features, d_weight, d_bias)


def head_loss_and_gradients_reference(loss, features, weight, bias, targets, weights, rows,
                                      d_features, d_weight, d_bias):
    """:func:`head_loss_and_gradients` in NumPy, for any ``loss``: the reference."""
    row_weights = weights[rows]
    if row_weights.sum() == 0:
        return None
    outputs = features @ weight.T + bias
    value, d_outputs = loss(outputs, targets[rows], row_weights)
    d_features[:] = d_outputs @ weight
    d_weight[:] = d_outputs.T @ features
    d_bias[:] = d_outputs.sum(axis=0)
    return float(value)


_HEAD_KERNELS = {cross_entropy: head_cross_entropy, mean_squared_error: head_squared_error}
