"""The graph schema every part of edgemp speaks (numpy only).

A single graph is ``x`` float32 [N, F], ``edge_index`` int64 [2, E] (row 0 = source,
row 1 = target), optional ``edge_attr`` float32 [E, Fe] and an optional target ``y``.
A batch is the disjoint union of graphs: edge indices are offset by the node count of
the graphs before them, ``node_graph`` int64 [N] holds each node's graph id and
``graph_node_counts`` int64 [G] each graph's node count (its length *is* the number of
graphs, so exported models read G from a shape, never from ``index.max() + 1``).

Which tensors are node-indexed (get offsets when concatenated) is declared in
:data:`NODE_INDEX_FIELDS`, never guessed from names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from edgemp.errors import GraphValidationError

# Fields whose *values* are node indices: offset by the preceding node count on collate.
NODE_INDEX_FIELDS: tuple[str, ...] = ("edge_index",)
# Fields with one row per node / per edge (concatenated along axis 0 / axis -1).
NODE_LEVEL_FIELDS: tuple[str, ...] = ("x",)
EDGE_LEVEL_FIELDS: tuple[str, ...] = ("edge_attr",)


@dataclass
class Graph:
    """One graph. ``y`` is an optional target: scalar, vector, or per-node rows."""

    x: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray | None = None
    y: np.ndarray | None = None

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @classmethod
    def from_arrays(cls, x, edge_index, edge_attr=None, y=None) -> "Graph":
        """Build a graph from array-likes, converting to the schema dtypes.

        Conversion is lenient about Python lists (JSON) but never about meaning:
        call :func:`validate_graph` before using a graph you did not build yourself.
        """
        try:
            # Out-of-range numbers become inf here, and validate_graph rejects them by name.
            with np.errstate(over="ignore", invalid="ignore"):
                x_arr, ei, ea, y_arr = _convert(x, edge_index, edge_attr, y)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            if isinstance(e, GraphValidationError):
                raise
            raise GraphValidationError(f"graph arrays could not be converted: {e}") from e
        return cls(x=x_arr, edge_index=ei, edge_attr=ea, y=y_arr)


def _numbers(value, what: str) -> np.ndarray:
    """``value`` as float32, only if it holds numbers: numpy would read "1.5" as 1.5.

    Booleans are numbers here (a one-hot ``types[:, None] == np.arange(k)`` is a bool array);
    JSON readers refuse a ``true`` among numbers themselves (:func:`edgemp.jsonio.holds_bool`),
    where it is a typo, not a one-hot. An object array (a mixed pandas frame) may hold numbers.
    """
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind == "O" and arr.size and any(isinstance(v, (str, bytes)) for v in arr.flat):
        raise GraphValidationError(f"{what} holds text; expected numbers")
    if kind not in "biufO" and arr.size:
        raise GraphValidationError(f"{what} holds dtype {arr.dtype}; expected numbers")
    return arr.astype(np.float32, copy=False)


def _convert(x, edge_index, edge_attr, y) -> tuple:
    x_arr = _numbers(x, "x")
    ei = np.asarray(edge_index)
    if ei.size == 0:
        ei = ei.reshape(2, 0)
    if ei.dtype.kind == "f":
        if not np.all(np.isfinite(ei)) or np.any(ei != np.round(ei)):
            raise GraphValidationError("edge_index holds non-integer values")
        if ei.size and float(np.abs(ei).max()) > 2.0**53:  # beyond exact floats; casting would wrap
            raise GraphValidationError("edge_index holds values too large to be node indices")
    elif ei.dtype.kind == "b":  # JSON true/false would read as nodes 1/0
        raise GraphValidationError("edge_index holds booleans; expected integer node indices")
    elif ei.dtype.kind not in "iu":
        raise GraphValidationError(f"edge_index has dtype {ei.dtype}; expected integers")
    ei = ei.astype(np.int64)
    ea = None if edge_attr is None else _numbers(edge_attr, "edge_attr")
    if ea is not None and ea.size == 0 and ea.ndim == 1:
        ea = ea.reshape(0, 0)
    y_arr = None if y is None else _numbers(y, "y")
    return x_arr, ei, ea, y_arr


def check_counts(counts: np.ndarray, total: int, what: str, of: str, *, minimum: int = 0) -> None:
    """Raise :class:`GraphValidationError` unless ``counts`` are in range and add up to ``total``.

    Client-supplied counts are bounded *before* they are summed: int64 wraps silently, and
    ``[2**63 - 1, 2**63 - 1, 3]`` would otherwise "add up" to 1 and size arrays (np.repeat
    segfaults on such counts). With every entry in ``[minimum, total]`` and ``size * max``
    below 2**63, the sum cannot wrap (a count of entries would refuse edgeless graphs' zeros).
    """
    counts = np.asarray(counts)
    if counts.dtype.kind not in "iu":
        raise GraphValidationError(f"{what} must hold integers, got {counts.dtype}")
    if counts.ndim != 1:
        raise GraphValidationError(f"{what} must be one-dimensional, got shape {list(counts.shape)}")
    if counts.size == 0:
        return
    if minimum > 0 and counts.size > total // minimum:
        raise GraphValidationError(f"{what} lists {counts.size} entries but {of} has only {total}")
    lo, hi = int(counts.min()), int(counts.max())
    if lo < minimum:
        raise GraphValidationError(f"{what} holds {lo}; each entry must be at least {minimum}")
    if hi > total:
        raise GraphValidationError(f"{what} holds {hi} but {of} has {total}")
    if counts.size * hi >= 2**63:  # the sum below could wrap (zeros may repeat: edgeless graphs)
        raise GraphValidationError(f"{what} lists {counts.size} entries for {total} in {of}")
    s = int(counts.sum(dtype=np.int64))
    if s != total:
        raise GraphValidationError(f"{what} add up to {s} but {of} has {total}")


def _where(index: int | None) -> str:
    return f"graph {index}: " if index is not None else ""


def validate_graph(
    g: Graph,
    index: int | None = None,
    *,
    node_features: int | None = None,
    edge_features: int | None = None,
    max_nodes: int | None = None,
) -> None:
    """Raise :class:`GraphValidationError` naming the graph and field if ``g`` is malformed.

    Graphs with no edges and isolated nodes are valid. ``edge_features=0`` means the
    model takes no edge features (``edge_attr`` is ignored if present).
    """
    w = _where(index)
    x, ei = g.x, g.edge_index
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise GraphValidationError(f"{w}x must be a float32 array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 2:
        raise GraphValidationError(f"{w}x must have rank 2 [num_nodes, features], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise GraphValidationError(f"{w}x has 0 nodes; a graph needs at least one node")
    if node_features is not None and x.shape[1] != node_features:
        raise GraphValidationError(
            f"{w}x has {x.shape[1]} features per node but the model expects {node_features}"
        )
    if max_nodes is not None and x.shape[0] > max_nodes:
        raise GraphValidationError(
            f"{w}has {x.shape[0]} nodes but this dense model takes at most {max_nodes}"
        )
    if not np.isfinite(x).all():
        raise GraphValidationError(f"{w}x contains NaN or infinite values")
    if not isinstance(ei, np.ndarray) or ei.dtype != np.int64:
        raise GraphValidationError(f"{w}edge_index must be an int64 array, got {getattr(ei, 'dtype', type(ei).__name__)}")
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise GraphValidationError(f"{w}edge_index must have shape [2, num_edges], got {list(ei.shape)}")
    if ei.size:
        lo, hi = int(ei.min()), int(ei.max())
        if lo < 0:
            raise GraphValidationError(f"{w}edge_index holds negative node index {lo}")
        if hi >= x.shape[0]:
            raise GraphValidationError(
                f"{w}edge_index holds node {hi} but the graph has {x.shape[0]} nodes"
            )
    ea = g.edge_attr
    needs_edges = edge_features is not None and edge_features > 0
    if ea is None:
        if needs_edges:
            raise GraphValidationError(f"{w}edge_attr is missing; the model expects {edge_features} edge features")
        return
    if edge_features == 0:
        return  # the model ignores edge features
    if not isinstance(ea, np.ndarray) or ea.dtype != np.float32:
        raise GraphValidationError(f"{w}edge_attr must be a float32 array, got {getattr(ea, 'dtype', type(ea).__name__)}")
    if ea.ndim != 2:
        raise GraphValidationError(f"{w}edge_attr must have rank 2 [num_edges, features], got shape {list(ea.shape)}")
    if ea.shape == (0, 0) and ei.shape[1] == 0:
        return  # an edgeless graph from JSON ("edge_attr": []) fits any edge feature width
    if ea.shape[0] != ei.shape[1]:
        raise GraphValidationError(
            f"{w}edge_attr has {ea.shape[0]} rows but edge_index has {ei.shape[1]} edges"
        )
    if needs_edges and ea.shape[1] != edge_features:
        raise GraphValidationError(
            f"{w}edge_attr has {ea.shape[1]} features per edge but the model expects {edge_features}"
        )
    if not np.isfinite(ea).all():
        raise GraphValidationError(f"{w}edge_attr contains NaN or infinite values")


@dataclass
class GraphBatch:
    """Disjoint union of graphs, with the offsets needed to split results back."""

    x: np.ndarray  # [N, F] float32
    edge_index: np.ndarray  # [2, E] int64, offset into the batch's node numbering
    node_graph: np.ndarray  # [N] int64
    graph_node_counts: np.ndarray  # [G] int64
    graph_edge_counts: np.ndarray  # [G] int64
    edge_attr: np.ndarray | None = None  # [E, Fe] float32
    y: list | None = field(default=None, repr=False)

    @property
    def num_graphs(self) -> int:
        return int(self.graph_node_counts.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def node_offsets(self) -> np.ndarray:
        """[G + 1] start of each graph's nodes (last entry = N)."""
        return np.concatenate([[0], np.cumsum(self.graph_node_counts)]).astype(np.int64)

    @property
    def edge_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.graph_edge_counts)]).astype(np.int64)

    def tensors(self) -> dict[str, np.ndarray]:
        """The batch as named tensors, in the names exported models use."""
        out = {
            "x": self.x,
            "edge_index": self.edge_index,
            "node_graph": self.node_graph,
            "graph_node_counts": self.graph_node_counts,
        }
        if self.edge_attr is not None:
            out["edge_attr"] = self.edge_attr
        return out


