/* Exact Ollivier-Ricci curvature transport problems of unweighted graphs, all edges in one call.
 *
 * For an edge (u, v) (deg u <= deg v) the measures m_u, m_v (idleness alpha = p / q) scaled by
 * L = q * lcm(deg u, deg v) have integer masses.  Mass common to both stays in place; the signed rest
 * sigma = m_u - m_v is a transport problem from supply nodes S to demand nodes T inside N[u] u N[v], where
 * every distance is 1, 2 or 3 (read from a dense uint8 table, or from sorted keys of A and A^2).
 *
 * Primal-dual min-cost flow.  Path costs are 1, 2 or 3 and a direct pair at cost <= 3 always exists, so
 *   phase 1: max flow over the cost-1 pairs                       (F1 units at cost 1),
 *   phase 2: max flow over the admissible network of cost-2 paths  (G2 units at cost 2),
 *   rest:    M - F1 - G2 units at cost 3.
 * Admissibility in phase 2 comes from the reduced-cost distances after phase 1 (label 1: distance 0, label 2:
 * distance 1): cost-2 pairs from label-1 supplies to label-2 demands, and cost-1 pairs inside one label.
 * Each max flow is a greedy pass and then Dinic on an implicit bipartite network: bitset rows of the cost-1
 * and cost-2 pairs per supply, per-phase allowed rows (bitsets), residual supplies and demands, and the flows
 * on pairs as entries listed per demand (the reverse arcs).  Integer arithmetic throughout,
 * so (cost, scale) is exact.  Edges are spread over POSIX threads (an atomic counter over chunks of edges;
 * no OpenMP, whose idle workers would spin between calls).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int64_t i64;

typedef struct {
    const uint8_t *dense; /* n x n table of min(dist, 3), or NULL */
    const i64 *k1, *k2;   /* sorted keys r * n + c of A and A^2 (used when dense is NULL) */
    i64 n1, n2, n;
} dist_t;

static int has_key(const i64 *k, i64 cnt, i64 want) {
    i64 lo = 0, hi = cnt;
    while (lo < hi) {
        i64 mid = (lo + hi) >> 1;
        if (k[mid] < want) lo = mid + 1; else hi = mid;
    }
    return lo < cnt && k[lo] == want;
}

static inline int dist(const dist_t *d, i64 a, i64 b) {
    if (d->dense) return d->dense[a * d->n + b];
    i64 key = a * d->n + b;
    if (has_key(d->k1, d->n1, key)) return 1;
    if (has_key(d->k2, d->n2, key)) return 2;
    return 3;
}

/* per-thread workspace, grown on demand */
typedef struct {
    i64 *sid, *did;        /* graph ids of supplies / demands */
    i64 *rs, *rd;          /* residual supply / demand */
    uint64_t *R1, *R2, *AR; /* ns x nw bitsets: cost-1 pairs, cost-2 pairs, allowed pairs of this phase */
    uint64_t *vis;          /* nw words: demands already reached */
    int nw;
    int *cur_s, *cur_d;     /* Dinic current arcs: demand position in the row / entry id */
    int *lev_s, *lev_d;    /* Dinic levels */
    uint8_t *lab_s, *lab_d;
    int *queue;            /* BFS queue: supply i as i, demand j as ns + j */
    int *ent_head;         /* first flow entry per demand */
    int *ent_s, *ent_next; /* flow entries: supply, next entry of the same demand */
    i64 *ent_f;            /* flow on the entry */
    i64 cap_s, cap_d, cap_q, cap_pairs, cap_ent;
    int n_ent, lev_t;
    int ns, nd;
} work_t;

static int grow(void **p, size_t elem, i64 count) {
    void *q = realloc(*p, elem * (size_t)(count > 0 ? count : 1));
    if (!q) return -1;
    *p = q;
    return 0;
}

