"""Predictions and task metrics of a trained :class:`~edgemp.models.net.GraphNet` (PyTorch path)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgemp.errors import EdgempError
from edgemp.graph import Graph, split, validate_graph
from edgemp.metrics import MetricResult, task_metric
from edgemp.models.checkpoint import load_checkpoint
from edgemp.models.net import GraphNet
from edgemp.train.config import EVAL_BATCH_SIZE
from edgemp.train.data import batch_inputs, fit_edge_attr, is_node_task


def predict(model: GraphNet, graphs: Sequence[Graph], batch_size: int = EVAL_BATCH_SIZE) -> list[np.ndarray]:
    """Model outputs per graph ([out] graph level, [N, out] node level), in eval mode."""
    cfg = model.cfg
    name = model.output_name
    level = "node" if is_node_task(cfg.task) else "graph"
    graphs = fit_edge_attr(graphs, cfg.edge_features if cfg.uses_edge_features else 0)
    was_training = model.training
    model.eval()
    preds: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, len(graphs), batch_size):
                kwargs, b = batch_inputs(graphs[start : start + batch_size], cfg.uses_edge_features)
                out = model(**kwargs)[name].numpy()
                preds.extend(d[name] for d in split({name: out}, b, {name: level}))
    finally:
        model.train(was_training)
    return preds


def metric(model: GraphNet, graphs: Sequence[Graph]) -> MetricResult:
    """The task metric on graphs already fitted and checked (the loop scores validation with it)."""
    return task_metric(model.cfg.task, predict(model, graphs), [g.y for g in graphs])


def evaluate_model(model: GraphNet, graphs: Sequence[Graph]) -> MetricResult:
    """The task metric of ``model`` on ``graphs`` (validated against the model's input spec)."""
    cfg = model.cfg
    graphs = list(graphs)
    if not graphs:
        raise EdgempError("no graphs to evaluate")
    edge_features = cfg.edge_features if cfg.uses_edge_features else 0
    graphs = fit_edge_attr(graphs, edge_features)
    for i, g in enumerate(graphs):
        validate_graph(g, i, node_features=cfg.node_features, edge_features=edge_features)
    return metric(model, graphs)


def evaluate_checkpoint(ckpt_dir: str | Path, graphs: Sequence[Graph]) -> MetricResult:
    """Load a checkpoint directory and score it on ``graphs`` (PyTorch path)."""
    return evaluate_model(load_checkpoint(ckpt_dir), graphs)
