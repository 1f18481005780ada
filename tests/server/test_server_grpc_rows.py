"""gRPC ModelInfer calls as rows (runtime/server/grpc_rows.py), driven by stock ``tritonclient.grpc``:
each call still gets exactly its own answer, its own error (the request core's), or the core's
path when a row cannot carry it (an id, a deadline); drains and vanished clients lose nothing.

Many clients each make calls one at a time on plans seen before (same graph sizes): after the
first, such calls are rows. Every answer is checked against the model run in process; the
server's count of row answers shows the rows were taken.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

from edgemp.bench.local_server import free_port  # noqa: E402
from edgemp.graph import Graph  # noqa: E402
from edgemp.runtime.batcher import BatcherConfig  # noqa: E402
from edgemp.runtime.model import load  # noqa: E402
from edgemp.runtime.server import ServerConfig  # noqa: E402
from edgemp.runtime.server import grpc_proto as pb  # noqa: E402
from edgemp.runtime.server.state import STATE  # noqa: E402
from hardening_utils import EF, build_repo, start_thread_server  # noqa: E402
from runtime_fixtures import random_graph  # noqa: E402
from server_utils import (  # noqa: E402
    assert_outputs_match,
    at_once,
    batch_tensors,
    decode_v2_response,
    expected_layout,
    read_response,
    same_size,
    triton_grpc_inputs,
    v2_binary_body,
    wire,
)

CLIENTS = 12


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("grpc_rows_repo"))


def _server(repo: Path, batcher: BatcherConfig | None = None):
    gport = free_port()
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, grpc_port=gport), batcher, uvloop=True)
    srv.grpc_port = gport  # type: ignore[attr-defined]
    return srv


def _tensors(graph: Graph, edit=None) -> dict[str, np.ndarray]:
    ef = 0 if graph.edge_attr is None else graph.edge_attr.shape[1]
    tensors = {name: value.copy() for name, value in batch_tensors([graph], ef).items()}
    if edit is not None:
        edit(tensors)
    return tensors


def _calls(port: int, calls: list[list[dict]]) -> list[list]:
    """One stock client per list, all at once, each making its calls one at a time; per call the
    result (a name -> array dict) or the InferenceServerException."""

    def client(i: int) -> list:
        c, got = tg.InferenceServerClient(f"127.0.0.1:{port}"), []
        try:
            for call in calls[i]:
                try:
                    r = c.infer(call["model"], triton_grpc_inputs(call["tensors"]),
                                **{k: v for k, v in call.items() if k not in ("model", "tensors")})
                    got.append({o.name: r.as_numpy(o.name) for o in r.get_response().outputs}
                               | {"@id": r.get_response().id})
                except InferenceServerException as e:
                    got.append(e)
        finally:
            c.close()
        return got

    return at_once(len(calls), client)


def _check(answer, model, graph: Graph, where: str) -> None:
    assert isinstance(answer, dict), f"{where}: {answer}"
    assert_outputs_match({k: v for k, v in answer.items() if k != "@id"}, expected_layout(model, [graph]), where)


@pytest.mark.parametrize("model", ["gnn", "gnn_edge"])
def test_grpc_rows_answer_each_call_with_its_own_outputs(repo, model):
    """Graph- and node-level outputs, with and without edge features, three message descriptions
    in the same turns: every row's answer is its own graph's, as the model gives it alone."""
    srv = _server(repo)
    rng = np.random.default_rng(11)
    ef = EF if model == "gnn_edge" else 0
    bases = [random_graph(rng, n, e, ef) for n, e in ((5, 8), (9, 14), (2, 2))]
    graphs = [[same_size(rng, bases[(i + r) % 3]) for r in range(6)] for i in range(CLIENTS)]
    try:
        answers = _calls(srv.grpc_port, [[{"model": model, "tensors": _tensors(g)} for g in row] for row in graphs])
        served = srv.app[STATE].models[model]
    finally:
        srv.close()
    with load(repo / model / "model.onnx") as m:
        for i in range(CLIENTS):
            for r, answer in enumerate(answers[i]):
                _check(answer, m, graphs[i][r], f"client {i} call {r}")
    assert served.rows_answered > CLIENTS, served.rows_answered  # most were rows, not the request core's
    stats = served.stats.to_json(model, "1")
    assert stats["inference_stats"]["success"]["count"] == CLIENTS * 6
    assert stats["inference_count"] == CLIENTS * 6


def test_grpc_and_http_rows_batch_together(repo):
    """Rows of both protocols in the same turns (each its own list, one batcher): every answer
    is its own, in its own protocol's bytes."""
    srv = _server(repo, BatcherConfig(max_queue_delay_us=2_000))
    rng = np.random.default_rng(12)
    base = random_graph(rng, 6, 9)
    grpc_graphs = [[same_size(rng, base) for _ in range(5)] for _ in range(6)]
    http_graphs = [[same_size(rng, base) for _ in range(5)] for _ in range(6)]
    http_answers: list = [None] * 6

    def http_client(i: int) -> None:
        sock, buf, got = socket.create_connection(("127.0.0.1", srv.port), timeout=30), bytearray(), []
        for g in http_graphs[i]:
            body, header_length = v2_binary_body(_tensors(g))
            sock.sendall(wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": str(header_length)}))
            got.append(read_response(sock, buf))
        sock.close()
        http_answers[i] = got

    try:
        threads = [threading.Thread(target=http_client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        grpc_answers = _calls(srv.grpc_port, [[{"model": "gnn", "tensors": _tensors(g)} for g in row]
                                              for row in grpc_graphs])
        for t in threads:
            t.join(60)
        served = srv.app[STATE].models["gnn"]
    finally:
        srv.close()
    with load(repo / "gnn" / "model.onnx") as m:
        for i in range(6):
            for r in range(5):
                _check(grpc_answers[i][r], m, grpc_graphs[i][r], f"gRPC client {i} call {r}")
                status, headers, body = http_answers[i][r]
                assert status == 200, body[:200]
                _, outputs = decode_v2_response(body, headers.get("inference-header-content-length"))
                assert_outputs_match(outputs, expected_layout(m, [http_graphs[i][r]]), f"HTTP client {i} request {r}")
    assert served.rows_answered > 12, served.rows_answered
    assert served.stats.to_json("gnn", "1")["inference_stats"]["success"]["count"] == 60


def test_a_malformed_grpc_row_gets_the_cores_error_and_the_others_their_answers(repo):
    """On a plan seen before: a node_graph entry that is not 0 (refused before it is a row) and an
    edge to a node the graph lacks (found when its batch is checked) get INVALID_ARGUMENT with the
    core's message; the calls batched with them get their answers."""
    srv = _server(repo, BatcherConfig(max_queue_delay_us=20_000))
    rng = np.random.default_rng(13)
    base = random_graph(rng, 6, 10)
    graphs = [same_size(rng, base) for _ in range(CLIENTS)]

    def far_edge(tensors):
        tensors["edge_index"][0, 0] = 10_000

    def stray(tensors):
        tensors["node_graph"][2] = 1

    calls = [[{"model": "gnn", "tensors": _tensors(same_size(rng, base))},
              {"model": "gnn", "tensors": _tensors(graphs[i], far_edge if i == 3 else stray if i == 5 else None)}]
             for i in range(CLIENTS)]
    try:
        answers = _calls(srv.grpc_port, calls)
        served = srv.app[STATE].models["gnn"]
    finally:
        srv.close()
    with load(repo / "gnn" / "model.onnx") as m:
        for i in range(CLIENTS):
            answer = answers[i][1]
            if i in (3, 5):
                assert isinstance(answer, InferenceServerException), answer
                assert answer.status() == "StatusCode.INVALID_ARGUMENT", answer
                assert ("10000" in answer.message()) if i == 3 else ("node_graph[2]" in answer.message()), answer
                continue
            _check(answer, m, graphs[i], f"client {i}")
    assert served.rows_answered >= CLIENTS - 2, served.rows_answered


def test_calls_with_an_id_or_a_deadline_take_the_core(repo):
    """A row's answer is its plan's bytes: a call with an id (echoed) or a grpc-timeout (the core
    enforces it) is never a row, and gets its id and its answer."""
    srv = _server(repo)
    rng = np.random.default_rng(14)
    base = random_graph(rng, 7, 12)
    graphs = [same_size(rng, base) for _ in range(4)]
    try:
        warm = _calls(srv.grpc_port, [[{"model": "gnn", "tensors": _tensors(same_size(rng, base))}] * 3])
        served = srv.app[STATE].models["gnn"]
        before = served.rows_answered
        answers = _calls(srv.grpc_port, [[
            {"model": "gnn", "tensors": _tensors(graphs[0]), "request_id": "call-0"},
            {"model": "gnn", "tensors": _tensors(graphs[1]), "client_timeout": 30.0},
            {"model": "gnn", "tensors": _tensors(graphs[2]), "request_id": "call-2", "client_timeout": 30.0},
            {"model": "gnn", "tensors": _tensors(graphs[3])},
        ]])[0]
        after = served.rows_answered
    finally:
        srv.close()
    assert all(isinstance(a, dict) for a in warm[0]) and before >= 1
    with load(repo / "gnn" / "model.onnx") as m:
        for k, answer in enumerate(answers):
            _check(answer, m, graphs[k], f"call {k}")
    assert [a["@id"] for a in answers] == ["call-0", "", "call-2", ""]
    assert after == before + 1  # only the last call, with neither, was a row


def _raw_call(port: int, message: bytes, then: bytes = b"") -> socket.socket:
    """Preface, settings, and one ModelInfer call on a fresh connection, then ``then`` in the same
    write; the socket, unread."""
    from edgemp.runtime.server.h2 import frames as f

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    block = b"\x83\x86" + b"".join(f.literal(n, v) for n, v in (
        (b":path", b"/inference.GRPCInferenceService/ModelInfer"), (b":authority", b"t"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))
    sock.sendall(f.PREFACE + f.frame(f.SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 20))
                 + f.frame(f.HEADERS, f.END_HEADERS, 1, block)
                 + f.frame(f.DATA, f.END_STREAM, 1, b"\x00" + len(message).to_bytes(4, "big") + message) + then)
    return sock


def test_rows_of_vanished_clients_and_a_drain_lose_nothing(repo):
    """Rows wait in a batch held by its queue delay; some of their clients go away, then the
    server drains: the rest are answered; the vanished ones are cancelled as the core cancels a
    call (out of flight at once, counted as nothing; found by review: they were counted as
    successes); nothing is left in flight, and the statistics count every answered row once."""
    srv = _server(repo, BatcherConfig(max_queue_delay_us=300_000))
    rng = np.random.default_rng(15)
    base = random_graph(rng, 6, 9)
    message = lambda g: pb.infer_request_bytes("gnn", _tensors(g))  # noqa: E731
    try:
        for _ in range(2):  # the plan is kept on the first call, and its row plan on the second
            sock = _raw_call(srv.grpc_port, message(same_size(rng, base)))
            got = b""
            while b"grpc-status" not in got:
                got += sock.recv(1 << 16)
            sock.close()
            assert b"grpc-status\x010" in got, got
        state = srv.app[STATE]
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(16)]  # the batch waits its delay
        graphs = [same_size(rng, base) for _ in range(8)]
        socks = [_raw_call(srv.grpc_port, message(g)) for g in graphs]
        deadline = time.time() + 10
        while state.inflight < 8 and time.time() < deadline:
            time.sleep(0.005)
        assert state.inflight == 8
        for sock in socks[:3]:
            sock.close()  # these clients are gone before their batch runs
        deadline = time.time() + 10
        while state.inflight > 5 and time.time() < deadline:
            time.sleep(0.005)
        assert state.inflight == 5  # out of flight at once, not when their batch ends
    finally:
        srv.close()  # SIGTERM: drains what was admitted
    for sock in idle:
        sock.close()
    served = state.models["gnn"]
    with load(repo / "gnn" / "model.onnx") as m:
        for sock, g in zip(socks[3:], graphs[3:]):
            got = b""
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
            sock.close()
            assert b"grpc-status\x010" in got, got[-200:]  # answered OK before the connection closed
            response = pb.ModelInferResponse.FromString(_message_of(got))
            value = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(response.outputs[0].shape))
            want = expected_layout(m, [g])[response.outputs[0].name]
            assert np.allclose(value, want, atol=1e-5)
    assert state.inflight == 0
    stats = served.stats.to_json("gnn", "1")
    assert stats["inference_stats"]["success"]["count"] == 7  # the two warm-up calls and the 5 rows answered
    assert stats["inference_count"] == 7 and stats["inference_stats"]["fail"]["count"] == 0
    assert served.rows_answered == 5


def test_a_reset_row_is_counted_as_nothing_as_the_cores_call_is(repo):
    """RST_STREAM right behind a call, on a plan the core answered before (a row) and on a new one
    (the core's flight): neither is answered or counted; the next call on the connection is."""
    from edgemp.runtime.server.h2 import frames as f

    srv = _server(repo)
    rng = np.random.default_rng(16)
    base = random_graph(rng, 5, 7)
    message = lambda g: pb.infer_request_bytes("gnn", _tensors(g))  # noqa: E731
    try:
        for _ in range(2):  # the plan, then its row plan
            sock = _raw_call(srv.grpc_port, message(same_size(rng, base)))
            got = b""
            while b"grpc-status" not in got:
                got += sock.recv(1 << 16)
            sock.close()
        served, state = srv.app[STATE].models["gnn"], srv.app[STATE]
        before = served.stats.to_json("gnn", "1")["inference_stats"]["success"]["count"]
        rows_before = served.rows_answered
        for graph in (same_size(rng, base), random_graph(rng, 11, 3)):  # a row, then a call the core takes
            sock = _raw_call(srv.grpc_port, message(graph), then=f.rst_stream(1, f.CANCEL))
            time.sleep(0.1)
            sock.close()
        deadline = time.time() + 10
        while state.inflight and time.time() < deadline:
            time.sleep(0.005)
        after = served.stats.to_json("gnn", "1")["inference_stats"]
        assert state.inflight == 0
        assert after["success"]["count"] == before and after["fail"]["count"] == 0
        assert served.rows_answered == rows_before
        _calls(srv.grpc_port, [[{"model": "gnn", "tensors": _tensors(same_size(rng, base))}]])
        assert served.stats.to_json("gnn", "1")["inference_stats"]["success"]["count"] == before + 1
    finally:
        srv.close()


def _message_of(data: bytes) -> bytes:
    """The one gRPC message in a raw HTTP/2 byte stream from the server (stream 1's DATA)."""
    pos, body = 0, b""
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, sid = data[pos + 3], int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        if kind == 0 and sid == 1:
            body += data[pos + 9:pos + 9 + length]
        pos += 9 + length
    return body[5:]
