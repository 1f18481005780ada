"""Graph files: JSONL (one graph per line) and NPZ (a collated batch plus counts).

JSONL line: ``{"x": [[...]], "edge_index": [[src...], [dst...]], "edge_attr": [[...]],
"y": target}``; ``edge_attr`` and ``y`` are optional.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgemp.errors import EdgempError, GraphValidationError
from edgemp.graph import Graph, check_counts, collate, validate_graph


def graph_from_json(obj: object, index: int | None = None) -> Graph:
    """Build a graph from a decoded JSON object, naming the graph in every error."""
    where = f"graph {index}: " if index is not None else ""
    if not isinstance(obj, dict):
        raise GraphValidationError(f"{where}expected a JSON object, got {type(obj).__name__}")
    for key in ("x", "edge_index"):
        if key not in obj:
            raise GraphValidationError(f"{where}missing field {key!r}")
    unknown = set(obj) - {"x", "edge_index", "edge_attr", "y", "id", "featurizer"}
    if unknown:
        raise GraphValidationError(f"{where}unknown field(s) {sorted(unknown)}")
    try:
        g = Graph.from_arrays(obj["x"], obj["edge_index"], obj.get("edge_attr"), obj.get("y"))
    except GraphValidationError as e:
        raise GraphValidationError(f"{where}{e}") from e
    validate_graph(g, index)
    return g


def graph_to_json(g: Graph) -> dict:
    d: dict = {"x": g.x.tolist(), "edge_index": g.edge_index.tolist()}
    if g.edge_attr is not None:
        d["edge_attr"] = g.edge_attr.tolist()
    if g.y is not None:
        d["y"] = g.y.tolist()
    return d


def iter_jsonl(path: str | Path) -> Iterator[Graph]:
    path = Path(path)
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as e:
        raise EdgempError(f"cannot read graph file {path}: {e.strerror}") from e
    with fh:
        index = 0
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise GraphValidationError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
            try:
                yield graph_from_json(obj, index)
            except GraphValidationError as e:
                raise GraphValidationError(f"{path}:{lineno}: {e}") from e
            index += 1


def write_jsonl(graphs: Iterable[Graph], path: str | Path, featurizer: str = "") -> int:
    """One graph per line; ``featurizer`` (edgemp.chem ``NAME/VERSION``) is stamped on every line."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for g in graphs:
            d = graph_to_json(g)
            if featurizer:
                d["featurizer"] = featurizer
            fh.write(json.dumps(d, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_npz(graphs: list[Graph], path: str | Path, featurizer: str = "") -> None:
    """Store graphs as one collated batch plus per-graph node/edge counts."""
    b = collate(graphs)
    arrays = {
        "x": b.x,
        "edge_index": b.edge_index,
        "graph_node_counts": b.graph_node_counts,
        "graph_edge_counts": b.graph_edge_counts,
    }
    if b.edge_attr is not None:
        arrays["edge_attr"] = b.edge_attr
    if b.y is not None and all(y is not None for y in b.y):
        ys = [np.asarray(y, np.float32) for y in b.y]
        arrays["y"] = np.concatenate([y.reshape(-1) for y in ys])
        arrays["y_sizes"] = np.array([y.size for y in ys], np.int64)
        arrays["y_shapes"] = np.array([list(y.shape) + [-1] * (2 - y.ndim) for y in ys], np.int64)
    if featurizer:
        arrays["featurizer"] = np.array(featurizer)  # a unicode scalar: readable with allow_pickle=False
    np.savez(path, **arrays)


def read_npz(path: str | Path) -> list[Graph]:
    path = Path(path)
    try:
        # allow_pickle=False: an NPZ must never execute code.
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgempError(f"cannot read NPZ graph file {path}: {e}") from e
    with data:
        for key in ("x", "edge_index", "graph_node_counts", "graph_edge_counts"):
            if key not in data:
                raise GraphValidationError(f"{path}: NPZ graph file is missing array {key!r}")
        x, ei = data["x"], data["edge_index"]
        nc, ec = data["graph_node_counts"].astype(np.int64), data["graph_edge_counts"].astype(np.int64)
        ea = data["edge_attr"] if "edge_attr" in data else None
        if x.ndim < 1 or ei.ndim != 2 or nc.shape != ec.shape:
            raise GraphValidationError(f"{path}: x, edge_index and the count arrays have inconsistent shapes")
        try:  # bounded before summing: counts from a file must not wrap int64 either
            check_counts(nc, x.shape[0], "graph_node_counts", "x (nodes)", minimum=1)
            check_counts(ec, ei.shape[1], "graph_edge_counts", "edge_index (edges)")
        except GraphValidationError as e:
            raise GraphValidationError(f"{path}: {e}") from e
        ys = None
        if "y" in data:
            flat, sizes, shapes = data["y"], data["y_sizes"], data["y_shapes"]
            ys, pos = [], 0
            for size, shape in zip(sizes, shapes):
                shp = tuple(int(s) for s in shape if s >= 0)
                ys.append(flat[pos : pos + size].reshape(shp))
                pos += int(size)
        graphs = []
        n0 = e0 = 0
        for i, (n, e) in enumerate(zip(nc, ec)):
            g = Graph.from_arrays(
                x[n0 : n0 + n],
                ei[:, e0 : e0 + e] - n0,
                None if ea is None else ea[e0 : e0 + e],
                None if ys is None else ys[i],
            )
            validate_graph(g, i)
            graphs.append(g)
            n0 += int(n)
            e0 += int(e)
        return graphs


def read_graphs(path: str | Path) -> list[Graph]:
    """Read a ``.jsonl`` or ``.npz`` graph file."""
    p = Path(path)
    if not p.exists():
        raise EdgempError(f"graph file {p} does not exist")
    if p.suffix == ".npz":
        return read_npz(p)
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        return list(iter_jsonl(p))
    raise EdgempError(f"{p}: unknown graph file type {p.suffix!r}; expected .jsonl or .npz")


def write_graphs(graphs: list[Graph], path: str | Path, featurizer: str = "") -> None:
    """Write graphs; ``featurizer`` records which molecule featurizer made them (see :func:`read_featurizer`)."""
    p = Path(path)
    if p.suffix == ".npz":
        write_npz(graphs, p, featurizer)
    else:
        write_jsonl(graphs, p, featurizer)


def read_featurizer(path: str | Path) -> str:
    """The featurizer a graph file records (``""`` if none), so a model trained on it can say how to
    featurize new molecules. Reads only the first graph of a JSONL file."""
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                return str(data["featurizer"]) if "featurizer" in data else ""
        with p.open("r", encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        obj = json.loads(first) if first else {}
    except (OSError, ValueError) as e:
        raise EdgempError(f"cannot read graph file {p}: {e}") from e
    value = obj.get("featurizer", "") if isinstance(obj, dict) else ""
    return value if isinstance(value, str) else ""
