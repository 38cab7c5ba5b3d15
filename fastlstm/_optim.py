"""Optimisers, L2 regularisation, learning-rate schedules and gradient clipping.

Parameters and gradients are each one contiguous vector (see ``_weights``),
so an update is a few in-place NumPy operations whatever the network's shape.
Every optimiser preallocates the buffers it needs when it is built: a step
allocates nothing, which keeps the per-batch cost flat on large networks.
Adam's step and the L2 term run as compiled passes (``_optim_kernels.pyx``),
bit for bit their NumPy references here; without gradient clipping between
them, Adam takes the L2 term into its own pass (:meth:`Adam.regularised_step`).

The three optimisers follow MATLAB's ``trainingOptions`` ("adam", "sgdm",
"rmsprop") with its default hyper-parameters; each one also matches the
corresponding ``torch.optim`` class (see each class for the exact relation).
"""

import numpy as np

from ._optim_kernels import adam_update, add_masked_l2

OPTIMIZERS = ("adam", "sgdm", "rmsprop")
CLIP_METHODS = ("l2norm", "global-l2norm", "absolute-value")
SCHEDULES = ("none", "piecewise")


class _FlatOptimizer:
    """State handling shared by the optimisers.

    A subclass lists its per-parameter buffers in ``_state_arrays``; together
    with ``n_steps`` they are the whole state. Hyper-parameters, the learning
    rate included, are deliberately not state: they come from whoever builds
    or drives the optimiser, so a warm start may change them, as
    scikit-learn's ``warm_start`` expects.
    """

    _state_arrays = ()

    def state_dict(self):
        """Copy of the optimiser's state.

        Returns
        -------
        state : dict
            ``n_steps`` (int) and one ndarray of shape ``(n_parameters,)``
            per buffer. The arrays are copies, so later steps do not change
            a saved state (needed to keep the state of the best epoch).
        """
        state = {name: getattr(self, name).copy() for name in self._state_arrays}
        state["n_steps"] = self.n_steps
        return state

    def load_state_dict(self, state):
        """Restore a state returned by :meth:`state_dict`, in place.

        Parameters
        ----------
        state : dict
            Must have exactly this optimiser's keys and array shapes. Values
            are copied into the existing buffers, so ``state`` can be loaded
            again later and is not aliased.
        """
        expected = set(self._state_arrays) | {"n_steps"}
        if set(state) != expected:
            raise ValueError(
                f"{type(self).__name__} state must have the keys {sorted(expected)}; "
                f"got {sorted(state)}."
            )
        for name in self._state_arrays:
            buffer, value = getattr(self, name), np.asarray(state[name])
            if value.shape != buffer.shape:
                raise ValueError(
                    f"{type(self).__name__} state {name!r} has shape {value.shape}; "
                    f"expected {buffer.shape}."
                )
        # Copy only once everything has been checked: a rejected state leaves
        # the optimiser as it was.
        for name in self._state_arrays:
            np.copyto(getattr(self, name), state[name])
        self.n_steps = int(state["n_steps"])

    def regularised_step(self, params, grads, l2_factor, l2_mask):
        """:func:`add_l2_regularization` on ``grads``, then :meth:`step`.

        Parameters
        ----------
        params : ndarray of shape (n_parameters,)
            Updated in place.
        grads : ndarray of shape (n_parameters,)
            The L2 term is added to it in place.
        l2_factor : float
            Regularisation factor; 0 is a plain step.
        l2_mask : ndarray of bool, shape (n_parameters,)
            True on the entries to regularise (the weights).
        """
        add_l2_regularization(grads, params, l2_factor, l2_mask)
        self.step(params, grads)


