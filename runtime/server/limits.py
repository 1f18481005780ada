"""Per-request work limits: how many nodes and edges, and how much memory, one request may cost.

The body limit bounds bytes, not work: a valid 15 MiB request (one graph, 400k edges)
ran 22.7 s and grew the process by 7 GB, while every other client waited behind it,
because an MPNN's edge network holds ``[E, H*H]`` floats. So a request is checked, before
it is queued, against

- ``max_request_nodes`` / ``max_request_edges`` (default: four times the model's batch
  budget, so a single request never occupies the batcher much longer than a full batch);
- an estimate of its peak inference memory (``max_request_memory_bytes``):
  ``bytes_per_row * (nodes + edges) + fixed``, where ``bytes_per_row`` comes from the
  widest weight matrix in the ONNX file (an intermediate ``[rows, width]`` float tensor,
  a few of them alive at once). The widths are read from the model's protobuf header
  without onnx (the runtime stays torch- and onnx-free).

Refusals are 413 with the numbers and the limit, so a caller can split its request.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from edgemp.errors import RequestTooLargeError
from edgemp.graph import Graph

logger = logging.getLogger(__name__)

BUDGET_MULTIPLE = 4  # default per-request node / edge limit, in batch budgets
# Float intermediates of the widest layer alive at once (input, output, an activation or
# message copy, the scatter/aggregation buffer). Measured (benchmarks/results/arena.md):
# the hidden-64 fixture MPNN grew RSS by 223 MB on 100k nodes + 400k edges; the estimate
# for it is 4 * 4 B * 64 * 500k = 512 MB, so it errs on the safe side.
LIVE_TENSORS = 4
FLOAT_BYTES = 4


# -- reading weight shapes from an ONNX file without onnx --------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) for each protobuf field."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _tensor_dims(buf: bytes, start: int, end: int) -> list[int]:
    dims: list[int] = []
    for number, wire, a, b in _fields(buf, start, end):
        if number != 1:  # TensorProto.dims
            continue
        if wire == 0:
            dims.append(a)
        else:  # packed
            pos = a
            while pos < b:
                d, pos = _varint(buf, pos)
                dims.append(d)
    return dims


def widest_weight(path: Path) -> int:
    """The largest dimension of any 2-D+ initializer in an ONNX file (0 if none or unreadable)."""
    try:
        buf = path.read_bytes()
        widest = 0
        for number, wire, a, b in _fields(buf):
            if number != 7 or wire != 2:  # ModelProto.graph
                continue
            for gnum, gwire, ga, gb in _fields(buf, a, b):
                if gnum == 5 and gwire == 2:  # GraphProto.initializer
                    dims = _tensor_dims(buf, ga, gb)
                    if len(dims) >= 2:
                        widest = max(widest, max(dims))
        return widest
    except (OSError, ValueError) as e:
        logger.warning("cannot read weight shapes from %s (%s); memory estimate uses feature widths only", path, e)
        return 0


# -- the limits --------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestLimits:
    """The work one request may ask of one model (see the module docstring)."""

    max_nodes: int
    max_edges: int
    max_memory_bytes: int  # 0 = no estimate
    bytes_per_row: int  # per node or edge: the widest intermediate, a few times over
    fixed_bytes: int = 0
    dense_nodes: int = 0  # dense form: every graph is padded to this many nodes

    @classmethod
    def for_model(cls, spec, path: Path | None, batcher, config) -> "RequestLimits":
        """Limits from the server config, defaulting from the batcher budget and the weights."""
        m = spec.model
        widest = widest_weight(path) if path is not None and path.suffix == ".onnx" else 0
        width = max(widest, m.node_features, m.edge_features, 1)
        return cls(
            max_nodes=config.max_request_nodes or BUDGET_MULTIPLE * batcher.max_batch_nodes,
            max_edges=config.max_request_edges or BUDGET_MULTIPLE * batcher.max_batch_edges,
            max_memory_bytes=config.max_request_memory_bytes,
            bytes_per_row=LIVE_TENSORS * FLOAT_BYTES * width,
            dense_nodes=spec.max_nodes if spec.form == "dense" else 0,
        )

    def estimate_bytes(self, graphs: int, nodes: int, edges: int) -> int:
        """Estimated peak inference memory of one request (Python ints: no overflow)."""
        rows = graphs * self.dense_nodes if self.dense_nodes else nodes
        dense_adjacency = graphs * self.dense_nodes * self.dense_nodes * FLOAT_BYTES if self.dense_nodes else 0
        return self.bytes_per_row * (rows + edges) + dense_adjacency + self.fixed_bytes

    def check(self, graphs: Sequence[Graph]) -> None:
        """Raise :class:`RequestTooLargeError` (413) if the request asks for too much."""
        nodes = sum(int(g.x.shape[0]) for g in graphs)
        edges = sum(int(g.edge_index.shape[1]) if g.edge_index.ndim == 2 else 0 for g in graphs)
        if nodes > self.max_nodes:
            raise RequestTooLargeError(
                f"request has {nodes} nodes; this server takes at most {self.max_nodes} per request "
                "(max_request_nodes): split it into smaller requests")
        if edges > self.max_edges:
            raise RequestTooLargeError(
                f"request has {edges} edges; this server takes at most {self.max_edges} per request "
                "(max_request_edges): split it into smaller requests")
        if self.max_memory_bytes:
            need = self.estimate_bytes(len(graphs), nodes, edges)
            if need > self.max_memory_bytes:
                raise RequestTooLargeError(
                    f"request would need about {need >> 20} MiB to run ({nodes} nodes, {edges} edges); "
                    f"the limit is {self.max_memory_bytes >> 20} MiB (max_request_memory_bytes): "
                    "split it into smaller requests")
