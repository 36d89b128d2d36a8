/* Group-wise low-bit GEMV/GEMM for small batches (decode): y[m, n] = sum_k x[m, k] * w[n, k] + bias[n],
 * with w[n, k] = (code[n, k] - zero[n, g]) * scale[n, g] and g = k / group.
 *
 * Codes are read straight from lowbit's packed layout: each row is a little-endian bit stream, code k at
 * bits [k*b, (k+1)*b); every 8 codes fill exactly b bytes, so groups of a multiple of 8 start on a byte.
 * Per group: sum_k x_k (q_k - z) s = s * (sum_k x_k q_k - z * sum_k x_k); the sums of x per group are
 * computed once per call. Rows are split across OpenMP threads.
 *
 * One source, three builds (qgemv.h): the drivers here are shared, the vector pieces come from simd512.h
 * (AVX-512) or simd256.h (AVX2), with portable C below for the generic build.
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
#ifndef LBQ_AHEAD_BYTES
#define LBQ_AHEAD_BYTES 16384 /* prefetch into L2 about this far ahead: best measured here (2-3x over none) */
#endif
static inline int64_t ahead_of(int64_t row_bytes) {
    int64_t rows = LBQ_AHEAD_BYTES / row_bytes;
    return (rows < 4 ? 4 : rows) * row_bytes;
}

#if defined(LBQ_AVX512)
#include "simd512.h"
#elif defined(LBQ_AVX2)
#include "simd256.h"
#else
static inline int64_t dot_bulk(const uint8_t *p, const float *x, int64_t len, int bits, int last_row, vacc *vec) {
    (void)p; (void)x; (void)len; (void)bits; (void)last_row;
    *vec = 0.0f;
    return 0;
}
#define I8_SHIFT(bits) 0

/* Portable int8 row dots: byte j of a 64-byte chunk (or of the row's 32-byte tail: 32 for 64) holds codes
 * per*j + t, whose activations are at 64 t + j. */
static void i8_dots(const uint8_t *qw, int64_t n0, int64_t nr, int64_t row_bytes, int bits, const int8_t *xm,
                    const float *xsm, const uint16_t *scales, int64_t per_row, int64_t G, int64_t gb, int64_t chunks,
                    float *dots) {
    const int per = 8 / bits, mask = (1 << bits) - 1;
    (void)chunks;
    for (int64_t r = 0; r < nr; r++) {
        const uint8_t *row = qw + (n0 + r) * row_bytes;
        const uint16_t *sc = row_scales(scales, per_row, n0 + r, G);
        float acc = 0;
        for (int64_t g = 0; g < G; g++) {
            int32_t d = 0;
            for (int64_t b = g * gb; b < (g + 1) * gb; b++) {
                const int64_t cw = G * gb - b / 64 * 64 < 64 ? G * gb - b / 64 * 64 : 64; /* a 32-byte tail */
                const int8_t *xc = xm + b / 64 * 64 * per + b % 64;
                for (int t = 0; t < per; t++) d += ((row[b] >> (t * bits)) & mask) * xc[cw * t];
            }
            acc += (float)d * (h2f(sc[g]) * xsm[g]);
        }
        dots[r] = acc;
    }
}

static inline float bf16_dot(const uint16_t *w, const uint16_t *x, int64_t K) {
    float s = 0;
    for (int64_t k = 0; k < K; k++) s += bf16_to_f(w[k]) * bf16_to_f(x[k]);
    return s;
}
#endif

int lbq_level(void) { return LBQ_LEVEL; }
void lbq_set_threads(int n) { n_threads = n > 0 ? n : 1; }

int lbq_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* sum_k x[k] * code[k] over `len` codes (len a multiple of 8) of one row starting at byte `p`: the vector bulk
 * is left in *vec (summed by the caller after scaling) and the scalar tail returned. */
static inline float dot_group(const uint8_t *p, const float *x, int64_t len, int bits, int last_row, vacc *vec) {
    int64_t k = dot_bulk(p, x, len, bits, last_row, vec);
    float tail = 0;
    const uint64_t mask1 = (1u << bits) - 1u;
    for (; k < len; k += 8) { /* generic: 8 codes fill `bits` bytes */
        uint64_t v = 0;
        memcpy(&v, p + k / 8 * bits, (size_t)bits);
        for (int j = 0; j < 8; j++) tail += (float)((v >> (j * bits)) & mask1) * x[k + j];
    }
    return tail;
}

