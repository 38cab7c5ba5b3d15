"""Flush-to-zero is on while fastlstm computes, and restored afterwards."""

import numpy as np
import pytest

from fastlstm import _fpenv
from fastlstm._trainer import compute_environment

pytestmark = pytest.mark.skipif(not _fpenv.SUPPORTED, reason="no MXCSR on this processor")


def test_subnormals_flush_inside_and_not_outside():
    tiny = np.array([1e-30], dtype=np.float32)
    scale = np.float32(1e-10)
    assert not _fpenv.flush_to_zero_enabled()
    assert (tiny * scale)[0] > 0  # a subnormal result
    with compute_environment():
        assert _fpenv.flush_to_zero_enabled()
        assert (tiny * scale)[0] == 0
    assert not _fpenv.flush_to_zero_enabled()
    assert (tiny * scale)[0] > 0


def test_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with compute_environment():
            raise RuntimeError
    assert not _fpenv.flush_to_zero_enabled()
