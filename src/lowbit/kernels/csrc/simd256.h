/* AVX2 + FMA + F16C pieces of qgemv.c (the same functions as simd512.h, 8 floats wide): the fp32 group dot,
 * the code loader of the dequantize, int8 row dots with vpmaddubsw/vpmaddwd (as llama.cpp's AVX2 Q4_0 x
 * Q8_0) and the bf16 dot products (bf16 -> fp32 is a shift, so the products stay exact). Included by qgemv.c
 * when LBQ_AVX2. */

static inline __m256 cvt8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }

/* 16 code bytes in order to two vectors of 8 floats, fma'd with x[0..16) into a and b. */
#define LBQ_FMA16(bytes, x, a, b)                                                                          \
    do {                                                                                                   \
        __m128i by_ = (bytes);                                                                             \
        a = _mm256_fmadd_ps(cvt8(by_), _mm256_loadu_ps(x), a);                                             \
        b = _mm256_fmadd_ps(cvt8(_mm_srli_si128(by_, 8)), _mm256_loadu_ps((x) + 8), b);                    \
    } while (0)

/* The vector part of dot_group: codes [0, k) of the group into *vec; returns k. */
static inline int64_t dot_bulk(const uint8_t *p, const float *x, int64_t len, int bits, int last_row, vacc *vec) {
    int64_t k = 0;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    if (bits == 8) {
        for (; k + 32 <= len; k += 32) {
            LBQ_FMA16(_mm_loadu_si128((const __m128i *)(p + k)), x + k, a0, a1);
            LBQ_FMA16(_mm_loadu_si128((const __m128i *)(p + k + 16)), x + k + 16, a2, a3);
        }
    } else if (bits == 4) {
        const __m128i m4 = _mm_set1_epi8(15);
        for (; k + 32 <= len; k += 32) { /* 16 bytes: 32 codes */
            __m128i b = _mm_loadu_si128((const __m128i *)(p + k / 2));
            __m128i l = _mm_and_si128(b, m4), h = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
            LBQ_FMA16(_mm_unpacklo_epi8(l, h), x + k, a0, a1);
            LBQ_FMA16(_mm_unpackhi_epi8(l, h), x + k + 16, a2, a3);
        }
    } else if (bits == 2) {
        const __m128i m2 = _mm_set1_epi8(3);
        for (; k + 64 <= len; k += 64) { /* 16 bytes: 64 codes */
            __m128i b = _mm_loadu_si128((const __m128i *)(p + k / 4));
            __m128i c0 = _mm_and_si128(b, m2), c1 = _mm_and_si128(_mm_srli_epi16(b, 2), m2);
            __m128i c2 = _mm_and_si128(_mm_srli_epi16(b, 4), m2), c3 = _mm_and_si128(_mm_srli_epi16(b, 6), m2);
            __m128i e01l = _mm_unpacklo_epi8(c0, c1), e23l = _mm_unpacklo_epi8(c2, c3);
            __m128i e01h = _mm_unpackhi_epi8(c0, c1), e23h = _mm_unpackhi_epi8(c2, c3);
            LBQ_FMA16(_mm_unpacklo_epi16(e01l, e23l), x + k, a0, a1);
            LBQ_FMA16(_mm_unpackhi_epi16(e01l, e23l), x + k + 16, a2, a3);
            LBQ_FMA16(_mm_unpacklo_epi16(e01h, e23h), x + k + 32, a0, a1);
            LBQ_FMA16(_mm_unpackhi_epi16(e01h, e23h), x + k + 48, a2, a3);
        }
    } else if (bits == 3) {
        const __m256i shift = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21), mask = _mm256_set1_epi32(7);
        /* a 4-byte load reads one byte past the 3 needed: safe inside the buffer, not at its very end */
        int64_t fast_end = last_row ? len - 8 : len;
        for (; k + 16 <= fast_end; k += 16) {
            uint32_t v0, v1;
            memcpy(&v0, p + k / 8 * 3, 4);
            memcpy(&v1, p + k / 8 * 3 + 3, 4);
            __m256i c0 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)v0), shift), mask);
            __m256i c1 = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)v1), shift), mask);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c0), _mm256_loadu_ps(x + k), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c1), _mm256_loadu_ps(x + k + 8), a1);
        }
    }
    *vec = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    return k;
}

