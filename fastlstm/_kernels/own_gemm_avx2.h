/* The AVX2 + FMA tiles of fastlstm's own GEMM, for x86-64 CPUs without
 * AVX-512 (AMD Zen 1-3, most Intel desktop and laptop parts). Included by
 * own_gemm.h, which chooses between these and the AVX-512 tiles once per
 * process; the blocking (KC steps of p, chunks of rows) is the caller's.
 *
 * Why: without AVX-512 every float32 product used to go to BLAS, and on the
 * small products of an LSTM step BLAS pays its packing and dispatch on every
 * call: OpenBLAS's Haswell kernels ran a W1 step's 27 x 100 by 100 x 400 at
 * about 41 GFLOP/s on a 2.45 GHz AMD EPYC (Zen 3), whose core peaks near 78.
 *
 * A tile holds MR rows by NV registers of 8 floats of C in registers while
 * the sum over p runs: per p it loads NV registers of one row of B and, per
 * row, broadcasts one element of A for NV fused multiply-adds. AVX2 has 16
 * registers, so MR * NV stays at most 12: 6 x 2 for most products (12
 * accumulators, 2 B registers, 1 broadcast), 12 x 1 for products at most 8
 * columns wide, and 1 x 8, 2 x 4 or 3 x 4 for products of one to three rows
 * (a streaming step, the last active sequences of a step), which need
 * independent accumulators to keep the multiply-adds in flight. Tiles of a
 * last panel narrower than the tile load and store under a lane mask.
 *
 * Each C[i, j] is summed exactly as the AVX-512 tiles sum it: from zero, p
 * ascending, one fused multiply-add per p, then added to C. Within a block of
 * KC steps the bits of C therefore do not depend on the tile shape, the row
 * blocking or which of the two instruction sets ran.
 */
#ifndef FASTLSTM_OWN_GEMM_AVX2_H
#define FASTLSTM_OWN_GEMM_AVX2_H

#define FASTLSTM_AVX2_MR_MAX 6
#define FASTLSTM_AVX2_NARROW_MR_MAX 12
#define FASTLSTM_AVX2_SKINNY_ROWS 3
#define FASTLSTM_AVX2_SKINNY_NV_MAX 8
/* Rows of A kept in L2 across the panels of B: 37 blocks of 6 rows (222
 * rows, 222 kB of A at KC = 256; Zen 3 has 512 kB of L2 per core). */
#define FASTLSTM_AVX2_CHUNK_ROWS 224
/* A chunk of at least this many row blocks reads each panel of B from a
 * packed copy (see fastlstm_avx2_packed_panel). */
#define FASTLSTM_AVX2_PACK_MIN_BLOCKS 6
/* ... and, where A is transposed and C has at least this many columns, the
 * rows of A (see fastlstm_avx2_packed_rows). */
#define FASTLSTM_AVX2_PACK_A_MIN_COLUMNS 128

/* All ones in the first n_columns (clamped to 0-8) lanes. */
__attribute__((target("avx2,fma")))
static inline __m256i fastlstm_avx2_mask(ptrdiff_t n_columns)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int count = n_columns <= 0 ? 0 : n_columns >= 8 ? 8 : (int)n_columns;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lanes);
}

/* C[0:MR, 0:n_columns] = [C +] A B over k steps of p. MASKED tiles are for
 * a panel narrower than 8 * NV columns (n_columns says how wide); unmasked
 * ones read and write all 8 * NV columns. MR, NV and MASKED are constants,
 * so each instance compiles to straight-line register code. */
