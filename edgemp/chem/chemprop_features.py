"""chemprop's molecule featurizers, reimplemented with rdkit + numpy (no torch, no chemprop).

A chemprop model only gives the right answer on the features it was trained on, so these
reproduce ``chemprop.featurizers`` (v2.3.1) bit for bit — checked against chemprop itself
on a thousand-odd molecules in ``tests/core/test_chemprop_featurizer.py``:

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

from edgemp.data.featurize import InvalidSmilesError, rdkit_chem
from edgemp.errors import clipped
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


def _positions(choices: Sequence[int]) -> dict[int, int]:
    return {v: i for i, v in enumerate(choices)}


_DEGREE_POS, _CHARGE_POS = _positions(_DEGREES), _positions(_FORMAL_CHARGES)
_CHIRAL_POS, _NUM_HS_POS, _STEREO_POS = _positions(_CHIRAL_TAGS), _positions(_NUM_HS), _positions(_STEREOS)


def atom_features(mol: Any, scheme: AtomScheme) -> np.ndarray:
    """[N, scheme.width] float32 features of every atom of ``mol``, as chemprop computes them.

    The set bits are collected as flat positions and written in one numpy call: featurizing
    is on the serving path, and per-element numpy writes would cost more than rdkit itself.
    """
    hyb = _hybridization_index(scheme)
    nums = {n: i for i, n in enumerate(scheme.atomic_nums)}
    # where each one-hot block starts (each block has an "unknown" slot at its end)
    o_deg = len(nums) + 1
    o_chg = o_deg + len(_DEGREES) + 1
    o_chi = o_chg + len(_FORMAL_CHARGES) + 1
    o_hs = o_chi + len(_CHIRAL_TAGS) + 1
    o_hyb = o_hs + len(_NUM_HS) + 1
    o_aro = o_hyb + len(hyb) + 1
    width = scheme.width
    # the "unknown" slot of each block, hoisted out of the loop
    u_num, u_deg, u_chg = len(nums), o_deg + len(_DEGREES), o_chg + len(_FORMAL_CHARGES)
    u_chi, u_hs, u_hyb = o_chi + len(_CHIRAL_TAGS), o_hs + len(_NUM_HS), o_hyb + len(hyb)
    bits: list[int] = []
    masses: list[float] = []
    for row in range(mol.GetNumAtoms()):
        a = mol.GetAtomWithIdx(row)  # not mol.GetAtoms(): its Python sequence wrapper costs more than the features
        base = row * width
        bits += (
            base + nums.get(a.GetAtomicNum(), u_num),
            base + o_deg + _DEGREE_POS.get(a.GetTotalDegree(), u_deg - o_deg),
            base + o_chg + _CHARGE_POS.get(a.GetFormalCharge(), u_chg - o_chg),
            base + o_chi + _CHIRAL_POS.get(int(a.GetChiralTag()), u_chi - o_chi),
            base + o_hs + _NUM_HS_POS.get(int(a.GetTotalNumHs()), u_hs - o_hs),
            base + o_hyb + hyb.get(int(a.GetHybridization()), u_hyb - o_hyb),
        )
        if a.GetIsAromatic():
            bits.append(base + o_aro)
        masses.append(a.GetMass())
    x = np.zeros((len(masses), width), dtype=np.float32)
    x.reshape(-1)[bits] = 1.0
    x[:, -1] = 0.01 * np.asarray(masses, dtype=np.float64)  # in float64 first, as chemprop does
    return x


@lru_cache(maxsize=1)
def _bond_type_index() -> dict[int, int]:
    from rdkit.Chem.rdchem import BondType

    return {int(t): i for i, t in enumerate((BondType.SINGLE, BondType.DOUBLE, BondType.TRIPLE, BondType.AROMATIC))}


def _bond_bits(bond: Any, types: dict[int, int]) -> list[int]:
    """Set positions of one bond's 14 features (an unknown bond type sets no type bit, as in chemprop)."""
    bits = [7 + _STEREO_POS.get(int(bond.GetStereo()), len(_STEREOS))]
    t = types.get(int(bond.GetBondType()))
    if t is not None:
        bits.append(1 + t)
    if bond.GetIsConjugated():
        bits.append(5)
    if bond.IsInRing():
        bits.append(6)
    return bits


def bond_features(bond: Any) -> np.ndarray:
    """[14] float32 features of one rdkit bond: null, type, conjugated, in ring, stereo."""
    x = np.zeros(BOND_FEATURES, dtype=np.float32)
    x[_bond_bits(bond, _bond_type_index())] = 1.0
    return x


def parse_smiles_like_chemprop(smiles: str) -> Any:
    """``chemprop.utils.make_mol(smi, keep_h=False, add_h=False)``, with an error that names the SMILES."""
    Chem = rdkit_chem()
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidSmilesError("empty SMILES string")
    params = Chem.SmilesParserParams()
    params.removeHs = True
    mol = Chem.MolFromSmiles(smiles, params)
    if mol is None:
        raise InvalidSmilesError(f"invalid SMILES {clipped(smiles, 200)!r}")
    if mol.GetNumAtoms() == 0:
        raise InvalidSmilesError(f"SMILES {clipped(smiles, 200)!r} has no atoms")
    return mol


def mol_to_chemprop_graph(mol: Any, scheme: AtomScheme) -> Graph:
    """A molecule as chemprop's ``SimpleMoleculeMolGraphFeaturizer`` lays it out (edges in reverse pairs)."""
    x = atom_features(mol, scheme)
    types = _bond_type_index()
    ends: list[int] = []
    bits: list[int] = []
    for k in range(mol.GetNumBonds()):
        bond = mol.GetBondWithIdx(k)
        u, v = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        ends += (u, v)
        for b in _bond_bits(bond, types):  # the same features on u→v (row 2k) and v→u (row 2k+1)
            bits += (2 * k * BOND_FEATURES + b, (2 * k + 1) * BOND_FEATURES + b)
    pairs = np.asarray(ends, dtype=np.int64).reshape(-1, 2)  # [B, 2] = (u, v)
    edge_index = np.empty((2, 2 * len(pairs)), dtype=np.int64)
    edge_index[0, 0::2], edge_index[1, 0::2] = pairs[:, 0], pairs[:, 1]  # u→v
    edge_index[0, 1::2], edge_index[1, 1::2] = pairs[:, 1], pairs[:, 0]  # v→u
    edge_attr = np.zeros((2 * len(pairs), BOND_FEATURES), dtype=np.float32)
    edge_attr.reshape(-1)[bits] = 1.0
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
