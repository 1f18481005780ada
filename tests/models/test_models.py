"""Model families: batching invariance, dense = sparse, aggregation edge cases, configs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgemp.data.synthetic import SYNTH_EDGE_FEATURES, SYNTH_NODE_FEATURES, synthetic_graphs  # noqa: E402
from edgemp.errors import CheckpointError  # noqa: E402
from edgemp.graph import Graph, collate  # noqa: E402
from edgemp.models.config import (  # noqa: E402
    DENSE_FAMILIES,
    EDGE_FAMILIES,
    FAMILIES,
    SHARED_WEIGHT_FAMILIES,
    ModelConfig,
)
from edgemp.models.graph_ctx import DenseGraph, SparseGraph  # noqa: E402
from edgemp.models.net import GraphNet  # noqa: E402

HIDDEN = 16
ATOL = 1e-5


def _cfg(family: str, task: str = "regression", out_dim: int = 1, **kw) -> ModelConfig:
    return ModelConfig(
        family=family,
        task=task,
        node_features=SYNTH_NODE_FEATURES,
        edge_features=SYNTH_EDGE_FEATURES if family in EDGE_FAMILIES else 0,
        out_dim=out_dim,
        hidden=HIDDEN,
        num_rounds=kw.pop("num_rounds", 3),
        **kw,
    )


def _model(family: str, task: str = "regression", out_dim: int = 1, seed: int = 0, **kw) -> GraphNet:
    torch.manual_seed(seed)
    return GraphNet(_cfg(family, task, out_dim, **kw)).eval()


def _single_node_graph() -> Graph:
    rng = np.random.default_rng(7)
    return Graph(
        x=rng.normal(size=(1, SYNTH_NODE_FEATURES)).astype(np.float32),
        edge_index=np.zeros((2, 0), np.int64),
        edge_attr=np.zeros((0, SYNTH_EDGE_FEATURES), np.float32),
        y=np.array([0.5], np.float32),
    )


@pytest.fixture(scope="module")
def mixed_graphs() -> list[Graph]:
    """Different sizes, at least one edge-less graph, a single-node graph, duplicate edges."""
    graphs = synthetic_graphs(6, seed=3, min_nodes=2, max_nodes=12, empty_fraction=0.2)
    assert any(g.num_edges == 0 for g in graphs)
    dup = graphs[0]
    dup = Graph(  # repeat the first edge: duplicates must count twice everywhere
        x=dup.x,
        edge_index=np.concatenate([dup.edge_index, dup.edge_index[:, :1]], axis=1),
        edge_attr=np.concatenate([dup.edge_attr, dup.edge_attr[:1]], axis=0),
        y=dup.y,
    )
    return [dup] + graphs[1:] + [_single_node_graph()]


def _sparse_forward(model: GraphNet, graphs: list[Graph]) -> torch.Tensor:
    b = collate(graphs)
    with torch.no_grad():
        out = model(
            torch.from_numpy(b.x),
            torch.from_numpy(b.edge_index),
            torch.from_numpy(b.edge_attr) if model.cfg.uses_edge_features else None,
            torch.from_numpy(b.node_graph),
            b.num_graphs,
        )
    return out[model.output_name]


def _dense_inputs(graphs: list[Graph]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m = max(g.num_nodes for g in graphs)
    x = np.zeros((len(graphs), m, graphs[0].x.shape[1]), np.float32)
    adj = np.zeros((len(graphs), m, m), np.float32)
    mask = np.zeros((len(graphs), m), np.float32)
    for i, g in enumerate(graphs):
        x[i, : g.num_nodes] = g.x
        mask[i, : g.num_nodes] = 1.0
        np.add.at(adj[i], (g.edge_index[1], g.edge_index[0]), 1.0)  # adjacency[i, dst, src] = #edges
    return torch.from_numpy(x), torch.from_numpy(adj), torch.from_numpy(mask)


# -- every family ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_forward_equals_per_graph(family, mixed_graphs):
    model = _model(family)
    batched = _sparse_forward(model, mixed_graphs)
    assert batched.shape == (len(mixed_graphs), 1)
    singles = torch.cat([_sparse_forward(model, [g]) for g in mixed_graphs])
    torch.testing.assert_close(batched, singles, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_graph_forward_without_node_graph(family, mixed_graphs):
    model = _model(family)
    g = mixed_graphs[1]
    with torch.no_grad():
        out = model(
            torch.from_numpy(g.x), torch.from_numpy(g.edge_index),
            torch.from_numpy(g.edge_attr) if model.cfg.uses_edge_features else None,
        )[model.output_name]
    torch.testing.assert_close(out, _sparse_forward(model, [g]), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", DENSE_FAMILIES)
@pytest.mark.parametrize("task", ["regression", "node_regression"])
def test_dense_form_equals_sparse(family, task, mixed_graphs):
    model = _model(family, task, out_dim=2)
    sparse = _sparse_forward(model, mixed_graphs)
    x, adj, mask = _dense_inputs(mixed_graphs)
    with torch.no_grad():
        dense = model.forward_dense(x, adj, mask)[model.output_name]
    if task == "regression":
        assert dense.shape == (len(mixed_graphs), 2)
        torch.testing.assert_close(dense, sparse, atol=ATOL, rtol=1e-5)
    else:
        assert dense.shape == (len(mixed_graphs), x.shape[1], 2)
        rows = torch.cat([dense[i, : g.num_nodes] for i, g in enumerate(mixed_graphs)])
        torch.testing.assert_close(rows, sparse, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(DENSE_FAMILIES)))
def test_edge_families_have_no_dense_form(family, mixed_graphs):
    model = _model(family)
    with pytest.raises(ValueError, match="no dense form"):
        model.forward_dense(*_dense_inputs(mixed_graphs))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task,name", [("node_regression", "prediction"), ("node_classification", "logits")])
def test_node_level_outputs(family, task, name, mixed_graphs):
    model = _model(family, task, out_dim=3)
    assert model.output_name == name
    out = _sparse_forward(model, mixed_graphs)
    assert out.shape == (sum(g.num_nodes for g in mixed_graphs), 3)
    assert torch.all(torch.isfinite(out))


@pytest.mark.parametrize("family", FAMILIES)
def test_scatter_impls_agree(family, mixed_graphs):
    model = _model(family)
    a = _sparse_forward(model, mixed_graphs)
    model.set_scatter_impl("scatter")
    b = _sparse_forward(model, mixed_graphs)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="scatter_impl"):
        model.set_scatter_impl("segment")


def test_regression_output_is_denormalised(mixed_graphs):
    plain = _model("gin", seed=1)
    scaled = _model("gin", seed=1, target_mean=(3.0,), target_std=(2.0,))
    torch.testing.assert_close(_sparse_forward(scaled, mixed_graphs), _sparse_forward(plain, mixed_graphs) * 2.0 + 3.0)


@pytest.mark.parametrize("family", SHARED_WEIGHT_FAMILIES)
def test_shared_weight_families_do_not_grow_with_rounds(family):
    counts = {k: sum(p.numel() for p in _model(family, num_rounds=k).parameters()) for k in (1, 3, 7)}
    assert len(set(counts.values())) == 1, counts


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(SHARED_WEIGHT_FAMILIES)))
def test_per_round_families_grow_with_rounds(family):
    n1 = sum(p.numel() for p in _model(family, num_rounds=1).parameters())
    n3 = sum(p.numel() for p in _model(family, num_rounds=3).parameters())
    assert n3 > n1


# -- aggregation through the graph contexts ------------------------------------------


def _sparse_ctx(edges: list[tuple[int, int]], n: int, impl: str = "index_add") -> SparseGraph:
    ei = torch.tensor(edges, dtype=torch.int64).reshape(-1, 2).T.contiguous()  # [2, E]
    return SparseGraph(ei, n, torch.zeros(n, dtype=torch.int64), 1, None, impl)


def _dense_ctx(edges: list[tuple[int, int]], n: int) -> DenseGraph:
    adj = torch.zeros(1, n, n)
    for s, d in edges:
        adj[0, d, s] += 1.0
    return DenseGraph(adj, torch.ones(1, n))


@pytest.mark.parametrize("impl", ["index_add", "scatter"])
def test_sparse_duplicate_targets_are_combined(impl):
    ctx = _sparse_ctx([(0, 3), (1, 3), (2, 3)], 4, impl)
    msg = torch.tensor([[1.0], [2.0], [4.0]])
    assert ctx.aggregate(msg, "sum")[3].item() == 7.0  # summed, not overwritten
    assert ctx.aggregate(msg, "mean")[3].item() == pytest.approx(7.0 / 3.0)
    assert ctx.aggregate(msg, "max")[3].item() == 4.0


@pytest.mark.parametrize("impl", ["index_add", "scatter"])
@pytest.mark.parametrize("aggr", ["sum", "mean", "max"])
def test_sparse_nodes_without_incoming_edges_get_zero(impl, aggr):
    ctx = _sparse_ctx([(0, 1)], 3, impl)
    out = ctx.aggregate(torch.tensor([[-5.0, 2.0]]), aggr)
    assert out.shape == (3, 2)
    assert torch.equal(out[0], torch.zeros(2)) and torch.equal(out[2], torch.zeros(2))
    assert torch.equal(out[1], torch.tensor([-5.0, 2.0]))


@pytest.mark.parametrize("impl", ["index_add", "scatter"])
def test_sparse_max_of_negative_messages_stays_negative(impl):
    ctx = _sparse_ctx([(0, 2), (1, 2)], 3, impl)
    out = ctx.aggregate(torch.tensor([[-1.0], [-3.0]]), "max")
    assert out[2].item() == -1.0


@pytest.mark.parametrize("impl", ["index_add", "scatter"])
def test_aggregate_onto_starts_from_the_node_term(impl):
    # GAT's softmax: one scatter seeded with the node's own term, for nodes with and without in-edges.
    ctx = _sparse_ctx([(0, 2), (1, 2), (0, 1)], 4, impl)
    base = torch.tensor([[-7.0, 1.0], [0.5, -2.0], [-1.0, 3.0], [-4.0, -4.0]])
    msg = torch.tensor([[-3.0, 2.0], [-5.0, 9.0], [1.0, -6.0]])
    assert torch.equal(ctx.aggregate_onto(base, msg, "sum"), base + ctx.aggregate(msg, "sum"))
    expected_max = torch.tensor([[-7.0, 1.0], [1.0, -2.0], [-1.0, 9.0], [-4.0, -4.0]])  # no -inf, no 0 fill
    assert torch.equal(ctx.aggregate_onto(base, msg, "max"), expected_max)
    with pytest.raises(ValueError, match="mean"):
        ctx.aggregate_onto(base, msg, "mean")


@pytest.mark.parametrize("aggr", ["sum", "mean", "max"])
def test_sparse_no_edges(aggr):
    ctx = _sparse_ctx([], 4)
    out = ctx.aggregate(torch.zeros(0, 5), aggr)
    assert out.shape == (4, 5) and torch.equal(out, torch.zeros(4, 5))
    assert torch.equal(ctx.propagate(torch.randn(4, 5), aggr), torch.zeros(4, 5))


def test_sparse_pool_handles_empty_graph_slots():
    # Graph 1 has no nodes in this batch: every readout gives 0, never -inf or NaN.
    ctx = SparseGraph(torch.zeros(2, 0, dtype=torch.int64), 2, torch.tensor([0, 0]), 2)
    h = torch.tensor([[-1.0], [-3.0]])
    assert ctx.pool(h, "sum").tolist() == [[-4.0], [0.0]]
    assert ctx.pool(h, "mean").tolist() == [[-2.0], [0.0]]
    assert ctx.pool(h, "max").tolist() == [[-1.0], [0.0]]


def test_dense_duplicates_negative_max_and_isolated_nodes():
    ctx = _dense_ctx([(0, 2), (1, 2), (1, 2)], 4)  # 1 → 2 twice; nodes 0, 1, 3 receive nothing
    h = torch.tensor([[-1.0], [-3.0], [10.0], [7.0]])  # [G*M, 1] rows, graph-major
    assert ctx.propagate(h, "sum")[:, 0].tolist() == [0.0, 0.0, -7.0, 0.0]
    assert ctx.propagate(h, "mean")[:, 0].tolist() == pytest.approx([0.0, 0.0, -7.0 / 3.0, 0.0])
    assert ctx.propagate(h, "max")[:, 0].tolist() == [0.0, 0.0, -1.0, 0.0]


@pytest.mark.parametrize("aggr", ["sum", "mean", "max"])
def test_dense_matches_sparse_aggregation(aggr):
    edges = [(0, 1), (2, 1), (2, 1), (3, 0), (1, 3)]
    h = torch.randn(5, 3) - 2.0
    sparse = _sparse_ctx(edges, 5).propagate(h, aggr)
    dense = _dense_ctx(edges, 5).propagate(h, aggr)  # one graph: rows [G*M] = [M]
    torch.testing.assert_close(dense, sparse)


def test_dense_padding_never_reaches_the_readout():
    ctx = DenseGraph(torch.zeros(1, 3, 3), torch.tensor([[1.0, 1.0, 0.0]]))
    h = torch.tensor([[-1.0], [-3.0], [100.0]])  # [G*M, 1]; slot 2 is padding
    assert ctx.pool(h, "sum").tolist() == [[-4.0]]
    assert ctx.pool(h, "mean").tolist() == [[-2.0]]
    assert ctx.pool(h, "max").tolist() == [[-1.0]]


# -- configs -------------------------------------------------------------------------


def test_unknown_family_lists_choices():
    with pytest.raises(CheckpointError, match="could not resolve family 'gcnn'") as info:
        _cfg("gcnn")
    for family in FAMILIES:
        assert family in str(info.value)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"family": "gin", "task": "ranking"}, "unknown task"),
        ({"family": "gin", "readout": "median"}, "unknown readout"),
        ({"family": "sage", "aggr": "std"}, "unknown aggregation"),
        ({"family": "gin", "hidden": 0}, "hidden must be >= 1"),
        ({"family": "gat", "hidden": 10, "heads": 4}, "not divisible"),
        ({"family": "gin", "target_mean": (0.0, 1.0)}, "target_mean"),
    ],
)
def test_invalid_model_config(kw, match):
    base = {"task": "regression", "node_features": 4, "edge_features": 0}
    with pytest.raises(CheckpointError, match=match):
        ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("family", EDGE_FAMILIES)
def test_edge_families_need_edge_features(family):
    with pytest.raises(CheckpointError, match="needs edge features"):
        ModelConfig(family=family, task="regression", node_features=4, edge_features=0)


def test_config_round_trips_through_dict():
    cfg = _cfg("mpnn", target_mean=(1.0,), target_std=(2.0,))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CheckpointError, match="unknown field"):
        ModelConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
