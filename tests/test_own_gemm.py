"""fastlstm's own float32 GEMM (``fastlstm/_kernels/own_gemm.h``).

The kernel is checked on its own against float64 NumPy (every tail of its
tiling: rows, columns, blocks of the summed dimension, strided and
transposed operands), then inside both CPU backends against the NumPy
reference, with the kernel on and with it off (BLAS), so that the paths a
user can get stay tested. The kernel's tests run once per instruction set
the CPU supports: an AVX-512 machine checks both its AVX-512 and its AVX2
tiles, an AVX2 machine the AVX2 ones.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from fastlstm._backends import get_backend
from fastlstm._kernels import _gemm

from _lstm_cases import random_layer, random_packed_batch, run_direction

# The instruction sets of this CPU (none: the kernel's tests are skipped).
ISAS = _gemm.supported_isas()


def skip_unless_supported(isa):
    if isa not in _gemm.supported_isas():
        pytest.skip(f"this CPU has no {isa} (it supports {_gemm.supported_isas()})")


@pytest.fixture
def own_gemm_off():
    previous = _gemm.isa()
    _gemm.set_enabled(False)
    yield
    _gemm.set_isa(previous)


@pytest.fixture
def own_gemm_on():
    previous = _gemm.isa()
    _gemm.set_enabled(True)
    yield
    _gemm.set_isa(previous)


@pytest.fixture(params=ISAS)
def own_gemm_isa(request):
    """The kernel on, with each instruction set the CPU supports in turn."""
    previous = _gemm.set_isa(request.param)
    yield request.param
    _gemm.set_isa(previous)


def reference_product(A, B):
    return A.astype(np.float64) @ B.astype(np.float64)


def random_direction_case(rng, lengths, n_features, hidden, proj_size, dtype):
    """A packed batch, a layer's weights, and dH, dh_n, dc_n (float64) for its backward."""
    state = proj_size or hidden
    batch = random_packed_batch(rng, lengths, n_features, dtype)
    layer = random_layer(rng, n_features, hidden, len(lengths), dtype, proj_size=proj_size)
    return (batch, layer, rng.standard_normal((batch.X.shape[0], state)),
            rng.standard_normal((len(lengths), state)), rng.standard_normal((len(lengths), hidden)))


def relative_error(actual, expected):
    scale = max(np.abs(expected).max(), 1e-30)
    return np.abs(actual - expected).max() / scale


