"""Speed and exactness of lowbit.graphs.ollivier_ricci against GraphRicciCurvature's exact OTD method.

Same run, interleaved (ours, theirs, ours, theirs, ...), medians of wall-clock times and their ratio.
Graphs are unweighted (networkx graphs rebuilt from the edge list, so every edge has weight 1).
GraphRicciCurvature runs with its defaults (multiprocessing over all cores); ours runs in-process with the
C solver on all cores (lowbit.graphs.curvature_backend()); on the headline BA graph the SciPy fallback path
is timed too, interleaved, and must give bit-identical values.

    python benchmarks/graph_curvature.py [--repeats 3] [--quick]

Needs: networkx, GraphRicciCurvature (+ POT, networkit), grakel (MUTAG data).  Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings

import networkx as nx
import numpy as np

from lowbit.graphs import curvature_backend, load_mutag, ollivier_ricci, ollivier_ricci_many, set_curvature_backend


def grc_curvature(g: nx.Graph, alpha: float) -> dict:
    """GraphRicciCurvature exact (OTD) curvature of an unweighted copy of g."""
    from GraphRicciCurvature.OllivierRicci import OllivierRicci

    h = nx.Graph()
    h.add_nodes_from(g.nodes())
    h.add_edges_from(g.edges())  # no attributes: GraphRicciCurvature assigns weight 1 to every edge
    orc = OllivierRicci(h, alpha=alpha, method="OTD", verbose="ERROR")
    orc.compute_ricci_curvature()
    weights = {d.get("weight", 1.0) for _, _, d in orc.G.edges(data=True)}
    assert weights <= {1.0}, f"edges carry weights {weights}"
    return {(u, v): d["ricciCurvature"] for u, v, d in orc.G.edges(data=True)}


def edge_index_of(g: nx.Graph) -> np.ndarray:
    return np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2).T


def max_diff(ref: dict, edges: np.ndarray, ours: np.ndarray) -> float:
    lookup = {}
    for (u, v), k in zip(edges.T.tolist(), ours.tolist(), strict=True):
        lookup[(u, v)] = lookup[(v, u)] = k
    return max((abs(lookup[e] - k) for e, k in ref.items()), default=0.0)


def bench_graph(name: str, g: nx.Graph, alpha: float, repeats: int, fallback: bool = False) -> dict:
    ei = edge_index_of(g)
    n = g.number_of_nodes()
    t_ours, t_fb, t_grc, diff = [], [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        ours = ollivier_ricci(ei, n, alpha)
        t_ours.append(time.perf_counter() - t0)
        if fallback:
            set_curvature_backend("python")
            t0 = time.perf_counter()
            slow = ollivier_ricci(ei, n, alpha)
            t_fb.append(time.perf_counter() - t0)
            set_curvature_backend("auto")
            assert np.array_equal(slow, ours), "C solver and SciPy fallback disagree"
        t0 = time.perf_counter()
        ref = grc_curvature(g, alpha)
        t_grc.append(time.perf_counter() - t0)
        diff = max(diff, max_diff(ref, ei, ours))
    row = {
        "graph": name,
        "alpha": alpha,
        "nodes": n,
        "edges": g.number_of_edges(),
        "ours_s": float(np.median(t_ours)),
        "grc_s": float(np.median(t_grc)),
        "max_abs_diff": diff,
    }
    row["speedup"] = row["grc_s"] / row["ours_s"]
    if fallback:
        row["fallback_s"] = float(np.median(t_fb))
        row["speedup_fallback"] = row["grc_s"] / row["fallback_s"]
    return row


def bench_mutag(alpha: float, repeats: int, count: int = 100) -> dict:
    graphs = load_mutag()[:count]
    nxs = []
    for gr in graphs:
        h = nx.Graph()
        h.add_nodes_from(range(gr.num_nodes))
        h.add_edges_from(gr.edge_index.T.tolist())
        nxs.append(h)
    eis = [edge_index_of(h) for h in nxs]
    sizes = [h.number_of_nodes() for h in nxs]
    t_each, t_batch, t_grc, diff = [], [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        each = [ollivier_ricci(ei, n, alpha) for ei, n in zip(eis, sizes, strict=True)]
        t_each.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch = ollivier_ricci_many(eis, sizes, alpha)
        t_batch.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        refs = [grc_curvature(h, alpha) for h in nxs]
        t_grc.append(time.perf_counter() - t0)
        for ref, ei, a, b in zip(refs, eis, each, batch, strict=True):
            diff = max(diff, max_diff(ref, ei, a), max_diff(ref, ei, b))
    row = {
        "graph": f"MUTAG first {count}",
        "alpha": alpha,
        "nodes": sum(sizes),
        "edges": sum(h.number_of_edges() for h in nxs),
        "ours_s": float(np.median(t_each)),
        "ours_batched_s": float(np.median(t_batch)),
        "grc_s": float(np.median(t_grc)),
        "max_abs_diff": diff,
    }
    row["speedup"] = row["grc_s"] / row["ours_s"]
    row["speedup_batched"] = row["grc_s"] / row["ours_batched_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of the headline graphs")
    ap.add_argument("--quick", action="store_true", help="smaller families, one repeat (smoke run)")
    args = ap.parse_args()
    logging.getLogger("GraphRicciCurvature").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; load {os.getloadavg()}; "
          f"curvature backend {curvature_backend()}")
    # warm-up both (imports, process pools)
    small = nx.barabasi_albert_graph(30, 2, seed=0)
    grc_curvature(small, 0.0)
    ollivier_ricci(edge_index_of(small), 30)

    rep = 1 if args.quick else args.repeats
    size = 300 if args.quick else 1000
    families = [
        (f"BA({size},5)", nx.barabasi_albert_graph(size, 5, seed=0), rep),
        (f"ER({size},p={10 / size:.3f})", nx.gnp_random_graph(size, 10 / size, seed=1), 1),
        (f"WS({size},10,0.1)", nx.watts_strogatz_graph(size, 10, 0.1, seed=2), 1),
        (f"powerlaw-cluster({size},5,0.3)", nx.powerlaw_cluster_graph(size, 5, 0.3, seed=3), 1),
        (f"random-regular(6,{size})", nx.random_regular_graph(6, size, seed=4), 1),
        (f"geometric({size},r=0.06)", nx.random_geometric_graph(size, 0.06 * 1000 / size, seed=5), 1),
    ]
    rows = []
    for alpha in (0.0, 0.5):
        for name, g, r in families:
            g = nx.convert_node_labels_to_integers(g)
            rows.append(bench_graph(name, g, alpha, r if alpha == 0.0 else 1, fallback=name.startswith("BA")))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(bench_mutag(alpha, rep if alpha == 0.0 else 1, 20 if args.quick else 100))
        print(json.dumps(rows[-1]), flush=True)

    print()
    print(f"{'graph':32s} {'alpha':>5s} {'edges':>7s} {'ours s':>9s} {'GRC s':>8s} {'speedup':>8s} {'max|diff|':>10s}")
    for r in rows:
        extra = ""
        if "speedup_batched" in r:
            extra = f"  (batched {r['ours_batched_s']:.4f} s, {r['speedup_batched']:.0f}x)"
        if "fallback_s" in r:
            extra = f"  (SciPy fallback {r['fallback_s']:.4f} s, {r['speedup_fallback']:.1f}x)"
        print(
            f"{r['graph']:32s} {r['alpha']:5.1f} {r['edges']:7d} {r['ours_s']:9.4f} {r['grc_s']:8.3f} "
            f"{r['speedup']:7.1f}x {r['max_abs_diff']:10.1e}{extra}"
        )
    ba = rows[0]
    mut = next(r for r in rows if r["graph"].startswith("MUTAG") and r["alpha"] == 0.0)
    print(
        json.dumps(
            {
                "benchmark": "graph_curvature",
                "backend": curvature_backend(),
                "load_at_end": [round(x, 2) for x in os.getloadavg()],
                "ba_graph": ba["graph"],
                "ba_ours_s": round(ba["ours_s"], 4),
                "ba_grc_s": round(ba["grc_s"], 3),
                "speedup_ba": round(ba["speedup"], 2),
                "ba_fallback_s": round(ba["fallback_s"], 4),
                "speedup_ba_fallback": round(ba["speedup_fallback"], 2),
                "mutag_graphs": mut["graph"],
                "mutag_ours_per_graph_s": round(mut["ours_s"], 4),
                "mutag_ours_batched_s": round(mut["ours_batched_s"], 4),
                "mutag_grc_s": round(mut["grc_s"], 3),
                "speedup_mutag_per_graph": round(mut["speedup"], 1),
                "speedup_mutag_batched": round(mut["speedup_batched"], 1),
                "min_speedup_all": round(min(r["speedup"] for r in rows), 2),
                "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
