/* Group-wise low-bit GEMV/GEMM for small batches (decode): y[m, n] = sum_k x[m, k] * w[n, k] + bias[n],
 * with w[n, k] = (code[n, k] - zero[n, g]) * scale[n, g] and g = k / group.
 *
 * Codes are read straight from lowbit's packed layout: each row is a little-endian bit stream, code k at
 * bits [k*b, (k+1)*b); every 8 codes fill exactly b bytes, so groups of a multiple of 8 start on a byte.
 * Per group: sum_k x_k (q_k - z) s = s * (sum_k x_k q_k - z * sum_k x_k); the sums of x per group are
 * computed once per call. Rows are split across OpenMP threads. Built with -march=native on first use.
 */
#include "qgemv.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static int n_threads = 1;
/* Matrices smaller than this (bytes of weights read) run on the calling thread: waking a second thread costs
 * more than it saves, and with another process on the other core it can cost far more (measured: a 6.8M model
 * decoded at 67 instead of 1,280 tokens/s with two threads while one core was busy). */
#ifndef LBQ_PAR_MIN_BYTES
#define LBQ_PAR_MIN_BYTES (1 << 19)
#endif

/* Scales are the checkpoint's fp16 [R, G] (R = N rows, or 1 for one scale per tensor) and zeros its uint8
 * zero codes [R, G], or NULL for symmetric codes (zero 2^(bits-1)); the kernels keep no float copies. */
static inline float h2f(uint16_t h) { /* IEEE half to float, exact */
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0 && m == 0) u = sign;
    else if (e == 0) { /* subnormal: m * 2^-24, normalised */
        e = 113;
        while (!(m & 0x400u)) { m <<= 1; e--; }
        u = sign | (e << 23) | ((m & 0x3ffu) << 13);
    } else if (e == 31) u = sign | 0x7f800000u | (m << 13);
    else u = sign | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}
/* Row n's scales and zero codes (NULL stays NULL), for per-row (per_row = 1) or per-tensor ranges. */
static inline const uint16_t *row_scales(const uint16_t *s, int64_t per_row, int64_t n, int64_t G) {
    return s + (per_row ? n * G : 0);
}
static inline const uint8_t *row_zeros(const uint8_t *z, int64_t per_row, int64_t n, int64_t G) {
    return z ? z + (per_row ? n * G : 0) : NULL;
}
static inline float zero_of(const uint8_t *zp, int64_t g, int bits) {
    return zp ? (float)zp[g] : (float)(1 << (bits - 1));
}

void lbq_set_threads(int n) { n_threads = n > 0 ? n : 1; }

int lbq_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#ifdef LBQ_AVX512
/* 16 codes of b <= 4 bits (one little-endian 64-bit word) to 16 floats, in order. */
static inline __m512 codes16(uint64_t v, __m512i lo_shift, __m512i hi_shift, __m512i mask) {
    __m512i b = _mm512_set1_epi64((long long)v);
    __m256i lo = _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srlv_epi64(b, lo_shift), mask));
    __m256i hi = _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srlv_epi64(b, hi_shift), mask));
    return _mm512_cvtepi32_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
}
static inline __m512 f16(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)); }
#endif

/* sum_k x[k] * code[k] over `len` codes (len a multiple of 8) of one row starting at byte `p`: with AVX-512
 * the bulk is left in 16 lanes (*vec, summed by the caller after scaling) and the scalar tail returned. */
