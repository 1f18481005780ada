"""Static-shape stand-ins for PyTorch Geometric's self-loop handling, active only while exporting.

PyG drops existing self loops through a boolean mask (``remove_self_loops``,
``add_remaining_self_loops``), so the edge count after it depends on the data. ``GATConv``
then branches on that count (``if index.numel() == 0``) and ``torch.export`` stops; GCN and
GATv2 export, but with a NonZero whose output size only the data decides.

The stand-ins compute the same function with every shape a function of N and E:

* every input edge is kept, and N self loops ``(i, i)`` are appended;
* an input self loop gets weight exactly 0: an attention logit of ``-inf`` before the
  softmax (GAT, GATv2), an edge weight of 0 before GCN's degree normalisation;
* self-loop features from a ``fill_value`` reduction (``"mean"``, ``"add"``, …) leave input
  loops out by routing them to a spare row N that is sliced off afterwards.

A zero weight adds an exact 0 to every sum, so results match PyG's to float rounding.
:func:`pyg_translations` swaps the stand-ins in for the duration of ``torch.export`` only;
verification then compares the ONNX file with PyG's own, unpatched layers, so any
divergence fails the export instead of shipping.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)

# id(layer) -> [E + N] bool, True for the input self loops whose attention weight must be 0.
_MASKED_EDGES: dict[int, object] = {}


def static_self_loops(edge_index, edge_attr, fill_value, num_nodes):
    """``remove_self_loops`` + ``add_self_loops`` with static shapes.

    Returns ``(edge_index [2, E + N], edge_attr [E + N, ...] or None, masked [E + N] bool)``;
    ``masked`` marks the input self loops, which the caller must give weight 0.
    """
    import torch

    is_loop = edge_index[0] == edge_index[1]  # [E]
    loops = torch.arange(num_nodes, device=edge_index.device).view(1, -1).repeat(2, 1)  # [2, N]
    full_index = torch.cat([edge_index, loops], dim=1)  # [2, E + N]
    masked = torch.cat([is_loop, torch.zeros(num_nodes, dtype=torch.bool, device=edge_index.device)])  # [E + N]
    if edge_attr is not None:
        loop_attr = _loop_attr(edge_index, edge_attr, is_loop, num_nodes, fill_value)  # [N, ...]
        edge_attr = torch.cat([edge_attr, loop_attr], dim=0)
    return full_index, edge_attr, masked


def _loop_attr(edge_index, edge_attr, is_loop, num_nodes, fill_value):
    """Self-loop features as PyG's ``compute_loop_attr`` makes them after removing input loops."""
    import torch

    size = (num_nodes,) + tuple(edge_attr.shape[1:])
    if fill_value is None:
        return edge_attr.new_ones(size)
    if isinstance(fill_value, (int, float)):
        return edge_attr.new_full(size, fill_value)
    if isinstance(fill_value, torch.Tensor):
        loop_attr = fill_value.to(edge_attr.device, edge_attr.dtype)
        if edge_attr.dim() != loop_attr.dim():
            loop_attr = loop_attr.unsqueeze(0)
        return loop_attr.expand(size).contiguous()
    if isinstance(fill_value, str):
        from torch_geometric.utils import scatter

        # Input loops would have been removed before the reduction: send them to row N, then drop it.
        col = torch.where(is_loop, torch.full_like(edge_index[1], num_nodes), edge_index[1])  # [E]
        return scatter(edge_attr, col, 0, num_nodes + 1, fill_value)[:num_nodes]
    raise AttributeError(f"no valid fill_value for self loops: {fill_value!r}")


def _loop_count(x, size) -> int:
    """The node count GAT/GATv2 add loops for: nodes that are both sources and targets."""
    x_src, x_dst = (x, x) if not isinstance(x, (tuple, list)) else (x[0], x[1])
    num_nodes = x_src.size(0)
    if x_dst is not None:
        num_nodes = min(num_nodes, x_dst.size(0))
    return min(size) if size is not None else num_nodes


def _is_plain_edge_index(edge_index) -> bool:
    import torch
    from torch_geometric import EdgeIndex

    # isinstance, not type(): under torch.export the tensors are FakeTensor subclasses.
    return (isinstance(edge_index, torch.Tensor) and not isinstance(edge_index, EdgeIndex)
            and edge_index.layout == torch.strided)


