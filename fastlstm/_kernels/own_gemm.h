/* fastlstm's own single-precision GEMM, for CPUs with AVX-512 (here) or AVX2
 * and FMA (own_gemm_avx2.h, the same scheme with 8-float registers).
 *
 * Why not only BLAS: an LSTM step multiplies small matrices (27 x 100 by
 * 100 x 400 for a Japanese-Vowels-sized batch), thousands of times per fit.
 * There BLAS loses twice: every call re-packs its operands and pays its
 * dispatch, and the kernel it runs is whatever core type the BLAS build
 * picked (an OpenBLAS told OPENBLAS_CORETYPE=Haswell runs AVX2 code on an
 * AVX-512 CPU). This kernel reads its operands in place and always uses the
 * CPU's 512-bit registers; on the LSTM shapes it measured 1.3-2.7x faster
 * than OpenBLAS's Haswell kernels and than MKL (bench/test_gemm.py).
 *
 * What it computes (row-major, float32):
 *
 *     C[i, j] = (accumulate ? C[i, j] : 0) + sum_p A(i, p) * B[p, j]
 *
 * with A(i, p) = a[i * a_row_stride + p * a_col_stride], so that A may be
 * a row-major matrix (a_col_stride = 1) or the transpose of one
 * (a_row_stride = 1), and B[p, j] = b[p * ldb + j]: B's rows must be
 * contiguous, which is why the forward kernels hand it W and R transposed.
 *
 * How: C is cut into tiles of up to MR_MAX rows by 32 columns (two 16-float
 * registers per row), each held in registers while the sum over p runs; per
 * p, the tile loads one row of B (two registers) and broadcasts one element
 * of A per row, then does 2 * MR fused multiply-adds. With MR_MAX = 14 that
 * is 28 accumulators, 2 B registers and 1 broadcast: 31 of the 32 registers.
 * Column tails are masked loads and stores; row counts are split into
 * near-equal blocks (27 rows -> 14 + 13, not 14 + 13 + 0). The sum over p
 * is cut into blocks of KC steps and the rows into chunks of about 224, so
 * that a panel of B stays in L1 and a chunk of A in L2 (see
 * fastlstm_gemm_block).
 * Products at most 16 columns wide use tiles of one register per row and
 * up to 28 rows instead, products of at most 3 rows "skinny" tiles of up
 * to 8 registers per row, and products of at least 256 columns (with A not
 * transposed) "quad" tiles of up to 6 rows by 4 registers (see there).
 * Weight gradients with a narrow C are computed transposed (see
 * fastlstm_swap_pays). With the AVX2 tiles, a B that every step of a
 * sequence multiplies by (the recurrent weights) can be packed once into
 * the panels the tiles read (fastlstm_pack_b, fastlstm_sgemm_packed).
 *
 * Determinism: every C[i, j] is summed in the same order (p ascending, one
 * fused multiply-add per p, a new partial sum per KC block added to C)
 * whatever m, the row blocking or the thread, so a row's result does not
 * depend on which other rows share the call.
 *
 * Entry points return 0 when they computed C, and 1 when they did not
 * (neither AVX-512 nor AVX2, turned off, or a compiler without the needed
 * intrinsics); the caller then uses BLAS.
 */
#ifndef FASTLSTM_OWN_GEMM_H
#define FASTLSTM_OWN_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FASTLSTM_HAVE_SIMD_CODE 1
#include <immintrin.h>
#else
#define FASTLSTM_HAVE_SIMD_CODE 0
#endif

/* Which tiles run the products: none (the caller uses BLAS), the AVX2 +
 * FMA ones (own_gemm_avx2.h) or the AVX-512 ones (below). */
#define FASTLSTM_ISA_NONE 0
#define FASTLSTM_ISA_AVX2 1
#define FASTLSTM_ISA_AVX512 2

/* -1: not decided yet; else one of FASTLSTM_ISA_*. */
static int fastlstm_gemm_state = -1;

/* The best instruction set this CPU (and its OS) can run the kernel with,
 * found once: every transpose asks (two per forward kernel call). */
static int fastlstm_gemm_cpu_supported(void)
{
    static int supported = -1;
    if (supported >= 0)
        return supported;
    supported = FASTLSTM_ISA_NONE;
#if FASTLSTM_HAVE_SIMD_CODE
    /* Also checks that the OS saves the 256- and 512-bit registers (XCR0). */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        supported = FASTLSTM_ISA_AVX512;
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        supported = FASTLSTM_ISA_AVX2;
#endif
    return supported;
}

/* The instruction set products use now (FASTLSTM_ISA_NONE: BLAS). */
static int fastlstm_gemm_enabled(void)
{
    if (fastlstm_gemm_state < 0)
        fastlstm_gemm_state = fastlstm_gemm_cpu_supported();
    return fastlstm_gemm_state;
}

/* Turn the kernel off (0) or back on (1: the best the CPU supports). */
static void fastlstm_gemm_set_enabled(int enabled)
{
    fastlstm_gemm_state = enabled ? fastlstm_gemm_cpu_supported() : FASTLSTM_ISA_NONE;
}

/* Use the tiles of one instruction set (FASTLSTM_ISA_*): AVX2 on an AVX-512
 * CPU, say, to test or compare them. Returns 1, changing nothing, where
 * the CPU does not support it. */
