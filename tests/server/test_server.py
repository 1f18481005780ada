"""The real ``edgemp serve`` process, driven by stock tritonclient and plain HTTP.

Every answer is compared with the in-process ``Model.predict`` of the same graphs: HTTP
JSON, HTTP binary, the aio client and ``/v1`` predict must all give the same numbers.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
import tritonclient.http.aio as tha
from tritonclient.utils import InferenceServerException

from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.model import load
from runtime_fixtures import build_dense_model, build_sparse_model, random_graphs
from server_utils import (
    ROOT,
    assert_outputs_match,
    batch_tensors,
    decode_v2_response,
    expected_layout,
    http,
    read_response,
    start_server,
    v2_binary_body,
    v2_json_body,
    wire,
)

MAX_BODY = 2 * 1024 * 1024
EF = 3  # edge features of the edge model


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repository in both layouts: flat, Triton versioned (v2 must win) and a dense model."""
    root = tmp_path_factory.mktemp("repo")
    (root / "gnn").mkdir()
    build_sparse_model(root / "gnn" / "model.onnx")
    for version, seed in (("1", 7), ("2", 1)):
        (root / "gnn_edge" / version).mkdir(parents=True)
        build_sparse_model(root / "gnn_edge" / version / "model.onnx", edge_features=EF, seed=seed)
    (root / "gnn_dense").mkdir()
    build_dense_model(root / "gnn_dense" / "model.onnx", max_nodes=32)
    (root / "gnn_dense" / "config.json").write_text(json.dumps({"max_batch_graphs": 16, "max_queue_delay_us": 100}))
    (root / "README.txt").write_text("not a model")
    return root


@pytest.fixture(scope="module")
def models(repo):
    out = {"gnn": load(repo / "gnn" / "model.onnx"), "gnn_edge": load(repo / "gnn_edge" / "2" / "model.onnx"),
           "gnn_dense": load(repo / "gnn_dense" / "model.onnx")}
    yield out
    for m in out.values():
        m.close()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    srv = start_server(repo, tmp_path_factory.mktemp("log"), "--max-queue-delay-us", "200",
                       "--max-body-bytes", str(MAX_BODY), access_log=True)
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


@pytest.fixture()
def client(server):
    c = th.InferenceServerClient(server.url, network_timeout=30)
    yield c
    c.close()


def _ef(name: str) -> int:
    return EF if name == "gnn_edge" else 0


def _inputs(tensors: dict, binary: bool = True) -> list:
    out = []
    for name, value in tensors.items():
        i = th.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64")
        i.set_data_from_numpy(value, binary_data=binary)
        out.append(i)
    return out


# -- health, metadata, config -----------------------------------------------------------
def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    for name in ("gnn", "gnn_edge", "gnn_dense"):
        assert client.is_model_ready(name)
    assert client.is_model_ready("gnn_edge", "2")
    assert not client.is_model_ready("gnn_edge", "1")  # only the highest version is served
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "edgemp"
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(meta["extensions"])


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata("gnn_edge")
    assert meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
    shapes = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert shapes == {"x": ("FP32", [-1, 5]), "edge_index": ("INT64", [2, -1]), "edge_attr": ("FP32", [-1, EF]),
                      "node_graph": ("INT64", [-1]), "graph_node_counts": ("INT64", [-1])}
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"prediction": [-1, 1], "node_out": [-1, 2]}
    dense = client.get_model_metadata("gnn_dense")  # the request layout is sparse whatever the form
    assert [i["name"] for i in dense["inputs"]] == ["x", "edge_index", "node_graph", "graph_node_counts"]
    cfg = client.get_model_config("gnn_dense")
    assert cfg["max_batch_size"] == 0 and cfg["platform"] == "onnxruntime_onnx"
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 100  # from config.json
    assert cfg["parameters"]["edgemp_max_batch_graphs"]["string_value"] == "16"
    assert {i["data_type"] for i in cfg["input"]} == {"TYPE_FP32", "TYPE_INT64"}
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404" and "unknown model" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("n" * 3000)  # echoed back cut short, and said to be
    assert "unknown model 'nnnn" in e.value.message() and "n...'" in e.value.message()
    assert len(e.value.message()) < 300, e.value.message()
    index = client.get_model_repository_index()
    assert sorted(m["name"] for m in index) == ["gnn", "gnn_dense", "gnn_edge"]


