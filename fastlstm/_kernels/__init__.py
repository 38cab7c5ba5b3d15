"""Compute kernels: pure functions over caller-allocated arrays.

Each backend module exposes the same two functions for one direction of one
LSTM layer over a packed, length-sorted batch: ``forward`` and ``backward``.
``reference`` is the plain NumPy oracle; ``numba_lstm`` the compiled CPU engine.
"""
