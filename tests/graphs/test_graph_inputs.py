"""Bad input gets a clear error that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.graphs import Graph, LaplacianPE, LocalCurvatureProfile, RandomWalkPE, load_tu_dataset, ollivier_ricci


def test_edge_index_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        ollivier_ricci(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"edge_index\.T"):
        ollivier_ricci(np.array([[0, 1], [1, 2], [2, 0]]))
    with pytest.raises(ValueError, match="shape"):
        ollivier_ricci(np.arange(4))


def test_negative_and_out_of_range_ids():
    with pytest.raises(ValueError, match="negative node id -1"):
        ollivier_ricci(torch.tensor([[0, -1], [1, 2]]))
    with pytest.raises(ValueError, match="num_nodes=3"):
        ollivier_ricci(torch.tensor([[0, 1], [1, 5]]), num_nodes=3)


def test_non_integer_ids_and_self_loops():
    with pytest.raises(ValueError, match="integer node ids"):
        ollivier_ricci(np.array([[0.5, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="self-loop"):
        ollivier_ricci(torch.tensor([[0, 1, 1], [1, 2, 1]]))


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 2.0, float("nan"), "a"])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"alpha"):
        ollivier_ricci(torch.tensor([[0], [1]]), alpha=alpha)


def test_transform_arguments():
    with pytest.raises(ValueError, match="method"):
        LocalCurvatureProfile(method="sinkhorn")
    with pytest.raises(ValueError, match="alpha = 0"):
        LocalCurvatureProfile(method="bounds", alpha=0.5)
    with pytest.raises(ValueError, match="k must be"):
        LaplacianPE(k=0)
    with pytest.raises(ValueError, match="walk_length"):
        RandomWalkPE(walk_length=0)
    with pytest.raises(TypeError, match="edge_index"):
        RandomWalkPE()(object())
    with pytest.raises(ValueError, match="rows"):
        Graph(edge_index=torch.tensor([[0], [1]]), x=torch.zeros(5, 2), num_nodes=3)


def test_tu_loader_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="FOO_A.txt"):
        load_tu_dataset(tmp_path / "FOO")
    d = tmp_path / "TOY"
    d.mkdir()
    (d / "TOY_A.txt").write_text("1, 2\n2, 1\n3, 4\n4, 3\n")
    (d / "TOY_graph_indicator.txt").write_text("1\n1\n2\n2\n")
    (d / "TOY_graph_labels.txt").write_text("-1\n1\n")
    (d / "TOY_node_labels.txt").write_text("0\n2\n2\n2\n")
    gs = load_tu_dataset(d)
    assert [int(g.y) for g in gs] == [0, 1]
    assert gs[1].edge_index.tolist() == [[0, 1], [1, 0]]
    assert gs[0].x.tolist() == [[1.0, 0.0], [0.0, 1.0]]
