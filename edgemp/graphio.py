"""Graph files: JSONL (one graph per line) and NPZ (a collated batch plus counts).

JSONL line: ``{"x": [[...]], "edge_index": [[src...], [dst...]], "edge_attr": [[...]],
"y": target}``; ``edge_attr`` and ``y`` are optional.
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgemp.errors import EdgempError, GraphValidationError
from edgemp.graph import Graph, check_counts, collate, validate_graph
from edgemp.jsonio import decode_utf8, holds_bool, load_json


def graph_from_json(obj: object, index: int | None = None, may_hold_bools: bool = True) -> Graph:
    """Build a graph from a decoded JSON object, naming the graph in every error.

    ``may_hold_bools=False``: the caller knows its JSON text has no ``true``/``false`` token,
    so the arrays need no scan for them (numpy would read a true among numbers as 1).
    """
    where = f"graph {index}: " if index is not None else ""
    if not isinstance(obj, dict):
        raise GraphValidationError(f"{where}expected a JSON object, got {type(obj).__name__}")
    for key in ("x", "edge_index"):
        if key not in obj:
            raise GraphValidationError(f"{where}missing field {key!r}")
    unknown = set(obj) - {"x", "edge_index", "edge_attr", "y", "id", "featurizer"}
    if unknown:
        raise GraphValidationError(f"{where}unknown field(s) {sorted(unknown)}")
    if may_hold_bools:
        for key in ("x", "edge_index", "edge_attr", "y"):
            if holds_bool(obj.get(key)):
                raise GraphValidationError(f"{where}{key} must hold numbers, not true/false")
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
        fh = path.open("rb")  # decoded line by line, so a bad byte is reported with its line
    except OSError as e:
        raise EdgempError(f"cannot read graph file {path}: {e.strerror}") from e
    with fh:
        index = 0
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            line = decode_utf8(raw, where, GraphValidationError)
            if not line.strip():
                continue
            obj = load_json(line, where, GraphValidationError)
            try:
                yield graph_from_json(obj, index, "true" in line or "false" in line)
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


# The dtype kinds each NPZ array may have: anything else (complex, strings, objects) would be
# cast lossily (complex x loses its imaginary part) or not at all.
_REAL, _INT = ("biuf", "real numbers"), ("iu", "integers")
NPZ_KINDS = {"x": _REAL, "edge_attr": _REAL, "y": _REAL, "edge_index": ("iuf", "integers"),
             "graph_node_counts": _INT, "graph_edge_counts": _INT, "y_sizes": _INT, "y_shapes": _INT}
NPZ_REQUIRED = ("x", "edge_index", "graph_node_counts", "graph_edge_counts")


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of :data:`NPZ_KINDS` that an NPZ graph file holds, read and dtype-checked."""
    try:
        # allow_pickle=False: an NPZ must never execute code.
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise EdgempError(f"cannot read NPZ graph file {path}: {e}") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise EdgempError(f"{path} is a single .npy array, not an NPZ graph file (write one with `edgemp data`)")
    arrays = {}
    with data:
        for key in NPZ_REQUIRED:
            if key not in data:
                raise GraphValidationError(f"{path}: NPZ graph file is missing array {key!r}")
        for key in [k for k in NPZ_KINDS if k in data.files]:  # in a fixed order: the same file, the same error
            try:  # members are read here: a corrupt or truncated one fails now, named
                arrays[key] = data[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise GraphValidationError(f"{path}: array {key!r} cannot be read: {e}") from e
            kinds, expected = NPZ_KINDS[key]
            if arrays[key].dtype.kind not in kinds:
                raise GraphValidationError(f"{path}: array {key!r} has dtype {arrays[key].dtype}; expected {expected}")
    return arrays


def _split_y(arrays: dict[str, np.ndarray], num_graphs: int) -> list[np.ndarray] | None:
    """Per-graph targets from the flat ``y`` and its ``y_sizes`` / ``y_shapes`` (see :func:`write_npz`)."""
    if "y" not in arrays:
        return None
    if "y_sizes" not in arrays or "y_shapes" not in arrays:
        raise GraphValidationError("array 'y' needs 'y_sizes' and 'y_shapes' to split it into graphs")
    flat, sizes, shapes = arrays["y"], arrays["y_sizes"], arrays["y_shapes"]
    if flat.ndim != 1:
        raise GraphValidationError(f"'y' must be one-dimensional, got shape {list(flat.shape)}")
    if sizes.shape != (num_graphs,):
        raise GraphValidationError(
            f"'y_sizes' has shape {list(sizes.shape)}; expected one entry per graph [{num_graphs}]"
        )
    if shapes.ndim != 2 or shapes.shape[0] != num_graphs:
        raise GraphValidationError(
            f"'y_shapes' has shape {list(shapes.shape)}; expected one row per graph [{num_graphs}, rank]"
        )
    check_counts(sizes, flat.size, "y_sizes", "y (values)")
    ys, pos = [], 0
    for i, (size, row) in enumerate(zip(sizes.tolist(), shapes.tolist())):
        dims = [d for d in row if d != -1]  # -1 pads shapes of lower rank
        # each dimension bounded too: [2**64 - 1, 0] holds 0 values but numpy cannot make that shape
        if any(not 0 <= d < 2**31 for d in dims) or row[: len(dims)] != dims or math.prod(dims) != size:
            raise GraphValidationError(f"y_shapes row {i} is {row}, which does not fit y_sizes[{i}] = {size}")
        ys.append(flat[pos : pos + size].reshape(dims))
        pos += size
    return ys


def _npz_graphs(arrays: dict[str, np.ndarray]) -> list[Graph]:
    x, ei, ea = arrays["x"], arrays["edge_index"], arrays.get("edge_attr")
    nc, ec = arrays["graph_node_counts"], arrays["graph_edge_counts"]
    if x.ndim < 1 or ei.ndim != 2 or nc.shape != ec.shape:
        raise GraphValidationError("x, edge_index and the count arrays have inconsistent shapes")
    # bounded before summing (and before any cast): counts from a file must not wrap int64 either
    check_counts(nc, x.shape[0], "graph_node_counts", "x (nodes)", minimum=1)
    check_counts(ec, ei.shape[1], "graph_edge_counts", "edge_index (edges)")
    ys = _split_y(arrays, nc.size)
    graphs = []
    n0 = e0 = 0
    for i, (n, e) in enumerate(zip(nc.tolist(), ec.tolist())):
        g = Graph.from_arrays(
            x[n0 : n0 + n],
            ei[:, e0 : e0 + e] - n0,
            None if ea is None else ea[e0 : e0 + e],
            None if ys is None else ys[i],
        )
        validate_graph(g, i)
        graphs.append(g)
        n0 += n
        e0 += e
    return graphs


def read_npz(path: str | Path) -> list[Graph]:
    path = Path(path)
    arrays = _npz_arrays(path)
    try:
        return _npz_graphs(arrays)
    except GraphValidationError as e:
        raise GraphValidationError(f"{path}: {e}") from e


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
        with p.open("rb") as fh:
            first = next((line for line in fh if line.strip()), b"")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EdgempError(f"cannot read graph file {p}: {e}") from e
    obj = load_json(decode_utf8(first, str(p)), str(p)) if first else {}
    value = obj.get("featurizer", "") if isinstance(obj, dict) else ""
    return value if isinstance(value, str) else ""
