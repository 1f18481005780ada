"""Modules that give an exported graph its ONNX input names and output order.

The number of graphs enters as the length of ``graph_node_counts`` [G], so it is a
dynamic shape in the ONNX file, never a constant frozen at export time.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn


class SparseExport(nn.Module):
    """x, edge_index, [edge_attr], node_graph, graph_node_counts → outputs (tuple)."""

    def __init__(self, net: nn.Module, output_names: tuple[str, ...], uses_edge_attr: bool) -> None:
        super().__init__()
        self.net = net
        self.output_names = output_names
        self.uses_edge_attr = uses_edge_attr
        params = inspect.signature(net.forward).parameters
        self._takes = {name for name in params}

    def input_names(self) -> tuple[str, ...]:
        if self.uses_edge_attr:
            return ("x", "edge_index", "edge_attr", "node_graph", "graph_node_counts")
        return ("x", "edge_index", "node_graph", "graph_node_counts")

    def run(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, node_graph: Tensor, counts: Tensor):
        return call_graph_net(self.net, self._takes, self.output_names, x, edge_index, edge_attr, node_graph,
                              counts.shape[0])


class SparseNodeExport(SparseExport):
    """Sparse export for models without edge features (no ``edge_attr`` input)."""

    def forward(self, x: Tensor, edge_index: Tensor, node_graph: Tensor, graph_node_counts: Tensor):
        return self.run(x, edge_index, None, node_graph, graph_node_counts)


class SparseEdgeExport(SparseExport):
    """Sparse export for models that read ``edge_attr``."""

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, node_graph: Tensor, graph_node_counts: Tensor):
        return self.run(x, edge_index, edge_attr, node_graph, graph_node_counts)


def sparse_export(net: nn.Module, output_names: tuple[str, ...], uses_edge_attr: bool) -> SparseExport:
    cls = SparseEdgeExport if uses_edge_attr else SparseNodeExport
    return cls(net, output_names, uses_edge_attr)


class DenseExport(nn.Module):
    """x [G, M, F], adjacency [G, M, M], node_mask [G, M] → outputs (tuple)."""

    def __init__(self, net: nn.Module, output_names: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.output_names = output_names

    def input_names(self) -> tuple[str, ...]:
        return ("x", "adjacency", "node_mask")

    def forward(self, x: Tensor, adjacency: Tensor, node_mask: Tensor) -> tuple[Tensor, ...]:
        return outputs_as_tuple(self.net.forward_dense(x, adjacency, node_mask), self.output_names)


def call_graph_net(net: nn.Module, takes: set[str], output_names: tuple[str, ...], x: Tensor, edge_index: Tensor,
                   edge_attr: Tensor | None, node_graph: Tensor, num_graphs) -> tuple[Tensor, ...]:
    """``net`` called with the schema's keyword names (``edge_attr`` only if its forward ``takes`` it)."""
    kwargs = {"x": x, "edge_index": edge_index, "node_graph": node_graph, "num_graphs": num_graphs}
    if "edge_attr" in takes:
        kwargs["edge_attr"] = edge_attr
    return outputs_as_tuple(net(**kwargs), output_names)


def outputs_as_tuple(out, names: tuple[str, ...]) -> tuple[Tensor, ...]:
    """A model's outputs (a tensor, a tuple or a dict keyed by name) in the ONNX output order ``names``."""
    if isinstance(out, dict):
        return tuple(out[n] for n in names)
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out)


