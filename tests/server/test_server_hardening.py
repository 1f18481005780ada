"""``edgemp serve`` under attack: every former crash and 500 is a 4xx, work is bounded, slow clients are cut off.

All requests go through HTTP to the real server (``serve_app`` in a thread, or the CLI in a
subprocess), so these tests stay valid however the request decoders change. Timings are
generous bounds that the old server missed by orders of magnitude (22.7 s behind one big
request, 2 minutes of SIGTERM behind stalled uploads), not speed measurements.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgemp.data.synthetic import random_graph
from edgemp.graph import Graph
from edgemp.runtime.server import ServerConfig
from edgemp.runtime.server.connections import quiet_accept_errors
from hardening_utils import (
    build_repo,
    json_error,
    raw_socket,
    read_status,
    request,
    start_thread_server,
)
from runtime_fixtures import build_sparse_model, random_graphs
from server_utils import (
    assert_outputs_match,
    batch_tensors,
    decode_v2_response,
    expected_layout,
    start_server,
    v2_binary_body,
    v2_json_body,
)

MAX_BODY = 2 * 1024 * 1024
HEADER_TIMEOUT = 1.0
KEEPALIVE = 2.0


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("hard_repo"))


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def server(repo, request):
    """On both loops (``edgemp serve`` runs on uvloop, which orders socket reads differently)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    config = ServerConfig(
        port=0, access_log=False, max_body_bytes=MAX_BODY, max_buffered_bytes=2 * MAX_BODY,
        header_timeout_s=HEADER_TIMEOUT, keepalive_timeout_s=KEEPALIVE, body_min_rate_bytes_per_s=64 * 1024,
        max_request_nodes=5000, max_request_edges=20000,
    )
    srv = start_thread_server(repo, config, uvloop=request.param == "uvloop")
    yield srv
    srv.close()


def _valid(server, gnn, seed: int = 3) -> None:
    """A valid request still gets exactly its own, correct answer."""
    graphs = random_graphs(np.random.default_rng(seed), 3, max_nodes=10)
    conn = server.connection()
    status, _, body = request(conn, "POST", "/v2/models/gnn/infer", v2_json_body(batch_tensors(graphs)))
    conn.close()
    assert status == 200, body[:300]
    assert_outputs_match(decode_v2_response(body, None)[1], expected_layout(gnn, graphs), "valid request")


def _v2(entries: list[dict]) -> bytes:
    return json.dumps({"inputs": entries}).encode()


