"""The fast path (health probes and V2 infer without aiohttp's request machinery) answers
exactly as aiohttp's path does, keeps answers in order on a connection, and leaves every
request it does not fully understand to aiohttp.

A response from the fast path says ``Server: edgemp``; aiohttp's says ``aiohttp``. A body
with ``Content-Encoding: identity`` is the same request, but one the fast path leaves to
aiohttp, so the two answers can be compared byte for byte.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from edgemp.runtime.server import ServerConfig
from hardening_utils import TOKEN, build_repo, raw_socket, start_thread_server
from runtime_fixtures import random_graphs
from server_utils import (
    assert_outputs_match,
    batch_tensors,
    decode_v2_response,
    expected_layout,
    read_response,
    v2_binary_body,
    v2_json_body,
    wire,
)

FAST, SLOW = {}, {"Content-Encoding": "identity"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("fast_repo"))


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def server(repo, request):
    """On both loops: uvloop (what ``edgemp serve`` runs on) reads sockets at other points of a
    loop turn, so ordering bugs can show on one and not the other."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, keepalive_timeout_s=5.0),
                              uvloop=request.param == "uvloop")
    yield srv
    srv.close()


def exchange(port: int, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``requests`` back to back in one write (pipelined) and read their answers."""
    sock = raw_socket(port)
    try:
        sock.sendall(b"".join(requests))
        buf = bytearray()
        return [read_response(sock, buf) for _ in requests]
    finally:
        sock.close()


def _v1_with_first_x(v1: str, value: object) -> bytes:
    body = json.loads(v1)
    body["graphs"][0]["x"][0][0] = value
    return json.dumps(body).encode()


def _bodies(graphs) -> dict[str, tuple[bytes, dict]]:
    from edgemp.graphio import graph_to_json

    tensors = batch_tensors(graphs)
    v1 = json.dumps({"graphs": [{k: v for k, v in graph_to_json(g).items() if k != "y"} for g in graphs], "id": "v"})
    binary, header_length = v2_binary_body(tensors, request_id="r1")
    bad = json.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 5], "data": [0] * 5}]}).encode()
    with_true = json.loads(v2_json_body(tensors))
    with_true["inputs"][0]["data"][0] = True  # numpy would run it as 1.0
    return {
        "binary": (binary, {"Inference-Header-Content-Length": str(header_length)}),
        "json": (v2_json_body(tensors, request_id="r2"), {}),
        "bad datatype": (bad, {}),
        "not json": (b"{oops", {}),
        "true among numbers": (json.dumps(with_true).encode(), {}),
        "bad header length": (binary, {"Inference-Header-Content-Length": "99999999"}),
        "non-ascii header length": (binary, {"Inference-Header-Content-Length": "\u0664\u0661\u0660"}),
        "v1": (v1.encode(), {}),
        "v1 bad": (b'{"graphs": [{"x": [[1.0]]}]}', {}),
        "v1 x as strings": (_v1_with_first_x(v1, "1.5"), {}),  # numpy read "1.5" as 1.5
        "v1 true among numbers": (_v1_with_first_x(v1, True), {}),  # and true as 1.0
    }


@pytest.mark.parametrize("case", ["binary", "json", "bad datatype", "not json", "true among numbers",
                                  "bad header length", "non-ascii header length", "v1", "v1 bad",
                                  "v1 x as strings", "v1 true among numbers"])
def test_fast_and_aiohttp_paths_answer_alike(server, gnn, case):
    graphs = random_graphs(np.random.default_rng(5), 3, max_nodes=10)
    body, headers = _bodies(graphs)[case]
    path = "/v1/models/gnn/predict" if case.startswith("v1") else "/v2/models/gnn/infer"
    (fs, fh, fb), = exchange(server.port, wire("POST", path, body, {**headers, **FAST}))
    (ss, sh, sb), = exchange(server.port, wire("POST", path, body, {**headers, **SLOW}))
    assert fh["server"] == "edgemp" and "aiohttp" in sh["server"]  # each path was taken
    assert (fs, fb) == (ss, sb)
    for name in ("content-type", "inference-header-content-length"):
        assert fh.get(name) == sh.get(name), name
    if case.startswith("v1 "):
        assert fs == 400, fb[:300]
    if fs == 200 and case == "v1":
        outputs = json.loads(fb)["outputs"]
        assert len(outputs) == len(graphs) and json.loads(fb)["id"] == "v"
    elif fs == 200:
        _, outputs = decode_v2_response(fb, fh.get("inference-header-content-length"))
        assert_outputs_match(outputs, expected_layout(gnn, graphs), case)
    else:
        assert fs == 400 and json.loads(fb)["error"]


@pytest.mark.parametrize("case", ["long header", "long url", "many headers"])
def test_heads_past_aiohttps_limits_are_aiohttps_to_refuse(server, gnn, case):
    """Header lines over 8190 bytes or over 128 fields: aiohttp refuses them (400); the fast path
    used to serve them, so the same bytes got a different answer depending on how they arrived."""
    graphs = random_graphs(np.random.default_rng(5), 1, max_nodes=10)
    body, headers = _bodies(graphs)["binary"]
    path = "/v2/models/gnn/infer"
    if case == "long header":
        headers = {**headers, "X-Pad": "a" * 9000}
    elif case == "long url":
        path += "?" + "a" * 9000
    else:
        headers = {**headers, **{f"X-Pad-{i}": "a" for i in range(200)}}
    (status, answer_headers, answer), = exchange(server.port, wire("POST", path, body, headers))
    assert status == 400 and "aiohttp" in answer_headers.get("server", ""), (status, answer[:200])


@pytest.mark.parametrize("protocol", ["v2 json", "v1"])
def test_outputs_json_cannot_carry_are_an_error_naming_them(server, gnn, protocol):
    """Huge but finite inputs overflow the model to NaN/inf, which JSON has no numbers for: orjson
    wrote null, which tritonclient reads as NaN (an inf came back NaN). Binary carries them; JSON
    answers 400 naming the output and saying how to ask for binary."""
    import dataclasses

    graph = random_graphs(np.random.default_rng(5), 1, max_nodes=5)[0]
    graph = dataclasses.replace(graph, x=np.full_like(graph.x, 3e38))
    want = gnn.predict([graph])[0]
    assert not all(np.isfinite(v).all() for v in want.values())  # the premise: this input overflows
    if protocol == "v1":
        from edgemp.graphio import graph_to_json

        body = json.dumps({"graphs": [{k: v for k, v in graph_to_json(graph).items() if k != "y"}]}).encode()
        (status, _, answer), = exchange(server.port, wire("POST", "/v1/models/gnn/predict", body))
        assert status == 400 and "JSON cannot carry" in json.loads(answer)["error"]
        return
    (status, _, answer), = exchange(server.port, wire("POST", "/v2/models/gnn/infer",
                                                        v2_json_body(batch_tensors([graph]))))
    assert status == 400 and "binary_data" in json.loads(answer)["error"], answer[:300]
    body, header_length = v2_binary_body(batch_tensors([graph]))
    (status, headers, answer), = exchange(server.port, wire("POST", "/v2/models/gnn/infer", body,
                                                             {"Inference-Header-Content-Length": header_length}))
    assert status == 200
    _, outputs = decode_v2_response(answer, headers.get("inference-header-content-length"))
    for name, value in expected_layout(gnn, [graph]).items():
        np.testing.assert_array_equal(outputs[name], value)  # NaN and inf as they are


def test_answers_stay_in_order_on_a_connection(server, gnn):
    """Pipelined requests — fast ones, aiohttp ones, and bytes arriving while a fast one runs —
    are answered one each, in the order sent."""
    rng = np.random.default_rng(9)
    batches = [random_graphs(rng, k, max_nodes=12) for k in (1, 2, 3, 4)]
    reqs = [wire("POST", "/v2/models/gnn/infer", v2_json_body(batch_tensors(g)), SLOW if i == 2 else FAST)
            for i, g in enumerate(batches)]
    reqs.insert(1, wire("GET", "/v2/health/ready"))
    answers = exchange(server.port, *reqs)
    assert [a[0] for a in answers] == [200] * 5
    infer = [a for i, a in enumerate(answers) if i != 1]
    for graphs, (_, headers, body) in zip(batches, infer):
        _, outputs = decode_v2_response(body, headers.get("inference-header-content-length"))
        assert_outputs_match(outputs, expected_layout(gnn, graphs), "pipelined")
    sock = raw_socket(server.port)  # a second request written while the first one is in flight
    try:
        buf = bytearray()
        sock.sendall(reqs[0])
        sock.sendall(reqs[3])
        first, second = read_response(sock, buf), read_response(sock, buf)
    finally:
        sock.close()
    assert (first[2], second[2]) == (infer[0][2], infer[2][2])


def test_a_request_read_while_aiohttp_starts_the_one_before_waits_for_it(repo, gnn):
    """On uvloop (the server's loop) a fast request that arrives while aiohttp has taken the
    request before it off its queue, but not yet started its handler, must still be answered
    second. Before the fix ~1 in 40 of these pairs came back swapped; the gap is one loop turn
    wide, so the second request follows the first after a varying spin."""
    pytest.importorskip("uvloop")
    rng = np.random.default_rng(12)
    first_graphs, second_graphs = random_graphs(rng, 1, max_nodes=12), random_graphs(rng, 3, max_nodes=12)
    first = wire("POST", "/v2/models/gnn/infer", v2_json_body(batch_tensors(first_graphs)), SLOW)  # aiohttp's
    body, header_length = v2_binary_body(batch_tensors(second_graphs))
    second = wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": header_length})
    want = [expected_layout(gnn, first_graphs), expected_layout(gnn, second_graphs)]
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, keepalive_timeout_s=30.0), uvloop=True)
    spin = np.random.default_rng(13)
    try:
        for i in range(500):
            sock = raw_socket(srv.port)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(first)
                until = time.perf_counter() + spin.uniform(0, 300e-6)
                while time.perf_counter() < until:
                    pass
                sock.sendall(second)
                buf = bytearray()
                for k in range(2):
                    status, headers, data = read_response(sock, buf)
                    assert status == 200, data[:200]
                    got = decode_v2_response(data, headers.get("inference-header-content-length"))[1]
                    assert_outputs_match(got, want[k], f"pair {i}, answer {k + 1}")
            finally:
                sock.close()
    finally:
        srv.close()


def test_what_the_fast_path_leaves_to_aiohttp(server):
    """Unknown models and versions, other routes, HTTP/1.0 and Connection: close are aiohttp's."""
    body = v2_json_body(batch_tensors(random_graphs(np.random.default_rng(1), 1, max_nodes=5)))
    cases = {
        wire("POST", "/v2/models/nope/infer", body): 404,
        wire("POST", "/v2/models/gnn/versions/9/infer", body): 404,
        wire("POST", "/v2/models/gnn/versions/1/infer", body): 200,
        wire("GET", "/v2/health/ready?x=1"): 200,
        wire("GET", "/v2"): 200,
    }
    for request, status in cases.items():
        (got, headers, _), = exchange(server.port, request)
        assert got == status, request[:60]
    (got, headers, _), = exchange(server.port, wire("POST", "/v2/models/gnn/infer", body, {"Connection": "close"}))
    assert got == 200 and "aiohttp" in headers["server"]
    (got, headers, _), = exchange(server.port, b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert got == 200 and "aiohttp" in headers["server"]
    (got, headers, _), = exchange(server.port, wire("GET", "/v2/health/live"))
    assert got == 200 and headers["server"] == "edgemp"
    # HTTP/1.1 without Host gets aiohttp's 400 on either path (httptools forgives it), and a
    # request line that is not exactly "METHOD URL HTTP/1.1" is aiohttp's to judge.
    no_host = wire("POST", "/v2/models/gnn/infer", body).replace(b"Host: t\r\n", b"")
    for request in (no_host, wire("GET", "/v2/health/ready").replace(b"Host: t\r\n", b"")):
        (got, headers, _), = exchange(server.port, request)
        assert got == 400 and "aiohttp" in headers["server"], request[:60]
    (got, headers, _), = exchange(server.port, wire("GET", "/v2/health/live").replace(b" HTTP/1.1", b"  HTTP/1.1"))
    assert "aiohttp" in headers["server"]


def ready_probe_answered_by(repo: Path, config: ServerConfig) -> str:
    """The Server header of a ready probe's 200 from a fresh server: which path answered it."""
    srv = start_thread_server(repo, config)
    try:
        (got, headers, _), = exchange(srv.port, wire("GET", "/v2/health/ready"))
        assert got == 200
        return headers["server"]
    finally:
        srv.close()


def test_token_is_checked_on_the_fast_path(repo):
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, auth_token=TOKEN))
    try:
        body = v2_json_body(batch_tensors(random_graphs(np.random.default_rng(2), 1, max_nodes=5)))
        good = {"Authorization": f"Bearer {TOKEN}"}
        # the scheme is case-insensitive (RFC 7235), the token is not; a 401 names the scheme
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401), (good, 200),
                                ({"Authorization": f"bearer {TOKEN}"}, 200), ({"Authorization": f"BEARER  {TOKEN}"}, 200),
                                ({"Authorization": f"Bearer {TOKEN.upper()}"}, 401),
                                ({"Authorization": f"Basic {TOKEN}"}, 401), ({"Authorization": TOKEN}, 401),
                                ({"Authorization": f"Bearer{TOKEN}"}, 401)):
            (got, answer_headers, _), = exchange(srv.port, wire("POST", "/v2/models/gnn/infer", body, headers))
            assert got == status, headers
            if got == 401:
                assert answer_headers["www-authenticate"].startswith("Bearer"), answer_headers
        good_line, bad_line = f"Authorization: Bearer {TOKEN}", "Authorization: Bearer wrong"
        for lines in ((good_line, bad_line), (bad_line, good_line), (good_line, good_line)):  # two: neither counts
            twice = wire("POST", "/v2/models/gnn/infer", body).replace(b"Host: t\r\n",
                                                                       ("Host: t\r\n" + "\r\n".join(lines) + "\r\n").encode())
            (got, _, _), = exchange(srv.port, twice)
            assert got == 401, lines
        (got, headers, _), = exchange(srv.port, wire("GET", "/v2/health/ready"))
        assert got == 200 and headers["server"] == "edgemp"  # the probes need no token
    finally:
        srv.close()