#define FASTLSTM_DEFINE_AVX2_TILE(MR, NV, MASKED)                                   \
__attribute__((target("avx2,fma")))                                                 \
static void fastlstm_avx2_tile_##MR##_##NV##_##MASKED(                              \
    ptrdiff_t k, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs, const float *b,     \
    ptrdiff_t ldb, float *c, ptrdiff_t ldc, ptrdiff_t n_columns, int accumulate)    \
{                                                                                   \
    __m256 acc[MR][NV];                                                             \
    __m256i mask[NV];                                                               \
    _Pragma("GCC unroll 12")                                                        \
    for (int v = 0; v < NV; v++) {                                                  \
        mask[v] = fastlstm_avx2_mask(n_columns - 8 * v);                            \
        _Pragma("GCC unroll 12")                                                    \
        for (int i = 0; i < MR; i++)                                                \
            acc[i][v] = _mm256_setzero_ps();                                        \
    }                                                                               \
    for (ptrdiff_t p = 0; p < k; p++) {                                             \
        const float *a_p = a + p * a_cs;                                            \
        const float *b_p = b + p * ldb;                                             \
        __m256 b_v[NV];                                                             \
        _Pragma("GCC unroll 12")                                                    \
        for (int v = 0; v < NV; v++)                                                \
            b_v[v] = MASKED ? _mm256_maskload_ps(b_p + 8 * v, mask[v])              \
                            : _mm256_loadu_ps(b_p + 8 * v);                         \
        _Pragma("GCC unroll 12")                                                    \
        for (int i = 0; i < MR; i++) {                                              \
            const __m256 a_ip = _mm256_broadcast_ss(a_p + i * a_rs);                \
            _Pragma("GCC unroll 12")                                                \
            for (int v = 0; v < NV; v++)                                            \
                acc[i][v] = _mm256_fmadd_ps(a_ip, b_v[v], acc[i][v]);               \
        }                                                                           \
    }                                                                               \
    _Pragma("GCC unroll 12")                                                        \
    for (int i = 0; i < MR; i++) {                                                  \
        float *c_i = c + i * ldc;                                                   \
        _Pragma("GCC unroll 12")                                                    \
        for (int v = 0; v < NV; v++) {                                              \
            __m256 value = acc[i][v];                                               \
            if (accumulate)                                                         \
                value = _mm256_add_ps(MASKED ? _mm256_maskload_ps(c_i + 8 * v, mask[v]) \
                                             : _mm256_loadu_ps(c_i + 8 * v),        \
                                      value);                                       \
            if (MASKED)                                                             \
                _mm256_maskstore_ps(c_i + 8 * v, mask[v], value);                   \
            else                                                                    \
                _mm256_storeu_ps(c_i + 8 * v, value);                               \
        }                                                                           \
    }                                                                               \
}
#define FASTLSTM_AVX2_TILE_PAIR(MR, NV) \
    FASTLSTM_DEFINE_AVX2_TILE(MR, NV, 0) FASTLSTM_DEFINE_AVX2_TILE(MR, NV, 1)

/* One register of columns: up to 12 rows. */
FASTLSTM_AVX2_TILE_PAIR(1, 1)  FASTLSTM_AVX2_TILE_PAIR(2, 1)  FASTLSTM_AVX2_TILE_PAIR(3, 1)
FASTLSTM_AVX2_TILE_PAIR(4, 1)  FASTLSTM_AVX2_TILE_PAIR(5, 1)  FASTLSTM_AVX2_TILE_PAIR(6, 1)
FASTLSTM_AVX2_TILE_PAIR(7, 1)  FASTLSTM_AVX2_TILE_PAIR(8, 1)  FASTLSTM_AVX2_TILE_PAIR(9, 1)
FASTLSTM_AVX2_TILE_PAIR(10, 1) FASTLSTM_AVX2_TILE_PAIR(11, 1) FASTLSTM_AVX2_TILE_PAIR(12, 1)
/* Two registers: up to 6 rows. */
FASTLSTM_AVX2_TILE_PAIR(1, 2)  FASTLSTM_AVX2_TILE_PAIR(2, 2)  FASTLSTM_AVX2_TILE_PAIR(3, 2)
FASTLSTM_AVX2_TILE_PAIR(4, 2)  FASTLSTM_AVX2_TILE_PAIR(5, 2)  FASTLSTM_AVX2_TILE_PAIR(6, 2)
/* Skinny tiles of one to three rows: up to 8 registers for one row, 4 for
 * two or three. */