def collate(graphs: Sequence[Graph]) -> GraphBatch:
    """Concatenate graphs into one batch (disjoint union with edge-index offsets).

    Graphs are expected to be valid (see :func:`validate_graph`, or :func:`collate_valid`
    to do both); mixing graphs with and without ``edge_attr`` is an error.
    """
    if len(graphs) == 0:
        raise GraphValidationError("cannot collate an empty list of graphs")
    if len(graphs) == 1:
        return _collate_one(graphs[0])
    xs, eis = [g.x for g in graphs], [g.edge_index for g in graphs]
    has_attr = [g.edge_attr is not None for g in graphs]
    if any(has_attr) and not all(has_attr):
        missing = has_attr.index(False)
        raise GraphValidationError(f"graph {missing}: edge_attr is missing while other graphs have it")
    edge_attr = None
    if all(has_attr):
        # A graph without edges may carry a [0, 0] edge_attr (from JSON "[]"): it has no width.
        widths = {g.edge_attr.shape[1] for g in graphs if g.edge_attr.shape[0]}
        if len(widths) > 1:
            raise GraphValidationError(f"graphs have different edge feature widths {sorted(widths)}")
        width = widths.pop() if widths else max(g.edge_attr.shape[1] for g in graphs)
        edge_attr = np.concatenate(
            [g.edge_attr if g.edge_attr.shape[0] else np.zeros((0, width), np.float32) for g in graphs],
            axis=0,
        )
    return _assemble(graphs, np.concatenate(xs, axis=0), np.concatenate(eis, axis=1), edge_attr,
                     np.array([x.shape[0] for x in xs], np.int64), np.array([e.shape[1] for e in eis], np.int64))


