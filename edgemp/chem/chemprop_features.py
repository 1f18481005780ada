"""chemprop's molecule featurizers, reimplemented with rdkit + numpy (no torch, no chemprop).

A chemprop model only gives the right answer on the features it was trained on, so these
reproduce ``chemprop.featurizers`` (v2.3.1) bit for bit — checked against chemprop itself
on a thousand-odd molecules in ``tests/test_chemprop_featurizer.py``:

* atoms: ``MultiHotAtomFeaturizer`` in its ``v2`` (72 features, the default), ``v1`` (133)
  and ``organic`` (44) forms — one-hots with an "unknown" pad for atomic number, total
  degree, formal charge, chiral tag, total H count and hybridization; then aromaticity and
  0.01 × mass;
* bonds: ``MultiHotBondFeaturizer`` (14) — a null bit, bond type, conjugated, in ring, stereo;
* graph: ``SimpleMoleculeMolGraphFeaturizer`` — each bond becomes two directed edges
  (u→v then v→u), so edge ``2k + 1`` is the reverse of edge ``2k``: the D-MPNN relies on it.

Molecules are parsed as chemprop's ``make_mol`` does by default (hydrogens removed, none added).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from edgemp.data.featurize import InvalidSmilesError, _rdkit_chem
from edgemp.graph import Graph

BOND_FEATURES = 14  # null, 4 bond types, conjugated, in ring, 6 stereo + unknown
_DEGREES = tuple(range(6))
_FORMAL_CHARGES = (-1, -2, 1, 2, 0)  # chemprop's order: the one-hot position follows it
_CHIRAL_TAGS = tuple(range(4))
_NUM_HS = tuple(range(5))
_STEREOS = tuple(range(6))  # rdkit BondStereo STEREONONE .. STEREOTRANS


@dataclass(frozen=True)
class AtomScheme:
    """One parameterisation of chemprop's ``MultiHotAtomFeaturizer`` (names its choices)."""

    name: str
    atomic_nums: tuple[int, ...]
    hybridizations: tuple[str, ...]  # rdkit HybridizationType names, in chemprop's order

    @property
    def width(self) -> int:
        subfeats = (self.atomic_nums, _DEGREES, _FORMAL_CHARGES, _CHIRAL_TAGS, _NUM_HS, self.hybridizations)
        return sum(len(c) + 1 for c in subfeats) + 2


ATOM_SCHEMES: dict[str, AtomScheme] = {
    "v2": AtomScheme("v2", tuple(range(1, 37)) + (53,), ("S", "SP", "SP2", "SP2D", "SP3", "SP3D", "SP3D2")),
    "v1": AtomScheme("v1", tuple(range(1, 101)), ("SP", "SP2", "SP3", "SP3D", "SP3D2")),
    "organic": AtomScheme("organic", (1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 35, 53), ("S", "SP", "SP2", "SP3")),
}


@lru_cache(maxsize=None)
def _hybridization_index(scheme: AtomScheme) -> dict[int, int]:
    """rdkit's integer hybridization value → one-hot position (looked up by name: values vary by rdkit)."""
    from rdkit.Chem.rdchem import HybridizationType

    return {int(getattr(HybridizationType, n)): i for i, n in enumerate(scheme.hybridizations)}


def _index(choices: Sequence[int], value: int) -> int:
    return choices.index(value) if value in choices else len(choices)


def atom_features(mol: Any, scheme: AtomScheme) -> np.ndarray:
    """[N, scheme.width] float32 features of every atom of ``mol``, as chemprop computes them."""
    atoms = list(mol.GetAtoms())
    x = np.zeros((len(atoms), scheme.width), dtype=np.float64)
    hyb = _hybridization_index(scheme)
    nums = {n: i for i, n in enumerate(scheme.atomic_nums)}
    for row, a in enumerate(atoms):
        offset = 0
        x[row, offset + nums.get(a.GetAtomicNum(), len(nums))] = 1
        offset += len(nums) + 1
        for value, choices in (
            (a.GetTotalDegree(), _DEGREES),
            (a.GetFormalCharge(), _FORMAL_CHARGES),
            (int(a.GetChiralTag()), _CHIRAL_TAGS),
            (int(a.GetTotalNumHs()), _NUM_HS),
        ):
            x[row, offset + _index(choices, value)] = 1
            offset += len(choices) + 1
        x[row, offset + hyb.get(int(a.GetHybridization()), len(hyb))] = 1
        offset += len(hyb) + 1
        x[row, offset] = int(a.GetIsAromatic())
        x[row, offset + 1] = 0.01 * a.GetMass()  # in float64 first, as chemprop does
    return x.astype(np.float32)


