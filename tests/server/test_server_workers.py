"""``edgemp serve --workers N``: several real server processes on one port.

What must hold: every request gets exactly its own answer whichever worker took it; the
statistics (V2 HTTP, gRPC and /metrics) are the whole server's from any worker; SIGTERM
drains them all (exit 0); a worker that dies or cannot start stops the server with one
readable line (exit 1).
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from edgemp.runtime.model import load
from edgemp.runtime.server.middleware import UnavailableError
from edgemp.runtime.server.peers import Peers
from edgemp.runtime.server.stats import ModelStats
from runtime_fixtures import build_sparse_model, random_graphs
from server_utils import (
    ROOT,
    assert_outputs_match,
    batch_tensors,
    decode_v2_response,
    expected_layout,
    free_port,
    http,
    start_server,
    triton_grpc_inputs,
    v2_binary_body,
    v2_json_body,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="--workers needs fork; the tests read /proc")

REQUESTS = 1500
CLIENTS = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return build_sparse_model(tmp_path_factory.mktemp("workers") / "gnn.onnx")


def _requests(model_path: Path, count: int) -> list[tuple[bytes, dict, dict]]:
    rng = np.random.default_rng(5)
    out = []
    with load(model_path) as model:
        for i in range(count):
            graphs = random_graphs(rng, int(rng.integers(1, 4)), max_nodes=int(rng.choice([5, 30])))
            tensors = batch_tensors(graphs)
            if i % 4 == 0:
                body, headers = v2_json_body(tensors, request_id=str(i)), {"Content-Type": "application/json"}
            else:
                body, n = v2_binary_body(tensors, request_id=str(i), binary_output=True)
                headers = {"Inference-Header-Content-Length": str(n)}
            out.append((body, headers, expected_layout(model, graphs)))
    return out


async def _drive(port: int, requests: list) -> int:
    """Send ``requests`` from CLIENTS keep-alive connections; every answer checked; how many were right."""
    queue = list(enumerate(requests))[::-1]
    right = 0

    async def client() -> None:
        nonlocal right
        # one connection per client, as a deployed client keeps one: the kernel spreads them over the workers
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            while queue:
                i, (body, headers, want) = queue.pop()
                async with session.post(f"http://127.0.0.1:{port}/v2/models/gnn/infer", data=body,
                                        headers=headers) as r:
                    data = await r.read()
                    assert r.status == 200, (i, r.status, data[:300])
                    header, got = decode_v2_response(data, r.headers.get("Inference-Header-Content-Length"))
                assert header["id"] == str(i), f"request {i} got the answer for {header['id']}"
                assert_outputs_match(got, want, f"request {i}")
                right += 1

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return right


def _fresh_get(port: int, path: str) -> bytes:
    """A GET on a new connection each time, so successive calls can land on different workers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:300]
    return body


def _freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until it is stopped: a SIGTERM sent before it ran again would be
    taken first (lower number) and end it instead."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.005)


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def test_workers_answer_every_request_and_report_the_whole_server(model_path, tmp_path):
    import json

    import tritonclient.grpc as tg

    requests = _requests(model_path, REQUESTS)
    gport = free_port()
    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2", "--grpc-port", str(gport),
                       "--max-queue-size", "4096")
    try:
        assert asyncio.run(_drive(srv.port, requests)) == REQUESTS
        client = tg.InferenceServerClient(f"127.0.0.1:{gport}")
        graphs = random_graphs(np.random.default_rng(9), 2)
        with load(model_path) as model:
            want = expected_layout(model, graphs)
        result = client.infer("gnn", triton_grpc_inputs(batch_tensors(graphs)))
        assert_outputs_match({k: result.as_numpy(k) for k in want}, want, "gRPC")
        total = REQUESTS + 1
        for _ in range(6):  # whichever worker answers, the counts are the server's
            stats = json.loads(_fresh_get(srv.port, "/v2/models/gnn/stats"))["model_stats"][0]
            assert stats["inference_stats"]["success"]["count"] == total
            assert stats["execution_count"] == sum(b["compute_infer"]["count"] for b in stats["batch_stats"])
            metrics = _fresh_get(srv.port, "/metrics").decode()
            assert f'edgemp_requests_total{{model="gnn",outcome="success"}} {float(total)}' in metrics
            grpc_stats = client.get_inference_statistics("gnn", as_json=True)["model_stats"][0]
            assert int(grpc_stats["inference_stats"]["success"]["count"]) == total
        client.close()
        status, _, _ = http(srv, "GET", "/v2/models/gnn/stats")
        assert status == 200
    finally:
        code = srv.stop()
    log = srv.log()
    assert code == 0, log[-3000:]
    served = [int(n) for n in re.findall(r"worker-\d .*'gnn': (\d+) request\(s\) succeeded, 0 failed", log)]
    assert len(served) == 2 and sum(served) == REQUESTS + 1, log[-3000:]
    assert min(served) > 0, f"one worker served nothing: {served}"  # 32 connections hashed over 2 workers
    assert "all 2 workers stopped; shutdown complete" in log
    assert "Traceback" not in log


