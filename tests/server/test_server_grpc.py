"""KServe V2 over gRPC: the real ``edgemp serve --grpc-port`` driven by stock ``tritonclient.grpc``.

Every answer is compared with the in-process ``Model.predict``; errors must carry the gRPC
status a Triton client expects (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, UNAVAILABLE,
RESOURCE_EXHAUSTED), and >= 1,000 generated malformed requests must all be refused cleanly.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

grpc = pytest.importorskip("grpc")
tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from edgemp.runtime.model import load  # noqa: E402
from edgemp.runtime.server import grpc_proto as pb  # noqa: E402
from runtime_fixtures import build_sparse_model, random_graph, random_graphs  # noqa: E402
from server_utils import (  # noqa: E402
    assert_outputs_match,
    batch_tensors,
    expected_layout,
    free_port,
    start_server,
    triton_grpc_inputs,
)

EF = 3
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpc_repo")
    (root / "gnn").mkdir()
    build_sparse_model(root / "gnn" / "model.onnx")
    (root / "gnn_edge").mkdir()
    build_sparse_model(root / "gnn_edge" / "model.onnx", edge_features=EF, seed=3)
    return root


@pytest.fixture(scope="module")
def models(repo):
    out = {"gnn": load(repo / "gnn" / "model.onnx"), "gnn_edge": load(repo / "gnn_edge" / "model.onnx")}
    yield out
    for m in out.values():
        m.close()


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    gport = free_port()
    srv = start_server(repo, tmp_path_factory.mktemp("glog"), "--grpc-port", str(gport), "--max-body-bytes",
                       str(1 << 20))
    srv.grpc_port = gport  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]
    assert "Traceback" not in srv.log(), srv.log()[-5000:]


@pytest.fixture()
def client(server):
    c = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()




def test_schema_matches_tritonclients_proto():
    """Every field edgemp declares has Triton's number, type and repetition (recursively)."""
    from tritonclient.grpc import service_pb2

    def check(mine, theirs, path: str) -> None:
        for f in mine.fields:
            t = theirs.fields_by_number.get(f.number)
            assert t is not None, f"{path}.{f.name}: field {f.number} is not in Triton's proto"
            assert (f.name, f.type, f.is_repeated) == (t.name, t.type, t.is_repeated), f"{path}.{f.name}"
            if f.message_type is not None:
                check(f.message_type, t.message_type, f"{path}.{f.name}")
            if f.enum_type is not None:
                assert {v.name: v.number for v in f.enum_type.values} == \
                       {v.name: v.number for v in t.enum_type.values if v.name in f.enum_type.values_by_name}

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for rpc, (req, resp) in pb.RPCS.items():
        method = service.methods_by_name[rpc]
        check(pb.CLASSES[req].DESCRIPTOR, method.input_type, req)
        check(pb.CLASSES[resp].DESCRIPTOR, method.output_type, resp)


