"""fastlstm: fast LSTM estimators for scikit-learn.

``LSTMClassifier`` and ``LSTMRegressor`` fit variable-length sequences with
numba kernels on the CPU, behind scikit-learn's ``fit``/``predict`` API.
"""

from ._estimators import LSTMClassifier, LSTMRegressor

__version__ = "0.1.0"

__all__ = ["LSTMClassifier", "LSTMRegressor", "__version__"]