static inline void put(void *y, int y_bf16, int64_t i, float v) {
    if (y_bf16) ((uint16_t *)y)[i] = to_bf16(v);
    else ((float *)y)[i] = v;
}

/* lbq_gemm writing fp32 or (y_bf16) bf16 outputs. */
static void gemm_core(const float *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes, int bits,
                      int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
                      const float *bias, float *xsum, void *y, int y_bf16) {
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
            vacc accv = vzero();
            for (int64_t g = 0; g < G; g++) {
                int64_t start = g * group;
                int64_t len = (start + group < K ? group : K - start);
                int last = n == N - 1 && g == G - 1;
                vacc v;
                float d = dot_group(row + g * group_bytes, xm + start, len, bits, last, &v);
                accv = vfma_s(accv, h2f(sc[g]), v);
                acc += h2f(sc[g]) * (d - zero_of(zp, g, bits) * xs[g]);
            }
            put(y, y_bf16, m * N + n, acc + vsum(accv) + (bias ? bias[n] : 0.0f));
        }
    }
}

/* x [M, K] fp32 (K a multiple of 8, zero padded by the caller), qw [N, row_bytes], scales/zeros [R, G]
 * with R = N (rows) or 1 (one scale per tensor), xsum scratch [M, G], y [M, N]. */
void lbq_gemm(const float *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes, int bits,
              int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
              const float *bias, float *xsum, float *y) {
    gemm_core(x, M, K, qw, N, row_bytes, bits, group, G, scales, zeros, per_row, bias, xsum, y, 0);
}

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
#if LBQ_W > 1
        if ((bits == 2 || bits == 4 || bits == 8) && group % LBQ_W == 0) {
            for (int64_t g = 0; g < G; g++) {
                const float s = h2f(sc[g]), z = zero_of(zp, g, bits);
                for (int64_t k = g * group; k < (g + 1) * group && k + LBQ_W <= K; k += LBQ_W) {
                    vacc w = vsub_mul(load_w(row, k, bits), z, s);
                    if (out_bf16) store_bf16(ob + k, w);
                    else store_f32(of + k, w);
                }
            }
            k0 = K / LBQ_W * LBQ_W < G * group ? K / LBQ_W * LBQ_W : G * group;
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

/* Dequantize torch's CPU int4 layout (_convert_weight_to_int4pack_for_cpu, which depends on the CPU level
 * torch runs at: per block of `block` rows (64 or 32) and per k, block/2 bytes; byte j holds rows j (low
 * nibble) and j + block/2 (high), or with `inter` rows 2j and 2j + 1) to bf16 [N, K]. */
void lbq_dequant_int4pack_bf16(const uint8_t *w4, int64_t N, int64_t K, int64_t group, int64_t G,
                               const float *scales, const float *zeros, int64_t block, int inter, uint16_t *out) {
    const int64_t half = block / 2;
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * K / 2 >= LBQ_PAR_MIN_BYTES)
    for (int64_t nb = 0; nb < N / block; nb++) {
        const uint8_t *blk = w4 + nb * K * half;
        for (int64_t k = 0; k < K; k++) {
            int64_t g = k / group;
            const uint8_t *b = blk + k * half;
            for (int64_t j = 0; j < half; j++) {
                int64_t lo = nb * block + (inter ? 2 * j : j), hi = lo + (inter ? 1 : half);
                out[lo * K + k] = to_bf16(((float)(b[j] & 15) - zeros[lo * G + g]) * scales[lo * G + g]);
                out[hi * K + k] = to_bf16(((float)(b[j] >> 4) - zeros[hi * G + g]) * scales[hi * G + g]);
            }
        }
    }
}

/* ---------------------------------------------------------------- int8-activation GEMV
 * For decode with 2, 4 or 8-bit codes: the activations are quantized per group to int8 (absmax / 127, round
 * to nearest), then sum_k q_k x_k is an integer dot product (AVX-512 vpdpbusd: unsigned codes x signed int8,
 * 64 per instruction; AVX2 vpmaddubsw + vpmaddwd, 32; portable C) and w x = s_w s_x (dot - z sum_k xq_k) per group. Not exact: the activation rounding costs
 * about 0.2-0.5% relative error per output, like llama.cpp's Q8 activations.
 * Layout: every 64 bytes of a row hold C = 64 * (8 / bits) codes; byte j holds codes per*j + t at bits
 * [t*bits, (t+1)*bits). lbq_quant_act writes the int8 activations of each such chunk permuted so that the
 * t-th 64-byte slice is x[per*j + t], j = 0..63, which lines the codes of one bit position up with them.
 * A row of 64 c + 32 bytes (groups of 16 or 32 bytes, e.g. 4-bit rows of 576 at g64) ends in a 32-byte chunk,
 * permuted the same way with 32 in place of 64. */
