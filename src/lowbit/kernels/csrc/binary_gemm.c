/*
 * Bit-packed binary (XNOR / popcount) GEMM for lowbit (XNOR-Net, Rastegari et al. 2016).
 *
 * Encoding: a value v becomes bit 1 when !(v >= 0) (i.e. sign -1, NaN counts as -1) and bit 0
 * when v >= 0 (sign +1, also for -0.0).  Bit j of word i holds element 64*i + j.  Padding bits
 * beyond K are 0 in both operands, so they never contribute to popcount(a ^ w).
 *
 *   dot(a, w) = K - 2 * popcount(a XOR w)      (exact integer, equals the +-1 float dot product)
 *
 * Four code paths selected at run time: AVX-512 VPOPCNTDQ, AVX2 (nibble lookup with vpshufb, Mula et al.),
 * scalar POPCNT, and generic C; one build (per-function target attributes) runs on any x86-64 CPU.
 * Floating-point epilogue: y = (float)dot * scale[n] + bias[n], compiled with -ffp-contract=off
 * so it rounds exactly as torch's separate multiply and add.
 */
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#define LB_X86 1
#include <immintrin.h>
#else
#define LB_X86 0
#endif

#define LB_MR 4
#define LB_NR 4
#define LB_NBLOCK 64 /* weight rows per parallel task */

static int lb_level = -1;   /* 0 generic, 1 popcnt, 2 avx2, 3 avx512 vpopcntdq */
static int lb_threads = 0;  /* 0: OpenMP default */
static int64_t lb_par_threshold = (int64_t)1 << 25; /* word pairs below which we stay single-threaded:
                                                             a descheduled 2nd thread on a shared machine costs ms */

int lb_cpu_level(void) {
#if LB_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return 3;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return 2;
    if (__builtin_cpu_supports("popcnt")) return 1;
#endif
    return 0;
}

/* Request a code path; returns the level actually used (never above what the CPU supports). */
int lb_set_level(int level) {
    int best = lb_cpu_level();
    if (level < 0 || level > best) level = best;
    lb_level = level;
    return lb_level;
}

int lb_get_level(void) {
    if (lb_level < 0) lb_set_level(-1);
    return lb_level;
}

void lb_set_threads(int n) { lb_threads = n > 0 ? n : 0; }

void lb_set_parallel_threshold(int64_t t) { lb_par_threshold = t; }

int lb_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int lb_nthreads(int64_t work) {
#ifdef _OPENMP
    if (work < lb_par_threshold) return 1;
    return lb_threads > 0 ? lb_threads : omp_get_max_threads();
#else
    (void)work;
    return 1;
#endif
}

/* ------------------------------------------------------------------ epilogue */

static inline void lb_store(int64_t dot, int64_t m, int64_t n, int64_t N, int32_t *out_i,
                            float *out_f, const float *scale, const float *bias) {
    if (out_i) {
        out_i[m * N + n] = (int32_t)dot;
    } else {
        float y = (float)dot;
        if (scale) y = y * scale[n];
        if (bias) y = y + bias[n];
        out_f[m * N + n] = y;
    }
}

/* ------------------------------------------------------------------ scalar paths */

#define LB_DEFINE_SCALAR(NAME, ATTR)                                                                    \
    ATTR static void NAME##_block(const uint64_t *a, const uint64_t *w, int64_t m0, int64_t m1,        \
                                  int64_t n0, int64_t n1, int64_t N, int64_t Kw, int64_t K,             \
                                  int32_t *out_i, float *out_f, const float *scale, const float *bias) { \
        for (int64_t n = n0; n < n1; n += 2) {                                                          \
            int two = (n + 1 < n1);                                                                     \
            const uint64_t *w0 = w + n * Kw;                                                            \
            const uint64_t *w1 = two ? w0 + Kw : w0;                                                    \
            for (int64_t m = m0; m < m1; ++m) {                                                         \
                const uint64_t *ar = a + m * Kw;                                                        \
                int64_t c0 = 0, c1 = 0;                                                                 \
                for (int64_t k = 0; k < Kw; ++k) {                                                      \
                    c0 += __builtin_popcountll(ar[k] ^ w0[k]);                                          \
                    c1 += __builtin_popcountll(ar[k] ^ w1[k]);                                          \
                }                                                                                       \
                lb_store(K - 2 * c0, m, n, N, out_i, out_f, scale, bias);                               \
                if (two) lb_store(K - 2 * c1, m, n + 1, N, out_i, out_f, scale, bias);                  \
            }                                                                                           \
        }                                                                                               \
    }

