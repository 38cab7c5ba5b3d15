"""Loaders for the small real datasets bundled with fastlstm."""

from importlib.resources import files

import numpy as np

__all__ = ["load_japanese_vowels", "load_airline"]


def _load_npz(name):
    """Read every array of a bundled ``.npz`` file into memory.

    Parameters
    ----------
    name : str
        File name inside ``fastlstm/datasets/data``.

    Returns
    -------
    arrays : dict of str to ndarray
        All arrays of the file, fully read.
    """
    resource = files("fastlstm.datasets") / "data" / name
    # Opening the resource (rather than passing a filesystem path) also works
    # when the package is imported from a zip archive.
    with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def _split_ragged(values, offsets):
    # Copy each case so that it owns its memory: a view into the shared
    # buffer would let an in-place edit of one sequence leak into its
    # neighbours' storage and keep the whole buffer alive.
    return [
        np.array(values[start:stop], dtype=np.float32, order="C", copy=True)
        for start, stop in zip(offsets[:-1], offsets[1:])
    ]


def load_japanese_vowels():
    """Load the Japanese Vowels speaker-identification dataset.

    Nine Japanese male speakers uttered the vowel pair /ae/. Each utterance
    was analysed with 12-degree linear prediction (10 kHz sampling, 25.6 ms
    frames, 6.4 ms shift), giving one vector of 12 LPC cepstrum coefficients
    per frame. The task is to predict the speaker (9 classes). The standard
    train/test split is returned:

    =====  ===  =====================================  =============
    split  n    per class                              length T_i
    =====  ===  =====================================  =============
    train  270  30 each                                7..26
    test   370  31, 35, 88, 44, 29, 24, 40, 50, 29     7..29
    =====  ===  =====================================  =============

    Cases are in the original file order, grouped by speaker, so shuffle
    before mini-batch training.

    Returns
    -------
    X_train : list of ndarray
        270 arrays of shape ``(T_i, 12)``, float32, C-contiguous. Each array
        owns its memory and is writeable.
    y_train : ndarray of shape (270,)
        Speaker labels, the strings ``"1"`` .. ``"9"`` (dtype ``<U1``).
    X_test : list of ndarray
        370 arrays of shape ``(T_i, 12)``, float32, C-contiguous.
    y_test : ndarray of shape (370,)
        Speaker labels, dtype ``<U1``.

    Notes
    -----
    The data are distributed by the UCI Machine Learning Repository under
    the CC BY 4.0 licence: "Japanese Vowels" (2000), doi:10.24432/C5NS47,
    donated by Mineichi Kudo, Jun Toyama and Masaru Shimbo (Hokkaido
    University). The bundled copy was taken from the UEA multivariate time
    series classification archive (A. Bagnall et al., 2018,
    arXiv:1811.00075) as shipped in the sktime 1.2.0 wheel. See
    ``fastlstm/datasets/data/README.md`` for full provenance.

    References
    ----------
    .. [1] M. Kudo, J. Toyama and M. Shimbo, "Multidimensional curve
       classification using passing-through regions", Pattern Recognition
       Letters, 20(11-13), pp. 1103-1111, 1999.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.datasets import load_japanese_vowels
    >>> X_train, y_train, X_test, y_test = load_japanese_vowels()
    >>> len(X_train), len(X_test)
    (270, 370)
    >>> X_train[0].shape, X_train[0].dtype
    ((20, 12), dtype('float32'))
    >>> np.unique(y_train)
    array(['1', '2', '3', '4', '5', '6', '7', '8', '9'], dtype='<U1')
    """
    z = _load_npz("japanese_vowels.npz")
    X_train = _split_ragged(z["X_train_values"], z["X_train_offsets"])
    X_test = _split_ragged(z["X_test_values"], z["X_test_offsets"])
    return X_train, z["y_train"], X_test, z["y_test"]


def load_airline():
    """Load the Box-Jenkins monthly airline passengers series.

    Monthly totals of international airline passengers, in thousands, from
    January 1949 to December 1960 (144 values). The series has a trend, a
    multiplicative seasonality of period 12 and a variance that grows over
    time; it is the standard small benchmark for forecasting.

    Returns
    -------
    y : ndarray of shape (144,)
        Passengers in thousands, float64 (min 104, max 622).
    dates : ndarray of shape (144,)
        Month of each value as a ``"YYYY-MM"`` string, ``"1949-01"`` ..
        ``"1960-12"``.

    Notes
    -----
    The bundled copy was taken from ``Airline.csv`` in the sktime 1.2.0
    wheel (BSD-3-Clause, no separate data licence). See
    ``fastlstm/datasets/data/README.md`` for full provenance.

    References
    ----------
    .. [1] G. E. P. Box, G. M. Jenkins and G. C. Reinsel, "Time Series
       Analysis, Forecasting and Control", 3rd ed., Holden-Day, 1976,
       Series G.

    Examples
    --------
    >>> from fastlstm.datasets import load_airline
    >>> y, dates = load_airline()
    >>> y.shape, y.dtype
    ((144,), dtype('float64'))
    >>> print(dates[0], dates[-1])
    1949-01 1960-12
    >>> y_train, y_test = y[:-36], y[-36:]
    """
    z = _load_npz("airline.npz")
    return z["values"], z["dates"]