class Adam(_FlatOptimizer):
    """Adam (Kingma & Ba, 2015) with bias correction, as MATLAB's and torch's.

    With ``t`` the number of steps since creation::

        m = beta1 m + (1 - beta1) g
        v = beta2 v + (1 - beta2) g**2
        p -= learning_rate * m_hat / (sqrt(v_hat) + epsilon)

    where ``m_hat = m / (1 - beta1**t)`` and ``v_hat = v / (1 - beta2**t)``.
    This is ``torch.optim.Adam(betas=(beta1, beta2), eps=epsilon)`` (no
    weight decay, not AMSGrad).

    Parameters
    ----------
    n_parameters : int
        Length of the flat parameter vector.
    dtype : numpy dtype
        Dtype of the parameters; the moments use the same one.
    learning_rate : float
        Read at every step, so the caller may change it between steps (a
        learning-rate schedule); the bias correction still counts every step
        since creation.
    beta1 : float, default=0.9
        Decay of the first moment (MATLAB's ``GradientDecayFactor``).
    beta2 : float, default=0.999
        Decay of the second moment (MATLAB's ``SquaredGradientDecayFactor``
        for Adam).
    epsilon : float, default=1e-8
        Added to ``sqrt(v_hat)`` so that the step stays finite.

    Attributes
    ----------
    first_moment, second_moment : ndarray of shape (n_parameters,)
    n_steps : int
        Steps taken since creation (or since the loaded state's creation).
    """

    _state_arrays = ("first_moment", "second_moment")

    def __init__(self, n_parameters, dtype, learning_rate, beta1=0.9, beta2=0.999,
                 epsilon=1e-8):
        self.learning_rate = learning_rate
        self.beta1, self.beta2, self.epsilon = beta1, beta2, epsilon
        self.first_moment = np.zeros(n_parameters, dtype=dtype)
        self.second_moment = np.zeros(n_parameters, dtype=dtype)
        self.n_steps = 0
        self._scratch = np.empty(n_parameters, dtype=dtype)

    def _corrections(self):
        """(step_size, epsilon_hat) of the current step, in the moments' dtype.

        Both bias corrections are folded into two scalars, which saves two
        passes over the vector: lr/c1 * m / (sqrt(v/c2) + eps) equals
        (lr sqrt(c2)/c1) * m / (sqrt(v) + eps sqrt(c2)). They are computed
        in float64 and rounded once to the dtype, in which the whole update
        then runs (as torch's Adam does on float32 parameters).
        """
        sqrt_c2 = np.sqrt(1 - self.beta2**self.n_steps)
        step_size = self.learning_rate * sqrt_c2 / (1 - self.beta1**self.n_steps)
        scalar = self.first_moment.dtype.type
        return scalar(step_size), scalar(self.epsilon * sqrt_c2)

    def _update(self, params, grads, l2_factor, l2_mask):
        self.n_steps += 1
        step_size, epsilon_hat = self._corrections()
        scalar = self.first_moment.dtype.type
        adam_update(params, grads, self.first_moment, self.second_moment, scalar(self.beta1),
                    scalar(1 - self.beta1), scalar(self.beta2), scalar(1 - self.beta2),
                    step_size, epsilon_hat, scalar(l2_factor), l2_mask)

    def step(self, params, grads):
        """Update ``params`` in place from ``grads``.

        One compiled pass (``_optim_kernels.adam_update``), bit for bit
        :meth:`reference_step`.

        Parameters
        ----------
        params : ndarray of shape (n_parameters,)
            Updated in place.
        grads : ndarray of shape (n_parameters,)
            Read only.
        """
        self._update(params, grads, 0, None)

    def regularised_step(self, params, grads, l2_factor, l2_mask):
        """:func:`add_l2_regularization`, then :meth:`step`, in one compiled pass.

        Bit for bit the two calls (and :meth:`reference_step` with the same
        arguments); ``grads`` ends up regularised, as after the two calls.
        One pass instead of two saves reading the gradients and parameters
        twice. ``params`` and ``grads`` must be as :meth:`step` takes them.
        """
        l2_mask = _checked_mask(l2_mask, grads)
        l2_factor = grads.dtype.type(l2_factor)  # as add_l2_regularization rounds it
        mask = None if l2_factor == 0 else np.ascontiguousarray(l2_mask).view(np.uint8)
        self._update(params, grads, l2_factor, mask)

    def reference_step(self, params, grads, l2_factor=0, l2_mask=None):
        """:meth:`regularised_step` in NumPy (two plus nine passes): the reference."""
        if l2_mask is not None and l2_factor != 0:
            add_l2_regularization_reference(grads, params, l2_factor, l2_mask)
        self.n_steps += 1
        m, v, scratch = self.first_moment, self.second_moment, self._scratch
        m *= self.beta1
        np.multiply(grads, 1 - self.beta1, out=scratch)
        m += scratch
        v *= self.beta2
        np.multiply(grads, grads, out=scratch)
        scratch *= 1 - self.beta2
        v += scratch
        step_size, epsilon_hat = self._corrections()
        np.sqrt(v, out=scratch)
        scratch += epsilon_hat
        np.divide(m, scratch, out=scratch)
        scratch *= step_size
        params -= scratch


