"""Molecules in, graphs out, torch-free: chemprop's featurizers and edgemp's own, by name.

rdkit is imported lazily (``pip install 'edgemp[chem]'``); the runtime may import this package.
"""
from edgemp.chem.featurizers import (
    FEATURIZERS,
    MoleculeFeaturizer,
    UnknownFeaturizerError,
    featurize_smiles,
    get_featurizer,
)

__all__ = ["FEATURIZERS", "MoleculeFeaturizer", "UnknownFeaturizerError", "featurize_smiles", "get_featurizer"]
