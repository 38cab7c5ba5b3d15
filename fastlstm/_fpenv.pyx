# cython: language_level=3
"""Floating-point environment of the calling thread: flush-to-zero.

Late in training, gradients and Adam's moment estimates decay into subnormal
floats, and every operation on a subnormal costs about 100 times a normal one:
a Japanese Vowels fit was measured 2-6 times slower for it. Flushing
subnormal results to zero (FTZ) and reading subnormal inputs as zero (DAZ)
removes that cliff, at no cost to accuracy (the values involved are below
1e-38 in float32). This is ``torch.set_flush_denormal(True)``, scoped.

The control register is per thread, so fastlstm sets it around its own
computation and restores the caller's value afterwards. On processors other
than x86-64 the functions do nothing and report that.
"""

cdef extern from *:
    """
    #if defined(__x86_64__) || defined(_M_X64) || defined(__SSE2__)
    #include <xmmintrin.h>
    #define FASTLSTM_HAVE_MXCSR 1
    /* FTZ is bit 15 and DAZ bit 6 of MXCSR. */
    #define FASTLSTM_FLUSH_BITS 0x8040u
    static unsigned int fastlstm_get_csr(void) { return _mm_getcsr(); }
    static void fastlstm_set_csr(unsigned int value) { _mm_setcsr(value); }
    #else
    #define FASTLSTM_HAVE_MXCSR 0
    #define FASTLSTM_FLUSH_BITS 0u
    static unsigned int fastlstm_get_csr(void) { return 0u; }
    static void fastlstm_set_csr(unsigned int value) { (void)value; }
    #endif
    """
    int FASTLSTM_HAVE_MXCSR
    unsigned int FASTLSTM_FLUSH_BITS
    unsigned int fastlstm_get_csr() nogil
    void fastlstm_set_csr(unsigned int value) nogil


SUPPORTED = bool(FASTLSTM_HAVE_MXCSR)


def enable_flush_to_zero():
    """Turn on FTZ and DAZ in the calling thread.

    Returns
    -------
    previous : int
        The former control word, for :func:`restore`.
    """
    cdef unsigned int previous = fastlstm_get_csr()
    fastlstm_set_csr(previous | FASTLSTM_FLUSH_BITS)
    return previous


def restore(unsigned int previous):
    """Restore a control word returned by :func:`enable_flush_to_zero`."""
    fastlstm_set_csr(previous)


def flush_to_zero_enabled():
    """Whether FTZ and DAZ are both on in the calling thread."""
    return SUPPORTED and (fastlstm_get_csr() & FASTLSTM_FLUSH_BITS) == FASTLSTM_FLUSH_BITS