def _assemble(graphs: Sequence[Graph], x: np.ndarray, local_edges: np.ndarray, edge_attr: np.ndarray | None,
              node_counts: np.ndarray, edge_counts: np.ndarray) -> GraphBatch:
    """The batch from its concatenated fields: edges offset by one add of each edge's graph start."""
    starts = np.cumsum(node_counts) - node_counts  # [G] first node of each graph
    edge_index = local_edges + np.repeat(starts, edge_counts)  # [2, E] + [E]
    node_graph = np.repeat(np.arange(len(graphs), dtype=np.int64), node_counts)
    y = [g.y for g in graphs] if any(g.y is not None for g in graphs) else None
    return GraphBatch(x=x, edge_index=edge_index.astype(np.int64, copy=False), node_graph=node_graph,
                      graph_node_counts=node_counts, graph_edge_counts=edge_counts, edge_attr=edge_attr, y=y)


def collate_valid(
    graphs: Sequence[Graph],
    *,
    node_features: int | None = None,
    edge_features: int | None = None,
    max_nodes: int | None = None,
) -> GraphBatch:
    """:func:`validate_graph` on every graph, then :func:`collate` — values checked once over the batch.

    Graph by graph, the checks cost more than running the model on a batch of small graphs
    (64 molecules: ~375 µs of small numpy calls, against ~20 µs here): shapes and dtypes are
    read per graph, finiteness and node-index ranges are one scan of each concatenated
    field. If anything is off, or the batch is not a plain one (edgeless ``[0, 0]``
    edge_attr, non-ndarray fields, ...), every graph goes through :func:`validate_graph` in
    order, so the error is exactly the one it gives for the first bad graph.
    """
    batch = _plain_valid_batch(graphs, node_features, edge_features, max_nodes) if len(graphs) > 1 else None
    if batch is None:
        for i, g in enumerate(graphs):
            validate_graph(g, i, node_features=node_features, edge_features=edge_features, max_nodes=max_nodes)
        batch = collate(graphs)
    return batch