def _wait_for(srv, text: str, count: int = 1, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while srv.log().count(text) < count:
        assert srv.proc.poll() is None, srv.log()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{srv.log()[-3000:]}"
        time.sleep(0.05)


def test_a_worker_that_dies_is_replaced_and_nothing_else_is_lost(model_path, tmp_path):
    import json

    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2", "--max-queue-size", "4096")

    def totals() -> tuple[int, float]:
        stats = json.loads(_fresh_get(srv.port, "/v2/models/gnn/stats"))["model_stats"][0]
        metrics = _fresh_get(srv.port, "/metrics").decode()
        scraped = re.search(r'edgemp_requests_total\{model="gnn",outcome="success"\} (\S+)', metrics)
        return stats["inference_stats"]["success"]["count"], float(scraped.group(1))

    try:
        _wait_for(srv, "with 2 workers")
        before = _worker_pids(srv.proc.pid)
        assert len(before) == 2, before
        assert asyncio.run(_drive(srv.port, _requests(model_path, 200))) == 200
        assert totals() == (200, 200.0)  # both workers' counters asked for, so kept
        os.kill(before[0], signal.SIGKILL)
        _wait_for(srv, "serves again")
        after = _worker_pids(srv.proc.pid)
        assert len(after) == 2 and before[1] in after and before[0] not in after, (before, after)
        assert totals() == (200, 200.0)  # the dead worker's share stays: a counter never goes down
        requests = _requests(model_path, 300)
        assert asyncio.run(_drive(srv.port, requests)) == 300  # both workers serve, every answer right
        assert totals() == (500, 500.0)
    finally:
        code = srv.stop()
    log = srv.log()
    assert code == 0, log[-3000:]
    assert re.search(rf"worker \d \(pid {before[0]}\) was killed by SIGKILL; starting a new one", log), log[-3000:]
    assert "Traceback" not in log


@pytest.mark.parametrize("rotating", [False, True], ids=["same-worker", "rotating-workers"])
def test_workers_that_keep_dying_stop_the_server(model_path, tmp_path, rotating):
    """Three deaths within a minute stop the server, whether one worker keeps dying or they take turns."""
    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2")
    try:
        _wait_for(srv, "with 2 workers")
        pids = _worker_pids(srv.proc.pid)
        victim = pids[0]
        for death in range(1, 4):
            os.kill(victim, signal.SIGKILL)
            if death == 3:
                break
            _wait_for(srv, "serves again", death)
            alive = _worker_pids(srv.proc.pid)
            fresh = [p for p in alive if p not in pids]
            assert len(fresh) == 1, (pids, fresh)
            pids.append(fresh[0])
            victim = [p for p in alive if p != fresh[0]][0] if rotating else fresh[0]
        code = srv.proc.wait(30)
    finally:
        srv.stop()
    log = srv.log()
    assert code == 1, log[-3000:]
    assert re.search(rf"error: worker \d \(pid {victim}\) was killed by SIGKILL; 3 workers died within "
                     r"60 s, so the other workers were stopped", log), log[-3000:]
    assert log.count("3 workers died") == 1  # one line, the error
    assert "shutdown complete" in log  # the other worker drained
    assert "Traceback" not in log
    assert _worker_pids(srv.proc.pid) == []


def test_workers_of_a_killed_supervisor_stop_and_leave_nothing(model_path):
    """SIGKILL to the supervisor: its workers drain and exit (Linux's parent-death signal) and the
    last one out removes the folder of the statistics sockets."""
    import glob

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "edgemp-workers-*")))
    proc = _serve_in_own_group(model_path, free_port(), "--name", "gnn", "--workers", "2")
    try:
        _read_until(proc, "with 2 workers")
        workers = _worker_pids(proc.pid)
        ours = set(glob.glob(os.path.join(tempfile.gettempdir(), "edgemp-workers-*"))) - before
        assert len(ours) == 1 and len(workers) == 2
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{p}").exists() for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{p}").exists() for p in workers), "workers outlived their supervisor"
        assert not any(Path(f).exists() for f in ours), "the sockets' folder was left behind"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        for p in _worker_pids(proc.pid):
            os.kill(p, signal.SIGKILL)


