"""Model.run_one, the lone request's shortcut: the same outputs as validate → collate → run →
split for every graph it takes, and None (so the general path answers, with its error) for
every graph that path would refuse or treat otherwise."""
from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import F, build_dense_model, build_sparse_model, random_graph, random_graphs

import edgemp.runtime as rt
from edgemp.errors import GraphValidationError
from edgemp.graph import Graph, collate
from edgemp.runtime import Batcher, BatcherConfig

EF = 3


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, rt.Model]:
    root = tmp_path_factory.mktemp("run_one")
    return {
        "plain": rt.load(build_sparse_model(root / "plain.onnx"), providers="cpu"),
        "edges": rt.load(build_sparse_model(root / "edges.onnx", edge_features=EF, seed=1), providers="cpu"),
        "graph_only": rt.load(build_sparse_model(root / "graph_only.onnx", node_output=False, seed=2),
                              providers="cpu"),
        "dense": rt.load(build_dense_model(root / "dense.onnx", max_nodes=32), providers="cpu"),
    }


def general(model: rt.Model, g: Graph) -> list[dict[str, np.ndarray]]:
    checked = model.validate([g])
    batch = collate(checked)
    return model.split(model.run_batch(batch), batch).dicts()


@pytest.mark.parametrize("name", ["plain", "edges", "graph_only"])
def test_run_one_equals_the_general_path(models, name):
    model = models[name]
    ef = EF if name == "edges" else 0
    rng = np.random.default_rng(5)
    graphs = random_graphs(rng, 40, edge_features=ef)  # includes a one-node and an edgeless graph
    assert any(g.num_edges == 0 for g in graphs) and any(g.num_nodes == 1 for g in graphs)
    for g in graphs:
        got = model.run_one(g)
        assert got is not None, g
        want = general(model, g)
        assert len(got) == 1 and got[0].keys() == want[0].keys()
        for key in want[0]:
            assert np.array_equal(got[0][key], want[0][key])  # the same feeds: the same bits
        assert set(got.tensors(list(want[0]))) == set(want[0])


def _broken(rng: np.random.Generator) -> dict[str, Graph]:
    g = random_graph(rng, 6, 9, EF)
    nan_x = g.x.copy()
    nan_x[2, 1] = np.nan
    inf_ea = g.edge_attr.copy()
    inf_ea[0, 0] = np.inf
    far = g.edge_index.copy()
    far[1, 3] = 6
    negative = g.edge_index.copy()
    negative[0, 0] = -1
    return {
        "nan in x": Graph(x=nan_x, edge_index=g.edge_index, edge_attr=g.edge_attr),
        "inf in edge_attr": Graph(x=g.x, edge_index=g.edge_index, edge_attr=inf_ea),
        "node index past the graph": Graph(x=g.x, edge_index=far, edge_attr=g.edge_attr),
        "negative node index": Graph(x=g.x, edge_index=negative, edge_attr=g.edge_attr),
        "no nodes": Graph(x=np.zeros((0, F), np.float32), edge_index=np.zeros((2, 0), np.int64),
                          edge_attr=np.zeros((0, EF), np.float32)),
        "float64 x": Graph(x=g.x.astype(np.float64), edge_index=g.edge_index, edge_attr=g.edge_attr),
        "int32 edge_index": Graph(x=g.x, edge_index=g.edge_index.astype(np.int32), edge_attr=g.edge_attr),
        "x too wide": Graph(x=np.zeros((6, F + 1), np.float32), edge_index=g.edge_index, edge_attr=g.edge_attr),
        "edge_index of rank 1": Graph(x=g.x, edge_index=g.edge_index[0].copy(), edge_attr=g.edge_attr),
        "edge_attr rows short": Graph(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr[:-1].copy()),
        "edge_attr missing": Graph(x=g.x, edge_index=g.edge_index),
        "edge_attr too wide": Graph(x=g.x, edge_index=g.edge_index,
                                    edge_attr=np.zeros((9, EF + 1), np.float32)),
    }


def test_run_one_declines_what_the_general_path_refuses(models):
    """Each malformed graph: run_one gives None, and the batcher's lone run raises the same
    error validate raises, counted as invalid."""
    model = models["edges"]
    cases = _broken(np.random.default_rng(6))
    with Batcher(model, BatcherConfig()) as batcher:
        for what, g in cases.items():
            assert model.run_one(g) is None, what
            with pytest.raises(GraphValidationError) as direct:
                model.validate([g])
            with pytest.raises(GraphValidationError) as lone:
                batcher.run_now([g])
            assert str(lone.value) == str(direct.value), what
        assert batcher.stats().invalid == len(cases) and batcher.stats().succeeded == 0


def test_run_one_declines_what_it_would_feed_otherwise(models):
    """Inputs the general path conforms (an edgeless graph's edge_attr of another shape, a
    non-contiguous array) or other forms: None, and the general path still answers."""
    rng = np.random.default_rng(7)
    g = random_graph(rng, 5, 0, EF)
    odd = Graph(x=g.x, edge_index=g.edge_index, edge_attr=np.zeros((0, 0), np.float32))  # JSON's "[]"
    strided = Graph(x=np.asfortranarray(random_graph(rng, 5, 4, EF).x), edge_index=np.zeros((2, 0), np.int64),
                    edge_attr=np.zeros((0, EF), np.float32))
    for graph in (odd, strided):
        assert models["edges"].run_one(graph) is None
        with Batcher(models["edges"], BatcherConfig()) as batcher:
            got, _ = batcher.run_now([graph])
        want = general(models["edges"], graph)
        assert all(np.array_equal(got[0][k], want[0][k]) for k in want[0])
    dense_graph = random_graph(rng, 7, 10)
    assert models["dense"].run_one(dense_graph) is None  # padded dense inputs: the general path
    with Batcher(models["dense"], BatcherConfig()) as batcher:
        got, timing = batcher.run_now([dense_graph])
    assert all(np.allclose(got[0][k], v) for k, v in models["dense"].predict([dense_graph])[0].items())
    ignored = Graph(x=g.x, edge_index=random_graph(rng, 5, 4).edge_index, edge_attr=np.full((4, 2), np.nan, np.float32))
    got = models["plain"].run_one(ignored)  # a model without edge features ignores edge_attr, as validate does
    want = general(models["plain"], ignored)
    assert got is not None and all(np.array_equal(got[0][k], want[0][k]) for k in want[0])


def test_a_lone_run_counts_as_one_batch(models):
    model = models["plain"]
    g = random_graph(np.random.default_rng(8), 11, 20)
    batches: list = []
    with Batcher(model, BatcherConfig(), on_batch=lambda n, nodes, ns: batches.append((n, nodes))) as batcher:
        got, timing = batcher.run_now([g])
        stats = batcher.stats()
    assert batches == [(1, 11)] and timing.batch_graphs == 1 and timing.batch_nodes == 11 and timing.compute_ns > 0
    assert stats.succeeded == 1 and stats.batches == 1
    assert all(np.array_equal(got[0][k], v) for k, v in general(model, g)[0].items())
