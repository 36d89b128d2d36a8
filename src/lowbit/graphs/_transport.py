"""Exact batched optimal transport for costs in {1, 2, 3} (primal-dual min-cost flow on SciPy max-flows).

Many independent transport problems ("blocks") are solved at once as one disjoint-union network.
Every problem node has an integer mass (> 0 supply, < 0 demand).  The caller lists the supply -> demand
arcs of cost 1 and 2; every other supply/demand pair of a block is assumed to cost 3 (for adjacent u, v
every neighbour-to-neighbour distance is at most 3).  Successive shortest paths push augmenting paths in
nondecreasing cost order and, with integer costs, the path cost is 1, 2 or 3.  So two maximum flows give
the exact optimum: F1 = max flow over cost-1 arcs; G2 = max flow over the admissible (shortest-path)
residual network whose paths cost 2; the rest goes at cost 3 (a direct arc of cost <= 3 always exists):
    cost = F1 + 2 * G2 + 3 * (M - F1 - G2).
Everything is integer arithmetic, so the result is exact.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

__all__ = ["level_transport_cost"]

_INT32_MAX = np.iinfo(np.int32).max
_BUCKET_MIN = 20_000  # below this many arcs one max-flow call is cheaper than several


def _csr(tail: np.ndarray, head: np.ndarray, cap: np.ndarray, n: int) -> sp.csr_array:
    """CSR capacity matrix with sorted indices from arc arrays (no duplicate arcs expected)."""
    g = sp.csr_array((cap.astype(np.int32), (tail.astype(np.int32), head.astype(np.int32))), shape=(n, n))
    g.sort_indices()
    return g


def _arc_values(mat: sp.csr_array, tail: np.ndarray, head: np.ndarray, n: int) -> np.ndarray:
    """Values of a CSR matrix at the given (tail, head) positions (0 where absent)."""
    mat = sp.csr_array(mat)
    mat.sort_indices()
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(mat.indptr))
    keys = rows * n + mat.indices.astype(np.int64)
    want = tail.astype(np.int64) * n + head.astype(np.int64)
    pos = np.searchsorted(keys, want)
    pos = np.minimum(pos, max(keys.size - 1, 0))
    out = np.zeros(want.size, dtype=np.int64)
    if keys.size:
        hit = keys[pos] == want
        out[hit] = mat.data[pos[hit]]
    return out


def _reach(tail: np.ndarray, head: np.ndarray, n: int, start: int) -> np.ndarray:
    """Boolean mask of nodes reachable from `start` along the arcs (tail -> head)."""
    g = sp.csr_array((np.ones(tail.size, dtype=np.int8), (tail, head)), shape=(n, n))
    seen = np.zeros(n, dtype=bool)
    seen[breadth_first_order(g, start, directed=True, return_predecessors=False)] = True
    return seen


def _maxflow(
    tail: np.ndarray,
    head: np.ndarray,
    cap: np.ndarray,
    arc_block: np.ndarray,
    n: int,
    s: int,
    t: int,
    source_only: bool = False,
) -> np.ndarray:
    """Max-flow value on each arc of a disjoint union of blocks joined at s and t (only arcs leaving s if
    source_only: the others are left 0).

    Blocks are solved in groups of similar size: Dinic's cost is (number of phases) x (arcs), and a few
    big blocks needing many phases would otherwise slow down all the small ones.
    """
    flow = np.zeros(tail.size, dtype=np.int64)
    idx = np.flatnonzero(cap > 0)
    if idx.size == 0:
        return flow
    size = np.bincount(arc_block[idx])[arc_block[idx]]
    bucket = np.minimum(np.log2(size).astype(np.int64) // 2, 6) if idx.size > _BUCKET_MIN else size * 0
    for b in np.unique(bucket):
        sel = idx[bucket == b]
        g = _csr(tail[sel], head[sel], cap[sel], n)
        res = maximum_flow(g, s, t, method="dinic")
        if source_only:
            fl = sp.csr_array(res.flow)
            row = slice(fl.indptr[s], fl.indptr[s + 1])
            out_of_s = np.zeros(n, dtype=np.int64)
            out_of_s[fl.indices[row]] = fl.data[row]
            from_s = sel[tail[sel] == s]
            flow[from_s] = out_of_s[head[from_s]]
        else:
            flow[sel] = _arc_values(res.flow, tail[sel], head[sel], n)
    return flow


def level_transport_cost(
    block: np.ndarray,
    mass: np.ndarray,
    tail: np.ndarray,
    head: np.ndarray,
    cost: np.ndarray,
    n_blocks: int,
) -> np.ndarray:
    """Exact min transport cost per block when listed supply->demand arcs cost 1 or 2 and all others cost 3."""
    mass = np.asarray(mass, dtype=np.int64)
    block = np.asarray(block, dtype=np.int64)
    p = mass.size
    supply = np.maximum(mass, 0)
    demand = np.maximum(-mass, 0)
    total = np.bincount(block, weights=supply, minlength=n_blocks).astype(np.int64)
    if p == 0:
        return np.zeros(n_blocks, dtype=np.int64)
    if supply.max(initial=0) >= _INT32_MAX or demand.max(initial=0) >= _INT32_MAX:
        raise OverflowError("transport masses exceed int32; use the LP fallback")
    tail = np.asarray(tail, dtype=np.int64)
    head = np.asarray(head, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.int64)
    s_node, t_node, n = p, p + 1, p + 2
    sup_nodes = np.flatnonzero(supply > 0)
    dem_nodes = np.flatnonzero(demand > 0)

    # ---- phase 1: max flow over cost-1 arcs -------------------------------------------------------
    one = cost == 1
    t1, h1 = tail[one], head[one]
    c1 = np.minimum(supply[t1], demand[h1])
    nsup, ndem = sup_nodes.size, dem_nodes.size
    f = _maxflow(
        np.concatenate([np.full(nsup, s_node), t1, dem_nodes]),
        np.concatenate([sup_nodes, h1, np.full(ndem, t_node)]),
        np.concatenate([supply[sup_nodes], c1, demand[dem_nodes]]),
        np.concatenate([block[sup_nodes], block[t1], block[dem_nodes]]),
        n,
        s_node,
        t_node,
    )
    f1 = f[nsup : nsup + t1.size]
    out_s = np.zeros(p, dtype=np.int64)
    out_s[sup_nodes] = f[:nsup]
    in_t = np.zeros(p, dtype=np.int64)
    in_t[dem_nodes] = f[nsup + t1.size :]
    rs = supply - out_s  # residual supply
    rd = demand - in_t  # residual demand
    f1_block = np.bincount(block, weights=out_s, minlength=n_blocks).astype(np.int64)

    # ---- phase 2: shortest-path distances (0 or 1) in the residual network, reduced costs ------------
    # zero reduced-cost residual arcs: S->i (rs>0), cost-1 forward (residual>0), reverse of flowed
    # cost-1 arcs, j->T (rd>0).  Cost-2 arcs have reduced cost 1.
    s_open = sup_nodes[rs[sup_nodes] > 0]
    t_open = dem_nodes[rd[dem_nodes] > 0]
    fwd = c1 - f1 > 0
    rev = f1 > 0
    z_tail = np.concatenate([np.full(s_open.size, s_node), t1[fwd], h1[rev], t_open])
    z_head = np.concatenate([s_open, h1[fwd], t1[rev], np.full(t_open.size, t_node)])
    z_cap = np.concatenate([rs[s_open], (c1 - f1)[fwd], f1[rev], rd[t_open]])
    z_blk = np.concatenate([block[s_open], block[t1[fwd]], block[h1[rev]], block[t_open]])
    r0 = _reach(z_tail, z_head, n, s_node)
    if r0[t_node]:  # pragma: no cover - would mean phase 1 was not maximal
        raise RuntimeError("internal error: phase-1 flow is not maximal")
    two = cost == 2
    t2, h2 = tail[two], head[two]
    m = r0[t2] & ~r0[h2]
    t2, h2 = t2[m], h2[m]
    g2_block = np.zeros(n_blocks, dtype=np.int64)
    if t2.size:
        s2 = n  # extra super source for the distance-1 layer
        seed = np.flatnonzero(np.bincount(h2, minlength=n))
        reach1 = _reach(
            np.concatenate([z_tail, np.full(seed.size, s2)]),
            np.concatenate([z_head, seed]),
            n + 1,
            s2,
        )[:n]
        d1 = reach1 & ~r0
        if d1[t_node]:
            zt_ok = (r0[z_tail] & r0[z_head]) | (d1[z_tail] & d1[z_head])
            keep2 = d1[h2]
            t2, h2 = t2[keep2], h2[keep2]
            f = _maxflow(
                np.concatenate([z_tail[zt_ok], t2]),
                np.concatenate([z_head[zt_ok], h2]),
                np.concatenate([z_cap[zt_ok], np.minimum(supply[t2], demand[h2])]),
                np.concatenate([z_blk[zt_ok], block[t2]]),
                n,
                s_node,
                t_node,
                source_only=True,
            )
            from_s = z_tail[zt_ok] == s_node
            g2_block = np.bincount(
                z_blk[zt_ok][from_s], weights=f[: zt_ok.sum()][from_s], minlength=n_blocks
            ).astype(np.int64)
    rest = total - f1_block - g2_block
    return f1_block + 2 * g2_block + 3 * rest
