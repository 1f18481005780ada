"""The V2 tensor layout of a request as edgemp graphs, and per-graph outputs back to it.

A V2 infer request is a *batch* of graphs in the sparse layout (``x``, ``edge_index``,
``edge_attr``, ``node_graph``, ``graph_node_counts``), whatever form the model was
exported in: the server splits it into :class:`~edgemp.graph.Graph` objects so the
batcher can merge graphs from many concurrent requests and the runtime can pad for dense
models. The split checks that the counts, ``node_graph`` and edges agree, because a batch
whose edges cross graph boundaries would silently mix two callers' graphs.

A Triton-ragged model (``edgemp export --triton-repo``) also takes Triton's own request
layout — one graph per request, flat ``x`` / ``edge_index`` pairs / ``edge_attr`` of shape
``[1, -1]``, no ``node_graph`` — so one tritonclient call works against Triton and here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgemp import ragged_layout as ragged
from edgemp.errors import GraphValidationError
from edgemp.graph import Graph, check_counts
from edgemp.runtime.server.protocol import ProtocolError
from edgemp.spec import ExportedModelSpec

REQUIRED = ("x", "edge_index", "node_graph", "graph_node_counts")


@dataclass(frozen=True)
class TensorSpec:
    """One V2 tensor: name, datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def input_specs(spec: ExportedModelSpec) -> list[TensorSpec]:
    """The request layout for a model (always sparse, see the module docstring)."""
    m = spec.model
    out = [TensorSpec("x", "FP32", (-1, m.node_features)), TensorSpec("edge_index", "INT64", (2, -1))]
    if m.edge_features > 0:
        out.append(TensorSpec("edge_attr", "FP32", (-1, m.edge_features)))
    out += [TensorSpec("node_graph", "INT64", (-1,)), TensorSpec("graph_node_counts", "INT64", (-1,))]
    return out


def output_specs(spec: ExportedModelSpec) -> list[TensorSpec]:
    """Graph-level outputs are ``[num_graphs, width]``, node-level ``[num_nodes, width]``."""
    return [TensorSpec(o.name, "FP32", (-1, o.width)) for o in spec.model.outputs]


def _check_shape(name: str, arr: np.ndarray, want: tuple[int, ...]) -> None:
    shape = arr.shape
    if len(shape) == len(want):  # a plain loop: a generator per tensor cost more than the check
        for w, d in zip(want, shape):
            if w != -1 and w != d:
                break
        else:
            return
    shown = ["-1" if w == -1 else str(w) for w in want]
    raise ProtocolError(f"input {name!r} has shape {list(arr.shape)}; expected [{', '.join(shown)}]")


def tensors_to_graphs(tensors: dict[str, np.ndarray], spec: ExportedModelSpec,
                      specs: dict[str, TensorSpec] | None = None) -> list[Graph]:
    """Split a request's batch tensors into graphs (views where possible), checking consistency.

    ``specs`` is :func:`input_specs` by name (pass it to skip rebuilding it per request).
    """
    if spec.form == ragged.FORM and "node_graph" not in tensors and "graph_node_counts" not in tensors:
        try:  # Triton's layout for this model: exactly one graph
            return [ragged.request_to_graph(tensors, spec.model.node_features, spec.model.edge_features)]
        except GraphValidationError as e:
            raise ProtocolError(str(e)) from e
    specs = specs or {s.name: s for s in input_specs(spec)}
    missing = [n for n in specs if n not in tensors]
    if missing:
        raise ProtocolError(f"missing input(s) {missing}; the model takes {list(specs)}")
    for name, arr in tensors.items():
        _check_shape(name, arr, specs[name].shape)
    x, ei = tensors["x"], tensors["edge_index"]
    node_graph, counts = tensors["node_graph"], tensors["graph_node_counts"]
    num_nodes, num_edges, num_graphs = x.shape[0], ei.shape[1], counts.shape[0]
    if num_graphs == 0:
        raise ProtocolError("graph_node_counts is empty; a request needs at least one graph")
    if num_graphs == 1:  # the common case: scalar checks; Model.validate checks the edges
        return [_one_graph(tensors, x, ei, node_graph, int(counts[0]))]
    try:  # every graph has a node; entries bounded before summing (no int64 wrap)
        check_counts(counts, num_nodes, "graph_node_counts", "x (nodes)", minimum=1)
    except GraphValidationError as e:
        raise ProtocolError(str(e)) from e
    if node_graph.shape[0] != num_nodes:
        raise ProtocolError(f"node_graph has {node_graph.shape[0]} entries but x has {num_nodes} nodes")
    expected_ng = np.repeat(np.arange(num_graphs, dtype=np.int64), counts) if num_graphs > 1 else 0
    if (node_graph != expected_ng).any():  # the method, not np.any: no Python wrapper on the hot path
        bad = int(np.flatnonzero(node_graph != expected_ng)[0])
        raise ProtocolError(
            f"node_graph[{bad}] disagrees with graph_node_counts (nodes must be grouped by graph, "
            "graph 0 first, as graph_node_counts says)"
        )
    edge_attr = tensors.get("edge_attr")
    if edge_attr is not None and edge_attr.shape[0] != num_edges:
        raise ProtocolError(f"edge_attr has {edge_attr.shape[0]} rows but edge_index has {num_edges} edges")
    if num_edges:
        lo, hi = int(ei.min()), int(ei.max())
        if lo < 0:
            raise ProtocolError(f"edge_index holds negative node index {lo}")
        if hi >= num_nodes:
            raise ProtocolError(f"edge_index holds node {hi} but the request has {num_nodes} nodes")
    node_off = np.zeros(num_graphs + 1, np.int64)
    np.cumsum(counts, out=node_off[1:])
    edge_off = np.zeros(num_graphs + 1, np.int64)
    if num_edges:
        src_graph = node_graph[ei[0]]
        crossing = np.flatnonzero(src_graph != node_graph[ei[1]])
        if crossing.size:
            k = int(crossing[0])
            raise ProtocolError(
                f"edge {k} joins graph {int(src_graph[k])} to graph {int(node_graph[ei[1, k]])}; "
                "edges must stay inside a graph"
            )
        if (src_graph[1:] < src_graph[:-1]).any():
            # Edges may come in any order; keep each graph's edges in their given order.
            order = np.argsort(src_graph, kind="stable")
            ei, src_graph = ei[:, order], src_graph[order]
            edge_attr = None if edge_attr is None else edge_attr[order]
        np.cumsum(np.bincount(src_graph, minlength=num_graphs), out=edge_off[1:])
    graphs = []
    for i in range(num_graphs):
        n0, n1, e0, e1 = node_off[i], node_off[i + 1], edge_off[i], edge_off[i + 1]
        graphs.append(Graph(
            x=x[n0:n1],
            edge_index=ei[:, e0:e1] - n0,
            edge_attr=None if edge_attr is None else edge_attr[e0:e1],
        ))
    return graphs


