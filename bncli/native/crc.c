/*
 * bncli.native.crc: zlib's CRC-32 of the 16-byte blocks of a buffer, by
 * carry-less multiplication.
 *
 * crc32_blocks(data, crc) -> (crc, done)
 *
 * Continues the CRC-32 ``crc`` (as zlib.crc32 takes and returns it) over the
 * first ``done`` bytes of ``data``: a multiple of 16 bytes, all of them but
 * the last len % 16, where the CPU has PCLMULQDQ and SSE4.1 and ``data``
 * holds 64 bytes or more; else ``done`` is 0 and ``crc`` is returned as it
 * was. The caller sums the rest with zlib.crc32(data[done:], crc).
 *
 * The folding is Intel's ("Fast CRC Computation for Generic Polynomials
 * Using PCLMULQDQ Instruction", 2009), in the bit-reflected domain of
 * CRC-32's polynomial 0x04C11DB7, as zlib-ng and Chromium's zlib write it:
 * four 16-byte lanes folded 64 bytes at a time, then into one lane, then
 * Barrett-reduced to 32 bits. About 5x zlib 1.2's speed; the GIL is
 * released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define HAVE_CLMUL 1

__attribute__((target("pclmul,sse4.1"))) static uint32_t
fold(const unsigned char *buf, size_t len, uint32_t crc)
{
    /* x^(4*128+64) mod P, x^(4*128) mod P; x^(128+64), x^128; x^64; and
     * P with Barrett's mu: all bit-reflected, shifted left by one. */
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0x0000000000LL, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x1, x2, x3, x4, x5, x6, x7, x8;

    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    buf += 64;
    len -= 64;

    /* Four lanes, 64 bytes at a time. */
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
        x6 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        x7 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
        x8 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k1k2, 0x11);
        x2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
        x3 = _mm_clmulepi64_si128(x3, k1k2, 0x11);
        x4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5),
                           _mm_loadu_si128((const __m128i *)(buf + 0x00)));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6),
                           _mm_loadu_si128((const __m128i *)(buf + 0x10)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7),
                           _mm_loadu_si128((const __m128i *)(buf + 0x20)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8),
                           _mm_loadu_si128((const __m128i *)(buf + 0x30)));
        buf += 64;
        len -= 64;
    }

    /* The four lanes into one. */
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);

    /* The 16-byte blocks left. */
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k3k4, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }

    /* 128 bits to 64. */
    x2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, mask32);
    x1 = _mm_clmulepi64_si128(x1, k5k0, 0x00);
    x1 = _mm_xor_si128(x1, x2);

    /* Barrett's reduction to 32 bits. */
    x2 = _mm_and_si128(x1, mask32);
    x2 = _mm_clmulepi64_si128(x2, poly, 0x10);
    x2 = _mm_and_si128(x2, mask32);
    x2 = _mm_clmulepi64_si128(x2, poly, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

static PyObject *
crc32_blocks(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned int crc;
    if (!PyArg_ParseTuple(args, "y*I:crc32_blocks", &view, &crc))
        return NULL;
    uint32_t out = crc;
    Py_ssize_t done = 0;
#ifdef HAVE_CLMUL
    if (view.len >= 64 && __builtin_cpu_supports("pclmul")
        && __builtin_cpu_supports("sse4.1")) {
        done = view.len - view.len % 16;
        const unsigned char *buf = (const unsigned char *)view.buf;
        Py_BEGIN_ALLOW_THREADS
        out = ~fold(buf, (size_t)done, ~(uint32_t)crc);
        Py_END_ALLOW_THREADS
    }
#endif
    PyBuffer_Release(&view);
    return Py_BuildValue("(kn)", (unsigned long)out, done);
}

static PyMethodDef methods[] = {
    {"crc32_blocks", crc32_blocks, METH_VARARGS,
     "crc32_blocks(data, crc) -> (crc, done)\n\n"
     "Continue zlib's CRC-32 over data's first done bytes (a multiple of 16;\n"
     "0 where the CPU lacks PCLMULQDQ or data is under 64 bytes)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bncli.native.crc",
    "zlib's CRC-32 by carry-less multiplication.", -1, methods,
};

PyMODINIT_FUNC
PyInit_crc(void)
{
    return PyModule_Create(&module);
}