def _serve_in_own_group(model: Path, port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgemp.cli.serve", str(model), "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)


def _signal_and_collect(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0,
                        group: bool = False) -> str:
    """Signal a server started by :func:`_serve_in_own_group` and return the rest of its output;
    its whole group is killed if it has not exited by then (the test then fails on its output)."""
    try:
        (os.killpg if group else os.kill)(proc.pid, sig)
        rest, _ = proc.communicate(timeout=timeout)
        return rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _slow_repository(model_path: Path, folder: Path) -> Path:
    """40 copies of the model: workers take long enough loading it to be caught at it."""
    for i in range(40):
        (folder / f"m{i:02d}").mkdir(parents=True)
        (folder / f"m{i:02d}" / "model.onnx").write_bytes(model_path.read_bytes())
    return folder


def _read_until(proc: subprocess.Popen, text: str, count: int = 1, timeout: float = 60.0) -> str:
    out, deadline = "", time.monotonic() + timeout
    while out.count(text) < count:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, f"no {text!r}:\n{out[-3000:]}"
        out += line
    return out


@pytest.mark.parametrize("sig,target", [(signal.SIGTERM, "supervisor"), (signal.SIGINT, "group")])
def test_a_stop_signal_during_start_up_stops_every_worker(model_path, tmp_path, sig, target):
    """A signal while the workers still load their models (a repository of 40 models here) stops
    the server; it used to run a forked copy of the supervisor's handler in each worker and serve on."""
    proc = _serve_in_own_group(_slow_repository(model_path, tmp_path / "repo"), free_port(), "--workers", "2")
    out = ""
    try:
        out += _read_until(proc, "loaded model", 6)
    finally:
        out += _signal_and_collect(proc, sig, group=target == "group")
    assert proc.returncode == 0, out[-3000:]
    assert "all 2 workers stopped" in out and "Traceback" not in out, out[-3000:]
    assert "serving on" not in out  # it never announced a server it was stopping


def test_ctrl_c_to_the_group_lets_every_worker_finish_its_drain(model_path):
    """Ctrl-C reaches every worker and the supervisor, which forwards SIGTERM: the second
    signal must not cut a worker's clean-up short (it did, and the supervisor called it clean)."""
    for _ in range(3):
        proc = _serve_in_own_group(model_path, free_port(), "--name", "gnn", "--workers", "2")
        try:
            _read_until(proc, "with 2 workers")
        finally:
            out = _signal_and_collect(proc, signal.SIGINT, group=True)
        assert proc.returncode == 0, out[-3000:]
        assert len(re.findall(r"worker-\d .*shutdown complete", out)) == 2, out[-3000:]