#define CHUNK_BYTES(K, c0, bits) ((((K) - (c0)) * (bits) / 8) < 64 ? (((K) - (c0)) * (bits) / 8) : 64)

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
        int64_t c0 = 0, j = 0, cw = CHUNK_BYTES(K, 0, bits); /* cw: bytes of the chunk at code c0 */
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
            for (int64_t i = 0; i < group; i++) { /* code k = c0 + per * j + t goes to c0 + cw * t + j */
                int8_t q = q8(xg[i], inv);
                out[c0 + cw * t + j] = q;
                sum += q;
                if (++t == per) {
                    t = 0;
                    if (++j == cw) { j = 0; c0 += cw * per; cw = CHUNK_BYTES(K, c0, bits); }
                }
            }
            xsum[m * G + g] = sum;
        }
    }
}

int lbq_has_vnni(void) { return 1; } /* the int8 kernel exists at every level (the name is historical) */

/* y [M, N] (fp32, or bf16 bits when y_bf16) = x W^T + bias from lbq_quant_act's output. Needs the group's
 * bytes a multiple of 64 with the row length K * bits / 8 a multiple of 64, or groups of 16 or 32 bytes with
 * the row length a multiple of 32 (`chunks` counts the whole 64-byte chunks, a 32-byte tail follows).
 * Scales and zeros as everywhere here (fp16; uint8 or NULL), read per group with the codes. */
void lbq_gemv_i8(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t K,
                 const uint8_t *qw, int64_t N, int64_t row_bytes, int bits, int64_t group, int64_t G,
                 const uint16_t *scales, const uint8_t *zeros, int64_t per_row, const float *bias, void *y,
                 int y_bf16) {
    const int64_t gb = group * bits / 8, chunks = K * bits / 8 / 64;
    const float shift = (float)I8_SHIFT(bits); /* the level's dots are sum_k (q_k - shift) x_k */
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * row_bytes * M >= LBQ_PAR_MIN_BYTES)
    for (int64_t nb = 0; nb < (N + 3) / 4; nb++) {
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xm = xq + m * K;
            const float *xsm = xs + m * G;
            const int32_t *xsum_m = xsum + m * G;
            float dots[4];
            int64_t n0 = nb * 4, nr = N - n0 < 4 ? N - n0 : 4;
            i8_dots(qw, n0, nr, row_bytes, bits, xm, xsm, scales, per_row, G, gb, chunks, dots);
            for (int64_t r = 0; r < nr; r++) {
                int64_t n = n0 + r;
                const uint16_t *sc = row_scales(scales, per_row, n, G);
                const uint8_t *zp = row_zeros(zeros, per_row, n, G);
                float c0 = 0, c1 = 0;
                int64_t g = 0;
                for (; g + 1 < G; g += 2) {
                    c0 += h2f(sc[g]) * (zero_of(zp, g, bits) - shift) * xsm[g] * (float)xsum_m[g];
                    c1 += h2f(sc[g + 1]) * (zero_of(zp, g + 1, bits) - shift) * xsm[g + 1] * (float)xsum_m[g + 1];
                }
                if (g < G) c0 += h2f(sc[g]) * (zero_of(zp, g, bits) - shift) * xsm[g] * (float)xsum_m[g];
                put(y, y_bf16, m * N + n, dots[r] - (c0 + c1) + (bias ? bias[n] : 0.0f));
            }
        }
    }
}

/* ---------------------------------------------------------------- dense bf16 GEMV
 * y [M, N] = x [M, K] W^T (+ bias), W bf16 [N, K], x bf16 (bits): products exact in fp32, fp32 sums
 * (vdpbf16ps, or an 8-wide FMA of the widened values); written as bf16 (y_bf16) or fp32. K must be a multiple
 * of 32. For batch-1 heads where oneDNN's bf16 path is slow. Not offered by the generic build. */