static int fastlstm_gemm_set_isa(int isa)
{
    if (isa < FASTLSTM_ISA_NONE || isa > fastlstm_gemm_cpu_supported())
        return 1;
    fastlstm_gemm_state = isa;
    return 0;
}

#if FASTLSTM_HAVE_SIMD_CODE

#define FASTLSTM_NR 32
#define FASTLSTM_MR_MAX 14
#define FASTLSTM_KC 256
#define FASTLSTM_CHUNK_ROWS 224

/* The first n_columns (at most 16) lanes of a register. */
static __mmask16 fastlstm_mask(ptrdiff_t n_columns)
{
    if (n_columns >= 16)
        return (__mmask16)0xFFFF;
    if (n_columns <= 0)
        return (__mmask16)0;
    return (__mmask16)((1u << n_columns) - 1u);
}

/* One tile: rows [0, MR) of C, summed over k steps of p. WIDE tiles are 32
 * columns under masks m0 (columns 0-15) and m1 (16-31), two registers per
 * row; narrow ones (WIDE = 0) are 16 columns under m0, one register per
 * row, for products at most 16 columns wide (dW = dG^T X and dX = dG W with
 * a dozen input features): up to 28 rows (28 accumulators, 1 B register,
 * 1 broadcast) rather than 14 rows whose second register would be masked
 * off entirely. WIDE is a constant, so each tile compiles to one of the
 * two loops. */
#define FASTLSTM_DEFINE_TILE(NAME, MR, WIDE)                                       \
__attribute__((target("avx512f")))                                                 \
static void NAME(ptrdiff_t k, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,      \
                 const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,           \
                 __mmask16 m0, __mmask16 m1, int accumulate)                       \
{                                                                                  \
    __m512 c0[MR], c1[MR];                                                         \
    _Pragma("GCC unroll 32")                                                       \
    for (int i = 0; i < MR; i++) {                                                 \
        c0[i] = _mm512_setzero_ps();                                               \
        c1[i] = _mm512_setzero_ps();                                               \
    }                                                                              \
    for (ptrdiff_t p = 0; p < k; p++) {                                            \
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + p * ldb);                  \
        const __m512 b1 = WIDE ? _mm512_maskz_loadu_ps(m1, b + p * ldb + 16)       \
                               : _mm512_setzero_ps();                              \
        const float *a_p = a + p * a_cs;                                           \
        _Pragma("GCC unroll 32")                                                   \
        for (int i = 0; i < MR; i++) {                                             \
            const __m512 a_ip = _mm512_set1_ps(a_p[i * a_rs]);                     \
            c0[i] = _mm512_fmadd_ps(a_ip, b0, c0[i]);                              \
            if (WIDE)                                                              \
                c1[i] = _mm512_fmadd_ps(a_ip, b1, c1[i]);                          \
        }                                                                          \
    }                                                                              \
    _Pragma("GCC unroll 32")                                                       \
    for (int i = 0; i < MR; i++) {                                                 \
        float *c_i = c + i * ldc;                                                  \
        if (accumulate) {                                                          \
            c0[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c_i), c0[i]);          \
            if (WIDE)                                                              \
                c1[i] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c_i + 16), c1[i]); \
        }                                                                          \
        _mm512_mask_storeu_ps(c_i, m0, c0[i]);                                     \
        if (WIDE)                                                                  \
            _mm512_mask_storeu_ps(c_i + 16, m1, c1[i]);                            \
    }                                                                              \
}
#define FASTLSTM_WIDE_TILE(MR) FASTLSTM_DEFINE_TILE(fastlstm_tile_##MR, MR, 1)
#define FASTLSTM_NARROW_TILE(MR) FASTLSTM_DEFINE_TILE(fastlstm_narrow_tile_##MR, MR, 0)

FASTLSTM_WIDE_TILE(1)  FASTLSTM_WIDE_TILE(2)  FASTLSTM_WIDE_TILE(3)  FASTLSTM_WIDE_TILE(4)
FASTLSTM_WIDE_TILE(5)  FASTLSTM_WIDE_TILE(6)  FASTLSTM_WIDE_TILE(7)  FASTLSTM_WIDE_TILE(8)
FASTLSTM_WIDE_TILE(9)  FASTLSTM_WIDE_TILE(10) FASTLSTM_WIDE_TILE(11) FASTLSTM_WIDE_TILE(12)
FASTLSTM_WIDE_TILE(13) FASTLSTM_WIDE_TILE(14)

FASTLSTM_NARROW_TILE(1)  FASTLSTM_NARROW_TILE(2)  FASTLSTM_NARROW_TILE(3)
FASTLSTM_NARROW_TILE(4)  FASTLSTM_NARROW_TILE(5)  FASTLSTM_NARROW_TILE(6)
FASTLSTM_NARROW_TILE(7)  FASTLSTM_NARROW_TILE(8)  FASTLSTM_NARROW_TILE(9)
FASTLSTM_NARROW_TILE(10) FASTLSTM_NARROW_TILE(11) FASTLSTM_NARROW_TILE(12)
FASTLSTM_NARROW_TILE(13) FASTLSTM_NARROW_TILE(14) FASTLSTM_NARROW_TILE(15)
FASTLSTM_NARROW_TILE(16) FASTLSTM_NARROW_TILE(17) FASTLSTM_NARROW_TILE(18)
FASTLSTM_NARROW_TILE(19) FASTLSTM_NARROW_TILE(20) FASTLSTM_NARROW_TILE(21)
FASTLSTM_NARROW_TILE(22) FASTLSTM_NARROW_TILE(23) FASTLSTM_NARROW_TILE(24)
FASTLSTM_NARROW_TILE(25) FASTLSTM_NARROW_TILE(26) FASTLSTM_NARROW_TILE(27)
FASTLSTM_NARROW_TILE(28)