def test_a_second_server_on_the_same_port_is_refused(model_path, tmp_path):
    """SO_REUSEPORT lets any process of the user join a port's group: a second server must not
    silently take half the first one's connections."""
    port, gport = free_port(), free_port()
    first = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2", "--grpc-port", str(gport))
    try:
        for args in (["--port", str(port), "--workers", "2"], ["--workers", "2", "--grpc-port", str(gport)],
                     []):
            cmd = [sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--port", str(first.port), *args]
            if args[:2] == ["--port", str(port)]:  # the gRPC port taken instead
                cmd = [sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--port", str(port), "--workers",
                       "2", "--grpc-port", str(gport)]
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert second.returncode == 1, second.stderr[-2000:]
            assert second.stderr.strip().splitlines()[-1].startswith("error: cannot listen"), second.stderr[-2000:]
            assert "address already in use" in second.stderr.lower()
    finally:
        assert first.stop() == 0


def test_http_and_grpc_on_one_port_is_refused(model_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--port", str(port),
                           "--grpc-port", str(port), "--workers", "2"], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen for gRPC on 127.0.0.1:{port}")


def test_a_replacement_does_not_serve_a_changed_model(model_path, tmp_path):
    """A worker that died is replaced by a new process that loads the model again: if the file
    changed meanwhile, it would answer as the same model with other weights. It refuses to start."""
    served = tmp_path / "served.onnx"
    served.write_bytes(model_path.read_bytes())
    srv = start_server(served, tmp_path, "--name", "gnn", "--workers", "2")
    try:
        _wait_for(srv, "with 2 workers")
        served.write_bytes(model_path.read_bytes() + b"")  # rewritten in place: a new mtime
        os.utime(served, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        os.kill(_worker_pids(srv.proc.pid)[0], signal.SIGKILL)
        code = srv.proc.wait(30)
    finally:
        srv.stop()
    log = srv.log()
    assert code == 1, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {served} changed since the server started; a new worker would serve another model "
                      "than the others: restart the server to serve it"], log[-3000:]


def test_every_address_of_the_host_is_served(model_path):
    """A host that resolves to several addresses ("" is every IPv4 and IPv6 one) is served on all
    of them, as a lone server serves it."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    proc = _serve_in_own_group(model_path, port, "--name", "gnn", "--workers", "2", "--host", "")
    try:
        _read_until(proc, "with 2 workers")
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as s:
                s.settimeout(10)
                s.connect((host, port))
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200"), host
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_a_worker_that_cannot_start_is_one_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    proc = subprocess.run([sys.executable, "-m", "edgemp.cli.serve", str(bad), "--port", "0", "--workers", "2"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "broken.onnx" in errors[0]
    assert "Traceback" not in proc.stderr


def test_port_zero_is_one_port_for_every_worker(model_path, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--name", "gnn", "--port", "0",
                             "--workers", "2"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the server exited before it was ready"
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+) with 2 workers", line)
            port = int(found.group(1)) if found else None
        assert port
        for _ in range(8):
            assert _fresh_get(port, "/v2/health/ready") == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.parametrize("count", ["0", "-1", "100000"])
def test_bad_worker_counts_are_refused(model_path, count):
    proc = subprocess.run([sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--workers", count],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: --workers must be in 1..256, got {count}"]


def test_statistics_are_summed_exactly():
    a, b = ModelStats(), ModelStats()
    a.record_success(3, 1000, 100, 10, 500, 20)
    a.record_batch(3, 40, 500)
    b.record_success(1, 2000, 200, 20, 700, 30)
    b.record_batch(1, 10, 700)
    b.record_batch(3, 30, 600)
    b.record_failure("bad_request", 5)
    b.record_failure("timeout", 50)
    merged = ModelStats.merged([a.raw(), b.raw()]).to_json("m", "1")
    assert merged["inference_count"] == 4 and merged["execution_count"] == 3
    assert merged["inference_stats"]["success"] == {"count": 2, "ns": 3000}
    assert merged["inference_stats"]["fail"] == {"count": 1, "ns": 50}
    assert {s["batch_size"]: s["compute_infer"] for s in merged["batch_stats"]} == {
        1: {"count": 1, "ns": 700}, 3: {"count": 2, "ns": 1100}}
    snap = ModelStats.merged([a.raw(), b.raw()]).metrics()
    assert snap.outcomes == {"success": 2, "rejected": 0, "timeout": 1, "failed": 0, "bad_request": 1}
    assert snap.histograms["batch_graphs"][0][-1] == ("+Inf", 3)


def test_an_unreachable_worker_fails_the_statistics_request(tmp_path):
    """A sum that silently leaves a worker out would be a wrong answer: it is a 503 instead."""

    class State:
        models: dict = {}

    peers = Peers(tmp_path, 0, 2)  # worker 1 never started
    with pytest.raises(UnavailableError, match="statistics of worker 1"):
        asyncio.run(peers.gather(State()))


def test_a_stuck_worker_is_killed_and_replaced(model_path, tmp_path):
    """SIGSTOP (a frozen loop, as a deadlock or a hung model call looks from outside): the worker
    is killed after --worker-timeout-s and replaced; until then nothing is killed, idle or busy."""
    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2", "--worker-timeout-s", "1.5")
    try:
        _wait_for(srv, "with 2 workers")
        time.sleep(2.5)  # idle past the timeout: a worker that serves keeps reporting
        assert asyncio.run(_drive(srv.port, _requests(model_path, 200))) == 200
        assert "has not reported" not in srv.log()
        before = _worker_pids(srv.proc.pid)
        os.kill(before[0], signal.SIGSTOP)
        _wait_for(srv, "serves again", timeout=30)
        after = _worker_pids(srv.proc.pid)
        assert len(after) == 2 and before[1] in after and before[0] not in after, (before, after)
        assert asyncio.run(_drive(srv.port, _requests(model_path, 300))) == 300
    finally:
        for pid in _worker_pids(srv.proc.pid):
            os.kill(pid, signal.SIGCONT)
        code = srv.stop()
    log = srv.log()
    assert code == 0, log[-3000:]
    assert re.search(rf"worker \d \(pid {before[0]}\) has not reported for [\d.]+ s \(its event loop, or a model "
                     r"run, is stuck\); killing it", log), log[-3000:]
    assert re.search(rf"worker \d \(pid {before[0]}\) was killed by SIGKILL; starting a new one", log), log[-3000:]
    assert log.count("has not reported") == 1 and "Traceback" not in log


def test_a_stop_is_not_held_forever_by_a_stuck_worker(model_path, tmp_path):
    """SIGTERM while a worker is frozen: the others drain, the frozen one is killed after the
    timeout, and the server exits 1 with one line saying so (not a hang, not a clean 0)."""
    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2", "--worker-timeout-s", "1")
    try:
        _wait_for(srv, "with 2 workers")
        victim = _worker_pids(srv.proc.pid)[0]
        _freeze(victim)
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
    finally:
        srv.stop()
    log = srv.log()
    assert code == 1, log[-3000:]
    assert re.search(rf"error: worker \d \(pid {victim}\) was killed by SIGKILL while stopping", log), log[-3000:]
    assert log.count("error: ") == 1 and "shutdown complete" in log  # the other one drained
    assert _worker_pids(srv.proc.pid) == []


@pytest.mark.parametrize("value, workers", [("-1", "1"), ("nan", "2"), ("inf", "1"), ("0.5", "2")])
def test_bad_worker_timeouts_are_refused(model_path, value, workers):
    proc = subprocess.run([sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--workers", workers,
                           "--worker-timeout-s", value], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --worker-timeout-s must be 0 (never) or a number of seconds from 1 up, got {float(value)}"]


def test_pausing_the_whole_service_kills_no_worker(model_path):
    """Ctrl-Z / docker pause: the supervisor and its workers stop together for longer than the
    timeout. On resume the supervisor must not read the pause as its workers' silence (it killed
    healthy workers on about every second resume, and three such deaths stopped the server)."""
    proc = _serve_in_own_group(model_path, free_port(), "--name", "gnn", "--workers", "3", "--worker-timeout-s", "1")
    out = ""
    try:
        out += _read_until(proc, "with 3 workers")
        # long pauses, then pauses just under the timeout in quick succession (a late loop turn
        # of under a second, then the age of the last report, once added up to a kill)
        for pause, running in [(2.0, 1.0)] * 2 + [(0.9, 0.2)] * 6:
            os.killpg(proc.pid, signal.SIGSTOP)
            time.sleep(pause)
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(running)  # the workers' overdue reports arrive; a wrong kill would come now
        assert len(_worker_pids(proc.pid)) == 3
    finally:
        out += _signal_and_collect(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "killing it" not in out and "starting a new one" not in out, out[-3000:]


def test_a_worker_that_hangs_as_its_supervisor_resumes_is_caught_in_time(model_path):
    """The supervisor alone was stopped for a while (its workers served on and their reports
    queued); a worker that hangs as it resumes is killed about the timeout later, not the
    pause plus the timeout (the pause was once added to reports read after it)."""
    proc = _serve_in_own_group(model_path, free_port(), "--name", "gnn", "--workers", "2", "--worker-timeout-s", "1")
    out = ""
    try:
        out += _read_until(proc, "with 2 workers")
        victim = _worker_pids(proc.pid)[0]
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(4)
        os.kill(victim, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        out += _read_until(proc, "killing it", timeout=30)
        caught_after = time.monotonic() - resumed
        assert f"(pid {victim}) has not reported" in out, out[-3000:]
        assert caught_after < 3, f"caught {caught_after:.1f} s after the resume (the pause was 4 s, the timeout 1 s)"
        out += _read_until(proc, "serves again")  # replaced; then a clean stop
    finally:
        out += _signal_and_collect(proc)
    assert proc.returncode == 0, out[-3000:]


def test_a_stop_is_not_held_by_a_worker_stuck_while_loading(model_path, tmp_path):
    """A worker frozen before it serves never reports, so only the stop's own bound can end it."""
    proc = _serve_in_own_group(_slow_repository(model_path, tmp_path / "repo"), free_port(), "--workers", "2",
                               "--worker-timeout-s", "1")
    out = ""
    try:
        out += _read_until(proc, "loaded model", 4)
        victim = _worker_pids(proc.pid)[0]
        _freeze(victim)
    finally:
        out += _signal_and_collect(proc, timeout=30)
    assert proc.returncode == 1, out[-3000:]
    assert re.search(rf"worker \d \(pid {victim}\) did not stop within [\d.]+ s of SIGTERM before it was ready; "
                     "killing it", out), out[-3000:]
    assert re.search(rf"error: worker \d \(pid {victim}\) was killed by SIGKILL while stopping", out), out[-3000:]


