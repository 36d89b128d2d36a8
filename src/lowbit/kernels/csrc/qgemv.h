/* Shared declarations of the packed-linear kernels (qgemv.c) and the decode layer (decode.c), which are built
 * into one shared library per CPU level from the same sources: the level macros, bf16/fp16 conversions, the
 * small vector helpers every level defines (LBQ_W floats wide) and the entry points decode.c calls.
 *
 * Levels (lowbit.kernels.lib builds each with fixed -m flags, never -march=native, and loads the one the CPU
 * runs, chosen at run time):
 *   2 "avx512": AVX-512 F/BW/DQ/VL + VNNI + BF16 (Zen 4, Sapphire Rapids): vpdpbusd, vdpbf16ps;
 *   1 "avx2":   AVX2 + FMA + F16C (Haswell and later, Zen 1-3): vpmaddubsw/vpmaddwd, 8-wide FMA;
 *   0 "generic": portable C (what the compiler makes of it for x86-64 or any other CPU). */
#ifndef LBQ_QGEMV_H
#define LBQ_QGEMV_H
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define LBQ_AVX512 1
#define LBQ_LEVEL 2
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LBQ_AVX2 1
#define LBQ_LEVEL 1
#else
#define LBQ_LEVEL 0
#endif
#ifdef __F16C__
#include <immintrin.h>
#endif

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does (NaN not expected) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float bf16_to_f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* vacc: a vector of LBQ_W fp32 partial sums (a plain float in portable C); vfma_s(acc, s, v) = acc + s * v. */
#if defined(LBQ_AVX512)
#define LBQ_W 16
typedef __m512 vacc;
static inline vacc vzero(void) { return _mm512_setzero_ps(); }
static inline vacc vfma_s(vacc acc, float s, vacc v) { return _mm512_fmadd_ps(_mm512_set1_ps(s), v, acc); }
static inline float vsum(vacc v) { return _mm512_reduce_add_ps(v); }
#elif defined(LBQ_AVX2)
#define LBQ_W 8
typedef __m256 vacc;
static inline vacc vzero(void) { return _mm256_setzero_ps(); }
static inline vacc vfma_s(vacc acc, float s, vacc v) { return _mm256_fmadd_ps(_mm256_set1_ps(s), v, acc); }
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline float vsum(vacc v) { return hsum256(v); }
#else
#define LBQ_W 1
typedef float vacc;
static inline vacc vzero(void) { return 0.0f; }
static inline vacc vfma_s(vacc acc, float s, vacc v) { return acc + s * v; }
static inline float vsum(vacc v) { return v; }
#endif

/* sum_i a[i] b[i] over n floats (vectorised at every SIMD level). */
static inline float dotf(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float d = 0;
#if defined(LBQ_AVX512)
    __m512 s = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s);
    d = _mm512_reduce_add_ps(s);
#elif defined(LBQ_AVX2)
    __m256 s = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s);
    d = hsum256(s);
#endif
    for (; i < n; i++) d += a[i] * b[i];
    return d;
}

int lbq_level(void);
void lbq_multi(const int64_t *desc, int nmat, const void *x, int x_bf16, int64_t K, int bits, int64_t group,
               int64_t G, int mode, void *y, int y_bf16, void *scratch, int threads);
void lbq_rmsnorm(const void *x, const void *w, int64_t M, int64_t H, float eps, int bf16, void *y);
void lbq_attn1(const float *q, const float *K, const float *V, int64_t nh, int64_t nkv, int64_t cap, int64_t S,
               int64_t hd, float scale, float *out, float *p);
#endif
