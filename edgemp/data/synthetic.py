"""The one place random graphs come from (numpy only, deterministic per seed).

Two kinds, for two jobs:

- :func:`synthetic_graphs`: a *learnable* graph-regression task, for training smoke tests,
  export checks and benchmarks where rdkit may be absent.
- :func:`random_graph` and what is built on it (:func:`random_sized_graphs`,
  :func:`molecule_like_graphs`, :func:`with_edge_palette`): plain random features and edges
  of a chosen size, for verification, benchmarks and tests that only need a model's inputs.

The task's target is a sum over edges of an interaction between the endpoint node types
(scaled by an edge weight) plus a degree term, so it depends on *which* nodes are
connected: a message-passing model can learn it, a bag of node features cannot.
Sizes are mixed on purpose (isolated nodes, some edge-less graphs) to exercise
batching and padding paths.
"""
from __future__ import annotations

import logging

import numpy as np

from edgemp.errors import EdgempError
from edgemp.graph import Graph

logger = logging.getLogger(__name__)

NUM_NODE_TYPES = 4
NUM_EDGE_KINDS = 2
SYNTH_NODE_FEATURES = NUM_NODE_TYPES + 4  # type one-hot, value, 3 noise channels
SYNTH_EDGE_FEATURES = NUM_EDGE_KINDS + 2  # kind one-hot, weight, noise

# Symmetric type-type interaction: fixed, so the task is the same for every seed.
_INTERACTION = np.array(
    [
        [1.0, -0.5, 0.3, 0.8],
        [-0.5, 0.6, -1.0, 0.2],
        [0.3, -1.0, -0.4, 0.9],
        [0.8, 0.2, 0.9, -0.7],
    ],
    dtype=np.float64,
)
_KIND_SCALE = np.array([1.0, -0.6])
# Rough mean / std of the raw per-node target over the default size range, so y is
# about zero-mean and unit-scale without depending on the sample (fixed constants).
_Y_SHIFT, _Y_SCALE = 0.18, 0.17


def _one_graph(rng: np.random.Generator, n: int, empty: bool) -> Graph:
    types = rng.integers(0, NUM_NODE_TYPES, size=n)
    value = rng.uniform(0.0, 1.0, size=n)
    x = np.zeros((n, SYNTH_NODE_FEATURES), dtype=np.float32)
    x[np.arange(n), types] = 1.0
    x[:, NUM_NODE_TYPES] = value
    x[:, NUM_NODE_TYPES + 1 :] = rng.normal(0.0, 0.5, size=(n, 3))

    pairs = np.zeros((0, 2), dtype=np.int64)
    if not empty:
        m = int(rng.integers(1, 2 * n))  # sparse: average degree below 4, isolated nodes common
        cand = rng.integers(0, n, size=(m, 2))
        cand = cand[cand[:, 0] != cand[:, 1]]
        cand = np.sort(cand, axis=1)
        pairs = np.unique(cand, axis=0).astype(np.int64)
    b = pairs.shape[0]
    kind = rng.integers(0, NUM_EDGE_KINDS, size=b)
    weight = rng.uniform(0.5, 1.5, size=b)
    attr = np.zeros((b, SYNTH_EDGE_FEATURES), dtype=np.float32)
    attr[np.arange(b), kind] = 1.0
    attr[:, NUM_EDGE_KINDS] = weight
    attr[:, NUM_EDGE_KINDS + 1] = rng.normal(0.0, 0.5, size=b)

    src, dst = pairs[:, 0], pairs[:, 1]
    degree = np.bincount(np.concatenate([src, dst]), minlength=n)
    edge_term = np.sum(_INTERACTION[types[src], types[dst]] * weight * _KIND_SCALE[kind])
    degree_term = 0.3 * np.sum(value * np.sqrt(degree))
    raw = (edge_term + degree_term) / n
    y = np.array([(raw - _Y_SHIFT) / _Y_SCALE], dtype=np.float32)

    edge_index = np.concatenate([pairs.T, pairs.T[::-1]], axis=1).astype(np.int64).reshape(2, -1)
    edge_attr = np.concatenate([attr, attr], axis=0).reshape(-1, SYNTH_EDGE_FEATURES)
    return Graph(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y)


