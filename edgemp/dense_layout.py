"""Dense form: a collated batch as padded ``[G, M, ...]`` tensors, and back.

Dense models trade scatter ops for a masked matmul over ``M`` node slots per graph. ``M``
is a dynamic dim, so we pad to the smallest power of two that holds the largest graph
(capped at the model's ``max_nodes``): few distinct shapes, little wasted work, and the
mask makes padding invisible in the results.

It lives in the numpy core because export (verification, calibration, TensorRT profiles)
and the runtime feed dense models the same way; :mod:`edgemp.runtime.dense` re-exports it.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from edgemp.errors import ResourceExhaustedError
from edgemp.graph import GraphBatch

# Bytes the dense form may take while it is built (adjacency as int64 counts, then float32,
# and x): past this a batch gets one clear error instead of a MemoryError traceback, or the
# host's memory. One 40,000-node graph pads to 65,536 slots, 48 GiB; 64 graphs of 256 slots, 50 MB.
MAX_DENSE_BYTES = 2 << 30


def pad_size(largest: int, max_nodes: int) -> int:
    """Node slots for a batch whose largest graph has ``largest`` nodes."""
    m = 1 << max(int(largest) - 1, 0).bit_length()
    return min(m, max_nodes) if max_nodes > 0 else m


def to_dense(batch: GraphBatch, max_nodes: int, slots: int | None = None) -> dict[str, np.ndarray]:
    """``x`` [G, M, F], ``adjacency`` [G, M, M] (edges j->i counted at [g, i, j]), ``node_mask`` [G, M]."""
    counts = batch.graph_node_counts
    g = batch.num_graphs
    m = pad_size(int(counts.max()), max_nodes) if slots is None else slots
    need = g * m * m * 12 + g * m * batch.x.shape[1] * 4
    if need > MAX_DENSE_BYTES:
        raise ResourceExhaustedError(
            f"the dense form of this batch ({g} graph(s) padded to {m} node slots) needs {need / 2**30:.1f} GiB, "
            f"over the {MAX_DENSE_BYTES >> 30} GiB it may take; send fewer or smaller graphs, or serve the "
            "sparse export of the model for graphs this large")
    offsets = batch.node_offsets
    local = np.arange(batch.num_nodes, dtype=np.int64) - offsets[batch.node_graph]  # [N]
    x = np.zeros((g, m, batch.x.shape[1]), np.float32)
    x[batch.node_graph, local] = batch.x
    mask = np.zeros((g, m), np.float32)
    mask[batch.node_graph, local] = 1.0
    src, dst = batch.edge_index  # [E] each
    edge_graph = batch.node_graph[src]
    flat = (edge_graph * m + local[dst]) * m + local[src]  # [E] cell of adjacency[g, target, source]
    adjacency = np.bincount(flat, minlength=g * m * m).astype(np.float32).reshape(g, m, m)
    return {"x": x, "adjacency": adjacency, "node_mask": mask}


def from_dense(outputs: Mapping[str, np.ndarray], batch: GraphBatch, levels: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Node-level outputs [G, M, W] -> [N, W] (real nodes only, batch order); graph-level unchanged."""
    local = np.arange(batch.num_nodes, dtype=np.int64) - batch.node_offsets[batch.node_graph]
    return {
        name: value[batch.node_graph, local] if levels.get(name) == "node" else value
        for name, value in outputs.items()
    }
