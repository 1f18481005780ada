"""Calibration data for static int8: edgemp graphs → model feeds, one batch at a time.

ONNX Runtime's histogram calibrators (entropy, percentile) stack every batch's tensors
with ``np.asarray`` before merging, which fails when batches differ in shape — and
graph batches always do (node and edge counts vary). ORT's ``CalibStridedMinMax``
option calls the calibrator once per stride of a reader that has ``__len__`` and
``set_range``; with a stride of one batch, every calibration method works on ragged
batches. :class:`GraphCalibrationReader` provides exactly that interface (duck-typed,
so importing this module does not import onnx).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgemp.errors import EdgempError
from edgemp.graph import Graph, GraphBatch, collate

log = logging.getLogger(__name__)


def batch_groups(graphs: Sequence[Graph], batch_graphs: int) -> list[range]:
    """Consecutive index ranges of about ``batch_graphs`` graphs, each with at least one edge.

    A batch without edges feeds zero-row tensors to the edge layers; ORT's min/max
    reductions then yield ±inf ranges for them, so an edge-less chunk is merged into its
    neighbour (only possible when every calibration graph is edge-less is one left).
    Every graph lands in exactly one range, in order.
    """
    if batch_graphs < 1:
        raise EdgempError(f"calibration batch size must be >= 1 graph, got {batch_graphs}")
    chunks = [range(s, min(s + batch_graphs, len(graphs))) for s in range(0, len(graphs), batch_graphs)]
    merged: list[range] = []
    for chunk in chunks:
        has_edges = any(graphs[i].num_edges for i in chunk)
        if merged and (not has_edges or not any(graphs[i].num_edges for i in merged[-1])):
            merged[-1] = range(merged[-1].start, chunk.stop)
        else:
            merged.append(chunk)
    return merged


def model_feeds(batch: GraphBatch, input_names: Sequence[str], form: str, max_nodes: int) -> dict[str, np.ndarray]:
    """A collated batch in the form an exported model takes, restricted to its declared inputs."""
    if form == "dense":
        from edgemp.dense_layout import to_dense

        tensors = to_dense(batch, max_nodes)
    else:
        tensors = batch.tensors()
    missing = [n for n in input_names if n not in tensors]
    if missing:
        raise EdgempError(f"calibration graphs cannot feed model input(s) {missing} (graphs without edge_attr?)")
    return {n: tensors[n] for n in input_names}


@dataclass(frozen=True)
class CalibrationSummary:
    """What the calibration saw: stored in the quantized model's metadata."""

    method: str
    num_graphs: int
    num_batches: int
    batch_graphs: int
    nodes_per_graph: tuple[int, int]  # min, max
    edges_per_graph: tuple[int, int]

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "num_graphs": self.num_graphs,
            "num_batches": self.num_batches,
            "batch_graphs": self.batch_graphs,
            "nodes_per_graph": list(self.nodes_per_graph),
            "edges_per_graph": list(self.edges_per_graph),
        }


class GraphCalibrationReader:
    """ORT ``CalibrationDataReader`` over edgemp graphs, collated into batches on demand.

    Implements ``get_next`` plus the ``__len__`` / ``set_range`` pair that ORT's strided
    calibration uses. Feeds are built lazily, so calibrating on many graphs holds one
    batch in memory. ``graphs_fed`` counts the graphs handed to ORT (tests check that
    every calibration graph is seen exactly once).
    """

    def __init__(
        self,
        graphs: Sequence[Graph],
        input_names: Sequence[str],
        *,
        form: str = "sparse",
        max_nodes: int = 0,
        batch_graphs: int = 32,
        progress: bool = False,
    ) -> None:
        if not graphs:
            raise EdgempError("static int8 needs calibration graphs: pass --calibration GRAPHS.jsonl")
        self.graphs = list(graphs)
        self.input_names = tuple(input_names)
        self.form, self.max_nodes = form, max_nodes
        self.batch_graphs = batch_graphs
        self.groups = batch_groups(self.graphs, batch_graphs)
        self.graphs_fed = 0
        self._pending: list[range] = []
        self._bar = _progress_bar(len(self.groups)) if progress else None
        self.set_range(0, len(self.groups))

    def __len__(self) -> int:
        return len(self.groups)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = list(self.groups[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self._pending:
            return None
        group = self._pending.pop(0)
        batch = collate([self.graphs[i] for i in group])
        self.graphs_fed += len(group)
        if self._bar is not None:
            self._bar.update(1)
        return model_feeds(batch, self.input_names, self.form, self.max_nodes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def summary(self, method: str) -> CalibrationSummary:
        nodes = [g.num_nodes for g in self.graphs]
        edges = [g.num_edges for g in self.graphs]
        return CalibrationSummary(
            method=method,
            num_graphs=len(self.graphs),
            num_batches=len(self.groups),
            batch_graphs=self.batch_graphs,
            nodes_per_graph=(min(nodes), max(nodes)),
            edges_per_graph=(min(edges), max(edges)),
        )


def _progress_bar(total: int):
    """A tqdm bar on stderr, or None when tqdm (export extra) is absent: progress is optional."""
    try:
        from tqdm import tqdm
    except ImportError:
        log.info("calibrating on %d batches (install tqdm for a progress bar)", total)
        return None
    return tqdm(total=total, desc="calibration", unit="batch", leave=False)
