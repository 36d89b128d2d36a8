"""Plain-PyTorch GCN and GIN graph classifiers (no torch_geometric needed).

GCN: Kipf & Welling, "Semi-supervised classification with graph convolutional networks" (ICLR 2017).
GIN: Xu et al., "How powerful are graph neural networks?" (ICLR 2019).  Message passing uses index_add_.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["GraphBatch", "collate", "GCNConv", "GINConv", "GraphClassifier"]


@dataclass
class GraphBatch:
    """Disjoint union of graphs: node features, [2, E] edges, graph id per node, targets."""

    x: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    y: torch.Tensor
    num_graphs: int


def collate(graphs: list[Any]) -> GraphBatch:
    """Batch graph objects (edge_index, x, y, num_nodes) into one disjoint-union GraphBatch."""
    if not graphs:
        raise ValueError("collate needs at least one graph")
    xs, eis, bs, ys = [], [], [], []
    offset = 0
    for i, g in enumerate(graphs):
        if g.x is None:
            raise ValueError("every graph needs node features x (add a transform or constant features)")
        n = int(g.num_nodes)
        xs.append(g.x.float())
        eis.append(torch.as_tensor(g.edge_index, dtype=torch.long) + offset)
        bs.append(torch.full((n,), i, dtype=torch.long))
        ys.append(torch.as_tensor(g.y).view(-1))
        offset += n
    return GraphBatch(torch.cat(xs), torch.cat(eis, 1), torch.cat(bs), torch.cat(ys), len(graphs))


class GCNConv(nn.Module):
    """GCN layer: D^-1/2 (A + I) D^-1/2 X W + b."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        loop = torch.arange(n, device=x.device)
        src = torch.cat([edge_index[0], loop])
        dst = torch.cat([edge_index[1], loop])
        deg = torch.zeros(n, device=x.device).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
        norm = deg[src].rsqrt() * deg[dst].rsqrt()
        h = self.lin(x)
        out = torch.zeros_like(h).index_add_(0, dst, h[src] * norm.unsqueeze(-1))
        return out + self.bias


class GINConv(nn.Module):
    """GIN layer: MLP((1 + eps) h_i + sum of neighbour h_j), eps learnable (or fixed at 0: ``train_eps=False``)."""

    def __init__(self, d_in: int, d_out: int, train_eps: bool = True) -> None:
        super().__init__()
        if train_eps:
            self.eps = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("eps", torch.zeros(1))
        self.mlp = nn.Sequential(
            nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(), nn.Linear(d_out, d_out)
        )

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        agg = torch.zeros_like(x).index_add_(0, edge_index[1], x[edge_index[0]])
        return self.mlp((1 + self.eps) * x + agg)


class GraphClassifier(nn.Module):
    """Stack of GCN or GIN layers (ReLU, dropout), mean (GCN) or sum (GIN) pooling, linear head.

    ``reference_readout=True`` follows the LCP paper's code instead: one more conv layer maps straight to
    ``n_classes`` (no activation after it) and the node outputs are mean-pooled, with no linear head.
    ``train_eps=False`` fixes GIN's eps at 0 (PyTorch Geometric's default, which the paper code keeps).
    """

    def __init__(
        self, kind: str, d_in: int, n_classes: int, hidden: int = 64, layers: int = 4, dropout: float = 0.5,
        reference_readout: bool = False, train_eps: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("gcn", "gin"):
            raise ValueError(f"kind must be 'gcn' or 'gin', got {kind!r}")
        def conv(a: int, b: int) -> nn.Module:
            return GCNConv(a, b) if kind == "gcn" else GINConv(a, b, train_eps)

        dims = [d_in] + [hidden] * layers + ([n_classes] if reference_readout else [])
        self.kind = kind
        self.reference_readout = reference_readout
        self.convs = nn.ModuleList(conv(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = nn.Dropout(dropout)
        self.head = None if reference_readout else nn.Linear(hidden, n_classes)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        h = batch.x
        for i, conv in enumerate(self.convs):
            h = conv(h, batch.edge_index)
            if self.head is not None or i < len(self.convs) - 1:
                h = self.dropout(torch.relu(h))
        pooled = torch.zeros(batch.num_graphs, h.shape[1], dtype=h.dtype).index_add_(0, batch.batch, h)
        if self.kind == "gcn" or self.head is None:
            count = torch.bincount(batch.batch, minlength=batch.num_graphs).clamp(min=1)
            pooled = pooled / count.unsqueeze(-1).to(h.dtype)
        return pooled if self.head is None else self.head(pooled)
