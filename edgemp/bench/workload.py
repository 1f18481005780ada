"""What a benchmark feeds: graphs from a file or synthetic size specs, grouped into size buckets.

Graph size drives latency (scatter cost grows with edges, dense cost with the padded
slots), so a run keeps per-bucket statistics next to the aggregate, in one session. The
batches are built once, deterministically, and every backend gets the same sequence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgemp.data.synthetic import random_graph
from edgemp.errors import EdgempError
from edgemp.graph import Graph

# Node-count bins for graphs from a file (molecules sit in the first two).
FILE_BUCKETS: tuple[tuple[int, int], ...] = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 256), (257, 10**9))


@dataclass(frozen=True)
class SyntheticSpec:
    """Random graphs of a fixed (or uniformly drawn) size: ``nodes=25,edges=54,graphs=1``.

    ``graphs`` is the pool of distinct graphs cycled through (1 = the same graph every
    time, the trtexec-style fixed-shape case); ``nodes``/``edges`` take ``A`` or ``A-B``.
    """

    nodes: tuple[int, int] = (25, 25)
    edges: tuple[int, int] = (54, 54)
    graphs: int = 1
    seed: int = 0

    @property
    def label(self) -> str:
        def r(lo: int, hi: int) -> str:
            return str(lo) if lo == hi else f"{lo}-{hi}"

        return f"n{r(*self.nodes)}/e{r(*self.edges)}"

    @classmethod
    def parse(cls, text: str) -> "SyntheticSpec":
        fields_: dict = {}
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("nodes", "edges", "graphs", "seed"):
                raise EdgempError(
                    f"--synthetic takes nodes=N[-M],edges=E[-F],graphs=G[,seed=S]; could not read {part.strip()!r}"
                )
            try:
                if key in ("nodes", "edges"):
                    lo, _, hi = value.partition("-")
                    fields_[key] = (int(lo), int(hi or lo))
                else:
                    fields_[key] = int(value)
            except ValueError as e:
                raise EdgempError(f"--synthetic {key}={value!r} is not an integer (or range A-B)") from e
        spec = cls(**fields_)
        if not 1 <= spec.nodes[0] <= spec.nodes[1]:
            raise EdgempError(f"--synthetic nodes must be >= 1 and low <= high, got {spec.nodes}")
        if not 0 <= spec.edges[0] <= spec.edges[1]:
            raise EdgempError(f"--synthetic edges must be >= 0 and low <= high, got {spec.edges}")
        if spec.graphs < 1:
            raise EdgempError(f"--synthetic graphs must be >= 1, got {spec.graphs}")
        return spec

    def generate(self, node_features: int, edge_features: int) -> list[Graph]:
        rng = np.random.default_rng(self.seed)
        out = []
        for _ in range(self.graphs):
            n = int(rng.integers(self.nodes[0], self.nodes[1] + 1))
            e = int(rng.integers(self.edges[0], self.edges[1] + 1))
            out.append(random_graph(rng, n, e, node_features, edge_features))
        return out


@dataclass
class Bucket:
    """Graphs of similar size, benchmarked as one group."""

    label: str
    graphs: list[Graph]

    @property
    def mean_nodes(self) -> float:
        return float(np.mean([g.num_nodes for g in self.graphs]))

    @property
    def mean_edges(self) -> float:
        return float(np.mean([g.num_edges for g in self.graphs]))


@dataclass(frozen=True)
class WorkloadSpec:
    """``graphs_file`` or one or more synthetic specs (default: one 25-node / 54-edge molecule)."""

    graphs_file: Path | None = None
    synthetic: tuple[SyntheticSpec, ...] = ()

    def describe(self) -> str:
        if self.graphs_file is not None:
            return f"graphs from {self.graphs_file}"
        return "synthetic " + "; ".join(s.label + f" x{s.graphs}" for s in self.synthetic or (SyntheticSpec(),))


def _strip_edge_attr(g: Graph, edge_features: int) -> Graph:
    if edge_features <= 0 and g.edge_attr is not None:
        return Graph(x=g.x, edge_index=g.edge_index, edge_attr=None, y=g.y)
    return g


def build_buckets(spec: WorkloadSpec, node_features: int, edge_features: int) -> list[Bucket]:
    """The size buckets for a run, checked against the model's feature widths."""
    if spec.graphs_file is not None:
        from edgemp.graphio import read_graphs

        graphs = read_graphs(spec.graphs_file)
        if not graphs:
            raise EdgempError(f"graph file {spec.graphs_file} holds no graphs")
        if graphs[0].x.shape[1] != node_features:
            raise EdgempError(
                f"{spec.graphs_file}: graphs have {graphs[0].x.shape[1]} node features but the model expects "
                f"{node_features}"
            )
        if edge_features > 0 and (graphs[0].edge_attr is None or graphs[0].edge_attr.shape[1] != edge_features):
            raise EdgempError(f"{spec.graphs_file}: the model needs {edge_features} edge features per edge")
        graphs = [_strip_edge_attr(g, edge_features) for g in graphs]
        buckets = []
        for lo, hi in FILE_BUCKETS:
            members = [g for g in graphs if lo <= g.num_nodes <= hi]
            if members:
                label = f"n{lo}-{hi}" if hi < 10**9 else f"n{lo}+"
                buckets.append(Bucket(label, members))
        return buckets
    specs = spec.synthetic or (SyntheticSpec(),)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise EdgempError(f"--synthetic specs repeat a size: {labels}")
    return [Bucket(s.label, s.generate(node_features, edge_features)) for s in specs]


@dataclass
class Schedule:
    """The batches every backend runs, in order; ``bucket[i]`` names batch i's size bucket."""

    batches: list[list[Graph]] = field(default_factory=list)
    bucket: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batches)


def make_schedule(buckets: list[Bucket], batch_size: int, distinct: int = 64, seed: int = 0) -> Schedule:
    """Up to ``distinct`` batches per bucket (graphs drawn in turn), buckets taken round-robin.

    Every bucket gets the same share of the samples whatever its pool size, and batches
    never mix buckets, so each sample belongs to exactly one size bucket.
    """
    if batch_size < 1:
        raise EdgempError(f"--batch must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    per_bucket: list[list[list[Graph]]] = []
    for b in buckets:
        order = rng.permutation(len(b.graphs))
        n_batches = max(1, min(distinct, -(-len(b.graphs) // batch_size)))
        batches, pos = [], 0
        for _ in range(n_batches):
            batches.append([b.graphs[order[(pos + k) % len(order)]] for k in range(batch_size)])
            pos += batch_size
        per_bucket.append(batches)
    sched = Schedule(labels=[b.label for b in buckets])
    for j in range(max(len(p) for p in per_bucket)):
        for bi, batches in enumerate(per_bucket):
            sched.batches.append(batches[j % len(batches)])
            sched.bucket.append(bi)
    return sched