def test_access_log_turns_the_fast_path_off(repo):
    """aiohttp writes the access log, so with it on every request is aiohttp's."""
    assert "aiohttp" in ready_probe_answered_by(repo, ServerConfig(port=0, access_log=True))


def test_an_aiohttp_without_the_internals_serves_everything(repo, monkeypatch):
    """The fast path steers private aiohttp names; one missing (a future aiohttp) turns it off, not the server."""
    from edgemp.runtime.server import fastpath

    assert fastpath.aiohttp_has_fast_path_internals()  # the pinned aiohttp has them all
    monkeypatch.setattr(fastpath, "AIOHTTP_INTERNALS", fastpath.AIOHTTP_INTERNALS + ("_renamed_by_aiohttp",))
    assert not fastpath.aiohttp_has_fast_path_internals()
    assert "aiohttp" in ready_probe_answered_by(repo, ServerConfig(port=0, access_log=False))


def test_a_fast_request_leaves_no_garbage_cycles(server, gnn):
    """Every object a fast request makes is freed by refcount: the collector's full passes,
    each stalling every request in flight, must find nothing the request path made."""
    import gc

    graphs = random_graphs(np.random.default_rng(11), 1, max_nodes=10)
    body, header_length = v2_binary_body(batch_tensors(graphs))
    request = wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": str(header_length)})
    sock = raw_socket(server.port)
    buf = bytearray()
    try:
        sock.sendall(request)  # the first request on a connection builds its per-connection state
        assert read_response(sock, buf)[0] == 200
        gc.collect()
        gc.disable()
        try:
            for _ in range(200):
                sock.sendall(request)
                status, headers, _ = read_response(sock, buf)
                assert status == 200 and headers["server"] == "edgemp"
            unreachable = gc.collect()
        finally:
            gc.enable()
    finally:
        sock.close()
    assert unreachable < 40, f"{unreachable} objects in reference cycles after 200 requests"


