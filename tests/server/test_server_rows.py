"""Row requests (runtime/server/rows.py): the one-graph V2 binary requests of a loop turn go to
the batcher as one, and each still gets exactly its own answer, its own error, or the core's 503.

Many keep-alive connections each send one request at a time with a header seen before (same
graph size): after the first, such requests are rows. Every answer is checked against the
model run in process; the server's count of row answers shows the rows were taken.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from edgemp.graph import Graph
from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.server import ServerConfig
from edgemp.runtime.server.state import STATE
from hardening_utils import EF, build_repo, raw_socket, start_thread_server
from runtime_fixtures import random_graph
from server_utils import (
    assert_outputs_match,
    at_once,
    batch_tensors,
    decode_v2_response,
    expected_layout,
    read_response,
    same_size,
    v2_binary_body,
    wire,
)

CLIENTS = 12


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_repo(tmp_path_factory.mktemp("rows_repo"))


def _request(model: str, graph: Graph, edit=None) -> bytes:
    ef = 0 if graph.edge_attr is None else graph.edge_attr.shape[1]
    tensors = {name: value.copy() for name, value in batch_tensors([graph], ef).items()}  # views of shared arrays
    if edit is not None:
        edit(tensors)
    body, header_length = v2_binary_body(tensors)
    return wire("POST", f"/v2/models/{model}/infer", body, {"Inference-Header-Content-Length": str(header_length)})


def _clients(port: int, requests: list[list[bytes]]) -> list[list[tuple[int, dict, bytes]]]:
    """One keep-alive connection per list, all at once, each sending its requests one at a time."""

    def client(i: int) -> list:
        sock, buf, got = raw_socket(port), bytearray(), []
        try:
            for request in requests[i]:
                sock.sendall(request)
                got.append(read_response(sock, buf))
        finally:
            sock.close()
        return got

    return at_once(len(requests), client)


@pytest.mark.parametrize("model", ["gnn", "gnn_edge", "gnn_dense"])
def test_rows_answer_each_request_with_its_own_outputs(repo, model, request):
    """Graph- and node-level outputs, with and without edge features, sparse and dense models:
    every row's answer is its own graph's, as the model gives it alone."""
    from edgemp.runtime.model import load

    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False), uvloop=True)
    rng = np.random.default_rng(5)
    ef = EF if model == "gnn_edge" else 0
    bases = [random_graph(rng, n, e, ef) for n, e in ((5, 8), (9, 14), (2, 2))]  # three headers: rows of three plans
    graphs = [[same_size(rng, bases[(i + r) % 3]) for r in range(6)] for i in range(CLIENTS)]
    try:
        answers = _clients(srv.port, [[_request(model, g) for g in row] for row in graphs])
        served = srv.app[STATE].models[model]
    finally:
        srv.close()
    with load(repo / model / "model.onnx") as m:
        for i in range(CLIENTS):
            for r, (status, headers, body) in enumerate(answers[i]):
                assert status == 200 and headers["server"] == "edgemp", (i, r, body[:200])
                _, outputs = decode_v2_response(body, headers.get("inference-header-content-length"))
                assert_outputs_match(outputs, expected_layout(m, [graphs[i][r]]), f"client {i} request {r}")
    assert served.rows_answered > CLIENTS, served.rows_answered  # most were rows, not the request core's
    stats = served.stats.to_json(model, "1")
    assert stats["inference_stats"]["success"]["count"] == CLIENTS * 6
    assert stats["inference_count"] == CLIENTS * 6


def test_a_malformed_row_fails_alone_and_the_others_are_answered(repo):
    """A request with a header seen before but an edge to a node it does not have (found only when
    its batch is checked) gets the core's 400; the requests batched with it get their answers."""
    from edgemp.runtime.model import load

    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False),
                              BatcherConfig(max_queue_delay_us=20_000), uvloop=True)
    rng = np.random.default_rng(6)
    base = random_graph(rng, 6, 10)
    warm = [_request("gnn", same_size(rng, base)) for _ in range(CLIENTS)]
    graphs = [same_size(rng, base) for _ in range(CLIENTS)]

    def far_edge(tensors):
        tensors["edge_index"][0, 0] = 10_000

    second = [_request("gnn", g, far_edge if i == 3 else None) for i, g in enumerate(graphs)]
    counts = [_request("gnn", g, (lambda t: t["graph_node_counts"].__setitem__(0, 1)) if i == 5 else None)
              for i, g in enumerate(graphs)]
    try:
        answers = _clients(srv.port, [[warm[i], second[i], counts[i]] for i in range(CLIENTS)])
        served = srv.app[STATE].models["gnn"]
    finally:
        srv.close()
    with load(repo / "gnn" / "model.onnx") as m:
        for i in range(CLIENTS):
            for r, (status, headers, body) in enumerate(answers[i][1:], start=1):
                if (r, i) in ((1, 3), (2, 5)):
                    assert status == 400, (i, r, body)
                    error = json.loads(body)["error"]
                    assert ("10000" in error) if r == 1 else ("graph_node_counts" in error), error
                    continue
                assert status == 200, (i, r, body[:300])
                _, outputs = decode_v2_response(body, headers.get("inference-header-content-length"))
                assert_outputs_match(outputs, expected_layout(m, [graphs[i]]), f"client {i} request {r}")
    assert served.rows_answered >= CLIENTS, served.rows_answered