def _one_node(counts: list[int], node_graph: list[int] | None = None) -> bytes:
    return _v2([
        {"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0.0] * 5},
        {"name": "edge_index", "datatype": "INT64", "shape": [2, 0], "data": []},
        {"name": "node_graph", "datatype": "INT64", "shape": [1], "data": node_graph or [0]},
        {"name": "graph_node_counts", "datatype": "INT64", "shape": [len(counts)], "data": counts},
    ])


# -- the remote crash --------------------------------------------------------------------
@pytest.mark.parametrize("counts", [
    [2**63 - 1, 2**63 - 1, 3],  # sums to 1 after int64 wrap: np.repeat segfaulted on it
    [2**62, 2**62, 2**62, 2**62, 1],
    [-(2**63), 2**63 - 1, 2],
    [1, 0],
])
def test_wrapping_counts_are_400_not_a_crash(server, gnn, counts):
    conn = server.connection()
    status, _, body = request(conn, "POST", "/v2/models/gnn/infer", _one_node(counts))
    assert status == 400, body[:300]
    assert "graph_node_counts" in json_error(body)
    # the same counts as binary tensors
    x = np.zeros((1, 5), np.float32)
    tensors = {"x": x, "edge_index": np.zeros((2, 0), np.int64), "node_graph": np.zeros(1, np.int64),
               "graph_node_counts": np.array(counts, np.int64)}
    raw, n = v2_binary_body(tensors)
    status, _, body = request(conn, "POST", "/v2/models/gnn/infer", raw, {"Inference-Header-Content-Length": str(n)})
    assert status == 400, body[:300]
    conn.close()
    _valid(server, gnn)


# -- every former 500 class --------------------------------------------------------------
def _deep(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


FORMER_500 = {
    "deep_nesting": ("/v2/models/gnn/infer", _deep(100_000), {}),
    "deep_nesting_v1": ("/v1/models/gnn/predict", b'{"graphs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}),
    "int_past_digit_limit": ("/v2/models/gnn/infer", _one_node([1]).replace(b'"data": [0]', b'"data": [' + b"7" * 5000 + b"]"), {}),
    "shape_product_overflow": ("/v2/models/gnn/infer", _v2([{"name": "x", "datatype": "FP32", "shape": [2**62, 2**62], "data": []}]), {}),
    "shape_zero_times_huge": ("/v2/models/gnn/infer", _v2([{"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}]), {}),
    "shape_65_dims": ("/v2/models/gnn/infer", _v2([{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [0.0]}]), {}),
    "datatype_object": ("/v2/models/gnn/infer", _v2([{"name": "x", "datatype": {"a": 1}, "shape": [1, 5], "data": [0] * 5}]), {}),
    "datatype_list": ("/v2/models/gnn/infer", _v2([{"name": "x", "datatype": ["FP32"], "shape": [1, 5], "data": [0] * 5}]), {}),
    "v1_huge_float": ("/v1/models/gnn/predict", b'{"graphs": [{"x": [[1e400, 0, 0, 0, 0]], "edge_index": [[], []]}]}', {}),
    "v1_out_of_float32": ("/v1/models/gnn/predict", json.dumps({"graphs": [{"x": [[10**40] * 5], "edge_index": [[], []]}]}).encode(), {}),
    "v1_huge_int": ("/v1/models/gnn/predict", json.dumps({"graphs": [{"x": [[10**400] * 5], "edge_index": [[], []]}]}).encode(), {}),
    "v1_huge_index": ("/v1/models/gnn/predict", json.dumps({"graphs": [{"x": [[0] * 5], "edge_index": [[2**64], [0]]}]}).encode(), {}),
    "v1_float_index": ("/v1/models/gnn/predict", json.dumps({"graphs": [{"x": [[0] * 5], "edge_index": [[1e300], [0.0]]}]}).encode(), {}),
    "v1_huge_timeout": ("/v1/models/gnn/predict", json.dumps({"graphs": [{"x": [[0] * 5], "edge_index": [[], []]}], "timeout_us": 10**30}).encode(), {}),
    "v2_huge_timeout": ("/v2/models/gnn/infer", json.dumps({**json.loads(_one_node([1])), "parameters": {"timeout": 10**30}}).encode(), {}),
    "header_length_digits": ("/v2/models/gnn/infer", _one_node([1]), {"Inference-Header-Content-Length": "9" * 5000}),
    "unsupported_encoding": ("/v2/models/gnn/infer", _one_node([1]), {"Content-Encoding": "br"}),
    "corrupt_gzip": ("/v2/models/gnn/infer", gzip.compress(_one_node([1]))[:20], {"Content-Encoding": "gzip"}),
}


@pytest.mark.parametrize("case", sorted(FORMER_500))
def test_former_500_classes_are_4xx_with_json_error(server, gnn, case):
    path, body, headers = FORMER_500[case]
    conn = server.connection()
    status, _, payload = request(conn, "POST", path, body, headers)
    conn.close()
    assert 400 <= status < 500, (status, payload[:300])
    assert json_error(payload)
    _valid(server, gnn)


def test_non_utf8_authorization_is_401(repo):
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, auth_token="tok"))
    try:
        for value in (b"\xff\xfe\xfd", "Bearer tök".encode("latin-1"), "Bearer tök".encode()):
            sock = raw_socket(srv.port)
            sock.sendall(b"GET /v2/models/gnn HTTP/1.1\r\nHost: x\r\nAuthorization: " + value + b"\r\n\r\n")
            assert read_status(sock) == 401
            sock.close()
        conn = srv.connection()
        assert request(conn, "GET", "/v2/models/gnn", headers={"Authorization": "Bearer tok"})[0] == 200
        assert request(conn, "GET", "/v2/health/ready")[0] == 200  # open path, no token
    finally:
        srv.close()


def test_malformed_http_is_json_4xx(server):
    sock = raw_socket(server.port)
    sock.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\x01\r\nContent-Length: 2\r\n\r\n{}")
    data = sock.recv(65536)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b" ")[1].startswith(b"4"), head
    assert "malformed" in json.loads(body)["error"]


# -- work limits -------------------------------------------------------------------------
def _big_graph(nodes: int, edges: int, seed: int = 0) -> Graph:
    return random_graph(np.random.default_rng(seed), nodes, edges, 5)


def test_request_limits_are_413_with_reason(server, gnn):
    conn = server.connection()
    for graph, word in ((_big_graph(6000, 10), "nodes"), (_big_graph(100, 30000), "edges")):
        raw, n = v2_binary_body(batch_tensors([graph]))
        status, _, body = request(conn, "POST", "/v2/models/gnn/infer", raw, {"Inference-Header-Content-Length": str(n)})
        assert status == 413, body[:300]
        assert word in json_error(body) and "split" in json_error(body)
    conn.close()
    _valid(server, gnn)


def test_memory_estimate_refuses_before_running(repo, gnn):
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, max_request_memory_bytes=1 << 20))
    try:
        conn = srv.connection()
        ok = random_graphs(np.random.default_rng(1), 2, max_nodes=10)
        assert request(conn, "POST", "/v2/models/gnn/infer", v2_json_body(batch_tensors(ok)))[0] == 200
        raw, n = v2_binary_body(batch_tensors([_big_graph(3000, 6000)]))
        status, _, body = request(conn, "POST", "/v2/models/gnn/infer", raw, {"Inference-Header-Content-Length": str(n)})
        assert status == 413 and "MiB" in json_error(body), body[:300]
    finally:
        srv.close()


def test_limits_default_from_batcher_budget(repo):
    from edgemp.runtime.batcher import BatcherConfig
    from edgemp.runtime.server.limits import RequestLimits, widest_weight
    from edgemp.runtime.model import load

    path = repo / "gnn_edge" / "model.onnx"
    weights = [i for i in onnx.load(str(path)).graph.initializer if len(i.dims) >= 2]
    assert widest_weight(path) == max(max(i.dims) for i in weights)  # protobuf reader agrees with onnx
    with load(path) as m:
        limits = RequestLimits.for_model(m.spec, path, BatcherConfig(max_batch_nodes=100, max_batch_edges=300),
                                         ServerConfig())
    assert (limits.max_nodes, limits.max_edges) == (400, 1200)


def test_oversized_requests_do_not_delay_normal_ones(server, gnn):
    """A client looping oversized requests; a normal client's worst latency stays bounded."""
    raw, n = v2_binary_body(batch_tensors([_big_graph(4000, 90_000)]))  # 1.5 MiB, 90k edges: 413
    stop = threading.Event()
    refused = []

    def attacker() -> None:
        conn = server.connection()
        while not stop.is_set():
            status, _, _ = request(conn, "POST", "/v2/models/gnn/infer", raw, {"Inference-Header-Content-Length": str(n)})
            refused.append(status)
        conn.close()

    t = threading.Thread(target=attacker)
    t.start()
    try:
        graphs = random_graphs(np.random.default_rng(9), 4, max_nodes=12)
        body = v2_json_body(batch_tensors(graphs))
        conn = server.connection()
        worst = 0.0
        for _ in range(40):
            start = time.perf_counter()
            status, _, payload = request(conn, "POST", "/v2/models/gnn/infer", body)
            worst = max(worst, time.perf_counter() - start)
            assert status == 200
        assert_outputs_match(decode_v2_response(payload, None)[1], expected_layout(gnn, graphs), "beside attacker")
        conn.close()
    finally:
        stop.set()
        t.join(30)
    assert refused and set(refused) == {413}, set(refused)
    assert worst < 2.0, f"a normal request waited {worst:.2f} s behind oversized ones"


def test_gzip_bomb_does_not_stall_health_checks(server, gnn):
    """1 GiB of zeros in ~1 MiB of gzip: 413 after inflating only the limit, off the event loop."""
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)  # 256 MiB -> ~250 KiB
    results = []

    def attacker() -> None:
        conn = server.connection()
        for _ in range(8):
            status, hdrs, body = request(conn, "POST", "/v2/models/gnn/infer", bomb, {"Content-Encoding": "gzip"})
            results.append(status)
            if hdrs.get("Connection", "").lower() == "close":
                conn.close()
                conn = server.connection()
        conn.close()

    t = threading.Thread(target=attacker)
    t.start()
    worst = 0.0
    conn = server.connection()
    while t.is_alive():
        start = time.perf_counter()
        assert request(conn, "GET", "/v2/health/live")[0] == 200
        worst = max(worst, time.perf_counter() - start)
        time.sleep(0.005)
    conn.close()
    t.join()
    assert results == [413] * 8, results
    assert worst < 0.5, f"a health check waited {worst:.2f} s behind a gzip bomb"
    _valid(server, gnn)


def test_many_small_compressed_bodies_at_once_each_hold_about_their_size(server, gnn):
    """Each compressed body used to reserve the whole body limit while it inflated, so two small
    gzip requests at once filled this server's buffer (2 x MAX_BODY) and the rest got 503."""
    graphs = random_graphs(np.random.default_rng(11), 2, max_nodes=8)
    body, header_length = v2_binary_body(batch_tensors(graphs))
    headers = {"Inference-Header-Content-Length": str(header_length)}
    want = expected_layout(gnn, graphs)
    statuses: list[int] = []
    start = threading.Barrier(12)

    def client(i: int) -> None:
        conn = server.connection()
        try:
            encoding = "gzip" if i % 2 else "deflate"
            wire = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
            start.wait()
            for _ in range(5):
                status, hdrs, data = request(conn, "POST", "/v2/models/gnn/infer", wire,
                                             {**headers, "Content-Encoding": encoding})
                statuses.append(status)
                if status == 200:
                    assert_outputs_match(decode_v2_response(data, hdrs.get("Inference-Header-Content-Length"))[1],
                                         want, encoding)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 60, sorted(set(statuses))


def test_a_body_that_inflates_past_its_first_room_is_read_whole(server, gnn):
    """Room for an inflated body grows (16x the wire size, then 8x at a time) up to the body limit:
    1.5 MiB of JSON in ~2 KiB of gzip is read, and one byte past the limit is still 413."""
    graphs = random_graphs(np.random.default_rng(12), 2, max_nodes=8)
    body = v2_json_body(batch_tensors(graphs))
    conn = server.connection()
    try:
        for padding, want in ((1_500_000, 200), (MAX_BODY + 1 - len(body), 413)):
            status, _, data = request(conn, "POST", "/v2/models/gnn/infer", gzip.compress(body + b" " * padding),
                                      {"Content-Encoding": "gzip"})
            assert status == want, data[:200]
            if status == 200:
                assert_outputs_match(decode_v2_response(data, None)[1], expected_layout(gnn, graphs), "grown")
            else:
                conn.close()
                conn = server.connection()
    finally:
        conn.close()


def test_inflation_goes_on_where_it_stopped_and_ends_as_zlib_does():
    """The body is inflated once, in steps of room: never twice (a bomb used to be inflated up to
    three times from the start as its room grew); bad streams fail on the step that meets them."""
    from edgemp.runtime.server.body import BadBodyError, _Inflater

    data = bytes(range(256)) * 4000 + b"\0" * 500_000
    packed = gzip.compress(data)
    inflater, steps = _Inflater(packed, "gzip"), []
    for room in (10, 1000, 100_000, 2_000_000):
        steps.append(inflater.run(room))
        assert inflater.size <= room + 1
    assert steps == [False, False, False, True] and inflater.body() == data
    assert _Inflater(zlib.compress(data), "deflate").run(len(data)) is True
    assert _Inflater(zlib.compress(data)[2:-4], "deflate").run(len(data)) is True  # raw deflate
    for bad in (packed[:-20], packed + b"junk", packed[:10] + b"\xff" * 40):
        with pytest.raises(BadBodyError):
            _Inflater(bad, "gzip").run(len(data))


def test_a_body_at_the_limit_fits_a_buffer_as_large_as_the_limit(repo, gnn):
    """max_buffered_bytes may equal max_body_bytes: a gzip body inflating to exactly the limit is
    read (its own compressed bytes do not count against its room) and a bomb is 413, not 503."""
    limit = 1 << 20
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, max_body_bytes=limit,
                                                 max_buffered_bytes=limit))
    try:
        graphs = random_graphs(np.random.default_rng(13), 2, max_nodes=8)
        body = v2_json_body(batch_tensors(graphs))
        conn = srv.connection()
        for payload, want in ((body + b" " * (limit - len(body)), 200), (b"\0" * (8 * limit), 413)):
            status, _, data = request(conn, "POST", "/v2/models/gnn/infer", gzip.compress(payload),
                                      {"Content-Encoding": "gzip"})
            assert status == want, data[:200]
            if status == 200:
                assert_outputs_match(decode_v2_response(data, None)[1], expected_layout(gnn, graphs), "at the limit")
            conn.close()
            conn = srv.connection()
        conn.close()
    finally:
        srv.close()


