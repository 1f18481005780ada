"""benchmarks/floor_server.c batches as edgemp does and answers each request once; bench_p99_floor's compute table."""
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
SPIN_US = 3000  # every batch size: long enough to tell one batch from two


def _request(body: bytes = b"abc") -> bytes:
    return b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def _read_answers(sock: socket.socket, count: int) -> bytes:
    buf = b""
    while buf.count(b"hello") < count:
        chunk = sock.recv(65536)
        assert chunk, "the floor closed the connection"
        buf += chunk
    return buf


@pytest.fixture
def start(tmp_path):
    procs = []

    def run(delay_us: int = 0, max_batch: int = 4) -> int:
        proc, port = floor.start_floor(tmp_path, ANSWER, [SPIN_US] * max_batch, delay_us, None, max_batch)
        procs.append(proc)
        return port

    yield run
    for proc in procs:
        proc.kill()
        proc.wait()


def test_requests_complete_at_one_look_are_one_batch_and_each_gets_one_answer(start):
    port = start()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    time.sleep(0.1)  # all three accepted before they send
    for s in socks:
        s.sendall(_request())
    for s in socks:
        assert _read_answers(s, 1) == ANSWER
    batches, requests, spin_ns = floor.floor_stats(port)
    assert requests == 3 and 1 <= batches <= 3 and spin_ns == batches * SPIN_US * 1000
    # a request split across two sends, and two pipelined on one connection, are framed right
    wire = _request(b"x" * 100)
    socks[0].sendall(wire[:30])
    time.sleep(0.05)
    socks[0].sendall(wire[30:] + _request() + _request())
    assert _read_answers(socks[0], 3) == ANSWER * 3
    assert floor.floor_stats(port)[1] == 6


def test_a_delay_waits_for_every_connection_then_runs_one_batch(start):
    port = start(delay_us=500_000)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    time.sleep(0.1)
    t0 = time.perf_counter()
    socks[0].sendall(_request())
    socks[1].sendall(_request())  # every open connection has one waiting: no need to wait the delay
    for s in socks:
        _read_answers(s, 1)
    assert time.perf_counter() - t0 < 0.4
    assert floor.floor_stats(port)[:2] == (1, 2)
    third = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.1)
    t0 = time.perf_counter()
    third.sendall(_request())  # one of three connections: the batch waits out the delay
    _read_answers(third, 1)
    assert time.perf_counter() - t0 >= 0.45
    assert floor.floor_stats(port)[:2] == (2, 3)


def test_health_answers_at_once_and_a_closed_client_does_not_stop_the_server(start):
    port = start()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_request())  # then leaves before its answer
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")


def test_bad_arguments_exit_with_a_usage_line(tmp_path):
    exe = floor.build_floor(tmp_path)
    out = subprocess.run([str(exe), "1"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2 and "usage: floor_server" in out.stderr


def test_the_compute_table_keeps_measured_sizes_and_fits_the_rest():
    def size(n: int, count: int, mean_us: float) -> dict:
        return {"batch_size": n, "compute_infer": {"count": count, "ns": int(count * mean_us * 1000)}}
    stats = {"batch_stats": [size(8, 100, 500.0), size(16, 100, 900.0), size(3, 2, 9999.0)]}  # 3: too few to trust
    table = floor.compute_table(stats)
    assert len(table) == floor.MAX_BATCH
    assert table[7] == pytest.approx(500.0) and table[15] == pytest.approx(900.0)
    assert table[23] == pytest.approx(1300.0)  # on the line through the measured sizes: 100 + 50 µs a graph
    assert table[2] == pytest.approx(250.0)
