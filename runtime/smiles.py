"""SMILES in, for any model that records its molecule featurizer: the shared core of
``edgemp predict --smiles-column`` and the server's SMILES routes.

The model's metadata names the featurizer it was trained with (``ModelSpec.featurizer``);
this module resolves it, checks its widths against the model, and turns a list of SMILES
into graphs with a per-item error in place of each invalid one, so one bad molecule never
costs the others their answers. rdkit is needed only here (``pip install 'edgemp[chem]'``);
a missing rdkit is one error for the whole call, not a per-item one.
"""
from __future__ import annotations

import csv
from pathlib import Path
from edgemp.chem import MoleculeFeaturizer, get_featurizer
from edgemp.errors import EdgempError, ModelFormatError
from edgemp.spec import ExportedModelSpec


def model_featurizer(spec: ExportedModelSpec, where: str = "model") -> MoleculeFeaturizer:
    """The featurizer ``spec`` names, checked to produce exactly the widths the model takes."""
    name = spec.model.featurizer
    if not name:
        raise ModelFormatError(
            f"{where} records no molecule featurizer, so it cannot take SMILES; export it from a chemprop "
            "checkpoint or from a checkpoint trained on `edgemp data` molecules, or send graphs"
        )
    f = get_featurizer(name)
    m = spec.model
    if f.node_features != m.node_features or (m.edge_features and f.edge_features != m.edge_features):
        raise ModelFormatError(
            f"{where} names featurizer {name!r} ({f.node_features}/{f.edge_features} features) but takes "
            f"{m.node_features}/{m.edge_features}; its metadata is inconsistent"
        )
    return f


def read_smiles_column(path: str | Path, column: str) -> list[str]:
    """Every row's ``column`` from a CSV (row 1 = first data row), empty cells kept as ``""``."""
    p = Path(path)
    try:
        fh = p.open("r", encoding="utf-8", newline="")
    except OSError as e:
        raise EdgempError(f"cannot read CSV file {p}: {e.strerror}") from e
    with fh:
        reader = csv.DictReader(fh)
        try:
            columns = reader.fieldnames or []
            if column not in columns:
                raise EdgempError(f"{p}: no column {column!r}; available columns: {', '.join(columns) or '(none)'}")
            return [(row.get(column) or "") for row in reader]
        except csv.Error as e:
            raise EdgempError(f"{p}: malformed CSV near line {reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise EdgempError(f"{p}: not UTF-8 text ({e.reason})") from e