def test_a_worker_reports_only_while_its_loop_turns_and_no_batch_hangs(model_path, tmp_path):
    """The report a worker sends its supervisor stops while one model has run one batch past
    the timeout (a model call that never returns), and comes back when the batch ends."""
    import threading
    from types import SimpleNamespace

    from edgemp.runtime.batcher import Batcher
    from edgemp.runtime.server.workers import Worker

    class GatedModel:  # the real model, held at the start of its run until the gate opens
        def __init__(self, model):
            self.model, self.gate = model, threading.Event()

        def validate(self, graphs):
            return self.model.validate(graphs)

        def split(self, outputs, batch):
            return self.model.split(outputs, batch)

        def run_batch(self, batch):
            self.gate.wait(30)
            return self.model.run_batch(batch)

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)

    def reports() -> int:
        try:
            return os.read(read_fd, 65536).count(b"H0\n")
        except BlockingIOError:
            return 0

    with load(model_path) as model:
        gated = GatedModel(model)
        with Batcher(gated) as batcher:
            state = SimpleNamespace(models={"gnn": SimpleNamespace(batcher=batcher)})
            worker = Worker(0, 1, None, None, Peers(tmp_path, 0, 1), write_fd, timeout_s=0.4)

            async def scenario() -> tuple[int, int, int]:
                worker.keep_reporting(state)  # every 0.1 s here (a quarter of the timeout)
                await asyncio.sleep(0.5)
                turning = reports()
                future = batcher.submit(random_graphs(np.random.default_rng(0), 1))
                await asyncio.sleep(0.8)  # the batch is held past the timeout
                reports()
                await asyncio.sleep(0.5)
                held = reports()
                gated.gate.set()
                await asyncio.wrap_future(future)
                await asyncio.sleep(0.5)
                return turning, held, reports()

            turning, held, after = asyncio.run(scenario())
    os.close(read_fd)
    os.close(write_fd)
    assert turning >= 1 and held == 0 and after >= 1, (turning, held, after)