LB_DEFINE_SCALAR(lb_generic, )
#if LB_X86
LB_DEFINE_SCALAR(lb_popcnt, __attribute__((target("popcnt"))))
#endif

/* ------------------------------------------------------------------ AVX-512 VPOPCNTDQ path */
#if LB_X86
#define LB_AVX512 __attribute__((target("avx512f,avx512vpopcntdq")))

/* MR x NR tile of dot products with zmm accumulators; mr, nr are compile-time after inlining. */
LB_AVX512 static inline __attribute__((always_inline)) void
lb_avx512_tile(const uint64_t *a, const uint64_t *w, int64_t Kw, int mr, int nr, int64_t acc_out[LB_MR][LB_NR]) {
    __m512i acc[LB_MR][LB_NR];
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) acc[i][j] = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 8 <= Kw; k += 8) {
        __m512i va[LB_MR], vw[LB_NR];
        for (int i = 0; i < mr; ++i) va[i] = _mm512_loadu_si512((const void *)(a + i * Kw + k));
        for (int j = 0; j < nr; ++j) vw[j] = _mm512_loadu_si512((const void *)(w + j * Kw + k));
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < nr; ++j)
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(va[i], vw[j])));
    }
    if (k < Kw) {
        __mmask8 mask = (__mmask8)((1u << (Kw - k)) - 1u);
        __m512i va[LB_MR], vw[LB_NR];
        for (int i = 0; i < mr; ++i) va[i] = _mm512_maskz_loadu_epi64(mask, (const void *)(a + i * Kw + k));
        for (int j = 0; j < nr; ++j) vw[j] = _mm512_maskz_loadu_epi64(mask, (const void *)(w + j * Kw + k));
        for (int i = 0; i < mr; ++i)
            for (int j = 0; j < nr; ++j)
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(va[i], vw[j])));
    }
    for (int i = 0; i < mr; ++i)
        for (int j = 0; j < nr; ++j) acc_out[i][j] = _mm512_reduce_add_epi64(acc[i][j]);
}

#define LB_TILE_CASE(MR_, NR_) lb_avx512_tile(ap, wp, Kw, MR_, NR_, pc)

LB_AVX512 static void lb_avx512_block(const uint64_t *a, const uint64_t *w, int64_t m0, int64_t m1,
                                      int64_t n0, int64_t n1, int64_t N, int64_t Kw, int64_t K,
                                      int32_t *out_i, float *out_f, const float *scale, const float *bias) {
    int64_t pc[LB_MR][LB_NR];
    for (int64_t n = n0; n < n1; n += LB_NR) {
        int nr = (int)((n1 - n) < LB_NR ? (n1 - n) : LB_NR);
        const uint64_t *wp = w + n * Kw;
        for (int64_t m = m0; m < m1; m += LB_MR) {
            int mr = (int)((m1 - m) < LB_MR ? (m1 - m) : LB_MR);
            const uint64_t *ap = a + m * Kw;
            if (mr == 4 && nr == 4) LB_TILE_CASE(4, 4);
            else if (mr == 1 && nr == 4) LB_TILE_CASE(1, 4);
            else {
                /* ragged edges: 1 x nr or mr x 1 tiles */
                for (int i = 0; i < mr; ++i) {
                    int64_t one[LB_MR][LB_NR];
                    const uint64_t *ai = ap + i * Kw;
                    for (int j = 0; j < nr; ++j) {
                        lb_avx512_tile(ai, wp + j * Kw, Kw, 1, 1, one);
                        pc[i][j] = one[0][0];
                    }
                }
            }
            for (int i = 0; i < mr; ++i)
                for (int j = 0; j < nr; ++j) lb_store(K - 2 * pc[i][j], m + i, n + j, N, out_i, out_f, scale, bias);
        }
    }
}
#endif

/* ------------------------------------------------------------------ AVX2 path: popcount by nibble lookup */
#if LB_X86
#define LB_AVX2 __attribute__((target("avx2,popcnt")))

/* per-byte popcounts (0..8) of v */
LB_AVX2 static inline __attribute__((always_inline)) __m256i lb_cnt8(__m256i v, __m256i lut, __m256i m4) {
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, m4)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)));
}