class TritonRaggedExport(nn.Module):
    """Triton ragged batching: flat per-request tensors + batch inputs → one row per request.

    Triton's ONNX Runtime backend concatenates ``allow_ragged_batch`` inputs as 1-D tensors
    and computes the batch inputs (layout: :mod:`edgemp.ragged_layout`). This wrapper
    rebuilds the sparse batch in-graph and runs the same unrolled message passing:

    * node offsets = ``x_offsets // F``, edge offsets = ``edge_index_offsets // 2`` [G + 1];
      G is the offsets' *length* minus one, a shape, so it stays dynamic in the ONNX file;
    * node→graph (and edge→graph) ids: a 1 scattered at each interior offset, then a
      cumulative sum — O(N + E), no data-dependent shapes, exports without loops;
    * request-local edge pairs [E, 2] → batch ``edge_index`` [2, E] plus each edge's node offset.

    Shapes:
        x [N·F], edge_index [2·E] int64, x_offsets [G + 1] int32, edge_index_offsets
        [G + 1] int32, edge_attr [E·Fe] (edge families) → outputs ``[G, W]`` each.
    """

    def __init__(self, net: nn.Module, output_names: tuple[str, ...], node_features: int, edge_features: int,
                 scatter_impl: str = "index_add") -> None:
        super().__init__()
        self.net = net
        self.output_names = output_names
        self.node_features = node_features
        self.edge_features = edge_features
        self.scatter_impl = scatter_impl
        self._takes = set(inspect.signature(net.forward).parameters)

    def input_names(self) -> tuple[str, ...]:
        ragged = ("x", "edge_index", "edge_attr") if self.edge_features else ("x", "edge_index")
        return ragged + ("x_offsets", "edge_index_offsets")

    def _segment_ids(self, offsets: Tensor, size) -> Tensor:
        """[size] segment id of each position, given segment starts ``offsets`` [S + 1] (last = size)."""
        bounds = offsets[1:-1]  # [S - 1] interior starts; repeats (empty segments) add up
        marks = torch.zeros(size + 1, dtype=torch.int64, device=offsets.device)  # +1: a start may equal size
        ones = torch.ones_like(bounds)
        if self.scatter_impl == "index_add":
            marks = marks.index_add(0, bounds, ones)
        else:
            marks = marks.scatter_add(0, bounds, ones)
        return torch.cumsum(marks, 0)[:size]  # [size]

    def run(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, x_offsets: Tensor,
            edge_index_offsets: Tensor) -> tuple[Tensor, ...]:
        h = x.reshape(-1, self.node_features)  # [N, F]
        pairs = edge_index.reshape(-1, 2)  # [E, 2]
        node_off = x_offsets.to(torch.int64) // self.node_features  # [G + 1]
        edge_off = edge_index_offsets.to(torch.int64) // 2  # [G + 1]
        node_graph = self._segment_ids(node_off, h.shape[0])  # [N]
        edge_graph = self._segment_ids(edge_off, pairs.shape[0])  # [E]
        ei = pairs.t() + node_off.index_select(0, edge_graph).unsqueeze(0)  # [2, E]
        ea = None if edge_attr is None else edge_attr.reshape(-1, self.edge_features)  # [E, Fe]
        return call_graph_net(self.net, self._takes, self.output_names, h, ei, ea, node_graph, node_off.shape[0] - 1)


class TritonRaggedNodeExport(TritonRaggedExport):
    """Triton-ragged export for models without edge features (no ``edge_attr`` input)."""

    def forward(self, x: Tensor, edge_index: Tensor, x_offsets: Tensor, edge_index_offsets: Tensor):
        return self.run(x, edge_index, None, x_offsets, edge_index_offsets)


class TritonRaggedEdgeExport(TritonRaggedExport):
    """Triton-ragged export for models that read ``edge_attr``."""

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, x_offsets: Tensor, edge_index_offsets: Tensor):
        return self.run(x, edge_index, edge_attr, x_offsets, edge_index_offsets)


def triton_ragged_export(net: nn.Module, output_names: tuple[str, ...], node_features: int, edge_features: int,
                         scatter_impl: str = "index_add") -> TritonRaggedExport:
    cls = TritonRaggedEdgeExport if edge_features else TritonRaggedNodeExport
    return cls(net, output_names, node_features, edge_features, scatter_impl)
