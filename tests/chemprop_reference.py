"""chemprop's own predictions, the reference the chemprop import and SMILES serving tests compare against."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def chemprop_predict(path: Path, smiles: list[str], scheme: str = "v2") -> np.ndarray:
    """chemprop's own predictions (its loader, featurizer, collate and model), as [n, out]."""
    import torch
    from chemprop.data import MoleculeDatapoint, MoleculeDataset, build_dataloader
    from chemprop.featurizers import MultiHotAtomFeaturizer, SimpleMoleculeMolGraphFeaturizer
    from chemprop.models import load_model

    model = load_model(str(path)).eval()
    featurizer = SimpleMoleculeMolGraphFeaturizer(atom_featurizer=getattr(MultiHotAtomFeaturizer, scheme)())
    dset = MoleculeDataset([MoleculeDatapoint.from_smi(s) for s in smiles], featurizer)
    with torch.no_grad():
        out = [model(b.bmg, b.V_d, b.X_d) for b in build_dataloader(dset, batch_size=50, shuffle=False)]
    return torch.cat(out).reshape(len(smiles), -1).numpy()
