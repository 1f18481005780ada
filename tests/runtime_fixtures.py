"""Runtime and server test inputs: the library's handmade models, and random graph mixes.

The models live in :mod:`edgemp.export.handmade_models` (benchmarks use them too); the
graphs come from the library's one generator, :mod:`edgemp.data.synthetic`.
"""
from __future__ import annotations

import numpy as np

from edgemp.data import synthetic
from edgemp.export.handmade_models import (  # noqa: F401  (re-exported for the tests)
    F,
    H,
    ROUNDS,
    build_dense_model,
    build_plain_onnx,
    build_sparse_model,
    make_weights,
    reference_outputs,
)
from edgemp.graph import Graph


def random_graph(rng: np.random.Generator, num_nodes: int, num_edges: int, edge_features: int = 0) -> Graph:
    """A random graph shaped for the handmade models (``F`` node features), with a target."""
    return synthetic.random_graph(rng, num_nodes, num_edges, F, edge_features, with_target=True)


def random_graphs(rng: np.random.Generator, count: int, *, max_nodes: int = 30, edge_features: int = 0) -> list[Graph]:
    """A mix of sizes that always includes a single-node graph and an edgeless graph."""
    out = [random_graph(rng, 1, 0, edge_features), random_graph(rng, 6, 0, edge_features),
           random_graph(rng, 1, 2, edge_features)]  # self loops on a single node
    while len(out) < count:
        nn_ = int(rng.integers(1, max_nodes + 1))
        out.append(random_graph(rng, nn_, int(rng.integers(0, 3 * nn_ + 1)), edge_features))
    order = rng.permutation(len(out))
    return [out[i] for i in order][:count]