def test_a_worker_stopped_alone_keeps_its_final_counters(model_path, tmp_path):
    """SIGTERM to one worker (not the server): it drains, keeps its final counters and is replaced;
    the folder of the others' sockets stays (it was once cleared, and the replacement could not start)."""
    import json

    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2")
    try:
        _wait_for(srv, "with 2 workers")
        assert asyncio.run(_drive(srv.port, _requests(model_path, 200))) == 200  # counters never asked for
        before = _worker_pids(srv.proc.pid)
        os.kill(before[0], signal.SIGTERM)
        _wait_for(srv, "serves again")
        stats = json.loads(_fresh_get(srv.port, "/v2/models/gnn/stats"))["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 200  # every request, the stopped worker's too
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-3000:]


def test_dead_workers_are_folded_into_one_sum_and_a_reused_pid_takes_nothing(tmp_path):
    """The supervisor folds a reaped worker's file into the retired sum before a new worker can
    get its pid; a reader between a glob and a read counts a worker once; a later process with
    the same pid keeps its own file."""
    import json

    from edgemp.runtime.server import peers

    def counters(token: str, successes: int) -> dict:
        stats = ModelStats()
        for _ in range(successes):
            stats.record_success(1, 1000, 100, 10, 500, 20)
        return {"token": token, "models": {"m": {"stats": stats.raw(), "queue_depth": 0}}}

    def total(parts: list[dict]) -> int:
        return ModelStats.merged([p["models"]["m"]["stats"] for p in parts if "m" in p["models"]]).raw()[
            "outcomes"]["success"]

    reader = Peers(tmp_path, 0, 2)
    for token, n in (("111-aa", 5), ("222-bb", 7)):
        (tmp_path / f"stats-{token}.json").write_text(json.dumps(counters(token, n)))
    assert total(reader._retired(set())) == 12  # both still in their own files
    peers.fold_retired(tmp_path, 111)
    assert not (tmp_path / "stats-111-aa.json").exists()
    assert total(reader._retired(set())) == 12  # one folded, one not: each counted once
    # a reader that read the file just before it was folded drops its copy by this list
    assert "111-aa" in json.loads((tmp_path / "retired.json").read_text())["folded"]
    (tmp_path / "stats-111-cc.json").write_text(json.dumps(counters("111-cc", 3)))  # the same pid, a new worker
    assert total(reader._retired({"111-cc"})) == 12  # live: asked, not read from its file
    peers.fold_retired(tmp_path, 111)
    peers.fold_retired(tmp_path, 222)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retired.json"]
    assert total(reader._retired(set())) == 15