class SGDMomentum(_FlatOptimizer):
    """Stochastic gradient descent with momentum, as MATLAB's "sgdm".

    MATLAB keeps a velocity that already includes the learning rate::

        velocity = momentum velocity - learning_rate g
        p += velocity

    ``torch.optim.SGD(momentum=momentum)`` (``dampening=0``, not Nesterov)
    keeps ``buf = momentum buf + g`` and applies ``p -= learning_rate buf``.
    The two agree exactly while the learning rate is constant (then
    ``velocity == -learning_rate buf``). They differ when it changes: here
    a new rate applies to new gradients only and the velocity keeps its
    momentum, whereas torch rescales the whole accumulated buffer at once.
    MATLAB's form is kept because the estimators follow ``trainingOptions``.

    Parameters
    ----------
    n_parameters : int
        Length of the flat parameter vector.
    dtype : numpy dtype
        Dtype of the parameters; the velocity uses the same one.
    learning_rate : float
        Read at every step, so the caller may change it between steps.
    momentum : float, default=0.9
        Contribution of the previous step to the current one.

    Attributes
    ----------
    velocity : ndarray of shape (n_parameters,)
    n_steps : int
        Steps taken since creation.
    """

    _state_arrays = ("velocity",)

    def __init__(self, n_parameters, dtype, learning_rate, momentum=0.9):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocity = np.zeros(n_parameters, dtype=dtype)
        self.n_steps = 0
        self._scratch = np.empty(n_parameters, dtype=dtype)

    def step(self, params, grads):
        """Update ``params`` in place from ``grads``.

        Parameters
        ----------
        params : ndarray of shape (n_parameters,)
            Updated in place.
        grads : ndarray of shape (n_parameters,)
            Read only.
        """
        self.n_steps += 1
        np.multiply(grads, self.learning_rate, out=self._scratch)
        self.velocity *= self.momentum
        self.velocity -= self._scratch
        params += self.velocity


