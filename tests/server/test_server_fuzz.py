"""Property-based fuzzing of every request decoder, through HTTP only.

Each case starts from a valid request for one of three real models (sparse, sparse with
edge features, dense) in one of three encodings (V2 JSON, V2 binary, /v1 JSON), applies
a few hostile mutations (wrapping counts, huge or negative shapes, 65 dimensions,
non-string datatypes, deep nesting, int literals past Python's digit limit, out-of-range
numbers, lying binary sizes, broken compression, non-UTF-8 auth headers, ...) and
checks the one property that matters: **a 4xx with a JSON error, or a correct 200 —
never a 5xx (save the 503 of a queue timeout the request asked for), a dropped
connection or a dead server.**

The CI budget is ``EDGEMP_FUZZ_EXAMPLES`` (default 1500: a few seconds). Run it large by
hand: ``EDGEMP_FUZZ_EXAMPLES=10000 pytest -q tests/server/test_server_fuzz.py``.
"""
from __future__ import annotations

import copy
import gzip
import json
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgemp.graph import collate
from edgemp.graphio import graph_to_json
from edgemp.runtime.model import load
from edgemp.runtime.server import ServerConfig
from hardening_utils import EF, TOKEN, build_repo, request, start_thread_server
from runtime_fixtures import random_graphs

EXAMPLES = int(os.environ.get("EDGEMP_FUZZ_EXAMPLES", "1500"))
MODELS = {"gnn": 0, "gnn_edge": EF, "gnn_dense": 0}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INT64 = st.sampled_from([0, 1, -1, 2, 3, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63), 2**63, 2**64 + 3, 10**30])
HOSTILE_INT = INT64 | st.integers(-5, 40)
JSON_LEAF = st.none() | st.booleans() | HOSTILE_INT | st.floats(allow_nan=True) | st.text(max_size=6)
JSON_ANY = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                        max_leaves=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("fuzz_repo"))
    config = ServerConfig(port=0, auth_token=TOKEN, access_log=False, max_body_bytes=1024 * 1024)
    server = start_thread_server(repo, config)
    models = {name: load(repo / name / "model.onnx") for name in MODELS}
    yield server, models
    for m in models.values():
        m.close()
    server.close()


def _tensors(graphs, ef: int) -> dict[str, np.ndarray]:
    b = collate(graphs)
    out = {"x": b.x, "edge_index": b.edge_index}
    if ef:
        out["edge_attr"] = b.edge_attr
    out["node_graph"], out["graph_node_counts"] = b.node_graph, b.graph_node_counts
    return out


_DT = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


@st.composite
def hostile_request(draw):
    """(model, path, body bytes, headers, graphs or None when the request was mutated)."""
    model = draw(st.sampled_from(sorted(MODELS)), label="model")
    ef = MODELS[model]
    seed = draw(st.integers(0, 2**16), label="seed")
    graphs = random_graphs(np.random.default_rng(seed), draw(st.integers(1, 4)), max_nodes=6, edge_features=ef)
    form = draw(st.sampled_from(["json", "binary", "v1"]), label="form")
    mutations = draw(st.lists(st.sampled_from(MUTATIONS if form != "v1" else V1_MUTATIONS), max_size=3), label="mut")
    headers = dict(AUTH)
    if form == "v1":
        doc = {"graphs": [graph_to_json(g) for g in graphs]}
        for g in doc["graphs"]:
            g.pop("y", None)
            if not ef:
                g.pop("edge_attr", None)
        for m in mutations:
            m(draw, doc)
        text = _dump(draw, doc)
        path = f"/v1/models/{model}/predict"
    else:
        entries = [{"name": k, "datatype": _DT[v.dtype], "shape": list(v.shape), "array": v}
                   for k, v in _tensors(graphs, ef).items()]
        doc = {"inputs": entries}
        for m in mutations:
            m(draw, doc)
        blobs = []
        for e in _inputs(doc):
            if not isinstance(e, dict) or "array" not in e:
                continue
            arr = e.pop("array")
            if form == "binary":
                raw = np.ascontiguousarray(arr).tobytes()
                e.setdefault("parameters", {})["binary_data_size"] = len(raw) + draw(
                    st.sampled_from([0, 0, 0, 1, -1, 8, 2**63]), label="size_delta")
                blobs.append(raw)
            else:
                e["data"] = arr.reshape(-1).tolist()
        header = _dump(draw, doc)
        text = header + b"".join(blobs)
        if form == "binary":
            headers["Inference-Header-Content-Length"] = str(len(header) + draw(
                st.sampled_from([0, 0, 0, -1, 1, 10**25]), label="hl_delta"))
        path = f"/v2/models/{model}/infer"
    text, headers = _transport(draw, text, headers)
    return model, path, text, headers, (graphs if not mutations else None), form