#ifdef LBQ_AVX512
static inline float dot_group(const uint8_t *p, const float *x, int64_t len, int bits, int last_row, __m512 *vec) {
#else
static inline float dot_group(const uint8_t *p, const float *x, int64_t len, int bits, int last_row) {
#endif
    int64_t k = 0;
    float tail = 0;
#ifdef LBQ_AVX512
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    if (bits == 8) {
        for (; k + 64 <= len; k += 64) {
            a0 = _mm512_fmadd_ps(f16(_mm_loadu_si128((const __m128i *)(p + k))), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(f16(_mm_loadu_si128((const __m128i *)(p + k + 16))), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(f16(_mm_loadu_si128((const __m128i *)(p + k + 32))), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(f16(_mm_loadu_si128((const __m128i *)(p + k + 48))), _mm512_loadu_ps(x + k + 48), a3);
        }
    } else if (bits == 4) {
        const __m128i m4 = _mm_set1_epi8(15);
        for (; k + 64 <= len; k += 64) { /* 32 bytes: 64 codes */
            __m128i b0 = _mm_loadu_si128((const __m128i *)(p + k / 2));
            __m128i b1 = _mm_loadu_si128((const __m128i *)(p + k / 2 + 16));
            __m128i l0 = _mm_and_si128(b0, m4), h0 = _mm_and_si128(_mm_srli_epi16(b0, 4), m4);
            __m128i l1 = _mm_and_si128(b1, m4), h1 = _mm_and_si128(_mm_srli_epi16(b1, 4), m4);
            a0 = _mm512_fmadd_ps(f16(_mm_unpacklo_epi8(l0, h0)), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(f16(_mm_unpackhi_epi8(l0, h0)), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(f16(_mm_unpacklo_epi8(l1, h1)), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(f16(_mm_unpackhi_epi8(l1, h1)), _mm512_loadu_ps(x + k + 48), a3);
        }
    } else if (bits == 2) {
        const __m128i m2 = _mm_set1_epi8(3);
        for (; k + 64 <= len; k += 64) { /* 16 bytes: 64 codes */
            __m128i b = _mm_loadu_si128((const __m128i *)(p + k / 4));
            __m128i c0 = _mm_and_si128(b, m2), c1 = _mm_and_si128(_mm_srli_epi16(b, 2), m2);
            __m128i c2 = _mm_and_si128(_mm_srli_epi16(b, 4), m2), c3 = _mm_and_si128(_mm_srli_epi16(b, 6), m2);
            __m128i e01l = _mm_unpacklo_epi8(c0, c1), e23l = _mm_unpacklo_epi8(c2, c3);
            __m128i e01h = _mm_unpackhi_epi8(c0, c1), e23h = _mm_unpackhi_epi8(c2, c3);
            a0 = _mm512_fmadd_ps(f16(_mm_unpacklo_epi16(e01l, e23l)), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(f16(_mm_unpackhi_epi16(e01l, e23l)), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(f16(_mm_unpacklo_epi16(e01h, e23h)), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(f16(_mm_unpackhi_epi16(e01h, e23h)), _mm512_loadu_ps(x + k + 48), a3);
        }
    } else if (bits == 3) {
        long long sh[16];
        for (int j = 0; j < 16; j++) sh[j] = (long long)j * bits;
        __m512i lo_shift = _mm512_loadu_si512(sh), hi_shift = _mm512_loadu_si512(sh + 8);
        __m512i mask = _mm512_set1_epi64((1 << bits) - 1);
        const uint64_t keep = (1ull << (16 * bits)) - 1ull;
        /* an 8-byte load may run past the 2*bits bytes needed: safe inside the buffer, not at its very end */
        int64_t fast_end = last_row ? len - 16 : len;
        for (; k + 32 <= fast_end; k += 32) {
            uint64_t v0, v1;
            memcpy(&v0, p + k / 8 * bits, 8);
            memcpy(&v1, p + (k + 16) / 8 * bits, 8);
            a0 = _mm512_fmadd_ps(codes16(v0 & keep, lo_shift, hi_shift, mask), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(codes16(v1 & keep, lo_shift, hi_shift, mask), _mm512_loadu_ps(x + k + 16), a1);
        }
    }
    *vec = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
#endif
    const uint64_t mask1 = (1u << bits) - 1u;
    for (; k < len; k += 8) { /* generic: 8 codes fill `bits` bytes */
        uint64_t v = 0;
        memcpy(&v, p + k / 8 * bits, (size_t)bits);
        for (int j = 0; j < 8; j++) tail += (float)((v >> (j * bits)) & mask1) * x[k + j];
    }
    return tail;
}

/* x [M, K] fp32 (K a multiple of 8, zero padded by the caller), qw [N, row_bytes], scales/zeros [R, G]
 * with R = N (rows) or 1 (one scale per tensor), xsum scratch [M, G], y [M, N]. */
void lbq_gemm(const float *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes, int bits,
              int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
              const float *bias, float *xsum, float *y) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            float s = 0;
            int64_t end = (g + 1) * group < K ? (g + 1) * group : K;
            for (int64_t k = g * group; k < end; k++) s += x[m * K + k];
            xsum[m * G + g] = s;
        }
    const int64_t group_bytes = group / 8 * bits;
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * row_bytes * M >= LBQ_PAR_MIN_BYTES)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = qw + n * row_bytes;
        const uint16_t *sc = row_scales(scales, per_row, n, G);
        const uint8_t *zp = row_zeros(zeros, per_row, n, G);
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            const float *xs = xsum + m * G;
            float acc = 0;
#ifdef LBQ_AVX512
            __m512 accv = _mm512_setzero_ps();
#endif
            for (int64_t g = 0; g < G; g++) {
                int64_t start = g * group;
                int64_t len = (start + group < K ? group : K - start);
                int last = n == N - 1 && g == G - 1;
#ifdef LBQ_AVX512
                __m512 v;
                float d = dot_group(row + g * group_bytes, xm + start, len, bits, last, &v);
                accv = _mm512_fmadd_ps(_mm512_set1_ps(h2f(sc[g])), v, accv);
#else
                float d = dot_group(row + g * group_bytes, xm + start, len, bits, last);
#endif
                acc += h2f(sc[g]) * (d - zero_of(zp, g, bits) * xs[g]);
            }
#ifdef LBQ_AVX512
            acc += _mm512_reduce_add_ps(accv);
#endif
            y[m * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
}

#ifdef LBQ_AVX512
/* 16 codes starting at code k of a row of `bits` in {2, 4, 8}, as floats (k a multiple of 16). */
static inline __m512 load16(const uint8_t *row, int64_t k, int bits) {
    if (bits == 8) return f16(_mm_loadu_si128((const __m128i *)(row + k)));
    if (bits == 4) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(row + k / 2)), m4 = _mm_set1_epi8(15);
        return f16(_mm_unpacklo_epi8(_mm_and_si128(b, m4), _mm_and_si128(_mm_srli_epi16(b, 4), m4)));
    }
    uint32_t w;
    memcpy(&w, row + k / 4, 4);
    __m128i b = _mm_cvtsi32_si128((int)w), m2 = _mm_set1_epi8(3);
    __m128i e01 = _mm_unpacklo_epi8(_mm_and_si128(b, m2), _mm_and_si128(_mm_srli_epi16(b, 2), m2));
    __m128i e23 = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m2), _mm_and_si128(_mm_srli_epi16(b, 6), m2));
    return f16(_mm_unpacklo_epi16(e01, e23));
}
#endif

/* Dequantize the packed row layout to [N, K] bf16 (out_bf16 = 1, uint16 bits) or fp32, for prefill. */
void lbq_dequant(const uint8_t *qw, int64_t N, int64_t K, int64_t row_bytes, int bits, int64_t group,
                 int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row, int out_bf16, void *out) {
    const uint64_t mask = (1u << bits) - 1u;
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * row_bytes >= LBQ_PAR_MIN_BYTES)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = qw + n * row_bytes;
        const uint16_t *sc = row_scales(scales, per_row, n, G);
        const uint8_t *zp = row_zeros(zeros, per_row, n, G);
        uint16_t *ob = (uint16_t *)out + n * K;
        float *of = (float *)out + n * K;
        int64_t k0 = 0;
#ifdef LBQ_AVX512
        if ((bits == 2 || bits == 4 || bits == 8) && group % 16 == 0) {
            for (int64_t g = 0; g < G; g++) {
                __m512 vs = _mm512_set1_ps(h2f(sc[g])), vz = _mm512_set1_ps(zero_of(zp, g, bits));
                for (int64_t k = g * group; k < (g + 1) * group && k + 16 <= K; k += 16) {
                    __m512 w = _mm512_mul_ps(_mm512_sub_ps(load16(row, k, bits), vz), vs);
#ifdef __AVX512BF16__
                    if (out_bf16) { _mm256_storeu_si256((__m256i *)(ob + k), (__m256i)_mm512_cvtneps_pbh(w)); continue; }
#endif
                    if (out_bf16) { float t[16]; _mm512_storeu_ps(t, w); for (int j = 0; j < 16; j++) ob[k + j] = to_bf16(t[j]); }
                    else _mm512_storeu_ps(of + k, w);
                }
            }
            k0 = K / 16 * 16 < G * group ? K / 16 * 16 : G * group;
        }
#endif
        for (; k0 < K; k0 += 8) {
            uint64_t v = 0;
            memcpy(&v, row + k0 / 8 * bits, (size_t)bits);
            for (int j = 0; j < 8 && k0 + j < K; j++) {
                int64_t g = (k0 + j) / group;
                float w = ((float)((v >> (j * bits)) & mask) - zero_of(zp, g, bits)) * h2f(sc[g]);
                if (out_bf16) ob[k0 + j] = to_bf16(w); else of[k0 + j] = w;
            }
        }
    }
}

/* Dequantize torch's CPU int4 layout (_convert_weight_to_int4pack_for_cpu with N % 64 == 0: per block of 64
 * rows and per k, 32 bytes whose low nibble is row j and high nibble row j + 32) to bf16 [N, K]. */
void lbq_dequant_int4pack_bf16(const uint8_t *w4, int64_t N, int64_t K, int64_t group, int64_t G,
                               const float *scales, const float *zeros, uint16_t *out) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * K / 2 >= LBQ_PAR_MIN_BYTES)
    for (int64_t nb = 0; nb < N / 64; nb++) {
        const uint8_t *blk = w4 + nb * K * 32;
        for (int64_t k = 0; k < K; k++) {
            int64_t g = k / group;
            const uint8_t *b = blk + k * 32;
            for (int j = 0; j < 32; j++) {
                int64_t lo = nb * 64 + j, hi = lo + 32;
                out[lo * K + k] = to_bf16(((float)(b[j] & 15) - zeros[lo * G + g]) * scales[lo * G + g]);
                out[hi * K + k] = to_bf16(((float)(b[j] >> 4) - zeros[hi * G + g]) * scales[hi * G + g]);
            }
        }
    }
}

/* ---------------------------------------------------------------- int8-activation GEMV (VNNI)
 * For decode with 2, 4 or 8-bit codes: the activations are quantized per group to int8 (absmax / 127, round
 * to nearest), then sum_k q_k x_k is an integer dot product (vpdpbusd: unsigned codes x signed int8, 64 per
 * instruction) and w x = s_w s_x (dot - z sum_k xq_k) per group. Not exact: the activation rounding costs
 * about 0.2-0.5% relative error per output, like llama.cpp's Q8 activations.
 * Layout: every 64 bytes of a row hold C = 64 * (8 / bits) codes; byte j holds codes per*j + t at bits
 * [t*bits, (t+1)*bits). lbq_quant_act writes the int8 activations of each such chunk permuted so that the
 * t-th 64-byte slice is x[per*j + t], j = 0..63, which lines the codes of one bit position up with them. */

static inline int8_t q8(float v, float inv) {
    float r = v * inv;
    r = r > 127.f ? 127.f : (r < -127.f ? -127.f : r);
    return (int8_t)__builtin_lrintf(r);
}

/* x [M, K] (fp32, or bf16 bits when x_bf16) -> xq [M, K] permuted int8, xs [M, G] scales, xsum [M, G]. */
void lbq_quant_act(const void *x, int x_bf16, int64_t M, int64_t K, int bits, int64_t group, int64_t G,
                   int8_t *xq, float *xs, int32_t *xsum) {
    const int per = 8 / bits;
    float xf[K];
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *xb = (const uint16_t *)x + m * K;
        if (x_bf16) for (int64_t k = 0; k < K; k++) xf[k] = bf16_to_f(xb[k]);
        else memcpy(xf, (const float *)x + m * K, (size_t)K * sizeof(float));
        int8_t *out = xq + m * K;
        int64_t c0 = 0, j = 0;
        int t = 0;
        for (int64_t g = 0; g < G; g++) {
            const float *xg = xf + g * group;
            float amax = 0;
            for (int64_t i = 0; i < group; i++) {
                float v = xg[i] < 0 ? -xg[i] : xg[i];
                amax = v > amax ? v : amax;
            }
            float inv = amax > 0 ? 127.f / amax : 0.f;
            xs[m * G + g] = amax / 127.f;
            int32_t sum = 0;
            for (int64_t i = 0; i < group; i++) { /* code k = c0 + per * j + t goes to c0 + 64 * t + j */
                int8_t q = q8(xg[i], inv);
                out[c0 + 64 * t + j] = q;
                sum += q;
                if (++t == per) { t = 0; if (++j == 64) { j = 0; c0 += 64 * per; } }
            }
            xsum[m * G + g] = sum;
        }
    }
}

