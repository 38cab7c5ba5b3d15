"""Native entries: numba kernels compiled as C functions ``void f(int64_t *block)``.

A kernel called through numba's dispatcher pays for typing its arguments
on every call and needs the GIL to start and to return. An entry instead
takes its arguments' addresses and sizes in one int64 block, which compiled
code (``_spin.serve``, ``_stream_call.StreamCall``) fills and passes without
the GIL. The kernel modules define, per dtype, the Python functions that
rebuild the arrays from a block (with :func:`address_to_pointer` and
``numba.carray``) and call the kernel; an :class:`EntryTable` compiles them
on first use. numba's cache keys each entry by the source of the file that
defines it, so a change to a kernel's file recompiles its entries too.
"""

import threading

import numpy as np
from numba import cfunc, types
from numba.core.caching import FunctionCache
from numba.extending import intrinsic

SIGNATURE = types.void(types.CPointer(types.int64))


@intrinsic
def address_to_pointer(typingctx, address):
    """The int64 ``address`` as a ``void *``."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
    return types.voidptr(types.int64), codegen


class EntryTable:
    """Per dtype, Python functions of :data:`SIGNATURE` to compile as entries.

    Parameters
    ----------
    functions : dict of dtype to tuple of functions
        Nothing is compiled until :meth:`addresses` asks for a dtype.
    """

    def __init__(self, functions):
        self._functions = {np.dtype(dtype): tuple(entries) for dtype, entries in functions.items()}
        self._compiled = {}
        self._lock = threading.Lock()

    def addresses(self, dtype):
        """The addresses of ``dtype``'s entries, in order, or None if it has none.

        Compiled, or loaded from numba's on-disk cache, on the first call for a
        dtype; the compiled functions live as long as the table.
        """
        dtype = np.dtype(dtype)
        if dtype not in self._functions:
            return None
        with self._lock:
            if dtype not in self._compiled:
                # The CFunc objects are kept: their code lives as long as they do.
                entries = [cfunc(SIGNATURE, nopython=True, cache=True)(function)
                           for function in self._functions[dtype]]
                self._compiled[dtype] = entries, tuple(entry.address for entry in entries)
        return self._compiled[dtype][1]

    def cached(self):
        """Whether numba's on-disk cache holds every entry (compiles nothing).

        Reads the cache index as ``_backends.numba_kernels_cached`` does for
        the kernels: numba internals, so any surprise reads as "not cached".
        """
        try:
            return all(bool(FunctionCache(function)._cache_file._load_index())
                       for entries in self._functions.values() for function in entries)
        except Exception:  # noqa: BLE001 - internals of another numba version
            return False
