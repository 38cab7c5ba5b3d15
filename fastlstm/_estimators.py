"""scikit-learn estimators: LSTMClassifier and LSTMRegressor.

The estimators own parameter checking, target encoding and fitted state; the
numerical work happens in ``_trainer`` and below. Fitted attributes are only
assigned once a fit has succeeded, so a failed fit leaves an earlier model
intact.
"""

import warnings
from abc import ABC, abstractmethod
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._backends import BACKEND_NAMES, get_backend
from ._kernels._activations import GATE_ACTIVATIONS, STATE_ACTIVATIONS
from ._losses import cross_entropy, mean_squared_error, softmax
from ._network import NetworkShape
from ._optim import CLIP_METHODS, OPTIMIZERS
from ._trainer import TrainingOptions, effective_n_threads, predict_outputs, train
from ._validation import check_sequences
from ._weights import (
    BIAS_INITIALIZERS,
    WEIGHT_INITIALIZERS,
    flatten,
    init_parameters,
    parameter_shapes,
    unflatten,
)


class BaseLSTM(BaseEstimator, ABC):
    """Shared parameters, fit and inference of the LSTM estimators.

    Do not use directly; use :class:`LSTMClassifier` or :class:`LSTMRegressor`.
    """

    _parameter_constraints: dict = {
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "num_layers": [Interval(Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "proj_size": [Interval(Integral, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "gate_activation": [StrOptions(set(GATE_ACTIVATIONS))],
        "state_activation": [StrOptions(set(STATE_ACTIVATIONS))],
        "input_weights_initializer": [StrOptions(set(WEIGHT_INITIALIZERS))],
        "recurrent_weights_initializer": [StrOptions(set(WEIGHT_INITIALIZERS))],
        "bias_initializer": [StrOptions(set(BIAS_INITIALIZERS))],
        "sequence_length": [StrOptions({"longest"}), Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "gradient_threshold": [Interval(Real, 0, None, closed="neither"), None],
        "gradient_threshold_method": [StrOptions(set(CLIP_METHODS))],
        "shuffle": [StrOptions({"every-epoch", "once", "never"})],
        "backend": [StrOptions(set(BACKEND_NAMES))],
        "dtype": [StrOptions({"float32", "float64"})],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        hidden_size=100,
        num_layers=1,
        bidirectional=False,
        proj_size=0,
        dropout=0.0,
        gate_activation="sigmoid",
        state_activation="tanh",
        input_weights_initializer="glorot",
        recurrent_weights_initializer="orthogonal",
        bias_initializer="unit-forget-gate",
        sequence_length="longest",
        max_epochs=30,
        batch_size=32,
        learning_rate=1e-3,
        optimizer="adam",
        momentum=0.9,
        gradient_threshold=None,
        gradient_threshold_method="l2norm",
        shuffle="every-epoch",
        backend="auto",
        dtype="float32",
        n_jobs=None,
        random_state=None,
        verbose=0,
    ):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.dropout = dropout
        self.gate_activation = gate_activation
        self.state_activation = state_activation
        self.input_weights_initializer = input_weights_initializer
        self.recurrent_weights_initializer = recurrent_weights_initializer
        self.bias_initializer = bias_initializer
        self.sequence_length = sequence_length
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.momentum = momentum
        self.gradient_threshold = gradient_threshold
        self.gradient_threshold_method = gradient_threshold_method
        self.shuffle = shuffle
        self.backend = backend
        self.dtype = dtype
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # -- what subclasses define ------------------------------------------------

    @abstractmethod
    def _encode_targets(self, y, n_sequences):
        """Check y; return (encoded targets, n_outputs, fitted target attributes)."""

    @abstractmethod
    def _loss(self):
        """The loss on the output layer: ``loss(outputs, targets)``."""

    # -- fitting ---------------------------------------------------------------

    def _network_shape(self):
        return NetworkShape(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=bool(self.bidirectional),
            proj_size=self.proj_size,
            gate_kind=GATE_ACTIVATIONS[self.gate_activation],
            state_kind=STATE_ACTIVATIONS[self.state_activation],
        )

    def _parameter_shapes(self, n_features, n_outputs):
        return parameter_shapes(n_features, self.hidden_size, self.num_layers,
                                bool(self.bidirectional), n_outputs, self.proj_size)

    def _check_parameter_combinations(self):
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size (as in torch.nn.LSTM); got "
                f"proj_size={self.proj_size} and hidden_size={self.hidden_size}."
            )
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"dropout={self.dropout} has no effect with num_layers=1: dropout acts "
                "between stacked layers (as in torch.nn.LSTM).", UserWarning, stacklevel=3,
            )
        if self.sequence_length != "longest" and self.bidirectional:
            raise ValueError(
                "sequence_length as an integer (truncated backpropagation through time) "
                "needs bidirectional=False: the reverse direction of a chunk would need "
                "the state of the chunk after it."
            )

    def fit(self, X, y):
        """Train the network on sequences X with targets y.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            Sequences of possibly different lengths: a list of 2-D arrays, a
            3-D array (n_sequences, T, n_features) or a 2-D array
            (n_sequences, T) of univariate sequences.
        y : array-like of shape (n_sequences,) or (n_sequences, n_outputs)
            One target per sequence.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._validate_params()
        self._check_parameter_combinations()
        dtype = np.dtype(self.dtype)
        sequences, lengths = check_sequences(X, dtype=dtype)
        targets, n_outputs, target_attributes = self._encode_targets(y, len(sequences))
        backend = get_backend(self.backend)
        rng = check_random_state(self.random_state)
        n_features = sequences[0].shape[1]
        shapes = self._parameter_shapes(n_features, n_outputs)
        flat_params = init_parameters(
            shapes, rng, dtype,
            input_weights_initializer=self.input_weights_initializer,
            recurrent_weights_initializer=self.recurrent_weights_initializer,
            bias_initializer=self.bias_initializer,
        )
        options = TrainingOptions(
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            learning_rate=float(self.learning_rate),
            optimizer=self.optimizer,
            momentum=float(self.momentum),
            gradient_threshold=self.gradient_threshold,
            gradient_threshold_method=self.gradient_threshold_method,
            shuffle=self.shuffle,
            dropout=float(self.dropout),
            sequence_length=None if self.sequence_length == "longest" else self.sequence_length,
            n_threads=effective_n_threads(self.n_jobs),
            verbose=int(self.verbose),
        )
        history = train(flat_params, shapes, self._network_shape(), sequences, lengths,
                        targets, self._loss(), options, rng, backend)

        # Only now, with training done, does the estimator change.
        for name, value in target_attributes.items():
            setattr(self, name, value)
        self.n_features_in_ = n_features
        self.weights_ = {
            name: view.copy() for name, view in unflatten(flat_params, shapes).items()
        }
        self.backend_ = backend.name
        self.history_ = history
        self.n_iter_ = len(history)
        return self

    # -- inference ---------------------------------------------------------------

    def _outputs(self, X):
        """Output-layer values for X, one row per sequence."""
        check_is_fitted(self)
        dtype = np.dtype(self.dtype)
        sequences, lengths = check_sequences(X, dtype=dtype, n_features=self.n_features_in_)
        shapes = self._parameter_shapes(self.n_features_in_, self.weights_["head.bias"].shape[0])
        flat_params = flatten(self.weights_, shapes, dtype)
        return predict_outputs(flat_params, shapes, self._network_shape(), sequences, lengths,
                               get_backend(self.backend), effective_n_threads(self.n_jobs))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags


def _check_n_targets(y, n_sequences):
    if y.shape[0] != n_sequences:
        raise ValueError(
            f"X has {n_sequences} sequences but y has {y.shape[0]} targets; "
            "expected one target per sequence."
        )


class LSTMClassifier(ClassifierMixin, BaseLSTM):
    """Sequence classifier: an LSTM network with a softmax output layer.

    Each sequence (of any length) gets one label. The network reads the final
    hidden state of the last layer (for a bidirectional layer, the forward
    direction's state after the last step and the reverse direction's after the
    first step, as MATLAB's ``OutputMode="last"``) and maps it to class scores.

    Parameters
    ----------
    hidden_size : int, default=100
        Hidden units per direction and layer.
    num_layers : int, default=1
        Stacked LSTM layers.
    bidirectional : bool, default=False
        Run every layer in both time directions and concatenate the outputs.
    proj_size : int, default=0
        Project each layer's hidden state to this size (``torch.nn.LSTM``'s
        ``proj_size``, MATLAB's ``lstmProjectedLayer``); 0 for no projection.
        Must be smaller than ``hidden_size``.
    dropout : float, default=0.0
        Dropout probability on the outputs of every layer but the last.
    gate_activation : {"sigmoid", "hard-sigmoid"}, default="sigmoid"
        Activation of the input, forget and output gates; the hard sigmoid is
        MATLAB's and Keras's clip(0.2 x + 0.5, 0, 1).
    state_activation : {"tanh", "softsign"}, default="tanh"
        Activation of the cell candidate and of the cell state.
    input_weights_initializer : {"glorot", "he", "orthogonal", "narrow-normal", \
"zeros"}, default="glorot"
        Initialiser of the input weights (and projections), with MATLAB's names.
    recurrent_weights_initializer : {"glorot", "he", "orthogonal", \
"narrow-normal", "zeros"}, default="orthogonal"
        Initialiser of the recurrent weights.
    bias_initializer : {"unit-forget-gate", "narrow-normal", "ones", "zeros"}, \
default="unit-forget-gate"
        "unit-forget-gate" starts the forget gate's bias at 1, the others at 0.
    sequence_length : "longest" or int, default="longest"
        "longest" backpropagates through whole sequences. An integer cuts the
        sequences of each mini-batch into chunks of that many steps, processed
        in order with the state carried from chunk to chunk and gradients
        stopped at chunk boundaries (truncated backpropagation through time,
        MATLAB's semantics): memory then grows with the chunk, not the
        sequence. Needs ``bidirectional=False``.
    max_epochs : int, default=30
        Passes over the training data.
    batch_size : int, default=32
        Sequences per mini-batch.
    learning_rate : float, default=0.001
        Step size of the optimiser.
    optimizer : {"adam", "sgdm"}, default="adam"
        Adam, or stochastic gradient descent with momentum.
    momentum : float, default=0.9
        Momentum of "sgdm".
    gradient_threshold : float or None, default=None
        Clip gradients above this threshold; None disables clipping.
    gradient_threshold_method : {"l2norm", "global-l2norm", "absolute-value"}, \
default="l2norm"
        How to clip (MATLAB's methods): each parameter tensor's L2 norm, the
        L2 norm of all gradients together, or each element.
    shuffle : {"every-epoch", "once", "never"}, default="every-epoch"
        When to shuffle the order of the length-sorted mini-batches.
    backend : {"auto", "numba", "cython", "reference"}, default="auto"
        Compute kernels. "auto" uses numba once its compiled kernels are in
        numba's cache, and the ahead-of-time compiled Cython kernels (while
        numba compiles in the background) before that; it is decided once per
        process. "reference" is the slow NumPy oracle, for testing. The two
        compiled backends agree to about 1e-6 in float32, not to the bit: pin
        one for bit-for-bit reproducibility across processes.
    dtype : {"float32", "float64"}, default="float32"
        Precision of parameters and computation.
    n_jobs : int or None, default=None
        Threads for the two directions of a layer and the shards of a
        mini-batch. None uses every available core, but no more than a
        joblib or dask worker is allotted; -1 all cores. The model does not
        depend on it: the same ``random_state`` gives the same weights with
        any number of threads.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, batch order and dropout.
    verbose : int, default=0
        Print one line per epoch when positive.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Features per time step.
    weights_ : dict of str to ndarray
        Parameters named and laid out as ``torch.nn.LSTM.state_dict()``
        (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
        ``..._reverse``; gates i, f, g, o) plus ``head.weight`` and
        ``head.bias`` (logits = features @ head.weight.T + head.bias).
    backend_ : str
        The backend that trained the model (what "auto" resolved to).
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``learning_rate``, ``seconds``.
    n_iter_ : int
        Epochs run.

    Examples
    --------
    >>> from fastlstm import LSTMClassifier
    >>> from fastlstm.datasets import load_japanese_vowels
    >>> X_train, y_train, X_test, y_test = load_japanese_vowels()
    >>> clf = LSTMClassifier(max_epochs=2, random_state=0).fit(X_train, y_train)
    >>> clf.predict(X_test[:3]).shape
    (3,)
    """

    def _encode_targets(self, y, n_sequences):
        y = column_or_1d(np.asarray(y), warn=True)
        _check_n_targets(y, n_sequences)
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"y has only one class ({classes[0]}); a classifier needs at least two."
            )
        return encoded.astype(np.intp), len(classes), {"classes_": classes}

    def _loss(self):
        return cross_entropy

    def predict_proba(self, X):
        """Class probabilities of each sequence.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            Sequences, in any layout that :meth:`fit` accepts.

        Returns
        -------
        proba : ndarray of shape (n_sequences, n_classes)
            Columns follow ``classes_``.
        """
        return softmax(self._outputs(X).astype(np.float64))

    def predict(self, X):
        """Most likely class of each sequence.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray

        Returns
        -------
        y : ndarray of shape (n_sequences,)
        """
        outputs = self._outputs(X)  # checks that the model is fitted
        return self.classes_[np.argmax(outputs, axis=1)]


class LSTMRegressor(RegressorMixin, BaseLSTM):
    """Sequence regressor: an LSTM network with a linear output layer.

    Each sequence (of any length) gets one value, or one vector of values,
    read from the final hidden state of the last layer, trained on the mean
    squared error (``torch.nn.MSELoss``).

    Parameters
    ----------
    hidden_size, num_layers, bidirectional, proj_size, dropout, gate_activation, \
state_activation, input_weights_initializer, recurrent_weights_initializer, \
bias_initializer, sequence_length, max_epochs, batch_size, learning_rate, optimizer, \
momentum, gradient_threshold, gradient_threshold_method, shuffle, backend, dtype, \
n_jobs, random_state, verbose
        As for :class:`LSTMClassifier`.

    Attributes
    ----------
    n_outputs_ : int
        Targets per sequence.
    n_features_in_ : int
        Features per time step.
    weights_ : dict of str to ndarray
        As for :class:`LSTMClassifier`; ``head`` maps to the outputs.
    backend_ : str
        The backend that trained the model (what "auto" resolved to).
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``learning_rate``, ``seconds``.
    n_iter_ : int
        Epochs run.
    """

    def _encode_targets(self, y, n_sequences):
        y = np.asarray(y)
        if y.dtype == object or not np.issubdtype(y.dtype, np.number):
            raise TypeError(f"y must be numeric for a regressor; got dtype {y.dtype}.")
        if y.ndim not in (1, 2):
            raise ValueError(
                f"y must be 1-D (n_sequences,) or 2-D (n_sequences, n_outputs); got shape {y.shape}."
            )
        _check_n_targets(y, n_sequences)
        if not np.isfinite(y).all():
            index = int(np.nonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0][0])
            raise ValueError(f"y contains NaN or infinity (first at target {index}).")
        targets = y.reshape(n_sequences, -1).astype(np.dtype(self.dtype))
        return targets, targets.shape[1], {"n_outputs_": targets.shape[1],
                                           "_y_ndim": y.ndim}

    def _loss(self):
        return mean_squared_error

    def predict(self, X):
        """Predicted target of each sequence.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray

        Returns
        -------
        y : ndarray of shape (n_sequences,) or (n_sequences, n_outputs)
            1-D when ``fit`` got a 1-D y.
        """
        outputs = self._outputs(X)
        return outputs[:, 0] if self._y_ndim == 1 else outputs
