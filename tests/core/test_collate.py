"""collate / split: the one-graph fast path gives exactly what the general path gives."""
from __future__ import annotations

import numpy as np
import pytest

from edgemp.data.synthetic import random_graph
from edgemp.errors import GraphValidationError
from edgemp.graph import Graph, collate, split


def _graph(rng, n: int, e: int, fe: int = 3) -> Graph:
    g = random_graph(rng, n, e, 5, fe)
    return Graph(x=g.x, edge_index=g.edge_index, edge_attr=g.edge_attr, y=np.array([float(n)], np.float32))


def test_one_graph_batch_equals_its_part_of_a_general_batch():
    rng = np.random.default_rng(3)
    g, other = _graph(rng, 7, 12), _graph(rng, 4, 5)
    one, two = collate([g]), collate([g, other])  # two graphs: the general (concatenating) path
    assert one.num_graphs == 1 and one.num_nodes == 7 and one.num_edges == 12
    np.testing.assert_array_equal(one.x, two.x[:7])
    np.testing.assert_array_equal(one.edge_index, two.edge_index[:, :12])
    np.testing.assert_array_equal(one.edge_attr, two.edge_attr[:12])
    np.testing.assert_array_equal(one.node_graph, two.node_graph[:7])
    assert one.graph_node_counts.tolist() == [7] and one.graph_edge_counts.tolist() == [12]
    assert one.edge_index.dtype == np.int64 and one.node_graph.dtype == np.int64
    assert one.y[0].tolist() == [7.0]
    for name, value in one.tensors().items():
        assert value.flags.c_contiguous, name


def test_one_graph_views_and_narrow_ints_are_normalised():
    rng = np.random.default_rng(4)
    wide = rng.standard_normal((6, 10)).astype(np.float32)
    g = Graph(x=wide[:, ::2], edge_index=np.array([[0, 1], [1, 2]], np.int32))  # strided view, int32 edges
    b = collate([g])
    assert b.x.flags.c_contiguous and b.edge_index.dtype == np.int64 and b.edge_attr is None
    np.testing.assert_array_equal(b.x, wide[:, ::2])


def test_edgeless_graph_keeps_an_empty_edge_attr_of_its_width():
    g = Graph(x=np.ones((2, 5), np.float32), edge_index=np.zeros((2, 0), np.int64), edge_attr=np.zeros((0, 0)))
    assert collate([g]).edge_attr.shape == (0, 0)  # as the general path does for [0, 0] (JSON "[]")
    g3 = Graph(x=g.x, edge_index=g.edge_index, edge_attr=np.zeros((0, 3), np.float32))
    assert collate([g3]).edge_attr.shape == (0, 3) and collate([g3]).edge_attr.dtype == np.float32


def test_split_one_graph_node_and_graph_outputs_and_row_checks():
    rng = np.random.default_rng(5)
    b = collate([_graph(rng, 4, 3)])
    out = split({"p": np.ones((1, 2)), "n": np.arange(8.0).reshape(4, 2)}, b, {"p": "graph", "n": "node"})
    assert len(out) == 1 and out[0]["p"].tolist() == [1.0, 1.0] and out[0]["n"].shape == (4, 2)
    with pytest.raises(GraphValidationError, match="3 rows for 4 nodes"):
        split({"n": np.zeros((3, 2))}, b, {"n": "node"})
    with pytest.raises(GraphValidationError, match="2 rows for 1 graphs"):
        split({"p": np.zeros((2, 1))}, b, {"p": "graph"})


# -- collate_valid: one batch-wide check, the same answers and the same errors as graph by graph --
def _one_by_one(graphs, **kw):
    from edgemp.graph import validate_graph

    for i, g in enumerate(graphs):
        validate_graph(g, i, **kw)
    return collate(graphs)