def _outcomes(server) -> dict[str, float]:
    """gnn's ``edgemp_requests_total`` by outcome."""
    conn = server.connection()
    try:
        status, _, body = request(conn, "GET", "/metrics")
    finally:
        conn.close()
    assert status == 200
    prefix = 'edgemp_requests_total{model="gnn",outcome="'
    return {line[len(prefix):].split('"')[0]: float(line.split()[-1])
            for line in body.decode().splitlines() if line.startswith(prefix)}


def test_buffered_bytes_cap_refuses_early(server, gnn):
    """Bodies in flight hold at most max_buffered_bytes: the third 1.5 MiB upload is refused at once,
    and counted as a rejection (the server's capacity), not as the client's bad request."""
    socks = []
    before = _outcomes(server)
    try:
        for _ in range(2):
            s = raw_socket(server.port)
            s.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1572864\r\n\r\n" + b" " * 1024)
            socks.append(s)
        time.sleep(0.2)
        third = raw_socket(server.port)  # refused on its headers, before a byte of its body is read
        third.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1572864\r\n\r\n")
        data = third.recv(65536)
        third.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"503" and "buffering" in json_error(body), data[:300]
        after = _outcomes(server)
        assert after["rejected"] == before["rejected"] + 1 and after["bad_request"] == before["bad_request"]
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    _valid(server, gnn)


