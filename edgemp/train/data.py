"""Graphs and targets made ready for training: checks, edge-feature fitting, batching, hold-out.

Every check runs once, before the first epoch, so a bad graph fails with its index and
the reason instead of somewhere inside an epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from edgemp.errors import EdgempError, GraphValidationError
from edgemp.graph import Graph, GraphBatch, collate, validate_graph
from edgemp.models.config import INT_BOUNDS
from edgemp.train.config import VAL_FRACTION

MAX_CLASSES = INT_BOUNDS["out_dim"][1]  # the model's output width cap


# -- data checks -------------------------------------------------------------------


def is_node_task(task: str) -> bool:
    return task.startswith("node_")


def is_classification(task: str) -> bool:
    return task.endswith("classification")


def edge_feature_width(graphs: Sequence[Graph], what: str) -> int:
    """Edge feature width of the graphs, 0 when none carries ``edge_attr``."""
    has = [g.edge_attr is not None for g in graphs]
    if not any(has):
        return 0
    if not all(has):
        i = has.index(False)
        raise GraphValidationError(f"{what} graph {i}: edge_attr is missing while other graphs have it")
    widths = {int(g.edge_attr.shape[1]) for g in graphs if g.edge_attr.ndim == 2 and g.edge_attr.shape[0]}
    if len(widths) > 1:
        raise GraphValidationError(f"{what} graphs have different edge feature widths {sorted(widths)}")
    return widths.pop() if widths else 0


def target_rows(g: Graph, i: int, task: str, what: str) -> np.ndarray:
    """The graph's target as float64 rows: [1, T] (graph level) or [N, T] (node level)."""
    if g.y is None:
        raise EdgempError(f"{what} graph {i} has no target 'y'; training needs a target on every graph")
    y = np.asarray(g.y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise EdgempError(f"{what} graph {i}: target y contains NaN or infinite values")
    if is_node_task(task):
        if y.ndim == 0 or y.shape[0] != g.num_nodes or y.ndim > 2:
            raise EdgempError(
                f"{what} graph {i}: a {task} target needs one row per node ({g.num_nodes}), got shape {list(y.shape)}"
            )
        rows = y.reshape(g.num_nodes, -1)
    else:
        rows = y.reshape(1, -1)
    if is_classification(task):
        if rows.shape[1] != 1:
            raise EdgempError(f"{what} graph {i}: a {task} target is one class label per item, got shape {list(y.shape)}")
        if np.any(rows < 0) or np.any(rows != np.round(rows)):
            raise EdgempError(f"{what} graph {i}: class labels must be non-negative integers, got {rows.reshape(-1)[:5].tolist()}")
        if rows.size and rows.max() >= MAX_CLASSES:  # the head gets one output per class up to the largest label
            raise EdgempError(f"{what} graph {i}: class label {rows.max():.6g} is too large; "
                              f"labels must be below {MAX_CLASSES}")
    return rows


@dataclass
class Prepared:
    """Validated graphs and their targets, ready for batching."""

    graphs: list[Graph]
    targets: list[np.ndarray]  # float32 rows per graph (class ids as floats)


def fit_edge_attr(graphs: Sequence[Graph], edge_features: int) -> list[Graph]:
    """Match ``edge_attr`` to what the model reads.

    A model without edge features never sees ``edge_attr`` (dropped, so batches cannot
    fail on it). Edge-less graphs get an ``edge_attr`` of shape [0, Fe]: JSON stores it as
    ``[]``, which reads back as [0, 0] and carries no values, only a wrong width.
    """
    if edge_features <= 0:
        return [g if g.edge_attr is None else replace(g, edge_attr=None) for g in graphs]
    return [
        replace(g, edge_attr=np.zeros((0, edge_features), np.float32))
        if g.edge_attr is not None and g.edge_attr.ndim == 2 and g.edge_attr.shape == (0, 0) and g.num_edges == 0
        else g
        for g in graphs
    ]


def prepare(graphs: Sequence[Graph], task: str, node_features: int, edge_features: int, what: str) -> Prepared:
    graphs = fit_edge_attr(graphs, edge_features)
    targets = []
    for i, g in enumerate(graphs):
        try:
            validate_graph(g, i, node_features=node_features, edge_features=edge_features)
        except GraphValidationError as e:
            raise GraphValidationError(f"{what} {e}") from e
        targets.append(target_rows(g, i, task, what).astype(np.float32))
    widths = {t.shape[1] for t in targets}
    if len(widths) > 1:
        raise EdgempError(f"{what} graphs have targets of different widths {sorted(widths)}")
    return Prepared(list(graphs), targets)


def batch_inputs(graphs: Sequence[Graph], use_edges: bool) -> tuple[dict, GraphBatch]:
    """Collate graphs into the keyword arguments of ``GraphNet.forward`` (zero-copy tensors)."""
    b = collate(graphs)
    kwargs = {
        "x": torch.from_numpy(b.x),
        "edge_index": torch.from_numpy(b.edge_index),
        "edge_attr": torch.from_numpy(b.edge_attr) if use_edges and b.edge_attr is not None else None,
        "node_graph": torch.from_numpy(b.node_graph),
        "num_graphs": b.num_graphs,
    }
    return kwargs, b


def split_holdout(data: Prepared, seed: int) -> tuple[Prepared, Prepared]:
    """Hold out ``VAL_FRACTION`` of the graphs (at least one), chosen by ``seed``."""
    n = len(data.graphs)
    if n < 2:
        raise EdgempError(f"need at least 2 training graphs to hold out a validation set, got {n}; pass --val")
    n_val = max(1, int(round(VAL_FRACTION * n)))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = np.sort(perm[:n_val])
    train_idx = np.sort(perm[n_val:])

    def take(idx: np.ndarray) -> Prepared:
        return Prepared([data.graphs[i] for i in idx], [data.targets[i] for i in idx])

    return take(train_idx), take(val_idx)