_F32, _I64 = np.dtype(np.float32), np.dtype(np.int64)


def _plain_valid_batch(graphs: Sequence[Graph], node_features: int | None, edge_features: int | None,
                       max_nodes: int | None) -> GraphBatch | None:
    """The collated batch if every graph is plainly valid, else None (the caller checks graph by graph)."""
    xs, eis, eas = [g.x for g in graphs], [g.edge_index for g in graphs], [g.edge_attr for g in graphs]
    if {type(a) for a in xs} != {np.ndarray} or {type(a) for a in eis} != {np.ndarray} \
            or {a.dtype for a in xs} != {_F32} or {a.dtype for a in eis} != {_I64}:
        return None
    try:  # ranks or widths that differ between graphs do not concatenate
        x, local = np.concatenate(xs, axis=0), np.concatenate(eis, axis=1)
    except ValueError:  # np.exceptions.AxisError is a ValueError too
        return None
    if x.ndim != 2 or local.ndim != 2 or local.shape[0] != 2 \
            or (node_features is not None and x.shape[1] != node_features):
        return None
    node_counts = np.array([a.shape[0] for a in xs], np.int64)
    edge_counts = np.array([a.shape[1] for a in eis], np.int64)
    if node_counts.min() == 0 or (max_nodes is not None and node_counts.max() > max_nodes):
        return None
    edge_attr = None
    if any(a is not None for a in eas):
        if edge_features == 0 or {type(a) for a in eas} != {np.ndarray} or {a.dtype for a in eas} != {_F32}:
            return None
        try:
            edge_attr = np.concatenate(eas, axis=0)
        except ValueError:
            return None
        if edge_attr.ndim != 2 or [a.shape[0] for a in eas] != edge_counts.tolist() \
                or (edge_features is not None and edge_attr.shape[1] != edge_features):
            return None
        if not np.isfinite(edge_attr).all():
            return None
    elif edge_features is not None and edge_features > 0:
        return None
    if not np.isfinite(x).all():
        return None
    if local.size and (local.min() < 0 or (local >= np.repeat(node_counts, edge_counts)).any()):
        return None
    return _assemble(graphs, x, local, edge_attr, node_counts, edge_counts)


def _collate_one(g: Graph) -> GraphBatch:
    """A batch of one graph without concatenating anything: batch 1 is the latency case.

    Measured on the 2-core box for a 23-atom molecule: the general path took ~78 µs (a
    concatenate, offset add and repeat per field), this one a few µs. Arrays are shared
    with ``g`` (made contiguous, never written).
    """
    n, e = g.num_nodes, g.num_edges
    ea = g.edge_attr
    if ea is not None:
        # A graph without edges may carry a [0, 0] edge_attr (from JSON "[]"), as in the general path.
        ea = np.ascontiguousarray(ea) if ea.shape[0] else np.zeros((0, ea.shape[1]), np.float32)
    return GraphBatch(
        x=np.ascontiguousarray(g.x),
        edge_index=np.ascontiguousarray(g.edge_index, dtype=np.int64),
        node_graph=np.zeros(n, np.int64),
        graph_node_counts=np.array([n], np.int64),
        graph_edge_counts=np.array([e], np.int64),
        edge_attr=ea,
        y=[g.y] if g.y is not None else None,
    )


def split(
    outputs: Mapping[str, np.ndarray], batch: GraphBatch, levels: Mapping[str, str]
) -> list[dict[str, np.ndarray]]:
    """Split batched outputs back into one dict per graph.

    ``levels`` maps each output name to ``"graph"`` (one row per graph) or ``"node"``
    (one row per node). Row counts are checked so a result can never be handed to the
    wrong graph.
    """
    per_graph: list[dict[str, np.ndarray]] = [{} for _ in range(batch.num_graphs)]
    node_off = None  # computed only when a node-level output needs it
    for name, value in outputs.items():
        level = levels.get(name, "graph")
        if level == "graph":
            if value.shape[0] != batch.num_graphs:
                raise GraphValidationError(
                    f"output {name!r} has {value.shape[0]} rows for {batch.num_graphs} graphs"
                )
            for i in range(batch.num_graphs):
                per_graph[i][name] = value[i]
        elif level == "node":
            if value.shape[0] != batch.num_nodes:
                raise GraphValidationError(
                    f"output {name!r} has {value.shape[0]} rows for {batch.num_nodes} nodes"
                )
            if node_off is None:
                node_off = batch.node_offsets
            for i in range(batch.num_graphs):
                per_graph[i][name] = value[node_off[i] : node_off[i + 1]]
        else:
            raise GraphValidationError(f"output {name!r} has unknown level {level!r}")
    return per_graph