/* Skinny tiles, for products of at most FASTLSTM_SKINNY_ROWS rows (the
 * recurrent product of a step where one to three sequences are still
 * active; a streaming step of one sequence): MR rows by NV registers of
 * columns (up to 128). A wide tile of one row keeps two accumulators, so
 * each step of p waits for the previous fused multiply-add of the same
 * register (4 cycles) and the kernel runs at a quarter of its speed: 3.3 us
 * per step for a 1 x 128 by 128 x 512 product inside a sequence's loop,
 * 1.5 us here, where up to 8 registers per row keep the multiply-adds
 * independent (the weights, 256 kB, then stream from L2 as fast as it
 * delivers them). Each C[i, j] is summed exactly as in
 * the wide tiles (p ascending, from zero, then added to C), so results do
 * not depend on which tile computed them. */
#define FASTLSTM_DEFINE_SKINNY_TILE(MR, NV)                                        \
__attribute__((target("avx512f")))                                                 \
static void fastlstm_skinny_tile_##MR##_##NV(                                      \
    ptrdiff_t k, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs, const float *b,    \
    ptrdiff_t ldb, float *c, ptrdiff_t ldc, ptrdiff_t n_columns, int accumulate)   \
{                                                                                  \
    __m512 acc[MR][NV];                                                            \
    __mmask16 mask[NV];                                                            \
    _Pragma("GCC unroll 8")                                                        \
    for (int v = 0; v < NV; v++) {                                                 \
        mask[v] = fastlstm_mask(n_columns - 16 * v);                               \
        _Pragma("GCC unroll 8")                                                    \
        for (int i = 0; i < MR; i++)                                               \
            acc[i][v] = _mm512_setzero_ps();                                       \
    }                                                                              \
    for (ptrdiff_t p = 0; p < k; p++) {                                            \
        const float *a_p = a + p * a_cs;                                           \
        const float *b_p = b + p * ldb;                                            \
        _Pragma("GCC unroll 8")                                                    \
        for (int v = 0; v < NV; v++) {                                             \
            const __m512 b_v = _mm512_maskz_loadu_ps(mask[v], b_p + 16 * v);       \
            _Pragma("GCC unroll 8")                                                \
            for (int i = 0; i < MR; i++)                                           \
                acc[i][v] = _mm512_fmadd_ps(_mm512_set1_ps(a_p[i * a_rs]), b_v,     \
                                            acc[i][v]);                            \
        }                                                                          \
    }                                                                              \
    _Pragma("GCC unroll 8")                                                        \
    for (int i = 0; i < MR; i++) {                                                 \
        float *c_i = c + i * ldc;                                                  \
        _Pragma("GCC unroll 8")                                                    \
        for (int v = 0; v < NV; v++) {                                             \
            __m512 value = acc[i][v];                                              \
            if (accumulate)                                                        \
                value = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], c_i + 16 * v), \
                                      value);                                      \
            _mm512_mask_storeu_ps(c_i + 16 * v, mask[v], value);                   \
        }                                                                          \
    }                                                                              \
}
#define FASTLSTM_SKINNY_TILES(MR)                                                   \
    FASTLSTM_DEFINE_SKINNY_TILE(MR, 1) FASTLSTM_DEFINE_SKINNY_TILE(MR, 2)          \
    FASTLSTM_DEFINE_SKINNY_TILE(MR, 3) FASTLSTM_DEFINE_SKINNY_TILE(MR, 4)          \
    FASTLSTM_DEFINE_SKINNY_TILE(MR, 5) FASTLSTM_DEFINE_SKINNY_TILE(MR, 6)          \
    FASTLSTM_DEFINE_SKINNY_TILE(MR, 7) FASTLSTM_DEFINE_SKINNY_TILE(MR, 8)

#define FASTLSTM_SKINNY_ROWS 3
#define FASTLSTM_SKINNY_NV 8

FASTLSTM_SKINNY_TILES(1) FASTLSTM_SKINNY_TILES(2) FASTLSTM_SKINNY_TILES(3)

/* The same tiles with 4 to 6 rows and up to 4 registers (64 columns):
 * "quad" tiles, for products with many columns (see fastlstm_gemm_block).
 * Per step of p a 6 x 64 tile loads 4 registers of B and broadcasts 6
 * elements of A for 24 multiply-adds, where a 14 x 32 tile needs 2 and 14
 * for 28: fewer loads per multiply-add, which is what limits the wide
 * tiles on products with hundreds of columns. */
#define FASTLSTM_QUAD_MR_MAX 6
#define FASTLSTM_QUAD_NV 4
#define FASTLSTM_QUAD_TILES(MR)                                                     \
    FASTLSTM_DEFINE_SKINNY_TILE(MR, 1) FASTLSTM_DEFINE_SKINNY_TILE(MR, 2)          \
    FASTLSTM_DEFINE_SKINNY_TILE(MR, 3) FASTLSTM_DEFINE_SKINNY_TILE(MR, 4)

