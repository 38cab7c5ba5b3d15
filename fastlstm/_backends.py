"""Backend registry: which kernels run one LSTM direction over a packed batch.

Every backend exposes ``forward`` and ``backward`` with the signatures of
:mod:`fastlstm._kernels.numba_lstm` (outputs and workspaces allocated by the
caller, no hidden state). Backends are imported lazily, so that a user of one
never pays for loading (or compiling) another.

``"auto"`` is resolved once per process. With a usable NVIDIA GPU (numba.cuda
imports, is not Numba's CUDA simulator, and ``numba.cuda.is_available()``)
it is ``"cuda"``. Otherwise it is a CPU backend, chosen for compile latency:
numba is the primary engine, but compiling its kernels the first time takes
about 8 s per dtype, while the Cython kernels are compiled ahead of time. So
"auto" is numba when its compiled kernels are in numba's on-disk cache,
otherwise Cython for this process while a detached, low-priority process
compiles numba's kernels into the cache for the processes that follow. A
separate process (not a thread) survives short scripts and does not compete
with the user's fit for the GIL. Resolving once keeps every fit of a process
on the same kernels, so refitting with the same seed reproduces a model
exactly. ``FASTLSTM_NO_BACKGROUND_COMPILE=1`` turns the background
compilation off.
"""

import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

# name -> (module, forward function, backward function)
_REGISTRY = {
    "numba": ("fastlstm._kernels.numba_lstm", "lstm_forward", "lstm_backward"),
    "cython": ("fastlstm._kernels.cython_lstm", "forward", "backward"),
    "reference": ("fastlstm._kernels.reference", "forward", "backward"),
    # numba.cuda kernels on an NVIDIA GPU (pip install fastlstm[cuda]); "auto"
    # picks it where gpu_usable() says a real GPU is there.
    "cuda": ("fastlstm._kernels.cuda_lstm", "forward", "backward"),
}

BACKEND_NAMES = ("auto",) + tuple(_REGISTRY)


# Backends whose module has entry_addresses(dtype): the native entries of
# some dtypes (C functions that run the registered kernels on packed arguments).
_WITH_NATIVE_ENTRIES = {"numba"}


@dataclass(frozen=True)
class Backend:
    """The two kernels of one backend."""

    name: str
    forward: Callable
    backward: Callable

    def native_entries(self, dtype):
        """Addresses of the (forward, backward, cooperative forward) native entries for
        ``dtype``, or None.

        A native entry runs the kernel on arguments packed by
        :func:`fastlstm._kernels._kernel_arguments.pack`, without the GIL
        (see ``_kernels.numba_lstm.entry_addresses``). Only the registered
        kernels have them: a backend around other functions gets None.
        Compiles them on the first call.
        """
        key = (self.forward, self.backward, dtype)
        if key not in _native_addresses:  # asked for every layer of every step
            _native_addresses[key] = _find_native_entries(self, dtype)
        return _native_addresses[key]


def _find_native_entries(backend, dtype):
    if backend.name not in _WITH_NATIVE_ENTRIES:
        return None
    module_name, forward_name, backward_name = _REGISTRY[backend.name]
    module = importlib.import_module(module_name)
    # The entries run the registered kernels: a backend of the same name
    # around other functions (bench/profile_step.py times the kernels by
    # wrapping them) has its calls made as it asks.
    if backend.forward is not getattr(module, forward_name) or (
            backend.backward is not getattr(module, backward_name)):
        return None
    return module.entry_addresses(dtype)


_loaded = {}
_native_addresses = {}  # (forward, backward, dtype) -> Backend.native_entries
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

    The native entries (``numba_lstm.entry_addresses``) count among them, as
    do the streaming path's (``numba_stream.entry_address``), which
    ``predict_and_update_state`` would otherwise compile on its first call.
    Reads the cache index numba keeps for the kernels (it is stale, and read
    as empty, when the kernels' source changed); it compiles nothing. This
    uses numba internals, so any surprise reads as "not cached".
    """
    module = importlib.import_module(_REGISTRY["numba"][0])
    try:
        kernels_cached = all(
            bool(kernel._cache._cache_file._load_index())
            for kernel in (module.lstm_forward, module.lstm_backward)
        )
    except Exception:  # noqa: BLE001 - internals of another numba version
        return False
    from ._kernels import numba_stream

    return kernels_cached and module.entries_cached() and numba_stream.entries_cached()


# A compile process younger than this holds the lock; an older lock is stale.
_LOCK_SECONDS = 600


def _compile_lock_path():
    module = importlib.import_module(_REGISTRY["numba"][0])
    cache_dir = getattr(module.lstm_forward._cache, "_cache_path", module.__file__)
    digest = hashlib.sha1(str(cache_dir).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"fastlstm-numba-compile-{digest}.lock")


def _warm_numba_in_background():
    """Start a detached process that compiles numba's kernels into its cache.

    At most one such process per cache runs at a time (a lock file), so that
    the workers of a parallel grid search do not each start one.
    """
    if os.environ.get("FASTLSTM_NO_BACKGROUND_COMPILE") == "1":
        return
    lock = _compile_lock_path()
    try:
        if time.time() - os.path.getmtime(lock) > _LOCK_SECONDS:
            os.remove(lock)
    except OSError:
        pass
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except OSError:
        return  # another process is compiling already
    subprocess.Popen(
        [sys.executable, "-m", "fastlstm._backends", "--compile-numba", lock],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def compile_numba_kernels():
    """Compile (or load) numba's kernels for float32 and float64 now."""
    import numpy as np

    from ._streaming import warm_up_streaming
    from ._trainer import warm_up

    backend = get_backend("numba")
    for dtype in (np.float32, np.float64):
        warm_up(backend, np.dtype(dtype))  # the native entries too (see _network)
        warm_up_streaming(dtype)


def gpu_usable():
    """Whether numba.cuda can run kernels on a real NVIDIA GPU here.

    False when numba.cuda does not import, when it is Numba's CUDA simulator
    (``NUMBA_ENABLE_CUDASIM=1``: correct but far too slow to be chosen
    unasked), or when ``numba.cuda.is_available()`` is False (no driver, no
    device or no libNVVM). Costs the import of numba.cuda (about 0.1 s) and,
    where a driver is installed, its initialisation; never raises.

    Returns
    -------
    usable : bool
    """
    try:
        import numba

        if getattr(numba.config, "ENABLE_CUDASIM", False):
            return False
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - any failure means no GPU for "auto"
        return False


def resolve_auto():
    """The backend ``"auto"`` stands for in this process (decided once).

    ``"cuda"`` where :func:`gpu_usable`; otherwise a CPU backend, numba when
    its compiled kernels are cached, else Cython (see the module docstring).

    Returns
    -------
    name : str
    """
    global _auto_choice
    with _auto_lock:
        if _auto_choice is None:
            if gpu_usable():
                _auto_choice = "cuda"
            elif numba_kernels_cached():
                _auto_choice = "numba"
            else:
                try:
                    get_backend("cython")
                    _auto_choice = "cython"
                    _warm_numba_in_background()
                except ImportError:
                    _auto_choice = "numba"
        return _auto_choice


if __name__ == "__main__" and sys.argv[1:2] == ["--compile-numba"]:
    # The detached compile process of _warm_numba_in_background.
    try:
        os.nice(10)  # leave the cores to the user's own work
    except (AttributeError, OSError):
        pass
    try:
        compile_numba_kernels()
    finally:
        try:
            os.remove(sys.argv[2])
        except OSError:
            pass
