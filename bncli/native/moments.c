/*
 * bncli.native.moments: per-batch moments of float32 / float64 data.
 *
 * moments(x, mean, m2, K, R, C, stride_k, stride_r, stride_c, kind)
 *
 * x is any buffer whose first element is batch 0, row 0, channel 0; element
 * (k, r, c) is at that element plus k*stride_k + r*stride_r + c*stride_c
 * elements of type kind ("f": float32, "d": float64, native byte order). The
 * elements read must lie inside the buffer's own extent (checked). mean and m2
 * are writable, C-contiguous float64 buffers of at least K*C elements; they
 * receive, for each batch k and channel c (at k*C + c),
 *
 *     mean = sum_r x / R,    m2 = sum_r (x - mean)^2 / R     (biased)
 *
 * both accumulated in float64, two passes over each batch. The GIL is
 * released while computing. Build with -ffp-contract=off so that no FMA
 * changes the rounding.
 *
 * The summation order of a batch's channel depends only on R and the
 * strides: never on K, on the batch's place in the call, on the batches or
 * columns computed beside it (interleaved only so that their dependency
 * chains overlap), on the CPU or on timing. The same batch therefore gives
 * the same bits alone or among others, on every call. The orders:
 *
 * - rows (C > 1, unless sr == 1 and sc != 1): the R elements in row order,
 *   from 0.0, one chain per channel; then / R. The squares likewise.
 * - columns (C == 1, or sr == 1 and sc != 1): LANES = 8 partial sums from
 *   0.0, lane j taking rows j, j + 8, ... of the first R - R % 8 rows, then
 *   ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), plus the sum in order
 *   (from 0.0) of the last R % 8 rows; then / R. The squares likewise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

typedef struct {
    Py_ssize_t K, R, C, sk, sr, sc; /* strides in elements */
} Layout;

/* Lanes of the per-column partial sums: independent, so the compiler
 * vectorizes them without reassociating anything. */
#define LANES 8

/* Channels per register block of the row-major path. */
#define W 16

/* Columns the channel-major path sums side by side. */
#define GROUP 4

/* How far ahead the row-major path prefetches, at least one batch. */
#define PREFETCH_BYTES 4096

/* Row length from which the row-major path takes whole rows (wide_). */
#define WIDE_BYTES 1024

/* Rows of a W-channel strip that block_'s second pass still finds in L1:
 * for longer batches of two blocks or more, wide_ reads each row once per
 * pass instead of once per block (64 channels of 2,048 rows: 5.4 -> 8.8
 * GB/s; 128 of 256 rows stay with block_, 8.4 against 6.9). */
#define STRIP_ROWS 256

/* Rows wide_ adds into each accumulator at once (it spells out four). */
#define WIDE_ROWS 4

/* An AVX2 build of the loops beside the baseline one, chosen at load time
 * (GCC on x86-64 Linux). The same operations in the same order on wider
 * vectors: the same bits either way (no FMA: -ffp-contract=off). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))
#define PREFETCH(p) __builtin_prefetch((p))
#else
#define INLINE static inline
#define NOINLINE
#define PREFETCH(p) ((void)0)
#endif

/* GCC and Clang vector extensions (GCC 12 or later for
 * __builtin_shufflevector): element-wise IEEE operations, never reassociated,
 * lowered to AVX2 or SSE2 by each clone. Without them (or with
 * -DBNCLI_NO_VECTORS) the kernels below fall back on the scalar loops, which
 * sum in the same order: the same bits, slower. */
#if defined(__GNUC__) && defined(__has_builtin) && !defined(BNCLI_NO_VECTORS)
#if __has_builtin(__builtin_shufflevector)
#define VECTORS 1
#endif
#endif

#ifdef VECTORS
/* (GCC notes that 32-byte vectors are passed differently with and without
 * AVX: only the always-inlined helpers below take or return them.) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* Loops over the batches and vectors of a gang, whose accumulators must
 * stay in registers: GCC did not always unroll them on its own. */
#define UNROLL _Pragma("GCC unroll 16")

typedef double v4d __attribute__((vector_size(32)));
typedef double v2d __attribute__((vector_size(16)));
typedef float v4f __attribute__((vector_size(16)));

/* Four elements, widened to float64 (GCC 12 widens this constructor with
 * one vcvtps2pd, __builtin_convertvector with several). */
INLINE v4d load4_f32(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return (v4d){v[0], v[1], v[2], v[3]};
}