def test_a_worker_folded_during_a_gather_is_counted_once(tmp_path):
    """Worker 1 answers, then dies and is folded before the asking worker reads the fold: its
    counters are in both its answer and the fold, and must be added once (40 + 22, not 40 + 22 + 22)."""
    from types import SimpleNamespace

    from edgemp.runtime.server import peers

    def state(successes: int) -> SimpleNamespace:
        stats = ModelStats()
        for _ in range(successes):
            stats.record_success(1, 1000, 100, 10, 500, 20)
        return SimpleNamespace(models={"m": SimpleNamespace(stats=stats, queue_depth=lambda: 0)})

    class FoldedMidway(Peers):  # the supervisor reaps worker 1 between the asking and the reading
        def _retired(self, live):
            peers.fold_retired(self.folder, 99999)
            return super()._retired(live)

    async def scenario() -> int:
        other = Peers(tmp_path, 1, 2)
        other.token = "99999-aa"  # one process plays both workers: its own pid for the one that dies
        await other.start(state(22))
        try:
            views = await FoldedMidway(tmp_path, 0, 2).gather(state(40))
        finally:
            await other.close(stopping=False)
        return views["m"].stats.raw()["outcomes"]["success"]

    assert asyncio.run(scenario()) == 62


def _fresh_status(port: int, timeout: float) -> str:
    """A health GET on a new connection: the status line, or why there was none within ``timeout``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(65536).split(b"\r\n", 1)[0].decode()
    except OSError as e:
        return f"no answer: {e}"


def test_a_replacement_holds_no_connection_while_it_loads_and_one_whose_load_hangs_is_replaced(model_path, tmp_path):
    """A replacement binds its sockets only once it has loaded its models: the kernel gives a
    listening socket its share of new connections at once, and one bound before the load held
    them for the whole load (here frozen, so for ever). A replacement still not serving after
    3 x the first start (or the timeout) is killed and replaced in turn."""
    proc = _serve_in_own_group(_slow_repository(model_path, tmp_path / "repo"), port := free_port(),
                               "--workers", "2", "--worker-timeout-s", "1")
    out = ""
    try:
        out += _read_until(proc, "with 2 workers", timeout=120)
        first = _worker_pids(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (new := set(_worker_pids(proc.pid)) - set(first)):
            assert time.monotonic() < deadline, "no replacement was started"
            time.sleep(0.002)
        replacement = new.pop()
        _freeze(replacement)  # well before its 40 models are loaded
        statuses = [_fresh_status(port, 10) for _ in range(48)]  # spread over the group by their ports
        assert statuses == ["HTTP/1.1 200 OK"] * 48, statuses
        out += _read_until(proc, "its load hangs", timeout=120)
        out += _read_until(proc, "serves again", timeout=120)
    finally:
        out += _signal_and_collect(proc)
    assert proc.returncode == 0, out[-3000:]
    assert re.search(rf"worker \d \(pid {replacement}\) was not serving [\d.]+ s after it was started "
                     r"\(the first workers took [\d.]+ s; its load hangs\); killing it", out), out[-3000:]
    assert re.search(rf"worker \d \(pid {replacement}\) was killed by SIGKILL; starting a new one", out), out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_a_worker_killed_outright_keeps_what_it_served_before_its_last_second(model_path, tmp_path):
    """Nobody asked for the statistics before the kill, so only the worker's own writes (about
    once a second while its counters change) keep its share; before them all of it was lost."""
    import json

    srv = start_server(model_path, tmp_path, "--name", "gnn", "--workers", "2", "--max-queue-size", "4096")
    try:
        _wait_for(srv, "with 2 workers")
        before = _worker_pids(srv.proc.pid)
        assert asyncio.run(_drive(srv.port, _requests(model_path, 200))) == 200
        time.sleep(2.5)  # two reports' time: each worker has written what it served
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        _wait_for(srv, "serves again", 2)
        stats = json.loads(_fresh_get(srv.port, "/v2/models/gnn/stats"))["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 200, stats["inference_stats"]
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-3000:]


def test_a_second_server_is_refused_while_the_first_still_loads(model_path, tmp_path):
    """The first workers listen from before their load (as a lone server's port is held from its
    start): sockets that never listen would let another server take or share the port meanwhile.
    Here the first server's workers are frozen mid-load, so they would never have bound."""
    proc = _serve_in_own_group(_slow_repository(model_path, tmp_path / "repo"), port := free_port(),
                               "--workers", "2")
    out = ""
    workers = []
    try:
        out += _read_until(proc, "loaded model", 2)  # loading, not yet serving
        workers = _worker_pids(proc.pid)
        for pid in workers:
            _freeze(pid)
        second = subprocess.Popen([sys.executable, "-m", "edgemp.cli.serve", str(model_path), "--port", str(port),
                                   "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  cwd=ROOT, start_new_session=True)
        try:
            said, _ = second.communicate(timeout=60)
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
                second.wait()
        assert second.returncode == 1 and f":{port}: Address already in use" in said, (second.returncode, said[-2000:])
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        out += _read_until(proc, "with 2 workers", timeout=120)
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        out += _signal_and_collect(proc)
    assert proc.returncode == 0, out[-3000:]


def test_replacements_whose_load_hangs_twice_in_a_row_stop_the_server(model_path, tmp_path):
    """A load that hung twice will hang again: the process manager hears of it (exit 1) rather
    than the server killing a replacement every timeout for ever, one worker short."""
    proc = _serve_in_own_group(_slow_repository(model_path, tmp_path / "repo"), free_port(),
                               "--workers", "2", "--worker-timeout-s", "1")
    out = ""
    frozen = []
    try:
        out += _read_until(proc, "with 2 workers", timeout=120)
        known = set(_worker_pids(proc.pid))
        os.kill(min(known), signal.SIGKILL)
        for _ in range(2):
            deadline = time.monotonic() + 60
            while not (new := set(_worker_pids(proc.pid)) - known):
                assert time.monotonic() < deadline, "no replacement was started"
                time.sleep(0.002)
            frozen.append(new.pop())
            known.add(frozen[-1])
            _freeze(frozen[-1])
        out += _signal_and_collect(proc, signal.SIGCONT, timeout=120)  # it stops by itself; the signal is harmless
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out[-3000:]
    assert re.search(r"2 replacements of worker \d in a row were not serving in time \(their load hangs\)", out), \
        out[-3000:]
