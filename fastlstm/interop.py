"""Conversion between fitted fastlstm estimators and PyTorch modules.

fastlstm names and lays out its parameters exactly as ``torch.nn.LSTM``'s
``state_dict()`` (gates i, f, g, o; two bias vectors per direction and layer)
plus a linear output layer ``head``, so a fitted estimator and a
``torch.nn.LSTM`` followed by a ``torch.nn.Linear`` on the final hidden state
are the same model. :func:`to_torch` turns a fitted estimator into such a
module, for example to fine-tune it or to run it on a GPU; :func:`from_torch`
turns a trained torch network into a fitted estimator, for scikit-learn
pipelines, scoring and model selection.

PyTorch is optional: this module imports it only inside the functions that
need it.

Examples
--------
>>> import numpy as np
>>> import torch
>>> from fastlstm import LSTMClassifier
>>> from fastlstm.interop import from_torch, to_torch
>>> rng = np.random.default_rng(0)
>>> X = [rng.standard_normal((n, 3)) for n in (5, 2, 7, 4)]
>>> y = ["a", "b", "a", "b"]
>>> clf = LSTMClassifier(hidden_size=8, max_epochs=2, random_state=0).fit(X, y)
>>> model = to_torch(clf)
>>> padded = torch.nn.utils.rnn.pad_sequence(
...     [torch.as_tensor(seq, dtype=torch.float32) for seq in X], batch_first=True)
>>> logits = model(padded, lengths=[len(seq) for seq in X])
>>> np.allclose(torch.softmax(logits, dim=1).detach().numpy(), clf.predict_proba(X),
...             rtol=1e-5, atol=1e-6)
True
>>> back = from_torch(model.lstm, model.head, classes=clf.classes_)
>>> bool((back.predict_proba(X) == clf.predict_proba(X)).all())
True
"""

import warnings

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._estimators import BaseLSTM, LSTMClassifier, LSTMRegressor

__all__ = ["from_torch", "to_torch"]

_MODEL_CLASS_NAME = "LSTMSequenceModel"

# torch.nn.LSTM hard-codes these activations.
_TORCH_ACTIVATIONS = {"gate_activation": "sigmoid", "state_activation": "tanh"}


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "fastlstm.interop needs PyTorch, which is not installed; install it with "
            "`pip install torch`."
        ) from error
    return torch


_model_class = None


def _sequence_model_class():
    """The torch module class of :func:`to_torch`, defined on first use.

    Defining it at import time would make ``import fastlstm.interop`` import
    torch, which fastlstm does not depend on.
    """
    global _model_class
    if _model_class is not None:
        return _model_class
    torch = _import_torch()

    class LSTMSequenceModel(torch.nn.Module):
        """A ``torch.nn.LSTM`` followed by a linear layer on its final hidden state.

        The torch twin of a fitted fastlstm estimator (see :func:`to_torch`).

        Parameters
        ----------
        lstm : torch.nn.LSTM
            With ``batch_first=True``.
        head : torch.nn.Linear
            Maps the last layer's final hidden state, directions side by side,
            to the outputs.
        input_scale, input_shift : Tensor of shape (n_features,), default=None
            The estimator's input normalisation, x * input_scale +
            input_shift, applied before the LSTM; None for none.
        """

        def __init__(self, lstm, head, input_scale=None, input_shift=None):
            super().__init__()
            self.lstm = lstm
            self.head = head
            self.register_buffer("input_scale", input_scale)
            self.register_buffer("input_shift", input_shift)

        def _normalise(self, values):
            if self.input_scale is None:
                return values
            return values * self.input_scale + self.input_shift

        def forward(self, x, lengths=None):
            """Outputs of each sequence of a batch.

            Parameters
            ----------
            x : Tensor of shape (N, T, n_features) or PackedSequence
                A batch of sequences, padded at the end (or not at all), or a
                packed batch. It is converted to the module's dtype and device.
            lengths : array-like of int of shape (N,), default=None
                True length of each padded sequence; None means all are T
                long. Not allowed with a PackedSequence, which carries them.

            Returns
            -------
            outputs : Tensor of shape (N, n_outputs)
                Class scores (logits: their softmax is ``predict_proba``) of
                a classifier, or predictions of a regressor, read from each
                sequence's final hidden state: the forward direction's after
                its true last step, the reverse direction's after its first.
            """
            rnn = torch.nn.utils.rnn
            dtype, device = self.head.weight.dtype, self.head.weight.device
            if isinstance(x, rnn.PackedSequence):
                if lengths is not None:
                    raise ValueError("lengths must be None when x is a PackedSequence, "
                                     "which carries the lengths itself.")
                x = x.to(device=device, dtype=dtype)
                x = x._replace(data=self._normalise(x.data))
            else:
                x = self._normalise(torch.as_tensor(x, dtype=dtype, device=device))
                if x.dim() != 3:
                    # torch.nn.LSTM would read a 2-D x as one unbatched sequence.
                    raise ValueError(
                        f"x must be a 3-D batch (N, T, n_features); got shape {tuple(x.shape)}."
                    )
                if lengths is not None:
                    # Packing makes the LSTM stop at each sequence's own last
                    # step: padding never enters the state, in either direction.
                    lengths = torch.as_tensor(lengths, dtype=torch.int64, device="cpu")
                    x = rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                 enforce_sorted=False)
            # h_n is in the batch's original order even for an unsorted packed
            # batch: torch undoes its own sorting.
            _, (h_n, _) = self.lstm(x)
            n_directions = 2 if self.lstm.bidirectional else 1
            return self.head(torch.cat(list(h_n[-n_directions:]), dim=1))

    # Named as the module attribute that __getattr__ serves, so that pickle
    # (and torch.save) can find the class again.
    LSTMSequenceModel.__module__ = __name__
    LSTMSequenceModel.__qualname__ = _MODEL_CLASS_NAME
    _model_class = LSTMSequenceModel
    return _model_class