/* 8 codes starting at code k of a row of `bits` in {2, 4, 8}, as floats (k a multiple of 8). */
static inline vacc load_w(const uint8_t *row, int64_t k, int bits) {
    if (bits == 8) return cvt8(_mm_loadl_epi64((const __m128i *)(row + k)));
    if (bits == 4) {
        uint32_t w;
        memcpy(&w, row + k / 2, 4);
        __m128i b = _mm_cvtsi32_si128((int)w), m4 = _mm_set1_epi8(15);
        return cvt8(_mm_unpacklo_epi8(_mm_and_si128(b, m4), _mm_and_si128(_mm_srli_epi16(b, 4), m4)));
    }
    uint16_t w;
    memcpy(&w, row + k / 4, 2);
    __m128i b = _mm_cvtsi32_si128((int)w), m2 = _mm_set1_epi8(3);
    __m128i e01 = _mm_unpacklo_epi8(_mm_and_si128(b, m2), _mm_and_si128(_mm_srli_epi16(b, 2), m2));
    __m128i e23 = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m2), _mm_and_si128(_mm_srli_epi16(b, 6), m2));
    return cvt8(_mm_unpacklo_epi16(e01, e23));
}
static inline vacc vload(const float *p) { return _mm256_loadu_ps(p); }
static inline vacc vsub_mul(vacc w, float z, float s) {
    return _mm256_mul_ps(_mm256_sub_ps(w, _mm256_set1_ps(z)), _mm256_set1_ps(s));
}
static inline void store_f32(float *o, vacc w) { _mm256_storeu_ps(o, w); }
static inline void store_bf16(uint16_t *o, vacc w) { /* to_bf16 on 8 lanes: round to nearest even */
    __m256i u = _mm256_castps_si256(w);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
    __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(u, u), 0x08);
    _mm_storeu_si128((__m128i *)o, _mm256_castsi256_si128(p));
}

/* ---- int8 row dots (see qgemv.c's int8 section for the layout). vpmaddubsw multiplies unsigned by signed
 * bytes and adds pairs to int16: 2 * 15 * 127 fits for 2/4-bit codes; 8-bit codes are made signed first
 * (q - 128, vpsignb trick), so the dots are sum_k (q_k - I8_SHIFT) x_k and the caller corrects the zero. */
#define I8_SHIFT(bits) ((bits) == 8 ? 128 : 0)

/* 8 int32 partial dots of 32 bytes of codes w with their activations: bit slice t at xc + stride * t (the
 * 32-byte half h of a 64-byte chunk: xc + 32 h, stride 64; a row's 32-byte tail: stride 32). */
static inline __attribute__((always_inline)) __m256i i8_dot32(__m256i w, const int8_t *xc, int stride, int bits) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (bits == 8) {
        __m256i ws = _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80));
        __m256i x = _mm256_loadu_si256((const __m256i *)xc);
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(x, ws)), ones);
    }
    const __m256i mask = _mm256_set1_epi8((char)((1 << bits) - 1));
    __m256i s = _mm256_setzero_si256();
    for (int t = 0; t < 8 / bits; t++) { /* at most 4 x 2 * 15 * 127 (4-bit) per int16: no overflow */
        __m256i c = _mm256_and_si256(_mm256_srli_epi16(w, t * bits), mask);
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c, _mm256_loadu_si256((const __m256i *)(xc + stride * t))));
    }
    return _mm256_madd_epi16(s, ones);
}
static inline __attribute__((always_inline)) __m256i i8_half(__m256i w, const int8_t *xc, int h, int bits) {
    return i8_dot32(w, xc + 32 * h, 64, bits);
}

/* The group scales s_w s_x of 32 bytes of codes whose first group is g: one (groups of 32 bytes) or two in
 * lanes 0-3 and 4-7 (16 bytes). */
static inline __m256 i8_scales32(const uint16_t *sc, const float *xs, int64_t g, int64_t gb) {
    if (gb == 32) return _mm256_set1_ps(h2f(sc[g]) * xs[g]);
    return _mm256_setr_m128(_mm_set1_ps(h2f(sc[g]) * xs[g]), _mm_set1_ps(h2f(sc[g + 1]) * xs[g + 1]));
}

/* R rows (R <= 4, a constant after inlining) from row0 (stride row_bytes, scales sc0 + r * scs): out[r] =
 * sum_g s_w[r, g] s_x[g] dot_g. Groups of 16, 32 or a multiple of 64 bytes. */