int lbq_has_bf16(void) { return LBQ_LEVEL > 0; }
void lbq_gemv_bf16(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, int64_t N, const float *bias,
                   void *y, int y_bf16) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if(N * K * 2 * M >= LBQ_PAR_MIN_BYTES)
    for (int64_t n = 0; n < N; n++)
        for (int64_t m = 0; m < M; m++)
            put(y, y_bf16, m * N + n, bf16_dot(w + n * K, x + m * K, K) + (bias ? bias[n] : 0.0f));
}

/* lbq_quant_act then lbq_gemv_i8 in one call (one crossing from Python per layer); xq/xs/xsum are scratch. */
void lbq_linear_i8(const void *x, int x_bf16, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes,
                   int bits, int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
                   const float *bias, void *y, int y_bf16, int8_t *xq, float *xs, int32_t *xsum, int threads) {
    n_threads = threads > 0 ? threads : 1;
    lbq_quant_act(x, x_bf16, M, K, bits, group, G, xq, xs, xsum);
    lbq_gemv_i8(xq, xs, xsum, M, K, qw, N, row_bytes, bits, group, G, scales, zeros, per_row, bias, y, y_bf16);
}

/* ---------------------------------------------------------------- exact 4-bit GEMV for bf16 activations
 * At every level (lbq_has_q4bf16): with AVX-512 BF16 below (q4_prep/q4_core); elsewhere the bf16 activations
 * are widened to fp32 (exact) and go through gemm_core, whose products are exact as well (4-bit code times a
 * bf16 value fits fp32's mantissa). Scratch: 4 K + 4 G bytes per row. */
int lbq_has_q4bf16(void) { return 1; }
#if defined(LBQ_AVX512)
#include "q4bf16_avx512.h"
#else
/* The activations' side without AVX-512 BF16: x widened to fp32 into xf [M, K], sums in xsum [M, G] (by
 * gemm_core). */
static void q4_prep(const uint16_t *x, int64_t M, int64_t K, int64_t group, int64_t G, float *xf, float *xsum) {
    (void)group; (void)G; (void)xsum;
    for (int64_t i = 0; i < M * K; i++) xf[i] = bf16_to_f(x[i]);
}
static void q4_core(const float *xf, float *xsum, int64_t M, int64_t K, const uint8_t *qw, int64_t N,
                    int64_t row_bytes, int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros,
                    int64_t per_row, const float *bias, void *y, int y_bf16) {
    gemm_core(xf, M, K, qw, N, row_bytes, 4, group, G, scales, zeros, per_row, bias, xsum, y, y_bf16);
}
#define Q4X float
#endif

/* x bf16 [M, K] (K a multiple of 128), qw 4-bit rows, groups of `group` (a multiple of 128) codes; xp (4 M K
 * bytes) and xsum [M, G] scratch. */
void lbq_gemv_q4_bf16(const uint16_t *x, int64_t M, int64_t K, const uint8_t *qw, int64_t N, int64_t row_bytes,
                      int64_t group, int64_t G, const uint16_t *scales, const uint8_t *zeros, int64_t per_row,
                      const float *bias, void *y, int y_bf16, void *xp, float *xsum, int threads) {
    n_threads = threads > 0 ? threads : 1;
    q4_prep(x, M, K, group, G, (Q4X *)xp, xsum);
    q4_core((Q4X *)xp, xsum, M, K, qw, N, row_bytes, group, G, scales, zeros, per_row, bias, y, y_bf16);
}

/* Several matrices that read the same activation row (q, k and v; gate and up), for one row: the activation
 * is quantized (mode 0, int8 kernel) or prepared (mode 1, exact 4-bit bf16 kernel) once, then every matrix
 * writes its outputs at its offset in y. desc holds 8 int64 per matrix: qweight, N, row_bytes, scales,
 * zeros (0: symmetric), per_row, bias (0: none), offset into y. Scratch: 4 K + 8 G bytes. */
void lbq_multi(const int64_t *desc, int nmat, const void *x, int x_bf16, int64_t K, int bits, int64_t group,
               int64_t G, int mode, void *y, int y_bf16, void *scratch, int threads) {
    n_threads = threads > 0 ? threads : 1;
    const size_t ysz = y_bf16 ? 2 : 4;
    int8_t *xq = (int8_t *)scratch;
    Q4X *xp = (Q4X *)scratch;
    float *xs = (float *)((char *)scratch + 4 * K);
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
}
