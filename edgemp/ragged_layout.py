"""The Triton ragged-batching layout: one graph per request, flat tensors, batch inputs.

Triton's dynamic batcher concatenates requests along the batch dimension, which breaks
graphs (the second request's edge indices must be shifted by the first one's node
count). Its answer is *ragged batching*; this module reproduces, in numpy, exactly what
Triton's ONNX Runtime backend hands a model configured for it, so the exported model can
be checked here without Triton, and so ``edgemp serve`` can feed the same model.

Request layout (``max_batch_size > 0``, so every tensor carries a leading batch dim of 1;
one request = one graph)::

    x           FP32  [1, n * F]   node features, row-major (x.reshape(1, -1))
    edge_index  INT64 [1, 2 * E]   (source, target) pairs local to the graph: edge_index.T.reshape(1, -1)
    edge_attr   FP32  [1, E * Fe]  only for models that read edge features

Why flat: the ONNX Runtime backend requires every ``allow_ragged_batch`` input to be a
1-D ``[-1]`` tensor in the model and concatenates the requests' *elements* into it; and
edges go as pairs because ``[2, E]`` blocks do not stay ``[2, E]`` when flattened and
concatenated, while ``[E, 2]`` pairs do.

What the model receives for G batched requests (``backend_input_collector.cc``,
``onnxruntime.cc``; ``model_config.proto`` ``BatchInput.Kind``)::

    x                   [sum n_i * F]   requests' elements concatenated in batch order
    edge_index          [sum 2 * E_i]
    edge_attr           [sum E_i * Fe]
    x_offsets           INT32 [G + 1]   BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO of x
    edge_index_offsets  INT32 [G + 1]   BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO of edge_index

Element counts include the batch dim (Triton uses ``ShapeWithBatchDim``), so they are
``n * F`` and ``2 * E``, not node and edge counts: the model divides by F and 2. The
output is ``[G, W]``, one row per request, which Triton splits back by batch size.

It lives in the numpy core because export (the Triton repository and its verification),
the runtime (``edgemp serve``) and the bench client all use it; :mod:`edgemp.runtime.ragged`
re-exports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from edgemp.errors import GraphValidationError
from edgemp.graph import Graph, GraphBatch

FORM = "triton-ragged"
X_OFFSETS = "x_offsets"
EDGE_OFFSETS = "edge_index_offsets"
# config.pbtxt parameters holding the node / edge feature widths: Triton's metadata shows the
# flat inputs as [-1, -1], so a client (``edgemp bench --url``) reads the widths from /config.
WIDTH_PARAMETERS = ("edgemp_node_features", "edgemp_edge_features")

BATCH_INPUT_KINDS = (
    "BATCH_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT",
    "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO",
    "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE",
    "BATCH_ITEM_SHAPE",
    "BATCH_ITEM_SHAPE_FLATTEN",
)
# Triton writes batch inputs as float or int32 only (BatchInput.data_type).
_BATCH_DTYPES = {"TYPE_INT32": np.int32, "TYPE_FP32": np.float32}


@dataclass(frozen=True)
class RaggedInput:
    """A per-request tensor Triton concatenates flat (``allow_ragged_batch: true``)."""

    name: str
    data_type: str  # Triton type: TYPE_FP32 | TYPE_INT64
    per_item: int  # elements per node (x: F) or per edge (edge_index: 2, edge_attr: Fe)


@dataclass(frozen=True)
class BatchInput:
    """A tensor Triton computes from the formed batch (``batch_input`` in config.pbtxt)."""

    kind: str
    target_name: str
    source_input: str
    data_type: str = "TYPE_INT32"


@dataclass(frozen=True)
class RaggedLayout:
    """The ragged inputs and batch inputs of one model."""

    ragged: tuple[RaggedInput, ...]
    batch_inputs: tuple[BatchInput, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        """ONNX input names, in the order the exported model declares them."""
        return tuple(r.name for r in self.ragged) + tuple(b.target_name for b in self.batch_inputs)


def layout(node_features: int, edge_features: int) -> RaggedLayout:
    """The layout of a model with these feature widths (``edge_features == 0``: no edge_attr)."""
    ragged = [RaggedInput("x", "TYPE_FP32", node_features), RaggedInput("edge_index", "TYPE_INT64", 2)]
    if edge_features > 0:
        ragged.append(RaggedInput("edge_attr", "TYPE_FP32", edge_features))
    kind = "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO"
    return RaggedLayout(
        tuple(ragged),
        (BatchInput(kind, X_OFFSETS, "x"), BatchInput(kind, EDGE_OFFSETS, "edge_index")),
    )


# -- one graph <-> one request -----------------------------------------------------------
def graph_to_request(g: Graph, edge_features: int) -> dict[str, np.ndarray]:
    """One graph as a Triton request (batch dim 1, flat contents); see the module docstring."""
    out = {
        "x": np.ascontiguousarray(g.x, dtype=np.float32).reshape(1, -1),
        "edge_index": np.ascontiguousarray(np.asarray(g.edge_index, dtype=np.int64).T).reshape(1, -1),
    }
    if edge_features > 0:
        ea = g.edge_attr if g.edge_attr is not None and g.edge_attr.size else np.zeros((g.num_edges, edge_features), np.float32)
        out["edge_attr"] = np.ascontiguousarray(ea, dtype=np.float32).reshape(1, -1)
    return out


def request_to_graph(tensors: Mapping[str, np.ndarray], node_features: int, edge_features: int,
                     index: int | None = None) -> Graph:
    """A Triton-layout request back to a :class:`Graph`, rejecting sizes that do not divide."""
    where = f"request {index}: " if index is not None else ""
    needed = ["x", "edge_index"] + (["edge_attr"] if edge_features > 0 else [])
    missing = [n for n in needed if n not in tensors]
    if missing:
        raise GraphValidationError(f"{where}missing input(s) {missing}; a ragged request carries {needed}")
    flat = {}
    for name in needed:
        arr = np.asarray(tensors[name])
        if arr.ndim != 2 or arr.shape[0] != 1:
            raise GraphValidationError(
                f"{where}{name} has shape {list(arr.shape)}; send one graph per request as [1, -1]"
            )
        flat[name] = arr.reshape(-1)
    x, ei = flat["x"], flat["edge_index"]
    if x.size % node_features:
        raise GraphValidationError(f"{where}x has {x.size} values, not a multiple of {node_features} node features")
    if ei.size % 2:
        raise GraphValidationError(f"{where}edge_index has {ei.size} values; it holds (source, target) pairs")
    num_edges = ei.size // 2
    ea = None
    if edge_features > 0:
        ea_flat = flat["edge_attr"]
        if ea_flat.size != num_edges * edge_features:
            raise GraphValidationError(
                f"{where}edge_attr has {ea_flat.size} values; {num_edges} edges x {edge_features} features "
                f"= {num_edges * edge_features} expected"
            )
        ea = ea_flat.reshape(num_edges, edge_features)
    return Graph.from_arrays(x.reshape(-1, node_features), ei.reshape(num_edges, 2).T, ea)


# -- Triton's ragged batching, reproduced --------------------------------------------------
def batch_input_value(kind: str, shapes: Sequence[tuple[int, ...]], data_type: str = "TYPE_INT32") -> np.ndarray:
    """The batch input Triton computes for requests whose source input has ``shapes``.

    ``shapes`` are the per-request shapes *with* their batch dim. Mirrors
    ``BackendInputCollector::BatchInputShape`` / ``ProcessBatchInput``: element counts
    include the batch dim; ``..._WITH_ZERO`` has one more entry (a leading 0);
    ``BATCH_MAX_ELEMENT_COUNT_AS_SHAPE`` only carries its shape (contents uninitialised:
    zeros here); ``BATCH_ITEM_SHAPE`` repeats each request's shape (without its batch dim)
    once per batch item.
    """
    if kind not in BATCH_INPUT_KINDS:
        raise GraphValidationError(f"unknown batch input kind {kind!r}; expected one of {list(BATCH_INPUT_KINDS)}")
    dtype = _BATCH_DTYPES.get(data_type)
    if dtype is None:
        raise GraphValidationError(f"batch input data_type {data_type!r}: Triton writes only {sorted(_BATCH_DTYPES)}")
    counts = np.array([int(np.prod(s)) for s in shapes], dtype=np.int64)
    if kind == "BATCH_ELEMENT_COUNT":
        return counts.astype(dtype)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT":
        return np.cumsum(counts).astype(dtype)
    if kind == "BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO":
        return np.concatenate([[0], np.cumsum(counts)]).astype(dtype)
    if kind == "BATCH_MAX_ELEMENT_COUNT_AS_SHAPE":
        return np.zeros(int(counts.max()) if counts.size else 0, dtype)
    rows = [list(s[1:]) for s in shapes for _ in range(s[0])]
    item = np.array(rows, dtype=dtype).reshape(len(rows), len(shapes[0]) - 1 if shapes else 0)
    return item if kind == "BATCH_ITEM_SHAPE" else item.reshape(-1)


def triton_batch(requests: Sequence[Mapping[str, np.ndarray]], lay: RaggedLayout) -> dict[str, np.ndarray]:
    """What the ONNX Runtime backend feeds the model for ``requests`` batched in this order.

    Ragged inputs: every request's elements concatenated into one 1-D tensor
    (``batchn_shape = [sum of element counts]``); batch inputs as
    :func:`batch_input_value` defines them.
    """
    if not requests:
        raise GraphValidationError("a Triton batch holds at least one request")
    feeds = {}
    for r in lay.ragged:
        feeds[r.name] = np.concatenate([np.asarray(req[r.name]).reshape(-1) for req in requests])
    for b in lay.batch_inputs:
        shapes = [tuple(np.asarray(req[b.source_input]).shape) for req in requests]
        feeds[b.target_name] = batch_input_value(b.kind, shapes, b.data_type)
    return feeds


def split_outputs(outputs: Mapping[str, np.ndarray], batch_sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Triton's output scatter: rows ``[sum(batch_sizes), ...]`` back to each request, in order."""
    total = sum(batch_sizes)
    for name, value in outputs.items():
        if value.shape[0] != total:
            raise GraphValidationError(
                f"output {name!r} has {value.shape[0]} rows for a batch of {total}; Triton would reject it"
            )
    bounds = np.concatenate([[0], np.cumsum(batch_sizes)]).astype(np.int64)
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in outputs.items()} for i in range(len(batch_sizes))]


