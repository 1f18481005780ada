"""RDKit molecules to edgemp graphs: atoms are nodes, bonds are edges in both directions.

Every feature is a fixed-width one-hot (or flag) so that any molecule, including a
lone atom with no bonds, yields arrays of the same widths; exported models are built
for :data:`NODE_FEATURES` / :data:`EDGE_FEATURES` and must never see another width.
RDKit is imported lazily: the base package does not depend on it.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from edgemp.errors import EdgempError, MissingExtraError
from edgemp.graph import Graph

logger = logging.getLogger(__name__)

# Common organic elements; anything else falls into the trailing "other" slot.
ELEMENTS: tuple[str, ...] = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si", "Se")
DEGREES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)  # 5 means "5 or more"
FORMAL_CHARGES: tuple[int, ...] = (-1, 0, 1)  # charges beyond +-1 are clipped
HYBRIDIZATIONS: tuple[str, ...] = ("SP", "SP2", "SP3", "SP3D", "SP3D2")  # + "other"
NUM_HS: tuple[int, ...] = (0, 1, 2, 3, 4)  # 4 means "4 or more"
BOND_TYPES: tuple[str, ...] = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")

NODE_FEATURES: int = (
    len(ELEMENTS) + 1 + len(DEGREES) + len(FORMAL_CHARGES) + 1 + len(HYBRIDIZATIONS) + 1 + len(NUM_HS)
)
EDGE_FEATURES: int = len(BOND_TYPES) + 2  # bond type one-hot, conjugated, in ring


class InvalidSmilesError(EdgempError, ValueError):
    """A SMILES string could not be parsed into a molecule."""


def rdkit_chem() -> Any:
    """``rdkit.Chem`` with RDKit's own stderr logging off, or an install hint for the ``chem`` extra."""
    try:
        from rdkit import Chem, RDLogger
    except ImportError as e:
        raise MissingExtraError("rdkit", "chem", "molecule featurisation") from e
    # RDKit prints parse failures to stderr itself; we report them as errors instead.
    RDLogger.DisableLog("rdApp.*")
    return Chem


def _one_hot(value: Any, choices: Sequence[Any], other: bool) -> list[float]:
    """One-hot ``value`` over ``choices``; unknown values go to a trailing slot if ``other``."""
    out = [0.0] * (len(choices) + int(other))
    if value in choices:
        out[choices.index(value)] = 1.0
    elif other:
        out[-1] = 1.0
    return out


def atom_features(atom: Any) -> list[float]:
    """Feature vector (length :data:`NODE_FEATURES`) of one RDKit atom."""
    feats = _one_hot(atom.GetSymbol(), ELEMENTS, other=True)
    feats += _one_hot(min(atom.GetDegree(), DEGREES[-1]), DEGREES, other=False)
    charge = max(FORMAL_CHARGES[0], min(atom.GetFormalCharge(), FORMAL_CHARGES[-1]))
    feats += _one_hot(charge, FORMAL_CHARGES, other=False)
    feats.append(float(atom.GetIsAromatic()))
    feats += _one_hot(str(atom.GetHybridization()), HYBRIDIZATIONS, other=True)
    feats += _one_hot(min(atom.GetTotalNumHs(), NUM_HS[-1]), NUM_HS, other=False)
    return feats


def bond_features(bond: Any) -> list[float]:
    """Feature vector (length :data:`EDGE_FEATURES`) of one RDKit bond."""
    feats = _one_hot(str(bond.GetBondType()), BOND_TYPES, other=False)
    feats.append(float(bond.GetIsConjugated()))
    feats.append(float(bond.IsInRing()))
    return feats


def parse_smiles(smiles: str) -> Any:
    """Parse a SMILES string, raising :class:`InvalidSmilesError` instead of returning None."""
    Chem = rdkit_chem()
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidSmilesError("empty SMILES string")
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise InvalidSmilesError(f"invalid SMILES {smiles!r}")
    if mol.GetNumAtoms() == 0:
        raise InvalidSmilesError(f"SMILES {smiles!r} has no atoms")
    return mol


def mol_to_graph(mol_or_smiles: Any, y: float | Sequence[float] | None = None) -> Graph:
    """Featurise an RDKit ``Mol`` or a SMILES string into a :class:`Graph`.

    Each bond becomes two directed edges (i->j then j->i) with the same features, so
    message passing flows both ways without the model symmetrising anything.
    """
    mol = parse_smiles(mol_or_smiles) if isinstance(mol_or_smiles, str) else mol_or_smiles
    if mol is None:
        raise InvalidSmilesError("molecule is None (RDKit failed to parse it)")
    x = np.array([atom_features(a) for a in mol.GetAtoms()], dtype=np.float32).reshape(-1, NODE_FEATURES)
    if x.shape[0] == 0:
        raise InvalidSmilesError("molecule has no atoms")
    src: list[int] = []
    dst: list[int] = []
    attrs: list[list[float]] = []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        f = bond_features(bond)
        src += [i, j]
        dst += [j, i]
        attrs += [f, f]
    edge_index = np.array([src, dst], dtype=np.int64).reshape(2, -1)
    edge_attr = np.array(attrs, dtype=np.float32).reshape(-1, EDGE_FEATURES)
    y_arr = None if y is None else np.asarray(y, dtype=np.float32).reshape(-1)
    return Graph(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y_arr)