#if defined(LBQ_AVX512) && defined(__AVX512VNNI__)
int lbq_has_vnni(void) { return 1; }

/* sum over 64 bytes of codes (C = 64 * 8 / BITS codes) of code x int8 activation, added to ai. */
#define LBQ_DOT64(BITS, ai, w, xc, mask)                                                                   \
    do {                                                                                                   \
        if (BITS == 8) {                                                                                   \
            ai = _mm512_dpbusd_epi32(ai, w, _mm512_loadu_si512(xc));                                       \
        } else {                                                                                           \
            for (int t_ = 0; t_ < 8 / BITS; t_++)                                                          \
                ai = _mm512_dpbusd_epi32(ai, _mm512_and_si512(_mm512_srli_epi16(w, t_ * BITS), mask),      \
                                         _mm512_loadu_si512(xc + t_ * 64));                                \
        }                                                                                                  \
    } while (0)

#ifndef LBQ_AHEAD_BYTES
#define LBQ_AHEAD_BYTES 16384 /* prefetch into L2 about this far ahead: best measured here (2-3x over none) */
#endif
static inline int64_t ahead_of(int64_t row_bytes) {
    int64_t rows = LBQ_AHEAD_BYTES / row_bytes;
    return (rows < 4 ? 4 : rows) * row_bytes;
}
/* Four rows at once (the activations are loaded once for all four), groups of a multiple of 64 bytes:
 * out[r] = sum_g s_w[r, g] s_x[g] dot_g for rows n0 .. n0 + 3. */
