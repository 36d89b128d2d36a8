"""LocalCurvatureProfile, LaplacianPE, RandomWalkPE: shapes, values, attr_name, composition, duck typing."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import torch

from lowbit.graphs import (
    Compose,
    Graph,
    LaplacianPE,
    LocalCurvatureProfile,
    RandomWalkPE,
    local_profile,
    ollivier_ricci,
    to_undirected,
)


def star_graph(k: int = 4) -> Graph:
    ei = to_undirected(torch.tensor([[0] * k, list(range(1, k + 1))]))
    return Graph(edge_index=ei, x=torch.ones(k + 2, 3), num_nodes=k + 2)  # node k + 1 is isolated


def test_lcp_values_on_star_with_isolated_node():
    g = star_graph(4)
    out = LocalCurvatureProfile(alpha=0.5)(g)
    assert out.x.shape == (6, 3 + 5) and g.x.shape == (6, 3)  # input not modified
    lcp = out.x[:, 3:]
    torch.testing.assert_close(lcp[0], torch.tensor([0.25, 0.25, 0.25, 0.0, 0.25]))  # star at alpha .5: 1/k
    torch.testing.assert_close(lcp[5], torch.zeros(5))  # isolated: zeros


def test_lcp_profile_statistics_match_numpy():
    g = nx.convert_node_labels_to_integers(nx.barabasi_albert_graph(40, 2, seed=3))
    ei = torch.tensor(list(g.edges())).T
    kappa = ollivier_ricci(ei, 40).numpy()
    prof = LocalCurvatureProfile().profile(to_undirected(ei), 40).numpy()
    for v in range(40):
        vals = np.array([kappa[i] for i, (a, b) in enumerate(g.edges()) if v in (a, b)])
        ref = [vals.min(), vals.max(), vals.mean(), vals.std(), np.median(vals)]
        np.testing.assert_allclose(prof[v], ref, atol=1e-6)
    odd = local_profile(np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([3.0, 1.0, 2.0]), 4)
    np.testing.assert_allclose(odd[0], [1, 3, 2, np.std([1, 2, 3]), 2])


def test_lcp_transform_many_equals_one_by_one():
    graphs = [
        Graph(edge_index=to_undirected(torch.tensor(list(nx.gnm_random_graph(9, 14, seed=s).edges())).T),
              x=torch.ones(9, 1), num_nodes=9)
        for s in range(5)
    ]
    lcp = LocalCurvatureProfile(alpha=0.5)
    for a, b in zip(lcp.transform_many(graphs), [lcp(g) for g in graphs], strict=True):
        torch.testing.assert_close(a.x, b.x)


def test_lcp_bounds_mode_and_attr_name():
    g = star_graph(3)
    out = LocalCurvatureProfile(method="bounds", attr_name="lcp")(g)
    assert torch.equal(out.x, g.x) and out.lcp.shape == (5, 5)
    # star: no triangles, Jost-Liu upper 0, lower -(1 - 1/3 - 1)_+ ... = 0 -> midpoint 0
    torch.testing.assert_close(out.lcp, torch.zeros(5, 5))


def test_random_walk_pe_values():
    g = star_graph(4)
    pe = RandomWalkPE(walk_length=4, attr_name="rw")(g).rw
    assert pe.shape == (6, 4)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(pe[1], torch.tensor([0.0, 0.25, 0.0, 0.25]))
    torch.testing.assert_close(pe[5], torch.zeros(4))
    cyc = Graph(edge_index=to_undirected(torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])), num_nodes=6)
    pe = RandomWalkPE(walk_length=4)(cyc).x  # no x: the encoding becomes x
    torch.testing.assert_close(pe[:, 1], torch.full((6,), 0.5))
    torch.testing.assert_close(pe[:, 3], torch.full((6,), 6 / 16))


def test_laplacian_pe_is_eigenbasis_and_padded():
    g = nx.convert_node_labels_to_integers(nx.cycle_graph(7))
    ei = to_undirected(torch.tensor(list(g.edges())).T)
    pe = LaplacianPE(k=8, attr_name="pe")(Graph(edge_index=ei, num_nodes=7)).pe.double().numpy()
    assert pe.shape == (7, 8)
    assert np.allclose(pe[:, 6:], 0)  # only n - 1 = 6 nontrivial eigenvectors
    lap = nx.normalized_laplacian_matrix(g).toarray()
    vecs = pe[:, :6]
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(6), atol=1e-5)
    lam = np.diag(vecs.T @ lap @ vecs)
    np.testing.assert_allclose(lap @ vecs, vecs * lam, atol=1e-5)
    assert np.all(np.diff(lam) >= -1e-6) and lam[0] > 1e-6  # ascending, constant vector skipped
    again = LaplacianPE(k=8)(Graph(edge_index=ei, num_nodes=7)).x.numpy()
    np.testing.assert_allclose(again, pe.astype(np.float32))  # deterministic sign convention
    flipped = LaplacianPE(k=3, random_sign_flip=True).encode(ei, 7).numpy()
    np.testing.assert_allclose(np.abs(flipped), np.abs(pe[:, :3]), atol=1e-6)


def test_compose_and_duck_typed_data_objects():
    g = nx.convert_node_labels_to_integers(nx.karate_club_graph())
    ei = to_undirected(torch.tensor(list(g.edges())).T)
    data = SimpleNamespace(edge_index=ei, num_nodes=34, x=torch.randn(34, 2))  # like torch_geometric Data
    out = Compose([LocalCurvatureProfile(), RandomWalkPE(16), LaplacianPE(8)])(data)
    assert out.x.shape == (34, 2 + 5 + 16 + 8)
    assert data.x.shape == (34, 2)
    torch.testing.assert_close(out.x[:, :2], data.x)


@pytest.mark.skipif(importlib.util.find_spec("grakel") is None, reason="MUTAG is read from the grakel wheel")
def test_mutag_from_grakel_wheel():
    from lowbit.graphs import load_mutag

    graphs = load_mutag()
    assert len(graphs) == 188
    assert sum(int(g.y) for g in graphs) == 125
    assert all(g.x.shape == (g.num_nodes, 7) for g in graphs)
    assert sum(g.num_nodes for g in graphs) == 3371 and sum(g.edge_index.shape[1] for g in graphs) == 7442
    out = LocalCurvatureProfile()(graphs[0])
    assert out.x.shape == (17, 12) and torch.isfinite(out.x).all()