def test_a_body_over_the_limit_counts_alike_whatever_its_framing(server):
    """Refused by its Content-Length before a byte is read, or while read (chunked): one bad request each."""
    body = b" " * (MAX_BODY + 1)
    counts = [_outcomes(server)["bad_request"]]
    for framing in ("length", "chunked"):
        sock = raw_socket(server.port)
        try:
            if framing == "length":
                sock.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            else:
                sock.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            assert read_status(sock) == 413
        finally:
            sock.close()
        counts.append(_outcomes(server)["bad_request"])
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2], counts


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="needs Linux prlimit")
def test_real_allocation_failure_is_507_and_server_recovers(tmp_path):
    """ORT really failing to allocate (address space capped from outside): 507, one line, still serving."""
    import resource

    build_sparse_model(tmp_path / "model.onnx", hidden=256)  # [E, 256] float intermediates
    srv = start_server(tmp_path / "model.onnx", tmp_path, "--max-request-memory-bytes", "0", "--max-request-nodes",
                       "1000000", "--max-request-edges", "1000000")
    try:
        def body(nodes: int, edges: int) -> tuple[bytes, dict]:
            raw, n = v2_binary_body(batch_tensors([_big_graph(nodes, edges)]))
            return raw, {"Inference-Header-Content-Length": str(n)}

        from server_utils import http

        assert http(srv, "POST", "/v2/models/model/infer", *body(2000, 8000))[0] == 200  # threads and arena warm
        with open(f"/proc/{srv.proc.pid}/status") as fh:
            vm = next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmSize"))
        resource.prlimit(srv.proc.pid, resource.RLIMIT_AS, (vm + (300 << 20), resource.RLIM_INFINITY))
        status, _, payload = http(srv, "POST", "/v2/models/model/infer", *body(100_000, 400_000))
        assert status == 507 and "memory" in json_error(payload), payload[:300]
        assert http(srv, "POST", "/v2/models/model/infer", *body(20, 40))[0] == 200
    finally:
        assert srv.stop() == 0
    assert "Traceback" not in srv.log()