def _dump(draw, doc) -> bytes:
    """JSON text, sometimes with a raw hostile token spliced in (not expressible as a value)."""
    text = json.dumps(doc, default=lambda o: o.tolist()).encode()
    splice = draw(st.sampled_from([None] * 8 + ["deep", "digits", "nan", "trunc"]), label="splice")
    if splice == "deep":
        depth = draw(st.sampled_from([64, 5000, 200_000]))
        return text[:-1] + b', "zz": ' + b"[" * depth + b"]" * depth + b"}"
    if splice == "digits":
        return text.replace(b"[", b"[" + b"9" * 5000 + b",", 1)
    if splice == "nan":
        return text.replace(b"[", b"[NaN, Infinity, -1e400, ", 1)
    if splice == "trunc":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    return text


def _transport(draw, body: bytes, headers: dict) -> tuple[bytes, dict]:
    choice = draw(st.sampled_from(["plain"] * 10 + ["gzip", "deflate", "corrupt", "br", "auth", "noauth"]), label="tx")
    if choice == "gzip":
        return gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    if choice == "deflate":
        return zlib.compress(body), {**headers, "Content-Encoding": "deflate"}
    if choice == "corrupt":
        return gzip.compress(body)[: draw(st.integers(0, 40))] + b"\xff\x00", {**headers, "Content-Encoding": "gzip"}
    if choice == "br":
        return body, {**headers, "Content-Encoding": "br"}
    if choice == "auth":  # raw bytes, possibly not UTF-8: 401, never 500
        return body, {**headers, "Authorization": draw(st.binary(max_size=12).filter(lambda b: b"\r" not in b
                                                                                  and b"\n" not in b))}
    if choice == "noauth":
        return body, {k: v for k, v in headers.items() if k != "Authorization"}
    return body, headers


# -- V2 mutations: each edits the decoded document in place -------------------------------
def _inputs(doc) -> list:
    return doc["inputs"] if isinstance(doc.get("inputs"), list) else []


def _entry(draw, doc) -> dict | None:
    entries = [e for e in _inputs(doc) if isinstance(e, dict)]
    return draw(st.sampled_from(entries)) if entries else None


def m_counts(draw, doc):
    for e in _inputs(doc):
        if isinstance(e, dict) and e.get("name") == "graph_node_counts" and "array" in e:
            counts = draw(st.lists(HOSTILE_INT, min_size=0, max_size=5), label="counts")
            e["array"] = np.array(counts, dtype=object)
            e["shape"] = [len(counts)]
            _force_int64(e)


def _force_int64(e: dict) -> None:
    try:
        e["array"] = np.asarray(e["array"].astype(np.int64))
    except OverflowError:
        e["data"] = e.pop("array").tolist()  # out of int64: send as JSON whatever the form


def m_indices(draw, doc):
    for e in _inputs(doc):
        if isinstance(e, dict) and e.get("name") in ("edge_index", "node_graph") and e.get("array") is not None \
                and e["array"].size:
            arr = e["array"].copy()
            flat = arr.reshape(-1)
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([-1, 2**62, 2**63 - 1, -(2**63), 7]))
            e["array"] = arr


def m_shape(draw, doc):
    e = _entry(draw, doc)
    if e is not None:
        e["shape"] = draw(st.sampled_from([[], [0], [2**63 - 1, 2**63 - 1], [2**40, 2**40], [-1, 5], [1] * 65,
                                           [10**30], [0, 2**62]]) | st.lists(HOSTILE_INT, max_size=4), label="shape")


def m_datatype(draw, doc):
    e = _entry(draw, doc)
    if e is not None:
        e["datatype"] = draw(st.sampled_from(["INT32", "BYTES", "FP16", "fp32"]) | JSON_ANY, label="dtype")


def m_data(draw, doc):
    e = _entry(draw, doc)
    if e is not None:
        e.pop("array", None)
        e["data"] = draw(JSON_ANY, label="data")