# m: the skinny tiles (1-3 rows), one wide tile, a balanced split (27 -> 14
# + 13 with AVX-512, 5 blocks of 5-6 with AVX2), and past the 224 rows of a
# chunk (AVX2 packs B's panels for chunks of 6 blocks or more); n: under,
# at and over the 8-, 16- and 32-column masks and the skinny tiles' 64- and
# 128-column panels; k: empty, one, and around the 256-step blocks (a
# remainder under 64 joins the last block).
@pytest.mark.parametrize("m", [1, 2, 3, 4, 14, 27, 300])
@pytest.mark.parametrize("n", [1, 8, 9, 15, 16, 17, 32, 33, 100, 128, 129, 300])
@pytest.mark.parametrize("k", [0, 1, 255, 256, 320, 321, 700])
def test_matmul_matches_numpy(own_gemm_isa, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    C = _gemm.matmul(A, B, np.full((m, n), np.nan, dtype=np.float32))
    if k == 0:
        np.testing.assert_array_equal(C, 0)
    else:
        # Sums of k float32 products: error grows like sqrt(k) * eps.
        assert relative_error(C, reference_product(A, B)) < 1e-6 * np.sqrt(k)


@pytest.mark.parametrize("m", [2, 23])  # skinny and wide tiles
@pytest.mark.parametrize("accumulate", [False, True])
def test_matmul_strided_and_transposed_operands(own_gemm_isa, accumulate, m):
    rng = np.random.default_rng(1)
    # A as the transpose of a row-major (k, m) array, as in dW = dG^T X;
    # B and C as column slices of wider arrays (row stride > n).
    A = np.ascontiguousarray(rng.standard_normal((290, m)).astype(np.float32)).T
    B = rng.standard_normal((290, 50)).astype(np.float32)[:, 5:42]
    C_wide = rng.standard_normal((m, 60)).astype(np.float32)
    before = C_wide.copy()
    C = C_wide[:, 10:47]
    _gemm.matmul(A, B, C, accumulate=accumulate)
    expected = reference_product(A, B) + (before[:, 10:47] if accumulate else 0)
    assert relative_error(C, expected) < 1e-5
    # Nothing outside C's columns is written.
    np.testing.assert_array_equal(C_wide[:, :10], before[:, :10])
    np.testing.assert_array_equal(C_wide[:, 47:], before[:, 47:])


# A step of a large layer adds h R^T to gates rows that left the caches long
# ago, and the kernel prefetches them (C of at least 32768 floats): quad
# panels (n >= 256) and wide ones, with column tails, a strided C, one block
# of k, so that the sum added to C is the non-accumulating product's.
@pytest.mark.parametrize("m, n", [(64, 1024), (128, 300), (200, 200), (27, 1300)])
def test_accumulating_into_a_large_c_adds_the_product_bit_for_bit(own_gemm_isa, m, n):
    rng = np.random.default_rng(m * n)
    k = 256
    A = rng.standard_normal((m, k)).astype(np.float32)
    B = rng.standard_normal((k, n)).astype(np.float32)
    C_wide = rng.standard_normal((m, n + 40)).astype(np.float32)
    before = C_wide.copy()
    C = C_wide[:, 17:n + 17]
    _gemm.matmul(A, B, C, accumulate=True)
    np.testing.assert_array_equal(C, before[:, 17:n + 17] + _gemm.matmul(A, B))
    np.testing.assert_array_equal(C_wide[:, :17], before[:, :17])
    np.testing.assert_array_equal(C_wide[:, n + 17:], before[:, n + 17:])


# Weight gradients (A transposed, many rows, a narrow C whose width is not a
# multiple of 32) are computed as C^T = B^T A^T and transposed back; the
# sums are the same, so the bits must be those of the product with A
# row-major, which runs directly. Strided B and C, and k over two blocks.
@pytest.mark.parametrize("m, n", [(128, 12), (400, 100), (256, 28), (300, 1), (400, 127),
                                  (256, 64), (127, 12)])
def test_transposed_a_products_match_the_direct_ones_bit_for_bit(own_gemm_isa, m, n):
    rng = np.random.default_rng(m + n)
    k = 540
    A_rows = rng.standard_normal((k, m)).astype(np.float32)  # dG: A = dG^T
    B = rng.standard_normal((k, n + 3)).astype(np.float32)[:, 2:n + 2]
    C_wide = np.full((m, n + 9), -5.0, np.float32)
    C = C_wide[:, 4:n + 4]
    _gemm.matmul(A_rows.T, B, C)
    np.testing.assert_array_equal(C, _gemm.matmul(np.ascontiguousarray(A_rows.T), B))
    assert relative_error(C, reference_product(A_rows.T, B)) < 1e-6 * np.sqrt(k)
    assert (C_wide[:, :4] == -5.0).all() and (C_wide[:, n + 4:] == -5.0).all()


def test_a_row_does_not_depend_on_the_other_rows(own_gemm_isa):
    # The kernel's determinism promise: each C[i, j] is summed in one fixed
    # order, so a row comes out bit for bit the same whether it is computed
    # alone or inside any batch (BLAS gives no such promise).
    rng = np.random.default_rng(2)
    A = rng.standard_normal((40, 300)).astype(np.float32)
    # (1-3 rows run on the skinny tiles, more on the wide ones, or on the
    # quad ones for 256 columns and more; a transposed A keeps the wide ones.)
    for n_columns in [90, 300]:
        B = rng.standard_normal((300, n_columns)).astype(np.float32)
        full = _gemm.matmul(A, B)
        np.testing.assert_array_equal(_gemm.matmul(np.asfortranarray(A), B), full)
        for rows in [slice(0, 1), slice(5, 7), slice(37, 40), slice(3, 17), slice(13, 40),
                     slice(0, 27), slice(2, 6), slice(1, 5)]:
            np.testing.assert_array_equal(_gemm.matmul(A[rows], B), full[rows])


# B ends where an unreadable page begins: a tile (or a copy of a panel of B)
# that reads past B's last row crashes the process; so does one that reads
# past the end of a packed B. Run in a subprocess so
# that a crash fails this test, not the whole run. Column counts that end in
# a full or partial one-register panel, a skinny product and one of 40 rows
# (7 row blocks: the AVX2 tiles copy B's panels there).
_GUARDED_PRODUCTS = """
import ctypes, mmap, sys
import numpy as np
from fastlstm._kernels import _gemm
_gemm.set_isa(sys.argv[1])
page, k = mmap.PAGESIZE, 10
for m in (2, 40):
    for n in (8, 24, 40, 100):
        print(m, n, end=" ", flush=True)
        size = -(-4 * k * n // page) * page
        buf = mmap.mmap(-1, size + page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        if ctypes.CDLL(None).mprotect(ctypes.c_void_p(address + size), page, 0):
            sys.exit("mprotect failed")
        B = np.frombuffer(buf, np.float32, count=k * n, offset=size - 4 * k * n).reshape(k, n)
        B[:] = np.random.default_rng(n).standard_normal((k, n))
        A = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
        expected = A.astype(np.float64) @ B
        errors = [np.abs(_gemm.matmul(A, B) - expected).max()]
        packed = _gemm.pack(B)
        if packed is not None:
            # The packed copy in B's place, ending where the unreadable page begins.
            B.reshape(-1)[:] = packed
            errors.append(np.abs(_gemm.matmul_packed(A, B.reshape(-1), n) - expected).max())
        print(*errors, flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect through ctypes")
def test_products_do_not_read_past_the_end_of_b(own_gemm_isa):
    result = subprocess.run([sys.executable, "-c", _GUARDED_PRODUCTS, own_gemm_isa],
                            capture_output=True, text=True)
    assert result.returncode == 0, (f"exit {result.returncode} after {result.stdout!r}: "
                                    f"{result.stderr[-500:]}")
    lines = [line.split()[2:] for line in result.stdout.splitlines()]
    # With AVX2, the products with a packed B too.
    assert len(lines) == 8 and all(len(line) == 1 + (own_gemm_isa == "avx2") for line in lines)
    assert max(float(error) for line in lines for error in line) < 1e-5, result.stdout


def test_off_switch(own_gemm_off):
    assert not _gemm.enabled()
    with pytest.raises(RuntimeError, match="off or not supported"):
        _gemm.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))


def test_environment_variable_turns_it_off():
    code = "from fastlstm._kernels import _gemm; print(_gemm.enabled())"
    env = dict(os.environ, FASTLSTM_OWN_GEMM="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


def test_environment_variable_chooses_avx2():
    skip_unless_supported("avx2")
    code = "from fastlstm._kernels import _gemm; print(_gemm.isa())"
    env = dict(os.environ, FASTLSTM_OWN_GEMM="avx2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "avx2"


def test_enabled_follows_the_cpu(own_gemm_on):
    assert _gemm.enabled() == _gemm.cpu_supported()
    assert _gemm.isa() == (_gemm.supported_isas() or [None])[-1]


def test_set_isa_refuses_what_the_cpu_lacks(own_gemm_on):
    with pytest.raises(ValueError, match="cannot use 'sse'"):
        _gemm.set_isa("sse")
    if "avx512" not in _gemm.supported_isas():
        with pytest.raises(ValueError, match="cannot use 'avx512'"):
            _gemm.set_isa("avx512")
    assert _gemm.isa() == (_gemm.supported_isas() or [None])[-1]  # unchanged


# Both instruction sets sum every element in the same order (p ascending,
# one fused multiply-add per step, blocks of 256), so their results are the
# same bits: a model does not change when it moves between the two kinds of
# CPU. Shapes of every tile family: skinny, narrow, one-register tails,
# quad (>= 256 columns), packed panels (AVX2, many rows), transposed A.
@pytest.mark.parametrize("m, n, k, transposed", [
    (1, 512, 128, False), (3, 100, 300, False), (27, 400, 100, False), (64, 256, 64, False),
    (300, 12, 540, False), (128, 1024, 300, False), (400, 100, 540, True),
    (256, 28, 700, True)])
def test_avx2_and_avx512_give_the_same_bits(m, n, k, transposed):
    skip_unless_supported("avx512")
    rng = np.random.default_rng(m + n + k)
    A = rng.standard_normal((k, m) if transposed else (m, k)).astype(np.float32)
    A = A.T if transposed else A
    B = rng.standard_normal((k, n)).astype(np.float32)
    C = rng.standard_normal((m, n)).astype(np.float32)
    results = []
    previous = _gemm.set_isa("avx2")
    try:
        for isa in ["avx2", "avx512"]:
            _gemm.set_isa(isa)
            results.append((_gemm.matmul(A, B), _gemm.matmul(A, B, C.copy(), accumulate=True)))
    finally:
        _gemm.set_isa(previous)
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)


def packed_layout(B, block=256):
    """``B`` in the packed layout described in own_gemm_avx2.h, written plainly."""
    k, n = B.shape
    pieces, p0 = [], 0
    while p0 < k:
        kc = block if k - p0 > block + block // 4 else k - p0
        pieces += [B[p0:p0 + kc, j0:j0 + 16].ravel() for j0 in range(0, n, 16)]
        p0 += kc
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


# Products with a packed B (the recurrent weights of every step, AVX2): the
# layout, blocks of k included, packed from B's rows or from B^T's (the
# forward kernel packs R^T from R), then products against it that must be
# the bits of the product with B in place: 1-3 rows (panel tiles, and the
# skinny ones on a last partial panel), row blocks, column tails of 1-15,
# transposed A, strided C, accumulating or not.
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 27, 64])
@pytest.mark.parametrize("n", [4, 8, 12, 16, 37, 100, 148])
def test_packed_products_match_the_products_in_place_bit_for_bit(m, n):
    skip_unless_supported("avx2")
    rng = np.random.default_rng(m * 1000 + n)
    previous = _gemm.set_isa("avx2")
    try:
        for k in [1, 19, 300, 360, 700]:
            B = rng.standard_normal((k, n)).astype(np.float32)
            packed = _gemm.pack(B)
            np.testing.assert_array_equal(packed, packed_layout(B))
            np.testing.assert_array_equal(_gemm.pack(np.ascontiguousarray(B.T).T), packed)
            A = rng.standard_normal((m, k)).astype(np.float32)
            A_transposed = np.ascontiguousarray(A.T).T
            C_wide = rng.standard_normal((m, n + 6)).astype(np.float32)
            for a in (A, A_transposed):
                np.testing.assert_array_equal(_gemm.matmul_packed(a, packed, n),
                                              _gemm.matmul(A, B))
                C = C_wide.copy()
                _gemm.matmul_packed(a, packed, n, C[:, 2:n + 2], accumulate=True)
                expected = C_wide.copy()
                _gemm.matmul(A, B, expected[:, 2:n + 2], accumulate=True)
                np.testing.assert_array_equal(C, expected)
    finally:
        _gemm.set_isa(previous)


def test_avx2_tiles_says_which_tiles_run(own_gemm_off):
    # The kernels hand wide whole-sequence products to BLAS only where this
    # says 1 (numba_lstm._sequence_matmul, cython_lstm._sequence_gemm).
    import ctypes

    avx2_tiles = ctypes.CFUNCTYPE(ctypes.c_int)(_gemm.numba_avx2_tiles_address())
    assert avx2_tiles() == 0
    for isa in _gemm.supported_isas():
        _gemm.set_isa(isa)
        assert avx2_tiles() == (1 if isa == "avx2" else 0)


def test_pack_refuses_where_the_avx2_tiles_do_not_run(own_gemm_off):
    B = np.ones((5, 20), np.float32)
    assert _gemm.pack(B) is None
    if "avx512" in _gemm.supported_isas():
        _gemm.set_isa("avx512")  # its tiles read B in place
        assert _gemm.pack(B) is None
    if "avx2" in _gemm.supported_isas():
        _gemm.set_isa("avx2")
        assert _gemm.pack(B) is not None
        previous = _gemm.set_packing(False)
        try:
            assert _gemm.pack(B) is None
        finally:
            _gemm.set_packing(previous)


def _forward_workspace_weights(backend, batch, layer, reverse):
    """The rows of the forward kernel's workspace that take R^T, after a prediction pass."""
    n_rows, n_features = batch.X.shape
    batch_size, state = layer["h0"].shape
    hidden = layer["c0"].shape[1]
    work = np.zeros((batch_size + n_features + state + 1, 4 * hidden), np.float32)
    M = np.zeros((n_rows, hidden), np.float32) if layer["W_proj"].shape[0] else layer["W_proj"]
    backend.forward(batch.X, batch.batch_sizes, layer["W"], layer["R"], layer["bias"],
                    layer["W_proj"], layer["h0"], layer["c0"], reverse, 0, 0,
                    np.zeros((n_rows, state), np.float32), np.zeros((0, state), np.float32),
                    np.zeros((0, hidden), np.float32), np.zeros((0, hidden), np.float32),
                    np.zeros((n_rows, 4 * hidden), np.float32), M,
                    np.zeros((batch_size, state), np.float32),
                    np.zeros((batch_size, hidden), np.float32), work)
    return work[batch_size + n_features:-1]


# The CPU kernels pack R where the AVX2 tiles run (the forward's R^T into
# its workspace, the backward's R into dR); with packing switched off they
# read R in place. Both must give the same bits: ragged lengths (steps of
# 1-3 active rows), 4H = 360 (two blocks of k in the backward's dG R), a
# projection (P = 7: one partial panel).
@pytest.mark.parametrize("backend_name", ["numba", "cython"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj_size", [0, 7])
def test_kernels_give_the_same_bits_with_r_packed_and_in_place(backend_name, reverse, proj_size):
    skip_unless_supported("avx2")
    rng = np.random.default_rng(5)
    lengths = [23, 23, 17, 9, 4, 2, 2, 1]
    hidden, n_features = 90, 11
    batch, layer, dH, dh_n, dc_n = random_direction_case(rng, lengths, n_features, hidden,
                                                         proj_size, np.float32)
    previous_isa, previous_packing = _gemm.set_isa("avx2"), _gemm.set_packing(True)
    try:
        results = []
        for packing in (True, False):
            _gemm.set_packing(packing)
            # What the forward kernel leaves in its workspace: R^T in the
            # documented layout, or R^T row by row.
            R_t = _forward_workspace_weights(get_backend(backend_name), batch, layer, reverse)
            np.testing.assert_array_equal(
                R_t.ravel(), packed_layout(layer["R"].T) if packing else layer["R"].T.ravel())
            results.append(run_direction(get_backend(backend_name), batch, layer, reverse, 0, 0,
                                         dH, dh_n, dc_n))
    finally:
        _gemm.set_isa(previous_isa)
        _gemm.set_packing(previous_packing)
    for name, value in results[0].items():
        np.testing.assert_array_equal(value, results[1][name], err_msg=name)


# The forward kernels' transposes of W and R: whole 16 x 16 (8 x 8) blocks,
# row and column tails of every size, one row or column, strided views in
# and out.
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 5, 8, 16, 17, 31, 400])
@pytest.mark.parametrize("n", [1, 9, 12, 16, 19, 100])
def test_transpose_matches_numpy(isa, m, n):
    rng = np.random.default_rng(m * 100 + n)
    A = rng.standard_normal((m, n)).astype(np.float32)
    np.testing.assert_array_equal(_gemm.transpose(A, isa=isa), A.T)
    # Views inside larger arrays: rows further apart than their length, and
    # the output's neighbours must stay untouched.
    source = rng.standard_normal((m + 3, n + 5)).astype(np.float32)
    target = np.full((n + 4, m + 6), -7.0, np.float32)
    _gemm.transpose(source[1:m + 1, 2:n + 2], target[2:n + 2, 3:m + 3], isa=isa)
    np.testing.assert_array_equal(target[2:n + 2, 3:m + 3], source[1:m + 1, 2:n + 2].T)
    target[2:n + 2, 3:m + 3] = -7.0
    assert (target == -7.0).all()


def test_transpose_does_not_depend_on_the_switch(own_gemm_off):
    A = np.arange(12, dtype=np.float32).reshape(3, 4)
    if _gemm.cpu_supported():
        np.testing.assert_array_equal(_gemm.transpose(A), A.T)
    else:
        with pytest.raises(RuntimeError, match="AVX2"):
            _gemm.transpose(A)


# Sizes where the tiles, masks and row blocks are all exercised inside the
# LSTM kernels (test_kernels.py uses hidden size 5): 31 sequences (more rows
# than one tile), hidden 37 (4H = 148 columns: 4 panels and a 20-column
# tail), 19 input features.
@pytest.mark.parametrize("gemm", ["avx512", "avx2", "blas"])
@pytest.mark.parametrize("backend_name", ["numba", "cython"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("proj_size", [0, 7])
def test_float32_kernels_match_reference_with_and_without_own_gemm(gemm, backend_name,
                                                                   reverse, proj_size):
    if gemm != "blas":
        skip_unless_supported(gemm)
    rng = np.random.default_rng(3)
    lengths = list(rng.integers(1, 30, size=31))
    hidden, n_features = 37, 19
    batch64, layer64, dH, dh_n, dc_n = random_direction_case(rng, lengths, n_features, hidden,
                                                             proj_size, np.float64)
    expected = run_direction(get_backend("reference"), batch64, layer64, reverse, 0, 0,
                             dH, dh_n, dc_n)

    batch = random_packed_batch(rng, lengths, n_features, np.float32)
    batch.X[:] = batch64.X
    layer = {name: value.astype(np.float32) for name, value in layer64.items()}
    previous = _gemm.set_isa(None if gemm == "blas" else gemm)
    try:
        actual = run_direction(get_backend(backend_name), batch, layer, reverse, 0, 0,
                               dH, dh_n, dc_n)
    finally:
        _gemm.set_isa(previous)
    for name, value in expected.items():
        if value.size == 0:
            assert actual[name].size == 0
            continue
        error = relative_error(actual[name].astype(np.float64), value)
        assert error < 2e-5, f"{name}: relative error {error:.3g}"
