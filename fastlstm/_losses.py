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

from ._loss_kernels import cross_entropy_rows


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