static int reserve(work_t *w, i64 ns, i64 nd, i64 pairs) {
    if (ns > w->cap_s) {
        if (grow((void **)&w->sid, 8, ns) || grow((void **)&w->rs, 8, ns) ||
            grow((void **)&w->cur_s, 4, ns) || grow((void **)&w->lev_s, 4, ns) || grow((void **)&w->lab_s, 1, ns))
            return -1;
        w->cap_s = ns;
    }
    if (nd > w->cap_d) {
        if (grow((void **)&w->did, 8, nd) || grow((void **)&w->rd, 8, nd) || grow((void **)&w->cur_d, 4, nd) ||
            grow((void **)&w->lev_d, 4, nd) || grow((void **)&w->lab_d, 1, nd) || grow((void **)&w->ent_head, 4, nd) ||
            grow((void **)&w->vis, 8, 2 * (nd / 64 + 1)))
            return -1;
        w->cap_d = nd;
    }
    if (ns + nd > w->cap_q) {
        if (grow((void **)&w->queue, 4, ns + nd)) return -1;
        w->cap_q = ns + nd;
    }
    if (pairs > w->cap_pairs) {
        if (grow((void **)&w->R1, 8, pairs) || grow((void **)&w->R2, 8, pairs) || grow((void **)&w->AR, 8, pairs))
            return -1;
        w->cap_pairs = pairs;
    }
    return 0;
}

static void release(work_t *w) {
    free(w->sid); free(w->did); free(w->rs); free(w->rd); free(w->R1); free(w->R2); free(w->AR); free(w->vis);
    free(w->cur_s); free(w->cur_d); free(w->lev_s); free(w->lev_d); free(w->lab_s); free(w->lab_d);
    free(w->queue); free(w->ent_head); free(w->ent_s); free(w->ent_next); free(w->ent_f);
}

/* add flow f on pair (i, j): merged into j's newest entry when it is for the same supply */
static int add_flow(work_t *w, int i, int j, i64 f) {
    int h = w->ent_head[j];
    if (h >= 0 && w->ent_s[h] == i) { w->ent_f[h] += f; return 0; }
    if (w->n_ent >= w->cap_ent) {
        i64 c = w->cap_ent ? 2 * w->cap_ent : 256;
        if (grow((void **)&w->ent_s, 4, c) || grow((void **)&w->ent_next, 4, c) || grow((void **)&w->ent_f, 8, c))
            return -1;
        w->cap_ent = c;
    }
    int e = w->n_ent++;
    w->ent_s[e] = i; w->ent_f[e] = f; w->ent_next[e] = h;
    w->ent_head[j] = e;
    return 0;
}

static inline int has_bit(const uint64_t *row, int j) { return (int)((row[j >> 6] >> (j & 63)) & 1u); }

/* next set bit of a row at position >= j, or nd */
static inline int next_bit(const uint64_t *row, int j, int nd) {
    if (j >= nd) return nd;
    int k = j >> 6;
    uint64_t word = row[k] & (~(uint64_t)0 << (j & 63));
    while (!word) {
        if (++k << 6 >= nd) return nd;
        word = row[k];
    }
    int b = (k << 6) + __builtin_ctzll(word);
    return b < nd ? b : nd;
}

/* allowed rows for this phase.  phase 1: the cost-1 pairs.  phase 2 (admissible): cost-2 pairs from label 1 to
 * label 2, cost-1 pairs inside one label.  An entry's reverse arc is usable when its pair is allowed. */
static void build_rows(work_t *w, int phase) {
    int ns = w->ns, nd = w->nd, nw = w->nw;
    if (phase == 1) {
        memcpy(w->AR, w->R1, sizeof(uint64_t) * (size_t)ns * nw);
        return;
    }
    uint64_t *L1 = w->vis, *L2 = w->vis + nw; /* demand label bitsets (vis has room for 2 nw words) */
    memset(L1, 0, sizeof(uint64_t) * 2 * (size_t)nw);
    for (int j = 0; j < nd; j++) {
        if (w->lab_d[j] == 1) L1[j >> 6] |= (uint64_t)1 << (j & 63);
        else if (w->lab_d[j] == 2) L2[j >> 6] |= (uint64_t)1 << (j & 63);
    }
    for (int i = 0; i < ns; i++) {
        uint64_t *ar = w->AR + (i64)i * nw;
        const uint64_t *r1 = w->R1 + (i64)i * nw, *r2 = w->R2 + (i64)i * nw;
        if (w->lab_s[i] == 1)
            for (int k = 0; k < nw; k++) ar[k] = (r2[k] & L2[k]) | (r1[k] & L1[k]);
        else if (w->lab_s[i] == 2)
            for (int k = 0; k < nw; k++) ar[k] = r1[k] & L2[k];
        else
            memset(ar, 0, sizeof(uint64_t) * (size_t)nw);
    }
}

