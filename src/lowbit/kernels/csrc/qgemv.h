/* Shared declarations of the packed-linear kernels (qgemv.c) and the decode layer (decode.c), which are built
 * into one shared library: the ISA detection, bf16 conversions and the entry points decode.c calls. */
#ifndef LBQ_QGEMV_H
#define LBQ_QGEMV_H
#include <stdint.h>
#include <string.h>
#include <math.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
#include <immintrin.h>
#define LBQ_AVX512 1
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

void lbq_multi(const int64_t *desc, int nmat, const void *x, int x_bf16, int64_t K, int bits, int64_t group,
               int64_t G, int mode, void *y, int y_bf16, void *scratch, int threads);
void lbq_rmsnorm(const void *x, const void *w, int64_t M, int64_t H, float eps, int bf16, void *y);
void lbq_attn1(const float *q, const float *K, const float *V, int64_t nh, int64_t nkv, int64_t cap, int64_t S,
               int64_t hd, float scale, float *out, float *p);
#endif
