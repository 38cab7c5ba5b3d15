"""Preprocessing for sequences: scaling, per-frame transformers and windowing.

scikit-learn's own transformers reject what the LSTM estimators take as X (a
list of ``(T_i, n_features)`` arrays, or a 3-D array), so a
``Pipeline([("scale", StandardScaler()), ("lstm", LSTMClassifier())])`` fails
on sequences. The transformers here accept the same layouts as the estimators
and hand back the same container they were given:

* a list (or tuple, or 1-D object array) of ``(T_i, n_features)`` arrays,
  possibly of different lengths -> a list of new arrays of the same shapes;
* a 3-D array ``(n_sequences, T, n_features)`` -> a 3-D array;
* a 2-D array ``(n_sequences, T)`` of univariate sequences, read as
  ``(n_sequences, T, 1)`` -> a 2-D array.

``SequenceScaler`` normalises every feature with statistics taken over all
time steps of all sequences (MATLAB ``sequenceInputLayer`` normalisations),
``FrameTransformer`` applies any scikit-learn transformer to every time step
(frame) of every sequence, and ``make_windows`` cuts a series into
``(X, y)`` pairs for forecasting.
"""

import math
from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    clone,
)
from sklearn.utils import get_tags
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

__all__ = ["SequenceScaler", "FrameTransformer", "make_windows"]

_LAYOUTS = (
    "a list of (T_i, n_features) arrays, a 3-D array (n_sequences, T, n_features) "
    "or a 2-D array (n_sequences, T) of univariate sequences"
)


# -- reading X ------------------------------------------------------------------


def _as_numeric(a, what):
    """Return ``a`` as a numeric ndarray (no copy if it already is one).

    Parameters
    ----------
    a : array-like
        The data.
    what : str
        How to name ``a`` in error messages ("X", "Sequence 3 of X").

    Returns
    -------
    array : ndarray
        Of a boolean, integer or floating dtype. An object array is converted
        to float64, which raises ``TypeError`` for anything but numbers.
    """
    if sp.issparse(a):
        raise TypeError(
            f"{what} is a sparse matrix; sequences must be dense. "
            "Convert it with .toarray()."
        )
    try:
        array = np.asarray(a)
    except ValueError as error:  # a ragged nested list
        raise ValueError(f"{what} is not a rectangular array: {error}") from None
    if array.dtype.kind == "O":
        array = array.astype(np.float64)
    elif array.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {what} has dtype {array.dtype}.")
    elif array.dtype.kind not in "biuf":
        raise TypeError(f"{what} has dtype {array.dtype}; expected numbers.")
    return array


def _read_container(X):
    """Sort X into a list of sequences or one numeric array.

    Parameters
    ----------
    X : list, tuple, 1-D object ndarray, or array-like
        The sequences.

    Returns
    -------
    is_list : bool
        True if X holds its sequences one by one (the output is then a list).
    data : list of ndarray, or ndarray
        The numeric sequences as given (any number of dimensions, checked by
        the caller), or one numeric array with at least 2 dimensions whose
        first axis runs over sequences.
    """
    if sp.issparse(X):
        raise TypeError(
            "X is a sparse matrix; sequences must be dense. Pass " + _LAYOUTS + "."
        )
    if isinstance(X, (list, tuple)) or (
        isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1
    ):
        if len(X) == 0:
            raise ValueError("X contains no sequences; at least one is required.")
        return True, [_as_numeric(seq, f"Sequence {i} of X") for i, seq in enumerate(X)]
    if X is None or isinstance(X, (str, bytes)):
        raise TypeError(f"X must be {_LAYOUTS}; got {type(X).__name__}.")
    array = _as_numeric(X, "X")
    if array.ndim < 2:
        raise ValueError(
            f"X is an array of shape {array.shape}; expected {_LAYOUTS}. "
            "Reshape your data: pass a single univariate sequence x as [x] or "
            "x.reshape(1, -1)."
        )
    if array.shape[0] == 0:
        raise ValueError("X contains no sequences; at least one is required.")
    return False, array


def _output_dtype(dtype):
    """float32 and float64 are kept; any other numeric dtype becomes float64."""
    if dtype == np.float32 or dtype == np.float64:
        return dtype
    return np.dtype(np.float64)


# -- SequenceScaler -------------------------------------------------------------


# Fitted attributes each method's transform needs.
_NEEDED = {
    "zscore": ("mean_", "scale_"),
    "zerocenter": ("mean_",),
    "rescale-symmetric": ("data_min_", "data_range_"),
    "rescale-zero-one": ("data_min_", "data_range_"),
}


