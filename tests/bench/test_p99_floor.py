"""benchmarks/floor_server.c batches as edgemp does and answers each request once, in order; bench_p99_floor's sums."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest

from server_utils import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_p99_floor as floor  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
HEALTH = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"


def _request(body: bytes = b"abc") -> bytes:
    return b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def _read_until(sock: socket.socket, count: int, token: bytes = b"hello") -> bytes:
    buf = b""
    while buf.count(token) < count:
        chunk = sock.recv(65536)
        assert chunk, f"the floor closed the connection after {buf!r}"
        buf += chunk
    return buf


@pytest.fixture
def start(tmp_path):
    procs = []

    def run(spin_us: float = 3000, delay_us: int = 0, max_batch: int = 4) -> int:
        proc, port = floor.start_floor(tmp_path, ANSWER, [spin_us] * max_batch, delay_us, None, max_batch)
        procs.append(proc)
        return port

    yield run
    for proc in procs:
        proc.kill()
        proc.wait()


def _connect(port: int, count: int) -> list[socket.socket]:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    time.sleep(0.1)  # all accepted before any sends
    return socks


def test_each_request_gets_one_answer_in_order_and_each_batch_spins_its_size(start):
    port = start()
    socks = _connect(port, 3)
    for s in socks:
        s.sendall(_request())
    for s in socks:
        assert _read_until(s, 1) == ANSWER
    batches, requests, spin_ns = floor.floor_stats(port)
    assert requests == 3 and 1 <= batches <= 3 and spin_ns == batches * 3_000_000
    # split across two sends, then three pipelined with a health check between: one request of a
    # connection in the server at a time (as edgemp), answers in the order asked
    wire = _request(b"x" * 100)
    socks[0].sendall(wire[:30])
    time.sleep(0.05)
    socks[0].sendall(wire[30:] + _request() + HEALTH + _request())
    got = _read_until(socks[0], 3)
    assert got.count(b"HTTP/1.1 200") == 4 and got.index(b"Content-Length: 0") > got.index(b"hello") + 10
    assert floor.floor_stats(port)[:2] == (batches + 3, 6)


def test_a_delay_counts_from_when_a_request_is_read_even_during_a_batch(start):
    port = start(spin_us=200_000, delay_us=300_000)
    a, b, _idle = _connect(port, 3)
    t0 = time.perf_counter()
    a.sendall(_request())  # one of three connections: waits the delay (300 ms), then spins 200 ms
    time.sleep(0.35)
    b.sendall(_request())  # read during that batch: due 300 ms after, answered 200 ms later
    _read_until(a, 1)
    _read_until(b, 1)
    assert 0.45 <= time.perf_counter() - t0 - 0.35 <= 0.62
    assert floor.floor_stats(port)[:2] == (2, 2)


def test_every_open_connection_waiting_closes_the_batch_at_once(start):
    port = start(spin_us=1000, delay_us=500_000)
    socks = _connect(port, 2)
    t0 = time.perf_counter()
    for s in socks:
        s.sendall(_request())
    for s in socks:
        _read_until(s, 1)
    assert time.perf_counter() - t0 < 0.4
    assert floor.floor_stats(port)[:2] == (1, 2)


def test_unusual_clients_are_answered_or_dropped_and_the_server_goes_on(start):
    port = start(spin_us=0)
    half = socket.create_connection(("127.0.0.1", port), timeout=10)
    half.sendall(_request())
    half.shutdown(socket.SHUT_WR)  # half-closed: still owed its answer
    assert _read_until(half, 1) == ANSWER and half.recv(10) == b""
    chunked = socket.create_connection(("127.0.0.1", port), timeout=10)
    chunked.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert _read_until(chunked, 1, b"501 Not Implemented")
    mute = socket.create_connection(("127.0.0.1", port), timeout=10)
    mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    mute.sendall(_request() * 100_000)  # never reads: dropped once its answers fill the socket
    left = socket.create_connection(("127.0.0.1", port), timeout=5)
    left.sendall(HEALTH)
    assert left.recv(4096).startswith(b"HTTP/1.1 200 OK")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # and it still batches
        s.sendall(_request())
        assert _read_until(s, 1) == ANSWER


def test_bad_arguments_exit_with_a_usage_line(tmp_path):
    exe = floor.build_floor(tmp_path)
    for args in (["1"], ["1", "/nonexistent", "4", "1,2,3,4"], ["1", "/dev/null", "2", "1,x"]):
        out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=10)
        assert out.returncode == 2 and "usage: floor_server" in out.stderr, args


def test_the_model_mean_weighs_each_batch_size_by_its_count():
    table = [100.0 + 50.0 * n for n in range(1, floor.MAX_BATCH + 1)]
    assert floor._model_mean({8: 1, 16: 3}, table) == pytest.approx((500 + 3 * 900) / 4)
    assert floor._model_mean({2 * floor.MAX_BATCH: 1}, table) == pytest.approx(2 * table[-1])  # past the table
    before = {"batch_stats": [{"batch_size": 8, "compute_infer": {"count": 2, "ns": 0}}]}
    after = {"batch_stats": [{"batch_size": 8, "compute_infer": {"count": 5, "ns": 0}},
                             {"batch_size": 3, "compute_infer": {"count": 1, "ns": 0}}]}
    assert floor._batch_sizes(after, before) == {8: 3, 3: 1}


def test_the_python_rows_server_answers_each_request_as_the_model_does(tmp_path):
    """benchmarks/py_floor_server.py: concurrent one-graph V2 requests batch together, and each
    answer holds exactly its own graph's prediction (the model's, run alone)."""
    import numpy as np

    pytest.importorskip("uvloop")
    import edgemp.runtime as rt
    from bench_server import export_random
    from edgemp.bench.v2client import RemoteModel, encode, request_tensors
    from edgemp.data.synthetic import molecule_like_graphs

    path = export_random("gin", 16, 0, tmp_path / "gin.onnx")
    graphs = molecule_like_graphs(48, 16, seed=3)
    model = rt.load(path)
    remote = RemoteModel.from_metadata({"name": "m", "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 16]}, {"name": "edge_index", "datatype": "INT64", "shape": [2, -1]},
        {"name": "node_graph", "datatype": "INT64", "shape": [-1]},
        {"name": "graph_node_counts", "datatype": "INT64", "shape": [-1]}],
        "outputs": [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]})
    proc, port = floor.start_py_floor(path, 2000, None, 64)
    try:
        socks = _connect(port, 16)
        for round_ in range(3):
            for k, sock in enumerate(socks):
                body, headers = encode(request_tensors([graphs[round_ * 16 + k]], remote), "binary")
                sock.sendall(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %s\r\n"
                             b"Content-Length: %d\r\n\r\n" % (headers["Inference-Header-Content-Length"].encode(),
                                                              len(body)) + body)
            for k, sock in enumerate(socks):
                answer = _read_until(sock, 1, b"}")
                while len(answer) < answer.index(b"\r\n\r\n") + 4 + 144:  # its JSON header (140 bytes) and one float
                    answer += sock.recv(65536)
                got = np.frombuffer(answer[-4:], np.float32)[0]
                want = model.predict([graphs[round_ * 16 + k]])[0]["prediction"].reshape(-1)[0]
                assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (round_, k, got, want)
        batches, requests, compute_ns = floor.floor_stats(port)
        assert requests == 48 and batches < 48 and compute_ns > 0, (batches, requests)
    finally:
        proc.kill()
        proc.wait()
