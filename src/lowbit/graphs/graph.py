"""Graph container and edge_index helpers shared by the curvature code and the transforms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Graph", "as_edge_index", "undirected_edges", "adjacency", "graph_num_nodes", "to_undirected"]


@dataclass
class Graph:
    """A minimal graph data object (edge_index [2, E], node features x, target y) that needs no torch_geometric."""

    edge_index: torch.Tensor
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    num_nodes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.edge_index = torch.as_tensor(as_edge_index(self.edge_index, self.num_nodes))
        if self.num_nodes is None:
            if self.x is not None:
                self.num_nodes = int(self.x.shape[0])
            else:
                self.num_nodes = int(self.edge_index.max()) + 1 if self.edge_index.numel() else 0
        if self.x is not None and int(self.x.shape[0]) != self.num_nodes:
            raise ValueError(
                f"x has {int(self.x.shape[0])} rows but the graph has num_nodes={self.num_nodes}; "
                "give one feature row per node"
            )

    def __copy__(self) -> Graph:
        new = Graph.__new__(Graph)
        new.__dict__.update(self.__dict__)
        new.__dict__["extra"] = dict(self.__dict__.get("extra", {}))
        return new

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: attributes set by transforms live in `extra`.
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"Graph has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in {"edge_index", "x", "y", "num_nodes", "extra"}:
            object.__setattr__(self, name, value)
        else:
            self.__dict__.setdefault("extra", {})[name] = value


def as_edge_index(edge_index: Any, num_nodes: int | None = None) -> np.ndarray:
    """Validate an edge_index (tensor, array or nested list) and return it as an int64 array of shape [2, E]."""
    if isinstance(edge_index, torch.Tensor):
        arr = edge_index.detach().cpu().numpy()
    else:
        arr = np.asarray(edge_index)
    if arr.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[0] != 2:
        hint = " (it looks like [E, 2]: pass edge_index.T)" if arr.ndim == 2 and arr.shape[1] == 2 else ""
        raise ValueError(f"edge_index must have shape [2, E], got {tuple(arr.shape)}{hint}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"edge_index must hold integer node ids, got dtype {arr.dtype}; use a LongTensor")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError(
            f"edge_index holds negative node id {int(arr.min())}; node ids must be 0..num_nodes-1"
        )
    if num_nodes is not None:
        if num_nodes < 0:
            raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
        if arr.max() >= num_nodes:
            raise ValueError(
                f"edge_index holds node id {int(arr.max())} but num_nodes={num_nodes}; "
                "ids must be < num_nodes (pass a larger num_nodes or relabel the nodes)"
            )
    return arr


def graph_num_nodes(edge_index: np.ndarray, num_nodes: int | None) -> int:
    """Number of nodes: num_nodes if given, else max id + 1."""
    if num_nodes is not None:
        return int(num_nodes)
    return int(edge_index.max()) + 1 if edge_index.size else 0


def undirected_edges(edge_index: np.ndarray, n: int, allow_self_loops: bool = False) -> tuple[np.ndarray, ...]:
    """Unique undirected edges (lo, hi, lo < hi) and, per column of edge_index, the index of its edge."""
    src, dst = edge_index
    loops = src == dst
    if loops.any() and not allow_self_loops:
        i = int(np.flatnonzero(loops)[0])
        raise ValueError(
            f"edge_index has a self-loop at column {i} (node {int(src[i])}); curvature is defined on simple "
            "graphs: drop self-loops first (e.g. edge_index[:, edge_index[0] != edge_index[1]])"
        )
    lo = np.minimum(src, dst)
    hi = np.maximum(src, dst)
    key = lo * np.int64(n) + hi
    ukey, inverse = np.unique(key, return_inverse=True)
    return ukey // n, ukey % n, inverse.reshape(-1)


def to_undirected(edge_index: Any, num_nodes: int | None = None) -> torch.Tensor:
    """Both directions of every edge, duplicates and self-loops removed, as a [2, 2E] LongTensor."""
    ei = as_edge_index(edge_index, num_nodes)
    n = graph_num_nodes(ei, num_nodes)
    ei = ei[:, ei[0] != ei[1]]
    lo, hi, _ = undirected_edges(ei, n)
    return torch.as_tensor(np.stack([np.concatenate([lo, hi]), np.concatenate([hi, lo])]))


def adjacency(lo: np.ndarray, hi: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric 0/1 CSR adjacency (int32, sorted indices) of the undirected edges (lo, hi)."""
    rows = np.concatenate([lo, hi])
    cols = np.concatenate([hi, lo])
    a = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, cols)), shape=(n, n))
    a.sum_duplicates()
    a.data[:] = 1
    a.sort_indices()
    return a