def _static_loops_forward(original):
    """Wrap an attention layer's ``forward``: static self loops, then the layer with its own loops off."""
    signature = inspect.signature(original)

    def forward(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if not self.add_self_loops or not _is_plain_edge_index(a["edge_index"]) or a.get("return_attention_weights"):
            return original(self, *args, **kwargs)  # attention weights would expose the masked edges
        num_nodes = _loop_count(a["x"], a.get("size"))
        a["edge_index"], a["edge_attr"], masked = static_self_loops(a["edge_index"], a.get("edge_attr"),
                                                                    self.fill_value, num_nodes)
        _MASKED_EDGES[id(self)] = masked
        self.add_self_loops = False
        try:
            return original(*bound.args, **bound.kwargs)
        finally:
            self.add_self_loops = True
            _MASKED_EDGES.pop(id(self), None)

    return forward


def _gat_edge_update(original):
    """GATConv.edge_update with input self loops at weight 0 (and no branch on the edge count)."""

    def edge_update(self, alpha_j, alpha_i, edge_attr, index, ptr, dim_size):
        masked = _MASKED_EDGES.get(id(self))
        if masked is None:
            return original(self, alpha_j, alpha_i, edge_attr, index, ptr, dim_size)
        import torch.nn.functional as F
        from torch_geometric.utils import softmax

        alpha = alpha_j if alpha_i is None else alpha_j + alpha_i  # [E + N, H]
        if edge_attr is not None and self.lin_edge is not None:
            if edge_attr.dim() == 1:
                edge_attr = edge_attr.view(-1, 1)
            edge_attr = self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)
            alpha = alpha + (edge_attr * self.att_edge).sum(dim=-1)
        alpha = F.leaky_relu(alpha, self.negative_slope)
        alpha = alpha.masked_fill(masked.unsqueeze(-1), float("-inf"))  # exp(-inf) = 0: the loop drops out
        alpha = softmax(alpha, index, ptr, dim_size)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    return edge_update


def _gatv2_edge_update(original):
    """GATv2Conv.edge_update with input self loops at weight 0."""

    def edge_update(self, x_j, x_i, edge_attr, index, ptr, dim_size):
        masked = _MASKED_EDGES.get(id(self))
        if masked is None:
            return original(self, x_j, x_i, edge_attr, index, ptr, dim_size)
        import torch.nn.functional as F
        from torch_geometric.utils import softmax

        x = x_i + x_j  # [E + N, H, C]
        if edge_attr is not None:
            if edge_attr.dim() == 1:
                edge_attr = edge_attr.view(-1, 1)
            x = x + self.lin_edge(edge_attr).view(-1, self.heads, self.out_channels)
        x = F.leaky_relu(x, self.negative_slope)
        alpha = (x * self.att).sum(dim=-1)  # [E + N, H]
        alpha = alpha.masked_fill(masked.unsqueeze(-1), float("-inf"))
        alpha = softmax(alpha, index, ptr, dim_size)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    return edge_update


def _static_gcn_norm(original):
    """``gcn_norm`` with input self loops kept at weight 0 instead of masked out."""

    def gcn_norm(edge_index, edge_weight=None, num_nodes=None, improved=False, add_self_loops=True,
                 flow="source_to_target", dtype=None):
        if not add_self_loops or num_nodes is None or not _is_plain_edge_index(edge_index):
            return original(edge_index, edge_weight, num_nodes, improved, add_self_loops, flow, dtype)
        import torch

        is_loop = edge_index[0] == edge_index[1]  # [E]
        loops = torch.arange(num_nodes, device=edge_index.device).view(1, -1).repeat(2, 1)  # [2, N]
        if edge_weight is None:
            # PyG: without weights every edge, added loops included, weighs 1.
            weight = torch.ones(edge_index.shape[1], dtype=dtype, device=edge_index.device)  # [E]
            loop_weight = torch.ones(num_nodes, dtype=dtype, device=edge_index.device)  # [N]
        else:
            weight = edge_weight
            # An input loop keeps its own weight (add_remaining_self_loops); others get the fill.
            spare = torch.full((num_nodes + 1,), 2.0 if improved else 1.0, dtype=weight.dtype, device=weight.device)
            slot = torch.where(is_loop, edge_index[0], torch.full_like(edge_index[0], num_nodes))  # [E]
            loop_weight = spare.index_put((slot,), weight)[:num_nodes]  # [N]
        weight = torch.where(is_loop, torch.zeros_like(weight), weight)  # input loops drop out
        return original(torch.cat([edge_index, loops], dim=1), torch.cat([weight, loop_weight]), num_nodes,
                        improved, False, flow, dtype)

    return gcn_norm


@contextlib.contextmanager
def _patched(owner, name: str, replacement) -> Iterator[None]:
    original = vars(owner)[name]
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def pyg_translations() -> Iterator[None]:
    """Swap in the static-shape stand-ins while a model is traced; a no-op unless PyG is imported.

    Patches classes and module globals process-wide for the duration: export is not meant to
    run concurrently with PyG inference in the same process.
    """
    if "torch_geometric" not in sys.modules:  # a model without PyG never pays its 4 s import
        yield
        return
    from torch_geometric.nn.conv import GATConv, GATv2Conv, gcn_conv

    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(GATConv, "forward", _static_loops_forward(GATConv.forward)))
        stack.enter_context(_patched(GATConv, "edge_update", _gat_edge_update(GATConv.edge_update)))
        stack.enter_context(_patched(GATv2Conv, "forward", _static_loops_forward(GATv2Conv.forward)))
        stack.enter_context(_patched(GATv2Conv, "edge_update", _gatv2_edge_update(GATv2Conv.edge_update)))
        original_norm = gcn_conv.gcn_norm
        static_norm = _static_gcn_norm(original_norm)
        for name, module in list(sys.modules.items()):
            # Layers built on GCN's normalisation (GCNConv, APPNP, ARMAConv, ...) import it by name.
            if name.startswith("torch_geometric.nn") and vars(module).get("gcn_norm") is original_norm:
                stack.enter_context(_patched(module, "gcn_norm", static_norm))
        yield
