"""Exact Ollivier-Ricci curvature of unweighted graphs, batched over all edges.

Ollivier, "Ricci curvature of Markov chains on metric spaces" (J. Funct. Anal. 2009); the measure with
idleness alpha puts mass alpha on the node and (1 - alpha) / deg on each neighbour, as in Lin-Lu-Yau and in
GraphRicciCurvature (Ni et al., "Community detection on networks with Ricci flow", Sci. Rep. 2019).
Used as structural encoding by Fesser & Weber, "Effective structural encodings via local curvature
profiles" (ICLR 2024).

kappa(u, v) = 1 - W1(m_u, m_v) for every edge (u, v).  For adjacent u, v all neighbour-to-neighbour
distances are 0, 1, 2 or 3 and follow from A and A^2, so no all-pairs shortest paths are needed.  Mass
common to both measures stays in place (W1 depends only on m_u - m_v); the rest is an integer-cost
transport problem, scaled to integer masses (q * lcm(deg u, deg v) for alpha = p / q) and solved exactly
for all edges at once by :func:`lowbit.graphs._transport.level_transport_cost`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from . import _orc_c
from ._transport import level_transport_cost
from .graph import adjacency, as_edge_index, graph_num_nodes, undirected_edges

__all__ = ["ollivier_ricci", "ollivier_ricci_many", "ollivier_ricci_undirected", "alpha_fraction"]

_DENSE_MAX_NODES = 6000
_CHUNK_PAIRS = 500_000
_MAX_SCALE = 2**29  # SciPy path: masses in int32
_C_MAX_SCALE = 2**52  # C path: int64 masses, and cost / scale exact enough in float64
_C_MAX_DEG_SUM = 8_000  # bounds the C solver's recursion depth (Dinic paths)


def alpha_fraction(alpha: float) -> Fraction:
    """Validate the idleness alpha in [0, 1) and return it as an exact fraction p / q (q <= 10**4 if possible)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}") from None
    if not (0.0 <= a < 1.0) or not np.isfinite(a):
        raise ValueError(
            f"alpha (idleness: mass kept on the node) must lie in [0, 1), got {alpha!r}; "
            "alpha = 1 keeps all mass in place and makes every curvature 0"
        )
    frac = Fraction(a).limit_denominator(10_000)
    if abs(float(frac) - a) > 1e-14:
        frac = Fraction(a)  # irrational-looking alpha: exact binary fraction, solved by the LP fallback
    return frac


