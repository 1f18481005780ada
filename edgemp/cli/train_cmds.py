"""``edgemp train`` and ``edgemp evaluate``.

torch is imported inside the command bodies (via :func:`_require_torch`), so
``edgemp --help`` and evaluating an exported ``.onnx`` model never import it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click

from edgemp.errors import EdgempError, MissingExtraError

logger = logging.getLogger(__name__)

FAMILY_CHOICES = ("gin", "gine", "gcn", "sage", "gat", "mpnn", "ggnn")  # = edgemp.models.config.FAMILIES
TASK_CHOICES = ("regression", "classification", "node_regression", "node_classification")  # = edgemp.spec.TASKS
# = edgemp.train.TrainConfig defaults, repeated because importing edgemp.train imports torch
# (tests/models/test_train.py checks they agree).
DEFAULTS = {"epochs": 100, "hidden": 64, "rounds": 3, "seed": 0, "lr": 1e-3, "batch_size": 32, "patience": 15}


def _require_torch() -> None:
    """Fail with one actionable line when the training extra is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("torch", "export", "training") from e


def _ensure_log_handler() -> None:
    # Without tqdm, training reports one log line per epoch; make sure it is visible.
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")


@click.command("train")
@click.option("--family", type=click.Choice(FAMILY_CHOICES), required=True, help="Model family.")
@click.option("--train", "train_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Training graphs (.jsonl or .npz) with targets y.")
@click.option("--val", "val_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Validation graphs for early stopping (default: hold out 10% of --train).")
@click.option("--task", type=click.Choice(TASK_CHOICES), default="regression", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS["epochs"], show_default=True,
              help="Maximum epochs (early stopping usually ends sooner).")
@click.option("--hidden", type=click.IntRange(min=1), default=DEFAULTS["hidden"], show_default=True,
              help="Hidden width.")
@click.option("--rounds", type=click.IntRange(min=1), default=DEFAULTS["rounds"], show_default=True,
              help="Message-passing rounds K.")
# numpy refuses negative seeds and torch.manual_seed anything past 64 bits
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=DEFAULTS["seed"], show_default=True,
              help="Random seed (same seed, same model).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS["lr"], show_default=True,
              help="Adam learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS["batch_size"], show_default=True,
              help="Graphs per training step.")
@click.option("--patience", type=click.IntRange(min=1), default=DEFAULTS["patience"], show_default=True,
              help="Stop after this many epochs without a better validation metric.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint directory to write (config.json + model.safetensors).")
def train_cmd(family: str, train_file: Path, val_file: Path | None, task: str, epochs: int, hidden: int,
              rounds: int, seed: int, lr: float, batch_size: int, patience: int, no_progress: bool,
              output: Path) -> None:
    """Train a model on a graph file and write a checkpoint directory."""
    _require_torch()
    from edgemp.graphio import read_featurizer, read_graphs
    from edgemp.models.checkpoint import save_checkpoint
    from edgemp.train import TrainConfig, train

    cfg = TrainConfig(family=family, task=task, epochs=epochs, hidden=hidden, rounds=rounds, lr=lr,
                      batch_size=batch_size, seed=seed, patience=patience)
    train_graphs = read_graphs(train_file)
    val_graphs = read_graphs(val_file) if val_file is not None else None
    _ensure_log_handler()
    model, history = train(train_graphs, val_graphs, cfg, progress=not no_progress)
    # graphs from `edgemp data` name their molecule featurizer; the checkpoint (and every export) keeps it
    model.cfg = dataclasses.replace(model.cfg, featurizer=read_featurizer(train_file))
    summary = {
        "train_file": train_file.name,
        "val_file": val_file.name if val_file is not None else None,
        "epochs_run": history.epochs_run,
        "best_epoch": history.best_epoch,
        "metric_name": history.metric_name,
        "best_val_metric": history.best_val_metric,
        "stopped_early": history.stopped_early,
        "num_train_graphs": history.num_train_graphs,
        "num_val_graphs": history.num_val_graphs,
        "seconds": round(history.seconds, 2),
        "config": dataclasses.asdict(cfg),
    }
    try:
        save_checkpoint(model, output, extra=summary)
    except OSError as e:
        raise EdgempError(f"cannot write checkpoint to {output}: {e.strerror or e}") from e
    click.echo(
        f"validation {history.metric_name} {history.best_val_metric:.4f} (best of {history.epochs_run} epochs, "
        f"epoch {history.best_epoch}); checkpoint written to {output}"
    )


def _evaluate_onnx(model_path: Path, graphs: list):
    try:
        from edgemp.runtime.evaluate import evaluate_onnx
    except ModuleNotFoundError as e:
        if e.name not in ("edgemp.runtime.evaluate", "edgemp.runtime"):
            raise
        raise EdgempError("evaluating .onnx models needs edgemp.runtime.evaluate, which this install lacks") from e
    return evaluate_onnx(model_path, graphs)


@click.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("graph_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metric as one JSON object.")
def evaluate_cmd(model: Path, graph_file: Path, as_json: bool) -> None:
    """Score MODEL (a checkpoint directory or an exported .onnx file) on GRAPH_FILE (.jsonl/.npz).

    Prints RMSE for regression tasks and accuracy for classification tasks.
    """
    from edgemp.graphio import read_graphs

    if not model.exists():
        raise EdgempError(f"model {model} does not exist (expected a checkpoint directory or an .onnx file)")
    if model.is_file() and model.suffix != ".onnx":
        raise EdgempError(f"{model}: unknown model file type {model.suffix!r}; expected a checkpoint directory or .onnx")
    graphs = read_graphs(graph_file)
    if model.suffix == ".onnx" and model.is_file():
        result = _evaluate_onnx(model, graphs)
    else:
        _require_torch()
        from edgemp.train import evaluate_checkpoint

        result = evaluate_checkpoint(model, graphs)
    if as_json:
        click.echo(json.dumps({"metric_name": result.metric_name, "value": result.value,
                               "num_graphs": result.num_graphs}))
    else:
        click.echo(f"{result.metric_name} {result.value:.4f} over {result.num_graphs} graphs")


COMMANDS = [train_cmd, evaluate_cmd]