def test_rows_a_full_queue_cannot_take_get_the_cores_503(repo):
    """The queue's limit counts rows: a group larger than the room left goes to the core one by
    one, and those that do not fit get 503 as any request would; none is lost or answered twice."""
    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False),
                              BatcherConfig(max_queue_size=3, max_queue_delay_us=50_000), uvloop=True)
    rng = np.random.default_rng(7)
    base = random_graph(rng, 6, 10)
    try:
        answers = _clients(srv.port, [[_request("gnn", same_size(rng, base)) for _ in range(4)] for _ in range(CLIENTS)])
    finally:
        srv.close()
    statuses = [status for client in answers for status, _, _ in client]
    assert len(statuses) == CLIENTS * 4 and set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for client in answers:
        for status, _, body in client:
            if status == 503:
                assert "queue is full" in json.loads(body)["error"], body


def test_a_drain_finishes_admitted_rows_and_a_failed_group_keeps_its_answers(repo):
    """SIGTERM while a group holding one malformed row waits in the queue: each admitted row is
    answered as the core answers a request admitted before a drain (the culprit 400, the others
    200), never 503 as if it had come after (rows used to be admitted a second time when a group
    failed; found by review)."""
    import time

    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False),
                              BatcherConfig(max_queue_delay_us=400_000), uvloop=True)
    rng = np.random.default_rng(8)
    base = random_graph(rng, 6, 10)
    idle = [raw_socket(srv.port) for _ in range(20)]  # open connections: the batch waits out its delay
    socks = [raw_socket(srv.port) for _ in range(8)]
    bufs = [bytearray() for _ in socks]
    graphs = [same_size(rng, base) for _ in socks]
    try:
        for sock, buf in zip(socks, bufs):  # the header answered once through the core
            sock.sendall(_request("gnn", same_size(rng, base)))
            assert read_response(sock, buf)[0] == 200

        def far_edge(tensors):
            tensors["edge_index"][0, 0] = 10_000

        requests = [_request("gnn", g, far_edge if i == 3 else None) for i, g in enumerate(graphs)]
        barrier = threading.Barrier(len(socks))

        def send(i: int) -> None:
            barrier.wait()
            socks[i].sendall(requests[i])

        senders = [threading.Thread(target=send, args=(i,)) for i in range(len(socks))]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        time.sleep(0.15)  # queued, waiting out the delay: now the drain
        stopper = threading.Thread(target=srv.close)
        stopper.start()
        answers = [read_response(sock, buf) for sock, buf in zip(socks, bufs)]
        stopper.join()
    finally:
        for sock in idle + socks:
            sock.close()
    from edgemp.runtime.model import load

    with load(repo / "gnn" / "model.onnx") as m:
        for i, (status, headers, body) in enumerate(answers):
            if i == 3:
                assert status == 400 and "edge_index holds node 10000" in json.loads(body)["error"], body
                continue
            assert status == 200, (i, body)
            _, outputs = decode_v2_response(body, headers.get("inference-header-content-length"))
            assert_outputs_match(outputs, expected_layout(m, [graphs[i]]), f"client {i}")
    served = srv.app[STATE].models["gnn"]
    outcomes = served.stats.metrics().outcomes
    assert outcomes["success"] == 15 and outcomes["bad_request"] == 1 and outcomes["rejected"] == 0, outcomes
    assert srv.app[STATE].inflight == 0


def test_a_valid_row_of_a_failed_group_is_not_refused_by_a_queue_filled_meanwhile(repo):
    """The queue took a group; its batch failed on a malformed row; requests filled the queue
    meanwhile. The group's valid rows were accepted before, so they run again: 200, not 503."""
    import time

    from edgemp.runtime.model import Model

    slow_check = Model.validated_batch

    def slower(self, graphs):  # the worker busy with the failing batch while the queue fills up
        if len(graphs) == 2:
            time.sleep(0.3)
        return slow_check(self, graphs)

    srv = start_thread_server(repo, ServerConfig(port=0, access_log=False),
                              BatcherConfig(max_queue_size=4, max_batch_nodes=12, max_queue_delay_us=1_000_000),
                              uvloop=True)
    rng = np.random.default_rng(9)
    base, small = random_graph(rng, 6, 10), random_graph(rng, 2, 2)
    idle = [raw_socket(srv.port) for _ in range(20)]
    pair = [raw_socket(srv.port) for _ in range(2)]
    fillers = [raw_socket(srv.port) for _ in range(4)]
    bufs = {id(s): bytearray() for s in pair + fillers}
    try:
        for sock in pair:  # both headers answered once through the core
            sock.sendall(_request("gnn", same_size(rng, base)))
            assert read_response(sock, bufs[id(sock)])[0] == 200
        for sock in fillers:
            sock.sendall(_request("gnn", same_size(rng, small)))
            assert read_response(sock, bufs[id(sock)])[0] == 200
        Model.validated_batch = slower
        valid = same_size(rng, base)

        def far_edge(tensors):
            tensors["edge_index"][0, 0] = 10_000

        pair[0].sendall(_request("gnn", valid) + b"")  # both in one turn: one group, a batch of its own
        pair[1].sendall(_request("gnn", same_size(rng, base), far_edge))
        time.sleep(0.1)
        for sock in fillers:
            sock.sendall(_request("gnn", same_size(rng, small)))
        answers = {i: read_response(sock, bufs[id(sock)]) for i, sock in enumerate(pair + fillers)}
    finally:
        Model.validated_batch = slow_check
        for sock in idle + pair + fillers:
            sock.close()
        srv.close()
    assert answers[1][0] == 400, answers[1]
    assert answers[0][0] == 200, answers[0]
    assert [answers[i][0] for i in range(2, 6)] == [200] * 4, answers