FASTLSTM_AVX2_TILE_PAIR(1, 3) FASTLSTM_AVX2_TILE_PAIR(1, 4) FASTLSTM_AVX2_TILE_PAIR(1, 5)
FASTLSTM_AVX2_TILE_PAIR(1, 6) FASTLSTM_AVX2_TILE_PAIR(1, 7) FASTLSTM_AVX2_TILE_PAIR(1, 8)
FASTLSTM_AVX2_TILE_PAIR(2, 3) FASTLSTM_AVX2_TILE_PAIR(2, 4)
FASTLSTM_AVX2_TILE_PAIR(3, 3) FASTLSTM_AVX2_TILE_PAIR(3, 4)

typedef void (*fastlstm_avx2_tile_fn)(ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                      const float *, ptrdiff_t, float *, ptrdiff_t,
                                      ptrdiff_t, int);

#define FASTLSTM_AVX2_PAIR(MR, NV) \
    {fastlstm_avx2_tile_##MR##_##NV##_0, fastlstm_avx2_tile_##MR##_##NV##_1}

/* [rows][unmasked, masked] */
static const fastlstm_avx2_tile_fn
fastlstm_avx2_tiles_1[FASTLSTM_AVX2_NARROW_MR_MAX + 1][2] = {
    {NULL, NULL}, FASTLSTM_AVX2_PAIR(1, 1), FASTLSTM_AVX2_PAIR(2, 1), FASTLSTM_AVX2_PAIR(3, 1),
    FASTLSTM_AVX2_PAIR(4, 1), FASTLSTM_AVX2_PAIR(5, 1), FASTLSTM_AVX2_PAIR(6, 1),
    FASTLSTM_AVX2_PAIR(7, 1), FASTLSTM_AVX2_PAIR(8, 1), FASTLSTM_AVX2_PAIR(9, 1),
    FASTLSTM_AVX2_PAIR(10, 1), FASTLSTM_AVX2_PAIR(11, 1), FASTLSTM_AVX2_PAIR(12, 1),
};

static const fastlstm_avx2_tile_fn fastlstm_avx2_tiles_2[FASTLSTM_AVX2_MR_MAX + 1][2] = {
    {NULL, NULL}, FASTLSTM_AVX2_PAIR(1, 2), FASTLSTM_AVX2_PAIR(2, 2), FASTLSTM_AVX2_PAIR(3, 2),
    FASTLSTM_AVX2_PAIR(4, 2), FASTLSTM_AVX2_PAIR(5, 2), FASTLSTM_AVX2_PAIR(6, 2),
};

/* [rows][registers][unmasked, masked]; rows of 2 and 3 stop at 4 registers. */
static const fastlstm_avx2_tile_fn
fastlstm_avx2_skinny_tiles[FASTLSTM_AVX2_SKINNY_ROWS + 1][FASTLSTM_AVX2_SKINNY_NV_MAX + 1][2] = {
    {{NULL, NULL}},
    {{NULL, NULL}, FASTLSTM_AVX2_PAIR(1, 1), FASTLSTM_AVX2_PAIR(1, 2), FASTLSTM_AVX2_PAIR(1, 3),
     FASTLSTM_AVX2_PAIR(1, 4), FASTLSTM_AVX2_PAIR(1, 5), FASTLSTM_AVX2_PAIR(1, 6),
     FASTLSTM_AVX2_PAIR(1, 7), FASTLSTM_AVX2_PAIR(1, 8)},
    {{NULL, NULL}, FASTLSTM_AVX2_PAIR(2, 1), FASTLSTM_AVX2_PAIR(2, 2), FASTLSTM_AVX2_PAIR(2, 3),
     FASTLSTM_AVX2_PAIR(2, 4)},
    {{NULL, NULL}, FASTLSTM_AVX2_PAIR(3, 1), FASTLSTM_AVX2_PAIR(3, 2), FASTLSTM_AVX2_PAIR(3, 3),
     FASTLSTM_AVX2_PAIR(3, 4)},
};

static const int fastlstm_avx2_skinny_nv[FASTLSTM_AVX2_SKINNY_ROWS + 1] = {0, 8, 4, 4};

/* Tiles of one to three rows over NP whole packed panels side by side
 * (panel_stride floats apart, 16 columns each; see "Products with a packed
 * B" below), for the steps where one to three sequences are still active:
 * as the skinny tiles, up to 8 registers per row (4 for two or three rows)
 * keep the multiply-adds independent. */
#define FASTLSTM_DEFINE_AVX2_PANELS_TILE(MR, NP)                                    \
__attribute__((target("avx2,fma")))                                                 \
static void fastlstm_avx2_panels_tile_##MR##_##NP(                                  \
    ptrdiff_t k, const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs, const float *b,     \
    ptrdiff_t panel_stride, float *c, ptrdiff_t ldc, int accumulate)                \
{                                                                                   \
    __m256 acc[MR][2 * NP];                                                         \
    _Pragma("GCC unroll 8")                                                         \
    for (int i = 0; i < MR; i++) {                                                  \
        _Pragma("GCC unroll 8")                                                     \
        for (int v = 0; v < 2 * NP; v++)                                            \
            acc[i][v] = _mm256_setzero_ps();                                        \
    }                                                                               \
    for (ptrdiff_t p = 0; p < k; p++) {                                             \
        const float *a_p = a + p * a_cs;                                            \
        __m256 b_v[2 * NP];                                                         \
        _Pragma("GCC unroll 8")                                                     \
        for (int v = 0; v < 2 * NP; v++)                                            \
            b_v[v] = _mm256_loadu_ps(b + (v / 2) * panel_stride + 16 * p + 8 * (v % 2)); \
        _Pragma("GCC unroll 8")                                                     \
        for (int i = 0; i < MR; i++) {                                              \
            const __m256 a_ip = _mm256_broadcast_ss(a_p + i * a_rs);                \
            _Pragma("GCC unroll 8")                                                 \
            for (int v = 0; v < 2 * NP; v++)                                        \
                acc[i][v] = _mm256_fmadd_ps(a_ip, b_v[v], acc[i][v]);               \
        }                                                                           \
    }                                                                               \
    _Pragma("GCC unroll 8")                                                         \
    for (int i = 0; i < MR; i++) {                                                  \
        float *c_i = c + i * ldc;                                                   \
        _Pragma("GCC unroll 8")                                                     \
        for (int v = 0; v < 2 * NP; v++) {                                          \
            __m256 value = acc[i][v];                                               \
            if (accumulate)                                                         \
                value = _mm256_add_ps(_mm256_loadu_ps(c_i + 8 * v), value);         \
            _mm256_storeu_ps(c_i + 8 * v, value);                                   \
        }                                                                           \
    }                                                                               \
}

