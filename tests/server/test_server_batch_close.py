"""With ``max_queue_delay_us`` set, a batch closes as soon as every open HTTP/1.1 connection has
its request queued (nothing more can arrive), and waits out its delay while any connection
could still send, an HTTP/2 (gRPC) one included.

The delays here are minutes long on purpose: an answer that comes back within the socket
timeout can only have come from the early close, never from the delay running out.
"""
from __future__ import annotations

import json
import select
import socket
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
    free_port,
    read_response,
    v2_binary_body,
    wire,
)

DELAY_US = 300_000_000  # 5 minutes: never reached by a passing test


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("close_repo")
    (root / "gnn").mkdir()
    build_sparse_model(root / "gnn" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def server(repo):
    config = ServerConfig(port=0, access_log=False, keepalive_timeout_s=600.0, grpc_port=free_port())
    srv = start_thread_server(repo, config, BatcherConfig(max_queue_delay_us=DELAY_US))
    srv.grpc_port = config.grpc_port  # type: ignore[attr-defined]
    yield srv
    srv.close()


class Client:
    """One keep-alive connection, known to the server (it answered a probe) before it infers."""

    def __init__(self, port: int) -> None:
        self.sock = raw_socket(port, timeout=30.0)
        self.buf = bytearray()
        self.sock.sendall(wire("GET", "/v2/health/ready"))
        assert read_response(self.sock, self.buf)[0] == 200

    def send_infer(self, graphs) -> None:
        body, header_length = v2_binary_body(batch_tensors(graphs))
        self.sock.sendall(wire("POST", "/v2/models/gnn/infer", body, {"Inference-Header-Content-Length": header_length}))

    def answer(self) -> dict[str, np.ndarray]:
        status, headers, body = read_response(self.sock, self.buf)
        assert status == 200, body[:300]
        return decode_v2_response(body, headers.get("inference-header-content-length"))[1]

    def pending(self, wait_s: float) -> bool:
        """True if nothing of an answer arrived within ``wait_s``."""
        return not self.buf and not select.select([self.sock], [], [], wait_s)[0]

    def close(self) -> None:
        self.sock.close()


def _stats(port: int) -> dict:
    c = Client(port)
    try:
        c.sock.sendall(wire("GET", "/v2/models/gnn/stats"))
        status, _, body = read_response(c.sock, c.buf)
        assert status == 200
        return json.loads(body)["model_stats"][0]
    finally:
        c.close()


def _batches(before: dict, after: dict) -> tuple[int, int]:
    """(batches run, graphs run) between two stats snapshots."""
    return (after["execution_count"] - before["execution_count"],
            after["inference_count"] - before["inference_count"])


def test_batch_closes_once_every_connection_has_sent(server, gnn):
    rng = np.random.default_rng(0)
    requests = [random_graphs(rng, 1) for _ in range(3)]
    clients = [Client(server.port) for _ in requests]
    before = _stats(server.port)  # its connection is closed again before the infers
    try:
        for c, graphs in zip(clients[:2], requests):
            c.send_infer(graphs)
        assert clients[0].pending(0.3) and clients[1].pending(0.0)  # the third connection could still send
        clients[2].send_infer(requests[2])
        for c, graphs in zip(clients, requests):  # long before the 5-minute delay
            assert_outputs_match(c.answer(), expected_layout(gnn, graphs), "early close")
    finally:
        for c in clients:
            c.close()
    assert _batches(before, _stats(server.port)) == (1, 3)


def test_a_connection_that_closes_releases_the_batch_waiting_for_it(server, gnn):
    rng = np.random.default_rng(1)
    requests = [random_graphs(rng, 2) for _ in range(2)]
    clients = [Client(server.port) for _ in requests]
    idle = Client(server.port)
    try:
        for c, graphs in zip(clients, requests):
            c.send_infer(graphs)
        assert clients[0].pending(0.3)  # the idle connection could still send
        idle.close()
        for c, graphs in zip(clients, requests):
            assert_outputs_match(c.answer(), expected_layout(gnn, graphs), "released by a close")
    finally:
        for c in clients:
            c.close()


def test_a_lone_connection_is_answered_at_once_despite_the_delay(server, gnn):
    rng = np.random.default_rng(2)
    c = Client(server.port)
    try:
        for _ in range(3):
            graphs = random_graphs(rng, 2)
            c.send_infer(graphs)
            assert_outputs_match(c.answer(), expected_layout(gnn, graphs), "alone")
    finally:
        c.close()


def test_an_open_grpc_connection_keeps_the_batch_waiting(server, gnn):
    """An HTTP/2 connection can carry any number of requests: no bound while one is open."""
    rng = np.random.default_rng(3)
    requests = [random_graphs(rng, 1) for _ in range(2)]
    clients = [Client(server.port) for _ in requests]
    grpc = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=30)
    try:
        grpc.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))  # preface + SETTINGS
        assert grpc.recv(9)  # the server's SETTINGS: the connection is admitted, and counted
        for c, graphs in zip(clients, requests):
            c.send_infer(graphs)
        assert clients[0].pending(0.3) and clients[1].pending(0.0)
        grpc.close()
        for c, graphs in zip(clients, requests):
            assert_outputs_match(c.answer(), expected_layout(gnn, graphs), "after the gRPC connection closed")
    finally:
        grpc.close()
        for c in clients:
            c.close()
