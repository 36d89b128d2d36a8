"""Exactness of lowbit.graphs.ollivier_ricci against fixtures, closed forms and an independent LP solver."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from lowbit.graphs import (
    _orc_c,
    augmented_forman_curvature,
    forman_curvature,
    jost_liu_bounds,
    ollivier_ricci,
    ollivier_ricci_many,
)
from lowbit.graphs._transport import level_transport_cost


def shrikhande() -> np.ndarray:
    """Cayley graph of Z4 x Z4 with generators +-(1,0), +-(0,1), +-(1,1): strongly regular (16, 6, 2, 2)."""
    edges = set()
    for a, b in itertools.product(range(4), range(4)):
        for da, db in [(1, 0), (3, 0), (0, 1), (0, 3), (1, 1), (3, 3)]:
            c = ((a + da) % 4) * 4 + (b + db) % 4
            edges.add(tuple(sorted((a * 4 + b, c))))
    return np.array(sorted(edges)).T


def rook4() -> np.ndarray:
    g = nx.convert_node_labels_to_integers(nx.cartesian_product(nx.complete_graph(4), nx.complete_graph(4)))
    return np.array(list(g.edges())).T


def lp_curvature(g: nx.Graph, alpha: float) -> dict:
    """Reference ORC: full distance matrix from BFS and one HiGHS LP per edge (independent of lowbit)."""
    dist = dict(nx.all_pairs_shortest_path_length(g))
    out = {}
    for u, v in g.edges():
        su = [u] + list(g[u])
        sv = [v] + list(g[v])
        mu = np.array([alpha] + [(1 - alpha) / g.degree(u)] * g.degree(u))
        nu = np.array([alpha] + [(1 - alpha) / g.degree(v)] * g.degree(v))
        cost = np.array([[dist[a][b] for b in sv] for a in su], dtype=float).ravel()
        ns, nd = len(su), len(sv)
        a_eq = np.zeros((ns + nd, ns * nd))
        for i in range(ns):
            a_eq[i, i * nd : (i + 1) * nd] = 1
        for j in range(nd):
            a_eq[ns + j, j::nd] = 1
        res = linprog(cost, A_eq=a_eq, b_eq=np.concatenate([mu, nu]), bounds=(0, None), method="highs")
        out[(u, v)] = 1.0 - res.fun
    return out


BACKENDS = ["python", pytest.param("c", marks=pytest.mark.skipif(not _orc_c.available(), reason="no C compiler"))]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once with the C solver and once with the SciPy max-flow fallback."""
    _orc_c.set_backend(request.param)
    yield request.param
    _orc_c.set_backend("auto")


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_shrikhande_every_edge_one_sixth(alpha, backend):
    k = ollivier_ricci(shrikhande(), 16, alpha)
    assert k.shape == (48,)
    np.testing.assert_allclose(k, 1 / 6, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_rook_graph_every_edge_one_third(alpha, backend):
    k = ollivier_ricci(rook4(), 16, alpha)
    assert k.shape == (48,)
    np.testing.assert_allclose(k, 1 / 3, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 9])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.5, 0.9])
def test_complete_graph_closed_form(n, alpha, backend):
    g = nx.complete_graph(n)
    k = ollivier_ricci(np.array(list(g.edges())).T, n, alpha)
    np.testing.assert_allclose(k, 1 - abs(alpha - (1 - alpha) / (n - 1)), atol=1e-12)