static inline __attribute__((always_inline)) void i8_rows(const uint8_t *row0, int64_t row_bytes, const int R,
                                                          const int bits, const int8_t *xm, const float *xs,
                                                          const uint16_t *sc0, int64_t scs, int64_t G, int64_t gb,
                                                          int64_t chunks, float *out) {
    const int per = 8 / bits;
    const int64_t ahead = ahead_of(row_bytes);
    __m256 acc[4];
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    if (gb >= 64) {
        const int64_t cpg = gb / 64;
        for (int64_t g = 0; g < G; g++) {
            __m256i ia[4];
            for (int r = 0; r < R; r++) ia[r] = _mm256_setzero_si256();
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                const int8_t *xc = xm + c * 64 * per;
                for (int r = 0; r < R; r++) {
                    const uint8_t *p = row0 + r * row_bytes + c * 64;
                    _mm_prefetch((const char *)(p + ahead), _MM_HINT_T1);
                    ia[r] = _mm256_add_epi32(ia[r], i8_half(_mm256_loadu_si256((const __m256i *)p), xc, 0, bits));
                    ia[r] = _mm256_add_epi32(ia[r], i8_half(_mm256_loadu_si256((const __m256i *)(p + 32)), xc, 1,
                                                            bits));
                }
            }
            for (int r = 0; r < R; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[r]), _mm256_set1_ps(h2f(sc0[r * scs + g]) * xs[g]),
                                         acc[r]);
        }
    } else {
        for (int64_t c = 0; c < chunks; c++) {
            const int8_t *xc = xm + c * 64 * per;
            for (int r = 0; r < R; r++) {
                const uint8_t *p = row0 + r * row_bytes + c * 64;
                const uint16_t *sc = sc0 + r * scs;
                _mm_prefetch((const char *)(p + ahead), _MM_HINT_T1);
                for (int h = 0; h < 2; h++) {
                    __m256 d = _mm256_cvtepi32_ps(i8_half(_mm256_loadu_si256((const __m256i *)(p + 32 * h)), xc, h,
                                                          bits));
                    acc[r] = _mm256_fmadd_ps(d, i8_scales32(sc, xs, (64 * c + 32 * h) / gb, gb), acc[r]);
                }
            }
        }
        if (G * gb > 64 * chunks) { /* the row's 32-byte tail */
            const int8_t *xc = xm + chunks * 64 * per;
            for (int r = 0; r < R; r++) {
                __m256 d = _mm256_cvtepi32_ps(i8_dot32(_mm256_loadu_si256((const __m256i *)(row0 + r * row_bytes +
                                                                                             chunks * 64)), xc, 32, bits));
                acc[r] = _mm256_fmadd_ps(d, i8_scales32(sc0 + r * scs, xs, 64 * chunks / gb, gb), acc[r]);
            }
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum256(acc[r]);
}

#define LBQ_I8_ROWS(R, BITS) i8_rows(qw + n0 * row_bytes, row_bytes, R, BITS, xm, xsm, sc0, scs, G, gb, chunks, dots)

/* dots[r] for rows n0 .. n0 + nr - 1 (nr <= 4) of lbq_gemv_i8. */
static void i8_dots(const uint8_t *qw, int64_t n0, int64_t nr, int64_t row_bytes, int bits, const int8_t *xm,
                    const float *xsm, const uint16_t *scales, int64_t per_row, int64_t G, int64_t gb, int64_t chunks,
                    float *dots) {
    const uint16_t *sc0 = row_scales(scales, per_row, n0, G);
    const int64_t scs = per_row ? G : 0;
    if (nr == 4) {
        if (bits == 4) LBQ_I8_ROWS(4, 4);
        else if (bits == 2) LBQ_I8_ROWS(4, 2);
        else LBQ_I8_ROWS(4, 8);
        return;
    }
    for (int64_t r = 0; r < nr; r++, n0++) {
        sc0 = row_scales(scales, per_row, n0, G);
        if (bits == 4) LBQ_I8_ROWS(1, 4);
        else if (bits == 2) LBQ_I8_ROWS(1, 2);
        else LBQ_I8_ROWS(1, 8);
        dots++;
    }
}

/* sum_k x[k] w[k] over K (a multiple of 32) bf16 values, products exact in fp32. */
static inline __m256 bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline float bf16_dot(const uint16_t *w, const uint16_t *x, int64_t K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(bf16x8(w + k), bf16x8(x + k), a0);
        a1 = _mm256_fmadd_ps(bf16x8(w + k + 8), bf16x8(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(bf16x8(w + k + 16), bf16x8(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(bf16x8(w + k + 24), bf16x8(x + k + 24), a3);
    }
    return hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}