INLINE v4d load4_f64(const double *p)
{
    v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Two elements at p, then two at q, widened. */
INLINE v4d load2x2_f32(const float *p, const float *q)
{
    double a, b; /* (each pair of floats in one 8-byte load) */
    memcpy(&a, p, sizeof a);
    memcpy(&b, q, sizeof b);
    const v4f v = (v4f)(v2d){a, b};
    return (v4d){v[0], v[1], v[2], v[3]};
}

INLINE v4d load2x2_f64(const double *p, const double *q)
{
    return (v4d){p[0], p[1], q[0], q[1]};
}

INLINE v4d broadcast(double x)
{
    return (v4d){x, x, x, x};
}

/* Four columns' pair sums side by side: lane i of the result is
 * (x[i][0] + x[i][1]) + (x[i][2] + x[i][3]). */
INLINE v4d pairs4(const v4d *x)
{
    const v4d p = __builtin_shufflevector(x[0], x[1], 0, 4, 2, 6)
                  + __builtin_shufflevector(x[0], x[1], 1, 5, 3, 7);
    const v4d q = __builtin_shufflevector(x[2], x[3], 0, 4, 2, 6)
                  + __builtin_shufflevector(x[2], x[3], 1, 5, 3, 7);
    return __builtin_shufflevector(p, q, 0, 1, 4, 5)
           + __builtin_shufflevector(p, q, 2, 3, 6, 7);
}

/* narrow_ keeps HALVES(w) / 2 accumulators per batch: w / 4 vectors, and
 * one more for the last w % 4 channels (WHOLE: a vector read whole for
 * three, or two when w > 2), but half of one for w == 2 (PAIRED: two
 * batches' in one vector). It interleaves GANG(w) batches, even when
 * PAIRED, for about NARROW_CHAINS independent chains of additions: more
 * would help in cache but hurt in memory (a gang's batches are adjacent:
 * reading more than a KiB or two of them at once halved the speed from
 * memory), and reads READ(w) elements from the start of a batch's row. */
#define NARROW_CHAINS 2
#define PAIRED(w) ((w) == 2)
#define WHOLE(w) ((w) % 4 == 3 || ((w) % 4 == 2 && (w) > 2))
#define HALVES(w) (2 * ((w) / 4) + (PAIRED(w) ? 1 : (w) % 4 ? 2 : 0))
#define GANG_(w) ((2 * NARROW_CHAINS + HALVES(w) - 1) / HALVES(w))
#define GANG(w) (PAIRED(w) ? (GANG_(w) + 1) / 2 * 2 : GANG_(w))
#define GANG_MAX (2 * NARROW_CHAINS)
#define READ(w) (WHOLE(w) ? (w) + 4 - (w) % 4 : (w))
#define HAVE_NARROW 1

#define NARROW_CASE(SUFFIX, WIDTH)                                              \
    case WIDTH: {                                                               \
        const int G = GANG(WIDTH);                                              \
        /* the farthest element a gang reads, from its first */                 \
        const Py_ssize_t reach = READ(WIDTH) - 1 + (G - 1) * Py_MAX(sk, 0)      \
                                 + (R - 1) * Py_MAX(sr, 0);                     \
        /* (prefetching whole gangs ahead, at least PREFETCH_BYTES) */          \
        const Py_ssize_t bytes = G * R * WIDTH * (Py_ssize_t)sizeof(*base);     \
        const Py_ssize_t lead = G * (bytes >= PREFETCH_BYTES ? 1 : PREFETCH_BYTES / bytes); \
        for (; k + G <= count; k += G) {                                        \
            const Py_ssize_t ahead = k + G + lead <= count ? lead * sk : 0;     \
            if (k * sk + reach <= room)                                         \
                narrow_##SUFFIX(base + k * sk, sk, R, sr, WIDTH, G, ahead,      \
                                mean + k * ok, m2 + k * ok, ok);                \
            else                                                                \
                for (int g = 0; g < G; g++)                                     \
                    strip_##SUFFIX(base + (k + g) * sk, R, sr, 1, WIDTH,        \
                                   mean + (k + g) * ok, m2 + (k + g) * ok);     \
        }                                                                       \
        break;                                                                  \
    }