def synthetic_graphs(
    num_graphs: int,
    seed: int = 0,
    *,
    min_nodes: int = 5,
    max_nodes: int = 30,
    empty_fraction: float = 0.05,
) -> list[Graph]:
    """``num_graphs`` random graphs with a structural regression target ``y`` [1].

    Node features: one-hot type (4), a value in [0, 1], 3 noise channels (8 total).
    Edge features: one-hot kind (2), a weight in [0.5, 1.5], a noise channel (4 total).
    About ``empty_fraction`` of the graphs (at least one when ``num_graphs >= 2``)
    have no edges at all. Same arguments, same graphs.
    """
    if num_graphs < 1:
        raise EdgempError(f"num_graphs must be at least 1, got {num_graphs}")
    if not 1 <= min_nodes <= max_nodes:
        raise EdgempError(f"need 1 <= min_nodes <= max_nodes, got {min_nodes}..{max_nodes}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise EdgempError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_nodes, max_nodes + 1, size=num_graphs)
    n_empty = int(round(empty_fraction * num_graphs))
    if empty_fraction > 0 and num_graphs >= 2:
        n_empty = max(1, n_empty)
    empty = np.zeros(num_graphs, dtype=bool)
    empty[rng.choice(num_graphs, size=n_empty, replace=False)] = True
    graphs = [_one_graph(rng, int(n), bool(e)) for n, e in zip(sizes, empty)]
    logger.debug("generated %d synthetic graphs (seed %d)", num_graphs, seed)
    return graphs


def random_graph(
    rng: np.random.Generator,
    num_nodes: int,
    num_edges: int,
    node_features: int,
    edge_features: int = 0,
    *,
    edge_nodes: int | None = None,
    with_target: bool = False,
) -> Graph:
    """A graph with ``num_nodes`` nodes and ``num_edges`` random directed edges (features ~ N(0, 1)).

    Edges may repeat and may be self loops, as they can in requests. Edges touch only the
    first ``edge_nodes`` nodes (default: all), so the rest are isolated. ``with_target``
    adds a random ``y`` [1]. Draw order (x, edge_index, edge_attr, y) is fixed: callers'
    seeds keep meaning the same graphs.
    """
    active = num_nodes if edge_nodes is None else edge_nodes
    if num_nodes < 1 or num_edges < 0 or not 0 <= active <= num_nodes or (num_edges and active < 1):
        raise EdgempError(f"cannot draw {num_edges} edges among {active} of {num_nodes} nodes")
    x = rng.standard_normal((num_nodes, node_features)).astype(np.float32)
    edge_index = rng.integers(0, max(active, 1), size=(2, num_edges)).astype(np.int64)
    edge_attr = rng.standard_normal((num_edges, edge_features)).astype(np.float32) if edge_features > 0 else None
    y = rng.standard_normal(1).astype(np.float32) if with_target else None
    return Graph(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y)


def with_edge_palette(rng: np.random.Generator, g: Graph, palette: np.ndarray) -> Graph:
    """``g`` with edge features drawn from the rows of ``palette`` [K, Fe], as bond types are in molecules."""
    if g.edge_attr is None:
        return g
    rows = palette[rng.integers(0, palette.shape[0], g.edge_attr.shape[0])]
    return Graph(x=g.x, edge_index=g.edge_index, edge_attr=rows, y=g.y)


def random_sized_graphs(
    rng: np.random.Generator,
    count: int,
    node_features: int,
    edge_features: int = 0,
    *,
    max_nodes: int = 30,
    edgeless_fraction: float = 0.2,
) -> list[Graph]:
    """``count`` graphs of 1..``max_nodes`` nodes and up to 3 edges per node; about
    ``edgeless_fraction`` of them have no edges (what batching and padding must survive)."""
    out = []
    for _ in range(count):
        n = int(rng.integers(1, max_nodes + 1))
        e = 0 if rng.random() < edgeless_fraction else int(rng.integers(1, 3 * n + 1))
        out.append(random_graph(rng, n, e, node_features, edge_features))
    return out


def molecule_like_graphs(
    count: int, node_features: int, edge_features: int = 0, *, seed: int = 0, max_nodes: int = 35
) -> list[Graph]:
    """QM9/ZINC-sized random graphs: 10..``max_nodes`` nodes, ~2.2 directed edges per node.

    ``max_nodes`` below 10 (a dense model's cap) gives graphs of exactly ``max_nodes`` nodes.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(min(10, max_nodes), max_nodes + 1))
        out.append(random_graph(rng, n, int(2.2 * n), node_features, edge_features))
    return out
