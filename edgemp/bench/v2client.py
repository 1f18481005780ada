"""A small KServe V2 client for benchmarking: model metadata, pre-encoded requests, stats.

Requests are encoded once, before timing (the JSON encoder costs more than an edgemp
inference), in the edgemp sparse tensor layout the metadata announces: ``x``,
``edge_index``, optional ``edge_attr``, ``node_graph``, ``graph_node_counts``. Works
against any V2 server that speaks this layout (edgemp serve, Triton with an edgemp model).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

import numpy as np

from edgemp import ragged_layout as ragged
from edgemp.errors import EdgempError
from edgemp.graph import Graph, collate
from edgemp.ragged_layout import WIDTH_PARAMETERS

logger = logging.getLogger(__name__)

V2_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
HEADER_LENGTH = "Inference-Header-Content-Length"
REQUIRED = ("x", "edge_index", "node_graph", "graph_node_counts")
MAX_WIDTH = 1 << 20  # the runtime's bound on a model's feature widths (runtime/model.py)


@dataclass(frozen=True)
class RemoteModel:
    """What the server says about a model: its inputs and feature widths."""

    name: str
    inputs: tuple[str, ...]
    node_features: int
    edge_features: int
    platform: str = ""
    ragged: bool = False  # Triton's one-graph-per-request layout (edgemp.ragged_layout)

    @classmethod
    def from_metadata(cls, meta: dict, config: dict | None = None) -> "RemoteModel":
        """``config`` (``/v2/models/{m}/config``) is needed only for a Triton-ragged model."""
        try:
            shapes = {i["name"]: i["shape"] for i in meta["inputs"]}
            name = meta["name"]
        except (KeyError, TypeError) as e:
            raise EdgempError(f"model metadata is not V2 model metadata (missing {e})") from e
        missing = [n for n in REQUIRED if n not in shapes]
        if missing and is_ragged(meta):
            return cls._ragged(name, shapes, config, str(meta.get("platform", "")))
        if missing:
            raise EdgempError(
                f"model {name!r} does not take the edgemp graph layout: inputs {sorted(shapes)} lack {missing}"
            )
        nf = _width(name, "x", shapes["x"], 1)
        ef = _width(name, "edge_attr", shapes["edge_attr"], 0) if "edge_attr" in shapes else 0
        order = [n for n in ("x", "edge_index", "edge_attr", "node_graph", "graph_node_counts") if n in shapes]
        return cls(name, tuple(order), nf, ef, str(meta.get("platform", "")))

    @classmethod
    def _ragged(cls, name: str, shapes: dict, config: dict | None, platform: str) -> "RemoteModel":
        params = (config or {}).get("parameters", {})
        try:
            nf, ef = (int(params[k]["string_value"]) for k in WIDTH_PARAMETERS)
        except (KeyError, TypeError, ValueError) as e:
            raise EdgempError(f"model {name!r} takes one flat graph per request, but its config does not give the "
                              f"feature widths ({', '.join(WIDTH_PARAMETERS)}); re-export it with edgemp") from e
        for key, value, minimum in zip(WIDTH_PARAMETERS, (nf, ef), (1, 0)):
            if not minimum <= value <= MAX_WIDTH:
                raise EdgempError(f"model {name!r}: config parameter {key!r} is {value}, not a feature width "
                                  f"in {minimum}..{MAX_WIDTH}")
        order = [n for n in ("x", "edge_index", "edge_attr") if n in shapes]
        return cls(name, tuple(order), nf, ef, platform, ragged=True)


def _width(model: str, input_name: str, shape: object, minimum: int) -> int:
    """The feature width an input's metadata ``shape`` ends in (``[-1, F]``), checked: it sizes the requests."""
    width = shape[-1] if isinstance(shape, list) and shape else None
    if not isinstance(width, int) or isinstance(width, bool) or not minimum <= width <= MAX_WIDTH:
        raise EdgempError(f"model {model!r}: metadata input {input_name!r} has shape {str(shape)[:60]}; expected a "
                          f"list ending in a feature width in {minimum}..{MAX_WIDTH}")
    return width


def is_ragged(meta: dict) -> bool:
    """Inputs x and edge_index without node_graph: Triton's one-graph layout."""
    names = {i.get("name") for i in meta.get("inputs", []) if isinstance(i, dict)}
    return {"x", "edge_index"} <= names and "node_graph" not in names