/* 1 x nr dot products (nr <= LB_NR, a constant after inlining): per-byte counts summed over 4 steps of 4
 * words (at most 32 per byte), then folded into 64-bit lanes with vpsadbw. */
LB_AVX2 static inline __attribute__((always_inline)) void
lb_avx2_row(const uint64_t *a, const uint64_t *w, int64_t Kw, int nr, int64_t *out) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i acc[LB_NR];
    for (int j = 0; j < nr; ++j) acc[j] = zero;
    int64_t k = 0;
    for (; k + 16 <= Kw; k += 16) {
        __m256i b[LB_NR];
        for (int j = 0; j < nr; ++j) b[j] = zero;
        for (int s = 0; s < 16; s += 4) {
            __m256i va = _mm256_loadu_si256((const __m256i *)(a + k + s));
            for (int j = 0; j < nr; ++j)
                b[j] = _mm256_add_epi8(b[j], lb_cnt8(_mm256_xor_si256(va, _mm256_loadu_si256((const __m256i *)(w + j * Kw + k + s))), lut, m4));
        }
        for (int j = 0; j < nr; ++j) acc[j] = _mm256_add_epi64(acc[j], _mm256_sad_epu8(b[j], zero));
    }
    for (; k + 4 <= Kw; k += 4) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + k));
        for (int j = 0; j < nr; ++j) {
            __m256i c = lb_cnt8(_mm256_xor_si256(va, _mm256_loadu_si256((const __m256i *)(w + j * Kw + k))), lut, m4);
            acc[j] = _mm256_add_epi64(acc[j], _mm256_sad_epu8(c, zero));
        }
    }
    for (int j = 0; j < nr; ++j) {
        __m128i s = _mm_add_epi64(_mm256_castsi256_si128(acc[j]), _mm256_extracti128_si256(acc[j], 1));
        int64_t t = _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
        for (int64_t q = k; q < Kw; ++q) t += __builtin_popcountll(a[q] ^ w[j * Kw + q]);
        out[j] = t;
    }
}

LB_AVX2 static void lb_avx2_block(const uint64_t *a, const uint64_t *w, int64_t m0, int64_t m1,
                                  int64_t n0, int64_t n1, int64_t N, int64_t Kw, int64_t K,
                                  int32_t *out_i, float *out_f, const float *scale, const float *bias) {
    int64_t pc[LB_NR];
    for (int64_t n = n0; n < n1; n += LB_NR) {
        int nr = (int)((n1 - n) < LB_NR ? (n1 - n) : LB_NR);
        const uint64_t *wp = w + n * Kw;
        for (int64_t m = m0; m < m1; ++m) {
            const uint64_t *ap = a + m * Kw;
            if (nr == 4) lb_avx2_row(ap, wp, Kw, 4, pc);
            else for (int j = 0; j < nr; ++j) lb_avx2_row(ap, wp + j * Kw, Kw, 1, pc + j);
            for (int j = 0; j < nr; ++j) lb_store(K - 2 * pc[j], m, n + j, N, out_i, out_f, scale, bias);
        }
    }
}

/* Signs of x [K] into 64-bit words, 8 floats per compare. */
LB_AVX2 static void lb_pack_row_avx2(const float *x, int64_t K, uint64_t *out) {
    int64_t Kw = (K + 63) / 64, full = K / 8;
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < Kw; ++i) out[i] = 0;
    for (int64_t c = 0; c < full; ++c) { /* NGE_UQ: true when !(v >= 0), NaN included */
        uint64_t bits = (uint64_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 8 * c), zero, _CMP_NGE_UQ));
        out[c / 8] |= bits << (8 * (c % 8));
    }
    for (int64_t j = full * 8; j < K; ++j) out[j / 64] |= (uint64_t)(!(x[j] >= 0.0f)) << (j % 64);
}
#endif

/* ------------------------------------------------------------------ driver */