def test_health_metadata_config_and_stats(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("gnn") and client.is_model_ready("gnn_edge", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("gnn", "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "edgemp" and "statistics" in meta["extensions"]
    m = client.get_model_metadata("gnn_edge", as_json=True)
    assert {i["name"]: i["shape"] for i in m["inputs"]}["edge_attr"] == ["-1", str(EF)]
    cfg = client.get_model_config("gnn", as_json=True)["config"]
    assert cfg["platform"] == "onnxruntime_onnx" and "dynamic_batching" in cfg
    assert [i["data_type"] for i in cfg["input"]][:2] == ["TYPE_FP32", "TYPE_INT64"]
    client.infer("gnn", triton_grpc_inputs(batch_tensors(random_graphs(np.random.default_rng(1), 2))))
    stats = client.get_inference_statistics("gnn", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 2 and int(stats["inference_stats"]["success"]["count"]) >= 1
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert [s["name"] for s in everything] == ["gnn", "gnn_edge"]
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("name", ["gnn", "gnn_edge"])
def test_infer_matches_in_process(client, models, name):
    rng = np.random.default_rng(2)
    ef = EF if name == "gnn_edge" else 0
    for count in (1, 3, 7):
        graphs = random_graphs(rng, count, edge_features=ef)
        want = expected_layout(models[name], graphs)
        result = client.infer(name, triton_grpc_inputs(batch_tensors(graphs, ef)), request_id=f"r{count}")
        assert result.get_response().id == f"r{count}"
        assert_outputs_match({k: result.as_numpy(k) for k in want}, want, f"{name} x{count}")
    # a subset of outputs, in the client's order (raw_output_contents follow the request)
    graphs = random_graphs(rng, 2, edge_features=ef)
    want = expected_layout(models[name], graphs)
    outs = [tg.InferRequestedOutput("node_out"), tg.InferRequestedOutput("prediction")]
    result = client.infer(name, triton_grpc_inputs(batch_tensors(graphs, ef)), outputs=outs)
    assert [o.name for o in result.get_response().outputs] == ["node_out", "prediction"]
    assert_outputs_match({k: result.as_numpy(k) for k in want}, want, "reordered outputs")


def test_aio_client_concurrent(server, models):
    import asyncio

    import tritonclient.grpc.aio as tga

    rng = np.random.default_rng(3)
    requests = [random_graphs(rng, int(rng.integers(1, 4))) for _ in range(40)]

    async def main() -> list:
        c = tga.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            return await asyncio.gather(*(c.infer("gnn", triton_grpc_inputs(batch_tensors(g)), request_id=str(i))
                                          for i, g in enumerate(requests)))
        finally:
            await c.close()

    for i, result in enumerate(asyncio.run(main())):
        assert result.get_response().id == str(i)
        want = expected_layout(models["gnn"], requests[i])
        assert_outputs_match({k: result.as_numpy(k) for k in want}, want, f"request {i}")


def _status(fn) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.status()


def test_errors_have_grpc_statuses(client, server):
    graphs = random_graphs(np.random.default_rng(4), 2)
    t = batch_tensors(graphs)
    assert _status(lambda: client.infer("gnn", triton_grpc_inputs({k: t[k] for k in ("x", "edge_index")}))) == \
        "StatusCode.INVALID_ARGUMENT"
    bad = dict(t, graph_node_counts=np.array([2**63 - 1, 2**63 - 1, 3], np.int64))
    assert _status(lambda: client.infer("gnn", triton_grpc_inputs(bad))) == "StatusCode.INVALID_ARGUMENT"
    assert _status(lambda: client.infer("nope", triton_grpc_inputs(t))) == "StatusCode.NOT_FOUND"
    assert _status(lambda: client.infer("gnn", triton_grpc_inputs(t), outputs=[tg.InferRequestedOutput("nope")])) == \
        "StatusCode.INVALID_ARGUMENT"
    huge = dict(t, x=np.zeros((60_000, 5), np.float32))  # 1.2 MB > the 1 MiB limit
    assert _status(lambda: client.infer("gnn", triton_grpc_inputs(huge))) == "StatusCode.RESOURCE_EXHAUSTED"
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(INFER)(b"\xff\xff\xff not a protobuf")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest" in e.value.details()
    channel.close()
    assert client.is_server_ready()


def test_auth_queue_full_and_drain(repo, tmp_path, models):
    gport = free_port()
    srv = start_server(repo / "gnn" / "model.onnx", tmp_path, "--name", "g", "--grpc-port", str(gport),
                       "--max-queue-delay-us", "400000", "--max-queue-size", "1", "--max-batch-graphs", "8",
                       token="s3cret")
    try:
        c = tg.InferenceServerClient(f"127.0.0.1:{gport}")
        assert c.is_server_live() and c.is_server_ready()  # health stays open, as over HTTP
        assert _status(lambda: c.get_model_metadata("g")) == "StatusCode.UNAUTHENTICATED"
        assert _status(lambda: c.get_model_metadata("g", headers={"authorization": "Bearer wrong"})) == \
            "StatusCode.UNAUTHENTICATED"
        assert _status(lambda: c.get_model_metadata("g", headers={"authorization": "Bearer S3CRET"})) == \
            "StatusCode.UNAUTHENTICATED"
        assert c.get_model_metadata("g", headers={"authorization": "bearer s3cret"}).name == "g"  # any case of the scheme
        metadata_rpc = grpc.insecure_channel(f"127.0.0.1:{gport}").unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata")
        request = pb.CLASSES["ModelMetadataRequest"](name="g").SerializeToString()
        for first, second in (("Bearer wrong", "Bearer s3cret"), ("Bearer s3cret", "Bearer wrong")):
            with pytest.raises(grpc.RpcError) as e:  # two credentials: neither counts, as over HTTP
                metadata_rpc(request, metadata=[("authorization", first), ("authorization", second)])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(InferenceServerException) as e:  # an unsupported call is answered only with the token
            c.load_model("g")
        assert str(e.value.status()) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as e:
            c.load_model("g", headers={"authorization": "Bearer s3cret"})
        assert str(e.value.status()) == "StatusCode.UNIMPLEMENTED"
        auth = {"authorization": "Bearer s3cret"}
        graphs = random_graphs(np.random.default_rng(5), 1)
        inputs = triton_grpc_inputs(batch_tensors(graphs))
        first: list = []
        t = threading.Thread(target=lambda: first.append(c.infer("g", inputs, headers=auth)))
        t.start()
        time.sleep(0.15)  # the first request waits in the queue for a fuller batch
        assert _status(lambda: c.infer("g", inputs, headers=auth)) == "StatusCode.UNAVAILABLE"
        t.join(10)
        assert_outputs_match({"prediction": first[0].as_numpy("prediction"), "node_out": first[0].as_numpy("node_out")},
                             expected_layout(models["gnn"], graphs), "queued request")
        # SIGTERM while one is queued: it is answered, new ones are refused, exit 0
        second: list = []
        t = threading.Thread(target=lambda: second.append(c.infer("g", inputs, headers=auth)))
        t.start()
        time.sleep(0.15)
        srv.proc.terminate()
        t.join(10)
        assert second and second[0].as_numpy("prediction").shape == (1, 1)
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
    assert "'g': 2 request(s) succeeded" in srv.log(), srv.log()[-2000:]


def test_a_known_description_still_checks_every_call(server, models):
    """Calls that repeat a description (same inputs, shapes, outputs) take its plan: each still
    gets its own id and answer, and bad sizes or values get the full decode's error."""
    rng = np.random.default_rng(11)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    infer = channel.unary_unary(INFER)
    try:
        graphs = [random_graph(rng, 6, 8)]
        n = 6
        for k in range(6):  # the first decodes in full and keeps the plan; the rest take it
            g = [random_graph_like(rng, graphs[0])]
            answer = pb.ModelInferResponse.FromString(infer(pb.infer_request_bytes("gnn", batch_tensors(g), f"id{k}")))
            assert answer.id == f"id{k}"
            got = {o.name: np.frombuffer(raw, np.float32).reshape(tuple(o.shape))
                   for o, raw in zip(answer.outputs, answer.raw_output_contents)}
            assert_outputs_match(got, expected_layout(models["gnn"], g), f"call {k}")
        t = batch_tensors(graphs)
        short = pb.ModelInferRequest.FromString(pb.infer_request_bytes("gnn", t))
        short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
        bad_values = [dict(t, node_graph=np.full(n, 3, np.int64)),
                      dict(t, edge_index=np.full_like(t["edge_index"], n)),
                      dict(t, graph_node_counts=np.array([n + 1], np.int64))]
        for what, wire in [("short raw contents", short.SerializeToString())] + [
                (f"bad values {i}", pb.infer_request_bytes("gnn", b)) for i, b in enumerate(bad_values)]:
            with pytest.raises(grpc.RpcError) as e:
                infer(wire)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, e.value.details())
            assert e.value.details(), what
    finally:
        channel.close()


def random_graph_like(rng: np.random.Generator, g):
    """A graph with ``g``'s node and edge counts (so the same request description) and other values."""
    from edgemp.graph import Graph

    return Graph(x=rng.standard_normal(g.x.shape).astype(np.float32),
                 edge_index=rng.integers(0, len(g.x), g.edge_index.shape).astype(np.int64))


def _mutations(t: dict[str, np.ndarray]) -> list:
    """Callables that turn a valid request into a malformed one (model name, message)."""
    return [
        lambda r, d: (r.inputs[d.draw(st.integers(0, len(r.inputs) - 1))].__setattr__(
            "datatype", d.draw(st.sampled_from(["FP64", "INT32", "", "fp32", "BYTES", "nope"])))),
        lambda r, d: r.inputs[d.draw(st.integers(0, len(r.inputs) - 1))].shape.append(d.draw(st.integers(0, 3))),
        lambda r, d: r.inputs[d.draw(st.integers(0, len(r.inputs) - 1))].shape.__setitem__(
            0, d.draw(st.sampled_from([-1, -7, 0, 2**40, 2**62]))),
        lambda r, d: r.raw_input_contents.__setitem__(  # index the contents: an earlier mutation may add inputs
            d.draw(st.integers(0, len(r.raw_input_contents) - 1)), d.draw(st.binary(max_size=40))),
        lambda r, d: r.raw_input_contents.append(b"\0" * 8),
        lambda r, d: r.inputs.__delitem__(d.draw(st.integers(0, len(r.inputs) - 1))),
        lambda r, d: r.inputs.add(name=d.draw(st.sampled_from(["y", "x", "adjacency"])), datatype="FP32", shape=[1]),
        lambda r, d: r.outputs.add(name=d.draw(st.sampled_from(["nope", ""]))),
        lambda r, d: r.parameters[d.draw(st.sampled_from(["timeout", "x"]))].__setattr__(
            "string_param", d.draw(st.text(max_size=5))) if d.draw(st.booleans()) else
        r.parameters["timeout"].__setattr__("int64_param", d.draw(st.integers(-(2**63), -1))),
        lambda r, d: _set_raw(r, "graph_node_counts", np.array(
            d.draw(st.lists(st.sampled_from([0, -1, 2**63 - 1, 100]), min_size=1, max_size=3)), np.int64)),
        lambda r, d: _set_raw(r, "edge_index", np.array([[0], [d.draw(st.sampled_from([10**6, -1, 2**62]))]], np.int64)),
        lambda r, d: _set_raw(r, "x", np.full((int(t["x"].shape[0]), 5), np.nan, np.float32)),
        lambda r, d: _set_raw(r, "node_graph", np.full(int(t["x"].shape[0]), d.draw(st.integers(1, 9)), np.int64)),
        lambda r, d: r.__setattr__("model_version", d.draw(st.sampled_from(["2", "x"]))),
    ]


def _set_raw(req, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(req.inputs):
        if t.name == name and i < len(req.raw_input_contents):  # an earlier mutation may have added inputs
            del t.shape[:]
            t.shape.extend(value.shape)
            req.raw_input_contents[i] = value.tobytes()
            return


try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None


def test_malformed_requests_are_invalid_argument(server, models):
    """>= 1,000 generated malformed ModelInferRequests: every one refused with a clear status."""
    from hypothesis import HealthCheck, given, settings

    rng = np.random.default_rng(6)
    bases = [batch_tensors(random_graphs(rng, int(rng.integers(1, 4)), max_nodes=6)) for _ in range(8)]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    infer = channel.unary_unary(INFER)
    seen: dict[str, int] = {}

    @settings(max_examples=1200, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def run(data) -> None:
        t = data.draw(st.sampled_from(bases))
        req = pb.ModelInferRequest.FromString(pb.infer_request_bytes("gnn", t))
        for _ in range(data.draw(st.integers(1, 2))):
            data.draw(st.sampled_from(_mutations(t)))(req, data)
        wire = req.SerializeToString()
        if data.draw(st.integers(0, 20)) == 0:
            wire = data.draw(st.binary(max_size=64))
        try:
            infer(wire, timeout=120)
        except grpc.RpcError as e:
            code = e.code()
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (code, e.details())
            assert e.details()
            seen[code.name] = seen.get(code.name, 0) + 1
            return
        seen["ok"] = seen.get("ok", 0) + 1  # a mutation that kept the request valid (e.g. shape[0]=0 twice)

    run()
    channel.close()
    assert sum(v for k, v in seen.items() if k != "ok") >= 1000, seen
    c = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    graphs = random_graphs(np.random.default_rng(7), 3)
    result = c.infer("gnn", triton_grpc_inputs(batch_tensors(graphs)))
    want = expected_layout(models["gnn"], graphs)
    assert_outputs_match({k: result.as_numpy(k) for k in want}, want, "after fuzzing")


def test_bench_over_grpc_reports_its_ceiling(server, tmp_path):
    """`edgemp bench --protocol grpc` drives ModelInfer and reports the client's own ceiling."""
    import json

    from click.testing import CliRunner

    from edgemp.cli.main import cli

    out = tmp_path / "g.json"
    res = CliRunner().invoke(cli, [
        "bench", "--url", server.base, "--grpc-url", f"127.0.0.1:{server.grpc_port}", "--model", "gnn",
        "--protocol", "grpc", "--concurrency", "1,4", "--duration", "0.5", "--warmup-time", "0.2",
        "--synthetic", "nodes=6,edges=10,graphs=4", "--json", str(out), "--quiet",
    ])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["results"]
    assert [r["load"] for r in rows] == ["c=1", "c=4"]
    for r in rows:
        assert r["status"] == "ok" and r["errors"] == 0 and r["successes"] > 5
        assert r["client_ceiling_rps"] > 0 and isinstance(r["client_bound"], bool)
        assert r["server"]["success_count"] >= r["successes"]
    res = CliRunner().invoke(cli, ["bench", "--url", server.base, "--grpc-url", f"127.0.0.1:{server.grpc_port}",
                                   "--model", "nope", "--protocol", "grpc", "--duration", "0.5"])
    assert res.exit_code == 1 and res.output.startswith("error: ")


def test_bytes_inputs_decode_from_raw_and_typed_contents():
    """A text model's BYTES input, as tritonclient.grpc sends it (raw, length-prefixed) or typed."""
    from edgemp.runtime.server.grpc_service import decode_request
    from edgemp.runtime.server.protocol import ProtocolError

    texts = [b"hello", "naïve café".encode(), b""]
    raw = b"".join(len(t).to_bytes(4, "little") + t for t in texts)
    req = pb.ModelInferRequest(model_name="tiny")
    req.inputs.add(name="text", datatype="BYTES", shape=[3])
    req.raw_input_contents.append(raw)
    assert decode_request(req, {"text": "BYTES"}).inputs["text"].tolist() == texts
    typed = pb.ModelInferRequest(model_name="tiny")
    t = typed.inputs.add(name="text", datatype="BYTES", shape=[3, 1])
    t.contents.bytes_contents.extend(texts)
    assert decode_request(typed, {"text": "BYTES"}).inputs["text"].reshape(-1).tolist() == texts
    req.raw_input_contents[0] = raw[:-3]
    with pytest.raises(ProtocolError, match="runs past its raw_input_contents"):
        decode_request(req, {"text": "BYTES"})


def test_every_triton_extension_call_is_served_or_names_what_is_unsupported(server, models):
    """Stock tritonclient has a method for each Triton extension; each either works or says, on
    both protocols, what edgemp does not do and what to do instead (not a bare 404 or 'unknown method')."""
    th = pytest.importorskip("tritonclient.http")
    hc, gc = th.InferenceServerClient(server.url), tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    want = [{"name": n, "version": "1", "state": "READY", "reason": ""} for n in ("gnn", "gnn_edge")]
    assert hc.get_model_repository_index() == want
    assert [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in gc.get_model_repository_index().models] == want

    def refused(call) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as e:
            call()
        return str(e.value.status()), e.value.message()

    cases = [
        ("load and unload are not supported", lambda c: c.load_model("gnn")),
        ("load and unload are not supported", lambda c: c.unload_model("gnn")),
        ("trace settings are not supported", lambda c: c.get_trace_settings()),
        ("trace settings are not supported", lambda c: c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})),
        ("log settings are not supported", lambda c: c.get_log_settings()),
        ("shared memory is not supported", lambda c: c.get_system_shared_memory_status()),
        ("shared memory is not supported", lambda c: c.register_system_shared_memory("r0", "/r0", 64)),
        ("shared memory is not supported", lambda c: c.unregister_cuda_shared_memory()),
    ]
    for text, call in cases:
        status, message = refused(lambda: call(hc))
        assert status == "400" and text in message, (status, message)
        status, message = refused(lambda: call(gc))
        assert status == "StatusCode.UNIMPLEMENTED" and text in message, (status, message)

    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for body, status in ((b'{"ready": true}', 200), (b'{"ready": false}', 200), (b"{}", 200), (b"", 200),
                         (b"[1]", 400), (b'{"ready": "yes"}', 400), (b"not json", 400)):
        conn.request("POST", "/v2/repository/index", body=body)
        answer = conn.getresponse()
        data = answer.read()
        assert answer.status == status, (body, data)
        if status == 200:
            assert [m["name"] for m in json.loads(data)] == ["gnn", "gnn_edge"]
        else:
            assert "repository index body" in json.loads(data)["error"], data
    for method, path, allowed in (("GET", "/v2/repository/models/gnn/load", "POST"),
                                  ("POST", "/v2/systemsharedmemory/status", "GET"),
                                  ("DELETE", "/v2/repository/index", "POST")):
        conn.request(method, path)
        answer = conn.getresponse()
        answer.read()
        assert answer.status == 405 and allowed in answer.getheader("Allow", ""), (path, answer.getheaders())
    for path in ("/v2/repository/other/index", "/v2/repository/other/models/gnn/load"):  # Triton's named-repository forms
        conn.request("POST", path, body=b"{}")
        answer = conn.getresponse()
        data = json.loads(answer.read())
        assert answer.status == 400 and "'repository_name' specification is not supported" in data["error"], data
    conn.close()
    from tritonclient.grpc import service_pb2

    import grpc

    for named in ("other", "x" * 5000):  # Triton refuses a repository name rather than answer for the one it has
        with pytest.raises(grpc.RpcError) as e:
            gc._client_stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(repository_name=named), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED, e.value
        assert "'repository_name' specification is not supported" in e.value.details(), e.value.details()
    assert len(gc.get_model_repository_index().models) == 2  # the call without one still answers

    graphs = random_graphs(np.random.default_rng(21), 2)
    tensors = batch_tensors(graphs)
    for client, mod, status in ((hc, th, "400"), (gc, tg, "StatusCode.INVALID_ARGUMENT")):
        inputs = [mod.InferInput(n, list(v.shape), "FP32" if v.dtype == np.float32 else "INT64")
                  for n, v in tensors.items()]
        for inp, value in zip(inputs, tensors.values()):
            inp.set_data_from_numpy(value)
        inputs[0].set_shared_memory("r0", tensors["x"].nbytes)  # x named a region instead of carrying data
        got, message = refused(lambda: client.infer("gnn", inputs))
        assert got == status and "shared memory is not supported" in message and "'x'" in message, message
    result = gc.infer("gnn", triton_grpc_inputs(tensors))  # and the connection serves on
    assert_outputs_match({"prediction": result.as_numpy("prediction"), "node_out": result.as_numpy("node_out")},
                         expected_layout(models["gnn"], graphs), "after the refusals")