/* greedy s -> i -> j -> t pushes along the allowed rows */
static i64 greedy(work_t *w, int *err) {
    i64 sent = 0;
    int nd = w->nd;
    for (int i = 0; i < w->ns; i++) {
        const uint64_t *ar = w->AR + (i64)i * w->nw;
        for (int j = next_bit(ar, 0, nd); j < nd && w->rs[i] > 0; j = next_bit(ar, j + 1, nd)) {
            if (w->rd[j] <= 0) continue;
            i64 f = w->rs[i] < w->rd[j] ? w->rs[i] : w->rd[j];
            w->rs[i] -= f; w->rd[j] -= f; sent += f;
            if (add_flow(w, i, j, f)) *err = 1;
        }
    }
    return sent;
}

/* Dinic BFS from s over: s -> i (rs > 0), i -> j (allowed row), j -> i (entry flow > 0, pair allowed),
 * j -> t (rd > 0).  Returns whether t is reachable; levels in lev_s / lev_d / lev_t. */
static int bfs(work_t *w) {
    int ns = w->ns, nd = w->nd, nw = w->nw, qh = 0, qt = 0;
    for (int i = 0; i < ns; i++) w->lev_s[i] = -1;
    for (int j = 0; j < nd; j++) w->lev_d[j] = -1;
    memset(w->vis, 0, sizeof(uint64_t) * (size_t)nw);
    w->lev_t = -1;
    for (int i = 0; i < ns; i++)
        if (w->rs[i] > 0) { w->lev_s[i] = 1; w->queue[qt++] = i; }
    while (qh < qt) {
        int x = w->queue[qh++];
        if (x < ns) {
            int lv = w->lev_s[x];
            if (w->lev_t >= 0 && lv + 2 > w->lev_t) continue;
            const uint64_t *ar = w->AR + (i64)x * nw;
            for (int k = 0; k < nw; k++) {
                uint64_t fresh = ar[k] & ~w->vis[k];
                if (!fresh) continue;
                w->vis[k] |= fresh;
                while (fresh) {
                    int j = (k << 6) + __builtin_ctzll(fresh);
                    fresh &= fresh - 1;
                    w->lev_d[j] = lv + 1;
                    w->queue[qt++] = ns + j;
                }
            }
        } else {
            int j = x - ns, lv = w->lev_d[j];
            if (w->rd[j] > 0 && w->lev_t < 0) w->lev_t = lv + 1;
            if (w->lev_t >= 0 && lv + 1 >= w->lev_t) continue;
            for (int e = w->ent_head[j]; e >= 0; e = w->ent_next[e]) {
                int i = w->ent_s[e];
                if (w->ent_f[e] <= 0 || w->lev_s[i] >= 0 || !has_bit(w->AR + (i64)i * nw, j)) continue;
                w->lev_s[i] = lv + 1;
                w->queue[qt++] = i;
            }
        }
    }
    return w->lev_t >= 0;
}

static i64 dfs_d(work_t *w, int j, i64 f, int *err);

static i64 dfs_s(work_t *w, int i, i64 f, int *err) {
    const uint64_t *ar = w->AR + (i64)i * w->nw;
    int nd = w->nd;
    for (int j = next_bit(ar, w->cur_s[i], nd); j < nd; j = next_bit(ar, j + 1, nd)) {
        w->cur_s[i] = j;
        if (w->lev_d[j] != w->lev_s[i] + 1) continue;
        i64 got = dfs_d(w, j, f, err);
        if (got > 0) {
            if (add_flow(w, i, j, got)) *err = 1;
            return got;
        }
    }
    w->cur_s[i] = nd;
    return 0;
}

static i64 dfs_d(work_t *w, int j, i64 f, int *err) {
    if (w->rd[j] > 0 && w->lev_t == w->lev_d[j] + 1) {
        i64 g = f < w->rd[j] ? f : w->rd[j];
        w->rd[j] -= g;
        return g;
    }
    for (; w->cur_d[j] >= 0; w->cur_d[j] = w->ent_next[w->cur_d[j]]) {
        int e = w->cur_d[j], i = w->ent_s[e];
        if (w->ent_f[e] <= 0 || w->lev_s[i] != w->lev_d[j] + 1 || !has_bit(w->AR + (i64)i * w->nw, j)) continue;
        i64 got = dfs_s(w, i, f < w->ent_f[e] ? f : w->ent_f[e], err);
        if (got > 0) {
            w->ent_f[e] -= got;
            return got;
        }
    }
    return 0;
}