class SequenceScaler(
    OneToOneFeatureMixin, TransformerMixin, BaseEstimator, auto_wrap_output_keys=None
):
    """Normalise every feature of sequences over all their time steps.

    The statistics of each feature (channel) are taken over all time steps of
    all sequences together, not per time step and not per sequence, as
    MATLAB's ``sequenceInputLayer`` ``Normalization`` does and as an LSTM
    needs: the same affine map then applies at every step, whatever the
    sequence length. scikit-learn's own scalers reject sequences (and on a
    2-D ``(n_sequences, T)`` array would normalise each time step
    separately), so this is the scaler to put in a ``Pipeline`` in front of
    :class:`~fastlstm.LSTMClassifier` or :class:`~fastlstm.LSTMRegressor`.

    NaN marks missing values: NaN entries are left out of the statistics and
    stay NaN in the output. In particular a 3-D array whose shorter sequences
    end in NaN rows (tslearn's padding convention) can be passed as is.

    Parameters
    ----------
    method : {"zscore", "zerocenter", "rescale-symmetric", "rescale-zero-one"}, \
            default="zscore"
        The normalisation (MATLAB's names):

        - "zscore": subtract the mean and divide by the standard deviation
          (ddof 0; a feature of zero deviation is only centred);
        - "zerocenter": subtract the mean;
        - "rescale-symmetric": map [min, max] linearly onto [-1, 1];
        - "rescale-zero-one": map [min, max] linearly onto [0, 1].

        A constant feature is mapped to 0 by "zscore", "zerocenter" and
        "rescale-zero-one", and to -1 by "rescale-symmetric" (as
        :class:`~sklearn.preprocessing.MinMaxScaler` does).

    Attributes
    ----------
    n_features_in_ : int
        Number of features (channels) per time step seen in ``fit``; 1 for a
        2-D ``(n_sequences, T)`` array.
    n_steps_seen_ : ndarray of shape (n_features_in_,), dtype int64
        Number of non-NaN values of each feature seen so far, over all time
        steps of all sequences (``partial_fit`` adds to it).
    mean_ : ndarray of shape (n_features_in_,)
        Mean of each feature. Only for "zscore" and "zerocenter".
    var_ : ndarray of shape (n_features_in_,)
        Variance (ddof 0) of each feature. Only for "zscore".
    scale_ : ndarray of shape (n_features_in_,)
        Standard deviation of each feature, 1 where it is zero. Only for
        "zscore".
    data_min_ : ndarray of shape (n_features_in_,)
        Minimum of each feature. Only for the "rescale-*" methods.
    data_max_ : ndarray of shape (n_features_in_,)
        Maximum of each feature. Only for the "rescale-*" methods.
    data_range_ : ndarray of shape (n_features_in_,)
        ``data_max_ - data_min_``. Only for the "rescale-*" methods.

    See Also
    --------
    FrameTransformer : Apply any scikit-learn transformer to every time step.
    sklearn.preprocessing.StandardScaler : The same "zscore" for tabular data.
    sklearn.preprocessing.MinMaxScaler : The same "rescale-*" for tabular data.

    Notes
    -----
    Statistics are computed in float64. float32 and float64 inputs keep their
    dtype in the output; other numeric inputs come out as float64. A feature
    with no non-NaN value at all gets NaN statistics (and ``scale_`` 1), so
    its output is NaN.

    ``partial_fit`` merges the statistics of each batch into the running
    ones with the pairwise update of Chan, Golub and LeVeque (counts, means
    and sums of squared deviations), which is as accurate as one pass over
    all the data and does not suffer from the cancellation of running sums
    of squares.

    References
    ----------
    .. [1] T. F. Chan, G. H. Golub and R. J. LeVeque, "Updating formulae and a
       pairwise algorithm for computing sample variances", COMPSTAT 1982.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.datasets import load_japanese_vowels
    >>> from fastlstm.preprocessing import SequenceScaler
    >>> X_train, y_train, X_test, y_test = load_japanese_vowels()
    >>> scaler = SequenceScaler().fit(X_train)
    >>> scaler.mean_.shape
    (12,)
    >>> Z = scaler.transform(X_test)
    >>> type(Z).__name__, len(Z), Z[0].shape, Z[0].dtype
    ('list', 370, (19, 12), dtype('float32'))
    >>> Z_train = np.concatenate(scaler.transform(X_train))
    >>> bool(np.allclose(Z_train.mean(axis=0), 0, atol=1e-5))
    True
    >>> bool(np.allclose(Z_train.std(axis=0), 1, atol=1e-5))
    True

    Inside a pipeline, in front of an LSTM:

    >>> from sklearn.pipeline import make_pipeline
    >>> from fastlstm import LSTMClassifier
    >>> model = make_pipeline(SequenceScaler(), LSTMClassifier())
    """

    _parameter_constraints: dict = {
        "method": [StrOptions(set(_NEEDED))],
    }

    def __init__(self, method="zscore"):
        self.method = method

    def fit(self, X, y=None):
        """Compute the statistics of every feature over all time steps.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            The sequences: a list of 2-D arrays (1-D arrays are univariate
            sequences), a 3-D array (n_sequences, T, n_features) or a 2-D
            array (n_sequences, T) of univariate sequences. NaN entries
            (e.g. NaN padding) are ignored.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted scaler.
        """
        self._validate_params()
        return self._update(X, first=True)

    def partial_fit(self, X, y=None):
        """Update the statistics with one more batch of sequences.

        The result after several calls equals ``fit`` on all the batches
        together (up to rounding).

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            A batch of sequences, in any layout ``fit`` accepts.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The updated scaler.
        """
        self._validate_params()
        first = not hasattr(self, "n_steps_seen_")
        if not first:
            self._check_stats_for_method()
        return self._update(X, first=first)

    def transform(self, X):
        """Normalise sequences with the fitted statistics.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            The sequences, in any layout ``fit`` accepts.

        Returns
        -------
        X_scaled : list of ndarray, or ndarray
            The same container as X, with new arrays of the same shapes:
            a list for a list, a 3-D array for a 3-D array, a 2-D array for a
            2-D array. NaN stays NaN. X itself is never modified.
        """
        center, scale, shift = self._affine()
        return self._apply(X, lambda z: _affine_forward(z, center, scale, shift))

    def inverse_transform(self, X):
        """Undo ``transform``.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_features), or ndarray
            Normalised sequences, in any layout ``fit`` accepts.

        Returns
        -------
        X_original : list of ndarray, or ndarray
            The same container as X, in the original units.
        """
        center, scale, shift = self._affine()
        return self._apply(X, lambda z: _affine_inverse(z, center, scale, shift))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = True  # NaN = missing value or padding
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- internals --------------------------------------------------------------

    def _check_stats_for_method(self):
        missing = [n for n in _NEEDED[self.method] if not hasattr(self, n)]
        if missing:
            raise ValueError(
                f"{type(self).__name__} has no {', '.join(missing)}: it was fitted "
                f"with another method than method={self.method!r}. Call fit again."
            )

    def _frames(self, X, expected):
        """Validate X and return (is_list, data, frames).

        ``expected`` is the required number of features (None: any, the same
        for all sequences). ``frames`` is every time step of every sequence,
        stacked as a (n_steps, n_features) array (a view where possible).
        """
        is_list, data = _read_container(X)
        if is_list:
            data = [self._as_2d(seq, i, expected) for i, seq in enumerate(data)]
            expected = data[0].shape[1] if expected is None else expected
            for i, seq in enumerate(data):
                if seq.shape[1] != expected:
                    raise ValueError(
                        f"Sequence {i} of X has {seq.shape[1]} features per time "
                        f"step, expected {expected} (as in sequence 0); all sequences "
                        "must have the same number of features."
                    )
            frames = np.concatenate(data, axis=0)
        else:
            data = self._as_3d(data, expected)
            frames = data.reshape(-1, data.shape[2])
        if frames.shape[1] == 0:
            raise ValueError("X has 0 features per time step; at least 1 is required.")
        return is_list, data, frames

    def _as_2d(self, seq, index, expected):
        if seq.ndim == 1:
            seq = seq[:, np.newaxis]
        if seq.ndim != 2:
            raise ValueError(
                f"Sequence {index} of X has shape {seq.shape}; expected a 2-D array "
                "(T_i, n_features) or a 1-D univariate sequence. For sequences of "
                "images use FrameTransformer."
            )
        if expected is not None and seq.shape[1] != expected:
            raise ValueError(
                f"Sequence {index} of X has {seq.shape[1]} features per time step, "
                f"but {type(self).__name__} was fitted with {expected}."
            )
        return seq

    def _as_3d(self, array, expected):
        if array.ndim == 2:
            array = array[:, :, np.newaxis]
            how = " (a 2-D array (n_sequences, T) is read as univariate sequences)"
        elif array.ndim == 3:
            how = ""
        else:
            raise ValueError(
                f"X is an array of shape {array.shape}; expected {_LAYOUTS}. "
                "For sequences of images use FrameTransformer."
            )
        if expected is not None and array.shape[2] != expected:
            raise ValueError(
                f"X has {array.shape[2]} features per time step{how}, but "
                f"{type(self).__name__} was fitted with {expected}."
            )
        return array

    def _update(self, X, *, first):
        """Merge the statistics of X into the fitted ones (or set them)."""
        _, data, frames = self._frames(X, None if first else self.n_features_in_)
        _raise_on_infinity(frames, data)
        frames = frames.astype(np.float64, copy=False)
        missing = np.isnan(frames)
        has_missing = bool(missing.any())
        count = frames.shape[0] - missing.sum(axis=0) if has_missing else np.full(
            frames.shape[1], frames.shape[0])
        count = count.astype(np.int64)
        if first and not count.any():
            raise ValueError(
                f"X has no values to fit on: {frames.shape[0]} time steps in all, "
                "none with a non-NaN value. At least one is required."
            )
        updates = {}
        total = count + (0 if first else self.n_steps_seen_)
        if self.method in ("zscore", "zerocenter"):
            with_var = self.method == "zscore"
            mean, m2 = _moments(frames, missing if has_missing else None, count, with_var)
            if not first:
                mean, m2 = _merge_moments(
                    self.n_steps_seen_, self.mean_, self.var_ if with_var else None,
                    count, mean, m2,
                )
            updates["mean_"] = np.where(total > 0, mean, np.nan)
            if with_var:
                with np.errstate(invalid="ignore", divide="ignore"):
                    updates["var_"] = np.where(total > 0, m2 / total, np.nan)
                updates["scale_"] = _std_to_scale(updates["var_"], updates["mean_"], total)
        else:
            # fmin/fmax skip NaN; a feature with no value keeps +-inf -> NaN.
            low = np.fmin.reduce(frames, axis=0, initial=np.inf)
            high = np.fmax.reduce(frames, axis=0, initial=-np.inf)
            if not first:
                low = np.fmin(low, self.data_min_)
                high = np.fmax(high, self.data_max_)
            updates["data_min_"] = np.where(total > 0, low, np.nan)
            updates["data_max_"] = np.where(total > 0, high, np.nan)
            updates["data_range_"] = updates["data_max_"] - updates["data_min_"]
        # Only now, with everything computed, does the estimator change.
        if first:  # drop the statistics of an earlier fit with another method
            for name in ("mean_", "var_", "scale_", "data_min_", "data_max_",
                         "data_range_"):
                self.__dict__.pop(name, None)
        self.n_features_in_ = int(frames.shape[1])
        self.n_steps_seen_ = total.astype(np.int64)
        for name, value in updates.items():
            setattr(self, name, value)
        return self

    def _affine(self):
        """(center, scale, shift) with transform(x) = (x - center) / scale + shift."""
        check_is_fitted(self)
        self._check_stats_for_method()
        return self._affine_unchecked()

    def _affine_unchecked(self):
        if self.method == "zscore":
            return self.mean_, self.scale_, 0.0
        if self.method == "zerocenter":
            return self.mean_, np.ones_like(self.mean_), 0.0
        data_range = np.where(self.data_range_ == 0, 1.0, self.data_range_)
        if self.method == "rescale-zero-one":
            return self.data_min_, data_range, 0.0
        return self.data_min_, data_range / 2.0, -1.0  # rescale-symmetric

    def _apply(self, X, function):
        """Apply an elementwise map to every sequence, keeping X's container."""
        check_is_fitted(self)
        is_list, data = _read_container(X)
        if is_list:
            out = []
            for i, seq in enumerate(data):
                seq2d = self._as_2d(seq, i, self.n_features_in_)
                _raise_on_infinity(seq2d, None, index=i)
                result = function(seq2d).astype(_output_dtype(seq.dtype), copy=False)
                out.append(result.reshape(seq.shape))
            return out
        array3d = self._as_3d(data, self.n_features_in_)
        _raise_on_infinity(array3d, None)
        result = function(array3d).astype(_output_dtype(data.dtype), copy=False)
        return result.reshape(data.shape)