#define VECTOR_KERNELS(T, SUFFIX)                                               \
    /* GROUP columns `step` elements apart, each summed exactly as column_      \
     * sums it (R >= LANES, sr == 1). Lanes 0-3 and 4-7 of column i are lo[i]   \
     * and hi[i]; the four columns' trees ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7))   \
     * are taken side by side (pairs4: lane i of its result is column i's),     \
     * and their four divisions are one vector division: the same additions     \
     * and divisions, in the same order, as column_'s. The means: */            \
    INLINE v4d group_sums_##SUFFIX(const T *col, Py_ssize_t step, Py_ssize_t R, \
                                   Py_ssize_t ahead)                            \
    {                                                                           \
        const Py_ssize_t body = R - R % LANES;                                  \
        v4d lo[GROUP], hi[GROUP], tail;                                         \
        for (int i = 0; i < GROUP; i++)                                         \
            lo[i] = hi[i] = (v4d){0.0, 0.0, 0.0, 0.0};                          \
        for (Py_ssize_t r = 0; r < body; r += LANES)                            \
            for (int i = 0; i < GROUP; i++) {                                   \
                PREFETCH(col + i * step + r + ahead);                           \
                lo[i] += load4_##SUFFIX(col + i * step + r);                    \
                hi[i] += load4_##SUFFIX(col + i * step + r + 4);                \
            }                                                                   \
        double t[GROUP] = {0.0};                                                \
        if (body < R) /* (else no lane through memory: see below) */            \
            for (int i = 0; i < GROUP; i++)                                     \
                for (Py_ssize_t r = body; r < R; r++)                           \
                    t[i] += (double)col[i * step + r];                          \
        tail = (v4d){t[0], t[1], t[2], t[3]};                                   \
        return ((pairs4(lo) + pairs4(hi)) + tail) / broadcast((double)R);       \
    }                                                                           \
                                                                                \
    /* ... and the m2 of the same GROUP columns, given their means. */          \
    INLINE v4d group_squares_##SUFFIX(const T *col, Py_ssize_t step,            \
                                      Py_ssize_t R, const v4d *mu)              \
    {                                                                           \
        const Py_ssize_t body = R - R % LANES;                                  \
        v4d lo[GROUP], hi[GROUP], m[GROUP], tail;                               \
        for (int i = 0; i < GROUP; i++) {                                       \
            lo[i] = hi[i] = (v4d){0.0, 0.0, 0.0, 0.0};                          \
            m[i] = broadcast((*mu)[i]);                                         \
        }                                                                       \
        for (Py_ssize_t r = 0; r < body; r += LANES)                            \
            for (int i = 0; i < GROUP; i++) {                                   \
                const v4d dl = load4_##SUFFIX(col + i * step + r) - m[i];       \
                const v4d dh = load4_##SUFFIX(col + i * step + r + 4) - m[i];   \
                lo[i] += dl * dl;                                               \
                hi[i] += dh * dh;                                               \
            }                                                                   \
        double t[GROUP] = {0.0};                                                \
        if (body < R)                                                           \
            for (int i = 0; i < GROUP; i++)                                     \
                for (Py_ssize_t r = body; r < R; r++) {                         \
                    const double d = (double)col[i * step + r] - (*mu)[i];      \
                    t[i] += d * d;                                              \
                }                                                               \
        tail = (v4d){t[0], t[1], t[2], t[3]};                                   \
        return ((pairs4(lo) + pairs4(hi)) + tail) / broadcast((double)R);       \
    }                                                                           \
                                                                                \
    /* `groups` runs of GROUP columns, `step` elements apart (outputs `ostep`   \
     * apart), software-pipelined: the means of the next group are summed       \
     * before the squares of this one, so that the latency of one group's       \
     * tree and division hides behind the other's sums. */                      \
    INLINE void groups_##SUFFIX(const T *col, Py_ssize_t step, Py_ssize_t R,    \
                                Py_ssize_t groups, double *mean_out,            \
                                double *m2_out, Py_ssize_t ostep)               \
    {                                                                           \
        /* (prefetching whole groups ahead, at least PREFETCH_BYTES) */         \
        const Py_ssize_t bytes = GROUP * R * (Py_ssize_t)sizeof(T);             \
        const Py_ssize_t lead = bytes >= PREFETCH_BYTES ? 1 : PREFETCH_BYTES / bytes; \
        v4d mu = group_sums_##SUFFIX(col, step, R, 0);                          \
        for (Py_ssize_t g = 0; g < groups; g++) {                               \
            const T *here = col + g * GROUP * step;                             \
            const Py_ssize_t ahead = g + 1 + lead < groups ? lead * GROUP * step : 0; \
            const v4d next = g + 1 < groups                                     \
                                 ? group_sums_##SUFFIX(here + GROUP * step,     \
                                                       step, R, ahead)          \
                                 : mu;                                          \
            const v4d q = group_squares_##SUFFIX(here, step, R, &mu);           \
            double *mo = mean_out + g * GROUP * ostep;                          \
            double *qo = m2_out + g * GROUP * ostep;                            \
            for (int i = 0; i < GROUP; i++) {                                   \
                mo[i * ostep] = mu[i];                                          \
                qo[i * ostep] = q[i];                                           \
            }                                                                   \
            mu = next;                                                          \
        }                                                                       \
    }                                                                           \
                                                                                \
    /* w channels (w < W, a compile-time constant once inlined) of G            \
     * batches sk apart, contiguous (sc == 1), each channel summed exactly      \
     * as strip_ and block_ sum it: row after row from 0.0, then divided by     \
     * R (and the same for the squares). Lanes are channels: a batch's row      \
     * is w / 4 vectors of four, then its last w % 4 channels: one alone,       \
     * or (WHOLE) three or two in a vector of four read whole (the sums of      \
     * the lanes past w are dropped; the caller checks that what they read      \
     * lies within the buffer), but for w == 2 (PAIRED) the two channels of     \
     * batches g and g + 1 (g even) side by side. The G batches are             \
     * interleaved only so that their chains of additions overlap (a            \
     * batch's own channels are one chain per lane). */                         \
    INLINE void narrow_##SUFFIX(const T *base, Py_ssize_t sk, Py_ssize_t R,     \
                                Py_ssize_t sr, const int w, const int G,        \
                                Py_ssize_t ahead, double *mean, double *m2,     \
                                Py_ssize_t ok)                                  \
    {                                                                           \
        const int n4 = w / 4, rem = w % 4, at = 4 * n4;                         \
        const v4d n = broadcast((double)R);                                     \
        /* per batch: a[g][0..n4), then a[g][n4] for three or two channels      \
         * (of batches g and g + 1, g even), or s[g] for one */                 \
        v4d a[GANG_MAX][W / 4], m[GANG_MAX][W / 4];                             \
        double s[GANG_MAX], ms[GANG_MAX];                                       \
        UNROLL                                                                  \
        for (int g = 0; g < G; g++) {                                           \
            UNROLL                                                              \
            for (int j = 0; j <= n4; j++)                                       \
                a[g][j] = broadcast(0.0);                                       \
            s[g] = 0.0;                                                         \
        }                                                                       \
        for (Py_ssize_t r = 0; r < R; r++)                                      \
            UNROLL                                                              \
            for (int g = 0; g < G; g++) {                                       \
                const T *row = base + g * sk + r * sr;                          \
                PREFETCH(row + ahead);                                          \
                UNROLL                                                          \
                for (int j = 0; j < n4; j++)                                    \
                    a[g][j] += load4_##SUFFIX(row + 4 * j);                     \
                if (WHOLE(w))                                                   \
                    a[g][n4] += load4_##SUFFIX(row + at);                       \
                if (PAIRED(w) && g % 2 == 0)                                    \
                    a[g][n4] += load2x2_##SUFFIX(row + at, row + sk + at);      \
                if (rem == 1)                                                   \
                    s[g] += (double)row[at];                                    \
            }                                                                   \
        UNROLL                                                                  \
        for (int g = 0; g < G; g++) {                                           \
            UNROLL                                                              \
            for (int j = 0; j <= n4; j++) {                                     \
                m[g][j] = a[g][j] / n;                                          \
                a[g][j] = broadcast(0.0);                                       \
            }                                                                   \
            ms[g] = s[g] / (double)R;                                           \
            s[g] = 0.0;                                                         \
        }                                                                       \
        for (Py_ssize_t r = 0; r < R; r++)                                      \
            UNROLL                                                              \
            for (int g = 0; g < G; g++) {                                       \
                const T *row = base + g * sk + r * sr;                          \
                UNROLL                                                          \
                for (int j = 0; j < n4; j++) {                                  \
                    const v4d d = load4_##SUFFIX(row + 4 * j) - m[g][j];        \
                    a[g][j] += d * d;                                           \
                }                                                               \
                if (WHOLE(w)) {                                                 \
                    const v4d d = load4_##SUFFIX(row + at) - m[g][n4];          \
                    a[g][n4] += d * d;                                          \
                }                                                               \
                if (PAIRED(w) && g % 2 == 0) {                                  \
                    const v4d d = load2x2_##SUFFIX(row + at, row + sk + at)     \
                                  - m[g][n4];                                   \
                    a[g][n4] += d * d;                                          \
                }                                                               \
                if (rem == 1) {                                                 \
                    const double d = (double)row[at] - ms[g];                   \
                    s[g] += d * d;                                              \
                }                                                               \
            }                                                                   \
        UNROLL                                                                  \
        for (int g = 0; g < G; g++) {                                           \
            double *mo = mean + g * ok, *qo = m2 + g * ok;                      \
            UNROLL                                                              \
            for (int j = 0; j < n4; j++) {                                      \
                const v4d q = a[g][j] / n;                                      \
                memcpy(mo + 4 * j, &m[g][j], sizeof(v4d));                      \
                memcpy(qo + 4 * j, &q, sizeof(v4d));                            \
            }                                                                   \
            if (WHOLE(w) || PAIRED(w)) {                                        \
                /* paired: lanes 0 and 1 of the pair's for g even, 2 and 3 for  \
                 * g odd */                                                     \
                const int h = PAIRED(w) ? g & ~1 : g, l = PAIRED(w) ? 2 * (g & 1) : 0; \
                const v4d q = a[h][n4] / n;                                     \
                UNROLL                                                          \
                for (int c = 0; c < rem; c++) {                                 \
                    mo[at + c] = m[h][n4][l + c];                               \
                    qo[at + c] = q[l + c];                                      \
                }                                                               \
            }                                                                   \
            if (rem == 1) {                                                     \
                mo[at] = ms[g];                                                 \
                qo[at] = s[g] / (double)R;                                      \
            }                                                                   \
        }                                                                       \
    }                                                                           \
                                                                                \
    /* The first batches of `count` (a multiple of GANG(w), which it returns)   \
     * w channels at a time (1 <= w < W, made a constant): by narrow_ where     \
     * what it reads lies within the `room` elements from base on (reading      \
     * its last vector of four whole), else batch by batch by strip_. A         \
     * function of its own: inlined in rows_, its loops ran short of            \
     * registers. */                                                            \
    CLONES NOINLINE static Py_ssize_t narrows_##SUFFIX(const T *base, Py_ssize_t sk, \
                                       Py_ssize_t R, Py_ssize_t sr,             \
                                       Py_ssize_t w, Py_ssize_t count,          \
                                       Py_ssize_t room, double *mean,           \
                                       double *m2, Py_ssize_t ok)               \
    {                                                                           \
        Py_ssize_t k = 0;                                                       \
        switch (w) {                                                            \
            NARROW_CASE(SUFFIX, 1) NARROW_CASE(SUFFIX, 2)                       \
            NARROW_CASE(SUFFIX, 3) NARROW_CASE(SUFFIX, 4)                       \
            NARROW_CASE(SUFFIX, 5) NARROW_CASE(SUFFIX, 6)                       \
            NARROW_CASE(SUFFIX, 7) NARROW_CASE(SUFFIX, 8)                       \
            NARROW_CASE(SUFFIX, 9) NARROW_CASE(SUFFIX, 10)                      \
            NARROW_CASE(SUFFIX, 11) NARROW_CASE(SUFFIX, 12)                     \
            NARROW_CASE(SUFFIX, 13) NARROW_CASE(SUFFIX, 14)                     \
            NARROW_CASE(SUFFIX, 15)                                             \
        default:                                                                \
            break;                                                              \
        }                                                                       \
        return k;                                                               \
    }