# -- connection hygiene ------------------------------------------------------------------
def test_slowloris_headers_get_408_and_close(server):
    sock = raw_socket(server.port)
    sock.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    for _ in range(5):
        time.sleep(HEADER_TIMEOUT / 4)
        try:
            sock.sendall(b"X-A: b\r\n")  # trickling headers do not extend the deadline
        except OSError:
            break
    assert read_status(sock) == 408
    assert time.monotonic() - start < HEADER_TIMEOUT + 3
    sock.close()


def test_silent_and_idle_connections_are_closed(server):
    silent = raw_socket(server.port)
    conn = server.connection()
    assert request(conn, "GET", "/v2/health/live")[0] == 200
    start = time.monotonic()
    assert read_status(silent) == 408  # never sent a byte: header timeout
    conn.sock.settimeout(KEEPALIVE + 3)
    assert conn.sock.recv(1) == b""  # idle keep-alive: closed by the server
    assert time.monotonic() - start < KEEPALIVE + 3
    silent.close()
    conn.close()


def test_stalled_body_gets_408(server):
    sock = raw_socket(server.port)
    sock.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{\"inputs\":")
    start = time.monotonic()
    assert read_status(sock) == 408
    assert time.monotonic() - start < HEADER_TIMEOUT + 3
    sock.close()