FASTLSTM_DEFINE_AVX2_PANELS_TILE(1, 1) FASTLSTM_DEFINE_AVX2_PANELS_TILE(1, 2)
FASTLSTM_DEFINE_AVX2_PANELS_TILE(1, 3) FASTLSTM_DEFINE_AVX2_PANELS_TILE(1, 4)
FASTLSTM_DEFINE_AVX2_PANELS_TILE(2, 1) FASTLSTM_DEFINE_AVX2_PANELS_TILE(2, 2)
FASTLSTM_DEFINE_AVX2_PANELS_TILE(3, 1) FASTLSTM_DEFINE_AVX2_PANELS_TILE(3, 2)

typedef void (*fastlstm_avx2_panels_tile_fn)(ptrdiff_t, const float *, ptrdiff_t, ptrdiff_t,
                                             const float *, ptrdiff_t, float *, ptrdiff_t, int);

/* [rows][panels]; rows of 2 and 3 stop at 2 panels (4 registers). */
static const fastlstm_avx2_panels_tile_fn
fastlstm_avx2_panels_tiles[FASTLSTM_AVX2_SKINNY_ROWS + 1][5] = {
    {NULL},
    {NULL, fastlstm_avx2_panels_tile_1_1, fastlstm_avx2_panels_tile_1_2,
     fastlstm_avx2_panels_tile_1_3, fastlstm_avx2_panels_tile_1_4},
    {NULL, fastlstm_avx2_panels_tile_2_1, fastlstm_avx2_panels_tile_2_2},
    {NULL, fastlstm_avx2_panels_tile_3_1, fastlstm_avx2_panels_tile_3_2},
};

