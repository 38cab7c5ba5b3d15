"""Losses on the output layer: value and gradient with respect to its input.

Both are means over the mini-batch, as ``torch.nn.CrossEntropyLoss`` and
``torch.nn.MSELoss`` with their default ``reduction="mean"``.
"""

import numpy as np


def softmax(logits):
    """Row-wise softmax, shifted by the row maximum for stability."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cross_entropy(logits, targets):
    """Mean cross-entropy of integer class targets.

    Parameters
    ----------
    logits : ndarray of shape (batch_size, n_classes)
    targets : ndarray of shape (batch_size,), int

    Returns
    -------
    loss : float
    d_logits : ndarray of shape (batch_size, n_classes)
    """
    batch_size = logits.shape[0]
    proba = softmax(logits.astype(np.float64))
    rows = np.arange(batch_size)
    loss = -np.mean(np.log(np.maximum(proba[rows, targets], np.finfo(np.float64).tiny)))
    proba[rows, targets] -= 1.0
    return float(loss), (proba / batch_size).astype(logits.dtype)


def mean_squared_error(predictions, targets):
    """Mean over all elements of the squared error.

    Parameters
    ----------
    predictions : ndarray of shape (batch_size, n_outputs)
    targets : ndarray of shape (batch_size, n_outputs)

    Returns
    -------
    loss : float
    d_predictions : ndarray of shape (batch_size, n_outputs)
    """
    residual = predictions - targets
    loss = float(np.mean(np.square(residual, dtype=np.float64)))
    return loss, (2.0 / residual.size) * residual