def same_size_graphs(seed: int, count: int):
    """``count`` one-graph requests of the same node and edge counts but different values:
    equal V2 headers, equal HTTP heads, different answers."""
    from edgemp.graph import Graph

    rng = np.random.default_rng(seed)
    base = random_graphs(rng, 1, max_nodes=9)[0]
    return [[Graph(x=rng.standard_normal(base.x.shape).astype(np.float32), edge_index=base.edge_index,
                   edge_attr=None if base.edge_attr is None
                   else rng.standard_normal(base.edge_attr.shape).astype(np.float32))] for _ in range(count)]


def test_a_known_head_still_answers_each_body_with_its_own_answer(server, gnn):
    """Requests with the same head (same size: same headers and Content-Length) skip the HTTP
    parse after the first; each is still answered from its own body, singly or pipelined."""
    requests = same_size_graphs(21, 6)
    wires = []
    for graphs in requests:
        body, header_length = v2_binary_body(batch_tensors(graphs))
        wires.append(wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": str(header_length)}))
    assert len({w[: w.index(b"\r\n\r\n")] for w in wires}) == 1, "the heads should be byte-identical"
    answers = exchange(server.port, wires[0]) + exchange(server.port, wires[1]) + exchange(server.port, *wires[2:])
    for i, (graphs, (status, headers, body)) in enumerate(zip(requests, answers)):
        # one request per read: the fast path; pipelined in one write: not one request, so aiohttp
        assert status == 200 and (headers["server"] == "edgemp") == (i < 2)
        _, outputs = decode_v2_response(body, headers.get("inference-header-content-length"))
        assert_outputs_match(outputs, expected_layout(gnn, graphs), "known head")
    # The same head with a body one byte short is not that request: aiohttp waits for the rest
    # and answers the completed request, the fast path having taken nothing.
    head, body = wires[0].split(b"\r\n\r\n", 1)
    sock = raw_socket(server.port)
    try:
        buf = bytearray()
        sock.sendall(head + b"\r\n\r\n" + body[:-1])
        sock.sendall(body[-1:])
        status, headers, answer = read_response(sock, buf)
    finally:
        sock.close()
    assert status == 200
    _, outputs = decode_v2_response(answer, headers.get("inference-header-content-length"))
    assert_outputs_match(outputs, expected_layout(gnn, requests[0]), "split body")


def test_a_known_head_is_refused_while_draining(repo):
    """Draining is checked on every request, not only when a head is first seen."""
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False))
    try:
        (graphs,) = same_size_graphs(22, 1)
        body, header_length = v2_binary_body(batch_tensors(graphs))
        request = wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": str(header_length)})
        assert exchange(srv.port, request)[0][0] == 200
        from edgemp.runtime.server.state import STATE

        srv.loop.call_soon_threadsafe(srv.app[STATE].begin_drain)
        deadline = time.time() + 5
        while not srv.app[STATE].draining and time.time() < deadline:
            time.sleep(0.01)
        (status, _, answer), = exchange(srv.port, request)
        assert status == 503 and "shutting down" in json.loads(answer)["error"]
    finally:
        srv.close()


