"""scikit-learn estimators: LSTMClassifier and LSTMRegressor.

The estimators own parameter checking, target encoding, weights, validation
data and fitted state; the numerical work happens in ``_trainer`` and below.

The task is read from y: one target per sequence (y 1-D, or 2-D for several
regression outputs) trains a sequence-to-one model that reads the network's
final state; one target per time step (y a list of arrays, one per sequence,
as long as the sequence) trains a sequence-to-sequence model that reads the
output at every step. ``predict`` answers in the same layout.

Fitted attributes are only assigned once a fit has succeeded, so a failed fit
leaves an earlier model intact.
"""

import warnings
from abc import ABC, abstractmethod
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ._backends import BACKEND_NAMES, get_backend
from ._kernels._activations import GATE_ACTIVATIONS, STATE_ACTIVATIONS
from ._losses import cross_entropy, mean_squared_error, softmax
from ._network import NetworkShape
from ._optim import CLIP_METHODS, OPTIMIZERS
from ._streaming import StreamingNetwork, stack_if_equal_shapes
from ._trainer import (
    Targets,
    Trainer,
    TrainingLog,
    TrainingOptions,
    effective_n_threads,
    network_outputs,
    single_threaded_blas,
    split_rows,
)
from ._validation import check_sequences, check_step_targets, is_per_step_target
from ._weights import (
    BIAS_INITIALIZERS,
    WEIGHT_INITIALIZERS,
    checked_weights,
    flatten,
    init_parameters,
    parameter_shapes,
    unflatten,
)
from .preprocessing import SequenceScaler, scale_stacked