def scale_stacked(scaler, frames):
    """``scaler.transform`` of frames known to be clean, as one float64 array.

    For the estimators, whose sequences ``check_sequences`` has already
    checked (2-D, finite, the right feature count) and which they scale
    stacked, (sum of T_i, n_features), in one pass.

    Parameters
    ----------
    scaler : SequenceScaler
        Fitted.
    frames : ndarray of shape (n_steps, n_features)

    Returns
    -------
    scaled : ndarray of shape (n_steps, n_features), float64
    """
    # Without check_is_fitted, which costs 50 us (scikit-learn's tags): the
    # estimators hold only fitted scalers.
    center, scale, shift = scaler._affine_unchecked()
    return _affine_forward(frames, center, scale, shift)


def _affine_forward(values, center, scale, shift):
    out = np.subtract(values, center, dtype=np.float64)
    out /= scale
    if shift:
        out += shift
    return out


def _affine_inverse(values, center, scale, shift):
    out = np.array(values, dtype=np.float64)  # a new array, never a view of X
    if shift:
        out -= shift
    out *= scale
    out += center
    return out


def _moments(frames, missing, count, with_m2):
    """Per-feature mean and sum of squared deviations, skipping NaN.

    Parameters
    ----------
    frames : ndarray of shape (n_steps, n_features), float64
        The stacked time steps.
    missing : ndarray of bool of the same shape, or None
        Where ``frames`` is NaN (None if nowhere).
    count : ndarray of shape (n_features,)
        Number of non-NaN values per feature.
    with_m2 : bool
        Whether to compute the sum of squared deviations (two-pass).

    Returns
    -------
    mean : ndarray of shape (n_features,)
        0 for a feature without values.
    m2 : ndarray of shape (n_features,), or None
        Sum of squared deviations from ``mean``.
    """
    values = frames if missing is None else np.where(missing, 0.0, frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, values.sum(axis=0) / count, 0.0)
    if not with_m2:
        return mean, None
    deviation = values - mean
    if missing is not None:
        deviation[missing] = 0.0
    return mean, np.einsum("ij,ij->j", deviation, deviation)