def test_many_slow_connections_do_not_stop_valid_clients(server, gnn):
    """1,000 connections trickling headers; valid clients are still served, then the slow ones are cut."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(1000, (soft - 200) // 2)  # both ends live in this process
    assert count >= 200, f"open-file limit {soft} is too low for this test"
    slow = []
    for _ in range(count):
        s = raw_socket(server.port)
        s.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    try:
        for seed in range(5):
            _valid(server, gnn, seed)
        deadline = time.monotonic() + HEADER_TIMEOUT + 10
        closed = 0
        for s in slow:
            s.settimeout(max(deadline - time.monotonic(), 0.1))
            closed += read_status(s) in (408, None)
        assert closed == count
    finally:
        for s in slow:
            s.close()
    _valid(server, gnn)


def test_connection_cap_evicts_slow_clients_first(repo, gnn):
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, max_connections=32, header_timeout_s=30))
    slow = []
    try:
        for _ in range(100):  # three times the cap: the oldest waiting connections make room
            s = raw_socket(srv.port)
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
            slow.append(s)
        time.sleep(0.3)
        _valid(srv, gnn)
        open_ = sum(1 for s in slow if _still_open(s))
        assert open_ <= 32, open_
    finally:
        for s in slow:
            s.close()
        srv.close()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def test_accept_errors_are_rate_limited(caplog):
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(5000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(24, "Too many open files")})
    finally:
        loop.close()
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(lines) == 1, len(lines)


def test_sigterm_with_stalled_uploads_exits_within_drain_timeout(repo, tmp_path):
    srv = start_server(repo, tmp_path, "--header-timeout-s", "60", "--body-min-rate-bytes-per-s", "1")
    stalled = []
    for _ in range(5):
        s = raw_socket(srv.port)
        s.sendall(b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"in")
        stalled.append(s)
    time.sleep(0.5)
    start = time.monotonic()
    rc = srv.stop(timeout=30)
    took = time.monotonic() - start
    for s in stalled:
        s.close()
    assert rc == 0, srv.log()[-2000:]
    assert took < 10, f"SIGTERM took {took:.1f} s with stalled uploads"
    assert "Traceback" not in srv.log()


# -- fail closed and bad models: one line, exit 1 ------------------------------------------
@pytest.mark.parametrize("token", ["", "   ", "\t\n"])
def test_blank_token_refuses_to_start(repo, token, tmp_path):
    from edgemp.cli.serve import serve

    result = CliRunner().invoke(serve, [str(repo), "--port", "0"], env={"EDGEMP_AUTH_TOKEN": token})
    assert result.exit_code == 1
    assert "empty or whitespace" in result.output and "Traceback" not in result.output
    f = tmp_path / "tok"
    f.write_text(token)
    result = CliRunner().invoke(serve, [str(repo), "--port", "0", "--auth-token-file", str(f)],
                                env={"EDGEMP_AUTH_TOKEN": None})
    assert result.exit_code == 1 and "empty or whitespace" in result.output


def _with_metadata(path: Path, edit) -> Path:
    build_sparse_model(path)
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(meta["edgemp"])
    edit(spec)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"edgemp": json.dumps(spec)})
    onnx.save(model, str(path))
    return path


BAD_MODELS = {
    "no_outputs": lambda s: s["model"].update(outputs=[]),
    "negative_width": lambda s: s["model"].update(node_features=-3),
    "string_width": lambda s: s["model"].update(edge_features="many"),
    "huge_output_width": lambda s: s["model"]["outputs"][0].update(width=10**15),
    "bad_level": lambda s: s["model"]["outputs"][0].update(level="edge"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_metadata_is_one_line(tmp_path, case):
    from edgemp.cli.serve import serve

    path = _with_metadata(tmp_path / "model.onnx", BAD_MODELS[case])
    result = CliRunner().invoke(serve, [str(path), "--port", "0"], env={"EDGEMP_AUTH_TOKEN": None})
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output


BAD_REPOS = {
    "json_threads_type": ("config.json", '{"threads": "many"}', "threads"),
    "json_providers_type": ("config.json", '{"providers": ["cpu"]}', "providers"),
    "json_batch_type": ("config.json", '{"max_batch_graphs": 2.5}', "max_batch_graphs"),
    "json_negative": ("config.json", '{"max_queue_size": -1}', "max_queue_size"),
    "pbtxt_syntax": ("config.pbtxt", 'name: "m"\nmax_batch_size: 8 {{\n', "config.pbtxt"),
    "pbtxt_name": ("config.pbtxt", 'name: "other"\nplatform: "onnxruntime_onnx"\n', "does not match"),
    "pbtxt_platform": ("config.pbtxt", 'platform: "pytorch_libtorch"\n', "platform"),
    "pbtxt_delay_type": ("config.pbtxt", 'dynamic_batching { max_queue_delay_microseconds: "soon" }\n', "max_queue_delay"),
    "json_deep": ("config.json", "[" * 100_000 + "]" * 100_000, "config.json: not valid JSON (nested too deeply)"),
    "json_huge_int": ("config.json", '{"threads": ' + "1" * 5000 + "}", "config.json: not valid JSON"),
    "pbtxt_bad_hex": ("config.pbtxt", 'name: "\\x4"\n', "config.pbtxt: line 1: bad string escape"),
    "pbtxt_bad_name_escape": ("config.pbtxt", 'platform: "onnxruntime_onnx"\nname: "\\N{nope}"\n',
                              "config.pbtxt: line 2: bad string escape"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPOS))
def test_bad_repository_config_is_one_line(tmp_path, case):
    from edgemp.cli.serve import serve

    fname, text, word = BAD_REPOS[case]
    (tmp_path / "repo" / "m").mkdir(parents=True)
    build_sparse_model(tmp_path / "repo" / "m" / "model.onnx")
    (tmp_path / "repo" / "m" / fname).write_text(text)
    result = CliRunner().invoke(serve, [str(tmp_path / "repo"), "--port", "0"], env={"EDGEMP_AUTH_TOKEN": None})
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1, result.output
    assert word in result.output


def test_only_ascii_digit_folders_are_versions_and_dots_are_no_model_names(tmp_path):
    from edgemp.errors import EdgempError
    from edgemp.runtime.batcher import BatcherConfig
    from edgemp.runtime.server import discover
    from edgemp.runtime.server.repository import NAME_RE

    (tmp_path / "m" / "\u00b2").mkdir(parents=True)  # '²'.isdigit() is True, int('²') a ValueError
    build_sparse_model(tmp_path / "m" / "\u00b2" / "model.onnx")
    with pytest.raises(EdgempError, match="holds no models"):
        discover(tmp_path, BatcherConfig())
    (tmp_path / "m" / "3").mkdir()
    build_sparse_model(tmp_path / "m" / "3" / "model.onnx")
    (source,) = discover(tmp_path, BatcherConfig())
    assert source.version == "3"
    assert [n for n in (".", "..", "...", "m\n", "m", "a.b", ".m") if NAME_RE.match(n)] == ["m", "a.b", ".m"]
    with pytest.raises(EdgempError, match="model name '..' must be"):
        discover(tmp_path / "m" / "3" / "model.onnx", BatcherConfig(), name="..")


def test_valid_config_pbtxt_is_applied(tmp_path):
    from edgemp.runtime.batcher import BatcherConfig
    from edgemp.runtime.server import discover

    (tmp_path / "m").mkdir()
    build_sparse_model(tmp_path / "m" / "model.onnx")
    (tmp_path / "m" / "config.pbtxt").write_text(
        'name: "m"  # Triton fields edgemp does not use are accepted\nplatform: "onnxruntime_onnx"\n'
        'max_batch_size: 8\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'dynamic_batching { max_queue_delay_microseconds: 250 }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n')
    (source,) = discover(tmp_path, BatcherConfig())
    assert source.batcher.max_queue_delay_us == 250