def test_paths_cycles_stars_known_values(backend):
    for g in [nx.path_graph(3), nx.path_graph(7), nx.cycle_graph(4), nx.cycle_graph(5), nx.cycle_graph(8)]:
        assert np.allclose(list(ollivier_ricci(g, alpha=0.0).values()), 0.0, atol=1e-12)
    # alpha = 1/2: cycles C4 -> 1/2, C5 -> 1/4, C_n (n >= 6) -> 0; paths: leaf edges 1/2, inner edges 0
    for n, want in [(4, 0.5), (5, 0.25), (6, 0.0), (9, 0.0)]:
        np.testing.assert_allclose(list(ollivier_ricci(nx.cycle_graph(n), alpha=0.5).values()), want, atol=1e-12)
    path = ollivier_ricci(nx.path_graph(6), alpha=0.5)
    np.testing.assert_allclose([path[(i, i + 1)] for i in range(5)], [0.5, 0, 0, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(list(ollivier_ricci(nx.cycle_graph(3)).values()), 0.5)
    for k in (2, 3, 6):
        star = nx.star_graph(k)
        np.testing.assert_allclose(list(ollivier_ricci(star, alpha=0.0).values()), 0.0, atol=1e-12)
        np.testing.assert_allclose(list(ollivier_ricci(star, alpha=0.5).values()), 1 / k, atol=1e-12)


def random_graphs():
    yield nx.erdos_renyi_graph(30, 0.2, seed=1)
    yield nx.barabasi_albert_graph(40, 3, seed=2)
    yield nx.watts_strogatz_graph(30, 4, 0.3, seed=3)
    yield nx.random_regular_graph(5, 20, seed=4)
    yield nx.powerlaw_cluster_graph(30, 3, 0.5, seed=5)
    yield nx.random_geometric_graph(30, 0.3, seed=6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.3])
def test_matches_independent_lp_on_random_graphs(alpha):
    for g in random_graphs():
        g = nx.convert_node_labels_to_integers(g)
        ref = lp_curvature(g, alpha)
        got = ollivier_ricci(g, alpha=alpha)
        err = max(abs(got[e] - ref[e]) for e in ref)
        assert err < 1e-9, (g, alpha, err)


@pytest.mark.skipif(not _orc_c.available(), reason="no C compiler")
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.3, 0.1])
def test_c_solver_equals_scipy_path_exactly(alpha):
    """Same integers (cost, scale) on both paths, so the float64 curvatures are bit-identical."""
    graphs = list(random_graphs()) + [
        nx.barabasi_albert_graph(300, 5, seed=12),  # hubs: large transport problems
        nx.powerlaw_cluster_graph(200, 4, 0.3, seed=13),
        nx.connected_caveman_graph(6, 7),
        nx.grid_2d_graph(7, 9),
        nx.random_labeled_tree(80, seed=14),
    ]
    for g in graphs:
        g = nx.convert_node_labels_to_integers(g)
        ei = np.array(list(g.edges())).T
        try:
            _orc_c.set_backend("c")
            fast = ollivier_ricci(ei, g.number_of_nodes(), alpha)
            _orc_c.set_backend("python")
            slow = ollivier_ricci(ei, g.number_of_nodes(), alpha)
        finally:
            _orc_c.set_backend("auto")
        np.testing.assert_array_equal(fast, slow)


def test_backend_switch():
    with pytest.raises(ValueError, match="unknown curvature backend"):
        _orc_c.set_backend("fortran")
    assert _orc_c.set_backend("python") == "python"
    try:
        assert ollivier_ricci(shrikhande(), 16).shape == (48,)
    finally:
        _orc_c.set_backend("auto")
    assert _orc_c.backend() in ("c", "python")


def test_unusual_alpha_goes_through_lp_fallback_and_is_exact():
    g = nx.convert_node_labels_to_integers(nx.erdos_renyi_graph(15, 0.3, seed=7))
    alpha = 1 / np.pi
    ref = lp_curvature(g, alpha)
    got = ollivier_ricci(g, alpha=alpha)
    assert max(abs(got[e] - ref[e]) for e in ref) < 1e-9


def test_transport_solver_matches_lp():
    rng = np.random.default_rng(0)
    block, mass, tails, heads, costs, refs = [], [], [], [], [], []
    off = 0
    for b in range(60):
        ns, nd = rng.integers(1, 6, size=2)
        s, d = rng.integers(1, 9, ns), rng.integers(1, 9, nd)
        tot = max(s.sum(), d.sum())
        s[-1] += tot - s.sum()
        d[-1] += tot - d.sum()
        c = rng.integers(1, 4, (ns, nd))
        a_eq = np.zeros((ns + nd, ns * nd))
        for i in range(ns):
            a_eq[i, i * nd : (i + 1) * nd] = 1
        for j in range(nd):
            a_eq[ns + j, j::nd] = 1
        refs.append(linprog(c.ravel(), A_eq=a_eq, b_eq=np.concatenate([s, d]), method="highs").fun)
        block += [b] * (ns + nd)
        mass += list(s) + list(-d)
        i, j = np.nonzero(c < 3)
        tails += list(off + i)
        heads += list(off + ns + j)
        costs += list(c[i, j])
        off += ns + nd
    got = level_transport_cost(np.array(block), np.array(mass), np.array(tails), np.array(heads),
                               np.array(costs), 60)
    np.testing.assert_array_equal(got, np.round(refs).astype(np.int64))


def test_graph_ricci_curvature_agrees_if_installed():
    orc_mod = pytest.importorskip("GraphRicciCurvature.OllivierRicci")
    g = nx.barabasi_albert_graph(60, 3, seed=11)
    for alpha in (0.0, 0.5):
        h = nx.Graph(g.edges())  # no weights: every edge weight 1
        o = orc_mod.OllivierRicci(h, alpha=alpha, method="OTD", verbose="ERROR", proc=1)
        o.compute_ricci_curvature()
        got = ollivier_ricci(g, alpha=alpha)
        for u, v, d in o.G.edges(data=True):
            k = got.get((u, v), got.get((v, u)))
            assert abs(k - d["ricciCurvature"]) < 1e-9