def _merge_moments(n_a, mean_a, var_a, n_b, mean_b, m2_b):
    """Merge (count, mean, sum of squared deviations) of two parts, per feature.

    Chan, Golub and LeVeque's pairwise update; parts with a zero count
    contribute nothing (their mean may be NaN or anything). With ``var_a``
    None only the means are merged (and None is returned for m2).
    """
    n_a = n_a.astype(np.float64)
    n_b = n_b.astype(np.float64)
    n = n_a + n_b
    mean_a = np.where(n_a > 0, mean_a, 0.0)
    delta = mean_b - mean_a
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_b = np.where(n > 0, n_b / n, 0.0)
    mean = mean_a + delta * weight_b
    if var_a is None:
        return mean, None
    m2_a = np.where(n_a > 0, var_a * n_a, 0.0)
    return mean, m2_a + m2_b + delta * delta * n_a * weight_b


def _std_to_scale(var, mean, count):
    """Standard deviation, with 1 where the feature is constant.

    A constant feature can come out with a tiny non-zero variance from the
    rounding of its mean (relative error up to about ``count * eps``), so a
    deviation below ``count * eps * |mean|`` counts as zero.
    """
    std = np.sqrt(var)
    tolerance = count * np.finfo(np.float64).eps * np.abs(mean)
    constant = (std <= tolerance) | ~np.isfinite(std)
    return np.where(constant, 1.0, std)


