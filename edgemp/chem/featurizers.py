"""Named, versioned molecule featurizers: what an exported model's metadata points at.

A model is only right on the features it was trained with, so every chemistry model records
the featurizer it needs as ``NAME/VERSION`` (``ModelSpec.featurizer``), and whoever runs it —
``edgemp predict --smiles-column``, the server's SMILES routes — resolves that name here
instead of guessing. A version changes whenever the features a name produces would change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from edgemp.chem import chemprop_features as cp
from edgemp.data import featurize as own
from edgemp.errors import EdgempError
from edgemp.graph import Graph


class UnknownFeaturizerError(EdgempError):
    """A model names a featurizer this edgemp does not have."""


@dataclass(frozen=True)
class MoleculeFeaturizer:
    """SMILES → :class:`Graph`, with the widths a model built for it expects."""

    name: str
    version: int
    node_features: int
    edge_features: int
    mol_to_graph: Callable[[str], Graph]

    @property
    def id(self) -> str:
        """What a model's metadata stores: ``NAME/VERSION``."""
        return f"{self.name}/{self.version}"

    def featurize(self, smiles: str) -> Graph:
        """One molecule; raises :class:`~edgemp.data.featurize.InvalidSmilesError` naming the SMILES."""
        return self.mol_to_graph(smiles)


def _chemprop(scheme: cp.AtomScheme) -> MoleculeFeaturizer:
    def run(smiles: str) -> Graph:
        return cp.mol_to_chemprop_graph(cp.parse_smiles_like_chemprop(smiles), scheme)

    return MoleculeFeaturizer(f"chemprop-{scheme.name}", 1, scheme.width, cp.BOND_FEATURES, run)


EDGEMP_MOL = MoleculeFeaturizer("edgemp-mol", 1, own.NODE_FEATURES, own.EDGE_FEATURES, own.mol_to_graph)
FEATURIZERS: dict[str, MoleculeFeaturizer] = {
    f.id: f for f in [EDGEMP_MOL] + [_chemprop(s) for s in cp.ATOM_SCHEMES.values()]
}


def get_featurizer(featurizer_id: str) -> MoleculeFeaturizer:
    """The featurizer a model's metadata names; the error lists the ones that exist."""
    try:
        return FEATURIZERS[featurizer_id]
    except KeyError:
        raise UnknownFeaturizerError(
            f"could not resolve featurizer {featurizer_id!r} among choices {sorted(FEATURIZERS)}"
        ) from None


def featurize_smiles(featurizer: MoleculeFeaturizer, smiles: Sequence[object]) -> list[Graph | EdgempError]:
    """Featurize each SMILES; an invalid one yields its error in its place, so the others are answered."""
    out: list[Graph | EdgempError] = []
    for s in smiles:
        if not isinstance(s, str):
            out.append(own.InvalidSmilesError(f"a SMILES must be a string, got {type(s).__name__}"))
            continue
        try:
            out.append(featurizer.featurize(s))
        except own.InvalidSmilesError as e:
            out.append(e)
    return out