#define LBQ_ROWS4(BITS)                                                                                    \
    static void rows4_b##BITS(const uint8_t *row0, int64_t row_bytes, const int8_t *xm, const float *xs,     \
                              const uint16_t *sc0, int64_t scs, int64_t G, int64_t cpg, float *out) {      \
        const __m512i mask = _mm512_set1_epi8((char)((1 << BITS) - 1));                                    \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                        \
        const uint8_t *r0 = row0, *r1 = row0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;       \
        const int64_t ahead = ahead_of(row_bytes);                                                         \
        for (int64_t g = 0; g < G; g++) {                                                                  \
            __m512i i0 = _mm512_setzero_si512(), i1 = i0, i2 = i0, i3 = i0;                                \
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {                                            \
                const int8_t *xc = xm + c * 64 * (8 / BITS);                                               \
                __m512i w0 = _mm512_loadu_si512(r0 + c * 64), w1 = _mm512_loadu_si512(r1 + c * 64);        \
                __m512i w2 = _mm512_loadu_si512(r2 + c * 64), w3 = _mm512_loadu_si512(r3 + c * 64);        \
                _mm_prefetch((const char *)(r0 + ahead + c * 64), _MM_HINT_T1);                  \
                _mm_prefetch((const char *)(r1 + ahead + c * 64), _MM_HINT_T1);                  \
                _mm_prefetch((const char *)(r2 + ahead + c * 64), _MM_HINT_T1);                  \
                _mm_prefetch((const char *)(r3 + ahead + c * 64), _MM_HINT_T1);                  \
                LBQ_DOT64(BITS, i0, w0, xc, mask);                                                         \
                LBQ_DOT64(BITS, i1, w1, xc, mask);                                                         \
                LBQ_DOT64(BITS, i2, w2, xc, mask);                                                         \
                LBQ_DOT64(BITS, i3, w3, xc, mask);                                                         \
            }                                                                                              \
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_set1_ps(h2f(sc0[g]) * xs[g]), a0);    \
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_set1_ps(h2f(sc0[scs + g]) * xs[g]), a1); \
            a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i2), _mm512_set1_ps(h2f(sc0[2 * scs + g]) * xs[g]), a2); \
            a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i3), _mm512_set1_ps(h2f(sc0[3 * scs + g]) * xs[g]), a3); \
        }                                                                                                  \
        out[0] = _mm512_reduce_add_ps(a0);                                                                 \
        out[1] = _mm512_reduce_add_ps(a1);                                                                 \
        out[2] = _mm512_reduce_add_ps(a2);                                                                 \
        out[3] = _mm512_reduce_add_ps(a3);                                                                 \
    }
