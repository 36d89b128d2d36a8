"""Molecule graphs from SMILES and the NCI TPSA regression set shipped with rdkit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from lowbit.graphs import LocalCurvatureProfile, load_nci_tpsa, mol_to_graph  # noqa: E402
from lowbit.graphs.molecules import ELEMENTS, nci_tpsa_path  # noqa: E402


def test_mol_to_graph_benzoic_acid():
    g = mol_to_graph("OC(=O)c1ccccc1", y=37.3)
    assert g.num_nodes == 9 and g.edge_index.shape == (2, 18)  # 9 heavy atoms, 9 bonds, both directions
    assert g.x.shape == (9, len(ELEMENTS) + 1) and torch.all(g.x.sum(1) == 1)
    assert g.x[:, ELEMENTS.index("O")].sum() == 2 and g.x[:, ELEMENTS.index("C")].sum() == 7
    assert float(g.y) == pytest.approx(37.3)
    assert mol_to_graph("not a smiles") is None


def test_nci_tpsa_labels_and_rdkit_agree():
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    graphs = load_nci_tpsa(limit=50)
    assert len(graphs) == 50 and all(g.num_nodes >= 2 for g in graphs)
    lines = [ln for ln in nci_tpsa_path().read_text().splitlines() if ln and not ln.startswith("#")]
    smiles, _, value = lines[0].rpartition(",")
    assert float(graphs[0].y) == pytest.approx(float(value))
    # the shipped labels are Ertl's TPSA, which rdkit's Descriptors.TPSA reproduces
    assert Descriptors.TPSA(Chem.MolFromSmiles(smiles)) == pytest.approx(float(value), abs=1e-6)
    ys = np.array([float(g.y) for g in graphs])
    assert ys.min() >= 0 and ys.std() > 5
    enc = LocalCurvatureProfile().transform_many(graphs[:10])
    assert enc[0].x.shape == (graphs[0].num_nodes, len(ELEMENTS) + 1 + 5)
