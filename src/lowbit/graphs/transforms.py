"""Structural-encoding transforms in the style of PyTorch Geometric's ``BaseTransform``.

``LocalCurvatureProfile`` follows Fesser & Weber, "Effective structural encodings via local curvature
profiles" (ICLR 2024); ``LaplacianPE`` and ``RandomWalkPE`` follow Dwivedi et al., "Benchmarking graph
neural networks" (JMLR 2023) and "Graph neural networks with learnable structural and positional
representations" (ICLR 2022), as in PyG's ``AddLaplacianEigenvectorPE`` / ``AddRandomWalkPE``.

Each transform takes a graph object with ``edge_index``, ``num_nodes`` and optionally ``x`` (our
:class:`lowbit.graphs.Graph` or a ``torch_geometric.data.Data``), copies it shallowly and either concatenates
the encoding to ``x`` (``attr_name=None``, the default, so a model that reads ``x`` really sees it) or stores
it under ``attr_name``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .bounds import edge_degrees_triangles, jost_liu_lower, jost_liu_upper
from .curvature import ollivier_ricci_undirected
from .graph import adjacency, as_edge_index, undirected_edges

__all__ = ["BaseTransform", "Compose", "LocalCurvatureProfile", "LaplacianPE", "RandomWalkPE", "local_profile"]

_DENSE_MAX = 3000


class BaseTransform:
    """Callable transform: ``transform(data)`` returns a shallow copy of ``data`` with the encoding added."""

    def __call__(self, data: Any) -> Any:
        return self.forward(copy.copy(data))

    def forward(self, data: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Compose(BaseTransform):
    """Apply several transforms in order (e.g. LCP then RWPE)."""

    def __init__(self, transforms: list[BaseTransform]) -> None:
        self.transforms = list(transforms)

    def forward(self, data: Any) -> Any:
        for t in self.transforms:
            data = t(data)
        return data

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def _graph_parts(data: Any) -> tuple[np.ndarray, int]:
    """(edge_index as int64 array, num_nodes) of a graph object, with clear errors."""
    if not hasattr(data, "edge_index"):
        raise TypeError(f"expected a graph object with edge_index, got {type(data).__name__}")
    n = getattr(data, "num_nodes", None)
    x = getattr(data, "x", None)
    if n is None and x is not None:
        n = int(x.shape[0])
    ei = as_edge_index(data.edge_index, n)
    if n is None:
        n = int(ei.max()) + 1 if ei.size else 0
    return ei, int(n)


def _attach(data: Any, value: torch.Tensor, attr_name: str | None) -> Any:
    """Concatenate value to data.x (attr_name None) or store it under attr_name."""
    if attr_name is None:
        x = getattr(data, "x", None)
        if x is None:
            data.x = value
        else:
            if x.dim() == 1:
                x = x.view(-1, 1)
            data.x = torch.cat([x, value.to(x.dtype if x.is_floating_point() else value.dtype)], dim=-1)
    else:
        setattr(data, attr_name, value)
    return data


def local_profile(lo: np.ndarray, hi: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """[min, max, mean, std (population), median] of the values on each node's edges; zeros if isolated."""
    node = np.concatenate([lo, hi])
    val = np.concatenate([values, values])
    out = np.zeros((n, 5))
    if node.size == 0:
        return out
    order = np.lexsort((val, node))
    node, val = node[order], val[order]
    cnt = np.bincount(node, minlength=n)
    has = cnt > 0
    start = np.cumsum(cnt) - cnt
    mean = np.bincount(node, weights=val, minlength=n)[has] / cnt[has]
    full_mean = np.zeros(n)
    full_mean[has] = mean
    var = np.bincount(node, weights=(val - full_mean[node]) ** 2, minlength=n)[has] / cnt[has]
    s, c = start[has], cnt[has]
    out[has, 0] = val[s]
    out[has, 1] = val[s + c - 1]
    out[has, 2] = mean
    out[has, 3] = np.sqrt(var)
    out[has, 4] = 0.5 * (val[s + (c - 1) // 2] + val[s + c // 2])
    return out


class LocalCurvatureProfile(BaseTransform):
    """Local Curvature Profile: per node [min, max, mean, std, median] of its edges' Ollivier-Ricci curvature.

    ``method="exact"`` solves every edge exactly (idleness ``alpha``); ``method="bounds"`` uses the midpoint of
    the Jost-Liu lower and upper bounds (alpha = 0 only), a fast approximation.
    """

    def __init__(self, method: str = "exact", alpha: float = 0.0, attr_name: str | None = None) -> None:
        if method not in ("exact", "bounds"):
            raise ValueError(f"method must be 'exact' or 'bounds', got {method!r}")
        if method == "bounds" and alpha != 0.0:
            raise ValueError("the Jost-Liu bounds hold for alpha = 0 only; use method='exact' with alpha > 0")
        from .curvature import alpha_fraction

        alpha_fraction(alpha)
        self.method, self.alpha, self.attr_name = method, alpha, attr_name

    def profile(self, edge_index: Any, num_nodes: int) -> torch.Tensor:
        """The [num_nodes, 5] float32 profile of a graph given by edge_index (self-loops ignored)."""
        ei = as_edge_index(edge_index, num_nodes)
        ei = ei[:, ei[0] != ei[1]]
        lo, hi, _ = undirected_edges(ei, num_nodes)
        if self.method == "exact":
            kappa = ollivier_ricci_undirected(lo, hi, num_nodes, self.alpha)
        else:
            du, dv, t = edge_degrees_triangles(lo, hi, num_nodes)
            kappa = 0.5 * (jost_liu_lower(du, dv, t) + jost_liu_upper(du, dv, t)) if lo.size else np.zeros(0)
        return torch.from_numpy(local_profile(lo, hi, kappa, num_nodes)).float()

    def forward(self, data: Any) -> Any:
        ei, n = _graph_parts(data)
        return _attach(data, self.profile(ei, n), self.attr_name)

    def transform_many(self, graphs: list[Any]) -> list[Any]:
        """Apply the transform to many graphs, solving all their curvatures in one batched call (exact)."""
        if self.method != "exact":
            return [self(g) for g in graphs]
        parts = [_graph_parts(g) for g in graphs]
        offsets = np.concatenate([[0], np.cumsum([n for _, n in parts])]).astype(np.int64)
        union = [ei[:, ei[0] != ei[1]] + offsets[i] for i, (ei, _) in enumerate(parts)]
        total = int(offsets[-1])
        ei_all = np.concatenate(union, axis=1) if union else np.zeros((2, 0), dtype=np.int64)
        lo, hi, _ = undirected_edges(ei_all, total)
        kappa = ollivier_ricci_undirected(lo, hi, total, self.alpha)
        prof = torch.from_numpy(local_profile(lo, hi, kappa, total)).float()
        return [
            _attach(copy.copy(g), prof[offsets[i] : offsets[i + 1]].clone(), self.attr_name)
            for i, g in enumerate(graphs)
        ]

    def __repr__(self) -> str:
        return f"LocalCurvatureProfile(method={self.method!r}, alpha={self.alpha})"


def _sym_adjacency(ei: np.ndarray, n: int) -> sp.csr_matrix:
    ei = ei[:, ei[0] != ei[1]]
    lo, hi, _ = undirected_edges(ei, n)
    return adjacency(lo, hi, n).astype(np.float64)


class LaplacianPE(BaseTransform):
    """The k eigenvectors of the symmetric normalised Laplacian after the first (zero-padded when n <= k).

    Eigenvectors have no sign: by default each is flipped so its largest-magnitude entry is positive
    (deterministic); ``random_sign_flip=True`` instead draws a random sign per call (training augmentation).
    """

    def __init__(self, k: int = 8, attr_name: str | None = None, random_sign_flip: bool = False) -> None:
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.attr_name, self.random_sign_flip = int(k), attr_name, random_sign_flip

    def encode(self, edge_index: Any, num_nodes: int) -> torch.Tensor:
        """The [num_nodes, k] float32 Laplacian eigenvector encoding."""
        n, k = num_nodes, self.k
        a = _sym_adjacency(as_edge_index(edge_index, n), n)
        deg = np.asarray(a.sum(axis=1)).ravel()
        inv = np.zeros(n)
        inv[deg > 0] = deg[deg > 0] ** -0.5
        lap = sp.eye(n) - sp.diags(inv) @ a @ sp.diags(inv)
        m = min(k + 1, n)
        if n <= _DENSE_MAX or m >= n - 1:
            vals, vecs = np.linalg.eigh(lap.toarray())
        else:
            from scipy.sparse.linalg import eigsh

            vals, vecs = eigsh(lap.tocsc(), k=m, sigma=-1e-3, which="LM")
        order = np.argsort(vals, kind="stable")[:m]
        vecs = vecs[:, order][:, 1:]
        if vecs.shape[1]:
            big = np.take_along_axis(vecs, np.abs(vecs).argmax(axis=0)[None], axis=0)
            vecs = vecs * np.where(big < 0, -1.0, 1.0)
            if self.random_sign_flip:
                vecs = vecs * np.where(np.random.random(vecs.shape[1]) < 0.5, -1.0, 1.0)
        out = np.zeros((n, k))
        out[:, : vecs.shape[1]] = vecs
        return torch.from_numpy(out).float()

    def forward(self, data: Any) -> Any:
        ei, n = _graph_parts(data)
        return _attach(data, self.encode(ei, n), self.attr_name)

    def __repr__(self) -> str:
        return f"LaplacianPE(k={self.k})"


class RandomWalkPE(BaseTransform):
    """Random-walk return probabilities [P_ii, (P^2)_ii, ..., (P^L)_ii] with P = D^-1 A (L = walk_length)."""

    def __init__(self, walk_length: int = 16, attr_name: str | None = None) -> None:
        if int(walk_length) < 1:
            raise ValueError(f"walk_length must be >= 1, got {walk_length}")
        self.walk_length, self.attr_name = int(walk_length), attr_name

    def encode(self, edge_index: Any, num_nodes: int) -> torch.Tensor:
        """The [num_nodes, walk_length] float32 random-walk encoding."""
        n = num_nodes
        a = _sym_adjacency(as_edge_index(edge_index, n), n)
        deg = np.asarray(a.sum(axis=1)).ravel()
        inv = np.zeros(n)
        inv[deg > 0] = 1.0 / deg[deg > 0]
        p = sp.diags(inv) @ a
        out = np.zeros((n, self.walk_length))
        if n <= _DENSE_MAX:
            pd = p.toarray()
            m = pd.copy()
            for i in range(self.walk_length):
                out[:, i] = np.diag(m)
                if i + 1 < self.walk_length:
                    m = m @ pd
        else:
            m = p.tocsr()
            for i in range(self.walk_length):
                out[:, i] = m.diagonal()
                if i + 1 < self.walk_length:
                    m = (m @ p).tocsr()
        return torch.from_numpy(out).float()

    def forward(self, data: Any) -> Any:
        ei, n = _graph_parts(data)
        return _attach(data, self.encode(ei, n), self.attr_name)

    def __repr__(self) -> str:
        return f"RandomWalkPE(walk_length={self.walk_length})"