class _Dist:
    """Hop distance (1, 2 or 3) between nodes at distance <= 3, from A and A^2 (dense table or sorted keys)."""

    def __init__(self, a: sp.csr_matrix) -> None:
        n = a.shape[0]
        self.n = n
        a2 = (a @ a).tocsr()
        if n <= _DENSE_MAX_NODES:
            d = np.full((n, n), 3, dtype=np.uint8)
            r2 = np.repeat(np.arange(n), np.diff(a2.indptr))
            d[r2, a2.indices] = 2
            r1 = np.repeat(np.arange(n), np.diff(a.indptr))
            d[r1, a.indices] = 1
            self.dense = d
        else:
            self.dense = None
            a2.sort_indices()
            r1 = np.repeat(np.arange(n, dtype=np.int64), np.diff(a.indptr))
            r2 = np.repeat(np.arange(n, dtype=np.int64), np.diff(a2.indptr))
            self.k1 = r1 * n + a.indices
            self.k2 = r2 * n + a2.indices

    @staticmethod
    def _member(keys: np.ndarray, want: np.ndarray) -> np.ndarray:
        if keys.size == 0:
            return np.zeros(want.size, dtype=bool)
        pos = np.minimum(np.searchsorted(keys, want), keys.size - 1)
        return keys[pos] == want

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return self.dense[x, y]
        want = x.astype(np.int64) * self.n + y
        out = np.full(want.size, 3, dtype=np.uint8)
        out[self._member(self.k2, want)] = 2
        out[self._member(self.k1, want)] = 1
        return out

    def adjacent(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self(x, y) == 1


def _gather_neighbours(a: sp.csr_matrix, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner index into `nodes`, neighbour id) for all neighbours of the given nodes."""
    start = a.indptr[nodes]
    cnt = a.indptr[nodes + 1] - start
    owner = np.repeat(np.arange(nodes.size), cnt)
    first = np.cumsum(cnt) - cnt
    pos = np.arange(owner.size) - first[owner] + start[owner]
    return owner, a.indices[pos].astype(np.int64)


def _merge_equivalent(
    owner: np.ndarray, kind: np.ndarray, pair_self: np.ndarray, pair_other: np.ndarray,
    pair_cost: np.ndarray, n_other: int, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Group nodes of one side that have the same owner edge, kind and costs to every node of the other side.

    Returns (type id per node, representative mask).  Nodes are sorted by (owner, kind, fingerprint 1) and
    a group is only formed where a second, independent fingerprint agrees too; a false merge would need
    two exact float64 coincidences of random subset sums.  Merging only shrinks the network.
    """
    n = owner.size
    fps = []
    for _ in range(2):
        w1 = rng.random(n_other) + 1.0
        w2 = rng.random(n_other) + 1.0
        wt = np.where(pair_cost == 1, w1[pair_other], w2[pair_other])
        fps.append(np.bincount(pair_self, weights=wt, minlength=n))
    group = owner.astype(np.int64) * 2 + kind
    order = np.lexsort((fps[0], group))
    g, f0, f1 = group[order], fps[0][order], fps[1][order]
    new = np.ones(n, dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (f0[1:] != f0[:-1]) | (f1[1:] != f1[:-1])
    type_sorted = np.cumsum(new) - 1
    type_id = np.empty(n, dtype=np.int64)
    type_id[order] = type_sorted
    rep = np.zeros(n, dtype=bool)
    rep[order[new]] = True
    return type_id, rep


def _solve_chunk(
    dist: _Dist, a: sp.csr_matrix, u: np.ndarray, v: np.ndarray, p: int, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """W1 * scale and the scale for a chunk of edges (u has the smaller degree)."""
    deg = np.diff(a.indptr).astype(np.int64)
    m = u.size
    du, dv = deg[u], deg[v]
    lcm = np.lcm(du, dv)
    mx = (q - p) * (lcm // du)  # mass of each neighbour of u
    my = (q - p) * (lcm // dv)  # mass of each neighbour of v
    s_u = p * lcm - my  # sigma = m_u - m_v at u
    s_v = mx - p * lcm  # ... at v
    s_t = mx - my  # ... at a common neighbour (>= 0 because du <= dv)

    # neighbours of u except v (U' and common T), neighbours of v except u and except T (V')
    ox, xs = _gather_neighbours(a, u)
    keep = xs != v[ox]
    ox, xs = ox[keep], xs[keep]
    x_common = dist.adjacent(xs, v[ox])
    keep = ~x_common | (s_t[ox] > 0)
    ox, xs, x_common = ox[keep], xs[keep], x_common[keep]
    oy, ys = _gather_neighbours(a, v)
    keep = ys != u[oy]
    oy, ys = oy[keep], ys[keep]
    keep = ~dist.adjacent(ys, u[oy])
    oy, ys = oy[keep], ys[keep]

    x_mass = np.where(x_common, s_t[ox], mx[ox])
    y_mass = my[oy]

    # x (and t) -> y pairs at distance 1 or 2, grouped per edge (distance 3 is the solver's default)
    cy = np.bincount(oy, minlength=m)
    rep = cy[ox]
    ix = np.repeat(np.arange(ox.size, dtype=np.int32), rep)
    seg = (np.cumsum(rep) - rep - (np.cumsum(cy) - cy)[ox]).astype(np.int32)
    iy = np.arange(ix.size, dtype=np.int32)
    iy -= np.repeat(seg, rep)
    c = dist(xs[ix], ys[iy])
    near = np.flatnonzero(c < 3)
    ix, iy, c = ix[near].astype(np.int64), iy[near].astype(np.int64), c[near].astype(np.int64)

    # merge interchangeable nodes (same edge, kind and costs): smaller networks, same optimum
    rng = np.random.default_rng(12345)
    ty, rep_y = _merge_equivalent(oy, np.zeros(oy.size, dtype=np.int64), iy, ix, c, xs.size, rng)
    y_mass = np.bincount(ty, weights=y_mass).astype(np.int64)
    oy = oy[rep_y][np.argsort(ty[rep_y])]
    keep = rep_y[iy]
    ix, iy, c = ix[keep], ty[iy[keep]], c[keep]
    tx, rep_x = _merge_equivalent(ox, x_common.astype(np.int64), ix, iy, c, oy.size, rng)
    x_mass = np.bincount(tx, weights=x_mass).astype(np.int64)
    order = np.argsort(tx[rep_x])
    ox, x_common = ox[rep_x][order], x_common[rep_x][order]
    keep = rep_x[ix]
    ix, iy, c = tx[ix[keep]], iy[keep], c[keep]

    # problem nodes: [u_e for e] [v_e for e] [x types] [y types]
    nx_, ny_ = ox.size, oy.size
    base_x, base_y = 2 * m, 2 * m + nx_
    block = np.concatenate([np.arange(m), np.arange(m), ox, oy])
    mass = np.concatenate([s_u, s_v, x_mass, -y_mass])
    tails, heads, costs = [base_x + ix], [base_y + iy], [c]

    ex = np.arange(nx_)
    ey = np.arange(ny_)
    # arcs involving u and v, depending on the signs of sigma(u) and sigma(v)
    u_dem, u_sup = s_u < 0, s_u > 0
    v_dem, v_sup = s_v < 0, s_v > 0
    sel = u_dem[ox]  # x, t -> u (distance 1)
    tails.append(base_x + ex[sel])
    heads.append(ox[sel])
    costs.append(np.ones(sel.sum(), dtype=np.int64))
    sel = v_dem[ox]  # x -> v (distance 2), t -> v (distance 1)
    tails.append(base_x + ex[sel])
    heads.append(m + ox[sel])
    costs.append(np.where(x_common[sel], 1, 2))
    sel = u_sup[oy]  # u -> y (distance 2)
    tails.append(oy[sel])
    heads.append(base_y + ey[sel])
    costs.append(np.full(sel.sum(), 2, dtype=np.int64))
    sel = v_sup[oy]  # v -> y (distance 1)
    tails.append(m + oy[sel])
    heads.append(base_y + ey[sel])
    costs.append(np.ones(sel.sum(), dtype=np.int64))
    uv = np.flatnonzero(u_sup & v_dem)  # u -> v
    vu = np.flatnonzero(v_sup & u_dem)  # v -> u
    tails += [uv, m + vu]
    heads += [m + uv, vu]
    costs += [np.ones(uv.size, dtype=np.int64), np.ones(vu.size, dtype=np.int64)]

    cost = level_transport_cost(
        block, mass, np.concatenate(tails), np.concatenate(heads), np.concatenate(costs), m
    )
    return cost, q * lcm


def _lp_edge(a: sp.csr_matrix, dist: _Dist, u: int, v: int, alpha: float) -> float:
    """W1 for one edge by linear programming (HiGHS); fallback for alphas that are not small fractions."""
    from scipy.optimize import linprog

    nu = a.indices[a.indptr[u] : a.indptr[u + 1]]
    nv = a.indices[a.indptr[v] : a.indptr[v + 1]]
    src = np.concatenate([[u], nu])
    dst = np.concatenate([[v], nv])
    mu = np.concatenate([[alpha], np.full(nu.size, (1 - alpha) / nu.size)])
    nu_ = np.concatenate([[alpha], np.full(nv.size, (1 - alpha) / nv.size)])
    cost = dist(np.repeat(src, dst.size), np.tile(dst, src.size)).astype(float)
    cost[np.repeat(src, dst.size) == np.tile(dst, src.size)] = 0.0
    ns, nd = src.size, dst.size
    rows = np.concatenate([np.repeat(np.arange(ns), nd), ns + np.tile(np.arange(nd), ns)])
    cols = np.concatenate([np.arange(ns * nd), np.arange(ns * nd)])
    a_eq = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(ns + nd, ns * nd))
    res = linprog(cost, A_eq=a_eq, b_eq=np.concatenate([mu, nu_]), bounds=(0, None), method="highs")
    if res.status != 0:  # pragma: no cover
        raise RuntimeError(f"LP for edge ({u}, {v}) failed: {res.message}")
    return float(res.fun)


def ollivier_ricci_undirected(
    lo: np.ndarray, hi: np.ndarray, n: int, alpha: float = 0.0, workers: int | None = None
) -> np.ndarray:
    """Exact ORC (float64) of the unique undirected edges (lo[i], hi[i]) of a simple graph on n nodes.

    Uses the C solver (all edges in one call, ``workers`` threads, default all cores) when it is available
    (:func:`lowbit.graphs.curvature_backend`), else SciPy max-flows in chunks of bounded size (``workers`` > 1
    runs chunks on a thread pool, which gains little because SciPy's max-flow holds the GIL).
    """
    frac = alpha_fraction(alpha)
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    if lo.size == 0:
        return np.zeros(0)
    if np.any(lo == hi) or min(lo.min(), hi.min()) < 0 or max(lo.max(), hi.max()) >= n:
        raise ValueError("lo/hi must be distinct node ids in [0, n) (no self-loops); see undirected_edges()")
    a = adjacency(lo, hi, n)
    dist = _Dist(a)
    deg = np.diff(a.indptr).astype(np.int64)
    swap = deg[lo] > deg[hi]
    u = np.where(swap, hi, lo)
    v = np.where(swap, lo, hi)
    p, q = frac.numerator, frac.denominator
    scale = q * np.lcm(deg[u], deg[v])
    use_c = _orc_c.available()
    lp = scale >= (_C_MAX_SCALE if use_c else _MAX_SCALE)
    out = np.empty(lo.size)
    for i in np.flatnonzero(lp):
        out[i] = 1.0 - _lp_edge(a, dist, int(u[i]), int(v[i]), float(alpha))
    idx = np.flatnonzero(~lp)
    if use_c and idx.size:
        small = deg[u[idx]] + deg[v[idx]] <= _C_MAX_DEG_SUM
        cidx = idx[small]
        c, s = _orc_c.transport_costs(
            a.indptr, a.indices, n, dist.dense, getattr(dist, "k1", None), getattr(dist, "k2", None),
            u[cidx], v[cidx], p, q, workers,
        )
        out[cidx] = 1.0 - c / s
        idx = idx[~small]
    if idx.size == 0:
        return out
    # chunks of bounded pair count (memory) and bounded total mass (SciPy's max-flow counts in int32)
    work = deg[u[idx]] * deg[v[idx]]
    chunk_id = np.maximum((np.cumsum(work) - 1) // _CHUNK_PAIRS, (np.cumsum(scale[idx]) - 1) // _MAX_SCALE)
    pieces = np.split(idx, np.flatnonzero(np.diff(chunk_id)) + 1)

    def run(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, s = _solve_chunk(dist, a, u[chunk], v[chunk], p, q)
        return chunk, c, s

    if len(pieces) > 1 and (workers or 1) > 1:
        with ThreadPoolExecutor(min(workers, len(pieces))) as pool:
            results = list(pool.map(run, pieces))
    else:
        results = [run(c) for c in pieces]
    for chunk, c, s in results:
        out[chunk] = 1.0 - c / s
    return out


def ollivier_ricci(edge_index: Any, num_nodes: int | None = None, alpha: float = 0.0) -> Any:
    """Exact Ollivier-Ricci curvature of an unweighted undirected graph, one value per edge (column) given.

    ``edge_index`` is a [2, E] LongTensor / integer array (returns a float64 tensor / array with one value per
    column; (u, v) and (v, u) get the same value and each undirected edge is solved once), a networkx graph
    (returns ``{(u, v): curvature}`` over ``G.edges()``) or a SciPy sparse adjacency (returns a CSR matrix with
    the curvature on the pattern of its off-diagonal entries; weights are ignored).  ``alpha`` is the idleness.
    """
    if isinstance(edge_index, sp.spmatrix | sp.sparray):
        mat = sp.coo_matrix(edge_index)
        if mat.shape[0] != mat.shape[1]:
            raise ValueError(f"a sparse adjacency must be square, got shape {mat.shape}")
        off = mat.row != mat.col
        ei = np.stack([mat.row[off], mat.col[off]]).astype(np.int64)
        vals = ollivier_ricci(ei, mat.shape[0], alpha)
        return sp.csr_matrix((vals, (ei[0], ei[1])), shape=mat.shape)
    if hasattr(edge_index, "edges") and hasattr(edge_index, "nodes") and hasattr(edge_index, "is_directed"):
        g = edge_index
        if g.is_directed() or g.is_multigraph():
            raise ValueError("ollivier_ricci needs an undirected simple graph; use nx.Graph(G) to convert")
        nodes = list(g.nodes())
        index = {node: i for i, node in enumerate(nodes)}
        edges = [(a, b) for a, b in g.edges() if a != b]
        if not edges:
            return {}
        ei = np.array([[index[a] for a, _ in edges], [index[b] for _, b in edges]], dtype=np.int64)
        vals = ollivier_ricci(ei, len(nodes), alpha)
        return {e: float(k) for e, k in zip(edges, vals, strict=True)}
    as_tensor = isinstance(edge_index, torch.Tensor)
    ei = as_edge_index(edge_index, num_nodes)
    n = graph_num_nodes(ei, num_nodes)
    alpha_fraction(alpha)
    if ei.shape[1] == 0:
        out = np.zeros(0)
    else:
        lo, hi, inverse = undirected_edges(ei, n)
        out = ollivier_ricci_undirected(lo, hi, n, alpha)[inverse]
    return torch.from_numpy(out) if as_tensor else out


def ollivier_ricci_many(
    edge_indices: list[Any], num_nodes: list[int] | None = None, alpha: float = 0.0
) -> list[np.ndarray]:
    """ORC of many graphs in one batched solve (their disjoint union), one array per graph and edge column."""
    if num_nodes is not None and len(num_nodes) != len(edge_indices):
        raise ValueError(f"got {len(edge_indices)} edge_index arrays but {len(num_nodes)} num_nodes")
    alpha_fraction(alpha)
    arrays, sizes = [], []
    for i, ei in enumerate(edge_indices):
        arr = as_edge_index(ei, None if num_nodes is None else num_nodes[i])
        arrays.append(arr)
        sizes.append(graph_num_nodes(arr, None if num_nodes is None else num_nodes[i]))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    cols = np.array([a.shape[1] for a in arrays], dtype=np.int64)
    if cols.sum() == 0:
        return [np.zeros(0) for _ in arrays]
    union = np.concatenate([a + offsets[i] for i, a in enumerate(arrays)], axis=1)
    lo, hi, inverse = undirected_edges(union, int(offsets[-1]))
    values = ollivier_ricci_undirected(lo, hi, int(offsets[-1]), alpha)[inverse]
    return np.split(values, np.cumsum(cols)[:-1])
