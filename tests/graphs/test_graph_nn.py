"""GCN / GIN layers and the graph classifier: batching, the layer formulas, readouts, GIN's eps option."""

from types import SimpleNamespace

import pytest
import torch

from lowbit.graphs.nn import GCNConv, GINConv, GraphClassifier, collate


def graph(edges: list[tuple[int, int]], n: int, y: int, d: int = 3, seed: int = 0) -> SimpleNamespace:
    """An undirected graph (both directions stored) with random features."""
    ei = torch.tensor(edges + [(b, a) for a, b in edges], dtype=torch.long).T
    return SimpleNamespace(x=torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), edge_index=ei,
                           y=torch.tensor([y]), num_nodes=n)


def test_collate_offsets_edges_and_ids():
    a, b = graph([(0, 1), (1, 2)], 3, 0), graph([(0, 1)], 2, 1, seed=1)
    batch = collate([a, b])
    assert batch.num_graphs == 2 and batch.x.shape == (5, 3)
    assert batch.batch.tolist() == [0, 0, 0, 1, 1]
    assert batch.edge_index[:, -2:].tolist() == [[3, 4], [4, 3]]
    assert batch.y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="at least one graph"):
        collate([])
    with pytest.raises(ValueError, match="node features"):
        collate([SimpleNamespace(x=None, edge_index=a.edge_index, y=a.y, num_nodes=3)])


def test_gcn_layer_matches_dense_formula():
    g = graph([(0, 1), (1, 2), (2, 3), (0, 2)], 4, 0)
    conv = GCNConv(3, 5)
    a = torch.zeros(4, 4)
    a[g.edge_index[0], g.edge_index[1]] = 1
    a += torch.eye(4)
    d = a.sum(1).rsqrt()
    dense = (d[:, None] * a * d[None]) @ conv.lin(g.x) + conv.bias
    torch.testing.assert_close(conv(g.x, g.edge_index), dense)


def test_gin_layer_and_fixed_eps():
    g = graph([(0, 1), (1, 2)], 3, 0)
    conv = GINConv(3, 4)
    assert any(name == "eps" for name, _ in conv.named_parameters())
    with torch.no_grad():
        conv.eps.fill_(0.5)
    conv.eval()
    agg = torch.stack([g.x[1], g.x[0] + g.x[2], g.x[1]])
    torch.testing.assert_close(conv(g.x, g.edge_index), conv.mlp(1.5 * g.x + agg))
    fixed = GINConv(3, 4, train_eps=False)
    assert all(name != "eps" for name, _ in fixed.named_parameters())
    assert float(fixed.eps) == 0.0 and "eps" in fixed.state_dict()


@pytest.mark.parametrize("kind", ["gcn", "gin"])
@pytest.mark.parametrize("reference", [False, True])
def test_classifier_is_permutation_invariant(kind, reference):
    g = graph([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)], 4, 1)
    perm = torch.tensor([2, 0, 3, 1])  # new node i is old node perm[i]
    inv = torch.argsort(perm)
    h = SimpleNamespace(x=g.x[perm], edge_index=inv[g.edge_index], y=g.y, num_nodes=4)
    torch.manual_seed(0)
    model = GraphClassifier(kind, 3, 2, hidden=8, layers=2, reference_readout=reference).eval()
    out = model(collate([g, graph([(0, 1)], 2, 0, seed=2)]))
    out_perm = model(collate([h, graph([(0, 1)], 2, 0, seed=2)]))
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, out_perm)
    assert (model.head is None) == reference


def test_classifier_learns_triangle_vs_path():
    """A 2-layer GIN separates triangles from 3-node paths with constant features (sum pooling sees degrees)."""
    tri = [SimpleNamespace(x=torch.ones(3, 1), edge_index=graph([(0, 1), (1, 2), (0, 2)], 3, 1).edge_index,
                           y=torch.tensor([1]), num_nodes=3)] * 8
    path = [SimpleNamespace(x=torch.ones(3, 1), edge_index=graph([(0, 1), (1, 2)], 3, 0).edge_index,
                            y=torch.tensor([0]), num_nodes=3)] * 8
    batch = collate(tri + path)
    torch.manual_seed(0)
    model = GraphClassifier("gin", 1, 2, hidden=16, layers=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(batch), batch.y).backward()
        opt.step()
    assert (model.eval()(batch).argmax(-1) == batch.y).all()


def test_classifier_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'gcn' or 'gin'"):
        GraphClassifier("gat", 3, 2)