#else /* no vectors */
#define HAVE_NARROW 0
#define GANG(w) 1

#define VECTOR_KERNELS(T, SUFFIX)                                               \
    /* Without vectors: the columns one by one, and no narrow_. */              \
    INLINE void groups_##SUFFIX(const T *col, Py_ssize_t step, Py_ssize_t R,    \
                                Py_ssize_t groups, double *mean_out,            \
                                double *m2_out, Py_ssize_t ostep)               \
    {                                                                           \
        for (Py_ssize_t i = 0; i < groups * GROUP; i++)                         \
            column_##SUFFIX(col + i * step, R, 1, mean_out + i * ostep,         \
                            m2_out + i * ostep);                                \
    }                                                                           \
                                                                                \
    INLINE Py_ssize_t narrows_##SUFFIX(const T *base, Py_ssize_t sk,            \
                                       Py_ssize_t R, Py_ssize_t sr,             \
                                       Py_ssize_t w, Py_ssize_t count,          \
                                       Py_ssize_t room, double *mean,           \
                                       double *m2, Py_ssize_t ok)               \
    {                                                                           \
        return 0;                                                               \
    }

#endif /* VECTORS */

/*
 * DEFINE_KERNELS(T, SUFFIX) defines, for element type T:
 *
 * rows_SUFFIX: inner loop over the channels of a row (accumulators are the
 *   output rows themselves, one per channel); contiguous when sc == 1.
 * column_SUFFIX: one channel of one batch, R elements stride sr, summed in
 *   LANES partial sums combined in a fixed order.
 */