FASTLSTM_QUAD_TILES(4) FASTLSTM_QUAD_TILES(5) FASTLSTM_QUAD_TILES(6)

typedef void (*fastlstm_skinny_tile_fn)(ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                        const float *, ptrdiff_t, float *, ptrdiff_t,
                                        ptrdiff_t, int);

#define FASTLSTM_SKINNY_ROW(MR)                                                     \
    {NULL, fastlstm_skinny_tile_##MR##_1, fastlstm_skinny_tile_##MR##_2,            \
     fastlstm_skinny_tile_##MR##_3, fastlstm_skinny_tile_##MR##_4,                  \
     fastlstm_skinny_tile_##MR##_5, fastlstm_skinny_tile_##MR##_6,                  \
     fastlstm_skinny_tile_##MR##_7, fastlstm_skinny_tile_##MR##_8}

/* [rows][registers of columns] */
static const fastlstm_skinny_tile_fn
fastlstm_skinny_tiles[FASTLSTM_SKINNY_ROWS + 1][FASTLSTM_SKINNY_NV + 1] = {
    {NULL}, FASTLSTM_SKINNY_ROW(1), FASTLSTM_SKINNY_ROW(2), FASTLSTM_SKINNY_ROW(3),
};

#define FASTLSTM_QUAD_ROW(MR)                                                       \
    {NULL, fastlstm_skinny_tile_##MR##_1, fastlstm_skinny_tile_##MR##_2,            \
     fastlstm_skinny_tile_##MR##_3, fastlstm_skinny_tile_##MR##_4}

static const fastlstm_skinny_tile_fn
fastlstm_quad_tiles[FASTLSTM_QUAD_MR_MAX + 1][FASTLSTM_QUAD_NV + 1] = {
    {NULL}, FASTLSTM_QUAD_ROW(1), FASTLSTM_QUAD_ROW(2), FASTLSTM_QUAD_ROW(3),
    FASTLSTM_QUAD_ROW(4), FASTLSTM_QUAD_ROW(5), FASTLSTM_QUAD_ROW(6),
};

typedef void (*fastlstm_tile_fn)(ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                 const float *, ptrdiff_t, float *, ptrdiff_t,
                                 __mmask16, __mmask16, int);

static const fastlstm_tile_fn fastlstm_tiles[FASTLSTM_MR_MAX + 1] = {
    NULL, fastlstm_tile_1, fastlstm_tile_2, fastlstm_tile_3, fastlstm_tile_4,
    fastlstm_tile_5, fastlstm_tile_6, fastlstm_tile_7, fastlstm_tile_8,
    fastlstm_tile_9, fastlstm_tile_10, fastlstm_tile_11, fastlstm_tile_12,
    fastlstm_tile_13, fastlstm_tile_14,
};

#define FASTLSTM_NARROW_MR_MAX 28

static const fastlstm_tile_fn fastlstm_narrow_tiles[FASTLSTM_NARROW_MR_MAX + 1] = {
    NULL, fastlstm_narrow_tile_1, fastlstm_narrow_tile_2, fastlstm_narrow_tile_3,
    fastlstm_narrow_tile_4, fastlstm_narrow_tile_5, fastlstm_narrow_tile_6,
    fastlstm_narrow_tile_7, fastlstm_narrow_tile_8, fastlstm_narrow_tile_9,
    fastlstm_narrow_tile_10, fastlstm_narrow_tile_11, fastlstm_narrow_tile_12,
    fastlstm_narrow_tile_13, fastlstm_narrow_tile_14, fastlstm_narrow_tile_15,
    fastlstm_narrow_tile_16, fastlstm_narrow_tile_17, fastlstm_narrow_tile_18,
    fastlstm_narrow_tile_19, fastlstm_narrow_tile_20, fastlstm_narrow_tile_21,
    fastlstm_narrow_tile_22, fastlstm_narrow_tile_23, fastlstm_narrow_tile_24,
    fastlstm_narrow_tile_25, fastlstm_narrow_tile_26, fastlstm_narrow_tile_27,
    fastlstm_narrow_tile_28,
};

/* Products at least this many columns wide take the quad tiles: 5-15 %
 * faster than the wide tiles on a W3 step's products (4H = 1024 and hidden
 * 256 columns), the same on W1's and W2's 4H = 400 and 256; narrower ones
 * (hidden 100 and 64) keep the wide tiles. */
#define FASTLSTM_QUAD_MIN_COLUMNS 256

/* An accumulating product at least this many floats of C large prefetches
 * C (see fastlstm_prefetch_tile); a smaller C (a W1 or W2 step's gates,
 * 43-64 kB) is still in L2 from the input projection. */
#define FASTLSTM_PREFETCH_MIN_FLOATS 32768

/* Ask for the rows x columns tile of C at c (rows ldc apart) in L2. A step
 * of the recurrence adds h R^T to the rows of the gates that the input
 * projection wrote before the loop: for W3 (64 sequences, 4H = 1024) 256 kB
 * per step out of 26 MB, long gone from the caches, and each tile waited
 * for its rows when it added its sums to them: the step's product ran at
 * 170 GFLOP/s, not the 200-230 of the same product into cached rows.
 * Prefetched a tile ahead, the forward kernel of a W3 layer runs 6-9 %
 * faster; prefetching is only a hint, so C's bits do not change. No
 * target("avx512f") here (prefetcht1 is baseline x86-64): with it, GCC 12
 * compiled the calls from fastlstm_gemm_block to no instruction at all.
 * Always inlined, as fastlstm_prefetch_ahead is: GCC 12 takes a function
 * of prefetches alone for one without side effects and deletes the calls
 * it does not inline (objdump: no prefetcht1 left). */
__attribute__((always_inline))
static inline void fastlstm_prefetch_tile(const float *c, ptrdiff_t ldc, ptrdiff_t rows,
                                          ptrdiff_t columns)
{
    ptrdiff_t i, j;
    for (i = 0; i < rows; i++)
        for (j = 0; j < columns; j += 16)
            _mm_prefetch((const char *)(c + i * ldc + j), _MM_HINT_T1);
}

/* Called before the tile of C at c_tile (rows rows, column j0 of C, left
 * columns from there to C's end, panels of panel_columns): prefetch this
 * tile if nothing asked for it yet (the first panel), and the next panel's
 * tile of the same rows, read after the chunk's other row blocks. Both
 * instruction sets' block loops call it. */
__attribute__((always_inline))
static inline void fastlstm_prefetch_ahead(const float *c_tile, ptrdiff_t ldc,
                                           ptrdiff_t rows, ptrdiff_t j0, ptrdiff_t left,
                                           ptrdiff_t panel_columns)
{
    if (j0 == 0)
        fastlstm_prefetch_tile(c_tile, ldc, rows, left < panel_columns ? left : panel_columns);
    if (left > panel_columns)
        fastlstm_prefetch_tile(c_tile + panel_columns, ldc, rows,
                               left - panel_columns < panel_columns ? left - panel_columns
                                                                    : panel_columns);
}

/* How many steps of p the block starting with left steps to go takes:
 * KC, or all of them when fewer than KC + KC / 4 are left (a remainder
 * under KC / 4 joins the last block rather than costing a pass over C of
 * its own). Every element's sum adds one partial sum per block to C, so
 * this cut is part of what fixes C's bits. */
static inline ptrdiff_t fastlstm_block_depth(ptrdiff_t left)
{
    return left > FASTLSTM_KC + FASTLSTM_KC / 4 ? FASTLSTM_KC : left;
}

/* One block of KC (or fewer) steps of p over the whole of C. */
static void fastlstm_gemm_block(ptrdiff_t m, ptrdiff_t n, ptrdiff_t kc,
                                const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                                const float *b, ptrdiff_t ldb, float *c,
                                ptrdiff_t ldc, int accumulate)
{
    const int narrow = n <= 16;
    /* Not for a transposed A (dW = dG^T X, dR = dG^T Hprev): there a row
     * block reads, per step of p, as many floats from a new cache line as
     * it has rows, and 6 were 5 % slower than 14. */
    const int quad = n >= FASTLSTM_QUAD_MIN_COLUMNS && a_cs == 1;
    const ptrdiff_t mr_max = narrow ? FASTLSTM_NARROW_MR_MAX
                             : quad ? FASTLSTM_QUAD_MR_MAX : FASTLSTM_MR_MAX;
    const ptrdiff_t panel_columns = quad ? 16 * FASTLSTM_QUAD_NV : FASTLSTM_NR;
    const fastlstm_tile_fn *tiles = narrow ? fastlstm_narrow_tiles : fastlstm_tiles;
    const ptrdiff_t n_row_blocks = (m + mr_max - 1) / mr_max;
    const ptrdiff_t base = m / n_row_blocks, extra = m % n_row_blocks;
    const ptrdiff_t chunk_blocks = FASTLSTM_CHUNK_ROWS / mr_max;
    const int prefetch_c = accumulate && m * n >= FASTLSTM_PREFETCH_MIN_FLOATS;
    ptrdiff_t chunk, block, i0, j0, rows;
    if (m <= FASTLSTM_SKINNY_ROWS && !narrow) {
        /* One row block; columns in panels of up to 8 registers, the last
         * panel only as many registers as it has columns for. */
        for (j0 = 0; j0 < n; j0 += 16 * FASTLSTM_SKINNY_NV) {
            ptrdiff_t left = n - j0, n_registers = (left + 15) / 16;
            if (n_registers > FASTLSTM_SKINNY_NV)
                n_registers = FASTLSTM_SKINNY_NV;
            fastlstm_skinny_tiles[m][n_registers](kc, a, a_rs, a_cs, b + j0, ldb, c + j0, ldc,
                                                  left, accumulate);
        }
        return;
    }
    /* Row blocks go in chunks of about FASTLSTM_CHUNK_ROWS rows; inside a
     * chunk the panels of B are walked outside and the chunk's row blocks
     * inside. A panel of B (KC x 32 floats, 32 kB) then stays in L1 across
     * the chunk's tiles, and the chunk's rows of A (224 x KC floats, 224 kB)
     * stay in L2 across the panels, so a whole-sequence product reads B
     * from memory once per chunk, not once per tile. A step's product (a
     * few dozen rows) is one chunk. Quad tiles take panels of 64 columns,
     * the last one as many registers as it has columns for. */
    for (chunk = 0; chunk < n_row_blocks; chunk += chunk_blocks) {
        /* Blocks before this chunk's first: min(chunk, extra) of them have a
         * row more than base. */
        const ptrdiff_t chunk_i0 = chunk * base + (chunk < extra ? chunk : extra);
        const ptrdiff_t last = chunk + chunk_blocks < n_row_blocks ? chunk + chunk_blocks
                                                                   : n_row_blocks;
        for (j0 = 0; j0 < n; j0 += panel_columns) {
            const ptrdiff_t left = n - j0;
            const ptrdiff_t n_registers = left >= panel_columns ? FASTLSTM_QUAD_NV
                                                                : (left + 15) / 16;
            const __mmask16 m0 = fastlstm_mask(left), m1 = fastlstm_mask(left - 16);
            /* A last panel of at most 16 columns (hidden 100: 3 panels of
             * 32, then 4 columns) takes the one-register tiles: a wide tile
             * would do its second register's multiply-adds for nothing.
             * Both do the same multiply-adds per element, so C's bits do not
             * depend on which ran. */
            const fastlstm_tile_fn *panel_tiles = left <= 16 ? fastlstm_narrow_tiles : tiles;
            for (block = chunk, i0 = chunk_i0; block < last; block++, i0 += rows) {
                rows = base + (block < extra);
                if (prefetch_c)
                    fastlstm_prefetch_ahead(c + i0 * ldc + j0, ldc, rows, j0, left,
                                            panel_columns);
                if (quad)
                    fastlstm_quad_tiles[rows][n_registers](kc, a + i0 * a_rs, a_rs, a_cs,
                                                           b + j0, ldb, c + i0 * ldc + j0,
                                                           ldc, left, accumulate);
                else
                    panel_tiles[rows](kc, a + i0 * a_rs, a_rs, a_cs, b + j0, ldb,
                                      c + i0 * ldc + j0, ldc, m0, m1, accumulate);
            }
        }
    }
}

#include "own_gemm_avx2.h"

/* out[j, i] = a[i, j] for a 16 x 16 (or smaller: rows x columns) block, in
 * registers: four rounds of shuffles (32-bit, 64-bit, then two of 128-bit
 * lanes) leave column c of the block in register c. */
__attribute__((target("avx512f")))
static void fastlstm_transpose_block(ptrdiff_t rows, ptrdiff_t columns, const float *a,
                                     ptrdiff_t lda, float *out, ptrdiff_t ldo)
{
    __m512 r[16], t[16];
    const __mmask16 column_mask = fastlstm_mask(columns), row_mask = fastlstm_mask(rows);
    int i, j;
    for (i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(column_mask, a + i * lda)
                        : _mm512_setzero_ps();
    for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (i = 0; i < 4; i++) {
        const __m512d t0 = _mm512_castps_pd(t[4 * i]), t1 = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d t2 = _mm512_castps_pd(t[4 * i + 2]), t3 = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    /* Register 4i + c now holds, in 128-bit lane L, column 4L + c of rows
     * 4i to 4i + 3. */
    for (i = 0; i < 2; i++)
        for (j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
        }
    for (j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
    for (j = 0; j < columns; j++)
        _mm512_mask_storeu_ps(out + j * ldo, row_mask, r[j]);
}

#endif  /* FASTLSTM_HAVE_SIMD_CODE */

/* out = a^T for an m x n row-major a (rows lda apart) into an n x m
 * row-major out (rows ldo apart): how the forward kernels turn W and R
 * into the row-contiguous B operands of their products. A plain loop (or
 * NumPy's copy of a transposed view) reads one column at a time, 13 us for
 * a W1 direction's W and R; 16 x 16 (AVX-512) or 8 x 8 (AVX2) blocks in
 * registers take a few. Returns 0 when done, 1 where the CPU does not
 * support isa (the caller then copies). */
static int fastlstm_transpose_isa(int isa, ptrdiff_t m, ptrdiff_t n, const float *a,
                                  ptrdiff_t lda, float *out, ptrdiff_t ldo)
{
#if FASTLSTM_HAVE_SIMD_CODE
    ptrdiff_t i0, j0;
    if (isa > fastlstm_gemm_cpu_supported())
        return 1;
    if (isa == FASTLSTM_ISA_AVX512) {
        for (i0 = 0; i0 < m; i0 += 16)
            for (j0 = 0; j0 < n; j0 += 16)
                fastlstm_transpose_block(m - i0 < 16 ? m - i0 : 16, n - j0 < 16 ? n - j0 : 16,
                                         a + i0 * lda + j0, lda, out + j0 * ldo + i0, ldo);
        return 0;
    }
    if (isa == FASTLSTM_ISA_AVX2) {
        for (i0 = 0; i0 < m; i0 += 8)
            for (j0 = 0; j0 < n; j0 += 8)
                fastlstm_avx2_transpose_block(m - i0 < 8 ? m - i0 : 8, n - j0 < 8 ? n - j0 : 8,
                                              a + i0 * lda + j0, lda, out + j0 * ldo + i0,
                                              ldo);
        return 0;
    }
    return 1;
#else
    (void)isa; (void)m; (void)n; (void)a; (void)lda; (void)out; (void)ldo;
    return 1;
#endif
}

/* The same with the best instruction set of the CPU (not the GEMM's switch:
 * the transposes are exact whichever runs them). */
static int fastlstm_transpose(ptrdiff_t m, ptrdiff_t n, const float *a, ptrdiff_t lda,
                              float *out, ptrdiff_t ldo)
{
    return fastlstm_transpose_isa(fastlstm_gemm_cpu_supported(), m, n, a, lda, out, ldo);
}

/* A product with A transposed (dR = dG^T Hprev, dW = dG^T X) and a narrow
 * C whose width is not a multiple of the panel width (32 columns with
 * AVX-512, 16 with AVX2: hidden 100, a dozen input features) wastes lanes
 * on its last panel of columns, for every one of its many rows: W1's
 * 400 x 100 and 400 x 12 weight gradients run at 60-90 % of the speed of
 * the swapped product C^T = B^T A^T (100 x 400, 12 x 400: wide rows, A^T's
 * rows contiguous), transposed into C after. Each element is
 * the same sum in the same order either way (p ascending, the same blocks
 * of KC), so C's bits do not change. Measured, with the transpose: 1.10x
 * (400 x 100, k 540), 1.48x (400 x 12), 1.07-1.10x (256 x 28), 1.15x
 * (400 x 50); 0.92x at 256 x 64 and 0.36x at 1024 x 32 (multiples of 32),
 * which keep the direct product. With AVX2 (Zen 3): 1.09-1.13x (400 x 100),
 * 1.06-1.09x (256 x 28). C^T goes to a buffer kept per thread,
 * grown as needed, as BLAS keeps its packing buffers. */
#if FASTLSTM_HAVE_SIMD_CODE
#define FASTLSTM_SWAP_MAX_COLUMNS 128
#define FASTLSTM_SWAP_MIN_ROWS 128
#define FASTLSTM_SWAP_MAX_FLOATS ((ptrdiff_t)1 << 22)

static float *fastlstm_swap_scratch(ptrdiff_t n_floats)
{
    static __thread float *buffer = NULL;
    static __thread ptrdiff_t capacity = 0;
    if (n_floats > capacity) {
        float *grown = (float *)realloc(buffer, (size_t)n_floats * sizeof(float));
        if (grown == NULL)
            return NULL;
        buffer = grown;
        capacity = n_floats;
    }
    return buffer;
}

static int fastlstm_swap_pays(ptrdiff_t m, ptrdiff_t n, ptrdiff_t a_row_stride,
                              ptrdiff_t a_col_stride, int accumulate, ptrdiff_t panel_columns)
{
    return a_row_stride == 1 && a_col_stride != 1 && !accumulate
        && n < FASTLSTM_SWAP_MAX_COLUMNS && n % panel_columns != 0
        && m >= FASTLSTM_SWAP_MIN_ROWS
        && m * n <= FASTLSTM_SWAP_MAX_FLOATS;
}
#endif

/* A product with nothing to multiply (m, n or k empty): C is left alone,
 * or zeroed when k is empty and not accumulating. Returns 1 when it was
 * such a product (done), 0 otherwise. */
#if FASTLSTM_HAVE_SIMD_CODE
static int fastlstm_empty_product(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int accumulate,
                                  float *c, ptrdiff_t ldc)
{
    ptrdiff_t i, j;
    if (m <= 0 || n <= 0)
        return 1;
    if (k > 0)
        return 0;
    if (!accumulate)
        for (i = 0; i < m; i++)
            for (j = 0; j < n; j++)
                c[i * ldc + j] = 0.0f;
    return 1;
}
#endif

/* See the top of this file. Returns 0 when C was computed, 1 when the
 * caller must use BLAS. */
static int fastlstm_sgemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                          const float *a, ptrdiff_t a_row_stride, ptrdiff_t a_col_stride,
                          const float *b, ptrdiff_t ldb, int accumulate,
                          float *c, ptrdiff_t ldc)
{
#if FASTLSTM_HAVE_SIMD_CODE
    ptrdiff_t p0, kc;
    const int isa = fastlstm_gemm_enabled();
    if (isa == FASTLSTM_ISA_NONE)
        return 1;
    if (fastlstm_empty_product(m, n, k, accumulate, c, ldc))
        return 0;
    if (fastlstm_swap_pays(m, n, a_row_stride, a_col_stride, accumulate,
                           isa == FASTLSTM_ISA_AVX512 ? 32 : 16)) {
        float *c_t = fastlstm_swap_scratch(m * n);
        if (c_t != NULL) {
            /* C^T = B^T A^T: B^T is B read transposed, A^T has rows a_col_stride apart. */
            fastlstm_sgemm(n, m, k, b, 1, ldb, a, a_col_stride, 0, c_t, m);
            fastlstm_transpose(n, m, c_t, m, c, ldc);
            return 0;
        }
    }
    for (p0 = 0; p0 < k; p0 += kc) {
        kc = fastlstm_block_depth(k - p0);
        if (isa == FASTLSTM_ISA_AVX512)
            fastlstm_gemm_block(m, n, kc, a + p0 * a_col_stride, a_row_stride, a_col_stride,
                                b + p0 * ldb, ldb, c, ldc, accumulate || p0 > 0);
        else
            fastlstm_avx2_gemm_block(m, n, kc, a + p0 * a_col_stride, a_row_stride,
                                     a_col_stride, b + p0 * ldb, ldb, NULL, c, ldc,
                                     accumulate || p0 > 0);
    }
    return 0;
#else
    (void)m; (void)n; (void)k; (void)a; (void)a_row_stride; (void)a_col_stride;
    (void)b; (void)ldb; (void)accumulate; (void)c; (void)ldc;
    return 1;
#endif
}

/* Whether fastlstm_pack_b packs (1) or refuses (0): a switch for tests and
 * benchmarks, which compare the kernels with and without packing. */
static int fastlstm_packing_state = 1;

static void fastlstm_set_packing(int enabled)
{
    fastlstm_packing_state = enabled != 0;
}

/* Pack B (k x n; with transposed, b holds B^T, n x k) into out (k * n
 * floats) for fastlstm_sgemm_packed: see "Products with a packed B" in
 * own_gemm_avx2.h. Returns 0 when packed, and 1, leaving out untouched,
 * where the products do not run on the AVX2 tiles (BLAS, or AVX-512,
 * whose tiles read B in place) or packing is switched off: the caller then
 * keeps B as it is and calls fastlstm_sgemm. */
static int fastlstm_pack_b(ptrdiff_t k, ptrdiff_t n, const float *b, ptrdiff_t ldb,
                           int transposed, float *out)
{
#if FASTLSTM_HAVE_SIMD_CODE
    if (!fastlstm_packing_state || fastlstm_gemm_enabled() != FASTLSTM_ISA_AVX2)
        return 1;
    fastlstm_avx2_pack_b(k, n, b, ldb, transposed, out);
    return 0;
#else
    (void)k; (void)n; (void)b; (void)ldb; (void)transposed; (void)out;
    return 1;
#endif
}

/* C = [C +] A B, B packed by fastlstm_pack_b; every element the same bits
 * as fastlstm_sgemm's. Runs the AVX2 tiles whatever the switch says since
 * the packing (the layout is theirs); returns 1 only where the CPU has no
 * AVX2, which fastlstm_pack_b has then refused. */
static int fastlstm_sgemm_packed(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                 const float *a, ptrdiff_t a_row_stride,
                                 ptrdiff_t a_col_stride, const float *packed_b,
                                 int accumulate, float *c, ptrdiff_t ldc)
{
#if FASTLSTM_HAVE_SIMD_CODE
    ptrdiff_t p0, kc;
    if (fastlstm_gemm_cpu_supported() < FASTLSTM_ISA_AVX2)
        return 1;
    if (fastlstm_empty_product(m, n, k, accumulate, c, ldc))
        return 0;
    for (p0 = 0; p0 < k; p0 += kc) {
        kc = fastlstm_block_depth(k - p0);
        fastlstm_avx2_gemm_block(m, n, kc, a + p0 * a_col_stride, a_row_stride, a_col_stride,
                                 NULL, 0, packed_b + p0 * n, c, ldc, accumulate || p0 > 0);
    }
    return 0;
#else
    (void)m; (void)n; (void)k; (void)a; (void)a_row_stride; (void)a_col_stride;
    (void)packed_b; (void)accumulate; (void)c; (void)ldc;
    return 1;
#endif
}

/* The same with the array addresses as integers, for numba, which passes
 * ``array.ctypes.data``. */
static int fastlstm_sgemm_addresses(int64_t m, int64_t n, int64_t k, uintptr_t a,
                                    int64_t a_row_stride, int64_t a_col_stride,
                                    uintptr_t b, int64_t ldb, int64_t accumulate,
                                    uintptr_t c, int64_t ldc)
{
    return fastlstm_sgemm((ptrdiff_t)m, (ptrdiff_t)n, (ptrdiff_t)k, (const float *)a,
                          (ptrdiff_t)a_row_stride, (ptrdiff_t)a_col_stride,
                          (const float *)b, (ptrdiff_t)ldb, (int)accumulate,
                          (float *)c, (ptrdiff_t)ldc);
}

static int fastlstm_pack_b_addresses(int64_t k, int64_t n, uintptr_t b, int64_t ldb,
                                     int64_t transposed, uintptr_t out)
{
    return fastlstm_pack_b((ptrdiff_t)k, (ptrdiff_t)n, (const float *)b, (ptrdiff_t)ldb,
                           (int)transposed, (float *)out);
}

static int fastlstm_sgemm_packed_addresses(int64_t m, int64_t n, int64_t k, uintptr_t a,
                                           int64_t a_row_stride, int64_t a_col_stride,
                                           uintptr_t packed_b, int64_t accumulate,
                                           uintptr_t c, int64_t ldc)
{
    return fastlstm_sgemm_packed((ptrdiff_t)m, (ptrdiff_t)n, (ptrdiff_t)k, (const float *)a,
                                 (ptrdiff_t)a_row_stride, (ptrdiff_t)a_col_stride,
                                 (const float *)packed_b, (int)accumulate, (float *)c,
                                 (ptrdiff_t)ldc);
}

static int fastlstm_transpose_addresses(int64_t m, int64_t n, uintptr_t a, int64_t lda,
                                        uintptr_t out, int64_t ldo)
{
    return fastlstm_transpose((ptrdiff_t)m, (ptrdiff_t)n, (const float *)a, (ptrdiff_t)lda,
                              (float *)out, (ptrdiff_t)ldo);
}

#endif  /* FASTLSTM_OWN_GEMM_H */