/* A copy of a full panel of B (kc rows of 16 floats, rows ldb apart) with
 * its rows contiguous, in a buffer kept per thread; NULL if it cannot be
 * allocated (the caller then reads B in place). Why: with 4H = 1024
 * columns, B's rows are 4 kB apart, so the 256 rows of a panel fall into
 * the same few sets of the 8-way L1 and evict each other, and the panel
 * does not stay in L1 across the tiles of a chunk. Measured on Zen 3:
 * 128 x 1024 x 256 56 -> 80 GFLOP/s, 3200 x 1024 x 256 50 -> 80, a W3
 * step's 32 x 1024 x 256 53 -> 60; a chunk of fewer row blocks (W1's 27
 * rows are 5) loses more to the copy than it gains (94 -> 87). Packing
 * moves floats, so C's bits do not change. */
__attribute__((target("avx2,fma")))
static float *fastlstm_avx2_packed_panel(ptrdiff_t kc, const float *b, ptrdiff_t ldb)
{
    static __thread float *buffer = NULL;
    static __thread ptrdiff_t capacity = 0;
    ptrdiff_t p;
    if (16 * kc > capacity) {
        float *grown = (float *)realloc(buffer, (size_t)(16 * kc) * sizeof(float));
        if (grown == NULL)
            return NULL;
        buffer = grown;
        capacity = 16 * kc;
    }
    for (p = 0; p < kc; p++) {
        _mm256_storeu_ps(buffer + 16 * p, _mm256_loadu_ps(b + p * ldb));
        _mm256_storeu_ps(buffer + 16 * p + 8, _mm256_loadu_ps(b + p * ldb + 8));
    }
    return buffer;
}

/* The rows of A of a chunk's row blocks first to last (block b has base + (b
 * < extra) rows) for kc steps of p, copied block after block, each block
 * p-major (its rows' values for one p side by side), into a buffer kept per
 * thread; NULL if it cannot be allocated (the caller then reads A in
 * place). For a transposed A (weight gradients dG^T Hprev, dG^T X: a row of
 * A is a column of dG, a_cs = 4H apart) a tile reads, per p, a few floats
 * 4H floats past the previous ones: with 4H = 1024 the kc steps of a tile
 * fall into the same few L1 sets, as B's rows do (see
 * fastlstm_avx2_packed_panel). Packed, a tile reads its A contiguously,
 * and the copy serves every panel of the chunk: 1024 x 256 products with k
 * = 3200 and 12800 ran 72 -> 82 and 63 -> 71 GFLOP/s; with 64 columns (4
 * panels) the copy cost more than it saved (73 -> 64). Same bits. */
