"""Optimisers and gradient clipping on the flat parameter vector.

Parameters and gradients are each one contiguous vector (see ``_weights``),
so an update is a few in-place NumPy operations whatever the network's shape.
"""

import numpy as np

OPTIMIZERS = ("adam", "sgdm")
CLIP_METHODS = ("l2norm", "global-l2norm", "absolute-value")


class Adam:
    """Adam (Kingma & Ba, 2015) with bias correction, as MATLAB's and torch's.

    Parameters
    ----------
    n_parameters : int
    dtype : numpy dtype
    learning_rate : float
    beta1, beta2, epsilon : float
    """

    def __init__(self, n_parameters, dtype, learning_rate, beta1=0.9, beta2=0.999,
                 epsilon=1e-8):
        self.learning_rate = learning_rate
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.first_moment = np.zeros(n_parameters, dtype=dtype)
        self.second_moment = np.zeros(n_parameters, dtype=dtype)
        self.n_steps = 0
        self._scratch = np.empty(n_parameters, dtype=dtype)

    def step(self, params, grads):
        """Update ``params`` in place from ``grads``."""
        self.n_steps += 1
        m, v, scratch = self.first_moment, self.second_moment, self._scratch
        m *= self.beta1
        m += (1 - self.beta1) * grads
        v *= self.beta2
        np.multiply(grads, grads, out=scratch)
        v += (1 - self.beta2) * scratch
        step_size = self.learning_rate * np.sqrt(1 - self.beta2**self.n_steps) / (
            1 - self.beta1**self.n_steps
        )
        epsilon_hat = self.epsilon * np.sqrt(1 - self.beta2**self.n_steps)
        # params -= step_size * m / (sqrt(v) + epsilon_hat), without temporaries
        np.sqrt(v, out=scratch)
        scratch += epsilon_hat
        np.divide(m, scratch, out=scratch)
        scratch *= step_size
        params -= scratch


class SGDMomentum:
    """Stochastic gradient descent with momentum (MATLAB's "sgdm").

    Parameters
    ----------
    n_parameters : int
    dtype : numpy dtype
    learning_rate : float
    momentum : float
    """

    def __init__(self, n_parameters, dtype, learning_rate, momentum=0.9):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocity = np.zeros(n_parameters, dtype=dtype)

    def step(self, params, grads):
        """Update ``params`` in place from ``grads``."""
        self.velocity *= self.momentum
        self.velocity -= self.learning_rate * grads
        params += self.velocity


def make_optimizer(name, n_parameters, dtype, learning_rate, momentum):
    """Build the optimiser called ``name`` (one of :data:`OPTIMIZERS`)."""
    if name == "adam":
        return Adam(n_parameters, dtype, learning_rate)
    if name == "sgdm":
        return SGDMomentum(n_parameters, dtype, learning_rate, momentum)
    raise ValueError(f"Unknown optimizer {name!r}; valid optimizers are {OPTIMIZERS}.")


def clip_gradients(flat_grads, grad_views, threshold, method):
    """Clip gradients in place, with MATLAB's three methods.

    Parameters
    ----------
    flat_grads : ndarray of shape (n_parameters,)
        All gradients; ``grad_views`` are views into it.
    grad_views : dict of str to ndarray
    threshold : float
    method : {"l2norm", "global-l2norm", "absolute-value"}
        "l2norm" rescales each parameter tensor whose L2 norm exceeds
        ``threshold``; "global-l2norm" rescales all gradients together when
        their joint L2 norm exceeds it (torch's ``clip_grad_norm_``);
        "absolute-value" clips every element to [-threshold, threshold].
    """
    if method == "l2norm":
        for grad in grad_views.values():
            norm = np.sqrt(np.dot(grad.ravel(), grad.ravel()))
            if norm > threshold:
                grad *= threshold / norm
    elif method == "global-l2norm":
        norm = np.sqrt(np.dot(flat_grads, flat_grads))
        if norm > threshold:
            flat_grads *= threshold / norm
    elif method == "absolute-value":
        np.clip(flat_grads, -threshold, threshold, out=flat_grads)
    else:
        raise ValueError(
            f"Unknown gradient_threshold_method {method!r}; valid methods are {CLIP_METHODS}."
        )