def test_one_value_per_column_duplicates_and_both_directions():
    ei = torch.tensor([[0, 1, 1, 2, 0, 2, 2], [1, 0, 2, 1, 2, 0, 3]])
    k = ollivier_ricci(ei)
    assert isinstance(k, torch.Tensor) and k.dtype == torch.float64 and k.shape == (7,)
    assert k[0] == k[1] and k[2] == k[3] and k[4] == k[5]
    dup = ollivier_ricci(torch.cat([ei, ei[:, :1]], 1))
    assert torch.equal(dup[:7], k) and dup[7] == k[0]
    arr = ollivier_ricci(ei.numpy())
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, k.numpy())


def test_networkx_and_scipy_inputs():
    g = nx.karate_club_graph()  # carries weights: ignored, the graph is treated as unweighted
    d = ollivier_ricci(g)
    assert set(d) == set(g.edges())
    m = ollivier_ricci(nx.to_scipy_sparse_array(g))
    for (u, v), k in d.items():
        assert abs(m[u, v] - k) < 1e-12 and abs(m[v, u] - k) < 1e-12


def test_many_graphs_batched_equals_one_by_one():
    graphs = [nx.gnm_random_graph(12, 18, seed=s) for s in range(8)] + [nx.empty_graph(3)]
    eis = [np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2).T for g in graphs]
    sizes = [g.number_of_nodes() for g in graphs]
    many = ollivier_ricci_many(eis, sizes, alpha=0.5)
    for ei, n, k in zip(eis, sizes, many, strict=True):
        np.testing.assert_allclose(k, ollivier_ricci(ei, n, 0.5), atol=1e-14)


def test_isolated_nodes_and_empty_graph():
    assert ollivier_ricci(np.zeros((2, 0), dtype=np.int64), 5).shape == (0,)
    k = ollivier_ricci(np.array([[0], [1]]), num_nodes=10)
    np.testing.assert_allclose(k, [0.0], atol=1e-15)  # K2 at alpha 0: the two Dirac masses swap, W = 1
    np.testing.assert_allclose(ollivier_ricci(np.array([[0], [1]]), 10, alpha=0.5), [1.0])  # nothing moves


def test_jost_liu_bounds_bracket_exact_values():
    for g in random_graphs():
        ei = np.array(list(nx.convert_node_labels_to_integers(g).edges())).T
        exact = ollivier_ricci(ei, g.number_of_nodes())
        lower, upper = jost_liu_bounds(ei, g.number_of_nodes())
        assert np.all(lower <= exact + 1e-12) and np.all(exact <= upper + 1e-12)
    # tight on complete graphs: t = n - 2 triangles per edge
    ei = np.array(list(nx.complete_graph(6).edges())).T
    lower, upper = jost_liu_bounds(torch.as_tensor(ei))
    np.testing.assert_allclose(upper.numpy(), 4 / 5)
    np.testing.assert_allclose(ollivier_ricci(ei), 4 / 5)


def test_forman_curvatures():
    ei = np.array(list(nx.complete_graph(4).edges())).T  # degrees 3, two triangles per edge
    np.testing.assert_allclose(forman_curvature(ei), 4 - 3 - 3)
    np.testing.assert_allclose(augmented_forman_curvature(ei), 4 - 3 - 3 + 3 * 2)
    star = np.array([[0, 0, 0], [1, 2, 3]])
    np.testing.assert_allclose(forman_curvature(star), 4 - 3 - 1)


def test_sparse_distance_path_equals_dense(monkeypatch, backend):
    import lowbit.graphs.curvature as curvature

    g = nx.powerlaw_cluster_graph(120, 3, 0.4, seed=9)
    ei = np.array(list(g.edges())).T
    dense = ollivier_ricci(ei, 120, 0.5)
    monkeypatch.setattr(curvature, "_DENSE_MAX_NODES", 10)
    monkeypatch.setattr(curvature, "_CHUNK_PAIRS", 500)  # many chunks
    np.testing.assert_array_equal(ollivier_ricci(ei, 120, 0.5), dense)


def test_c_solver_hands_high_degree_edges_to_fallback(monkeypatch):
    import lowbit.graphs.curvature as curvature

    g = nx.barabasi_albert_graph(150, 3, seed=10)
    ei = np.array(list(g.edges())).T
    want = ollivier_ricci(ei, 150)
    monkeypatch.setattr(curvature, "_C_MAX_DEG_SUM", 12)  # hub edges go to the SciPy path, the rest to C
    np.testing.assert_array_equal(ollivier_ricci(ei, 150), want)
