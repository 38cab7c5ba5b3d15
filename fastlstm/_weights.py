"""Parameter layout and initialisation.

All trainable parameters live in one flat vector, so that the optimiser and
gradient clipping are a handful of vectorised NumPy operations, and each
tensor is a reshaped view into it, named and laid out exactly as
``torch.nn.LSTM(...).state_dict()`` plus a linear output layer ``head``.
"""

import math

import numpy as np

GATES = 4  # i, f, g, o, in torch's order
_FORGET_GATE = 1


def parameter_shapes(input_size, hidden_size, num_layers, bidirectional, n_outputs,
                     proj_size=0):
    """Names and shapes of every parameter, in ``torch.nn.LSTM``'s order.

    Parameters
    ----------
    input_size : int
    hidden_size : int
    num_layers : int
    bidirectional : bool
    n_outputs : int
        Width of the output layer (classes or regression targets).
    proj_size : int, default=0
        Size of the projected hidden state; 0 for none.

    Returns
    -------
    shapes : list of (str, tuple)
    """
    n_directions = 2 if bidirectional else 1
    state_size = proj_size if proj_size > 0 else hidden_size
    shapes = []
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else state_size * n_directions
        for suffix in ("", "_reverse")[:n_directions]:
            shapes += [
                (f"weight_ih_l{layer}{suffix}", (GATES * hidden_size, layer_input)),
                (f"weight_hh_l{layer}{suffix}", (GATES * hidden_size, state_size)),
                (f"bias_ih_l{layer}{suffix}", (GATES * hidden_size,)),
                (f"bias_hh_l{layer}{suffix}", (GATES * hidden_size,)),
            ]
            if proj_size > 0:
                shapes.append((f"weight_hr_l{layer}{suffix}", (proj_size, hidden_size)))
    shapes += [
        ("head.weight", (n_outputs, state_size * n_directions)),
        ("head.bias", (n_outputs,)),
    ]
    return shapes


def unflatten(flat, shapes):
    """Views of ``flat`` named and shaped as ``shapes``.

    Parameters
    ----------
    flat : ndarray of shape (n_parameters,)
    shapes : list of (str, tuple)

    Returns
    -------
    views : dict of str to ndarray
        Writing to a view writes to ``flat``.
    """
    views = {}
    start = 0
    for name, shape in shapes:
        size = math.prod(shape)  # np.prod costs microseconds per call: predict runs this
        views[name] = flat[start:start + size].reshape(shape)
        start += size
    if start != flat.size:
        raise ValueError(f"expected {start} parameters, got {flat.size}")
    return views


def checked_weights(weights, shapes, dtype):
    """Named weights as arrays of ``dtype``, every name and shape checked.

    Parameters
    ----------
    weights : dict of str to array-like
        For example a fitted estimator's ``weights_``.
    shapes : list of (str, tuple)
    dtype : numpy dtype

    Returns
    -------
    params : dict of str to ndarray
        C-contiguous arrays of ``dtype``, in the order of ``shapes``: the
        caller's own arrays where they already are, else copies.
    """
    params = {}
    for name, shape in shapes:
        if name not in weights:
            raise ValueError(f"weights_ has no entry {name!r}.")
        value = np.ascontiguousarray(weights[name], dtype=dtype)
        if value.shape != shape:
            raise ValueError(f"weights_[{name!r}] has shape {value.shape}, expected {shape}.")
        params[name] = value
    return params


def flatten(weights, shapes, dtype):
    """Concatenate named weights into one flat vector, checking every shape.

    Parameters
    ----------
    weights : dict of str to array-like
    shapes : list of (str, tuple)
    dtype : numpy dtype

    Returns
    -------
    flat : ndarray of shape (n_parameters,)
    """
    return np.concatenate([value.ravel()
                           for value in checked_weights(weights, shapes, dtype).values()])


def n_parameters(shapes):
    """Total number of scalars in ``shapes``."""
    return sum(int(np.prod(shape)) for _, shape in shapes)


def _glorot(rng, shape):
    fan_out, fan_in = shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def _he(rng, shape):
    return rng.normal(0.0, np.sqrt(2.0 / shape[1]), size=shape)


def _orthogonal(rng, shape):
    # Q of the QR decomposition of a standard normal matrix, sign-corrected so
    # that the distribution is uniform over orthogonal matrices. A wide matrix
    # gets orthonormal rows instead of columns.
    rows, columns = shape
    q, r = np.linalg.qr(rng.standard_normal((max(shape), min(shape))))
    q = q * np.sign(np.diag(r))
    return q if rows >= columns else q.T


def _narrow_normal(rng, shape):
    return rng.normal(0.0, 0.01, size=shape)


def _zeros(rng, shape):
    return np.zeros(shape)


# MATLAB's names for its lstmLayer initialisers.
WEIGHT_INITIALIZERS = {
    "glorot": _glorot,
    "he": _he,
    "orthogonal": _orthogonal,
    "narrow-normal": _narrow_normal,
    "zeros": _zeros,
}
BIAS_INITIALIZERS = ("unit-forget-gate", "narrow-normal", "ones", "zeros")


def init_parameters(shapes, rng, dtype, input_weights_initializer="glorot",
                    recurrent_weights_initializer="orthogonal",
                    bias_initializer="unit-forget-gate"):
    """Draw initial parameters, by default as MATLAB's ``lstmLayer`` does.

    Input weights (and projections) and recurrent weights are drawn by the
    named initialisers: "glorot" (Glorot/Xavier uniform), "he" (He normal),
    "orthogonal", "narrow-normal" (normal with standard deviation 0.01) or
    "zeros". Biases are "unit-forget-gate" (1 for the forget gate, 0
    elsewhere, set in ``bias_ih`` only, so that the effective bias is 1),
    "narrow-normal", "ones" or "zeros", all set in ``bias_ih`` (``bias_hh``
    starts at zero), so that the effective bias is as named. The output layer
    is Glorot-uniform with zero bias.
    Parameters are drawn in the order of ``shapes``, so a seed fixes them all.

    Parameters
    ----------
    shapes : list of (str, tuple)
        From :func:`parameter_shapes`.
    rng : numpy.random.RandomState
    dtype : numpy dtype
    input_weights_initializer, recurrent_weights_initializer : str
        Keys of :data:`WEIGHT_INITIALIZERS`.
    bias_initializer : str
        One of :data:`BIAS_INITIALIZERS`.

    Returns
    -------
    flat : ndarray of shape (n_parameters,)
    """
    input_init = WEIGHT_INITIALIZERS[input_weights_initializer]
    recurrent_init = WEIGHT_INITIALIZERS[recurrent_weights_initializer]
    flat = np.zeros(n_parameters(shapes), dtype=dtype)
    views = unflatten(flat, shapes)
    for name, shape in shapes:
        if name.startswith("weight_hh"):
            views[name][:] = recurrent_init(rng, shape)
        elif name.startswith(("weight_ih", "weight_hr")):
            views[name][:] = input_init(rng, shape)
        elif name == "head.weight":
            views[name][:] = _glorot(rng, shape)
        elif name.startswith("bias_ih"):
            hidden = shape[0] // GATES
            if bias_initializer == "unit-forget-gate":
                views[name][_FORGET_GATE * hidden:(_FORGET_GATE + 1) * hidden] = 1.0
            elif bias_initializer == "ones":
                views[name][:] = 1.0
            elif bias_initializer == "narrow-normal":
                views[name][:] = _narrow_normal(rng, shape)
    return flat
