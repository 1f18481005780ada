"""TensorRT optimization profiles from graph sizes, and the matching ORT TensorRT-EP options.

TensorRT builds for ranges of input shapes (min/opt/max per dynamic dim) and rejects
shapes outside them at run time. An edgemp model's dynamic dims are few and named —
``num_nodes``, ``num_edges``, ``num_graphs`` (sparse) or ``num_graphs``, ``max_nodes``
(dense: node slots per graph) — so a profile is three ranges, derived from the graph
sizes a deployment expects, and expanded here into every input's shape. The same
ranges give ORT's TensorRT EP its ``trt_profile_*_shapes`` strings, so an engine built
by ``edgemp engine`` and one built inside ORT cover the same batches.

Pure Python: nothing here needs TensorRT, a GPU, or onnx.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgemp.errors import EdgempError
from edgemp.graph import Graph
from edgemp.spec import ExportedModelSpec

DIMS_BY_FORM = {"sparse": ("num_nodes", "num_edges", "num_graphs"), "dense": ("num_graphs", "max_nodes")}


@dataclass(frozen=True)
class ProfileRange:
    """One dynamic dim's min/opt/max (TensorRT tunes its kernels for ``opt``)."""

    dim: str
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max:
            raise EdgempError(
                f"profile {self.dim}={self.min}:{self.opt}:{self.max} must satisfy 0 <= min <= opt <= max"
            )
        if self.dim != "num_edges" and self.min < 1:
            raise EdgempError(f"profile {self.dim} needs min >= 1 (only num_edges may be 0)")

    def __str__(self) -> str:
        return f"{self.dim}={self.min}:{self.opt}:{self.max}"


def parse_profile(text: str) -> ProfileRange:
    """``"num_nodes=1:32:2048"`` → :class:`ProfileRange`."""
    dim, sep, ranges = text.partition("=")
    parts = ranges.split(":")
    if not sep or len(parts) != 3:
        raise EdgempError(f"--profile must look like DIM=MIN:OPT:MAX (e.g. num_nodes=1:32:2048), got {text!r}")
    try:
        lo, opt, hi = (int(p) for p in parts)
    except ValueError as e:
        raise EdgempError(f"--profile {text!r}: MIN, OPT and MAX must be integers") from e
    return ProfileRange(dim.strip(), lo, opt, hi)


def _sizes(graphs_or_sizes) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(graphs_or_sizes, tuple) and len(graphs_or_sizes) == 2:
        nodes, edges = (np.asarray(a, np.int64) for a in graphs_or_sizes)
    else:
        graphs: Sequence[Graph] = list(graphs_or_sizes)
        nodes = np.array([g.num_nodes for g in graphs], np.int64)
        edges = np.array([g.num_edges for g in graphs], np.int64)
    if nodes.size == 0 or nodes.shape != edges.shape:
        raise EdgempError("profile derivation needs at least one graph size (nodes and edges per graph)")
    return nodes, edges


def derive_profiles(
    graphs_or_sizes: Sequence[Graph] | tuple[Sequence[int], Sequence[int]],
    form: str = "sparse",
    *,
    max_batch_graphs: int = 64,
    opt_batch_graphs: int | None = None,
    max_nodes: int = 0,
) -> tuple[ProfileRange, ...]:
    """Profiles covering batches of 1 to ``max_batch_graphs`` graphs of the given sizes.

    Sparse: ``min`` is one smallest graph; ``opt`` is ``opt_batch_graphs`` graphs of median
    size (rounded half up); ``max`` is ``max_batch_graphs`` of the largest — a bound for any
    batch of that many graphs no bigger than those seen, not just the batches in the file.
    Dense: node slots follow :func:`edgemp.dense_layout.pad_size` (a batch is padded to the
    power of two above its largest graph, capped at ``max_nodes``); ``opt`` uses the
    largest graph expected in a batch of ``opt_batch_graphs``.
    ``opt_batch_graphs`` defaults to ``max_batch_graphs``: under load the dynamic batcher
    fills batches, and that is where the time goes.

    ``graphs_or_sizes``: graphs, or a ``(node_counts, edge_counts)`` pair.
    """
    if form not in DIMS_BY_FORM:
        raise EdgempError(f"unknown form {form!r}; expected one of {list(DIMS_BY_FORM)}")
    if max_batch_graphs < 1:
        raise EdgempError(f"max_batch_graphs must be >= 1, got {max_batch_graphs}")
    opt_b = max_batch_graphs if opt_batch_graphs is None else opt_batch_graphs
    if not 1 <= opt_b <= max_batch_graphs:
        raise EdgempError(f"opt_batch_graphs must be in 1..{max_batch_graphs}, got {opt_b}")
    nodes, edges = _sizes(graphs_or_sizes)
    graphs_range = ProfileRange("num_graphs", 1, opt_b, max_batch_graphs)
    if form == "dense":
        from edgemp.dense_layout import pad_size

        if max_nodes < 1:
            raise EdgempError("dense profiles need the model's max_nodes")
        if int(nodes.max()) > max_nodes:
            raise EdgempError(f"a graph has {int(nodes.max())} nodes but this dense model takes at most {max_nodes}")
        typical_largest = float(np.quantile(nodes, 1.0 - 1.0 / (opt_b + 1)))
        slots = ProfileRange(
            "max_nodes",
            pad_size(int(nodes.min()), max_nodes),
            pad_size(int(np.ceil(typical_largest)), max_nodes),
            pad_size(int(nodes.max()), max_nodes),
        )
        return (graphs_range, slots)

    def rng(dim: str, counts: np.ndarray) -> ProfileRange:
        lo, hi = int(counts.min()), int(counts.max()) * max_batch_graphs
        opt = int(np.floor(float(np.median(counts)) * opt_b + 0.5))
        return ProfileRange(dim, lo, min(max(opt, lo), hi), hi)

    return (rng("num_nodes", nodes), rng("num_edges", edges), graphs_range)


