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


def dense_bytes(graphs: int, slots: int, features: int) -> int:
    """What building the dense form of ``graphs`` padded to ``slots`` takes (see :data:`MAX_DENSE_BYTES`)."""
    return graphs * slots * slots * 12 + graphs * slots * features * 4


def groups_within_cap(batch: GraphBatch, max_nodes: int) -> list[tuple[int, int]]:
    """Graph ranges ``[a, b)``, in order, whose dense forms each fit :data:`MAX_DENSE_BYTES`.

    One range for a batch that fits (nearly all). Otherwise consecutive graphs are grouped
    while their padded form fits, so one large graph among small ones costs its own group,
    not a refused batch. Raises :class:`ResourceExhaustedError` for a graph too large alone.
    """
    counts = batch.graph_node_counts
    f = batch.x.shape[1]
    if dense_bytes(batch.num_graphs, pad_size(int(counts.max()), max_nodes), f) <= MAX_DENSE_BYTES:
        return [(0, batch.num_graphs)]
    groups, start, largest = [], 0, 0
    for i, n in enumerate(counts.tolist()):
        alone = dense_bytes(1, pad_size(n, max_nodes), f)
        if alone > MAX_DENSE_BYTES:
            raise _too_large(1, pad_size(n, max_nodes), alone)
        grown = max(largest, n)
        if i > start and dense_bytes(i + 1 - start, pad_size(grown, max_nodes), f) > MAX_DENSE_BYTES:
            groups.append((start, i))
            start, grown = i, n
        largest = grown
    groups.append((start, batch.num_graphs))
    return groups


def _too_large(graphs: int, slots: int, need: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"the dense form of {graphs} graph(s) padded to {slots} node slots needs {need / 2**30:.1f} GiB, over the "
        f"{MAX_DENSE_BYTES >> 30} GiB it may take; send smaller graphs, or serve the sparse export of the model "
        "for graphs this large")


def graph_range(batch: GraphBatch, a: int, b: int) -> GraphBatch:
    """Graphs ``[a, b)`` of ``batch`` as a batch of their own (views; node and edge ids renumbered)."""
    nodes, edges = batch.node_offsets, batch.edge_offsets
    n0, n1, e0, e1 = int(nodes[a]), int(nodes[b]), int(edges[a]), int(edges[b])
    return GraphBatch(
        x=batch.x[n0:n1], edge_index=batch.edge_index[:, e0:e1] - n0, node_graph=batch.node_graph[n0:n1] - a,
        graph_node_counts=batch.graph_node_counts[a:b], graph_edge_counts=batch.graph_edge_counts[a:b],
        edge_attr=None if batch.edge_attr is None else batch.edge_attr[e0:e1],
    )


def to_dense(batch: GraphBatch, max_nodes: int, slots: int | None = None) -> dict[str, np.ndarray]:
    """``x`` [G, M, F], ``adjacency`` [G, M, M] (edges j->i counted at [g, i, j]), ``node_mask`` [G, M]."""
    counts = batch.graph_node_counts
    g = batch.num_graphs
    m = pad_size(int(counts.max()), max_nodes) if slots is None else slots
    need = dense_bytes(g, m, batch.x.shape[1])
    if need > MAX_DENSE_BYTES:
        raise _too_large(g, m, need)
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
