"""fastlstm: fast LSTM estimators for scikit-learn.

``LSTMClassifier`` and ``LSTMRegressor`` fit variable-length sequences with
numba (or ahead-of-time Cython) kernels on the CPU, behind scikit-learn's
``fit``/``predict`` API. ``SequenceScaler``, ``FrameTransformer`` and
``make_windows`` prepare sequences inside scikit-learn pipelines.
"""

from ._estimators import LSTMClassifier, LSTMRegressor
from .preprocessing import FrameTransformer, SequenceScaler, make_windows

__version__ = "0.1.0"

__all__ = [
    "FrameTransformer",
    "LSTMClassifier",
    "LSTMRegressor",
    "SequenceScaler",
    "__version__",
    "make_windows",
]