@lru_cache(maxsize=1)
def _bond_type_index() -> dict[int, int]:
    from rdkit.Chem.rdchem import BondType

    return {int(t): i for i, t in enumerate((BondType.SINGLE, BondType.DOUBLE, BondType.TRIPLE, BondType.AROMATIC))}


def bond_features(bond: Any) -> np.ndarray:
    """[14] float32 features of one rdkit bond (an unknown bond type sets no type bit, as in chemprop)."""
    x = np.zeros(BOND_FEATURES, dtype=np.float32)
    t = _bond_type_index().get(int(bond.GetBondType()))
    if t is not None:
        x[1 + t] = 1
    x[5] = int(bond.GetIsConjugated())
    x[6] = int(bond.IsInRing())
    x[7 + _index(_STEREOS, int(bond.GetStereo()))] = 1
    return x


def parse_smiles_like_chemprop(smiles: str) -> Any:
    """``chemprop.utils.make_mol(smi, keep_h=False, add_h=False)``, with an error that names the SMILES."""
    Chem = _rdkit_chem()
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidSmilesError("empty SMILES string")
    params = Chem.SmilesParserParams()
    params.removeHs = True
    mol = Chem.MolFromSmiles(smiles, params)
    if mol is None:
        raise InvalidSmilesError(f"invalid SMILES {smiles[:200]!r}")
    if mol.GetNumAtoms() == 0:
        raise InvalidSmilesError(f"SMILES {smiles[:200]!r} has no atoms")
    return mol


def mol_to_chemprop_graph(mol: Any, scheme: AtomScheme) -> Graph:
    """A molecule as chemprop's ``SimpleMoleculeMolGraphFeaturizer`` lays it out (edges in reverse pairs)."""
    x = atom_features(mol, scheme)
    bonds = list(mol.GetBonds())
    edge_attr = np.zeros((2 * len(bonds), BOND_FEATURES), dtype=np.float32)
    edge_index = np.zeros((2, 2 * len(bonds)), dtype=np.int64)
    for k, bond in enumerate(bonds):
        u, v = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        edge_attr[2 * k : 2 * k + 2] = bond_features(bond)
        edge_index[:, 2 * k] = (u, v)
        edge_index[:, 2 * k + 1] = (v, u)
    return Graph(x=x, edge_index=edge_index, edge_attr=edge_attr)


PAIRED_EDGE_FAMILIES = ("chemprop-dmpnn-",)  # model families that read edge 2k+1 as the reverse of 2k


def require_reverse_pairs(g: Graph, index: int) -> None:
    """Refuse a graph whose edges are not laid out as reverse pairs (``2k + 1`` = ``2k`` reversed).

    A D-MPNN finds each edge's reverse by position, so any other layout would give a wrong
    answer, not an error; graphs from :mod:`edgemp.chem` always pass.
    """
    from edgemp.errors import GraphValidationError

    ei = g.edge_index
    if ei.shape[1] % 2:
        raise GraphValidationError(
            f"graph {index}: a chemprop model needs each bond as two directed edges (u→v, then v→u), "
            f"but edge_index has an odd number of edges ({ei.shape[1]})")
    bad = np.flatnonzero((ei[0, 0::2] != ei[1, 1::2]) | (ei[1, 0::2] != ei[0, 1::2]))
    if bad.size:
        k = int(bad[0])
        raise GraphValidationError(
            f"graph {index}: edge {2 * k + 1} is not the reverse of edge {2 * k}; a chemprop model needs each "
            "bond as two consecutive directed edges (u→v, then v→u), as edgemp.chem featurizes molecules")