static float *fastlstm_avx2_packed_rows(ptrdiff_t first, ptrdiff_t last, ptrdiff_t base,
                                        ptrdiff_t extra, ptrdiff_t kc, const float *a,
                                        ptrdiff_t a_rs, ptrdiff_t a_cs)
{
    static __thread float *buffer = NULL;
    static __thread ptrdiff_t capacity = 0;
    ptrdiff_t block, i, p, rows, done = 0, needed = 0;
    for (block = first; block < last; block++)
        needed += (base + (block < extra)) * kc;
    if (needed > capacity) {
        float *grown = (float *)realloc(buffer, (size_t)needed * sizeof(float));
        if (grown == NULL)
            return NULL;
        buffer = grown;
        capacity = needed;
    }
    for (block = first; block < last; block++, done += rows) {
        float *out = buffer + done * kc;
        const float *in = a + done * a_rs;
        rows = base + (block < extra);
        for (p = 0; p < kc; p++)
            for (i = 0; i < rows; i++)
                out[p * rows + i] = in[i * a_rs + p * a_cs];
    }
    return buffer;
}

/* One block of KC (or fewer) steps of p over the whole of C, as
 * fastlstm_gemm_block does with the AVX-512 tiles: row blocks of near-equal
 * size in chunks of about FASTLSTM_AVX2_CHUNK_ROWS rows, the panels of B
 * (16 columns, KC x 16 floats = 16 kB, in L1) walked outside the chunk's
 * row blocks. B is read at b (rows ldb apart), or, where packed_b is not
 * NULL, from this block of B packed there (see "Products with a packed B"
 * below; b and ldb are then unused). No target attribute: it would keep
 * GCC from emitting the prefetches (see fastlstm_prefetch_tile). */
