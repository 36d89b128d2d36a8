"""Molecular graphs from SMILES (RDKit), and the NCI TPSA regression set shipped inside the ``rdkit`` wheel.

rdkit ships ``Data/NCI/first_5K.smi`` (the first 5,000 NCI compounds) and ``Data/NCI/first_5k.tpsa.csv``
("SMILES,TPSA" lines whose TPSA values were computed with Daylight tools and Ertl's tpsa.c, as the file's
header says), so a regression task is available offline.  Nodes are heavy atoms (hydrogens stay implicit),
edges are bonds (both directions, bond orders ignored), node features are a one-hot element type.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from .graph import Graph

__all__ = ["ELEMENTS", "mol_to_graph", "nci_tpsa_path", "load_nci_tpsa"]

ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P")  # one-hot columns; a last column for anything else


def _rdkit_chem():  # noqa: ANN202 - rdkit has no stubs
    """Import rdkit.Chem with a helpful error if rdkit is missing."""
    if importlib.util.find_spec("rdkit") is None:
        raise ModuleNotFoundError("molecule graphs need RDKit: `pip install rdkit` (or lowbit[dev])")
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # unparsable NCI entries are counted by the caller, not printed
    return Chem


def mol_to_graph(smiles: str, y: float | None = None) -> Graph | None:
    """Heavy-atom graph of a SMILES string (one-hot element x, float y), or None if RDKit cannot parse it."""
    chem = _rdkit_chem()
    mol = chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    col = {e: i for i, e in enumerate(ELEMENTS)}
    types = [col.get(a.GetSymbol(), len(ELEMENTS)) for a in mol.GetAtoms()]
    x = torch.zeros(len(types), len(ELEMENTS) + 1)
    x[torch.arange(len(types)), torch.tensor(types)] = 1.0
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    ei = np.array(bonds, dtype=np.int64).reshape(-1, 2).T
    ei = np.concatenate([ei, ei[::-1]], axis=1)
    return Graph(
        edge_index=torch.from_numpy(np.ascontiguousarray(ei)),
        x=x,
        y=None if y is None else torch.tensor([float(y)]),
        num_nodes=len(types),
    )


def nci_tpsa_path() -> Path:
    """Path of ``first_5k.tpsa.csv`` inside the installed rdkit's data directory."""
    _rdkit_chem()
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5k.tpsa.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this rdkit installation (a wheel from PyPI ships it)")
    return path


def load_nci_tpsa(limit: int | None = None, min_atoms: int = 2) -> list[Graph]:
    """NCI molecules with their shipped TPSA labels (y, in A^2), in file order; skips unparsable SMILES.

    ``limit`` keeps the first ``limit`` usable molecules; molecules with fewer than ``min_atoms`` heavy atoms
    (single ions, which have no edge) are skipped.  Disconnected SMILES (salts, "." in the SMILES) are kept whole.
    """
    graphs: list[Graph] = []
    for line in nci_tpsa_path().read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        smiles, _, value = line.rpartition(",")
        g = mol_to_graph(smiles.strip(), float(value))
        if g is None or g.num_nodes < min_atoms:
            continue
        graphs.append(g)
        if limit is not None and len(graphs) >= limit:
            break
    return graphs
