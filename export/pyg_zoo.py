"""PyTorch Geometric models as users write them, one per stock layer, for ``edgemp export --model``.

Each entry is a two-layer stack of one stock layer in its default configuration, ReLU between,
then a pooling and a linear head: what a PyG tutorial builds. ``edgemp.export.pyg_zoo:<name>`` is a factory
for ``edgemp export --model`` (tests/export/test_pyg_coverage.py, benchmarks/bench_pyg_layers.py).

``CASES`` maps a name to ``Case``; ``exports=False`` marks layers that edgemp refuses (with
a one-line reason), so the matrix records the refusals as well as the successes.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

NODE_FEATURES = 8
EDGE_FEATURES = 4
HIDDEN = 16


def _mlp(a: int, b: int) -> nn.Module:
    return nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b))


@dataclass(frozen=True)
class Case:
    """One row of the coverage matrix.

    Args:
        conv: ``conv(in_channels, out_channels) -> layer``; the layer maps ``[N, in]`` to ``[N, out]``.
        edge: the layer reads ``edge_attr`` (the model then declares ``edge_features``).
        norm: a normalisation layer after each conv (``norm(channels)``).
        pool: a global pooling function ``pool(x, batch, size=...)`` or an Aggregation module maker.
        jk: a ``JumpingKnowledge`` mode over the two layers' outputs.
        exports: False where edgemp refuses the layer; ``refusal`` is a fragment of the one-line reason.
    """

    conv: Callable[[int, int], nn.Module]
    edge: bool = False
    norm: Callable[[int], nn.Module] | None = None
    pool: str = "mean"
    jk: str | None = None
    exports: bool = True
    refusal: str = ""
    kwargs: dict = field(default_factory=dict)


def _pool(name: str, width: int):
    """(callable(x, batch, num_graphs) -> [G, W'], W', the module holding its weights or None)."""
    from torch_geometric import nn as gnn

    if name in ("add", "mean", "max"):
        fn = {"add": gnn.global_add_pool, "mean": gnn.global_mean_pool, "max": gnn.global_max_pool}[name]
        return (lambda x, batch, g: fn(x, batch, size=g)), width, None
    if name == "set2set":
        module = gnn.Set2Set(width, processing_steps=2)
        return (lambda x, batch, g: module(x, batch, dim_size=g)), 2 * width, module
    if name == "attention":
        module = gnn.AttentionalAggregation(nn.Linear(width, 1))
        return (lambda x, batch, g: module(x, batch, dim_size=g)), width, module
    if name == "softmax":
        module = gnn.aggr.SoftmaxAggregation(learn=True)
        return (lambda x, batch, g: module(x, batch, dim_size=g)), width, module
    if name == "sort":
        module = gnn.aggr.SortAggregation(k=4)
        return (lambda x, batch, g: module(x, batch, dim_size=g)), 4 * width, module
    raise ValueError(f"unknown pool {name!r}")


class StockStack(nn.Module):
    """conv → ReLU (→ norm) → conv → ReLU (→ norm) → [JumpingKnowledge] → pool → Linear."""

    node_features = NODE_FEATURES

    def __init__(self, case: Case, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.case = case
        self.edge_features = EDGE_FEATURES if case.edge else 0
        self.convs = nn.ModuleList([case.conv(NODE_FEATURES, hidden), case.conv(hidden, hidden)])
        self.norms = nn.ModuleList([case.norm(hidden) for _ in range(2)]) if case.norm else None
        width = hidden
        self.jk = None
        if case.jk:
            from torch_geometric.nn import JumpingKnowledge

            self.jk = JumpingKnowledge(case.jk, channels=hidden, num_layers=2)
            width = 2 * hidden if case.jk == "cat" else hidden
        self._pool, width, pool_module = _pool(case.pool, width)
        self.pool_module = pool_module  # registered so its weights are saved and exported
        self.head = nn.Linear(width, 1)
        self._norm_takes_batch = bool(self.norms) and "batch" in inspect.signature(self.norms[0].forward).parameters

    def run(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None, node_graph: Tensor, num_graphs) -> Tensor:
        hs = []
        for i, conv in enumerate(self.convs):
            x = (conv(x, edge_index, edge_attr) if self.case.edge else conv(x, edge_index)).relu()  # [N, H]
            if self.norms is not None:
                norm = self.norms[i]
                x = norm(x, node_graph, num_graphs) if self._norm_takes_batch else norm(x)
            hs.append(x)
        if self.jk is not None:
            x = self.jk(hs)
        return self.head(self._pool(x, node_graph, num_graphs))  # [G, 1]


class NodeStack(StockStack):
    def forward(self, x: Tensor, edge_index: Tensor, node_graph: Tensor, num_graphs) -> Tensor:
        return self.run(x, edge_index, None, node_graph, num_graphs)


class EdgeStack(StockStack):
    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, node_graph: Tensor, num_graphs) -> Tensor:
        return self.run(x, edge_index, edge_attr, node_graph, num_graphs)


def _cases() -> dict[str, Case]:
    from torch_geometric import nn as g

    fe = EDGE_FEATURES
    return {
        # Convolutions, default settings.
        "GCNConv": Case(lambda a, b: g.GCNConv(a, b)),
        "GCNConv_improved": Case(lambda a, b: g.GCNConv(a, b, improved=True)),
        "SAGEConv": Case(lambda a, b: g.SAGEConv(a, b)),
        "SAGEConv_max": Case(lambda a, b: g.SAGEConv(a, b, aggr="max")),
        "GraphConv": Case(lambda a, b: g.GraphConv(a, b)),
        "GINConv": Case(lambda a, b: g.GINConv(_mlp(a, b))),
        "GINEConv": Case(lambda a, b: g.GINEConv(_mlp(a, b), edge_dim=fe), edge=True),
        "GATConv": Case(lambda a, b: g.GATConv(a, b)),
        "GATConv_heads4": Case(lambda a, b: g.GATConv(a, b // 4, heads=4)),
        "GATConv_edge_dim": Case(lambda a, b: g.GATConv(a, b, edge_dim=fe), edge=True),
        "GATConv_no_loops": Case(lambda a, b: g.GATConv(a, b, add_self_loops=False)),
        "GATv2Conv": Case(lambda a, b: g.GATv2Conv(a, b)),
        "GATv2Conv_edge_dim": Case(lambda a, b: g.GATv2Conv(a, b, edge_dim=fe), edge=True),
        "TransformerConv": Case(lambda a, b: g.TransformerConv(a, b)),
        "TransformerConv_edge_dim": Case(lambda a, b: g.TransformerConv(a, b, edge_dim=fe), edge=True),
        "NNConv": Case(lambda a, b: g.NNConv(a, b, nn.Sequential(nn.Linear(fe, 16), nn.ReLU(), nn.Linear(16, a * b))),
                       edge=True),
        "EdgeConv": Case(lambda a, b: g.EdgeConv(_mlp(2 * a, b))),
        "ChebConv": Case(lambda a, b: g.ChebConv(a, b, K=2)),
        "ResGatedGraphConv": Case(lambda a, b: g.ResGatedGraphConv(a, b)),
        "GENConv": Case(lambda a, b: g.GENConv(a, b)),
        "LEConv": Case(lambda a, b: g.LEConv(a, b)),
        "TAGConv": Case(lambda a, b: g.TAGConv(a, b)),
        "SGConv": Case(lambda a, b: g.SGConv(a, b)),
        "ARMAConv": Case(lambda a, b: g.ARMAConv(a, b)),
        "GeneralConv": Case(lambda a, b: g.GeneralConv(a, b)),
        "CGConv": Case(lambda a, b: _Project(g.CGConv(b, dim=fe), a, b), edge=True),
        "MFConv": Case(lambda a, b: g.MFConv(a, b)),
        "ClusterGCNConv": Case(lambda a, b: g.ClusterGCNConv(a, b)),
        "FeaStConv": Case(lambda a, b: g.FeaStConv(a, b)),
        "AGNNConv": Case(lambda a, b: _Project(g.AGNNConv(), a, b)),
        "GatedGraphConv": Case(lambda a, b: g.GatedGraphConv(b, num_layers=2)),
        "LGConv": Case(lambda a, b: _Project(g.LGConv(), a, b)),
        "SimpleConv": Case(lambda a, b: _Project(g.SimpleConv(), a, b)),
        "SSGConv": Case(lambda a, b: g.SSGConv(a, b, alpha=0.1)),
        # Pooling, normalisation, JumpingKnowledge (over GCNConv).
        "global_add_pool": Case(lambda a, b: g.GraphConv(a, b), pool="add"),
        "global_max_pool": Case(lambda a, b: g.GraphConv(a, b), pool="max"),
        "Set2Set": Case(lambda a, b: g.GraphConv(a, b), pool="set2set"),
        "AttentionalAggregation": Case(lambda a, b: g.GraphConv(a, b), pool="attention"),
        "SoftmaxAggregation": Case(lambda a, b: g.GraphConv(a, b), pool="softmax"),
        "BatchNorm": Case(lambda a, b: g.GCNConv(a, b), norm=lambda c: g.BatchNorm(c)),
        "GraphNorm": Case(lambda a, b: g.GCNConv(a, b), norm=lambda c: g.GraphNorm(c)),
        "LayerNorm": Case(lambda a, b: g.GCNConv(a, b), norm=lambda c: g.LayerNorm(c)),
        "InstanceNorm": Case(lambda a, b: g.GCNConv(a, b), norm=lambda c: g.InstanceNorm(c)),
        "PairNorm": Case(lambda a, b: g.GCNConv(a, b), norm=lambda c: g.PairNorm()),
        "JumpingKnowledge_cat": Case(lambda a, b: g.GCNConv(a, b), jk="cat"),
        "JumpingKnowledge_max": Case(lambda a, b: g.GCNConv(a, b), jk="max"),
        "JumpingKnowledge_lstm": Case(lambda a, b: g.GCNConv(a, b), jk="lstm"),
        "SortAggregation": Case(lambda a, b: g.GraphConv(a, b), pool="sort"),
    }


class _Project(nn.Module):
    """A width-preserving layer (CGConv, AGNNConv, LGConv, …) after the Linear a user puts before it."""

    def __init__(self, conv: nn.Module, a: int, b: int) -> None:
        super().__init__()
        self.lin = nn.Linear(a, b)
        self.conv = conv

    def forward(self, x: Tensor, edge_index: Tensor, *rest) -> Tensor:
        return self.conv(self.lin(x), edge_index, *rest)


@functools.cache
def cases() -> dict[str, Case]:
    return _cases()


# Rows exported together, one output per row: one export per panel keeps the matrix CI-cheap
# (torch.export's fixed cost dominates a two-layer model) while every row is verified on its own.
PANELS = {
    # Every row here must export with static shapes (no NonZero): PyG's self loops go through
    # edgemp.export.pyg_translations.
    "self_loops": ("GATConv", "GATConv_heads4", "GATConv_edge_dim", "GATv2Conv", "GATv2Conv_edge_dim", "GCNConv",
                   "GCNConv_improved", "TAGConv", "SGConv", "ARMAConv"),
    "message": ("GATConv_no_loops", "TransformerConv", "TransformerConv_edge_dim", "ChebConv", "SAGEConv",
                "SAGEConv_max", "GraphConv", "GINConv", "EdgeConv", "ResGatedGraphConv", "LEConv"),
    "edge_and_gated": ("GINEConv", "NNConv", "CGConv", "GeneralConv", "GENConv", "FeaStConv", "AGNNConv",
                       "GatedGraphConv"),
    "pool_norm_jk": ("global_add_pool", "global_max_pool", "Set2Set", "AttentionalAggregation", "BatchNorm",
                     "GraphNorm", "LayerNorm", "PairNorm", "JumpingKnowledge_cat", "JumpingKnowledge_max"),
}


class Panel(nn.Module):
    """Several zoo models side by side on the same graphs; output ``name`` is row ``name``'s prediction."""

    node_features = NODE_FEATURES

    def __init__(self, names: tuple[str, ...], seed: int = 0) -> None:
        super().__init__()
        self.names = names
        self.models = nn.ModuleDict({n: build(n, seed) for n in names})
        self.edge_features = EDGE_FEATURES if any(m.edge_features for m in self.models.values()) else 0

    def forward(self, x: Tensor, edge_index: Tensor, node_graph: Tensor, num_graphs,
                edge_attr: Tensor | None = None) -> dict:
        return {n: m.run(x, edge_index, edge_attr if m.edge_features else None, node_graph, num_graphs)
                for n, m in self.models.items()}


def panel(name: str) -> Panel:
    return Panel(PANELS[name]).eval()


def build(name: str, seed: int = 0, hidden: int = HIDDEN) -> StockStack:
    """The model for ``name``, with seeded weights, in eval mode (BatchNorm stats randomised)."""
    case = cases()[name]
    torch.manual_seed(seed)
    model = (EdgeStack if case.edge else NodeStack)(case, hidden)
    for module in model.modules():  # trained-looking running statistics, not the identity
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def __getattr__(name: str):
    """``edgemp.export.pyg_zoo:<name>`` as an ``edgemp export --model`` factory."""
    if name.startswith("_"):
        raise AttributeError(name)
    if name in cases():
        return functools.partial(build, name)
    if name.startswith("panel_") and name[len("panel_"):] in PANELS:
        return functools.partial(panel, name[len("panel_"):])
    raise AttributeError(f"pyg_zoo has no model {name!r}")
