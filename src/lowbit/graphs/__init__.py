"""Graph structural encodings: exact Ollivier-Ricci curvature, Local Curvature Profiles, Laplacian and RW PEs.

Fesser & Weber, "Effective structural encodings via local curvature profiles" (ICLR 2024).
"""

from ._orc_c import backend as curvature_backend
from ._orc_c import set_backend as set_curvature_backend
from .bounds import augmented_forman_curvature, forman_curvature, jost_liu_bounds
from .curvature import ollivier_ricci, ollivier_ricci_many, ollivier_ricci_undirected
from .graph import Graph, as_edge_index, to_undirected
from .molecules import load_nci_tpsa, mol_to_graph
from .transforms import BaseTransform, Compose, LaplacianPE, LocalCurvatureProfile, RandomWalkPE, local_profile
from .tu import load_mutag, load_tu_dataset, mutag_path

__all__ = [
    "BaseTransform",
    "Compose",
    "Graph",
    "LaplacianPE",
    "LocalCurvatureProfile",
    "RandomWalkPE",
    "as_edge_index",
    "augmented_forman_curvature",
    "curvature_backend",
    "forman_curvature",
    "jost_liu_bounds",
    "load_mutag",
    "load_nci_tpsa",
    "load_tu_dataset",
    "local_profile",
    "mol_to_graph",
    "mutag_path",
    "ollivier_ricci",
    "ollivier_ricci_many",
    "ollivier_ricci_undirected",
    "set_curvature_backend",
    "to_undirected",
]
