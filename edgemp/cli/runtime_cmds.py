"""``edgemp predict``: run an exported model on a graph file or a CSV of SMILES (no torch)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

import click

from edgemp.errors import EdgempError

CHUNK_GRAPHS = 256  # graphs per model run; bounds memory, does not change results


def _line(out: dict) -> str:
    return json.dumps({"outputs": {name: value.tolist() for name, value in out.items()}}, separators=(",", ":"))


def _predict_graphs(m, graphs: Path, fh: IO[str]) -> int:
    from edgemp.graphio import read_graphs

    items = m.validate(read_graphs(graphs))
    for start in range(0, len(items), CHUNK_GRAPHS):
        for out in m.predict(items[start : start + CHUNK_GRAPHS]):
            fh.write(_line(out) + "\n")
    return len(items)


def _predict_smiles(m, csv_path: Path, column: str, fh: IO[str]) -> tuple[int, int]:
    """One line per CSV row, in order; a row whose SMILES is invalid gets an error line naming it."""
    from edgemp.chem import featurize_smiles
    from edgemp.runtime.smiles import model_featurizer, read_smiles_column

    featurizer = model_featurizer(m.spec, str(m.path or "model"))
    smiles = read_smiles_column(csv_path, column)
    errors = 0
    for start in range(0, len(smiles), CHUNK_GRAPHS):
        items = featurize_smiles(featurizer, smiles[start : start + CHUNK_GRAPHS])
        good = [g for g in items if not isinstance(g, EdgempError)]
        outputs = iter(m.predict(m.validate(good)) if good else [])
        for row, item in enumerate(items, start=start + 1):
            if isinstance(item, EdgempError):
                errors += 1
                fh.write(json.dumps({"error": f"row {row}: {item}"}) + "\n")
            else:
                fh.write(_line(next(outputs)) + "\n")
    return len(smiles), errors


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("graphs", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write JSON lines here instead of stdout.")
@click.option("--smiles-column", default=None,
              help="GRAPHS is a CSV of molecules: featurize this column with the model's recorded featurizer "
                   "(needs rdkit: pip install 'edgemp[chem]').")
@click.option("--providers", type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]), default="auto",
              show_default=True, help="ONNX Runtime execution providers.")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="Intra-op threads (default 1; 0 = onnxruntime's default).")
def predict(model: Path, graphs: Path, output: Path | None, smiles_column: str | None, providers: str,
            threads: int | None) -> None:
    """Predict with MODEL (.onnx or .plan) on GRAPHS (.jsonl or .npz, or a CSV with --smiles-column).

    Writes one JSON line per input graph or CSV row, in order: {"outputs": {NAME: values}},
    or {"error": "row N: ..."} for a row whose SMILES cannot be featurized.
    """
    from edgemp.runtime import load

    m = load(model, providers=providers, threads=threads)
    try:
        fh = output.open("w", encoding="utf-8") if output else sys.stdout
    except OSError as e:
        raise EdgempError(f"cannot write {output}: {e.strerror}") from e
    try:
        if smiles_column is None:
            count, errors = _predict_graphs(m, graphs, fh), 0
        else:
            count, errors = _predict_smiles(m, graphs, smiles_column, fh)
    finally:
        if output:
            fh.close()
    if output:
        failed = f" ({errors} rows with errors)" if errors else ""
        click.echo(f"wrote {count} predictions{failed} to {output}", err=True)
    if count and errors == count:
        raise EdgempError(f"no row of {graphs} could be featurized (see the error lines)")


COMMANDS = [predict]
