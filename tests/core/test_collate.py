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