static void fastlstm_avx2_gemm_block(ptrdiff_t m, ptrdiff_t n, ptrdiff_t kc,
                                     const float *a, ptrdiff_t a_rs, ptrdiff_t a_cs,
                                     const float *b, ptrdiff_t ldb, const float *packed_b,
                                     float *c, ptrdiff_t ldc, int accumulate)
{
    const int narrow = n <= 8;
    const ptrdiff_t mr_max = narrow ? FASTLSTM_AVX2_NARROW_MR_MAX : FASTLSTM_AVX2_MR_MAX;
    const ptrdiff_t panel_columns = narrow ? 8 : 16;
    const ptrdiff_t n_row_blocks = (m + mr_max - 1) / mr_max;
    const ptrdiff_t base = m / n_row_blocks, extra = m % n_row_blocks;
    const ptrdiff_t chunk_blocks = FASTLSTM_AVX2_CHUNK_ROWS / mr_max;
    const int prefetch_c = accumulate && m * n >= FASTLSTM_PREFETCH_MIN_FLOATS;
    ptrdiff_t chunk, block, i0, j0, rows;
    if (m <= FASTLSTM_AVX2_SKINNY_ROWS && !narrow && packed_b != NULL) {
        /* Whole packed panels side by side, then the last, narrower one. */
        const ptrdiff_t whole_panels = n / 16, panel_stride = 16 * kc;
        const ptrdiff_t np_max = m == 1 ? 4 : 2;
        ptrdiff_t q;
        for (q = 0; q < whole_panels; q += np_max) {
            const ptrdiff_t np = whole_panels - q < np_max ? whole_panels - q : np_max;
            fastlstm_avx2_panels_tiles[m][np](kc, a, a_rs, a_cs, packed_b + q * panel_stride,
                                              panel_stride, c + 16 * q, ldc, accumulate);
        }
        if (n > 16 * whole_panels) {
            const ptrdiff_t w = n - 16 * whole_panels;
            fastlstm_avx2_skinny_tiles[m][(w + 7) / 8][1](
                kc, a, a_rs, a_cs, packed_b + whole_panels * panel_stride, w,
                c + 16 * whole_panels, ldc, w, accumulate);
        }
        return;
    }
    if (m <= FASTLSTM_AVX2_SKINNY_ROWS && !narrow) {
        const ptrdiff_t nv_max = fastlstm_avx2_skinny_nv[m];
        for (j0 = 0; j0 < n; j0 += 8 * nv_max) {
            const ptrdiff_t left = n - j0;
            const ptrdiff_t nv = left >= 8 * nv_max ? nv_max : (left + 7) / 8;
            fastlstm_avx2_skinny_tiles[m][nv][left < 8 * nv](kc, a, a_rs, a_cs, b + j0, ldb,
                                                             c + j0, ldc, left, accumulate);
        }
        return;
    }
    for (chunk = 0; chunk < n_row_blocks; chunk += chunk_blocks) {
        /* Blocks before this chunk's first: min(chunk, extra) of them have a
         * row more than base. */
        const ptrdiff_t chunk_i0 = chunk * base + (chunk < extra ? chunk : extra);
        const ptrdiff_t last = chunk + chunk_blocks < n_row_blocks ? chunk + chunk_blocks
                                                                   : n_row_blocks;
        const float *packed_a = NULL;
        if (a_cs != 1 && n >= FASTLSTM_AVX2_PACK_A_MIN_COLUMNS
            && last - chunk >= FASTLSTM_AVX2_PACK_MIN_BLOCKS)
            packed_a = fastlstm_avx2_packed_rows(chunk, last, base, extra, kc,
                                                 a + chunk_i0 * a_rs, a_rs, a_cs);
        for (j0 = 0; j0 < n; j0 += panel_columns) {
            const ptrdiff_t left = n - j0;
            /* A last panel of at most 8 columns takes one-register tiles,
             * which do not do a second register's multiply-adds for nothing. */
            const int one_register = left <= 8;
            const int masked = left < (one_register ? 8 : 16);
            const float *panel = b + j0;
            ptrdiff_t ld_panel = ldb;
            /* Packed once by the caller; else copied per chunk, only full
             * two-register panels: a one-register panel's tiles read B in
             * place, and a copy of 16 columns would read past the end of
             * B's rows. */
            if (packed_b != NULL) {
                panel = packed_b + j0 * kc;
                ld_panel = left < 16 ? left : 16;
            } else if (!one_register && !masked
                       && last - chunk >= FASTLSTM_AVX2_PACK_MIN_BLOCKS) {
                float *packed = fastlstm_avx2_packed_panel(kc, b + j0, ldb);
                if (packed != NULL) {
                    panel = packed;
                    ld_panel = 16;
                }
            }
            for (block = chunk, i0 = chunk_i0; block < last; block++, i0 += rows) {
                rows = base + (block < extra);
                if (prefetch_c)
                    fastlstm_prefetch_ahead(c + i0 * ldc + j0, ldc, rows, j0, left,
                                            panel_columns);
                /* A packed block of rows x kc is p-major: rows 1 apart, p
                 * steps rows apart. */
                const float *a_tile = packed_a ? packed_a + (i0 - chunk_i0) * kc
                                               : a + i0 * a_rs;
                const ptrdiff_t tile_rs = packed_a ? 1 : a_rs, tile_cs = packed_a ? rows : a_cs;
                if (one_register)
                    fastlstm_avx2_tiles_1[rows][masked](kc, a_tile, tile_rs, tile_cs,
                                                        panel, ld_panel, c + i0 * ldc + j0,
                                                        ldc, left, accumulate);
                else
                    fastlstm_avx2_tiles_2[rows][masked](kc, a_tile, tile_rs, tile_cs,
                                                        panel, ld_panel, c + i0 * ldc + j0, ldc,
                                                        left, accumulate);
            }
        }
    }
}

/* out[j, i] = a[i, j] for an 8 x 8 block in registers (three rounds of
 * shuffles: 32-bit, 64-bit, then 128-bit lanes); a smaller edge block
 * (rows x columns) element by element. */