# -- inference through tritonclient ----------------------------------------------------
@pytest.mark.parametrize("name", ["gnn", "gnn_edge", "gnn_dense"])
@pytest.mark.parametrize("mode", ["binary", "json", "mixed"])
def test_infer_matches_in_process(client, models, name, mode):
    rng = np.random.default_rng(hash((name, mode)) % 2**32)
    graphs = random_graphs(rng, 7, max_nodes=20, edge_features=_ef(name))
    tensors = batch_tensors(graphs, _ef(name))
    if mode == "binary":
        result = client.infer(name, _inputs(tensors), request_id="req-1")  # client defaults: all binary
    elif mode == "json":
        outs = [th.InferRequestedOutput(n, binary_data=False) for n in ("prediction", "node_out")]
        result = client.infer(name, _inputs(tensors, binary=False), outputs=outs, request_id="req-1")
    else:
        ins = [i for i in _inputs(tensors)]
        ins[0].set_data_from_numpy(tensors["x"], binary_data=False)
        outs = [th.InferRequestedOutput("prediction", binary_data=True), th.InferRequestedOutput("node_out", binary_data=False)]
        result = client.infer(name, ins, outputs=outs, request_id="req-1", request_compression_algorithm="gzip")
    response = result.get_response()
    assert response["id"] == "req-1" and response["model_name"] == name
    got = {n: result.as_numpy(n) for n in ("prediction", "node_out")}
    assert_outputs_match(got, expected_layout(models[name], graphs), f"{name}/{mode}")


def test_infer_subset_of_outputs_and_versions(client, models):
    graphs = random_graphs(np.random.default_rng(3), 4, edge_features=EF)
    tensors = batch_tensors(graphs, EF)
    result = client.infer("gnn_edge", _inputs(tensors), model_version="2",
                          outputs=[th.InferRequestedOutput("prediction")], request_compression_algorithm="deflate")
    assert result.as_numpy("node_out") is None
    np.testing.assert_allclose(result.as_numpy("prediction"), expected_layout(models["gnn_edge"], graphs)["prediction"],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(InferenceServerException) as e:
        client.infer("gnn_edge", _inputs(tensors), model_version="1")
    assert e.value.status() == "404"


def test_infer_errors_are_400_with_message(client):
    graphs = random_graphs(np.random.default_rng(4), 3)
    tensors = batch_tensors(graphs)
    tensors["edge_index"] = tensors["edge_index"].copy()
    tensors["edge_index"][1, 0] = 10_000
    with pytest.raises(InferenceServerException) as e:
        client.infer("gnn", _inputs(tensors))
    assert e.value.status() == "400" and "edge_index holds node 10000" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("gnn", _inputs(batch_tensors(graphs)), outputs=[th.InferRequestedOutput("nope")])
    assert e.value.status() == "400" and "unknown output" in e.value.message()


def test_aio_client_concurrent(server, models):
    rng = np.random.default_rng(5)
    requests = [random_graphs(rng, int(rng.integers(1, 6)), max_nodes=25) for _ in range(40)]

    async def main() -> list:
        async with tha.InferenceServerClient(server.url) as c:
            assert await c.is_server_ready() and await c.is_model_ready("gnn")
            meta = await c.get_model_metadata("gnn")
            assert meta["name"] == "gnn"

            async def one(i: int, graphs: list):
                ins = []
                for name, value in batch_tensors(graphs).items():
                    inp = tha.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64")
                    inp.set_data_from_numpy(value, binary_data=i % 2 == 0)
                    ins.append(inp)
                r = await c.infer("gnn", ins, request_id=str(i))
                return r.get_response()["id"], {n: r.as_numpy(n) for n in ("prediction", "node_out")}

            results = await asyncio.gather(*(one(i, g) for i, g in enumerate(requests)))
            stats = await c.get_inference_statistics("gnn")
            assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= len(requests)
            return results

    for i, (rid, got) in enumerate(asyncio.run(main())):
        assert rid == str(i)
        assert_outputs_match(got, expected_layout(models["gnn"], requests[i]), f"request {i}")


def test_statistics_schema(client):
    client.infer("gnn", _inputs(batch_tensors(random_graphs(np.random.default_rng(6), 3))))
    stats = client.get_inference_statistics("gnn")["model_stats"][0]
    assert stats["name"] == "gnn" and stats["version"] == "1"
    assert stats["inference_count"] >= 3 and stats["execution_count"] >= 1 and stats["last_inference"] > 0
    inf = stats["inference_stats"]
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(inf[key]) == {"count", "ns"}
    assert inf["success"]["count"] >= 1 and inf["compute_infer"]["ns"] > 0
    assert all({"batch_size", "compute_infer"} <= set(b) for b in stats["batch_stats"])
    everything = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in everything] == ["gnn", "gnn_dense", "gnn_edge"]