LBQ_ROWS4(2)
LBQ_ROWS4(4)
LBQ_ROWS4(8)

/* One row, any supported group: out = sum_g s_w[g] s_x[g] dot_g. */
static float row1(const uint8_t *row, int bits, const int8_t *xm, const float *xs, const uint16_t *sc, int64_t G,
                  int64_t gb, int64_t chunks) {
    const int per = 8 / bits;
    const __m512i mask = _mm512_set1_epi8((char)((1 << bits) - 1));
    __m512 acc = _mm512_setzero_ps();
    if (gb >= 64) {
        const int64_t cpg = gb / 64;
        for (int64_t g = 0; g < G; g++) {
            __m512i ai = _mm512_setzero_si512();
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                __m512i w = _mm512_loadu_si512(row + c * 64);
                const int8_t *xc = xm + c * 64 * per;
                if (bits == 2) LBQ_DOT64(2, ai, w, xc, mask);
                else if (bits == 4) LBQ_DOT64(4, ai, w, xc, mask);
                else LBQ_DOT64(8, ai, w, xc, mask);
            }
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), _mm512_set1_ps(h2f(sc[g]) * xs[g]), acc);
        }
        return _mm512_reduce_add_ps(acc);
    }
    const int r = (int)(64 / gb); /* 2 or 4 groups per 64-byte chunk: lanes 0..15 split evenly */
    const __m512i lane_group = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                 r == 2 ? 3 : 2);
    for (int64_t c = 0; c < chunks; c++) {
        __m512i w = _mm512_loadu_si512(row + c * 64), ai = _mm512_setzero_si512();
        const int8_t *xc = xm + c * 64 * per;
        if (bits == 2) LBQ_DOT64(2, ai, w, xc, mask);
        else if (bits == 4) LBQ_DOT64(4, ai, w, xc, mask);
        else LBQ_DOT64(8, ai, w, xc, mask);
        float cs[16];
        for (int q = 0; q < r; q++) cs[q] = h2f(sc[c * r + q]) * xs[c * r + q];
        __m512 sv = _mm512_permutexvar_ps(lane_group, _mm512_loadu_ps(cs));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), sv, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* y [M, N] (fp32, or bf16 bits when y_bf16) = x W^T + bias from lbq_quant_act's output. Needs the row
 * length K * bits / 8 a multiple of 64 and the group's bytes a multiple of 64 or one of 16, 32.
 * Scales and zeros as everywhere here (fp16; uint8 or NULL), read per group with the codes. */