static i64 maxflow(work_t *w, i64 limit, int *err) {
    i64 total = greedy(w, err);
    while (total < limit && bfs(w)) {
        for (int i = 0; i < w->ns; i++) w->cur_s[i] = 0;
        for (int j = 0; j < w->nd; j++) w->cur_d[j] = w->ent_head[j];
        for (int i = 0; i < w->ns; i++) {
            if (w->lev_s[i] != 1) continue;
            while (w->rs[i] > 0) {
                i64 got = dfs_s(w, i, w->rs[i], err);
                if (got <= 0) break;
                w->rs[i] -= got;
                total += got;
            }
        }
    }
    return total;
}

/* mark the demands of row & ~vis with label `pass` and queue them */
static int spread(work_t *w, const uint64_t *row, uint8_t pass, int qt) {
    for (int k = 0; k < w->nw; k++) {
        uint64_t fresh = row[k] & ~w->vis[k];
        if (!fresh) continue;
        w->vis[k] |= fresh;
        while (fresh) {
            int j = (k << 6) + __builtin_ctzll(fresh);
            fresh &= fresh - 1;
            w->lab_d[j] = pass;
            w->queue[qt++] = w->ns + j;
        }
    }
    return qt;
}

/* phase-2 labels: 1 = reduced distance 0 from s (zero arcs: s -> i with rs > 0, cost-1 pairs forward, flowed
 * pairs backward), 2 = reduced distance 1 (one cost-2 pair from label 1, then zero arcs).  Returns whether t
 * has label 2 (some residual demand is reachable at cost 2). */
static int label(work_t *w) {
    int ns = w->ns, nd = w->nd, nw = w->nw, qh = 0, qt = 0, reach_t = 0;
    memset(w->lab_s, 0, (size_t)ns);
    memset(w->lab_d, 0, (size_t)nd);
    memset(w->vis, 0, sizeof(uint64_t) * (size_t)nw);
    for (int i = 0; i < ns; i++)
        if (w->rs[i] > 0) { w->lab_s[i] = 1; w->queue[qt++] = i; }
    for (uint8_t pass = 1; pass <= 2; pass++) {
        while (qh < qt) {
            int x = w->queue[qh++];
            if (x < ns) {
                qt = spread(w, w->R1 + (i64)x * nw, pass, qt);
            } else {
                int j = x - ns;
                if (w->rd[j] > 0 && pass == 2) reach_t = 1;
                for (int e = w->ent_head[j]; e >= 0; e = w->ent_next[e]) {
                    int i = w->ent_s[e];
                    if (w->ent_f[e] > 0 && !w->lab_s[i]) { w->lab_s[i] = pass; w->queue[qt++] = i; }
                }
            }
        }
        if (pass == 2) break;
        for (int i = 0; i < ns; i++)
            if (w->lab_s[i] == 1) qt = spread(w, w->R2 + (i64)i * nw, 2, qt);
    }
    return reach_t;
}