def _assert_same_batch(a, b):
    for name in ("x", "edge_index", "node_graph", "graph_node_counts", "graph_edge_counts"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    assert (a.edge_attr is None) == (b.edge_attr is None)
    if a.edge_attr is not None:
        np.testing.assert_array_equal(a.edge_attr, b.edge_attr)


@pytest.mark.parametrize("fe", [0, 3])
def test_collate_valid_equals_validate_then_collate(fe):
    from edgemp.graph import collate_valid

    rng = np.random.default_rng(6)
    graphs = [random_graph(rng, int(n), int(e), 5, fe) for n, e in zip(rng.integers(1, 30, 20), rng.integers(0, 60, 20))]
    graphs.append(Graph(x=np.ones((1, 5), np.float32), edge_index=np.zeros((2, 0), np.int64),
                        edge_attr=np.zeros((0, fe), np.float32) if fe else None))  # edgeless, one node
    _assert_same_batch(collate_valid(graphs, node_features=5, edge_features=fe), _one_by_one(graphs))
    _assert_same_batch(collate_valid(graphs), _one_by_one(graphs))  # no model widths given


def _bad_cases(rng):
    """(graph, edge_features) pairs that validate_graph rejects, one per check it makes."""
    good = random_graph(rng, 4, 5, 5, 3)
    x, ei, ea = good.x, good.edge_index, good.edge_attr
    return [
        Graph(x=x.astype(np.float64), edge_index=ei, edge_attr=ea),
        Graph(x=x[:, :4], edge_index=ei, edge_attr=ea),
        Graph(x=x.reshape(-1), edge_index=ei, edge_attr=ea),
        Graph(x=x[:0], edge_index=np.zeros((2, 0), np.int64), edge_attr=ea[:0]),
        Graph(x=np.where(np.arange(20).reshape(4, 5) == 7, np.inf, x).astype(np.float32), edge_index=ei, edge_attr=ea),
        Graph(x=x, edge_index=ei.astype(np.int32), edge_attr=ea),
        Graph(x=x, edge_index=ei.T.copy(), edge_attr=ea),
        Graph(x=x, edge_index=np.where(ei == ei[1, 2], -1, ei), edge_attr=ea),
        Graph(x=x, edge_index=np.where(ei == ei[0, 3], 4, ei), edge_attr=ea),
        Graph(x=x, edge_index=ei, edge_attr=None),
        Graph(x=x, edge_index=ei, edge_attr=ea[:4]),
        Graph(x=x, edge_index=ei, edge_attr=ea[:, :2]),
        Graph(x=x, edge_index=ei, edge_attr=ea.astype(np.float64)),
        Graph(x=x, edge_index=ei, edge_attr=np.full_like(ea, np.nan)),
        Graph(x=x, edge_index=ei, edge_attr=ea.tolist()),
    ]


def test_collate_valid_raises_what_the_first_bad_graph_gives():
    from edgemp.graph import collate_valid

    rng = np.random.default_rng(7)
    for bad in _bad_cases(rng):
        for where in (0, 3, 8):
            graphs = [random_graph(rng, 6, 9, 5, 3) for _ in range(10)]
            graphs[where] = bad
            graphs[-1] = Graph(x=graphs[-1].x[:, :2], edge_index=graphs[-1].edge_index)  # a later bad graph too
            with pytest.raises(GraphValidationError) as one_by_one:
                _one_by_one(graphs, node_features=5, edge_features=3)
            with pytest.raises(GraphValidationError) as batched:
                collate_valid(graphs, node_features=5, edge_features=3)
            assert str(batched.value) == str(one_by_one.value)
            assert str(batched.value).startswith(f"graph {where}:")


def test_collate_valid_dense_limit():
    from edgemp.graph import collate_valid

    rng = np.random.default_rng(8)
    graphs = [random_graph(rng, 5, 4, 5), random_graph(rng, 9, 4, 5), random_graph(rng, 12, 4, 5)]
    with pytest.raises(GraphValidationError, match="graph 2: has 12 nodes but this dense model takes at most 10"):
        collate_valid(graphs, node_features=5, edge_features=0, max_nodes=10)


def test_batch_slice_dicts_equal_per_graph_access():
    from edgemp.runtime.batch_outputs import BatchSlice

    rng = np.random.default_rng(9)
    b = collate([_graph(rng, n, 3) for n in (3, 1, 5, 2)])
    outputs = {"p": rng.standard_normal((4, 2)), "n": rng.standard_normal((11, 3))}
    s = BatchSlice.of(outputs, b, {"p": "graph", "n": "node"})
    for part in (s, s[1:3], s[2:2]):
        assert part == part.dicts() and len(part.dicts()) == len(part)
    assert all(np.shares_memory(d["n"], outputs["n"]) for d in s.dicts())


def test_arrays_of_numbers_of_any_numeric_kind_are_graphs_and_text_is_not():
    """A one-hot built as ``types[:, None] == np.arange(k)`` is a bool array: it is 1.0/0.0, as it
    always was. An object array of numbers (a mixed pandas frame) converts; text never does."""
    from edgemp.errors import GraphValidationError
    from edgemp.graph import Graph

    types = np.array([0, 2, 1])
    one_hot = types[:, None] == np.arange(3)
    edges = np.array([[0, 1], [1, 2]])
    g = Graph.from_arrays(one_hot, edges, y=np.array([True]))
    assert g.x.dtype == np.float32 and g.x.tolist() == one_hot.astype(np.float32).tolist() and g.y.tolist() == [1.0]
    assert Graph.from_arrays(np.array([[1.5, 2], [0, 1], [3, 4]], dtype=object), edges).x[0, 0] == 1.5
    for text in ([["1.5", "2"], ["0", "1"], ["3", "4"]], np.array([[1.5, "a"]], dtype=object)):
        with pytest.raises(GraphValidationError, match="expected numbers"):
            Graph.from_arrays(text, edges)