def request_tensors(graphs: list[Graph], model: RemoteModel) -> dict[str, np.ndarray]:
    if model.ragged:
        if len(graphs) != 1:
            raise EdgempError(f"model {model.name!r} takes one graph per request (Triton ragged batching): "
                              f"use --batch 1, not {len(graphs)}")
        t = ragged.graph_to_request(graphs[0], model.edge_features)
        return {n: t[n] for n in model.inputs}
    b = collate(graphs)
    t = b.tensors()
    return {n: np.ascontiguousarray(t[n]) for n in model.inputs}


def encode(tensors: dict[str, np.ndarray], protocol: str) -> tuple[bytes, dict[str, str]]:
    """(body, headers) for one infer request, binary-extension or plain JSON."""
    if protocol == "json":
        body = {"inputs": [
            {"name": k, "datatype": V2_TYPES[v.dtype], "shape": list(v.shape), "data": v.reshape(-1).tolist()}
            for k, v in tensors.items()
        ]}
        return json.dumps(body).encode(), {"Content-Type": "application/json"}
    header = {"inputs": [
        {"name": k, "datatype": V2_TYPES[v.dtype], "shape": list(v.shape), "parameters": {"binary_data_size": v.nbytes}}
        for k, v in tensors.items()
    ], "parameters": {"binary_data_output": True}}
    raw = json.dumps(header).encode()
    body = raw + b"".join(v.tobytes() for v in tensors.values())
    return body, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(raw))}


STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def stats_delta(before: dict | None, after: dict | None, model: str) -> dict | None:
    """Average server-side time per request (µs) over the interval, in Triton's stats split;
    None when either snapshot is missing or not in that shape (the client figures stand alone)."""
    try:
        b, a = _model_stats(before, model), _model_stats(after, model)
        return None if a is None or b is None else _delta(a, b)
    except (AttributeError, TypeError) as e:  # a server's own stats layout: skipped, not a traceback
        logger.debug("server statistics of %r not in the V2 shape: %s", model, e)
        return None


def _delta(a: dict, b: dict) -> dict:
    out: dict = {}
    ia, ib = a.get("inference_stats", {}), b.get("inference_stats", {})
    n = ia.get("success", {}).get("count", 0) - ib.get("success", {}).get("count", 0)
    out["success_count"] = n
    out["fail_count"] = ia.get("fail", {}).get("count", 0) - ib.get("fail", {}).get("count", 0)
    for f in STAT_FIELDS:
        if f in ("success", "fail"):
            continue
        ns = ia.get(f, {}).get("ns", 0) - ib.get(f, {}).get("ns", 0)
        out[f"{f}_us"] = ns / n / 1e3 if n else None
    ns = ia.get("success", {}).get("ns", 0) - ib.get("success", {}).get("ns", 0)
    out["request_us"] = ns / n / 1e3 if n else None
    execs = a.get("execution_count", 0) - b.get("execution_count", 0)
    infs = a.get("inference_count", 0) - b.get("inference_count", 0)
    out["executions"] = execs
    out["mean_batch_graphs"] = infs / execs if execs else None
    return out


def _model_stats(stats: dict | None, model: str) -> dict | None:
    if not stats:
        return None
    for entry in stats.get("model_stats", []):
        if entry.get("name") == model:
            return entry
    return None


_SERIES = re.compile(r'^(edgemp_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)$')


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """The edgemp Prometheus series of one model, summed over other labels (sums/counts only)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SERIES.match(line.strip())
        if not m or f'model="{model}"' not in m.group(2):
            continue
        name = m.group(1)
        if name.endswith("_bucket"):
            continue
        if name == "edgemp_requests_total":
            outcome = re.search(r'outcome="([a-z_]+)"', m.group(2))
            name = f"{name}.{outcome.group(1) if outcome else '?'}"
        out[name] = out.get(name, 0.0) + float(m.group(3))
    return out


def metrics_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict | None:
    """Per-run figures from /metrics: mean graphs per batch, queue and compute means, outcomes."""
    if not before or not after:
        return None
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    out: dict = {k.split(".", 1)[1]: int(v) for k, v in d.items() if k.startswith("edgemp_requests_total.")}
    pairs = {"mean_batch_graphs": "edgemp_batch_graphs", "mean_queue_us": "edgemp_queue_duration_seconds",
             "mean_compute_us": "edgemp_compute_duration_seconds"}
    for key, series in pairs.items():
        cnt = d.get(series + "_count", 0.0)
        s = d.get(series + "_sum", 0.0)
        out[key] = None if not cnt else (s / cnt if key == "mean_batch_graphs" else s / cnt * 1e6)
    return out