/* one edge: writes cost (in units of 1 / scale) and scale; returns 0, or -1 on allocation failure */
static int solve_edge(work_t *w, const dist_t *d, const i64 *indptr, const i64 *indices, i64 u, i64 v,
                      i64 p, i64 q, i64 *cost_out, i64 *scale_out) {
    i64 du = indptr[u + 1] - indptr[u], dv = indptr[v + 1] - indptr[v];
    i64 g = du, r = dv;
    while (r) { i64 tmp = g % r; g = r; r = tmp; }
    i64 lcm = du / g * dv;
    i64 mx = (q - p) * (lcm / du), my = (q - p) * (lcm / dv);
    i64 s_u = p * lcm - my, s_v = mx - p * lcm, s_t = mx - my;
    *scale_out = q * lcm;
    *cost_out = 0;
    if (reserve(w, du + 2, dv + 2, 1)) return -1;
    int ns = 0, nd = 0;
    if (s_u > 0) { w->sid[ns] = u; w->rs[ns++] = s_u; }
    if (s_v > 0) { w->sid[ns] = v; w->rs[ns++] = s_v; }
    for (i64 k = indptr[u]; k < indptr[u + 1]; k++) {
        i64 x = indices[k];
        if (x == v) continue;
        i64 m = dist(d, x, v) == 1 ? s_t : mx; /* common neighbours keep the mass both measures share */
        if (m > 0) { w->sid[ns] = x; w->rs[ns++] = m; }
    }
    if (s_u < 0) { w->did[nd] = u; w->rd[nd++] = -s_u; }
    if (s_v < 0) { w->did[nd] = v; w->rd[nd++] = -s_v; }
    for (i64 k = indptr[v]; k < indptr[v + 1]; k++) {
        i64 y = indices[k];
        if (y == u || dist(d, y, u) == 1) continue;
        w->did[nd] = y; w->rd[nd++] = my;
    }
    i64 total = 0;
    for (int i = 0; i < ns; i++) total += w->rs[i];
    if (total == 0 || nd == 0) return 0;
    int nw = (nd + 63) / 64;
    if (reserve(w, ns, nd, (i64)ns * nw)) return -1;
    w->ns = ns; w->nd = nd; w->nw = nw; w->n_ent = 0;
    memset(w->R1, 0, sizeof(uint64_t) * (size_t)ns * nw);
    memset(w->R2, 0, sizeof(uint64_t) * (size_t)ns * nw);
    for (int i = 0; i < ns; i++) {
        uint64_t *r1 = w->R1 + (i64)i * nw, *r2 = w->R2 + (i64)i * nw;
        for (int j = 0; j < nd; j++) {
            int c = dist(d, w->sid[i], w->did[j]);
            if (c == 1) r1[j >> 6] |= (uint64_t)1 << (j & 63);
            else if (c == 2) r2[j >> 6] |= (uint64_t)1 << (j & 63);
        }
    }
    for (int j = 0; j < nd; j++) w->ent_head[j] = -1;
    int err = 0;
    build_rows(w, 1);
    i64 f1 = maxflow(w, total, &err);
    i64 g2 = 0;
    if (f1 < total && label(w)) {
        build_rows(w, 2);
        g2 = maxflow(w, total - f1, &err);
    }
    if (err) return -1;
    *cost_out = f1 + 2 * g2 + 3 * (total - f1 - g2);
    return 0;
}

typedef struct {
    dist_t d;
    const i64 *indptr, *indices, *eu, *ev, *order;
    i64 m, p, q, next;
    i64 *cost, *scale;
    int failed;
} job_t;

#define CHUNK 8

static void *worker(void *arg) {
    job_t *job = (job_t *)arg;
    work_t w;
    memset(&w, 0, sizeof(w));
    for (;;) {
        i64 first = __atomic_fetch_add(&job->next, CHUNK, __ATOMIC_RELAXED);
        if (first >= job->m) break;
        i64 last = first + CHUNK < job->m ? first + CHUNK : job->m;
        for (i64 i = first; i < last; i++) {
            i64 e = job->order ? job->order[i] : i;
            if (solve_edge(&w, &job->d, job->indptr, job->indices, job->eu[e], job->ev[e], job->p, job->q,
                           job->cost + e, job->scale + e))
                __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        }
    }
    release(&w);
    return NULL;
}

/* cost[e], scale[e] for the edges (eu[e], ev[e]), deg eu <= deg ev, solved in the given order (heavy first
 * balances the threads) on `threads` threads (the caller's included); returns 0, or -1 on allocation failure. */
int orc_transport(i64 n, const i64 *indptr, const i64 *indices, const uint8_t *dense, const i64 *k1, i64 n1,
                  const i64 *k2, i64 n2, i64 m, const i64 *eu, const i64 *ev, const i64 *order, i64 p, i64 q,
                  int threads, i64 *cost, i64 *scale) {
    job_t job = {{dense, k1, k2, n1, n2, n}, indptr, indices, eu, ev, order, m, p, q, 0, cost, scale, 0};
    if (threads > 64) threads = 64;
    if ((i64)threads > (m + CHUNK - 1) / CHUNK) threads = (int)((m + CHUNK - 1) / CHUNK);
    pthread_t tid[64];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tid[started], NULL, worker, &job) != 0) break; /* fewer threads: still correct */
        started++;
    }
    worker(&job);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    return job.failed ? -1 : 0;
}