def _raise_on_infinity(frames, sequences, *, index=None):
    """Raise ValueError if there is an infinite value, naming where it is."""
    if frames.dtype.kind != "f" or not np.isinf(frames).any():
        return
    if sequences is not None and isinstance(sequences, list):
        for i, seq in enumerate(sequences):
            if np.isinf(seq).any():
                index = i
                frames = seq
                break
    where = "X" if index is None else f"Sequence {index} of X"
    raise ValueError(
        f"{where} contains infinity; only finite values and NaN (a missing "
        "value or padding) are accepted."
    )


# -- FrameTransformer -----------------------------------------------------------


def _inner_has(attribute):
    """available_if test: the (fitted, else unfitted) inner transformer has it."""

    def check(self):
        inner = getattr(self, "transformer_", self.transformer)
        return hasattr(inner, attribute)

    return check


class FrameTransformer(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Apply a scikit-learn transformer to every time step of every sequence.

    Each time step (frame) of a sequence is one sample for the inner
    ``transformer``: it is fitted on the frames of all sequences stacked,
    and transforms each frame on its own. A frame may be a vector
    (sequences of shape ``(T_i, n_features)``) or any array, e.g. an image
    (sequences of shape ``(T_i, height, width[, channels])``): frames are
    flattened to ``prod(frame_shape)`` values first. This is what MATLAB's
    sequence folding layer does for video networks; here it lets, for
    instance, a PCA reduce every video frame to a few components before an
    LSTM, or a ``SplineTransformer`` expand every step, inside a
    ``Pipeline``.

    Frames that are entirely NaN (the padding of a NaN-padded 3-D array,
    tslearn's convention) are not shown to the inner transformer and come
    out as NaN frames. Other NaN values are the inner transformer's business.

    Parameters
    ----------
    transformer : estimator object
        A scikit-learn transformer (with ``fit`` and ``transform``). It is
        cloned in ``fit``; the fitted copy is ``transformer_``. It is fitted
        without targets: a sequence's target is not a frame's.

    Attributes
    ----------
    transformer_ : estimator object
        The fitted clone of ``transformer``.
    frame_shape_ : tuple of int
        Shape of one frame seen in ``fit``: ``(n_features,)`` for sequences
        of vectors, ``(1,)`` for univariate sequences, ``(height, width)``
        for sequences of grey images, and so on.
    n_features_in_ : int
        ``prod(frame_shape_)``, the number of features the inner transformer
        sees per frame.

    See Also
    --------
    SequenceScaler : Normalise every feature over all time steps.

    Examples
    --------
    Reduce every frame of short videos (sequences of 8x8 images) to 3
    principal components:

    >>> import numpy as np
    >>> from sklearn.decomposition import PCA
    >>> from fastlstm.preprocessing import FrameTransformer
    >>> rng = np.random.default_rng(0)
    >>> videos = [rng.normal(size=(n_frames, 8, 8)) for n_frames in (5, 9, 7)]
    >>> folding = FrameTransformer(PCA(n_components=3)).fit(videos)
    >>> folding.frame_shape_, folding.n_features_in_
    ((8, 8), 64)
    >>> [z.shape for z in folding.transform(videos)]
    [(5, 3), (9, 3), (7, 3)]
    >>> folding.get_feature_names_out()
    array(['pca0', 'pca1', 'pca2'], dtype=object)

    Any transformer of vectors works on sequences of vectors, e.g. with the
    Japanese vowels (12 cepstrum coefficients per step):

    >>> from sklearn.preprocessing import SplineTransformer
    >>> from fastlstm.datasets import load_japanese_vowels
    >>> X_train, y_train, X_test, y_test = load_japanese_vowels()
    >>> splines = FrameTransformer(SplineTransformer(n_knots=4)).fit(X_train)
    >>> splines.transform(X_test)[0].shape
    (19, 72)
    """

    _parameter_constraints: dict = {
        "transformer": [HasMethods(["fit", "transform"])],
    }

    def __init__(self, transformer):
        self.transformer = transformer

    def fit(self, X, y=None):
        """Fit the inner transformer on all frames of all sequences.

        Parameters
        ----------
        X : list of array-like of shape (T_i, *frame_shape), or ndarray
            The sequences: a list of arrays whose first axis is time, an
            array (n_sequences, T, *frame_shape), or a 2-D array
            (n_sequences, T) of univariate sequences.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        self._fit(X, transform=False)
        return self

    def fit_transform(self, X, y=None):
        """Fit the inner transformer on all frames and transform them.

        Parameters
        ----------
        X : list of array-like of shape (T_i, *frame_shape), or ndarray
            The sequences, in any layout ``fit`` accepts.
        y : None
            Ignored.

        Returns
        -------
        X_new : list of ndarray, or ndarray
            As returned by ``transform``.
        """
        return self._fit(X, transform=True)

    def transform(self, X):
        """Transform every frame of every sequence.

        Parameters
        ----------
        X : list of array-like of shape (T_i, *frame_shape), or ndarray
            The sequences, with frames of shape ``frame_shape_``.

        Returns
        -------
        X_new : list of ndarray, or ndarray
            For a list, a list of ``(T_i, n_outputs)`` arrays, ``n_outputs``
            being the number of columns the inner transformer returns. For
            an array, an array ``(n_sequences, T, n_outputs)``, or
            ``(n_sequences, T)`` if X was 2-D and ``n_outputs`` is 1.
            All-NaN frames come out as NaN rows.
        """
        check_is_fitted(self)
        layout = self._frames(X, self.frame_shape_)
        return self._assemble(layout, self._call(self.transformer_.transform, layout))

    @available_if(_inner_has("inverse_transform"))
    def inverse_transform(self, X):
        """Map transformed frames back with the inner ``inverse_transform``.

        Parameters
        ----------
        X : list of array-like of shape (T_i, n_outputs), or ndarray
            Transformed sequences, as ``transform`` returns them.

        Returns
        -------
        X_original : list of ndarray, or ndarray
            Sequences of frames of shape ``frame_shape_``: a list of
            ``(T_i, *frame_shape_)`` arrays, or an array
            ``(n_sequences, T, *frame_shape_)`` (2-D if X was 2-D and a frame
            is a single value).
        """
        check_is_fitted(self)
        layout = self._frames(X, None)
        return self._assemble(
            layout, self._call(self.transformer_.inverse_transform, layout),
            frame_shape=self.frame_shape_,
        )

    @available_if(_inner_has("get_feature_names_out"))
    def get_feature_names_out(self, input_features=None):
        """Names of the output columns, from the inner transformer.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Names of the ``n_features_in_`` values of a flattened frame;
            passed on to the inner transformer.

        Returns
        -------
        feature_names_out : ndarray of str objects
            One name per output column of a frame.
        """
        check_is_fitted(self)
        return self.transformer_.get_feature_names_out(input_features)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        # All-NaN frames are padding; other NaN go to the inner transformer.
        tags.input_tags.allow_nan = True
        try:
            inner = get_tags(self.transformer)
        except AttributeError:  # not an estimator: fit will say so
            return tags
        if inner.transformer_tags is not None:
            tags.transformer_tags.preserves_dtype = list(
                inner.transformer_tags.preserves_dtype)
        tags.non_deterministic = inner.non_deterministic
        return tags

    # -- internals --------------------------------------------------------------

    def _fit(self, X, *, transform):
        self._validate_params()
        layout = self._frames(X, None)
        frames = layout["frames"][layout["keep"]] if layout["keep"] is not None \
            else layout["frames"]
        if frames.shape[0] == 0:
            raise ValueError(
                "X has no frames to fit on (every sequence is empty or all-NaN)."
            )
        if frames.shape[1] == 0:
            raise ValueError(
                f"The frames of X have shape {layout['frame_shape']}, i.e. 0 values; "
                "at least 1 is required."
            )
        transformer = clone(self.transformer)
        if transform:
            result = transformer.fit_transform(frames)
        else:
            transformer.fit(frames)
        # Only now, with the inner transformer fitted, does the estimator change.
        self.transformer_ = transformer
        self.frame_shape_ = layout["frame_shape"]
        self.n_features_in_ = int(math.prod(self.frame_shape_))
        if transform:
            return self._assemble(layout, _dense(result))
        return None

    def _frames(self, X, expected_shape):
        """Validate X and stack its frames.

        Returns a dict: ``frames`` (n_frames, prod(frame_shape)), ``keep``
        (boolean mask of the frames that are not all-NaN, or None if all
        are kept), ``lengths``, ``frame_shape``, ``is_list``, ``array_shape``
        (for array input: the (n_sequences, T) of X) and ``was_2d``.
        """
        is_list, data = _read_container(X)
        was_2d = not is_list and data.ndim == 2
        if is_list:
            sequences = []
            frame_shape = expected_shape
            for i, seq in enumerate(data):
                if seq.ndim == 0:
                    raise ValueError(
                        f"Sequence {i} of X is a scalar; expected an array whose "
                        "first axis is time."
                    )
                shape = seq.shape[1:] if seq.ndim > 1 else (1,)
                if frame_shape is None:
                    frame_shape = shape
                elif shape != frame_shape:
                    source = "sequence 0" if expected_shape is None else "fit"
                    raise ValueError(
                        f"Sequence {i} of X has frames of shape {shape}, expected "
                        f"{frame_shape} (as in {source}); all frames must have the "
                        "same shape."
                    )
                sequences.append(seq.reshape(seq.shape[0], math.prod(shape)))
            lengths = [len(seq) for seq in sequences]
            frames = np.concatenate(sequences, axis=0)
            array_shape = None
        else:
            array = data[:, :, np.newaxis] if was_2d else data
            frame_shape = array.shape[2:]
            if expected_shape is not None and frame_shape != expected_shape:
                how = " (a 2-D array is read as univariate sequences)" if was_2d else ""
                raise ValueError(
                    f"X has frames of shape {frame_shape}{how}, but "
                    f"{type(self).__name__} was fitted with frames of shape "
                    f"{expected_shape}."
                )
            array_shape = array.shape[:2]
            frames = array.reshape(array_shape[0] * array_shape[1], math.prod(frame_shape))
            lengths = None
        keep = None
        if frames.dtype.kind == "f" and frames.shape[1] > 0:
            padding = np.isnan(frames).all(axis=1)
            if padding.any():
                keep = ~padding
        return {"frames": frames, "keep": keep, "lengths": lengths,
                "frame_shape": tuple(frame_shape), "is_list": is_list,
                "array_shape": array_shape, "was_2d": was_2d}

    @staticmethod
    def _call(method, layout):
        """Run an inner method on the kept frames; NaN rows for the others."""
        frames, keep = layout["frames"], layout["keep"]
        if keep is None:
            return _dense(method(frames))
        if not keep.any():
            # Nothing but padding: the output width is unknown without a call.
            raise ValueError("X has no frames that are not all-NaN.")
        result = _dense(method(frames[keep]))
        dtype = result.dtype if result.dtype.kind == "f" else np.float64
        out = np.full((frames.shape[0],) + result.shape[1:], np.nan, dtype=dtype)
        out[keep] = result
        return out

    @staticmethod
    def _assemble(layout, result, frame_shape=None):
        """Cut the per-frame result back into X's container."""
        if result.ndim == 1:
            result = result[:, np.newaxis]
        row_shape = result.shape[1:] if frame_shape is None else frame_shape
        if layout["is_list"]:
            out = []
            start = 0
            for length in layout["lengths"]:
                part = result[start:start + length]
                out.append(np.array(part.reshape((length,) + tuple(row_shape)), order="C"))
                start += length
            return out
        n_sequences, n_steps = layout["array_shape"]
        if layout["was_2d"] and math.prod(row_shape) == 1:
            return result.reshape(n_sequences, n_steps)
        return result.reshape((n_sequences, n_steps) + tuple(row_shape))


def _dense(result):
    """The inner transformer's output as a dense 2-D (or 1-D) ndarray."""
    if sp.issparse(result):
        result = result.toarray()
    return np.asarray(result)


# -- make_windows ---------------------------------------------------------------


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def make_windows(series, window, horizon=1, *, stride=1):
    """Cut a time series into input windows and the values that follow them.

    Window ``i`` is ``series[s:s + window]`` with ``s = i * stride``; its
    target is the next ``horizon`` values, ``series[s + window:s + window +
    horizon]``. This turns one series into a supervised data set for
    one-step or multi-step forecasting with
    :class:`~fastlstm.LSTMRegressor`.

    Parameters
    ----------
    series : array-like of shape (n_steps,) or (n_steps, n_features)
        The series, oldest value first. A 2-D series has one column per
        feature (all of them are both inputs and targets).
    window : int
        Number of steps in each input window (>= 1).
    horizon : int, default=1
        Number of steps to predict after each window (>= 1).
    stride : int, default=1
        Steps between the starts of consecutive windows (>= 1).

    Returns
    -------
    X : ndarray of shape (n_windows, window, n_features)
        The windows (``n_features`` is 1 for a 1-D series), with
        ``n_windows = (n_steps - window - horizon) // stride + 1``.
    y : ndarray
        The values after each window, of shape

        - ``(n_windows,)`` for a 1-D series and ``horizon=1``;
        - ``(n_windows, horizon)`` for a 1-D series and ``horizon > 1``;
        - ``(n_windows, n_features)`` for a 2-D series and ``horizon=1``;
        - ``(n_windows, horizon, n_features)`` for a 2-D series and
          ``horizon > 1``.

        X and y are new arrays of the series' dtype; they share no memory
        with ``series``.

    Raises
    ------
    ValueError
        If ``window``, ``horizon`` or ``stride`` is not an integer >= 1, if
        the series is not 1-D or 2-D, or if it has fewer than
        ``window + horizon`` steps.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.datasets import load_airline
    >>> from fastlstm.preprocessing import make_windows
    >>> passengers, dates = load_airline()
    >>> X, y = make_windows(np.log(passengers), window=12)
    >>> X.shape, y.shape
    ((132, 12, 1), (132,))
    >>> bool(y[0] == np.log(passengers[12]))
    True

    Three months ahead from windows of two years, one window per quarter:

    >>> X, y = make_windows(passengers, window=24, horizon=3, stride=3)
    >>> X.shape, y.shape
    ((40, 24, 1), (40, 3))
    >>> y[0]
    array([145., 150., 178.])
    """
    window = _check_count(window, "window")
    horizon = _check_count(horizon, "horizon")
    stride = _check_count(stride, "stride")
    values = _as_numeric(series, "series")
    if values.ndim not in (1, 2):
        raise ValueError(
            f"series must be 1-D (n_steps,) or 2-D (n_steps, n_features); got shape "
            f"{values.shape}."
        )
    univariate = values.ndim == 1
    if univariate:
        values = values[:, np.newaxis]
    n_steps = values.shape[0]
    needed = window + horizon
    if n_steps < needed:
        raise ValueError(
            f"series has {n_steps} steps, but window={window} and horizon={horizon} "
            f"need at least {needed} (window + horizon) to make one window."
        )
    n_windows = (n_steps - needed) // stride + 1
    starts = np.arange(n_windows) * stride
    # (n_steps - k + 1, n_features, k) views; fancy indexing then copies.
    inputs = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)
    X = np.ascontiguousarray(inputs[starts].transpose(0, 2, 1))
    targets = np.lib.stride_tricks.sliding_window_view(values[window:], horizon, axis=0)
    y = np.ascontiguousarray(targets[starts].transpose(0, 2, 1))  # (n, horizon, n_features)
    if univariate:
        y = y[:, :, 0]
    if horizon == 1:
        y = y[:, 0]
    return X, np.ascontiguousarray(y)
