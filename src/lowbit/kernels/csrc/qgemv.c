/* Group-wise low-bit GEMV/GEMM for small batches (decode): y[m, n] = sum_k x[m, k] * w[n, k] + bias[n],
 * with w[n, k] = (code[n, k] - zero[n, g]) * scale[n, g] and g = k / group.
 *
 * Codes are read straight from lowbit's packed layout: each row is a little-endian bit stream, code k at
 * bits [k*b, (k+1)*b); every 8 codes fill exactly b bytes, so groups of a multiple of 8 start on a byte.
 * Per group: sum_k x_k (q_k - z) s = s * (sum_k x_k q_k - z * sum_k x_k); the sums of x per group are
 * computed once per call. Rows are split across OpenMP threads. Built with -march=native on first use.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int n_threads = 1;

void lbq_set_threads(int n) { n_threads = n > 0 ? n : 1; }

int lbq_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LBQ_AVX512 1
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

/* x [M, K] fp32 (K a multiple of 8, zero padded by the caller), qw [N, row_bytes], scales/zeros [R, G] fp32
 * with R = N (rows) or 1 (one scale per tensor), xsum scratch [M, G], y [M, N]. */
void lbq_gemm(const float *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes, int bits,
              int64_t group, int64_t G, const float *scales, const float *zeros, int64_t per_row,
              const float *bias, float *xsum, float *y) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            float s = 0;
            int64_t end = (g + 1) * group < K ? (g + 1) * group : K;
            for (int64_t k = g * group; k < end; k++) s += x[m * K + k];
            xsum[m * G + g] = s;
        }
    const int64_t group_bytes = group / 8 * bits;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = qw + n * row_bytes;
        const float *sc = scales + (per_row ? n * G : 0);
        const float *zp = zeros + (per_row ? n * G : 0);
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
                accv = _mm512_fmadd_ps(_mm512_set1_ps(sc[g]), v, accv);
#else
                float d = dot_group(row + g * group_bytes, xm + start, len, bits, last);
#endif
                acc += sc[g] * (d - zp[g] * xs[g]);
            }
#ifdef LBQ_AVX512
            acc += _mm512_reduce_add_ps(accv);
#endif
            y[m * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
}

static inline uint16_t to_bf16(float f) { /* round to nearest even, as torch does (NaN not expected) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
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
                 int64_t G, const float *scales, const float *zeros, int64_t per_row, int out_bf16, void *out) {
    const uint64_t mask = (1u << bits) - 1u;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *row = qw + n * row_bytes;
        const float *sc = scales + (per_row ? n * G : 0);
        const float *zp = zeros + (per_row ? n * G : 0);
        uint16_t *ob = (uint16_t *)out + n * K;
        float *of = (float *)out + n * K;
        int64_t k0 = 0;
#ifdef LBQ_AVX512
        if ((bits == 2 || bits == 4 || bits == 8) && group % 16 == 0) {
            for (int64_t g = 0; g < G; g++) {
                __m512 vs = _mm512_set1_ps(sc[g]), vz = _mm512_set1_ps(zp[g]);
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
                float w = ((float)((v >> (j * bits)) & mask) - zp[g]) * sc[g];
                if (out_bf16) ob[k0 + j] = to_bf16(w); else of[k0 + j] = w;
            }
        }
    }
}

/* Dequantize torch's CPU int4 layout (_convert_weight_to_int4pack_for_cpu with N % 64 == 0: per block of 64
 * rows and per k, 32 bytes whose low nibble is row j and high nibble row j + 32) to bf16 [N, K]. */
void lbq_dequant_int4pack_bf16(const uint8_t *w4, int64_t N, int64_t K, int64_t group, int64_t G,
                               const float *scales, const float *zeros, uint16_t *out) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
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