NORMALIZATIONS = ("zscore", "zerocenter", "rescale-symmetric", "rescale-zero-one")


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
        "normalization": [StrOptions(set(NORMALIZATIONS)), None],
        "sequence_length": [StrOptions({"longest", "shortest"}),
                            Interval(Integral, 1, None, closed="left")],
        "bucketing": ["boolean"],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "learning_rate_schedule": [StrOptions({"none", "piecewise"})],
        "learning_rate_drop_factor": [Interval(Real, 0, 1, closed="both")],
        "learning_rate_drop_period": [Interval(Integral, 1, None, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "beta1": [Interval(Real, 0, 1, closed="left")],
        "beta2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "squared_gradient_decay_factor": [Interval(Real, 0, 1, closed="left")],
        "gradient_threshold": [Interval(Real, 0, None, closed="neither"), None],
        "gradient_threshold_method": [StrOptions(set(CLIP_METHODS))],
        "l2_regularization": [Interval(Real, 0, None, closed="left")],
        "shuffle": [StrOptions({"every-epoch", "once", "never"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
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
        normalization="zscore",
        sequence_length="longest",
        bucketing=True,
        max_epochs=30,
        batch_size=32,
        learning_rate=1e-3,
        learning_rate_schedule="none",
        learning_rate_drop_factor=0.1,
        learning_rate_drop_period=10,
        optimizer="adam",
        momentum=0.9,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        squared_gradient_decay_factor=0.9,
        gradient_threshold=None,
        gradient_threshold_method="l2norm",
        l2_regularization=1e-4,
        shuffle="every-epoch",
        validation_fraction=None,
        early_stopping=False,
        n_iter_no_change=5,
        warm_start=False,
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
        self.normalization = normalization
        self.sequence_length = sequence_length
        self.bucketing = bucketing
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_schedule = learning_rate_schedule
        self.learning_rate_drop_factor = learning_rate_drop_factor
        self.learning_rate_drop_period = learning_rate_drop_period
        self.optimizer = optimizer
        self.momentum = momentum
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.squared_gradient_decay_factor = squared_gradient_decay_factor
        self.gradient_threshold = gradient_threshold
        self.gradient_threshold_method = gradient_threshold_method
        self.l2_regularization = l2_regularization
        self.shuffle = shuffle
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.warm_start = warm_start
        self.backend = backend
        self.dtype = dtype
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # -- what subclasses define ------------------------------------------------

    @abstractmethod
    def _encode_targets(self, y, lengths, *, encoding=None, classes=None):
        """Check and encode y.

        Parameters
        ----------
        y : array-like or list of array-like
        lengths : ndarray of shape (n_sequences,)
        encoding : dict, default=None
            The fitted target attributes y must agree with (warm start,
            partial_fit, validation data); None derives them from y.
        classes : array-like, default=None
            All classes, for a first ``partial_fit``.

        Returns
        -------
        targets : Targets
            Without weights.
        encoding : dict
            The target attributes to set on a successful fit, with
            ``output_mode_`` ("last" or "sequence").
        """

    def _target_encoding(self):
        return {name: getattr(self, name) for name in self._ENCODING_ATTRIBUTES}

    def _row_weights(self, targets, sample_weight, lengths, encoding):
        """Weights of the target rows: sample weights, spread over steps."""
        weights = _sequence_weights(sample_weight, lengths, np.dtype(self.dtype))
        return np.repeat(weights, lengths) if targets.per_step else weights

    @abstractmethod
    def _loss(self):
        """The loss on the output layer: ``loss(outputs, values, weights)``."""

    @abstractmethod
    def _score_outputs(self, outputs, targets):
        """Accuracy or R^2 of raw outputs against encoded targets."""

    @abstractmethod
    def _decode_outputs(self, outputs):
        """Output-layer values (..., n_outputs) -> predictions (labels or values)."""

    @abstractmethod
    def _stream_decode(self):
        """How the streaming path decodes outputs (``StreamingNetwork``'s ``decode``)."""

    @abstractmethod
    def _decoded_stream_values(self, values):
        """What the streaming path decoded -> predictions, as :meth:`_decode_outputs` gives."""

    def _format_predictions(self, outputs, lengths):
        """Raw outputs (one row per sequence or per step) -> what ``predict`` returns."""
        values = self._decode_outputs(outputs)
        return self._split_steps(values, lengths) if self.output_mode_ == "sequence" else values

    # -- structure -------------------------------------------------------------

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
        if isinstance(self.sequence_length, Integral) and self.bidirectional:
            raise ValueError(
                "sequence_length as an integer (truncated backpropagation through time) "
                "needs bidirectional=False: the reverse direction of a chunk would need "
                "the state of the chunk after it."
            )
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                f"dropout={self.dropout} has no effect with num_layers=1: dropout acts "
                "between stacked layers (as in torch.nn.LSTM).", UserWarning, stacklevel=3,
            )

    def _training_options(self):
        sequence_length = self.sequence_length
        if sequence_length == "longest":
            sequence_length = None
        return TrainingOptions(
            batch_size=self.batch_size,
            learning_rate=float(self.learning_rate),
            learning_rate_schedule=self.learning_rate_schedule,
            learning_rate_drop_factor=float(self.learning_rate_drop_factor),
            learning_rate_drop_period=self.learning_rate_drop_period,
            optimizer=self.optimizer,
            momentum=float(self.momentum),
            beta1=float(self.beta1),
            beta2=float(self.beta2),
            epsilon=float(self.epsilon),
            squared_gradient_decay_factor=float(self.squared_gradient_decay_factor),
            gradient_threshold=self.gradient_threshold,
            gradient_threshold_method=self.gradient_threshold_method,
            l2_regularization=float(self.l2_regularization),
            shuffle=self.shuffle,
            bucketing=bool(self.bucketing),
            dropout=float(self.dropout),
            sequence_length=sequence_length,
            early_stopping=bool(self.early_stopping),
            n_iter_no_change=self.n_iter_no_change,
            n_threads=effective_n_threads(self.n_jobs),
            verbose=int(self.verbose),
        )

    # -- inputs --------------------------------------------------------------------

    def _scaled(self, sequences, scaler):
        """``sequences`` (from ``check_sequences``) normalised by ``scaler``.

        They are checked already (2-D, finite, the model's dtype), so they are
        normalised stacked, as one array, and handed back as row blocks of
        it: one pass rather than one small pass and its checks per sequence
        (20 us each, half a millisecond of a 27-sequence prediction).
        """
        if scaler is None:
            return sequences
        # scaler.transform, less its checks of the input (done) and its
        # handling of NaN padding (none left): 150 us per call.
        stacked = scale_stacked(scaler, np.concatenate(sequences)).astype(self.dtype, copy=False)
        return self._split_steps(stacked, [len(seq) for seq in sequences])

    def _weight_shapes(self):
        n_outputs = self.weights_["head.bias"].shape[0]
        return self._parameter_shapes(self.n_features_in_, n_outputs)

    def _flat_weights(self, dtype=None):
        shapes = self._weight_shapes()
        return flatten(self.weights_, shapes, np.dtype(dtype or self.dtype)), shapes

    def _checked_weights(self):
        return checked_weights(self.weights_, self._weight_shapes(), np.dtype(self.dtype))

    # -- fitting ---------------------------------------------------------------

    def fit(self, X, y, sample_weight=None, validation_data=None):
        """Train the network on sequences X with targets y.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            Sequences of possibly different lengths: a list (or object array)
            of 2-D arrays, a 3-D array (n_sequences, T, n_features) whose
            shorter sequences may end in NaN rows, or a 2-D array
            (n_sequences, T) of univariate sequences.
        y : array-like of shape (n_sequences,) or (n_sequences, n_outputs), \
or list of array-like of shape (T_i,) or (T_i, n_outputs)
            One target per sequence, or one per time step of every sequence.
        sample_weight : array-like of shape (n_sequences,), default=None
            Weight of each sequence in the loss (all its steps, for per-step
            targets); None weighs all equally. Routed by scikit-learn's
            metadata routing (``set_fit_request``).
        validation_data : tuple (X_val, y_val), default=None
            Held-out data scored after every epoch (``history_``), and used
            by ``early_stopping``. Overrides ``validation_fraction``.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._validate_params()
        self._check_parameter_combinations()
        warm = bool(self.warm_start) and hasattr(self, "weights_")
        return self._fit(X, y, sample_weight, validation_data, warm=warm,
                         n_epochs=self.max_epochs, incremental=False)

    def _partial_fit(self, X, y, sample_weight, classes):
        first_call = not hasattr(self, "weights_")
        if first_call:
            self._validate_params()
            self._check_parameter_combinations()
        return self._fit(X, y, sample_weight, None, warm=not first_call, n_epochs=1,
                         incremental=True, classes=classes)

    def _fit(self, X, y, sample_weight, validation_data, *, warm, n_epochs, incremental,
             classes=None):
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        dtype = np.dtype(self.dtype)
        sequences, lengths = check_sequences(
            X, dtype=dtype, n_features=self.n_features_in_ if warm else None)
        n_features = sequences[0].shape[1]
        targets, encoding = self._encode_targets(
            y, lengths, encoding=self._target_encoding() if warm else None, classes=classes)
        targets.weights = self._row_weights(targets, sample_weight, lengths, encoding)
        rng = check_random_state(self.random_state)
        if incremental and warm:
            # Each partial_fit call draws its own batches and dropout masks.
            rng = np.random.RandomState(rng.randint(np.iinfo(np.int32).max - 10**6) + self.n_iter_)

        validation = None
        if validation_data is not None:
            X_val, y_val = validation_data
            val_sequences, val_lengths = check_sequences(X_val, dtype=dtype, n_features=n_features)
            val_targets, _ = self._encode_targets(y_val, val_lengths, encoding=encoding)
            validation = [val_sequences, val_lengths, val_targets]
        elif self.validation_fraction is not None and not incremental:
            sequences, lengths, targets, validation = self._split_validation(
                sequences, lengths, targets, rng)
        if self.early_stopping and validation is None:
            raise ValueError(
                "early_stopping=True needs validation data: set validation_fraction or "
                "pass fit(..., validation_data=(X_val, y_val))."
            )

        # Normalisation statistics come from the training sequences only.
        if warm:
            scaler = self.scaler_
        elif self.normalization is None:
            scaler = None
        else:
            scaler = SequenceScaler(method=self.normalization).fit(sequences)
        sequences = self._scaled(sequences, scaler)

        backend = get_backend(self.backend)
        shapes = self._parameter_shapes(n_features, _n_outputs(encoding))
        if warm:
            flat_params, _ = self._flat_weights(dtype)
        else:
            # The orthogonal initialiser's QR runs on NumPy's BLAS: held to one
            # thread as in training (with the other core busy, two BLAS
            # threads made this QR take 1 s instead of 1 ms).
            with single_threaded_blas():
                flat_params = init_parameters(
                    shapes, rng, dtype,
                    input_weights_initializer=self.input_weights_initializer,
                    recurrent_weights_initializer=self.recurrent_weights_initializer,
                    bias_initializer=self.bias_initializer,
                )
        net_shape = self._network_shape()
        trainer = self._make_trainer(flat_params, shapes, net_shape, backend,
                                     per_step=targets.per_step)
        # A model that was never trained here (interop.from_torch) has no
        # optimiser state: it continues with a fresh optimiser.
        if incremental and warm and getattr(self, "_optimizer_state", None) is not None:
            trainer.optimizer.load_state_dict(self._optimizer_state)
            trainer.epochs_done = self.n_iter_
            trainer.iterations_done = self._n_iterations

        validate = None
        if validation is not None:
            val_sequences, val_lengths, val_targets = validation
            val_sequences = self._scaled(val_sequences, scaler)
            val_targets.weights = np.ones(len(val_targets.values), dtype=dtype)

            val_params = unflatten(flat_params, shapes)  # views: they follow the training

            def validate():
                outputs = network_outputs(val_params, net_shape, val_sequences,
                                          val_lengths, backend, per_step=val_targets.per_step,
                                          n_threads=trainer.options.n_threads)
                loss, _ = self._loss()(outputs, val_targets.values, val_targets.weights)
                return loss, self._score_outputs(outputs, val_targets)

        log = TrainingLog(int(self.verbose)) if self.verbose else None
        history = trainer.run_epochs(sequences, lengths, targets, n_epochs, rng,
                                     validate=validate, log=log)

        # Only now, with training done, does the estimator change.
        for name, value in encoding.items():
            setattr(self, name, value)
        self.n_features_in_ = n_features
        self.scaler_ = scaler
        self.weights_ = {name: view.copy() for name, view in unflatten(flat_params, shapes).items()}
        self.backend_ = backend.name
        self.history_ = (self.history_ if incremental and warm else []) + history
        self.n_iter_ = trainer.epochs_done
        self._n_iterations = trainer.iterations_done
        self._optimizer_state = trainer.optimizer.state_dict()
        self._state = None
        return self

    def _make_trainer(self, flat_params, shapes, net_shape, backend, *, per_step):
        """The training loop: on the GPU for backend="cuda" where it supports the
        options (everything stays on the device), otherwise on the host."""
        options = self._training_options()
        if backend.name == "cuda" and not per_step:
            # Imported here: it imports numba.cuda, which only backend="cuda" needs.
            from ._cuda_training import DeviceTrainer

            try:
                return DeviceTrainer(flat_params, shapes, net_shape, self._loss(), options,
                                     backend)
            except NotImplementedError:
                pass  # e.g. dropout or projections: the host loop calls the same kernels
        return Trainer(flat_params, shapes, net_shape, self._loss(), options, backend)

    def _split_validation(self, sequences, lengths, targets, rng):
        """Hold out ``validation_fraction`` of the sequences, stratified by class
        for sequence-to-label classification."""
        indices = np.arange(len(sequences))
        stratify = None
        if isinstance(self, ClassifierMixin) and not targets.per_step:
            if np.unique(targets.values, return_counts=True)[1].min() >= 2:
                stratify = targets.values
        train, held_out = train_test_split(indices, test_size=self.validation_fraction,
                                           random_state=rng, stratify=stratify)
        train.sort()
        held_out.sort()
        validation = [[sequences[i] for i in held_out], lengths[held_out],
                      _subset_targets(targets, lengths, held_out)]
        return ([sequences[i] for i in train], lengths[train],
                _subset_targets(targets, lengths, train), validation)

    # -- inference ---------------------------------------------------------------

    def _outputs(self, X, *, h0=None, c0=None, return_states=False):
        """Output-layer values for X: one row per sequence, or per step."""
        _check_fitted(self)
        sequences, lengths = check_sequences(X, dtype=np.dtype(self.dtype),
                                             n_features=self.n_features_in_)
        # Normalised after packing (input_transform), as _scaled does before:
        # the same float64 arithmetic on the same float32 values.
        scaler = self.scaler_
        result = network_outputs(
            self._checked_weights(), self._network_shape(), sequences, lengths,
            get_backend(self.backend), per_step=self.output_mode_ == "sequence",
            n_threads=effective_n_threads(self.n_jobs), h0=h0, c0=c0,
            return_states=return_states,
            input_transform=None if scaler is None else lambda X: scale_stacked(scaler, X),
        )
        return (result, lengths) if not return_states else (*result, lengths)

    def _split_steps(self, values, lengths):
        """Per-step rows as a list of per-sequence arrays (views of ``values``)."""
        return split_rows(values, lengths)

    def reset_state(self):
        """Forget the state kept by :meth:`predict_and_update_state`.

        Returns
        -------
        self : object
        """
        self._state = None
        return self

    def predict_and_update_state(self, X):
        """Predict, starting from the kept state, and keep the state reached.

        As MATLAB's ``predictAndUpdateState``: the network starts from the
        state the previous call ended in (zeros after ``fit`` or
        :meth:`reset_state`), so feeding a sequence in pieces gives the same
        predictions as feeding it whole. Sequence ``i`` of every call
        continues sequence ``i`` of the previous call.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            The next steps of each sequence.

        Returns
        -------
        y : as :meth:`predict`
            Predictions for these steps (for a sequence-to-one model, at the
            end of each piece).

        Notes
        -----
        For a streaming loop, pass a 3-D array (n_sequences, T, n_features),
        e.g. shape (1, 1, n_features) for one new step of one stream, or a
        list of arrays (T, n_features) of one shape: with the numba backend
        such calls run the whole network in one compiled function (a few
        microseconds for a small network) instead of the general path
        (validation, packing, one kernel call per layer).
        """
        streaming = self._streaming_network()
        result = None if streaming is None else streaming.predict(X, getattr(self, "_state", None))
        if result is not None:
            values, self._state = result
            # (B, T) per step or (B,); then (n_outputs,) for a multi-output regressor.
            values = self._decoded_stream_values(values)
            if not streaming.per_step:
                return values
            # Not list(values): NumPy's iterator costs about 0.5 us more for one
            # stream (1.0-1.2 against 0.6-0.7 us), 5 % of a W4 step. One stream
            # without the comprehension: 0.34 against 0.95 us (Zen 3).
            if len(values) == 1:
                return [values[0]]
            return [values[i] for i in range(len(values))]
        check_is_fitted(self)
        if self.bidirectional:
            raise ValueError(
                "predict_and_update_state needs a unidirectional network: a bidirectional "
                "layer reads each sequence backwards from its end, which a stream does not have."
            )
        n_sequences = len(check_sequences(X, dtype=np.dtype(self.dtype),
                                          n_features=self.n_features_in_)[0])
        state = getattr(self, "_state", None)
        if state is not None and state[0].shape[1] != n_sequences:
            raise ValueError(
                f"The kept state is for {state[0].shape[1]} sequences but X has {n_sequences}; "
                "call reset_state() to start new sequences."
            )
        h0, c0 = (None, None) if state is None else state
        outputs, h_n, c_n, lengths = self._outputs(X, h0=h0, c0=c0, return_states=True)
        self._state = (h_n, c_n)
        return self._format_predictions(outputs, lengths)

    def _streaming_network(self):
        """The one-call streaming network for the fitted weights, or None where
        only the general path applies (unfitted, bidirectional, not numba).

        Built once per fitted model and kept until the weights, the scaler or
        a parameter that shapes the network changes.
        """
        weights = self.__dict__.get("weights_")
        if weights is None or self.bidirectional:
            return None
        scaler = self.__dict__.get("scaler_")
        decode = self._stream_decode()
        key = (self.hidden_size, self.num_layers, self.proj_size, self.gate_activation,
               self.state_activation, self.dtype, self.backend, self.output_mode_, decode)
        cached = self.__dict__.get("_streaming")
        if (cached is not None and cached[0] is weights and cached[1] is scaler
                and cached[2] == key):
            return cached[3]
        network = None
        if get_backend(self.backend).name == "numba":
            network = StreamingNetwork(weights, self._network_shape(), scaler,
                                       np.dtype(self.dtype), self.output_mode_ == "sequence",
                                       decode)
        self._streaming = (weights, scaler, key, network)
        return network

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_streaming", None)  # a cache, rebuilt on the first streaming call
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = True  # as trailing padding of 2-D/3-D arrays only
        return tags


def _subset_targets(targets, lengths, indices):
    """The targets of the sequences ``indices`` (rows of all their steps, if per step)."""
    if not targets.per_step:
        return Targets(targets.values[indices], targets.weights[indices])
    rows = np.concatenate([np.arange(targets.step_starts[i], targets.step_starts[i] + lengths[i])
                           for i in indices])
    starts = np.concatenate([[0], np.cumsum(lengths[indices])[:-1]]).astype(np.int64)
    return Targets(targets.values[rows], targets.weights[rows], starts)


def _sequence_weights(sample_weight, lengths, dtype):
    """Checked per-sequence weights (ones when None)."""
    n_sequences = len(lengths)
    if sample_weight is None:
        return np.ones(n_sequences, dtype=dtype)
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.ndim == 0:
        weights = np.full(n_sequences, float(weights))
    if weights.shape != (n_sequences,):
        raise ValueError(
            f"sample_weight has shape {weights.shape}; expected ({n_sequences},), one weight "
            "per sequence."
        )
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must be finite and non-negative.")
    if weights.sum() == 0:
        raise ValueError("sample_weight sums to zero: there is nothing to learn from.")
    return weights.astype(dtype)


def _check_n_targets(n_targets, n_sequences):
    if n_targets != n_sequences:
        raise ValueError(
            f"X has {n_sequences} sequences but y has {n_targets} targets; "
            "expected one target per sequence."
        )


def _check_fitted(estimator):
    """``check_is_fitted(estimator)`` without scikit-learn's tags (50 us a call).

    Every prediction starts with it; ``weights_`` is what fit leaves last.
    """
    if not hasattr(estimator, "weights_"):
        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            "appropriate arguments before using this estimator."
        )


def _n_outputs(encoding):
    if "classes_" in encoding:
        return len(encoding["classes_"])
    return encoding["n_outputs_"]


_PARAMETERS_DOC = """
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
    input_weights_initializer : {"glorot", "he", "orthogonal", "narrow-normal", \\
"zeros"}, default="glorot"
        Initialiser of the input weights (and projections), with MATLAB's names.
    recurrent_weights_initializer : {"glorot", "he", "orthogonal", \\
"narrow-normal", "zeros"}, default="orthogonal"
        Initialiser of the recurrent weights.
    bias_initializer : {"unit-forget-gate", "narrow-normal", "ones", "zeros"}, \\
default="unit-forget-gate"
        "unit-forget-gate" starts the forget gate's bias at 1, the others at 0.
    normalization : {"zscore", "zerocenter", "rescale-symmetric", \\
"rescale-zero-one"} or None, default="zscore"
        Input normalisation with per-feature statistics over all time steps
        of the training sequences, as MATLAB's ``sequenceInputLayer``; the
        fitted :class:`~fastlstm.SequenceScaler` is ``scaler_``.
    sequence_length : "longest", "shortest" or int, default="longest"
        "longest" trains on whole sequences. "shortest" cuts every mini-batch
        to its shortest sequence (MATLAB's option). An integer cuts the
        sequences of each mini-batch into chunks of that many steps, processed
        in order with the state carried from chunk to chunk and gradients
        stopped at chunk boundaries (truncated backpropagation through time,
        MATLAB's semantics): memory then grows with the chunk, not the
        sequence. An integer needs ``bidirectional=False``.
    bucketing : bool, default=True
        Sort the sequences by length before cutting mini-batches, so that a
        batch holds sequences of similar lengths. Without it, batches mix
        lengths (and are redrawn every epoch with ``shuffle="every-epoch"``);
        no work is spent on padding either way.
    max_epochs : int, default=30
        Passes over the training data.
    batch_size : int, default=32
        Sequences per mini-batch.
    learning_rate : float, default=0.001
        Initial step size of the optimiser.
    learning_rate_schedule : {"none", "piecewise"}, default="none"
        "piecewise" multiplies the learning rate by ``learning_rate_drop_factor``
        every ``learning_rate_drop_period`` epochs (MATLAB's schedule).
    learning_rate_drop_factor : float, default=0.1
    learning_rate_drop_period : int, default=10
    optimizer : {"adam", "sgdm", "rmsprop"}, default="adam"
        Adam, stochastic gradient descent with momentum, or RMSProp.
    momentum : float, default=0.9
        Momentum of "sgdm".
    beta1, beta2, epsilon : float, default=0.9, 0.999, 1e-8
        Adam's decay rates of the gradient and squared-gradient averages, and
        the denominator offset (also RMSProp's).
    squared_gradient_decay_factor : float, default=0.9
        RMSProp's decay rate of the squared-gradient average.
    gradient_threshold : float or None, default=None
        Clip gradients above this threshold; None disables clipping.
    gradient_threshold_method : {"l2norm", "global-l2norm", "absolute-value"}, \\
default="l2norm"
        How to clip (MATLAB's methods): each parameter tensor's L2 norm, the
        L2 norm of all gradients together, or each element.
    l2_regularization : float, default=1e-4
        L2 penalty factor on the weights (not the biases), as MATLAB's.
    shuffle : {"every-epoch", "once", "never"}, default="every-epoch"
        When to shuffle the mini-batches.
    validation_fraction : float or None, default=None
        Fraction of the training sequences held out (stratified by class for
        sequence-to-label classification) and scored after every epoch.
    early_stopping : bool, default=False
        Stop when the validation loss has not improved for
        ``n_iter_no_change`` epochs, and keep the weights of the best
        validation loss. Needs ``validation_fraction`` or ``validation_data``.
    n_iter_no_change : int, default=5
        Patience of ``early_stopping``, in epochs.
    warm_start : bool, default=False
        Start ``fit`` from the weights (and normalisation) of the previous
        fit instead of a new initialisation.
    backend : {"auto", "numba", "cython", "cuda", "reference"}, default="auto"
        Compute kernels. "auto" uses "cuda" where numba.cuda finds a usable
        NVIDIA GPU (never Numba's CUDA simulator); otherwise numba once its
        compiled kernels are in numba's cache, and the ahead-of-time compiled
        Cython kernels (while numba compiles in the background) before that.
        It is decided once per process. "cuda" runs on an NVIDIA GPU through
        numba.cuda (``pip install fastlstm[cuda]``): training keeps parameters,
        gradients, optimiser state and batches on the GPU for the whole fit
        (options the device loop lacks, such as dropout, projections,
        per-step targets, truncated backpropagation or optimisers other than
        Adam, train with the same kernels from a host loop), and
        ``weights_`` come back as NumPy arrays; without a GPU it raises a
        RuntimeError. "reference" is the slow NumPy oracle, for testing. The
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
        Seeds weight initialisation, batch order, validation split and dropout.
    verbose : int, default=0
        1 prints one line per epoch (MATLAB's verbose table); 2 adds a
        progress bar inside each epoch.
"""

_ATTRIBUTES_DOC = """
    n_features_in_ : int
        Features per time step.
    output_mode_ : {"last", "sequence"}
        Whether the model predicts one target per sequence (read at its end)
        or one per time step, as the y given to ``fit``.
    weights_ : dict of str to ndarray
        Parameters named and laid out as ``torch.nn.LSTM.state_dict()``
        (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
        ``weight_hr_l0`` with ``proj_size``, ``..._reverse``; gates i, f, g,
        o) plus ``head.weight`` and ``head.bias`` (outputs = features @
        head.weight.T + head.bias).
    scaler_ : SequenceScaler or None
        The input normalisation fitted on the training sequences.
    backend_ : str
        The backend that trained the model (what "auto" resolved to).
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``val_loss``, ``val_score``,
        ``learning_rate``, ``seconds``.
    n_iter_ : int
        Epochs run.
"""


class LSTMClassifier(ClassifierMixin, BaseLSTM):
    __doc__ = ("""Sequence classifier: an LSTM network with a softmax output layer.

    Sequence-to-label (y holds one label per sequence): the network reads the
    final hidden state of the last layer (for a bidirectional layer, the
    forward direction's state after the last step and the reverse
    direction's after the first step, as MATLAB's ``OutputMode="last"``).
    Sequence-to-sequence (y is a list of label arrays, one label per time
    step): the network labels every step.
""" + _PARAMETERS_DOC + """    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss: a dict {label: weight}, or
        "balanced" for n_rows / (n_classes * count(label)) over the training
        targets (time steps, for per-step labels).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.""" + _ATTRIBUTES_DOC + """
    Examples
    --------
    >>> from fastlstm import LSTMClassifier
    >>> from fastlstm.datasets import load_japanese_vowels
    >>> X_train, y_train, X_test, y_test = load_japanese_vowels()
    >>> clf = LSTMClassifier(max_epochs=2, random_state=0).fit(X_train, y_train)
    >>> clf.predict(X_test[:3]).shape
    (3,)
    """)

    _parameter_constraints: dict = {
        **BaseLSTM._parameter_constraints,
        "class_weight": [StrOptions({"balanced"}), dict, None],
    }
    _ENCODING_ATTRIBUTES = ("classes_", "output_mode_")

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
        normalization="zscore",
        sequence_length="longest",
        bucketing=True,
        max_epochs=30,
        batch_size=32,
        learning_rate=1e-3,
        learning_rate_schedule="none",
        learning_rate_drop_factor=0.1,
        learning_rate_drop_period=10,
        optimizer="adam",
        momentum=0.9,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        squared_gradient_decay_factor=0.9,
        gradient_threshold=None,
        gradient_threshold_method="l2norm",
        l2_regularization=1e-4,
        shuffle="every-epoch",
        validation_fraction=None,
        early_stopping=False,
        n_iter_no_change=5,
        warm_start=False,
        backend="auto",
        dtype="float32",
        n_jobs=None,
        random_state=None,
        verbose=0,
        class_weight=None,
    ):
        super().__init__(
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            proj_size=proj_size,
            dropout=dropout,
            gate_activation=gate_activation,
            state_activation=state_activation,
            input_weights_initializer=input_weights_initializer,
            recurrent_weights_initializer=recurrent_weights_initializer,
            bias_initializer=bias_initializer,
            normalization=normalization,
            sequence_length=sequence_length,
            bucketing=bucketing,
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_schedule=learning_rate_schedule,
            learning_rate_drop_factor=learning_rate_drop_factor,
            learning_rate_drop_period=learning_rate_drop_period,
            optimizer=optimizer,
            momentum=momentum,
            beta1=beta1,
            beta2=beta2,
            epsilon=epsilon,
            squared_gradient_decay_factor=squared_gradient_decay_factor,
            gradient_threshold=gradient_threshold,
            gradient_threshold_method=gradient_threshold_method,
            l2_regularization=l2_regularization,
            shuffle=shuffle,
            validation_fraction=validation_fraction,
            early_stopping=early_stopping,
            n_iter_no_change=n_iter_no_change,
            warm_start=warm_start,
            backend=backend,
            dtype=dtype,
            n_jobs=n_jobs,
            random_state=random_state,
            verbose=verbose,
        )
        self.class_weight = class_weight

    def _encode_targets(self, y, lengths, *, encoding=None, classes=None):
        per_step = is_per_step_target(y)
        if per_step:
            labels, starts = check_step_targets(y, lengths)
            if labels.ndim != 1:
                raise ValueError("Per-step class labels must be 1-D arrays, one label per step.")
        else:
            labels, starts = np.asarray(y), None
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = column_or_1d(labels, warn=True)  # DataConversionWarning, as sklearn's
            if labels.ndim != 1:
                raise ValueError(
                    f"y has shape {labels.shape}; a classifier takes one label per sequence "
                    "(1-D y) or a list of per-step label arrays."
                )
            _check_n_targets(len(labels), len(lengths))
        check_classification_targets(labels)
        mode = "sequence" if per_step else "last"
        if encoding is not None:
            if encoding["output_mode_"] != mode:
                raise ValueError(_mode_mismatch(encoding["output_mode_"], mode))
            known = encoding["classes_"]
        elif classes is not None:
            known = np.unique(np.asarray(classes))
        else:
            known = np.unique(labels)
        unknown = np.setdiff1d(labels, known)
        if len(unknown):
            raise ValueError(
                f"y contains labels that are not among the classes {list(known)}: "
                f"{list(unknown[:5])}."
            )
        if len(known) < 2:
            raise ValueError(
                f"y has only one class ({known[0]}); a classifier needs at least two."
            )
        codes = np.searchsorted(known, labels).astype(np.intp)
        return Targets(codes, None, starts), {"classes_": known, "output_mode_": mode}

    def _row_weights(self, targets, sample_weight, lengths, encoding):
        weights = super()._row_weights(targets, sample_weight, lengths, encoding)
        if self.class_weight is None:
            return weights
        class_weights = compute_class_weight(
            self.class_weight, classes=encoding["classes_"],
            y=encoding["classes_"][targets.values])
        return weights * class_weights[targets.values].astype(weights.dtype)

    def _loss(self):
        return cross_entropy

    def _score_outputs(self, outputs, targets):
        return accuracy_score(targets.values, np.argmax(outputs, axis=1),
                              sample_weight=targets.weights)

    def _decode_outputs(self, outputs):
        return self.classes_[np.argmax(outputs, axis=-1)]

    def _stream_decode(self):
        return "argmax"

    def _decoded_stream_values(self, values):
        return self.classes_.take(values)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One pass over the given data, continuing from the current state.

        For data that does not fit in memory: call it once per chunk of
        sequences. The first call needs ``classes``, every class the model
        will see, as scikit-learn's incremental estimators do. The
        optimiser's state carries over between calls.

        Parameters
        ----------
        X, y, sample_weight
            As for :meth:`fit`.
        classes : array-like of shape (n_classes,), default=None
            Every class label; required on the first call.

        Returns
        -------
        self : object
        """
        if not hasattr(self, "weights_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._partial_fit(X, y, sample_weight, classes)

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            Sequences, in any layout that :meth:`fit` accepts.

        Returns
        -------
        proba : ndarray of shape (n_sequences, n_classes), or list of \\
ndarray of shape (T_i, n_classes)
            Columns follow ``classes_``; a list with one array per sequence
            for a per-step model.
        """
        outputs, lengths = self._outputs(X)
        proba = softmax(outputs.astype(np.float64))
        return self._split_steps(proba, lengths) if self.output_mode_ == "sequence" else proba

    def predict(self, X):
        """Most likely class of each sequence (or of each step).

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray

        Returns
        -------
        y : ndarray of shape (n_sequences,), or list of ndarray of shape (T_i,)
        """
        outputs, lengths = self._outputs(X)
        return self._format_predictions(outputs, lengths)

    def score(self, X, y, sample_weight=None):
        """Accuracy, over all time steps for a per-step model.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
        y : array-like of shape (n_sequences,), or list of array-like of shape (T_i,)
        sample_weight : array-like of shape (n_sequences,), default=None

        Returns
        -------
        score : float
        """
        outputs, lengths = self._outputs(X)
        targets, _ = self._encode_targets(y, lengths, encoding=self._target_encoding())
        targets.weights = BaseLSTM._row_weights(self, targets, sample_weight, lengths, None)
        return float(self._score_outputs(outputs, targets))


class LSTMRegressor(RegressorMixin, BaseLSTM):
    __doc__ = ("""Sequence regressor: an LSTM network with a linear output layer.

    Sequence-to-one (y holds one value, or one row of values, per sequence):
    the network reads the final hidden state of the last layer.
    Sequence-to-sequence (y is a list of arrays, one value or row per time
    step): the network predicts every step. Trained on the mean squared
    error (``torch.nn.MSELoss``).
""" + _PARAMETERS_DOC + """
    Attributes
    ----------
    n_outputs_ : int
        Targets per sequence (or per step).""" + _ATTRIBUTES_DOC + """
    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm import LSTMRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.standard_normal((n, 2)) for n in rng.integers(3, 9, 50)]
    >>> y = np.array([seq[:, 0].sum() for seq in X])
    >>> reg = LSTMRegressor(hidden_size=16, max_epochs=2, random_state=0).fit(X, y)
    >>> reg.predict(X[:3]).shape
    (3,)
    """)

    _ENCODING_ATTRIBUTES = ("n_outputs_", "output_mode_", "_y_ndim")

    def _encode_targets(self, y, lengths, *, encoding=None, classes=None):
        per_step = is_per_step_target(y)
        if per_step:
            values, starts = check_step_targets(y, lengths)
        else:
            values, starts = np.asarray(y), None
            if values.ndim not in (1, 2):
                raise ValueError(
                    f"y must be 1-D (n_sequences,) or 2-D (n_sequences, n_outputs), or a list "
                    f"of per-step arrays; got shape {values.shape}."
                )
            _check_n_targets(len(values), len(lengths))
        if values.dtype == object:  # numbers stored as objects, as check_X_y converts
            try:
                values = values.astype(np.float64)
            except (TypeError, ValueError):
                pass
        if values.dtype == object or not np.issubdtype(values.dtype, np.number):
            raise TypeError(f"y must be numeric for a regressor; got dtype {values.dtype}.")
        if np.iscomplexobj(values):
            raise ValueError("Complex data not supported: y must be real for a regressor.")
        if not np.isfinite(values).all():
            row = int(np.nonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))[0][0])
            where = f"target row {row}" if not per_step else f"step row {row} of the stacked targets"
            raise ValueError(f"y contains NaN or infinity (first at {where}).")
        mode = "sequence" if per_step else "last"
        y_ndim = values.ndim
        values = values.reshape(len(values), -1).astype(np.dtype(self.dtype))
        new_encoding = {"n_outputs_": values.shape[1], "output_mode_": mode, "_y_ndim": y_ndim}
        if encoding is not None:
            if encoding["output_mode_"] != mode:
                raise ValueError(_mode_mismatch(encoding["output_mode_"], mode))
            if encoding["n_outputs_"] != values.shape[1]:
                raise ValueError(
                    f"y has {values.shape[1]} outputs; the model was fitted with "
                    f"{encoding['n_outputs_']}."
                )
            new_encoding = dict(encoding)
        return Targets(values, None, starts), new_encoding

    def _loss(self):
        return mean_squared_error

    def _score_outputs(self, outputs, targets):
        return r2_score(targets.values, outputs, sample_weight=targets.weights)

    def _decode_outputs(self, outputs):
        # float64 as predict_proba and scikit-learn's regressors (lossless from float32).
        outputs = outputs.astype(np.float64)
        return outputs[..., 0] if self._y_ndim == 1 else outputs

    def _stream_decode(self):
        return "first value" if self._y_ndim == 1 else "values"

    def _decoded_stream_values(self, values):
        return values

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y may be (n_sequences, n_outputs)
        return tags

    def partial_fit(self, X, y, sample_weight=None):
        """One pass over the given data, continuing from the current state.

        For data that does not fit in memory: call it once per chunk of
        sequences; the optimiser's state carries over between calls.

        Parameters
        ----------
        X, y, sample_weight
            As for :meth:`fit`.

        Returns
        -------
        self : object
        """
        return self._partial_fit(X, y, sample_weight, None)

    def predict(self, X):
        """Predicted target of each sequence (or of each step).

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray

        Returns
        -------
        y : ndarray of shape (n_sequences,) or (n_sequences, n_outputs), or \\
list of ndarray of shape (T_i,) or (T_i, n_outputs)
            In the layout of the y given to ``fit``.
        """
        outputs, lengths = self._outputs(X)
        return self._format_predictions(outputs, lengths)

    def score(self, X, y, sample_weight=None):
        """Coefficient of determination R^2, over all time steps for a per-step model.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
        y : array-like, or list of array-like
            As for :meth:`fit`.
        sample_weight : array-like of shape (n_sequences,), default=None

        Returns
        -------
        score : float
        """
        outputs, lengths = self._outputs(X)
        targets, _ = self._encode_targets(y, lengths, encoding=self._target_encoding())
        targets.weights = self._row_weights(targets, sample_weight, lengths, None)
        return float(self._score_outputs(outputs, targets))

    def forecast(self, X, n_steps):
        """Closed-loop forecast: each prediction is fed back as the next input.

        The network first reads each sequence of X, then predicts
        ``n_steps`` further steps, each from the one before. A
        sequence-to-sequence model carries its state from step to step (as
        MATLAB's closed-loop forecasting); a sequence-to-one model trained
        on windows (see :func:`fastlstm.make_windows`) slides its window,
        dropping the oldest step and appending the prediction. Either way the
        model must predict as many values as it takes input features.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            The observed part of each series.
        n_steps : int
            Steps to forecast.

        Returns
        -------
        forecast : ndarray of shape (n_sequences, n_steps) or \\
(n_sequences, n_steps, n_outputs)
            2-D when the model was fitted with one value per target.

        Notes
        -----
        Where :meth:`predict_and_update_state` has its one-call path (a
        unidirectional model on the numba backend), the forecast steps take
        it too, as do a window model's windows when they have one shape.
        """
        check_is_fitted(self)
        if isinstance(n_steps, bool) or not isinstance(n_steps, Integral) or n_steps < 1:
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}.")
        if self.n_outputs_ != self.n_features_in_:
            raise ValueError(
                "Closed-loop forecasting feeds each prediction back as the next input, so "
                f"the model needs as many outputs as input features; it has "
                f"{self.n_outputs_} outputs and {self.n_features_in_} features."
            )
        sequences, lengths = check_sequences(X, dtype=np.dtype(self.dtype),
                                             n_features=self.n_features_in_)
        # Each forecast step is a new input of one step per sequence (or a
        # window of the same shape as the last): the one-call streaming
        # network's case, a few microseconds per step instead of the general
        # path's validation, packing and per-layer kernel calls (about 85 us
        # for a small network). It answers None for what it does not take
        # (non-finite values), and that step takes the general path, which
        # also raises its errors.
        streaming = self._streaming_network()
        steps = []
        if self.output_mode_ == "sequence":
            if self.bidirectional:
                raise ValueError("Closed-loop forecasting needs a unidirectional network.")
            outputs, h, c, lengths = self._outputs(sequences, return_states=True)
            last = outputs[np.cumsum(lengths) - 1]
            for _ in range(n_steps - 1):
                steps.append(last)
                fast = None
                if streaming is not None:
                    # step() advances the states in place: contiguous, of its dtype.
                    h = np.ascontiguousarray(h, dtype=streaming.dtype)
                    c = np.ascontiguousarray(c, dtype=streaming.dtype)
                    fast = streaming.step(last[:, np.newaxis, :], (h, c))
                if fast is not None:
                    last = fast[0][:, 0].copy()  # step() reuses its output buffer
                else:
                    last, h, c, _ = self._outputs(list(last[:, np.newaxis, :]), h0=h, c0=c,
                                                  return_states=True)
            steps.append(last)
        else:
            windows = sequences
            stacked = None if streaming is None else stack_if_equal_shapes(windows)
            while stacked is not None and len(steps) < n_steps:
                fast = streaming.step(stacked, None)
                if fast is None:
                    windows = list(stacked)  # the rest goes the general way
                    break
                steps.append(fast[0][:, 0].copy())  # step() reuses its output buffer
                stacked = np.concatenate([stacked[:, 1:], steps[-1][:, np.newaxis]], axis=1)
            while len(steps) < n_steps:
                last, _ = self._outputs(windows)
                steps.append(last)
                windows = [np.vstack([window[1:], value[np.newaxis]])
                           for window, value in zip(windows, last.astype(windows[0].dtype))]
        forecast = np.stack(steps, axis=1)
        return forecast[..., 0] if self._y_ndim == 1 else forecast


def _mode_mismatch(fitted_mode, given_mode):
    layouts = {"last": "one target per sequence", "sequence": "one target per time step"}
    return (f"The model was fitted with {layouts[fitted_mode]}, but y has "
            f"{layouts[given_mode]}.")
