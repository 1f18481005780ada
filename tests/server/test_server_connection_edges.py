"""Where the fast path meets aiohttp on one connection, on uvloop (what ``edgemp serve`` runs on):
an upgrade request, a keep-alive timer armed while a fast request begins, a read of whole
requests followed by bytes no parser accepts, and a refused upload arriving during a drain.
Each of these once lost or misplaced an answer (found by adversarial testing).
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.server import ServerConfig
from hardening_utils import raw_socket, start_thread_server
from runtime_fixtures import build_sparse_model, random_graphs
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

pytest.importorskip("uvloop")

INFER = "/v2/models/gnn/infer"
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket"}
BAD_CHUNK = b"POST /v2/models/gnn/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edges_repo")
    (root / "gnn").mkdir()
    build_sparse_model(root / "gnn" / "model.onnx")
    return root


def _fast_infer(graphs) -> bytes:
    body, header_length = v2_binary_body(batch_tensors(graphs))
    return wire("POST", INFER, body, {"Inference-Header-Content-Length": header_length})


def _outputs(response) -> dict:
    status, headers, body = response
    assert status == 200, body[:300]
    return decode_v2_response(body, headers.get("inference-header-content-length"))[1]


def _counted(port: int) -> socket.socket:
    """An open connection the server has accepted (it answered a probe on it)."""
    sock = raw_socket(port, timeout=30.0)
    sock.sendall(wire("GET", "/v2/health/ready"))
    assert read_response(sock, bytearray())[0] == 200
    return sock


@pytest.fixture(scope="module")
def server(repo):
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, keepalive_timeout_s=30.0),
                              BatcherConfig(max_queue_delay_us=300_000_000), uvloop=True)
    yield srv
    srv.close()


def test_an_upgrade_request_is_answered_alone_and_behind_a_fast_request(server, gnn):
    with raw_socket(server.port) as sock:
        sock.sendall(wire("GET", "/v2/health/ready", headers=UPGRADE))
        assert read_response(sock, bytearray())[0] == 200  # aiohttp's answer (no upgrade is offered)
    graphs = random_graphs(np.random.default_rng(0), 2)
    idle = _counted(server.port)  # holds the fast request's batch (5-minute delay) until it closes
    sock = raw_socket(server.port, timeout=30.0)
    try:
        sock.sendall(_fast_infer(graphs))
        time.sleep(0.2)
        sock.sendall(wire("GET", "/v2/health/ready", headers=UPGRADE))  # read while the infer is in flight
        time.sleep(0.1)
        idle.close()
        buf = bytearray()
        assert_outputs_match(_outputs(read_response(sock, buf)), expected_layout(gnn, graphs), "before the upgrade")
        assert read_response(sock, buf)[0] == 200
    finally:
        sock.close()


@pytest.mark.parametrize("first", ["health", "infer"])
def test_whole_requests_before_unparsable_bytes_each_get_their_answer(server, gnn, first):
    graphs = random_graphs(np.random.default_rng(1), 1)
    request = wire("GET", "/v2/health/live?x=1") if first == "health" else _fast_infer(graphs)
    with raw_socket(server.port) as sock:
        sock.sendall(request + wire("GET", "/v2/models/gnn") + BAD_CHUNK)  # one read
        buf = bytearray()
        answer = read_response(sock, buf)
        if first == "health":
            assert answer[0] == 200 and answer[2] == b""
        else:
            assert_outputs_match(_outputs(answer), expected_layout(gnn, graphs), "before the garbage")
        metadata = read_response(sock, buf)
        assert metadata[0] == 200 and b'"name": "gnn"' in metadata[2]
        status, _, body = read_response(sock, buf)
        assert status == 400 and b"chunk" in body


def test_a_fast_request_that_follows_an_aiohttp_answer_at_once_outlives_the_keep_alive(repo, gnn):
    """aiohttp re-arms its keep-alive timer when its handler loop resumes, which can be just after
    the next (fast) request began; held longer than the keep-alive, that request must still be
    answered, not closed on. About half of such pairs hit the gap."""
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, keepalive_timeout_s=0.2),
                              BatcherConfig(max_queue_delay_us=300_000_000), uvloop=True)
    rng = np.random.default_rng(2)
    try:
        for i in range(8):
            graphs = random_graphs(rng, 1)
            other = _counted(srv.port)  # keeps the batch waiting; kept alive by its probes
            sock = raw_socket(srv.port, timeout=30.0)
            try:
                buf = bytearray()
                sock.sendall(wire("GET", "/v2"))  # aiohttp's route
                assert read_response(sock, buf)[0] == 200
                sock.sendall(_fast_infer(graphs))  # at once, as a closed-loop client does
                for _ in range(4):  # 0.4 s in flight: twice the keep-alive
                    time.sleep(0.1)
                    other.sendall(wire("GET", "/v2/health/ready"))
                    assert read_response(other, bytearray())[0] == 200
                other.close()  # nothing more can join: the batch runs
                assert_outputs_match(_outputs(read_response(sock, buf)), expected_layout(gnn, graphs), f"pair {i}")
            finally:
                sock.close()
                other.close()
    finally:
        srv.close()


def test_an_upload_refused_during_a_drain_neither_holds_it_nor_gets_a_late_408(repo, gnn):
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, keepalive_timeout_s=30.0,
                                                 header_timeout_s=2.0),
                              BatcherConfig(max_queue_delay_us=400_000), uvloop=True)
    graphs = random_graphs(np.random.default_rng(3), 1)
    idle = _counted(srv.port)  # the held request's batch waits its 400 ms delay
    holder = raw_socket(srv.port, timeout=30.0)
    holder.sendall(_fast_infer(graphs))
    time.sleep(0.05)
    started = time.monotonic()
    closer = threading.Thread(target=srv.close, args=(90,))
    closer.start()  # as SIGTERM: the drain waits for the held request
    time.sleep(0.05)
    slow = wire("POST", INFER, v2_json_body(batch_tensors(graphs)), {"Content-Encoding": "identity"})
    cut = slow.index(b"\r\n\r\n") + 14  # the headers and 10 bytes of the body
    sock = raw_socket(srv.port, timeout=30.0)
    try:
        sock.sendall(slow[:cut])
        buf = bytearray()
        status, _, body = read_response(sock, buf)
        assert status == 503 and b"shutting down" in body
        assert_outputs_match(_outputs(read_response(holder, bytearray())), expected_layout(gnn, graphs), "held")
        time.sleep(0.6)  # the drain is past its wait for in-flight requests
        try:
            sock.sendall(slow[cut:] + wire("GET", "/v2/health/live"))
            late = sock.recv(4096)
        except OSError:  # closed by the shutdown: the right outcome too
            late = b""
        assert not late.startswith(b"HTTP/1.1 408"), late[:200]
    finally:
        sock.close()
        holder.close()
        idle.close()
        closer.join(60)
    # The refused body's lingering read once held the drain for its full 10 s.
    assert time.monotonic() - started < 5.0


@pytest.fixture(scope="module")
def short_deadline(repo):
    """Header deadline 0.5 s, keep-alive 30 s, body limit 1 KiB, a bearer token."""
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False, keepalive_timeout_s=30.0,
                                                 header_timeout_s=0.5, max_body_bytes=1024, auth_token="good"),
                              uvloop=True)
    yield srv
    srv.close()


def _all_answers(sock: socket.socket, wait_s: float) -> list[int]:
    """The statuses of every response the connection carries within ``wait_s`` (or until it closes)."""
    sock.settimeout(wait_s)
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, socket.timeout):
        pass
    return [int(data[i + 9:i + 12]) for i in range(len(data)) if data.startswith(b"HTTP/1.1 ", i)]


@pytest.mark.parametrize("refusal", ["too_large", "wrong_token", "unknown_model"])
def test_a_request_refused_before_its_body_gets_one_answer_while_the_body_arrives(short_deadline, refusal):
    """A POST refused on its headers (413, 401, 404) is answered while its body still comes in. Those
    body bytes are not a next request's late headers: they once drew a second answer, a 408, which
    a later request on the connection could read as its own."""
    body = b"x" * 900 if refusal != "too_large" else b"x" * 4000
    headers = {"Authorization": "Bearer good"}
    path = INFER
    if refusal == "wrong_token":
        headers = {"Authorization": "Bearer bad"}
    elif refusal == "unknown_model":
        path = "/v2/models/nope/infer"
    request = wire("POST", path, body, {"Content-Type": "application/json", **headers})
    head = request.index(b"\r\n\r\n") + 4
    with raw_socket(short_deadline.port) as sock:
        sock.sendall(request[:head + 10])
        time.sleep(0.3)
        sock.sendall(request[head + 10:head + 500])
        statuses = _all_answers(sock, 1.5)  # three header deadlines
    assert statuses == [{"too_large": 413, "wrong_token": 401, "unknown_model": 404}[refusal]], statuses


def test_a_next_request_whose_headers_begin_in_the_same_read_has_its_deadline(short_deadline):
    """One read: a whole request, then the start of the next one's headers. That second request
    must get its 408 at the header deadline, not be held until the keep-alive closes it."""
    with raw_socket(short_deadline.port) as sock:
        sock.sendall(wire("GET", "/v2/health/live") + b"GET /v2/health/live HTTP/1.1\r\nHo")
        started = time.monotonic()
        statuses = _all_answers(sock, 5.0)
        assert statuses == [200, 408], statuses
        assert time.monotonic() - started < 5.0  # closed by the deadline, not waited out


@pytest.mark.parametrize("case", ["wrong_token", "too_large", "valid"])
def test_expect_100_continue_invites_only_a_body_that_will_be_read(short_deadline, gnn, case):
    """``Expect: 100-continue`` is answered before any middleware runs: the token and the announced
    size must be checked there too, or a client is invited to upload a body that is then refused."""
    graphs = random_graphs(np.random.default_rng(4), 1)
    body = v2_json_body(batch_tensors(graphs)) if case != "too_large" else b"x" * 4096
    token = "bad" if case == "wrong_token" else "good"
    request = wire("POST", INFER, body, {"Expect": "100-continue", "Authorization": f"Bearer {token}",
                                         "Content-Type": "application/json"})
    head = request[:request.index(b"\r\n\r\n") + 4]
    with raw_socket(short_deadline.port) as sock:
        sock.sendall(head)  # the body waits for 100 Continue, as curl and requests send it
        first = sock.recv(65536)
        if case != "valid":
            status = int(first[9:12])
            assert status == (401 if case == "wrong_token" else 413), first[:200]
            assert not first.startswith(b"HTTP/1.1 100") and b"Connection: close" in first
            return
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first[:200]
        sock.sendall(body)
        buf = bytearray(first[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
        assert_outputs_match(_outputs(read_response(sock, buf)), expected_layout(gnn, graphs), "after 100 Continue")


def test_blank_lines_before_any_request_do_not_stop_the_opening_deadline(short_deadline):
    """httptools skips CRLF before a request line without beginning a request: a client sending only
    blank lines must still be cut off at the header deadline, as a silent one is."""
    with raw_socket(short_deadline.port) as sock:
        sock.sendall(b"\r\n")
        time.sleep(0.2)
        sock.sendall(b"\r\n")
        started = time.monotonic()
        assert _all_answers(sock, 3.0) == [408]
        assert time.monotonic() - started < 3.0  # closed, not waited out
