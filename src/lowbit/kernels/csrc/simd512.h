/* AVX-512 (F/BW/DQ/VL, VNNI, BF16) pieces of qgemv.c: the fp32 group dot, the 16-wide code loader of the
 * dequantize, the VNNI int8 row dots and the bf16 dot products. Included by qgemv.c when LBQ_AVX512. */

/* 16 codes of b <= 4 bits (one little-endian 64-bit word) to 16 floats, in order. */
static inline __m512 codes16(uint64_t v, __m512i lo_shift, __m512i hi_shift, __m512i mask) {
    __m512i b = _mm512_set1_epi64((long long)v);
    __m256i lo = _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srlv_epi64(b, lo_shift), mask));
    __m256i hi = _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srlv_epi64(b, hi_shift), mask));
    return _mm512_cvtepi32_ps(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
}
static inline __m512 f16(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)); }

/* The vector part of dot_group: codes [0, k) of the group into *vec; returns k. */
static inline int64_t dot_bulk(const uint8_t *p, const float *x, int64_t len, int bits, int last_row, vacc *vec) {
    int64_t k = 0;
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
    return k;
}

/* 16 codes starting at code k of a row of `bits` in {2, 4, 8}, as floats (k a multiple of 16). */
static inline vacc load_w(const uint8_t *row, int64_t k, int bits) {
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
static inline vacc vload(const float *p) { return _mm512_loadu_ps(p); }
static inline vacc vsub_mul(vacc w, float z, float s) {
    return _mm512_mul_ps(_mm512_sub_ps(w, _mm512_set1_ps(z)), _mm512_set1_ps(s));
}
static inline void store_f32(float *o, vacc w) { _mm512_storeu_ps(o, w); }
static inline void store_bf16(uint16_t *o, vacc w) { _mm256_storeu_si256((__m256i *)o, (__m256i)_mm512_cvtneps_pbh(w)); }

/* ---- VNNI int8 row dots (see qgemv.c's int8 section for the layout) */
#define I8_SHIFT(bits) 0 /* the dots are sum_k q_k x_k */

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
                _mm_prefetch((const char *)(r0 + ahead + c * 64), _MM_HINT_T1);                            \
                _mm_prefetch((const char *)(r1 + ahead + c * 64), _MM_HINT_T1);                            \
                _mm_prefetch((const char *)(r2 + ahead + c * 64), _MM_HINT_T1);                            \
                _mm_prefetch((const char *)(r3 + ahead + c * 64), _MM_HINT_T1);                            \
                LBQ_DOT64(BITS, i0, w0, xc, mask);                                                         \
                LBQ_DOT64(BITS, i1, w1, xc, mask);                                                         \
                LBQ_DOT64(BITS, i2, w2, xc, mask);                                                         \
                LBQ_DOT64(BITS, i3, w3, xc, mask);                                                         \
            }                                                                                              \
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_set1_ps(h2f(sc0[g]) * xs[g]), a0);          \
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_set1_ps(h2f(sc0[scs + g]) * xs[g]), a1);    \
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
    float tail = 0;
    if (G * gb > 64 * chunks) { /* the row's 32-byte tail (activations of bit slice t at xc + 32 t): 256-bit VNNI */
        const __m256i w = _mm256_loadu_si256((const __m256i *)(row + chunks * 64)), m8 = _mm256_set1_epi8((char)((1 << bits) - 1));
        const int8_t *xc = xm + chunks * 64 * per;
        __m256i ai = _mm256_setzero_si256();
        for (int t = 0; t < per; t++)
            ai = _mm256_dpbusd_epi32(ai, bits == 8 ? w : _mm256_and_si256(_mm256_srli_epi16(w, t * bits), m8),
                                     _mm256_loadu_si256((const __m256i *)(xc + 32 * t)));
        int32_t d[8];
        _mm256_storeu_si256((__m256i *)d, ai);
        const int64_t g = 64 * chunks / gb;
        if (gb == 32) tail = (float)(d[0] + d[1] + d[2] + d[3] + d[4] + d[5] + d[6] + d[7]) * h2f(sc[g]) * xs[g];
        else tail = (float)(d[0] + d[1] + d[2] + d[3]) * h2f(sc[g]) * xs[g] +
                    (float)(d[4] + d[5] + d[6] + d[7]) * h2f(sc[g + 1]) * xs[g + 1];
    }
    return _mm512_reduce_add_ps(acc) + tail;
}

/* dots[r] for rows n0 .. n0 + nr - 1 (nr <= 4) of lbq_gemv_i8. */
static inline void i8_dots(const uint8_t *qw, int64_t n0, int64_t nr, int64_t row_bytes, int bits, const int8_t *xm,
                           const float *xsm, const uint16_t *scales, int64_t per_row, int64_t G, int64_t gb,
                           int64_t chunks, float *dots) {
    if (gb >= 64 && per_row && nr == 4) {
        const uint8_t *row0 = qw + n0 * row_bytes;
        const uint16_t *sc0 = row_scales(scales, 1, n0, G);
        if (bits == 4) rows4_b4(row0, row_bytes, xm, xsm, sc0, G, G, gb / 64, dots);
        else if (bits == 2) rows4_b2(row0, row_bytes, xm, xsm, sc0, G, G, gb / 64, dots);
        else rows4_b8(row0, row_bytes, xm, xsm, sc0, G, G, gb / 64, dots);
        return;
    }
    for (int64_t r = 0; r < nr; r++)
        dots[r] = row1(qw + (n0 + r) * row_bytes, bits, xm, xsm, row_scales(scales, per_row, n0 + r, G), G, gb,
                       chunks);
}

/* sum_k x[k] w[k] over K (a multiple of 32) bf16 values: vdpbf16ps, products exact in fp32. */
static inline float bf16_dot(const uint16_t *w, const uint16_t *x, int64_t K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + k), (__m512bh)_mm512_loadu_si512(x + k));
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w + k + 32), (__m512bh)_mm512_loadu_si512(x + k + 32));
    }
    for (; k + 32 <= K; k += 32)
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + k), (__m512bh)_mm512_loadu_si512(x + k));
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