void lbq_gemv_i8(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t K,
                 const uint8_t *qw, int64_t N, int64_t row_bytes, int bits, int64_t group, int64_t G,
                 const uint16_t *scales, const uint8_t *zeros, int64_t per_row, const float *bias, void *y,
                 int y_bf16) {
    const int64_t gb = group * bits / 8, chunks = K * bits / 8 / 64;
    const int four = gb >= 64 && per_row;
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * row_bytes * M >= LBQ_PAR_MIN_BYTES)
    for (int64_t nb = 0; nb < (N + 3) / 4; nb++) {
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xm = xq + m * K;
            const float *xsm = xs + m * G;
            const int32_t *xsum_m = xsum + m * G;
            float dots[4];
            int64_t n0 = nb * 4, nr = N - n0 < 4 ? N - n0 : 4;
            if (four && nr == 4) {
                const uint8_t *row0 = qw + n0 * row_bytes;
                const uint16_t *sc0 = row_scales(scales, 1, n0, G);
                if (bits == 4) rows4_b4(row0, row_bytes, xm, xsm, sc0, G, G, gb / 64, dots);
                else if (bits == 2) rows4_b2(row0, row_bytes, xm, xsm, sc0, G, G, gb / 64, dots);
                else rows4_b8(row0, row_bytes, xm, xsm, sc0, G, G, gb / 64, dots);
            } else {
                for (int64_t r = 0; r < nr; r++)
                    dots[r] = row1(qw + (n0 + r) * row_bytes, bits, xm, xsm, row_scales(scales, per_row, n0 + r, G),
                                   G, gb, chunks);
            }
            for (int64_t r = 0; r < nr; r++) {
                int64_t n = n0 + r;
                const uint16_t *sc = row_scales(scales, per_row, n, G);
                const uint8_t *zp = row_zeros(zeros, per_row, n, G);
                float c0 = 0, c1 = 0;
                int64_t g = 0;
                for (; g + 1 < G; g += 2) {
                    c0 += h2f(sc[g]) * zero_of(zp, g, bits) * xsm[g] * (float)xsum_m[g];
                    c1 += h2f(sc[g + 1]) * zero_of(zp, g + 1, bits) * xsm[g + 1] * (float)xsum_m[g + 1];
                }
                if (g < G) c0 += h2f(sc[g]) * zero_of(zp, g, bits) * xsm[g] * (float)xsum_m[g];
                float v = dots[r] - (c0 + c1) + (bias ? bias[n] : 0.0f);
                if (y_bf16) ((uint16_t *)y)[m * N + n] = to_bf16(v);
                else ((float *)y)[m * N + n] = v;
            }
        }
    }
}
#else
int lbq_has_vnni(void) { return 0; }
void lbq_gemv_i8(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t K,
                 const uint8_t *qw, int64_t N, int64_t row_bytes, int bits, int64_t group, int64_t G,
                 const uint16_t *scales, const uint8_t *zeros, int64_t per_row, const float *bias, void *y,
                 int y_bf16) {
    (void)xq; (void)xs; (void)xsum; (void)M; (void)K; (void)qw; (void)N; (void)row_bytes; (void)bits;
    (void)group; (void)G; (void)scales; (void)zeros; (void)per_row; (void)bias; (void)y; (void)y_bf16;
}
#endif

/* ---------------------------------------------------------------- dense bf16 GEMV
 * y [M, N] = x [M, K] W^T (+ bias), W bf16 [N, K], x bf16 (bits): products exact in fp32, fp32 sums
 * (vdpbf16ps); written as bf16 (y_bf16) or fp32. K must be a multiple of 32. For batch-1 heads where
 * oneDNN's bf16 path is slow. */