def __getattr__(name):
    # PEP 562: the model class exists only once torch is loaded, so it is
    # served lazily under its public name.
    if name == _MODEL_CLASS_NAME:
        return _sequence_model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch_dtype(torch, dtype):
    return {"float32": torch.float32, "float64": torch.float64}[np.dtype(dtype).name]


def to_torch(estimator):
    """A torch module that computes what a fitted fastlstm estimator computes.

    Parameters
    ----------
    estimator : LSTMClassifier or LSTMRegressor
        Fitted, with ``gate_activation="sigmoid"`` and
        ``state_activation="tanh"`` (the only activations of ``torch.nn.LSTM``).

    Returns
    -------
    model : LSTMSequenceModel
        A ``torch.nn.Module`` in eval mode, in the estimator's dtype, holding
        copies of its weights: ``model.lstm`` is a ``torch.nn.LSTM`` with
        ``batch_first=True`` and ``model.head`` a ``torch.nn.Linear``.
        ``model(x, lengths)`` returns the logits of a classifier (their
        softmax is ``predict_proba``) or the predictions of a regressor,
        always 2-D (N, n_outputs).

    Raises
    ------
    ImportError
        If torch is not installed.
    TypeError
        If ``estimator`` is not a fastlstm estimator.
    NotFittedError
        If the estimator is not fitted.
    ValueError
        If it uses activations that ``torch.nn.LSTM`` does not have.
    """
    if not isinstance(estimator, BaseLSTM):
        raise TypeError(
            f"to_torch expects a fastlstm LSTMClassifier or LSTMRegressor; got "
            f"{type(estimator).__name__}."
        )
    check_is_fitted(estimator)
    for name, supported in _TORCH_ACTIVATIONS.items():
        if getattr(estimator, name) != supported:
            raise ValueError(
                f"torch.nn.LSTM only has {name}={supported!r}; this estimator uses "
                f"{name}={getattr(estimator, name)!r}, which it cannot represent."
            )
    torch = _import_torch()
    dtype = _torch_dtype(torch, estimator.dtype)
    weights = estimator.weights_
    n_outputs, n_features_out = weights["head.weight"].shape
    # Built on the meta device, then given uninitialised CPU memory: the
    # weights are overwritten below, so torch's random initialisation would be
    # wasted work and would advance torch's global RNG. (torch.nn.utils.skip_init
    # does the same but refuses LSTM, whose signature hides ``device``.)
    with warnings.catch_warnings():
        # torch warns that dropout does nothing on a single layer; fastlstm
        # accepts that setting, and keeping it lets from_torch give it back.
        warnings.filterwarnings("ignore", message="dropout option adds dropout",
                                category=UserWarning)
        lstm = torch.nn.LSTM(
            estimator.n_features_in_, estimator.hidden_size,
            num_layers=estimator.num_layers, bidirectional=bool(estimator.bidirectional),
            proj_size=estimator.proj_size, dropout=float(estimator.dropout),
            batch_first=True, device="meta", dtype=dtype,
        ).to_empty(device="cpu")
    head = torch.nn.Linear(n_features_out, n_outputs, device="meta",
                           dtype=dtype).to_empty(device="cpu")

    def tensors(names, prefix=""):
        return {name[len(prefix):]: torch.as_tensor(np.asarray(weights[name]), dtype=dtype)
                for name in names}

    with torch.no_grad():
        # strict loading checks that every name and shape matches.
        lstm.load_state_dict(tensors(lstm.state_dict()))
        head.load_state_dict(tensors(("head.weight", "head.bias"), prefix="head."))
    scale = shift = None
    if getattr(estimator, "scaler_", None) is not None:
        # Every normalisation is a per-feature affine map; reading it off two
        # probe steps (all zeros, all ones) needs no knowledge of the method.
        probe = np.array([np.zeros(estimator.n_features_in_), np.ones(estimator.n_features_in_)])
        zero, one = estimator.scaler_.transform([probe])[0].astype(np.float64)
        scale = torch.as_tensor(one - zero, dtype=dtype)
        shift = torch.as_tensor(zero, dtype=dtype)
    return _sequence_model_class()(lstm, head, scale, shift).eval()


