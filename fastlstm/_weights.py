"""Parameter layout and initialisation.

All trainable parameters live in one flat vector, so that the optimiser and
gradient clipping are a handful of vectorised NumPy operations, and each
tensor is a reshaped view into it, named and laid out exactly as
``torch.nn.LSTM(...).state_dict()`` plus a linear output layer ``head``.
"""

import numpy as np

GATES = 4  # i, f, g, o, in torch's order
_FORGET_GATE = 1


def parameter_shapes(input_size, hidden_size, num_layers, bidirectional, n_outputs):
    """Names and shapes of every parameter, in a fixed order.

    Parameters
    ----------
    input_size : int
    hidden_size : int
    num_layers : int
    bidirectional : bool
    n_outputs : int
        Width of the output layer (classes or regression targets).

    Returns
    -------
    shapes : list of (str, tuple)
    """
    n_directions = 2 if bidirectional else 1
    shapes = []
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else hidden_size * n_directions
        for suffix in ("", "_reverse")[:n_directions]:
            shapes += [
                (f"weight_ih_l{layer}{suffix}", (GATES * hidden_size, layer_input)),
                (f"weight_hh_l{layer}{suffix}", (GATES * hidden_size, hidden_size)),
                (f"bias_ih_l{layer}{suffix}", (GATES * hidden_size,)),
                (f"bias_hh_l{layer}{suffix}", (GATES * hidden_size,)),
            ]
    shapes += [
        ("head.weight", (n_outputs, hidden_size * n_directions)),
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
        size = int(np.prod(shape))
        views[name] = flat[start:start + size].reshape(shape)
        start += size
    if start != flat.size:
        raise ValueError(f"expected {start} parameters, got {flat.size}")
    return views


def flatten(weights, shapes, dtype):
    """Concatenate named weights into one flat vector, checking every shape.

    Parameters
    ----------
    weights : dict of str to array-like
        For example a fitted estimator's ``weights_``.
    shapes : list of (str, tuple)
    dtype : numpy dtype

    Returns
    -------
    flat : ndarray of shape (n_parameters,)
    """
    parts = []
    for name, shape in shapes:
        if name not in weights:
            raise ValueError(f"weights_ has no entry {name!r}.")
        value = np.asarray(weights[name], dtype=dtype)
        if value.shape != shape:
            raise ValueError(f"weights_[{name!r}] has shape {value.shape}, expected {shape}.")
        parts.append(value.ravel())
    return np.concatenate(parts)


def n_parameters(shapes):
    """Total number of scalars in ``shapes``."""
    return sum(int(np.prod(shape)) for _, shape in shapes)


def _glorot_uniform(rng, shape):
    fan_out, fan_in = shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(rng, shape):
    # Q of the QR decomposition of a standard normal matrix, sign-corrected so
    # that the distribution is uniform over orthogonal matrices.
    q, r = np.linalg.qr(rng.standard_normal(shape))
    return q * np.sign(np.diag(r))


def init_parameters(shapes, rng, dtype, forget_bias=1.0):
    """Draw initial parameters as MATLAB's ``lstmLayer`` does by default.

    Input weights are Glorot-uniform, recurrent weights orthogonal, biases zero
    except the forget gate's (``forget_bias``, the "unit-forget-gate"
    initialiser, set once in ``bias_ih`` only), and the output layer
    Glorot-uniform with zero bias.

    Parameters
    ----------
    shapes : list of (str, tuple)
        From :func:`parameter_shapes`.
    rng : numpy.random.RandomState
    dtype : numpy dtype
    forget_bias : float, default=1.0

    Returns
    -------
    flat : ndarray of shape (n_parameters,)
    """
    flat = np.zeros(n_parameters(shapes), dtype=dtype)
    views = unflatten(flat, shapes)
    for name, shape in shapes:
        if name.startswith("weight_hh"):
            views[name][:] = _orthogonal(rng, shape)
        elif name.startswith("weight_ih") or name == "head.weight":
            views[name][:] = _glorot_uniform(rng, shape)
        elif name.startswith("bias_ih"):
            hidden = shape[0] // GATES
            views[name][_FORGET_GATE * hidden:(_FORGET_GATE + 1) * hidden] = forget_bias
    return flat