#if defined(LBQ_AVX512) && defined(__AVX512BF16__)
int lbq_has_bf16(void) { return 1; }
void lbq_gemv_bf16(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, const float *bias,
                   void *y, int y_bf16) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * K * 2 * M >= LBQ_PAR_MIN_BYTES)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *row = w + n * K;
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *xm = x + m * K;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            int64_t k = 0;
            for (; k + 64 <= K; k += 64) {
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(row + k), (__m512bh)_mm512_loadu_si512(xm + k));
                a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(row + k + 32),
                                      (__m512bh)_mm512_loadu_si512(xm + k + 32));
            }
            for (; k + 32 <= K; k += 32)
                a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(row + k), (__m512bh)_mm512_loadu_si512(xm + k));
            float v = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + (bias ? bias[n] : 0.0f);
            if (y_bf16) ((uint16_t *)y)[m * N + n] = to_bf16(v);
            else ((float *)y)[m * N + n] = v;
        }
    }
}
#else
int lbq_has_bf16(void) { return 0; }
void lbq_gemv_bf16(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, const float *bias,
                   void *y, int y_bf16) {
    (void)x; (void)M; (void)K; (void)w; (void)N; (void)bias; (void)y; (void)y_bf16;
}
#endif

/* lbq_quant_act then lbq_gemv_i8 in one call (one crossing from Python per layer); xq/xs/xsum are scratch. */
void lbq_linear_i8(const void *x, int x_bf16, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes,
                   int bits, int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
                   const float *bias, void *y, int y_bf16, int8_t *xq, float *xs, int32_t *xsum, int threads) {
    n_threads = threads > 0 ? threads : 1;
    lbq_quant_act(x, x_bf16, M, K, bits, group, G, xq, xs, xsum);
    lbq_gemv_i8(xq, xs, xsum, M, K, qw, N, row_bytes, bits, group, G, scales, zeros, per_row, bias, y, y_bf16);
}

/* ---------------------------------------------------------------- exact 4-bit GEMV for bf16 activations
 * Codes become bf16 numbers without a conversion: a 16-bit word 0x4300 | q is the bf16 of 128 + q (exactly),
 * and vdpbf16ps sums 32 products per instruction, each exact in fp32. So sum_k (128 + q_k) x_k - 128 sum_k x_k
 * = sum_k q_k x_k up to fp32 rounding, and w x = s (sum q x - z sum x) per group as in lbq_gemm. The bf16
 * activations are permuted per 128 codes like lbq_quant_act's (t-th half: x[2j + t]). Groups of a multiple
 * of 128 codes; the same L2 prefetch as lbq_gemv_i8. */
#if defined(LBQ_AVX512) && defined(__AVX512BF16__)
int lbq_has_q4bf16(void) { return 1; }

static inline __m512 dot128_q4(__m512 acc, __m512i w, const uint16_t *xc) {
    const __m512i m4 = _mm512_set1_epi8(15), bias = _mm512_set1_epi16(0x4300);
    __m512i lo = _mm512_and_si512(w, m4), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
    __m512i l0 = _mm512_or_si512(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(lo)), bias);
    __m512i l1 = _mm512_or_si512(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(lo, 1)), bias);
    __m512i h0 = _mm512_or_si512(_mm512_cvtepu8_epi16(_mm512_castsi512_si256(hi)), bias);
    __m512i h1 = _mm512_or_si512(_mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(hi, 1)), bias);
    acc = _mm512_dpbf16_ps(acc, (__m512bh)l0, (__m512bh)_mm512_loadu_si512(xc));
    acc = _mm512_dpbf16_ps(acc, (__m512bh)l1, (__m512bh)_mm512_loadu_si512(xc + 32));
    acc = _mm512_dpbf16_ps(acc, (__m512bh)h0, (__m512bh)_mm512_loadu_si512(xc + 64));
    return _mm512_dpbf16_ps(acc, (__m512bh)h1, (__m512bh)_mm512_loadu_si512(xc + 96));
}

/* The activations' side of lbq_gemv_q4_bf16: permuted copy xp [M, K] and per-group sums xsum [M, G]. */
static void q4_prep(const uint16_t *x, int64_t M, int64_t K, int64_t group, int64_t G, uint16_t *xp, float *xsum) {
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *xm = x + m * K;
        uint16_t *pm = xp + m * K;
        for (int64_t c = 0; c < K; c += 128)
            for (int64_t j = 0; j < 64; j++) { pm[c + j] = xm[c + 2 * j]; pm[c + 64 + j] = xm[c + 2 * j + 1]; }
        for (int64_t g = 0; g < G; g++) {
            float s = 0;
            for (int64_t k = g * group; k < (g + 1) * group; k++) s += bf16_to_f(xm[k]);
            xsum[m * G + g] = s;
        }
    }
}