def _numpy(torch, tensor, dtype):
    # Through float64, which holds every float32 and float16 value exactly,
    # because numpy cannot read some torch dtypes (bfloat16); astype copies,
    # so the estimator never shares memory with the torch module.
    return tensor.detach().to(device="cpu", dtype=torch.float64).numpy().astype(dtype)


def _check_classes(classes, n_outputs):
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(classes) != n_outputs:
        raise ValueError(
            f"classes must be a 1-D array with one label per output of head "
            f"({n_outputs}); got shape {classes.shape}."
        )
    if n_outputs < 2:
        raise ValueError(
            "A fastlstm classifier has one logit per class (softmax), so it needs at "
            f"least two classes; head has {n_outputs} output(s)."
        )
    order = np.argsort(classes, kind="stable")
    if (classes[order][1:] == classes[order][:-1]).any():
        raise ValueError(f"classes contains repeated labels: {classes!r}.")
    return classes, order


def from_torch(lstm, head, *, classes=None, n_features_in=None, dtype="float32", **params):
    """A fitted fastlstm estimator that computes what a torch network computes.

    The network is ``lstm`` followed by ``head`` applied to the last layer's
    final hidden state (for a bidirectional LSTM, the forward direction's
    after each sequence's last step and the reverse direction's after its
    first, side by side), the ``h_n`` that ``torch.nn.LSTM`` returns for a
    packed batch.

    Parameters
    ----------
    lstm : torch.nn.LSTM
        Its ``batch_first`` setting does not matter. An LSTM without biases
        gives zero biases.
    head : torch.nn.Linear
        With ``in_features == num_directions * (proj_size or hidden_size)``.
    classes : array-like of shape (head.out_features,), default=None
        The label of each output of ``head``: gives an :class:`LSTMClassifier`
        reading the outputs as logits. None gives an :class:`LSTMRegressor`,
        whose predictions are 1-D when ``head.out_features == 1``.
    n_features_in : int, default=None
        Features per time step; must equal ``lstm.input_size``, which None
        stands for.
    dtype : {"float32", "float64"}, default="float32"
        The estimator's dtype, to which the weights are converted.
    **params
        Other constructor parameters of the estimator (for example
        ``max_epochs`` or ``random_state`` for a later refit, or ``backend``).
        The hyper-parameters the LSTM fixes (``hidden_size``,
        ``num_layers``, ``bidirectional``, ``proj_size``, ``dropout``) are
        read from it; passing them is allowed only with the same values.

    Returns
    -------
    estimator : LSTMClassifier or LSTMRegressor
        Fitted, with ``n_iter_ = 0`` and an empty ``history_``. A classifier's
        ``classes_`` are sorted, as scikit-learn expects, and the rows of its
        output layer are reordered with them, so ``predict_proba`` has the
        columns of the sorted labels.

    Raises
    ------
    ImportError
        If torch is not installed.
    TypeError
        If ``lstm`` or ``head`` has the wrong type, or ``params`` holds an
        unknown parameter.
    ValueError
        If the shapes do not fit together, ``classes`` does not match
        ``head``, a parameter contradicts the LSTM or is invalid, or a weight
        is not finite.
    """
    torch = _import_torch()
    if not isinstance(lstm, torch.nn.LSTM):
        raise TypeError(f"lstm must be a torch.nn.LSTM; got {type(lstm).__name__}.")
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"head must be a torch.nn.Linear; got {type(head).__name__}.")
    if n_features_in is not None and n_features_in != lstm.input_size:
        raise ValueError(
            f"n_features_in={n_features_in} does not match lstm.input_size={lstm.input_size}."
        )
    lstm_params = {
        "hidden_size": lstm.hidden_size,
        "num_layers": lstm.num_layers,
        "bidirectional": bool(lstm.bidirectional),
        "proj_size": lstm.proj_size,
        "dropout": float(lstm.dropout),
    }
    for name, value in lstm_params.items():
        if name in params and params.pop(name) != value:
            raise ValueError(f"{name} is fixed by the torch.nn.LSTM ({value!r}); do not "
                             "pass a different value.")
    for name, supported in _TORCH_ACTIVATIONS.items():
        if params.get(name, supported) != supported:
            raise ValueError(f"torch.nn.LSTM only has {name}={supported!r}; got "
                             f"{params[name]!r}.")

    n_directions = 2 if lstm.bidirectional else 1
    n_features_out = n_directions * (lstm.proj_size or lstm.hidden_size)
    if head.in_features != n_features_out:
        raise ValueError(
            f"head.in_features is {head.in_features}, but the LSTM's final hidden state has "
            f"{n_features_out} features (num_directions * (proj_size or hidden_size) = "
            f"{n_directions} * {lstm.proj_size or lstm.hidden_size})."
        )
    n_outputs = head.out_features

    # A torch LSTM reads its inputs as they come.
    params.setdefault("normalization", None)
    if classes is None:
        estimator = LSTMRegressor(**lstm_params, dtype=dtype, **params)
    else:
        classes, order = _check_classes(classes, n_outputs)
        estimator = LSTMClassifier(**lstm_params, dtype=dtype, **params)
    # As fit does, so that an invalid parameter fails now, not at predict time.
    estimator._validate_params()
    estimator._check_parameter_combinations()
    np_dtype = np.dtype(estimator.dtype)

    state = lstm.state_dict()
    weights = {}
    for name, shape in estimator._parameter_shapes(lstm.input_size, n_outputs):
        if name.startswith("head."):
            tensor = getattr(head, name[len("head."):])
        else:
            tensor = state.get(name)
        if tensor is None:
            # Only biases can be absent (bias=False); zero is what torch adds then.
            weights[name] = np.zeros(shape, dtype=np_dtype)
            continue
        weights[name] = _numpy(torch, tensor, np_dtype)
        if weights[name].shape != shape:
            raise ValueError(f"{name} has shape {weights[name].shape}, expected {shape}.")
        if not np.isfinite(weights[name]).all():
            raise ValueError(f"{name} contains NaN or infinity (in {np_dtype.name}).")

    if classes is None:
        estimator.n_outputs_ = n_outputs
        # Matches fit, which returns 1-D predictions for a 1-D y only.
        estimator._y_ndim = 1 if n_outputs == 1 else 2
    else:
        estimator.classes_ = classes[order]
        weights["head.weight"] = weights["head.weight"][order]
        weights["head.bias"] = weights["head.bias"][order]
    estimator.n_features_in_ = lstm.input_size
    estimator.weights_ = weights
    estimator.scaler_ = None
    estimator.output_mode_ = "last"
    # No training happened, so no kernels ran and no epochs were recorded.
    estimator.backend_ = None
    estimator.history_ = []
    estimator.n_iter_ = 0
    return estimator
