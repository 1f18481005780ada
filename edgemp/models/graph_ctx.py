"""Graph contexts: how layers aggregate messages and pool nodes, in each graph form.

Layers never touch ``edge_index`` directly; they ask a context to gather, aggregate and
pool. Two forms implement the same contract:

* :class:`SparseGraph` — an edge list. Aggregation is a scatter; ``scatter_impl``
  chooses the ONNX op it exports to: ``"index_add"`` → ScatterND(add) (fastest on ORT
  CPU), ``"scatter"`` → ScatterElements(add) (what TensorRT's parser accepts).
* :class:`DenseGraph` — graphs padded to M node slots with an adjacency matrix and a
  node mask. Aggregation is a batched matmul: no scatter at all.

Sizes always come from tensor shapes or explicit inputs, never from ``index.max() + 1``
(which an exporter would freeze into a constant).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

# index_reduce is "beta" in torch 2.x; its semantics are what we test, not its stability.
warnings.filterwarnings("ignore", message="index_reduce\\(\\) is in beta")

SCATTER_IMPLS = ("index_add", "scatter")


def scatter_sum(src: Tensor, index: Tensor, size: int, impl: str) -> Tensor:
    """Sum rows of ``src`` [K, ...] into ``size`` rows by ``index`` [K]."""
    flat = src.flatten(1) if src.dim() > 1 else src.unsqueeze(1)  # [K, D]; safe for K = 0
    out = flat.new_zeros((size, flat.shape[1]))
    if impl == "index_add":
        out = out.index_add(0, index, flat)
    else:
        out = out.scatter_add(0, index.unsqueeze(1).expand_as(flat), flat)
    return out.reshape((size,) + tuple(src.shape[1:]))


def _scatter_max(src: Tensor, index: Tensor, size: int, impl: str) -> Tensor:
    """Max of rows of ``src`` by ``index``; rows that receive nothing are 0 (never -inf).

    Starting from -inf with include_self=True matches ONNX's scatter max semantics
    exactly, so all-negative messages stay negative after export. ``index_add`` exports
    to ScatterND(max) (edgemp.export.translations), ``scatter`` to ScatterElements(max).
    """
    flat = src.flatten(1) if src.dim() > 1 else src.unsqueeze(1)
    init = flat.new_full((size, flat.shape[1]), float("-inf"))
    if impl == "index_add":
        out = init.index_reduce(0, index, flat, "amax", include_self=True)
    else:
        out = init.scatter_reduce(0, index.unsqueeze(1).expand_as(flat), flat, "amax", include_self=True)
    out = torch.where(torch.isneginf(out), torch.zeros_like(out), out)
    return out.reshape((size,) + tuple(src.shape[1:]))


class SparseGraph:
    """An edge-list batch. ``src``/``dst`` are rows 0/1 of ``edge_index``."""

    dense = False

    def __init__(
        self,
        edge_index: Tensor,
        num_nodes: int,
        node_graph: Tensor,
        num_graphs: int,
        edge_attr: Tensor | None = None,
        scatter_impl: str = "index_add",
    ) -> None:
        self.src = edge_index[0]  # [E]
        self.dst = edge_index[1]  # [E]
        self.num_nodes = num_nodes
        self.node_graph = node_graph  # [N]
        self.num_graphs = num_graphs
        self.edge_attr = edge_attr  # [E, Fe] or None
        self.scatter_impl = scatter_impl
        # Round-invariant quantities are computed once here, not once per round.
        ones = torch.ones_like(self.dst, dtype=torch.float32).unsqueeze(1)  # [E, 1]
        self.in_degree = scatter_sum(ones, self.dst, num_nodes, scatter_impl).squeeze(1)  # [N]
        graph_ones = torch.ones_like(node_graph, dtype=torch.float32).unsqueeze(1)  # [N, 1]
        self.graph_sizes = scatter_sum(graph_ones, node_graph, num_graphs, scatter_impl)  # [G, 1]

    # -- gather -----------------------------------------------------------------
    def gather_src(self, h: Tensor) -> Tensor:
        return h.index_select(0, self.src)  # [E, ...]

    def gather_dst(self, h: Tensor) -> Tensor:
        return h.index_select(0, self.dst)  # [E, ...]

    # -- aggregate per-edge messages onto target nodes ---------------------------
    def aggregate(self, messages: Tensor, aggr: str) -> Tensor:
        """Aggregate per-edge ``messages`` [E, ...] onto targets → [N, ...]."""
        if aggr == "sum":
            return scatter_sum(messages, self.dst, self.num_nodes, self.scatter_impl)
        if aggr == "mean":
            total = scatter_sum(messages, self.dst, self.num_nodes, self.scatter_impl)
            deg = self.in_degree.clamp(min=1.0).reshape((-1,) + (1,) * (messages.dim() - 1))
            return total / deg
        if aggr == "max":
            return _scatter_max(messages, self.dst, self.num_nodes, self.scatter_impl)
        raise ValueError(f"unknown aggregation {aggr!r}")

    def aggregate_onto(self, base: Tensor, messages: Tensor, aggr: str) -> Tensor:
        """``base`` [N, ...] combined with per-edge ``messages`` [E, ...] per target: sum or max.

        One scatter whose data input is ``base`` (ScatterND/ScatterElements with reduction and
        the node term as its starting value), instead of a scatter into zeros (or -inf, then a
        Where for empty rows) followed by an Add or Max: fewer nodes and one pass fewer over
        ``[N, ...]``. Every target row has its ``base`` term, so a max is never -inf.
        """
        if aggr not in ("sum", "max"):
            raise ValueError(f"aggregate_onto supports sum and max, not {aggr!r}")
        flat, msgs = base.flatten(1), messages.flatten(1)  # [N, D], [E, D]
        if self.scatter_impl == "index_add":
            out = flat.index_add(0, self.dst, msgs) if aggr == "sum" else \
                flat.index_reduce(0, self.dst, msgs, "amax", include_self=True)
        else:
            index = self.dst.unsqueeze(1).expand_as(msgs)
            out = flat.scatter_add(0, index, msgs) if aggr == "sum" else \
                flat.scatter_reduce(0, index, msgs, "amax", include_self=True)
        return out.reshape(base.shape)

    def propagate(self, node_messages: Tensor, aggr: str) -> Tensor:
        """Aggregate messages that depend only on the source node: Σ_j m(h_j)."""
        return self.aggregate(self.gather_src(node_messages), aggr)

    # -- readout -----------------------------------------------------------------
    def pool(self, h: Tensor, how: str) -> Tensor:
        """Per-graph readout [N, H] → [G, H]."""
        if how == "sum":
            return scatter_sum(h, self.node_graph, self.num_graphs, self.scatter_impl)
        if how == "mean":
            return scatter_sum(h, self.node_graph, self.num_graphs, self.scatter_impl) / self.graph_sizes.clamp(min=1.0)
        if how == "max":
            return _scatter_max(h, self.node_graph, self.num_graphs, self.scatter_impl)
        raise ValueError(f"unknown readout {how!r}")


class DenseGraph:
    """Graphs padded to M node slots: ``adjacency[g, i, j]`` = number of edges j → i.

    Node states stay 2-D, ``[G*M, H]`` (graph-major), exactly like the sparse form's
    ``[N, H]``: node-wise layers then export as Gemm (fused with bias and ReLU by ONNX
    Runtime) instead of rank-3 MatMul + Add, and only aggregation and readout see the
    ``[G, M, H]`` view.
    """

    dense = True

    def __init__(self, adjacency: Tensor, node_mask: Tensor) -> None:
        self.adjacency = adjacency  # [G, M, M]
        self.num_graphs, self.slots = adjacency.shape[0], adjacency.shape[1]
        self.mask3 = node_mask.unsqueeze(-1)  # [G, M, 1]
        self.in_degree = adjacency.sum(-1).reshape(-1)  # [G*M]
        self.graph_sizes = node_mask.sum(-1, keepdim=True)  # [G, 1]

    def as_graphs(self, h: Tensor) -> Tensor:
        """[G*M, ...] → [G, M, ...]."""
        return h.reshape((self.num_graphs, self.slots) + tuple(h.shape[1:]))

    def propagate(self, node_messages: Tensor, aggr: str) -> Tensor:
        """Σ_j A_ij m_j as a batched matmul; ``node_messages`` [G*M, H] → [G*M, H]."""
        m = self.as_graphs(node_messages)  # [G, M, H]
        if aggr in ("sum", "mean"):
            total = torch.matmul(self.adjacency, m).flatten(0, 1)  # [G*M, H]
            if aggr == "sum":
                return total
            return total / self.in_degree.clamp(min=1.0).unsqueeze(-1)
        if aggr == "max":
            has_edge = (self.adjacency > 0).unsqueeze(-1)  # [G, M(i), M(j), 1]
            cand = m.unsqueeze(1)  # [G, 1, M(j), H]
            best = torch.where(has_edge, cand, torch.full_like(cand, float("-inf"))).amax(dim=2)  # [G, M, H]
            best = best.flatten(0, 1)
            return torch.where(torch.isneginf(best), torch.zeros_like(best), best)
        raise ValueError(f"unknown aggregation {aggr!r}")

    def pool(self, h: Tensor, how: str) -> Tensor:
        """Masked readout [G*M, H] → [G, H]; padded slots never contribute."""
        h3 = self.as_graphs(h)
        if how == "sum":
            return (h3 * self.mask3).sum(1)
        if how == "mean":
            return (h3 * self.mask3).sum(1) / self.graph_sizes.clamp(min=1.0)
        if how == "max":
            masked = torch.where(self.mask3 > 0, h3, torch.full_like(h3, float("-inf")))
            best = masked.amax(1)
            return torch.where(torch.isneginf(best), torch.zeros_like(best), best)
        raise ValueError(f"unknown readout {how!r}")