# -- plain HTTP: raw binary bodies, /v1 predict, /metrics, limits ------------------------
def test_raw_binary_and_json_bodies(server, models):
    graphs = random_graphs(np.random.default_rng(8), 5)
    want = expected_layout(models["gnn"], graphs)
    body, n = v2_binary_body(batch_tensors(graphs), request_id="raw")
    status, headers, data = http(server, "POST", "/v2/models/gnn/infer", body,
                                 {"Inference-Header-Content-Length": str(n), "Content-Type": "application/octet-stream"})
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    header, got = decode_v2_response(data, headers["Inference-Header-Content-Length"])
    assert header["id"] == "raw"
    assert_outputs_match(got, want, "raw binary")
    status, headers, data = http(server, "POST", "/v2/models/gnn/infer", zlib.compress(v2_json_body(batch_tensors(graphs))),
                                 {"Content-Encoding": "deflate"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert "Inference-Header-Content-Length" not in headers
    assert_outputs_match(decode_v2_response(data, None)[1], want, "json deflate")


def test_v1_predict(server, models):
    graphs = random_graphs(np.random.default_rng(9), 6, edge_features=EF)
    payload = {"graphs": [{"x": g.x.tolist(), "edge_index": g.edge_index.tolist(), "edge_attr": g.edge_attr.tolist()}
                          for g in graphs], "id": "v1"}
    status, _, data = http(server, "POST", "/v1/models/gnn_edge/predict", json.dumps(payload).encode(),
                           {"Content-Type": "application/json"})
    assert status == 200, data
    out = json.loads(data)
    assert out["id"] == "v1" and len(out["outputs"]) == len(graphs)
    want = models["gnn_edge"].predict(graphs)
    for got, exp in zip(out["outputs"], want):
        for name in exp:
            np.testing.assert_allclose(np.asarray(got[name], np.float32), exp[name], rtol=1e-5, atol=1e-5)
    bad = {"graphs": [{"x": [[1.0] * 5], "edge_index": [[0], [3]]}]}
    status, _, data = http(server, "POST", "/v1/models/gnn/predict", json.dumps(bad).encode())
    assert status == 400 and "edge_index holds node 3" in json.loads(data)["error"]
    status, _, data = http(server, "POST", "/v1/models/gnn/predict", b'{"graphs": [{"x": [[1,2]], "edge_index": [[],[]]}]}')
    assert status == 400 and "features" in json.loads(data)["error"]
    status, _, data = http(server, "POST", "/v1/models/nope/predict", json.dumps(payload).encode())
    assert status == 404


def test_metrics(server, client):
    client.infer("gnn", _inputs(batch_tensors(random_graphs(np.random.default_rng(10), 2))))
    http(server, "POST", "/v2/models/gnn/infer", b"{not json")
    status, headers, data = http(server, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = data.decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    assert values['edgemp_requests_total{model="gnn",outcome="success"}'] >= 1
    assert values['edgemp_requests_total{model="gnn",outcome="bad_request"}'] >= 1
    assert values['edgemp_model_loaded{model="gnn_edge",version="2"}'] == 1
    assert values["edgemp_server_ready"] == 1
    assert 'edgemp_queue_depth{model="gnn"}' in values
    for hist in ("request_duration_seconds", "queue_duration_seconds", "compute_duration_seconds",
                 "batch_graphs", "batch_nodes"):
        assert values[f'edgemp_{hist}_count{{model="gnn"}}'] >= 1, hist


def test_alert_rules_use_exported_series(server):
    """deploy/alerts.yml parses and every edgemp_* series it names exists in /metrics."""
    import re

    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"EdgempQueueSaturation", "EdgempHighErrorRate", "EdgempP99LatencyHigh"} <= names
    text = http(server, "GET", "/metrics")[2].decode()
    for rule in rules:
        for series in re.findall(r"edgemp_[a-z_]+", rule["expr"]):
            assert re.search(rf"^{series}[{{ ]", text, re.M), f"{rule['alert']}: {series} is not exported"


def test_body_limit_413(server):
    big = b'{"inputs": [' + b" " * (MAX_BODY + 10) + b"]}"
    status, _, data = http(server, "POST", "/v2/models/gnn/infer", big)
    assert status == 413 and "error" in json.loads(data)
    bomb = gzip.compress(big)  # small on the wire, too large once decompressed
    assert len(bomb) < MAX_BODY
    status, _, data = http(server, "POST", "/v2/models/gnn/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "error" in json.loads(data)
    assert http(server, "GET", "/v2/health/ready")[0] == 200


def test_client_disconnects_do_not_break_others(server, models):
    """Clients that vanish mid-body or before their answer must not disturb the batch."""
    graphs = random_graphs(np.random.default_rng(11), 4)
    body, n = v2_binary_body(batch_tensors(graphs))
    request = (f"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: {n}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode()
    want = expected_layout(models["gnn"], graphs)
    results: list = []

    def normal_client() -> None:
        c = th.InferenceServerClient(server.url)
        for _ in range(10):
            r = c.infer("gnn", _inputs(batch_tensors(graphs)))
            results.append({k: r.as_numpy(k) for k in want})
        c.close()

    threads = [threading.Thread(target=normal_client) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(30):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(request + (body if i % 2 else body[: len(body) // 2]))  # whole request, or half a body
    for t in threads:
        t.join()
    assert len(results) == 30
    for got in results:
        assert_outputs_match(got, want, "alongside disconnects")
    assert http(server, "GET", "/v2/health/ready")[0] == 200


# -- separate servers: queue limits, auth, CLI errors ----------------------------------
def test_queue_full_and_timeouts_503(repo, tmp_path, models):
    srv = start_server(repo / "gnn" / "model.onnx", tmp_path, "--max-queue-delay-us", "400000",
                       "--max-queue-size", "1", "--request-timeout-us", "250000", "--max-batch-graphs", "8")
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        # An open connection that could still send: without it, a lone request closes its batch
        # at once (nothing could join it) and never waits for the delay.
        idle.sendall(wire("GET", "/v2/health/ready"))
        assert read_response(idle, bytearray())[0] == 200
        one = v2_json_body(batch_tensors(random_graphs(np.random.default_rng(12), 1)))
        first: list = []
        t = threading.Thread(target=lambda: first.append(http(srv, "POST", "/v2/models/model/infer", one)))
        t.start()
        time.sleep(0.1)  # the first request now waits in the queue for a fuller batch
        status, _, data = http(srv, "POST", "/v2/models/model/infer", one)
        assert status == 503 and "full" in json.loads(data)["error"]
        t.join()
        status, _, data = first[0]  # capped at 250 ms < the 400 ms batching delay: it timed out
        assert status == 503 and "timeout" in json.loads(data)["error"]
        short = v2_json_body(batch_tensors(random_graphs(np.random.default_rng(13), 1)), timeout=1000)
        t0 = time.perf_counter()
        status, _, data = http(srv, "POST", "/v2/models/model/infer", short)
        assert status == 503 and time.perf_counter() - t0 < 0.3
        graphs = random_graphs(np.random.default_rng(14), 8)  # a full batch runs at once
        status, headers, data = http(srv, "POST", "/v2/models/model/infer", v2_json_body(batch_tensors(graphs)))
        assert status == 200
        assert_outputs_match(decode_v2_response(data, None)[1], expected_layout(models["gnn"], graphs))
        _, _, metrics = http(srv, "GET", "/metrics")
        assert 'edgemp_requests_total{model="model",outcome="timeout"} 2.0' in metrics.decode()
        assert 'edgemp_requests_total{model="model",outcome="rejected"} 1.0' in metrics.decode()
    finally:
        idle.close()
        assert srv.stop() == 0


def test_auth(repo, tmp_path):
    srv = start_server(repo / "gnn" / "model.onnx", tmp_path, "--name", "g", token="s3cret-token")
    try:
        srv.token = None  # plain requests without the header
        assert http(srv, "GET", "/v2/health/live")[0] == 200
        assert http(srv, "GET", "/v2/health/ready")[0] == 200
        for path in ("/v2", "/v2/models/g", "/v2/models/g/config", "/v2/models/g/ready", "/metrics", "/v2/models/stats"):
            status, _, data = http(srv, "GET", path)
            assert status == 401 and "token" in json.loads(data)["error"], path
        assert http(srv, "GET", "/v2", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert http(srv, "POST", "/v1/models/g/predict", b"{}")[0] == 401
        bad = th.InferenceServerClient(srv.url)
        with pytest.raises(InferenceServerException) as e:
            bad.get_model_metadata("g")
        assert e.value.status() == "401"
        assert bad.is_server_ready()
        good = th.InferenceServerClient(srv.url)
        headers = {"Authorization": "Bearer s3cret-token"}
        assert good.get_model_metadata("g", headers=headers)["name"] == "g"
        tensors = batch_tensors(random_graphs(np.random.default_rng(15), 2))
        assert good.infer("g", _inputs(tensors), headers=headers).as_numpy("prediction").shape == (2, 1)
        assert "s3cret" not in srv.log()
    finally:
        assert srv.stop() == 0


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgemp.cli.serve", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def test_cli_user_errors_are_one_line(repo, tmp_path):
    r = _cli(str(repo), "--name", "x")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: --name")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli(str(empty))
    assert r.returncode == 1 and "holds no models" in r.stderr
    bad = tmp_path / "bad"
    (bad / "m").mkdir(parents=True)
    build_sparse_model(bad / "m" / "model.onnx")
    (bad / "m" / "config.json").write_text('{"max_batch_grafs": 3}')
    r = _cli(str(bad))
    assert r.returncode == 1 and "unknown option(s) ['max_batch_grafs']" in r.stderr
    assert "Traceback" not in r.stderr


def test_token_file_and_env_conflict(tmp_path, monkeypatch):
    from edgemp.cli.serve import _token
    from edgemp.errors import EdgempError

    f = tmp_path / "tok"
    f.write_text("abc\n")
    monkeypatch.delenv("EDGEMP_AUTH_TOKEN", raising=False)
    assert _token(f) == "abc" and _token(None) is None
    monkeypatch.setenv("EDGEMP_AUTH_TOKEN", "def")
    assert _token(None) == "def"
    with pytest.raises(EdgempError):
        _token(f)


def test_repository_discovery(repo, tmp_path):
    from edgemp.errors import EdgempError
    from edgemp.runtime.server.repository import discover

    sources = {s.name: s for s in discover(repo, BatcherConfig(max_batch_graphs=32))}
    assert sorted(sources) == ["gnn", "gnn_dense", "gnn_edge"]
    assert sources["gnn_edge"].version == "2" and sources["gnn_edge"].path.parent.name == "2"
    assert sources["gnn_dense"].batcher.max_batch_graphs == 16  # config.json beats the default
    assert sources["gnn"].batcher.max_batch_graphs == 32
    with pytest.raises(EdgempError, match="one model's folder"):
        discover(repo / "gnn_edge", BatcherConfig())


def test_library_entry_point_in_process(repo):
    """create_app works inside any aiohttp runner, with no subprocess and no CLI."""
    from aiohttp.test_utils import TestClient, TestServer

    from edgemp.runtime.server import ServerConfig, create_app

    async def main() -> None:
        app = create_app({"g": repo / "gnn" / "model.onnx"}, ServerConfig(auth_token="t"), BatcherConfig())
        async with TestClient(TestServer(app)) as c:
            assert (await c.get("/v2/health/ready")).status == 200
            assert (await c.get("/v2/models/g")).status == 401
            r = await c.get("/v2/models/g", headers={"Authorization": "Bearer t"})
            assert (await r.json())["name"] == "g"

    asyncio.run(main())


def test_server_imports_no_torch():
    code = ("import sys, edgemp.runtime.server, edgemp.cli.serve; "
            "bad = [m for m in ('torch', 'onnx', 'tensorrt') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_serves_a_real_exported_model(export_checkpoint, tmp_path):
    """A checkpoint exported by edgemp.export (GINE, with edge features) serves like the fixtures."""
    path = export_checkpoint("gine", node_features=5, edge_features=EF, hidden=16, num_rounds=2)
    model = load(path)
    graphs = random_graphs(np.random.default_rng(16), 9, edge_features=EF)
    srv = start_server(path, tmp_path, "--name", "gine")
    try:
        c = th.InferenceServerClient(srv.url)
        result = c.infer("gine", _inputs(batch_tensors(graphs, EF)))
        want = expected_layout(model, graphs)
        assert_outputs_match({n: result.as_numpy(n) for n in want}, want, "exported gine")
        c.close()
    finally:
        assert srv.stop() == 0


# -- malformed requests: a property test ------------------------------------------------
V2_NAMES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "fp32",
            "", "FLOAT"]


def _entries(graphs, ef: int, binary: list[bool]) -> list[dict]:
    return [{"name": n, "datatype": "FP32" if v.dtype == np.float32 else "INT64", "shape": list(v.shape),
             "array": v.copy(), "binary": b}
            for (n, v), b in zip(batch_tensors(graphs, ef).items(), binary)]


def _serialize(entries: list[dict], size_delta: dict | None = None, extra: dict | None = None) -> tuple[bytes, dict]:
    """Entries -> V2 body; ``size_delta`` skews one input's binary_data_size; ``extra`` merges into the header."""
    header: dict = {"inputs": []}
    blobs = []
    for e in entries:
        item = {"name": e["name"], "datatype": e["datatype"], "shape": e["shape"]}
        if e["binary"]:
            raw = np.ascontiguousarray(e["array"]).tobytes()
            item["parameters"] = {"binary_data_size": len(raw) + (size_delta or {}).get(e["name"], 0)}
            blobs.append(raw)
        else:
            item["data"] = e["array"].reshape(-1).tolist()
        header["inputs"].append(item)
    header.update(extra or {})
    raw_header = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(raw_header))} if blobs else {}
    return raw_header + b"".join(blobs), headers


def _malformed(data, hst) -> tuple[str, bytes, dict]:
    """Draw one malformed request: (model, body, headers). Every branch is invalid by construction."""
    from hypothesis import strategies as st

    model = data.draw(st.sampled_from(["gnn", "gnn_edge"]), label="model")
    ef = _ef(model)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    graphs = random_graphs(rng, data.draw(st.integers(1, 4), label="graphs"), max_nodes=8, edge_features=ef)
    n_inputs = 5 if ef else 4
    entries = _entries(graphs, ef, data.draw(st.lists(st.booleans(), min_size=n_inputs, max_size=n_inputs), label="binary"))
    by_name = {e["name"]: e for e in entries}
    total_nodes = by_name["x"]["shape"][0]
    kind = data.draw(st.sampled_from([
        "bad_json", "json_value", "datatype", "shape", "edge_range", "nan", "missing", "counts", "node_graph",
        "binary_size", "header_length", "unknown_model", "extra_input", "duplicate", "bad_output", "bad_param",
        "crossing", "data_length", "float_ints", "empty_counts", "corrupt_gzip",
    ]), label="kind")
    size_delta, extra, headers = None, None, {}
    if kind == "bad_json":
        text = data.draw(st.text(max_size=40), label="text")
        return model, b"{" + text.encode() + b"[", {}
    if kind == "json_value":
        value = data.draw(hst.json_values, label="value")
        if isinstance(value, dict):
            value.pop("inputs", None)
        return model, json.dumps(value).encode(), {}
    if kind == "unknown_model":
        body, headers = _serialize(entries)
        return data.draw(st.sampled_from(["nope", "gnn2", "GNN"]), label="name"), body, headers
    e = by_name[data.draw(st.sampled_from(sorted(by_name)), label="input")]
    if kind == "datatype":
        e["datatype"] = data.draw(st.sampled_from([t for t in V2_NAMES if t != e["datatype"]]), label="dtype")
    elif kind == "shape":
        choice = data.draw(st.integers(0, 2), label="how")
        if choice == 0:
            e["shape"] = e["shape"] + [1]
        elif choice == 1 and len(e["shape"]) > 1:
            e["shape"] = e["shape"][:-1]
        else:
            axis = data.draw(st.integers(0, len(e["shape"]) - 1), label="axis")
            e["shape"] = list(e["shape"])
            e["shape"][axis] += data.draw(st.sampled_from([-1, 1, 3]), label="delta")
            if e["shape"][axis] < 0:
                e["shape"][axis] = -7
    elif kind == "edge_range":
        ei = by_name["edge_index"]
        if ei["array"].shape[1] == 0:
            ei["array"] = np.zeros((2, 1), np.int64)
            ei["shape"] = [2, 1]
            if ef:
                by_name["edge_attr"]["array"] = np.zeros((1, ef), np.float32)
                by_name["edge_attr"]["shape"] = [1, ef]
        row, col = data.draw(st.integers(0, 1), label="row"), data.draw(st.integers(0, ei["array"].shape[1] - 1), label="col")
        ei["array"][row, col] = data.draw(st.one_of(st.integers(total_nodes, 2**62), st.integers(-(2**62), -1)), label="v")
    elif kind == "nan":
        target = by_name["edge_attr"] if ef and data.draw(st.booleans(), label="ea") and by_name["edge_attr"]["array"].size else by_name["x"]
        flat = target["array"].reshape(-1)
        flat[data.draw(st.integers(0, flat.size - 1), label="pos")] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="bad")
        target["binary"] = True  # JSON cannot carry NaN portably; binary always can
    elif kind == "missing":
        entries.remove(e)
    elif kind == "counts":
        c = by_name["graph_node_counts"]["array"]
        c[data.draw(st.integers(0, c.size - 1), label="g")] += data.draw(st.sampled_from([-100, -1, 1, 5]), label="d")
    elif kind == "node_graph":
        ng = by_name["node_graph"]["array"]
        i = data.draw(st.integers(0, ng.size - 1), label="i")
        ng[i] = data.draw(st.integers(-3, 10).filter(lambda v: v != ng[i]), label="v")
    elif kind == "binary_size":
        binary = [x for x in entries if x["binary"]] or [e]
        target = data.draw(st.sampled_from(binary), label="target")
        target["binary"] = True
        size_delta = {target["name"]: data.draw(st.sampled_from([-8, -4, -1, 1, 4, 8, 1000]), label="delta")}
    elif kind == "header_length":
        body, headers = _serialize(entries)
        hlen = data.draw(st.sampled_from(["0", "-5", "abc", str(len(body) + 1), str(len(body) * 3), "1", "2"]), label="h")
        return model, body, {"Inference-Header-Content-Length": hlen}
    elif kind == "extra_input":
        entries.append({**e, "name": data.draw(st.sampled_from(["y", "X", "adjacency", "edge_attr" if not ef else "z"]), label="n")})
    elif kind == "duplicate":
        entries.append(dict(e))
    elif kind == "bad_output":
        extra = {"outputs": data.draw(st.sampled_from([[{"name": "nope"}], [{"name": "prediction"}, {"name": "prediction"}],
                                                       [{"nam": "x"}], "all", [{"name": "prediction", "parameters": {"binary_data": "yes"}}],
                                                       [{"name": "prediction", "parameters": {"classification": 2}}]]), label="o")}
    elif kind == "bad_param":
        extra = data.draw(st.sampled_from([{"parameters": {"timeout": -1}}, {"parameters": {"timeout": "soon"}},
                                           {"parameters": {"binary_data_output": "yes"}}, {"parameters": [1]},
                                           {"id": 5}, {"parameters": {"timeout": 1.5}}, {"parameters": {"x": [1]}}]), label="p")
    elif kind == "crossing":
        counts = by_name["graph_node_counts"]["array"]
        if counts.size < 2:
            extra_graph = random_graphs(rng, 1, max_nodes=4, edge_features=ef)
            graphs = graphs + extra_graph
            entries = _entries(graphs, ef, [x["binary"] for x in entries])
            by_name = {x["name"]: x for x in entries}
        ei = by_name["edge_index"]
        first = int(by_name["graph_node_counts"]["array"][0])
        ei["array"] = np.concatenate([ei["array"], np.array([[0], [first]], np.int64)], axis=1)  # graph 0 -> graph 1
        ei["shape"] = list(ei["array"].shape)
        if ef:
            ea = by_name["edge_attr"]
            ea["array"] = np.concatenate([ea["array"], np.zeros((1, ef), np.float32)])
            ea["shape"] = list(ea["array"].shape)
    elif kind == "data_length":
        e["binary"] = False
        e["array"] = np.concatenate([e["array"].reshape(-1), np.zeros(data.draw(st.integers(1, 3), label="k"), e["array"].dtype)])
    elif kind == "float_ints":
        target = by_name[data.draw(st.sampled_from(["edge_index", "node_graph", "graph_node_counts"]), label="t")]
        target["binary"] = False
        body, headers = _serialize(entries)
        header = json.loads(body[: int(headers["Inference-Header-Content-Length"])] if headers else body)
        for item in header["inputs"]:
            if item["name"] == target["name"]:
                item["data"] = [v + 0.5 for v in item["data"]] or [0.5]
        return model, _rebuild(header, body, headers), headers_for(header, body, headers)
    elif kind == "empty_counts":
        for name in ("graph_node_counts",):
            by_name[name]["array"] = np.zeros(0, np.int64)
            by_name[name]["shape"] = [0]
    elif kind == "corrupt_gzip":
        body, headers = _serialize(entries)
        return model, gzip.compress(body)[: data.draw(st.integers(1, 30), label="cut")] + b"\xff" * 4, {
            **headers, "Content-Encoding": data.draw(st.sampled_from(["gzip", "deflate"]), label="enc")}
    body, headers = _serialize(entries, size_delta, extra)
    return model, body, headers


def _rebuild(header: dict, body: bytes, headers: dict) -> bytes:
    if not headers:
        return json.dumps(header).encode()
    return json.dumps(header).encode() + body[int(headers["Inference-Header-Content-Length"]):]


def headers_for(header: dict, body: bytes, headers: dict) -> dict:
    return {"Inference-Header-Content-Length": str(len(json.dumps(header).encode()))} if headers else {}


def test_malformed_requests_are_4xx(server, models):
    """>= 1,000 generated malformed requests: all 4xx with a JSON error; the server stays healthy."""
    from http.client import HTTPConnection

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    class _HST:
        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
            lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
            max_leaves=12,
        )

    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    seen: dict[str, int] = {}

    @settings(max_examples=1100, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(data=st.data())
    def run(data) -> None:
        model, body, headers = _malformed(data, _HST)
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        assert 400 <= response.status < 500, (response.status, payload[:300])
        assert "error" in json.loads(payload)
        seen[str(response.status)] = seen.get(str(response.status), 0) + 1

    run()
    conn.close()
    assert sum(seen.values()) >= 1000, seen
    assert http(server, "GET", "/v2/health/ready")[0] == 200
    graphs = random_graphs(np.random.default_rng(17), 3)
    status, _, data = http(server, "POST", "/v2/models/gnn/infer", v2_json_body(batch_tensors(graphs)))
    assert status == 200
    assert_outputs_match(decode_v2_response(data, None)[1], expected_layout(models["gnn"], graphs), "after fuzzing")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_event_loop_choice(repo, tmp_path, models, monkeypatch, loop):
    """uvloop by default where installed; EDGEMP_EVENT_LOOP=asyncio opts out; same answers either way."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    monkeypatch.setenv("EDGEMP_EVENT_LOOP", loop)
    srv = start_server(repo / "gnn" / "model.onnx", tmp_path, "--name", "gnn")
    try:
        graphs = random_graphs(np.random.default_rng(30), 2)
        status, _, data = http(srv, "POST", "/v2/models/gnn/infer", v2_json_body(batch_tensors(graphs)))
        assert status == 200
        assert_outputs_match(decode_v2_response(data, None)[1], expected_layout(models["gnn"], graphs), loop)
    finally:
        assert srv.stop() == 0
    assert f"event loop: {loop}" in srv.log()


def test_serve_start_path_skips_what_ready_does_not_need():
    """Start-up imports neither prometheus_client (first scrape) nor grpc (only with --grpc-port), and
    skipping aiohttp's client CA loading leaves the CA settings as they were for everything after."""
    code = (
        "import os, ssl, sys\n"
        "os.environ['SSL_CERT_FILE'] = ssl.get_default_verify_paths().openssl_cafile\n"
        "os.environ.pop('SSL_CERT_DIR', None)\n"
        "before = dict(os.environ)\n"
        "from edgemp.cli.serve import _import_server_fast\n"
        "_import_server_fast()\n"
        "import edgemp.runtime.server, edgemp.runtime.server.run\n"
        "assert dict(os.environ) == before, 'CA environment not restored'\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert not loaded & {'prometheus_client', 'grpc', 'torch'}, loaded & {'prometheus_client', 'grpc', 'torch'}\n"
        "assert 'aiohttp' in loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