def m_drop_or_dup(draw, doc):
    if _inputs(doc):
        i = draw(st.integers(0, len(doc["inputs"]) - 1))
        if draw(st.booleans()):
            doc["inputs"].pop(i)
        else:
            doc["inputs"].append(copy.copy(doc["inputs"][i]))


def m_params(draw, doc):
    doc["parameters"] = draw(st.dictionaries(st.sampled_from(["timeout", "binary_data_output", "x"]), JSON_ANY,
                                             max_size=2) | JSON_ANY, label="params")
    if draw(st.booleans()):
        doc["outputs"] = draw(JSON_ANY, label="outputs")
    if draw(st.booleans()):
        doc["id"] = draw(JSON_ANY, label="id")


def m_toplevel(draw, doc):
    doc["inputs"] = draw(JSON_ANY, label="inputs") if draw(st.booleans()) else [draw(JSON_ANY)]


MUTATIONS = [m_counts, m_indices, m_shape, m_datatype, m_data, m_drop_or_dup, m_params, m_toplevel]


# -- /v1 mutations ------------------------------------------------------------------------
def v1_field(draw, doc):
    graphs = [g for g in doc["graphs"] if isinstance(g, dict)] if isinstance(doc.get("graphs"), list) else []
    if not graphs:
        return
    g = draw(st.sampled_from(graphs))
    key = draw(st.sampled_from(["x", "edge_index", "edge_attr", "y", "id", "zz"]))
    g[key] = draw(JSON_ANY | st.sampled_from([[[1e39] * 5], [[10**30] * 5], [[2**63, 0], [0, 0]], [[1e300], [0.0]],
                                              [[-(2**63)], [0]], [[0.5], [0]]]), label="v1value")


def v1_envelope(draw, doc):
    key = draw(st.sampled_from(["graphs", "timeout_us", "id", "zz"]))
    doc[key] = draw(JSON_ANY | st.sampled_from([10**30, 2**63, -1, []]), label="v1env")


V1_MUTATIONS = [v1_field, v1_envelope]


def _check_answer(status: int, headers: dict, body: bytes, model, graphs, form: str) -> None:
    assert status == 200
    if form == "v1":
        out = json.loads(body)["outputs"]
        assert len(out) == len(graphs)
        want = model.predict(graphs)
        for got, exp in zip(out, want):
            for name, value in exp.items():
                np.testing.assert_allclose(np.asarray(got[name], np.float32).reshape(value.shape), value,
                                           rtol=1e-4, atol=1e-5)
        return
    n = int(headers.get("Inference-Header-Content-Length", len(body)))
    names = {o["name"] for o in json.loads(body[:n])["outputs"]}
    assert names == set(model.output_names)


def test_fuzz_every_decoder_never_5xx(served):
    server, models = served
    conn = server.connection()
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=hostile_request())
    def run(case) -> None:
        nonlocal conn
        model, path, body, headers, graphs, form = case
        try:
            status, rheaders, payload = request(conn, "POST", path, body, headers)
        except (ConnectionError, OSError):  # a kept-alive socket the server closed: retry once, fresh
            conn.close()
            conn = server.connection()
            status, rheaders, payload = request(conn, "POST", path, body, headers)
        seen[status] = seen.get(status, 0) + 1
        # 503 is right for exactly one client input: a queue timeout the request set itself (Triton's too)
        assert status < 500 or (status == 503 and b"past its timeout" in payload), (status, payload[:300])
        if rheaders.get("Connection", "").lower() == "close":
            conn.close()
            conn = server.connection()
        if status == 200 and graphs is not None:
            _check_answer(status, rheaders, payload, models[model], graphs, form)
        elif status != 200:
            assert "error" in json.loads(payload), payload[:200]

    run()
    conn.close()
    print(f"fuzz: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= EXAMPLES * 0.9, seen
    assert seen.get(200, 0) > 0 and sum(v for k, v in seen.items() if 400 <= k < 500) > 0, seen
    # still healthy, still right
    conn = server.connection()
    assert request(conn, "GET", "/v2/health/ready")[0] == 200
    graphs = random_graphs(np.random.default_rng(5), 3, max_nodes=8)
    status, _, payload = request(conn, "POST", "/v1/models/gnn/predict",
                                 json.dumps({"graphs": [{"x": g.x.tolist(), "edge_index": g.edge_index.tolist()}
                                                        for g in graphs]}).encode(), AUTH)
    _check_answer(status, {}, payload, models["gnn"], graphs, "v1")