static void q4_core(const uint16_t *xp, const float *xsum, int64_t M, int64_t K, const uint8_t *qw, int64_t N,
                    int64_t row_bytes, int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros,
                    int64_t per_row, const float *bias, void *y, int y_bf16) {
    const int64_t cpg = group / 128, ahead = ahead_of(row_bytes);
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * row_bytes * M >= LBQ_PAR_MIN_BYTES)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = qw + n * row_bytes;
        const uint16_t *sc = row_scales(scales, per_row, n, G);
        const uint8_t *zp = row_zeros(zeros, per_row, n, G);
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *pm = xp + m * K;
            const float *xs = xsum + m * G;
            __m512 acc = _mm512_setzero_ps();
            float corr = 0;
            for (int64_t g = 0; g < G; g++) {
                __m512 ag = _mm512_setzero_ps();
                for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                    _mm_prefetch((const char *)(row + ahead + c * 64), _MM_HINT_T1);
                    ag = dot128_q4(ag, _mm512_loadu_si512(row + c * 64), pm + c * 128);
                }
                const float s = h2f(sc[g]);
                acc = _mm512_fmadd_ps(ag, _mm512_set1_ps(s), acc);
                corr += s * (zero_of(zp, g, 4) + 128.f) * xs[g];
            }
            float v = _mm512_reduce_add_ps(acc) - corr + (bias ? bias[n] : 0.0f);
            if (y_bf16) ((uint16_t *)y)[m * N + n] = to_bf16(v);
            else ((float *)y)[m * N + n] = v;
        }
    }
}

/* x bf16 [M, K] (K a multiple of 128), qw 4-bit rows, groups of `group` (a multiple of 128) codes; xp [M, K]
 * and xsum [M, G] scratch. */
void lbq_gemv_q4_bf16(const uint16_t *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes,
                      int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
                      const float *bias, void *y, int y_bf16, uint16_t *xp, float *xsum, int threads) {
    n_threads = threads > 0 ? threads : 1;
    q4_prep(x, M, K, group, G, xp, xsum);
    q4_core(xp, xsum, M, K, qw, N, row_bytes, group, G, scales, zeros, per_row, bias, y, y_bf16);
}
#else
int lbq_has_q4bf16(void) { return 0; }
void lbq_gemv_q4_bf16(const uint16_t *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes,
                      int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
                      const float *bias, void *y, int y_bf16, uint16_t *xp, float *xsum, int threads) {
    (void)x; (void)M; (void)K; (void)qw; (void)N; (void)row_bytes; (void)group; (void)G; (void)scales;
    (void)zeros; (void)per_row; (void)bias; (void)y; (void)y_bf16; (void)xp; (void)xsum; (void)threads;
}
#endif

/* Several matrices that read the same activation row (q, k and v; gate and up), for one row: the activation
 * is quantized (mode 0, int8 kernel) or permuted (mode 1, exact 4-bit bf16 kernel) once, then every matrix
 * writes its outputs at its offset in y. desc holds 8 int64 per matrix: qweight, N, row_bytes, scales,
 * zeros (0: symmetric), per_row, bias (0: none), offset into y. */
void lbq_multi(const int64_t *desc, int nmat, const void *x, int x_bf16, int64_t K, int bits, int64_t group,
               int64_t G, int mode, void *y, int y_bf16, void *scratch, int threads) {
    n_threads = threads > 0 ? threads : 1;
    const size_t ysz = y_bf16 ? 2 : 4;
#if defined(LBQ_AVX512) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
    int8_t *xq = (int8_t *)scratch;
    uint16_t *xp = (uint16_t *)scratch;
    float *xs = (float *)((char *)scratch + 2 * K);
    int32_t *xsum = (int32_t *)(xs + G);
    if (mode == 0) lbq_quant_act(x, x_bf16, 1, K, bits, group, G, xq, xs, xsum);
    else q4_prep((const uint16_t *)x, 1, K, group, G, xp, xs);
    for (int i = 0; i < nmat; i++) {
        const int64_t *d = desc + 8 * i;
        void *yi = (char *)y + d[7] * ysz;
        if (mode == 0)
            lbq_gemv_i8(xq, xs, xsum, 1, K, (const uint8_t *)d[0], d[1], d[2], bits, group, G, (const uint16_t *)d[3],
                        (const uint8_t *)d[4], d[5], (const float *)d[6], yi, y_bf16);
        else
            q4_core(xp, xs, 1, K, (const uint8_t *)d[0], d[1], d[2], group, G, (const uint16_t *)d[3],
                    (const uint8_t *)d[4], d[5], (const float *)d[6], yi, y_bf16);
    }
#else
    (void)desc; (void)nmat; (void)x; (void)x_bf16; (void)K; (void)bits; (void)group; (void)G; (void)mode; (void)y;
    (void)ysz; (void)y_bf16; (void)scratch;
#endif
}
