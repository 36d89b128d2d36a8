/* Batch-1 decode helpers of the lean forward: RMSNorm, one-query attention and a whole Llama-style decoder
 * layer for one token (every matmul through qgemv.c's lbq_multi). The library is built from this file, which
 * includes qgemv.c: one translation unit, so that the compiler optimises lbq_layer together with the kernels it
 * calls (built from two units, the int8 decode layer measured 10% slower). qgemv.c also builds on its own. */
#include "qgemv.c"

/* transformers' RMSNorm: xn = x / sqrt(mean(x^2) + eps) in fp32, rounded to the input dtype, then times the
 * weight in that dtype. x, w, y bf16 (bits) when bf16 = 1, else fp32. */
void lbq_rmsnorm(const void *x, const void *w, int64_t M, int64_t H, float eps, int bf16, void *y) {
    for (int64_t m = 0; m < M; m++) {
        float ss = 0;
        for (int64_t i = 0; i < H; i++) {
            float v = bf16 ? bf16_to_f(((const uint16_t *)x)[m * H + i]) : ((const float *)x)[m * H + i];
            ss += v * v;
        }
        float r = 1.0f / sqrtf(ss / (float)H + eps);
        for (int64_t i = 0; i < H; i++) {
            if (bf16) {
                float v = bf16_to_f(((const uint16_t *)x)[m * H + i]);
                float xn = bf16_to_f(to_bf16(v * r));
                ((uint16_t *)y)[m * H + i] = to_bf16(bf16_to_f(((const uint16_t *)w)[i]) * xn);
            } else {
                ((float *)y)[m * H + i] = ((const float *)w)[i] * (((const float *)x)[m * H + i] * r);
            }
        }
    }
}

/* One query's attention over S cached positions: q [nh, hd], K and V [nkv, cap, hd] (fp32), head h reads KV
 * head h / (nh / nkv); out [nh, hd]; p is scratch of S floats. */
void lbq_attn1(const float *q, const float *K, const float *V, int64_t nh, int64_t nkv, int64_t cap, int64_t S,
               int64_t hd, float scale, float *out, float *p) {
    const int64_t rep = nh / nkv;
    for (int64_t h = 0; h < nh; h++) {
        const float *qh = q + h * hd, *Kh = K + (h / rep) * cap * hd, *Vh = V + (h / rep) * cap * hd;
        float mx = -INFINITY;
        for (int64_t j = 0; j < S; j++) {
            float d = dotf(qh, Kh + j * hd, hd);
            p[j] = d * scale;
            mx = p[j] > mx ? p[j] : mx;
        }
        float sum = 0;
        for (int64_t j = 0; j < S; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
        float inv = 1.0f / sum;
        float *oh = out + h * hd;
        for (int64_t i = 0; i < hd; i++) oh[i] = 0;
        for (int64_t j = 0; j < S; j++) {
            const float *vj = Vh + j * hd;
            float pj = p[j] * inv;
            for (int64_t i = 0; i < hd; i++) oh[i] += pj * vj[i]; /* vectorised by the compiler at -O3 */
        }
    }
}

/* ---------------------------------------------------------------- one decoder layer for one token
 * Llama-style (pre-RMSNorm, grouped-query attention with rotate-half RoPE, SwiGLU MLP) with bf16 hidden
 * states and every matmul through lbq_multi (mode 0: int8 activations, 1: exact 4-bit bf16), computing what
 * models/lean.py's per-op path computes, with the same bf16 rounding after each op. h [H] bf16 is updated in
 * place; kc/vc are this layer's fp32 caches [nkv, cap, hd]; cs/sn the bf16 cos/sin rows of position pos (sn
 * carries the sign of rotate_half). Needs nh * hd == H. dims = {H, I, glen_h, G_h, glen_i, G_i}. */
static inline uint16_t bf_mul(uint16_t a, uint16_t b) { return to_bf16(bf16_to_f(a) * bf16_to_f(b)); }
static inline uint16_t bf_add(uint16_t a, uint16_t b) { return to_bf16(bf16_to_f(a) + bf16_to_f(b)); }

void lbq_layer(uint16_t *h, const int64_t *dims, const uint16_t *ln1, const uint16_t *ln2, float eps,
               const int64_t *d_qkv, const int64_t *d_o, const int64_t *d_gu, const int64_t *d_down, int mode,
               int bits, const uint16_t *cs, const uint16_t *sn, float *kc, float *vc, int64_t cap, int64_t pos,
               int64_t nh, int64_t nkv, int64_t hd, float scale, void *scratch, int threads) {
    const int64_t H = dims[0], I = dims[1], gh = dims[2], Gh = dims[3], gi = dims[4], Gi = dims[5];
    const int64_t nq = nh * hd, nk = nkv * hd, half = hd / 2;
    uint16_t *x = (uint16_t *)scratch, *qkv = x + H, *ob = qkv + nq + 2 * nk, *gu = ob + H, *mm = gu + 2 * I;
    uint16_t *t = mm + I;
    float *qf = (float *)(t + H + I), *of = qf + nq, *p = of + nq;
    void *ms = p + cap; /* lbq_multi's scratch: 4 max(H, I) + 8 max(G) bytes */
    lbq_rmsnorm(h, ln1, 1, H, eps, 1, x);
    lbq_multi(d_qkv, 3, x, 1, H, bits, gh, Gh, mode, qkv, 1, ms, threads);
    uint16_t *q = qkv, *k = qkv + nq, *v = k + nk;
    for (int64_t a = 0; a < nh + nkv; a++) { /* RoPE on the q heads, then the k heads: x cos + roll(x) sin */
        uint16_t *r = a < nh ? q + a * hd : k + (a - nh) * hd;
        for (int64_t i = 0; i < hd; i++) t[i] = r[i];
        for (int64_t i = 0; i < hd; i++) r[i] = bf_add(bf_mul(t[i], cs[i]), bf_mul(t[(i + half) % hd], sn[i]));
    }
    for (int64_t a = 0; a < nkv; a++)
        for (int64_t i = 0; i < hd; i++) {
            kc[(a * cap + pos) * hd + i] = bf16_to_f(k[a * hd + i]);
            vc[(a * cap + pos) * hd + i] = bf16_to_f(v[a * hd + i]);
        }
    for (int64_t i = 0; i < nq; i++) qf[i] = bf16_to_f(q[i]);
    lbq_attn1(qf, kc, vc, nh, nkv, cap, pos + 1, hd, scale, of, p);
    for (int64_t i = 0; i < nq; i++) ob[i] = to_bf16(of[i]);
    lbq_multi(d_o, 1, ob, 1, H, bits, gh, Gh, mode, t, 1, ms, threads);
    for (int64_t i = 0; i < H; i++) h[i] = bf_add(h[i], t[i]);
    lbq_rmsnorm(h, ln2, 1, H, eps, 1, x);
    lbq_multi(d_gu, 2, x, 1, H, bits, gh, Gh, mode, gu, 1, ms, threads);
    for (int64_t i = 0; i < I; i++) { /* silu(gate) * up, each rounded to bf16 */
        float g = bf16_to_f(gu[i]);
        mm[i] = bf_mul(to_bf16(g / (1.0f + expf(-g))), gu[I + i]);
    }
    lbq_multi(d_down, 1, mm, 1, I, bits, gi, Gi, mode, t, 1, ms, threads);
    for (int64_t i = 0; i < H; i++) h[i] = bf_add(h[i], t[i]);
}