def merge_profiles(
    derived: Iterable[ProfileRange], overrides: Iterable[ProfileRange], form: str
) -> tuple[ProfileRange, ...]:
    """``derived`` with user ``--profile`` ranges replacing the same dims; all dims required."""
    dims = DIMS_BY_FORM[form]
    by_dim = {p.dim: p for p in derived}
    for p in overrides:
        if p.dim not in dims:
            raise EdgempError(f"--profile dim {p.dim!r} is not a dim of a {form} model; expected one of {list(dims)}")
        by_dim[p.dim] = p
    missing = [d for d in dims if d not in by_dim]
    if missing:
        raise EdgempError(
            f"no range for {missing}: give --profile {missing[0]}=MIN:OPT:MAX or --profile-from GRAPHS.jsonl"
        )
    return tuple(by_dim[d] for d in dims)


Shape = tuple[int, ...]


def input_shapes(spec: ExportedModelSpec, profiles: Sequence[ProfileRange]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Every model input's ``(min, opt, max)`` shape, in ``spec.input_names`` order."""
    by_dim = {p.dim: p for p in profiles}
    missing = [d for d in DIMS_BY_FORM[spec.form] if d not in by_dim]
    if missing:
        raise EdgempError(f"profiles lack dim(s) {missing} for a {spec.form} model")
    f, fe = spec.model.node_features, spec.model.edge_features
    if spec.form == "dense":
        layout = {
            "x": ("num_graphs", "max_nodes", f),
            "adjacency": ("num_graphs", "max_nodes", "max_nodes"),
            "node_mask": ("num_graphs", "max_nodes"),
        }
    else:
        layout = {
            "x": ("num_nodes", f),
            "edge_index": (2, "num_edges"),
            "edge_attr": ("num_edges", fe),
            "node_graph": ("num_nodes",),
            "graph_node_counts": ("num_graphs",),
        }
    out = {}
    for name in spec.input_names:
        if name not in layout:
            raise EdgempError(f"input {name!r} is not part of the edgemp {spec.form} contract; re-export the model")
        dims = layout[name]
        out[name] = tuple(
            tuple(d if isinstance(d, int) else getattr(by_dim[d], which) for d in dims)
            for which in ("min", "opt", "max")
        )
    return out


def _shape_string(shapes: dict[str, tuple[Shape, Shape, Shape]], which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in s[which])}" for name, s in shapes.items())


def ort_tensorrt_options(
    spec: ExportedModelSpec,
    profiles: Sequence[ProfileRange],
    *,
    fp16: bool = False,
    int8: bool | None = None,
    engine_cache_dir: str | Path | None = None,
    timing_cache_dir: str | Path | None = None,
    max_workspace_bytes: int | None = None,
) -> dict[str, str]:
    """ONNX Runtime TensorRT-EP provider options for ``spec`` over ``profiles``.

    Pass as ``providers=[("TensorrtExecutionProvider", opts), "CUDAExecutionProvider", ...]``.
    ``int8`` expects a QDQ model (``edgemp quantize --precision int8-static``): ORT uses its
    scales, so no calibration table is set; by default it is on exactly for such models.
    The timing cache is enabled only with a directory (ORT would otherwise write it to the
    working directory). The engine cache is reused only when the same
    profile strings are passed again (ORT docs), so keep this dict with the cache.
    Values are strings, the form ORT's option parser documents.
    """
    shapes = input_shapes(spec, profiles)
    if int8 is None:
        int8 = spec.precision == "int8-static"
    opts = {
        "trt_profile_min_shapes": _shape_string(shapes, 0),
        "trt_profile_opt_shapes": _shape_string(shapes, 1),
        "trt_profile_max_shapes": _shape_string(shapes, 2),
        "trt_fp16_enable": str(bool(fp16)),
        "trt_int8_enable": str(bool(int8)),
        "trt_engine_cache_enable": str(engine_cache_dir is not None),
        "trt_timing_cache_enable": str(timing_cache_dir is not None),
    }
    if engine_cache_dir is not None:
        opts["trt_engine_cache_path"] = str(engine_cache_dir)
    if timing_cache_dir is not None:
        opts["trt_timing_cache_path"] = str(timing_cache_dir)
    if max_workspace_bytes is not None:
        opts["trt_max_workspace_size"] = str(int(max_workspace_bytes))
    return opts