class RMSProp(_FlatOptimizer):
    """RMSProp (Tieleman & Hinton, 2012), as MATLAB's "rmsprop".

    ::

        v = rho v + (1 - rho) g**2
        p -= learning_rate g / (sqrt(v) + epsilon)

    with ``rho = squared_gradient_decay_factor``. There is no bias
    correction, so the first steps are large (``v`` starts at zero). This is
    ``torch.optim.RMSprop(alpha=rho, eps=epsilon)`` with ``centered=False``,
    ``momentum=0`` and no weight decay; note torch's default ``alpha`` is
    0.99, MATLAB's (used here) 0.9.

    Parameters
    ----------
    n_parameters : int
        Length of the flat parameter vector.
    dtype : numpy dtype
        Dtype of the parameters; the running average uses the same one.
    learning_rate : float
        Read at every step, so the caller may change it between steps.
    squared_gradient_decay_factor : float, default=0.9
        Decay ``rho`` of the running average of squared gradients.
    epsilon : float, default=1e-8
        Added to ``sqrt(v)`` so that the step stays finite.

    Attributes
    ----------
    square_average : ndarray of shape (n_parameters,)
    n_steps : int
        Steps taken since creation.
    """

    _state_arrays = ("square_average",)

    def __init__(self, n_parameters, dtype, learning_rate, squared_gradient_decay_factor=0.9,
                 epsilon=1e-8):
        self.learning_rate = learning_rate
        self.squared_gradient_decay_factor = squared_gradient_decay_factor
        self.epsilon = epsilon
        self.square_average = np.zeros(n_parameters, dtype=dtype)
        self.n_steps = 0
        self._scratch = np.empty(n_parameters, dtype=dtype)

    def step(self, params, grads):
        """Update ``params`` in place from ``grads``.

        Parameters
        ----------
        params : ndarray of shape (n_parameters,)
            Updated in place.
        grads : ndarray of shape (n_parameters,)
            Read only.
        """
        self.n_steps += 1
        rho, v, scratch = self.squared_gradient_decay_factor, self.square_average, self._scratch
        v *= rho
        np.multiply(grads, grads, out=scratch)
        scratch *= 1 - rho
        v += scratch
        np.sqrt(v, out=scratch)
        scratch += self.epsilon
        np.divide(grads, scratch, out=scratch)
        scratch *= self.learning_rate
        params -= scratch


def make_optimizer(name, n_parameters, dtype, learning_rate, *, momentum=0.9, beta1=0.9,
                   beta2=0.999, epsilon=1e-8, squared_gradient_decay_factor=0.9):
    """Build the optimiser called ``name``.

    Parameters
    ----------
    name : {"adam", "sgdm", "rmsprop"}
        One of :data:`OPTIMIZERS`.
    n_parameters : int
        Length of the flat parameter vector.
    dtype : numpy dtype
        Dtype of the parameters.
    learning_rate : float
        Initial learning rate; the returned object's ``learning_rate``
        attribute may be changed between steps.
    momentum : float, default=0.9
        "sgdm" only.
    beta1, beta2 : float, default=0.9, 0.999
        "adam" only.
    epsilon : float, default=1e-8
        "adam" and "rmsprop".
    squared_gradient_decay_factor : float, default=0.9
        "rmsprop" only (torch's ``alpha``).

    Returns
    -------
    optimizer : Adam, SGDMomentum or RMSProp
        Hyper-parameters that do not apply to ``name`` are ignored, so a
        caller can pass all of them whatever the optimiser.
    """
    if name == "adam":
        return Adam(n_parameters, dtype, learning_rate, beta1=beta1, beta2=beta2,
                    epsilon=epsilon)
    if name == "sgdm":
        return SGDMomentum(n_parameters, dtype, learning_rate, momentum=momentum)
    if name == "rmsprop":
        return RMSProp(n_parameters, dtype, learning_rate,
                       squared_gradient_decay_factor=squared_gradient_decay_factor,
                       epsilon=epsilon)
    raise ValueError(f"Unknown optimizer {name!r}; valid optimizers are {OPTIMIZERS}.")


def _checked_mask(mask, flat_grads):
    """``mask`` as an array, if it is a boolean one shaped like ``flat_grads``."""
    mask = np.asarray(mask)
    # An index array or a 0/1 float array would be silently misread as a
    # mask by ``where=``, or rejected with an obscure message.
    if mask.dtype != np.bool_ or mask.shape != flat_grads.shape:
        raise ValueError(
            f"mask must be a boolean array of shape {flat_grads.shape}; got dtype "
            f"{mask.dtype} and shape {mask.shape}."
        )
    return mask


