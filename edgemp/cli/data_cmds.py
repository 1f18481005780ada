"""``edgemp data``: write graph files (JSONL / NPZ) from molecules or synthetic graphs.

Dataset modules are imported inside each command so ``edgemp --help`` stays light and
a missing rdkit only matters to the commands that need it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

logger = logging.getLogger(__name__)

_OUTPUT = click.option(
    "-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Output graph file (.jsonl or .npz).",
)


def _write(graphs: list, output: Path, featurizer: str = "") -> None:
    from edgemp.errors import EdgempError
    from edgemp.graphio import write_graphs

    if output.suffix not in (".jsonl", ".npz", ".json", ".ndjson"):
        raise EdgempError(f"{output}: unknown graph file type {output.suffix!r}; expected .jsonl or .npz")
    try:
        write_graphs(graphs, output, featurizer)
    except OSError as e:
        raise EdgempError(f"cannot write {output}: {e.strerror or e}") from e
    click.echo(f"wrote {len(graphs)} graphs to {output}", err=True)


@click.group()
def data() -> None:
    """Make graph files: the packaged solubility set, your CSV of SMILES, synthetic graphs."""


@data.command("solubility")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Huuskonen split: train (1025 molecules) or test (257).")
@_OUTPUT
def solubility_cmd(split: str, output: Path) -> None:
    """Featurise the packaged aqueous-solubility molecules (y = logS). Needs rdkit."""
    from edgemp.data.solubility import load_solubility

    from edgemp.chem.featurizers import EDGEMP_MOL

    _write(load_solubility(split), output, EDGEMP_MOL.id)


@data.command("csv")
@click.argument("csv_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--smiles-column", default="smiles", show_default=True, help="Column holding SMILES.")
@click.option("--target-column", default=None, help="Numeric column to use as y (omit for no target).")
@_OUTPUT
def csv_cmd(csv_file: Path, smiles_column: str, target_column: str | None, output: Path) -> None:
    """Featurise a CSV of SMILES; bad rows are reported on stderr and skipped. Needs rdkit."""
    from edgemp.data.solubility import featurize_csv
    from edgemp.errors import EdgempError

    graphs, skipped = featurize_csv(csv_file, smiles_column, target_column)
    for row, reason in skipped:
        click.echo(f"row {row}: {reason}", err=True)
    click.echo(f"converted {len(graphs)} molecules, skipped {len(skipped)} rows", err=True)
    if not graphs:
        raise EdgempError(f"{csv_file}: no molecule could be converted")
    from edgemp.chem.featurizers import EDGEMP_MOL

    _write(graphs, output, EDGEMP_MOL.id)


@data.command("synthetic")
@click.option("--num-graphs", type=click.IntRange(min=1), required=True, help="How many graphs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random seed (same seed, same graphs).")  # numpy's generators take no negative seed
@click.option("--min-nodes", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--max-nodes", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--empty-fraction", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True,
              help="Fraction of graphs with no edges.")
@_OUTPUT
def synthetic_cmd(num_graphs: int, seed: int, min_nodes: int, max_nodes: int,
                  empty_fraction: float, output: Path) -> None:
    """Random graphs with a learnable structural regression target (numpy only)."""
    from edgemp.data.synthetic import synthetic_graphs

    graphs = synthetic_graphs(num_graphs, seed, min_nodes=min_nodes, max_nodes=max_nodes,
                              empty_fraction=empty_fraction)
    _write(graphs, output)


COMMANDS = [data]