def takes_one_graph_path(tensors: dict[str, np.ndarray], spec: ExportedModelSpec) -> bool:
    """Whether :func:`tensors_to_graphs`, having accepted ``tensors``, read them as one graph
    through the shape checks that :func:`one_graph` then skips (all are on shapes only)."""
    counts = tensors.get("graph_node_counts")
    return spec.form != ragged.FORM and counts is not None and counts.shape == (1,)


def one_graph(tensors: dict[str, np.ndarray]) -> Graph:
    """A one-graph request whose tensor shapes passed :func:`tensors_to_graphs` before (a
    header plan's later requests): only its values are checked, with the same errors."""
    return _one_graph(tensors, tensors["x"], tensors["edge_index"], tensors["node_graph"],
                      int(tensors["graph_node_counts"][0]))


def _one_graph(tensors: dict[str, np.ndarray], x: np.ndarray, ei: np.ndarray, node_graph: np.ndarray,
               count: int) -> Graph:
    """A one-graph request as its graph (views); its edges are checked where every graph's are."""
    num_nodes = x.shape[0]
    if count < 1:
        raise ProtocolError(f"graph_node_counts holds {count}; every graph needs at least one node")
    if count != num_nodes:
        raise ProtocolError(f"graph_node_counts add up to {count} but x has {num_nodes} nodes")
    if node_graph.shape[0] != num_nodes:
        raise ProtocolError(f"node_graph has {node_graph.shape[0]} entries but x has {num_nodes} nodes")
    if np.count_nonzero(node_graph):  # not .any(): a ufunc reduction costs 5x more on a small array
        bad = int(np.flatnonzero(node_graph)[0])
        raise ProtocolError(f"node_graph[{bad}] disagrees with graph_node_counts (one graph: every entry is 0)")
    edge_attr = tensors.get("edge_attr")
    if edge_attr is not None and edge_attr.shape[0] != ei.shape[1]:
        raise ProtocolError(f"edge_attr has {edge_attr.shape[0]} rows but edge_index has {ei.shape[1]} edges")
    return Graph(x=x, edge_index=ei, edge_attr=edge_attr)


def graphs_to_tensors(
    results: list[dict[str, np.ndarray]], spec: ExportedModelSpec, names: list[str]
) -> dict[str, np.ndarray]:
    """Per-graph outputs back in the request's layout: graph rows in order, node rows concatenated."""
    levels = spec.model.output_levels
    out = {}
    for name in names:
        parts = [r[name] for r in results]
        if levels.get(name) == "node":
            out[name] = np.concatenate(parts, axis=0)
        else:
            out[name] = np.stack([p.reshape(-1) for p in parts], axis=0)
    return out