__attribute__((target("avx2,fma")))
static void fastlstm_avx2_transpose_block(ptrdiff_t rows, ptrdiff_t columns, const float *a,
                                          ptrdiff_t lda, float *out, ptrdiff_t ldo)
{
    __m256 r[8], t[8];
    ptrdiff_t i, j;
    if (rows < 8 || columns < 8) {
        for (j = 0; j < columns; j++)
            for (i = 0; i < rows; i++)
                out[j * ldo + i] = a[i * lda + j];
        return;
    }
    for (i = 0; i < 8; i++)
        r[i] = _mm256_loadu_ps(a + i * lda);
    for (i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* t[2i] holds, per 128-bit lane L, a[2i][4L], a[2i+1][4L], a[2i][4L+1],
     * a[2i+1][4L+1]; t[2i+1] the same for columns 4L+2 and 4L+3. */
    for (i = 0; i < 2; i++) {
        r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    /* r[4i + c] now holds, in lane L, column 4L + c of rows 4i to 4i + 3. */
    for (j = 0; j < 4; j++) {
        _mm256_storeu_ps(out + j * ldo, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
        _mm256_storeu_ps(out + (j + 4) * ldo, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
    }
}

/* -- Products with a packed B ---------------------------------------------
 *
 * The recurrent product of every step (h R^T forward, dG R backward)
 * multiplies by the same B at every step of a sequence. In place, the rows
 * of a 16-column panel of B are ldb floats apart (4 kB for W3's R^T, 4H =
 * 1024), each in a page of its own, where the hardware prefetchers do not
 * follow: every step's panel copy (fastlstm_avx2_packed_panel) waits on
 * its rows, and chunks of fewer than 6 row blocks (W1's 27 rows) read B in
 * place. Packed once per kernel call into the layout below, every step
 * reads B from start to end. Measured on Zen 3 (medians of 21 alternated
 * rounds of 100 steps): W3's 64 x 256 by 256 x 1024, 80 -> 91 GFLOP/s;
 * W3's backward 64 x 1024 by 1024 x 256, 65 -> 70; W2's 64 x 64 by 64 x
 * 256, 67 -> 72. fastlstm_avx2_gemm_block walks a packed B as it walks
 * one in place, with the same tiles (and, for one to three rows, the
 * panel tiles above it): the order of every sum, and so C's bits, do not
 * change.
 *
 * Layout of a packed k x n B: its blocks of p as fastlstm_sgemm cuts them
 * (fastlstm_block_depth), in order; within the block of kc steps starting
 * at p0, its panels of 16 columns in order, the last one as wide as the
 * columns left (w); each panel kc rows of w floats, one after the other.
 * So the panel of columns j0 to j0 + w of the block at p0 starts at
 * p0 * n + j0 * kc, and the whole takes k * n floats. */

/* Copy B (k x n) into out in the packed layout. With transposed, b holds
 * B^T (n x k, rows ldb apart: the forward kernel's R, whose transpose is
 * the B of h R^T), turned in 8 x 8 register blocks; else B (k x n, rows
 * ldb apart). */
static void fastlstm_avx2_pack_b(ptrdiff_t k, ptrdiff_t n, const float *b, ptrdiff_t ldb,
                                 int transposed, float *out)
{
    ptrdiff_t p0, kc, j0, p, j, w;
    for (p0 = 0; p0 < k; p0 += kc) {
        kc = fastlstm_block_depth(k - p0);
        for (j0 = 0; j0 < n; j0 += 16) {
            float *panel = out + p0 * n + j0 * kc;
            w = n - j0 < 16 ? n - j0 : 16;
            if (transposed) {
                for (j = 0; j < w; j += 8)
                    for (p = 0; p < kc; p += 8)
                        fastlstm_avx2_transpose_block(w - j < 8 ? w - j : 8,
                                                      kc - p < 8 ? kc - p : 8,
                                                      b + (j0 + j) * ldb + p0 + p, ldb,
                                                      panel + p * w + j, w);
            } else {
                for (p = 0; p < kc; p++)
                    for (j = 0; j < w; j++)
                        panel[p * w + j] = b[(p0 + p) * ldb + j0 + j];
            }
        }
    }
}

#endif  /* FASTLSTM_OWN_GEMM_AVX2_H */
