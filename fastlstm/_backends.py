"""Backend registry: which kernels run one LSTM direction over a packed batch.

Every backend exposes ``forward`` and ``backward`` with the signatures of
:mod:`fastlstm._kernels.numba_lstm` (outputs and workspaces allocated by the
caller, no hidden state). Backends are imported lazily, so that a user of one
never pays for loading (or compiling) another.
"""

import importlib
from dataclasses import dataclass
from typing import Callable

# name -> (module, forward function, backward function)
_REGISTRY = {
    "numba": ("fastlstm._kernels.numba_lstm", "lstm_forward", "lstm_backward"),
    "cython": ("fastlstm._kernels.cython_lstm", "forward", "backward"),
    "reference": ("fastlstm._kernels.reference", "forward", "backward"),
}

# What "auto" resolves to, fastest first.
_AUTO_ORDER = ("numba",)

BACKEND_NAMES = ("auto",) + tuple(_REGISTRY)


@dataclass(frozen=True)
class Backend:
    """The two kernels of one backend."""

    name: str
    forward: Callable
    backward: Callable


_loaded = {}


def get_backend(name):
    """Return the kernels registered under ``name``.

    Parameters
    ----------
    name : str
        One of :data:`BACKEND_NAMES`; ``"auto"`` picks the fastest available.

    Returns
    -------
    backend : Backend
    """
    if name == "auto":
        name = _AUTO_ORDER[0]
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown backend {name!r}; valid backends are {', '.join(map(repr, BACKEND_NAMES))}."
        )
    if name not in _loaded:
        module_name, forward_name, backward_name = _REGISTRY[name]
        module = importlib.import_module(module_name)
        _loaded[name] = Backend(
            name, getattr(module, forward_name), getattr(module, backward_name)
        )
    return _loaded[name]
