"""Backend registry: which kernels run one LSTM direction over a packed batch.

Every backend exposes ``forward`` and ``backward`` with the signatures of
:mod:`fastlstm._kernels.numba_lstm` (outputs and workspaces allocated by the
caller, no hidden state). Backends are imported lazily, so that a user of one
never pays for loading (or compiling) another.

``"auto"`` and compile latency: numba is the primary engine, but compiling
its kernels the first time takes seconds. The Cython kernels are compiled
ahead of time. So "auto" is resolved once per process: numba when its
compiled kernels are in numba's on-disk cache, otherwise Cython for this
process while numba compiles in a background thread, ready (cached) for the
next process. Resolving once keeps every fit of a process on the same
kernels, so refitting with the same seed reproduces a model exactly.
"""

import importlib
import threading
from dataclasses import dataclass
from typing import Callable

# name -> (module, forward function, backward function)
_REGISTRY = {
    "numba": ("fastlstm._kernels.numba_lstm", "lstm_forward", "lstm_backward"),
    "cython": ("fastlstm._kernels.cython_lstm", "forward", "backward"),
    "reference": ("fastlstm._kernels.reference", "forward", "backward"),
}

BACKEND_NAMES = ("auto",) + tuple(_REGISTRY)


@dataclass(frozen=True)
class Backend:
    """The two kernels of one backend."""

    name: str
    forward: Callable
    backward: Callable


_loaded = {}
_auto_choice = None
_auto_lock = threading.Lock()


def get_backend(name):
    """Return the kernels registered under ``name``.

    Parameters
    ----------
    name : str
        One of :data:`BACKEND_NAMES`; ``"auto"`` is resolved by
        :func:`resolve_auto`.

    Returns
    -------
    backend : Backend
    """
    if name == "auto":
        name = resolve_auto()
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


def numba_kernels_cached():
    """Whether numba's on-disk cache holds up-to-date compiled LSTM kernels.

    Reads the cache index numba keeps for the kernels (it is stale, and read
    as empty, when the kernels' source changed); it compiles nothing. This
    uses numba internals, so any surprise reads as "not cached".
    """
    module = importlib.import_module(_REGISTRY["numba"][0])
    try:
        return all(
            bool(kernel._cache._cache_file._load_index())
            for kernel in (module.lstm_forward, module.lstm_backward)
        )
    except Exception:  # noqa: BLE001 - internals of another numba version
        return False


def _warm_numba_in_background():
    from ._trainer import warm_up
    import numpy as np

    def compile_kernels():
        backend = get_backend("numba")
        for dtype in (np.float32, np.float64):
            warm_up(backend, np.dtype(dtype))

    threading.Thread(target=compile_kernels, name="fastlstm-numba-warm-up",
                     daemon=True).start()


def resolve_auto():
    """The backend ``"auto"`` stands for in this process (decided once)."""
    global _auto_choice
    with _auto_lock:
        if _auto_choice is None:
            if numba_kernels_cached():
                _auto_choice = "numba"
            else:
                try:
                    get_backend("cython")
                    _auto_choice = "cython"
                    _warm_numba_in_background()
                except ImportError:
                    _auto_choice = "numba"
        return _auto_choice