# -- the runtime's fast path: a collated batch straight to ragged feeds -------------------
def feeds_from_batch(batch: GraphBatch, node_features: int, edge_features: int) -> dict[str, np.ndarray]:
    """A collated :class:`GraphBatch` as the ragged feeds (equal to :func:`triton_batch` of its graphs).

    Used by ``edgemp serve`` / ``Model.predict``: one graph per batch row, so the edgemp
    batcher plays Triton's part without splitting the batch into requests first.
    """
    g = batch.num_graphs
    node_off = batch.node_offsets  # [G + 1]
    edge_off = batch.edge_offsets  # [G + 1]
    edge_graph = np.repeat(np.arange(g, dtype=np.int64), batch.graph_edge_counts)  # [E]
    local = batch.edge_index - node_off[edge_graph]  # [2, E]
    feeds = {
        "x": np.ascontiguousarray(batch.x, dtype=np.float32).reshape(-1),
        "edge_index": np.ascontiguousarray(local.T, dtype=np.int64).reshape(-1),
    }
    if edge_features > 0:
        ea = batch.edge_attr if batch.edge_attr is not None else np.zeros((batch.num_edges, edge_features), np.float32)
        feeds["edge_attr"] = np.ascontiguousarray(ea, dtype=np.float32).reshape(-1)
    feeds[X_OFFSETS] = (node_off * node_features).astype(np.int32)
    feeds[EDGE_OFFSETS] = (edge_off * 2).astype(np.int32)
    return feeds
