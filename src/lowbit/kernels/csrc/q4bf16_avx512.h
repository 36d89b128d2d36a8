/* The exact 4-bit GEMV for bf16 activations with AVX-512 BF16 (included by qgemv.c when LBQ_AVX512).
 * Codes become bf16 numbers without a conversion: a 16-bit word 0x4300 | q is the bf16 of 128 + q (exactly),
 * and vdpbf16ps sums 32 products per instruction, each exact in fp32. So sum_k (128 + q_k) x_k - 128 sum_k x_k
 * = sum_k q_k x_k up to fp32 rounding, and w x = s (sum q x - z sum x) per group as in lbq_gemm. The bf16
 * activations are permuted per 128 codes like lbq_quant_act's (t-th half: x[2j + t]). Groups of a multiple
 * of 128 codes; the same L2 prefetch as lbq_gemv_i8. */
#define Q4X uint16_t

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

static void q4_core(const uint16_t *xp, float *xsum, int64_t M, int64_t K, const uint8_t *qw, int64_t N,
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