#define DEFINE_KERNELS(T, SUFFIX)                                               \
    /* W channels of one batch, whole rows of them in registers. */             \
    INLINE void block_##SUFFIX(const T *batch, Py_ssize_t R, Py_ssize_t sr,     \
                               Py_ssize_t ahead, double *restrict mu,           \
                               double *restrict q)                              \
    {                                                                           \
        double acc[W] = {0.0}, m[W];                                            \
        for (Py_ssize_t r = 0; r < R; r++) {                                    \
            const T *restrict row = batch + r * sr;                             \
            PREFETCH(row + ahead);                                              \
            for (int j = 0; j < W; j++)                                         \
                acc[j] += (double)row[j];                                       \
        }                                                                       \
        for (int j = 0; j < W; j++) {                                           \
            m[j] = acc[j] / (double)R;                                          \
            acc[j] = 0.0;                                                       \
        }                                                                       \
        for (Py_ssize_t r = 0; r < R; r++) {                                    \
            const T *restrict row = batch + r * sr;                             \
            for (int j = 0; j < W; j++) {                                       \
                const double d = (double)row[j] - m[j];                         \
                acc[j] += d * d;                                                \
            }                                                                   \
        }                                                                       \
        for (int j = 0; j < W; j++) {                                           \
            mu[j] = m[j];                                                       \
            q[j] = acc[j] / (double)R;                                          \
        }                                                                       \
    }                                                                           \
                                                                                \
    /* Any w channels, sc apart: the same sums, accumulated in the output. */   \
    INLINE void strip_##SUFFIX(const T *batch, Py_ssize_t R, Py_ssize_t sr,     \
                               Py_ssize_t sc, Py_ssize_t w,                     \
                               double *restrict mu, double *restrict q)         \
    {                                                                           \
        const double n = (double)R;                                             \
        for (Py_ssize_t c = 0; c < w; c++)                                      \
            mu[c] = q[c] = 0.0;                                                 \
        for (Py_ssize_t r = 0; r < R; r++) {                                    \
            const T *restrict row = batch + r * sr;                             \
            for (Py_ssize_t c = 0; c < w; c++)                                  \
                mu[c] += (double)row[c * sc];                                   \
        }                                                                       \
        for (Py_ssize_t c = 0; c < w; c++)                                      \
            mu[c] /= n;                                                         \
        for (Py_ssize_t r = 0; r < R; r++) {                                    \
            const T *restrict row = batch + r * sr;                             \
            for (Py_ssize_t c = 0; c < w; c++) {                                \
                const double d = (double)row[c * sc] - mu[c];                   \
                q[c] += d * d;                                                  \
            }                                                                   \
        }                                                                       \
        for (Py_ssize_t c = 0; c < w; c++)                                      \
            q[c] /= n;                                                          \
    }                                                                           \
                                                                                \
    /* Contiguous wide rows (C * sizeof(T) > WIDE_BYTES, or batches of two     \
     * blocks or more in over STRIP_ROWS rows), whole rows at a                 \
     * time in order, accumulated in the output (rows the same few KiB          \
     * apart would evict each other from L1 if taken W channels at a time).     \
     * WIDE_ROWS rows go through each accumulator at once, added one after      \
     * the other as a row at a time would: the same sums, a quarter of the      \
     * accumulators' loads and stores. No software prefetch: a batch of wide    \
     * rows is one long contiguous run, which the hardware streams (prefetching \
     * the next batch's lines cost a tenth of the speed from memory). */        \
    INLINE void wide_##SUFFIX(const T *batch, Py_ssize_t R, Py_ssize_t sr,      \
                              Py_ssize_t C, double *restrict mu,                \
                              double *restrict q)                               \
    {                                                                           \
        const double n = (double)R;                                             \
        const Py_ssize_t body = R - R % WIDE_ROWS;                              \
        for (Py_ssize_t c = 0; c < C; c++)                                      \
            mu[c] = q[c] = 0.0;                                                 \
        for (Py_ssize_t r = 0; r < body; r += WIDE_ROWS) {                      \
            const T *restrict x0 = batch + r * sr, *restrict x1 = x0 + sr;      \
            const T *restrict x2 = x1 + sr, *restrict x3 = x2 + sr;             \
            for (Py_ssize_t c = 0; c < C; c++)                                  \
                mu[c] = (((mu[c] + (double)x0[c]) + (double)x1[c])              \
                         + (double)x2[c]) + (double)x3[c];                      \
        }                                                                       \
        for (Py_ssize_t r = body; r < R; r++) {                                 \
            const T *restrict row = batch + r * sr;                             \
            for (Py_ssize_t c = 0; c < C; c++)                                  \
                mu[c] += (double)row[c];                                        \
        }                                                                       \
        for (Py_ssize_t c = 0; c < C; c++)                                      \
            mu[c] /= n;                                                         \
        for (Py_ssize_t r = 0; r < body; r += WIDE_ROWS) {                      \
            const T *restrict x0 = batch + r * sr, *restrict x1 = x0 + sr;      \
            const T *restrict x2 = x1 + sr, *restrict x3 = x2 + sr;             \
            for (Py_ssize_t c = 0; c < C; c++) {                                \
                const double m = mu[c];                                         \
                const double d0 = (double)x0[c] - m, d1 = (double)x1[c] - m;    \
                const double d2 = (double)x2[c] - m, d3 = (double)x3[c] - m;    \
                q[c] = (((q[c] + d0 * d0) + d1 * d1) + d2 * d2) + d3 * d3;      \
            }                                                                   \
        }                                                                       \
        for (Py_ssize_t r = body; r < R; r++) {                                 \
            const T *restrict row = batch + r * sr;                             \
            for (Py_ssize_t c = 0; c < C; c++) {                                \
                const double d = (double)row[c] - mu[c];                        \
                q[c] += d * d;                                                  \
            }                                                                   \
        }                                                                       \
        for (Py_ssize_t c = 0; c < C; c++)                                      \
            q[c] /= n;                                                          \
    }                                                                           \
                                                                                \
    INLINE void column_##SUFFIX(const T *col, Py_ssize_t R, Py_ssize_t sr,      \
                                double *mean_out, double *m2_out)               \
    {                                                                           \
        double a[LANES] = {0.0};                                                \
        double tail = 0.0;                                                      \
        Py_ssize_t r = 0;                                                       \
        if (sr == 1) {                                                          \
            for (; r + LANES <= R; r += LANES)                                  \
                for (int j = 0; j < LANES; j++)                                 \
                    a[j] += (double)col[r + j];                                 \
        }                                                                       \
        else {                                                                  \
            for (; r + LANES <= R; r += LANES)                                  \
                for (int j = 0; j < LANES; j++)                                 \
                    a[j] += (double)col[(r + j) * sr];                          \
        }                                                                       \
        const Py_ssize_t body = r;                                              \
        for (; r < R; r++)                                                      \
            tail += (double)col[r * sr];                                        \
        const double mu =                                                       \
            ((((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) \
             + tail) / (double)R;                                               \
        for (int j = 0; j < LANES; j++)                                         \
            a[j] = 0.0;                                                         \
        tail = 0.0;                                                             \
        if (sr == 1) {                                                          \
            for (r = 0; r < body; r += LANES)                                   \
                for (int j = 0; j < LANES; j++) {                               \
                    const double d = (double)col[r + j] - mu;                   \
                    a[j] += d * d;                                              \
                }                                                               \
        }                                                                       \
        else {                                                                  \
            for (r = 0; r < body; r += LANES)                                   \
                for (int j = 0; j < LANES; j++) {                               \
                    const double d = (double)col[(r + j) * sr] - mu;            \
                    a[j] += d * d;                                              \
                }                                                               \
        }                                                                       \
        for (r = body; r < R; r++) {                                            \
            const double d = (double)col[r * sr] - mu;                          \
            tail += d * d;                                                      \
        }                                                                       \
        *mean_out = mu;                                                         \
        *m2_out =                                                               \
            ((((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) \
             + tail) / (double)R;                                               \
    }                                                                           \
                                                                                \
    VECTOR_KERNELS(T, SUFFIX)                                                   \
                                                                                \
    /* Batches with whole blocks and then w = C % W channels (sc == 1),         \
     * GANG(w) at a time: the blocks of each batch, then narrow_ for the        \
     * gang's last w channels. Returns how many batches it did. (Apart from     \
     * rows_, whose loop below ran slower from memory with this inlined.) */    \
    CLONES NOINLINE static Py_ssize_t gangs_##SUFFIX(                           \
        const T *base, const Layout *s, Py_ssize_t lead, Py_ssize_t room,       \
        double *mean, double *m2)                                               \
    {                                                                           \
        const Py_ssize_t K = s->K, R = s->R, C = s->C, sk = s->sk, sr = s->sr;  \
        const Py_ssize_t w = C % W, cw = C - w, gang = GANG(w);                 \
        Py_ssize_t k = 0;                                                       \
        for (; k + gang <= K; k += gang) {                                      \
            for (Py_ssize_t g = k; g < k + gang; g++) {                         \
                const Py_ssize_t ahead = g + lead < K ? lead * sk : 0;          \
                for (Py_ssize_t c = 0; c < cw; c += W)                          \
                    block_##SUFFIX(base + g * sk + c, R, sr, ahead,             \
                                   mean + g * C + c, m2 + g * C + c);           \
            }                                                                   \
            narrows_##SUFFIX(base + k * sk + cw, sk, R, sr, w, gang,            \
                             room - k * sk - cw, mean + k * C + cw,             \
                             m2 + k * C + cw, C);                               \
        }                                                                       \
        return k;                                                               \
    }                                                                           \
                                                                                \
    CLONES static void rows_##SUFFIX(const T *base, const Layout *s,            \
                                     double *mean, double *m2)                  \
    {                                                                           \
        const Py_ssize_t K = s->K, R = s->R, C = s->C;                          \
        const Py_ssize_t sk = s->sk, sr = s->sr, sc = s->sc;                    \
        /* Prefetch the batch some KiB ahead (the mean pass touches each        \
         * of its lines once): memory is then read while this one sums. */      \
        const Py_ssize_t bytes = R * C * (Py_ssize_t)sizeof(T);                 \
        const Py_ssize_t lead = bytes >= PREFETCH_BYTES ? 1 : PREFETCH_BYTES / bytes; \
        const int wide = sc == 1 && (C * (Py_ssize_t)sizeof(T) > WIDE_BYTES     \
                                     || (C >= 2 * W && R > STRIP_ROWS));        \
        /* The channels after the last whole block, when contiguous: narrow_    \
         * takes them GANG(w) batches at a time (blocks first, batch by         \
         * batch), then the batches left over go one at a time below. It may    \
         * read up to `room` elements from base (the last one x holds). */      \
        const Py_ssize_t w = sc == 1 && !wide ? C % W : 0, cw = C - w;          \
        const Py_ssize_t room = (K - 1) * Py_MAX(sk, 0) + (R - 1) * Py_MAX(sr, 0) \
                                + (C - 1);                                      \
        Py_ssize_t k = 0;                                                       \
        if (w && cw == 0)                                                       \
            k = narrows_##SUFFIX(base, sk, R, sr, w, K, room, mean, m2, C);     \
        else if (w && HAVE_NARROW)                                              \
            k = gangs_##SUFFIX(base, s, lead, room, mean, m2);                  \
        for (; k < K; k++) {                                                    \
            const T *batch = base + k * sk;                                     \
            const Py_ssize_t ahead = k + lead < K ? lead * sk : 0;              \
            Py_ssize_t c = 0;                                                   \
            if (wide) {                                                         \
                wide_##SUFFIX(batch, R, sr, C, mean + k * C, m2 + k * C);       \
                continue;                                                       \
            }                                                                   \
            if (sc == 1)                                                        \
                for (; c + W <= C; c += W)                                      \
                    block_##SUFFIX(batch + c, R, sr, ahead, mean + k * C + c,   \
                                   m2 + k * C + c);                             \
            if (c < C)                                                          \
                strip_##SUFFIX(batch + c * sc, R, sr, sc, C - c,                \
                               mean + k * C + c, m2 + k * C + c);               \
        }                                                                       \
    }                                                                           \
                                                                                \
    CLONES static void columns_##SUFFIX(const T *base, const Layout *s,         \
                                 double *mean, double *m2)                      \
    {                                                                           \
        const Py_ssize_t K = s->K, C = s->C;                                    \
        const Py_ssize_t R = s->R, sr = s->sr;                                  \
        /* Walk the memory in order: channel-outer when channels are the        \
         * farthest apart (a channel's batches are then one long run). */       \
        const int by_channel = C == 1 || Py_ABS(s->sc) > Py_ABS(s->sk);         \
        const Py_ssize_t outer = by_channel ? C : K, inner = by_channel ? K : C; \
        const Py_ssize_t so = by_channel ? s->sc : s->sk;                       \
        const Py_ssize_t si = by_channel ? s->sk : s->sc;                       \
        const Py_ssize_t oo = by_channel ? 1 : C, oi = by_channel ? C : 1;      \
        for (Py_ssize_t o = 0; o < outer; o++) {                                \
            Py_ssize_t i = 0;                                                   \
            if (R >= LANES && sr == 1 && inner >= GROUP) {                      \
                groups_##SUFFIX(base + o * so, si, R, inner / GROUP,            \
                                mean + o * oo, m2 + o * oo, oi);                \
                i = inner - inner % GROUP;                                      \
            }                                                                   \
            for (; i < inner; i++)                                              \
                column_##SUFFIX(base + o * so + i * si, R, sr,                  \
                                mean + o * oo + i * oi, m2 + o * oo + i * oi);  \
        }                                                                       \
    }                                                                           \
                                                                                \
    static void moments_##SUFFIX(const T *base, const Layout *s,                \
                                 double *mean, double *m2)                      \
    {                                                                           \
        if (s->C == 1 || (s->sr == 1 && s->sc != 1))                            \
            columns_##SUFFIX(base, s, mean, m2);                                \
        else                                                                    \
            rows_##SUFFIX(base, s, mean, m2);                                   \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

/* a * b into *out, or 0 on overflow. */
static int
mul_ok(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *out)
{
    if (a != 0 && b != 0) {
        Py_ssize_t aa = Py_ABS(a), bb = Py_ABS(b);
        if (a == PY_SSIZE_T_MIN || b == PY_SSIZE_T_MIN || aa > PY_SSIZE_T_MAX / bb)
            return 0;
    }
    *out = a * b;
    return 1;
}

/* Byte offsets [lo, hi) touched by a strided array of ndim dimensions
 * (shape all > 0), relative to its first element; 0 on overflow. */
static int
extent(int ndim, const Py_ssize_t *shape, const Py_ssize_t *strides,
       Py_ssize_t itemsize, Py_ssize_t *lo, Py_ssize_t *hi)
{
    Py_ssize_t low = 0, high = itemsize;
    for (int i = 0; i < ndim; i++) {
        Py_ssize_t span;
        if (!mul_ok(shape[i] - 1, strides[i], &span))
            return 0;
        if (span >= 0) {
            if (high > PY_SSIZE_T_MAX - span)
                return 0;
            high += span;
        }
        else {
            if (low < PY_SSIZE_T_MIN - span)
                return 0;
            low += span;
        }
    }
    *lo = low;
    *hi = high;
    return 1;
}

/* Whether a buffer format names the element type `kind` (or raw bytes). */
static int
format_matches(const char *format, char kind)
{
    if (format == NULL)
        return 1; /* unsigned bytes */
    if (format[0] == '@' || format[0] == '=')
        format++;
#if PY_LITTLE_ENDIAN
    else if (format[0] == '<')
        format++;
#else
    else if (format[0] == '>' || format[0] == '!')
        format++;
#endif
    if (format[0] == '\0' || format[1] != '\0')
        return 0;
    return format[0] == kind || format[0] == 'B';
}

static PyObject *
moments(PyObject *self, PyObject *args)
{
    PyObject *x_obj, *mean_obj, *m2_obj;
    Layout s;
    const char *kind_str;
    if (!PyArg_ParseTuple(args, "OOOnnnnnns:moments", &x_obj, &mean_obj, &m2_obj,
                          &s.K, &s.R, &s.C, &s.sk, &s.sr, &s.sc, &kind_str))
        return NULL;
    char kind;
    Py_ssize_t itemsize;
    if (strcmp(kind_str, "f") == 0 || strcmp(kind_str, "float32") == 0) {
        kind = 'f';
        itemsize = sizeof(float);
    }
    else if (strcmp(kind_str, "d") == 0 || strcmp(kind_str, "float64") == 0) {
        kind = 'd';
        itemsize = sizeof(double);
    }
    else {
        PyErr_Format(PyExc_ValueError,
                     "kind must be 'f' (float32) or 'd' (float64), not %R",
                     PyTuple_GET_ITEM(args, 9));
        return NULL;
    }
    if (s.K < 0 || s.R < 0 || s.C < 0) {
        PyErr_SetString(PyExc_ValueError, "K, R and C must be non-negative");
        return NULL;
    }
    Py_ssize_t cells;
    if (!mul_ok(s.K, s.C, &cells) || cells > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_OverflowError, "K * C is too large");
        return NULL;
    }

    Py_buffer xv, mv, qv;
    if (PyObject_GetBuffer(x_obj, &xv, PyBUF_RECORDS_RO) < 0)
        return NULL;
    if (PyObject_GetBuffer(mean_obj, &mv, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&xv);
        return NULL;
    }
    if (PyObject_GetBuffer(m2_obj, &qv, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&mv);
        PyBuffer_Release(&xv);
        return NULL;
    }
    PyObject *result = NULL;
    const Py_ssize_t out_bytes = cells * (Py_ssize_t)sizeof(double);

    if (!format_matches(mv.format, 'd') || !format_matches(qv.format, 'd')
        || mv.len < out_bytes || qv.len < out_bytes) {
        PyErr_SetString(PyExc_ValueError,
                        "mean and m2 must be writable float64 buffers of K*C elements");
        goto done;
    }
    if (!format_matches(xv.format, kind)) {
        PyErr_Format(PyExc_ValueError, "x's format %s is not kind %c",
                     xv.format, kind);
        goto done;
    }
    const Py_ssize_t accessed_shape[3] = {s.K, s.R, s.C};
    const int empty = (s.K == 0 || s.R == 0 || s.C == 0);
    if (!empty) {
        /* Every element read must lie within the buffer's own extent. */
        Py_ssize_t bstrides[3], need_lo, need_hi, have_lo, have_hi;
        if (!mul_ok(s.sk, itemsize, &bstrides[0]) || !mul_ok(s.sr, itemsize, &bstrides[1])
            || !mul_ok(s.sc, itemsize, &bstrides[2])
            || !extent(3, accessed_shape, bstrides, itemsize, &need_lo, &need_hi)) {
            PyErr_SetString(PyExc_OverflowError, "strides are too large");
            goto done;
        }
        if (xv.len == 0) {
            have_lo = have_hi = 0;
        }
        else if (xv.strides == NULL || xv.ndim == 0) {
            have_lo = 0;
            have_hi = xv.len;
        }
        else if (!extent(xv.ndim, xv.shape, xv.strides, xv.itemsize, &have_lo, &have_hi)) {
            PyErr_SetString(PyExc_OverflowError, "x's extent overflows");
            goto done;
        }
        if (need_lo < have_lo || need_hi > have_hi) {
            PyErr_SetString(PyExc_ValueError,
                            "K, R, C and the strides reach outside x's buffer");
            goto done;
        }
        /* The outputs are written while x is read: they must not overlap
         * it, nor each other (the kernels declare them restrict). */
        const char *x_lo = (const char *)xv.buf + need_lo;
        const char *x_hi = (const char *)xv.buf + need_hi;
        const char *m_lo = (const char *)mv.buf, *q_lo = (const char *)qv.buf;
        if ((m_lo < x_hi && x_lo < m_lo + out_bytes)
            || (q_lo < x_hi && x_lo < q_lo + out_bytes)
            || (m_lo < q_lo + out_bytes && q_lo < m_lo + out_bytes)) {
            PyErr_SetString(PyExc_ValueError,
                            "mean, m2 and x must not overlap");
            goto done;
        }
        if (((Py_uintptr_t)xv.buf) % (Py_uintptr_t)itemsize != 0) {
            PyErr_SetString(PyExc_ValueError, "x's first element is not aligned");
            goto done;
        }
    }

    double *mean = (double *)mv.buf, *m2 = (double *)qv.buf;
    Py_BEGIN_ALLOW_THREADS
    if (empty) {
        for (Py_ssize_t i = 0; i < cells; i++) {
            mean[i] = 0.0;
            m2[i] = 0.0;
        }
    }
    else if (kind == 'f')
        moments_f32((const float *)xv.buf, &s, mean, m2);
    else
        moments_f64((const double *)xv.buf, &s, mean, m2);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);