static void lb_gemm(const uint64_t *a, const uint64_t *w, int64_t M, int64_t N, int64_t Kw, int64_t K,
                    int32_t *out_i, float *out_f, const float *scale, const float *bias) {
    int level = lb_get_level();
    int64_t nblocks = (N + LB_NBLOCK - 1) / LB_NBLOCK;
    int nt = lb_nthreads(M * N * Kw);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
#endif
    for (int64_t b = 0; b < nblocks; ++b) {
        int64_t n0 = b * LB_NBLOCK;
        int64_t n1 = n0 + LB_NBLOCK < N ? n0 + LB_NBLOCK : N;
#if LB_X86
        if (level == 3)
            lb_avx512_block(a, w, 0, M, n0, n1, N, Kw, K, out_i, out_f, scale, bias);
        else if (level == 2)
            lb_avx2_block(a, w, 0, M, n0, n1, N, Kw, K, out_i, out_f, scale, bias);
        else if (level == 1)
            lb_popcnt_block(a, w, 0, M, n0, n1, N, Kw, K, out_i, out_f, scale, bias);
        else
#endif
            lb_generic_block(a, w, 0, M, n0, n1, N, Kw, K, out_i, out_f, scale, bias);
    }
}

/* out[M, N] int32 = K - 2 popcount(a[m] ^ w[n]); a [M, Kw], w [N, Kw] packed uint64. */
void lb_gemm_i32(const uint64_t *a, const uint64_t *w, int64_t M, int64_t N, int64_t Kw, int64_t K,
                 int32_t *out) {
    lb_gemm(a, w, M, N, Kw, K, out, NULL, NULL, NULL);
}

/* out[M, N] float32 = (K - 2 popcount(a[m] ^ w[n])) * scale[n] + bias[n]; scale/bias may be NULL. */
void lb_gemm_f32(const uint64_t *a, const uint64_t *w, int64_t M, int64_t N, int64_t Kw, int64_t K,
                 const float *scale, const float *bias, float *out) {
    lb_gemm(a, w, M, N, Kw, K, NULL, out, scale, bias);
}

/* ------------------------------------------------------------------ packing */

static void lb_pack_row_generic(const float *x, int64_t K, uint64_t *out) {
    int64_t Kw = (K + 63) / 64;
    for (int64_t i = 0; i < Kw; ++i) {
        uint64_t word = 0;
        int64_t base = i * 64;
        int64_t lim = K - base < 64 ? K - base : 64;
        for (int64_t j = 0; j < lim; ++j) word |= (uint64_t)(!(x[base + j] >= 0.0f)) << j;
        out[i] = word;
    }
}

#if LB_X86
LB_AVX512 static void lb_pack_row_avx512(const float *x, int64_t K, uint64_t *out) {
    int64_t Kw = (K + 63) / 64;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t i = 0; i < Kw; ++i) {
        uint64_t word = 0;
        int64_t base = i * 64;
        for (int q = 0; q < 4; ++q) {
            int64_t off = base + 16 * q;
            int64_t rem = K - off;
            if (rem <= 0) break;
            __mmask16 lm = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(lm, x + off);
            /* NGE_UQ: true when !(v >= 0), NaN included; mask off lanes past K */
            __mmask16 neg = _mm512_mask_cmp_ps_mask(lm, v, zero, _CMP_NGE_UQ);
            word |= (uint64_t)neg << (16 * q);
        }
        out[i] = word;
    }
}
#endif

/* Pack rows of x [M, K] (row stride ldx floats) into out [M, ceil(K/64)] uint64. */
void lb_pack_f32(const float *x, int64_t M, int64_t K, int64_t ldx, uint64_t *out) {
    int64_t Kw = (K + 63) / 64;
    int level = lb_get_level();
    int nt = lb_nthreads(M * Kw * 8);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && M > 1)
#endif
    for (int64_t m = 0; m < M; ++m) {
#if LB_X86
        if (level == 3)
            lb_pack_row_avx512(x + m * ldx, K, out + m * Kw);
        else if (level == 2)
            lb_pack_row_avx2(x + m * ldx, K, out + m * Kw);
        else
#endif
            lb_pack_row_generic(x + m * ldx, K, out + m * Kw);
    }
}

/* Fused: pack float activations x [M, K] into scratch [M, Kw], then lb_gemm_f32. */
void lb_linear_f32(const float *x, int64_t ldx, const uint64_t *w, int64_t M, int64_t N, int64_t Kw,
                   int64_t K, const float *scale, const float *bias, uint64_t *scratch, float *out) {
    lb_pack_f32(x, M, K, ldx, scratch);
    lb_gemm(scratch, w, M, N, Kw, K, NULL, out, scale, bias);
}
