"""scikit-learn estimators: LSTMClassifier and LSTMRegressor.

The estimators own parameter checking, target encoding and fitted state; the
numerical work happens in ``_trainer`` and below. Fitted attributes are only
assigned once a fit has succeeded, so a failed fit leaves an earlier model
intact.
"""

from abc import ABC, abstractmethod
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._backends import BACKEND_NAMES, get_backend
from ._losses import cross_entropy, mean_squared_error, softmax
from ._network import NetworkShape
from ._optim import CLIP_METHODS, OPTIMIZERS
from ._trainer import TrainingOptions, predict_outputs, train
from ._validation import check_sequences
from ._weights import flatten, init_parameters, parameter_shapes, unflatten


class BaseLSTM(BaseEstimator, ABC):
    """Shared parameters, fit and inference of the LSTM estimators.

    Do not use directly; use :class:`LSTMClassifier` or :class:`LSTMRegressor`.
    """

    _parameter_constraints: dict = {
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "num_layers": [Interval(Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
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
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    @abstractmethod
    def __init__(
        self,
        *,
        hidden_size,
        num_layers,
        bidirectional,
        dropout,
        max_epochs,
        batch_size,
        learning_rate,
        optimizer,
        momentum,
        gradient_threshold,
        gradient_threshold_method,
        shuffle,
        backend,
        dtype,
        random_state,
        verbose,
    ):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = dropout
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
        return NetworkShape(self.hidden_size, self.num_layers, bool(self.bidirectional))

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
        dtype = np.dtype(self.dtype)
        sequences, lengths = check_sequences(X, dtype=dtype)
        targets, n_outputs, target_attributes = self._encode_targets(y, len(sequences))
        backend = get_backend(self.backend)
        rng = check_random_state(self.random_state)
        n_features = sequences[0].shape[1]
        net_shape = self._network_shape()
        shapes = parameter_shapes(n_features, self.hidden_size, self.num_layers,
                                  net_shape.bidirectional, n_outputs)
        flat_params = init_parameters(shapes, rng, dtype)
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
            verbose=int(self.verbose),
        )
        history = train(flat_params, shapes, net_shape, sequences, lengths, targets,
                        self._loss(), options, rng, backend)

        # Only now, with training done, does the estimator change.
        for name, value in target_attributes.items():
            setattr(self, name, value)
        self.n_features_in_ = n_features
        self.weights_ = {
            name: view.copy() for name, view in unflatten(flat_params, shapes).items()
        }
        self.history_ = history
        self.n_iter_ = len(history)
        return self

    # -- inference ---------------------------------------------------------------

    def _outputs(self, X):
        """Output-layer values for X, one row per sequence."""
        check_is_fitted(self)
        dtype = np.dtype(self.dtype)
        sequences, lengths = check_sequences(X, dtype=dtype, n_features=self.n_features_in_)
        net_shape = self._network_shape()
        n_outputs = self.weights_["head.bias"].shape[0]
        shapes = parameter_shapes(self.n_features_in_, self.hidden_size, self.num_layers,
                                  net_shape.bidirectional, n_outputs)
        flat_params = flatten(self.weights_, shapes, dtype)
        return predict_outputs(flat_params, shapes, net_shape, sequences, lengths,
                               get_backend(self.backend))

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
    dropout : float, default=0.0
        Dropout probability on the outputs of every layer but the last.
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
    gradient_threshold_method : {"l2norm", "global-l2norm", "absolute-value"}, default="l2norm"
        How to clip (MATLAB's methods): each parameter tensor's L2 norm, the
        L2 norm of all gradients together, or each element.
    shuffle : {"every-epoch", "once", "never"}, default="every-epoch"
        When to shuffle the order of the length-sorted mini-batches.
    backend : {"auto", "numba", "reference"}, default="auto"
        Compute kernels; "reference" is the slow NumPy oracle, for testing.
    dtype : {"float32", "float64"}, default="float32"
        Precision of parameters and computation.
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

    def __init__(
        self,
        *,
        hidden_size=100,
        num_layers=1,
        bidirectional=False,
        dropout=0.0,
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
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            momentum=momentum,
            gradient_threshold=gradient_threshold,
            gradient_threshold_method=gradient_threshold_method,
            shuffle=shuffle,
            backend=backend,
            dtype=dtype,
            random_state=random_state,
            verbose=verbose,
        )

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
    hidden_size, num_layers, bidirectional, dropout, max_epochs, batch_size, \
learning_rate, optimizer, momentum, gradient_threshold, gradient_threshold_method, \
shuffle, backend, dtype, random_state, verbose
        As for :class:`LSTMClassifier`.

    Attributes
    ----------
    n_outputs_ : int
        Targets per sequence.
    n_features_in_ : int
        Features per time step.
    weights_ : dict of str to ndarray
        As for :class:`LSTMClassifier`; ``head`` maps to the outputs.
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``learning_rate``, ``seconds``.
    n_iter_ : int
        Epochs run.
    """

    def __init__(
        self,
        *,
        hidden_size=100,
        num_layers=1,
        bidirectional=False,
        dropout=0.0,
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
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            momentum=momentum,
            gradient_threshold=gradient_threshold,
            gradient_threshold_method=gradient_threshold_method,
            shuffle=shuffle,
            backend=backend,
            dtype=dtype,
            random_state=random_state,
            verbose=verbose,
        )

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