def test_a_fast_500_logs_its_traceback(repo, caplog):
    """An unexpected failure answered from the batcher's callback still logs what failed."""
    import logging

    from edgemp.runtime.server.state import STATE

    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False))
    try:
        model = srv.app[STATE].models["gnn"].model

        def broken(feeds):
            raise RuntimeError("the backend blew up")

        model.runner.infer = broken  # this instance only: a lone run and a batch both fail
        (graphs,) = same_size_graphs(23, 1)
        body, header_length = v2_binary_body(batch_tensors(graphs))
        request = wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": str(header_length)})
        with caplog.at_level(logging.ERROR, logger="edgemp.runtime.server.middleware"):
            (status, headers, answer), = exchange(srv.port, request)
        assert status == 500 and headers["server"] == "edgemp" and "server log" in json.loads(answer)["error"]
        logged = [r for r in caplog.records if "internal error serving POST /v2/models/gnn/infer" in r.getMessage()]
        assert logged and logged[0].exc_info and "the backend blew up" in str(logged[0].exc_info[1])
    finally:
        srv.close()


def test_error_answer_logs_the_error_it_is_given_outside_an_except_block(caplog):
    """The fast path's batched answers come from a callback, with no exception being handled:
    the log must carry the error passed in, not sys.exc_info()."""
    import logging

    from edgemp.runtime.server.middleware import error_answer

    error = RuntimeError("failed in the batcher's thread")
    with caplog.at_level(logging.ERROR, logger="edgemp.runtime.server.middleware"):
        status, message = error_answer(error, "POST", "/v2/models/gnn/infer")
    assert status == 500 and "server log" in message
    (record,) = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[1] is error