def add_l2_regularization(flat_grads, flat_params, factor, mask, *, scratch=None):
    """Add the gradient of ``factor / 2 * ||w||**2`` to the masked entries, in place.

    This is MATLAB's ``L2Regularization``: ``g += factor * w`` for the
    weights only, biases being left alone. With ``mask`` all True it is the
    ``weight_decay`` of ``torch.optim.Adam``/``SGD``/``RMSprop`` (an L2 term
    in the gradient, not AdamW's decoupled decay).

    Parameters
    ----------
    flat_grads : ndarray of shape (n_parameters,)
        Updated in place.
    flat_params : ndarray of shape (n_parameters,)
        Read only.
    factor : float
        Regularisation factor; 0 leaves ``flat_grads`` unchanged.
    mask : ndarray of bool, shape (n_parameters,)
        True on the entries to regularise (the weights).
    scratch : ndarray of shape (n_parameters,), optional
        Work buffer, overwritten. Without it one temporary vector is
        allocated per call; pass one to keep the training step
        allocation-free.
    """
    mask = _checked_mask(mask, flat_grads)
    if factor == 0:
        return
    # The factor in the gradients' dtype, as a Python float would be (NumPy 2).
    factor = flat_grads.dtype.type(factor)
    if (flat_grads.dtype in (np.float32, np.float64) and flat_params.dtype == flat_grads.dtype
            and flat_grads.flags.c_contiguous and flat_params.flags.c_contiguous
            and mask.flags.c_contiguous):
        add_masked_l2(flat_grads, flat_params, factor, mask.view(np.uint8))
        return
    add_l2_regularization_reference(flat_grads, flat_params, factor, mask, scratch=scratch)


def add_l2_regularization_reference(flat_grads, flat_params, factor, mask, *, scratch=None):
    """:func:`add_l2_regularization` in NumPy (two passes): the reference of
    the compiled one-pass loop, and the path for other layouts."""
    if scratch is None:
        scratch = np.empty_like(flat_grads)
    # Entries outside the mask are neither computed nor written.
    np.multiply(flat_params, flat_grads.dtype.type(factor), out=scratch, where=mask)
    np.add(flat_grads, scratch, out=flat_grads, where=mask)


def learning_rate_at(epoch, initial, schedule, drop_factor, drop_period):
    """Learning rate of a (1-based) epoch, as MATLAB's ``LearnRateSchedule``.

    Parameters
    ----------
    epoch : int
        Epoch number, counted from 1 as MATLAB does.
    initial : float
        Rate of the first epoch (MATLAB's ``InitialLearnRate``).
    schedule : {"none", "piecewise"}
        "none" keeps ``initial``; "piecewise" multiplies the rate by
        ``drop_factor`` every ``drop_period`` epochs: epochs
        ``1..drop_period`` use ``initial``, the next ``drop_period`` use
        ``initial * drop_factor``, and so on.
    drop_factor : float
        MATLAB's ``LearnRateDropFactor``; ignored by "none".
    drop_period : int
        MATLAB's ``LearnRateDropPeriod``, in epochs; ignored by "none".

    Returns
    -------
    learning_rate : float
    """
    if epoch < 1:
        raise ValueError(f"epoch is counted from 1; got {epoch}.")
    if schedule == "none":
        return initial
    if schedule == "piecewise":
        if drop_period < 1:
            raise ValueError(f"drop_period must be at least 1; got {drop_period}.")
        # A closed form rather than a running product, so that the rate of
        # any epoch (a warm start's first, say) needs no history.
        return initial * drop_factor ** ((epoch - 1) // drop_period)
    raise ValueError(f"Unknown learning-rate schedule {schedule!r}; valid schedules are "
                     f"{SCHEDULES}.")


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
        ``threshold`` to norm ``threshold``; "global-l2norm" rescales all
        gradients together when their joint L2 norm exceeds it (torch's
        ``clip_grad_norm_``, except that torch divides by ``norm + 1e-6``);
        "absolute-value" clips every element to [-threshold, threshold]
        (torch's ``clip_grad_value_``).
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