done:
    PyBuffer_Release(&qv);
    PyBuffer_Release(&mv);
    PyBuffer_Release(&xv);
    return result;
}

/* Below this many channels the fold runs FOLD_SEGMENTS runs of batches side
 * by side (from FOLD_SEGMENTS * FOLD_NARROW batches). */
#define FOLD_NARROW 8
#define FOLD_SEGMENTS 4

/*
 * ema_fold(mean, m2, K, C, momentum, mean_offset, variance_offset[, weight])
 *     -> bool
 *
 * Folds the moving-average updates of K batches whose moments moments()
 * wrote (K*C float64 each, batch-major) into per-channel offsets, in batch
 * order: offset = momentum * offset + weight * statistic, weight 1 - momentum
 * unless given (Horner's form of sum_k weight * momentum**(K-1-k) *
 * statistic_k); under FOLD_NARROW channels, in FOLD_SEGMENTS runs joined in
 * order. With momentum and weight 1, the plain sums of the statistics
 * (multiplying by 1 is exact). Returns whether every mean and variance was
 * finite (the offsets are then meaningless otherwise). Releases the GIL.
 */
static PyObject *
ema_fold(PyObject *self, PyObject *args)
{
    PyObject *mean_obj, *m2_obj, *mo_obj, *vo_obj;
    Py_ssize_t K, C;
    double momentum, weight = NAN;
    if (!PyArg_ParseTuple(args, "OOnndOO|d:ema_fold", &mean_obj, &m2_obj, &K, &C,
                          &momentum, &mo_obj, &vo_obj, &weight))
        return NULL;
    Py_ssize_t cells;
    if (K < 0 || C < 0 || !mul_ok(K, C, &cells)
        || cells > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "K and C must be non-negative and small enough");
        return NULL;
    }
    Py_buffer views[4];
    PyObject *objs[4] = {mean_obj, m2_obj, mo_obj, vo_obj};
    const Py_ssize_t need[4] = {cells, cells, C, C};
    int got = 0;
    PyObject *result = NULL;
    for (; got < 4; got++) {
        const int flags = PyBUF_FORMAT | PyBUF_C_CONTIGUOUS | (got >= 2 ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objs[got], &views[got], flags) < 0)
            goto done;
        if (!format_matches(views[got].format, 'd')
            || views[got].len < need[got] * (Py_ssize_t)sizeof(double)) {
            PyErr_SetString(PyExc_ValueError,
                            "ema_fold takes float64 buffers of K*C (moments) and C (offsets)");
            got++;
            goto done;
        }
    }
    {
        const double *mean = (const double *)views[0].buf;
        const double *m2 = (const double *)views[1].buf;
        double *mo = (double *)views[2].buf, *vo = (double *)views[3].buf;
        const double rest = isnan(weight) ? 1.0 - momentum : weight;
        int finite = 1;
        Py_BEGIN_ALLOW_THREADS
        if (C < FOLD_NARROW && K >= FOLD_SEGMENTS * FOLD_NARROW) {
            /* Few channels: one dependency chain per channel would take the
             * latency of a multiply and an add per batch. The batches are cut
             * into FOLD_SEGMENTS runs folded side by side, then joined
             * (offset = momentum**n * offset + next run's), as blocks are. */
            const Py_ssize_t L = K / FOLD_SEGMENTS;
            for (Py_ssize_t c = 0; c < C; c++) {
                double a[FOLD_SEGMENTS] = {0.0}, b[FOLD_SEGMENTS] = {0.0};
                for (Py_ssize_t i = 0; i < L; i++)
                    for (int j = 0; j < FOLD_SEGMENTS; j++) {
                        const Py_ssize_t k = j * L + i;
                        a[j] = momentum * a[j] + rest * mean[k * C + c];
                        b[j] = momentum * b[j] + rest * m2[k * C + c];
                    }
                /* The last run takes the batches past FOLD_SEGMENTS * L. */
                for (Py_ssize_t k = FOLD_SEGMENTS * L; k < K; k++) {
                    a[FOLD_SEGMENTS - 1] = momentum * a[FOLD_SEGMENTS - 1] + rest * mean[k * C + c];
                    b[FOLD_SEGMENTS - 1] = momentum * b[FOLD_SEGMENTS - 1] + rest * m2[k * C + c];
                }
                const double shift = pow(momentum, (double)L);
                const double last = pow(momentum, (double)(K - (FOLD_SEGMENTS - 1) * L));
                double ma = a[0], mb = b[0];
                for (int j = 1; j < FOLD_SEGMENTS; j++) {
                    const double d = j == FOLD_SEGMENTS - 1 ? last : shift;
                    ma = d * ma + a[j];
                    mb = d * mb + b[j];
                }
                mo[c] = ma;
                vo[c] = mb;
            }
        }
        else {
            for (Py_ssize_t c = 0; c < C; c++) {
                mo[c] = 0.0;
                vo[c] = 0.0;
            }
            for (Py_ssize_t k = 0; k < K; k++) {
                const double *mk = mean + k * C, *qk = m2 + k * C;
                for (Py_ssize_t c = 0; c < C; c++) {
                    mo[c] = momentum * mo[c] + rest * mk[c];
                    vo[c] = momentum * vo[c] + rest * qk[c];
                }
            }
        }
        for (Py_ssize_t c = 0; c < C; c++)
            finite &= isfinite(mo[c]) && isfinite(vo[c]);
        Py_END_ALLOW_THREADS
        /* A NaN or an infinity in any batch reaches its channel's offset:
         * infinity * momentum stays infinite, NaN stays NaN; an overflow to
         * infinity of finite terms is caught as well. */
        result = PyBool_FromLong(finite);
    }
done:
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&views[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"ema_fold", ema_fold, METH_VARARGS,
     "ema_fold(mean, m2, K, C, momentum, mean_offset, variance_offset[, weight])"
     " -> bool\n\n"
     "Fold K batches' moments (K*C float64, batch-major) into the offsets of\n"
     "the moving-average update, in batch order (weight: 1 - momentum unless\n"
     "given; with momentum and weight 1, their sums); whether all were finite."},
    {"moments", moments, METH_VARARGS,
     "moments(x, mean, m2, K, R, C, stride_k, stride_r, stride_c, kind)\n--\n\n"
     "Write each batch's float64 mean and biased variance (two-pass) of the\n"
     "(K, R, C) elements of x, strides in elements, kind 'f' or 'd', into the\n"
     "float64 buffers mean and m2 (K*C each, batch-major). Releases the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "bncli.native.moments",
    "Per-batch moments of float32/float64 data, in C (see moments.c).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit_moments(void)
{
    return PyModule_Create(&module);
}
