/* The loops of _optim_kernels.pyx, in C so that the compiler can build them
 * twice: for the baseline x86-64 (SSE2) that a portable build targets, and
 * for AVX2 (and AVX-512), picked once at load time on the running CPU
 * (gcc's target_clones, on glibc). The clones run the same IEEE operations
 * in the same order (no contraction: the file is compiled with
 * -ffp-contract=off), so every clone gives bit for bit the NumPy reference;
 * the wider ones only do 8 or 16 elements per instruction instead of 4.
 * Elsewhere (other compilers or C libraries) the baseline build is used.
 */
#ifndef FASTLSTM_OPTIM_LOOPS_H
#define FASTLSTM_OPTIM_LOOPS_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>  /* defines __GLIBC__ on glibc */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define FASTLSTM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTLSTM_CLONES
#endif

/* Optionally the L2 term first, g += l2_factor p where l2_mask (then g is
 * written back, as add_l2_regularization leaves it); then
 * m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
 * p -= step_size * (m / (sqrt(v) + epsilon_hat)), all in T, as NumPy does
 * with scalars of the array's dtype. One pass instead of two: the L2 term
 * reads the same p and g that the update reads anyway. */
#define FASTLSTM_ADAM_ELEMENT(T, SQRT)                                               \
        const T m_i = m[i] * beta1 + g * one_minus_beta1;                            \
        const T v_i = v[i] * beta2 + (g * g) * one_minus_beta2;                      \
        m[i] = m_i;                                                                  \
        v[i] = v_i;                                                                  \
        const T ratio = m_i / (SQRT(v_i) + epsilon_hat);                             \
        params[i] = params[i] - ratio * step_size;

#define FASTLSTM_DEFINE_ADAM(NAME, T, SQRT)                                         \
FASTLSTM_CLONES static void NAME(ptrdiff_t n, T *params, T *grads, T *m, T *v,       \
                                 T beta1, T one_minus_beta1, T beta2,                \
                                 T one_minus_beta2, T step_size, T epsilon_hat,      \
                                 T l2_factor, const unsigned char *l2_mask)          \
{                                                                                    \
    if (l2_mask == NULL) {                                                           \
        for (ptrdiff_t i = 0; i < n; i++) {                                          \
            const T g = grads[i];                                                    \
            FASTLSTM_ADAM_ELEMENT(T, SQRT)                                           \
        }                                                                            \
        return;                                                                      \
    }                                                                                \
    for (ptrdiff_t i = 0; i < n; i++) {                                              \
        const T regularised = grads[i] + params[i] * l2_factor;                      \
        const T g = l2_mask[i] ? regularised : grads[i];                             \
        grads[i] = g;                                                                \
        FASTLSTM_ADAM_ELEMENT(T, SQRT)                                               \
    }                                                                                \
}

FASTLSTM_DEFINE_ADAM(fastlstm_adam_float, float, sqrtf)
FASTLSTM_DEFINE_ADAM(fastlstm_adam_double, double, sqrt)

/* grads += factor * params where mask. Written as a select of two computed
 * values so that it vectorises (the arithmetic on masked-out entries is
 * discarded; -fno-trapping-math lets the compiler compute it). */
#define FASTLSTM_DEFINE_MASKED_L2(NAME, T)                                           \
FASTLSTM_CLONES static void NAME(ptrdiff_t n, T *grads, const T *params, T factor,    \
                                 const unsigned char *mask)                          \
{                                                                                    \
    for (ptrdiff_t i = 0; i < n; i++) {                                              \
        const T updated = grads[i] + params[i] * factor;                             \
        grads[i] = mask[i] ? updated : grads[i];                                     \
    }                                                                                \
}

FASTLSTM_DEFINE_MASKED_L2(fastlstm_masked_l2_float, float)
FASTLSTM_DEFINE_MASKED_L2(fastlstm_masked_l2_double, double)

#endif  /* FASTLSTM_OPTIM_LOOPS_H */
