"""Helpers for server tests: start the real ``edgemp serve`` as a subprocess, build requests.

The server runs exactly as users run it (a separate process on a free 127.0.0.1 port, the
CLI entry point), so the tests cover argument parsing, startup, signals and exit codes too.
"""
from __future__ import annotations

import json
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from edgemp.graph import Graph, collate
from edgemp.bench.local_server import free_port

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# The Triton backend environment scripts/build_triton_env.sh builds (the README's test command builds it).
TRITON_ENV = Path(os.environ.get("EDGEMP_TRITON_ENV") or ROOT / ".venv-triton")


def needs_triton_server() -> list:
    """Marks for a module that starts the bundled tritonserver: slow, Linux-only, and the backend env built."""
    import pytest

    return [
        pytest.mark.slow,
        pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the nvidia-pytriton tritonserver is Linux-only"),
        pytest.mark.skipif(not (TRITON_ENV / "bin" / "python3").exists(),
                           reason=f"no Triton backend environment at {TRITON_ENV}: bash scripts/build_triton_env.sh"),
    ]


@dataclass
class ServerProcess:
    """A running server; ``stop()`` sends SIGTERM and returns the exit code."""

    proc: subprocess.Popen
    port: int
    log_path: Path
    token: str | None = None
    _log: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not exit within {timeout}s after signal {sig}:\n{self.log()[-3000:]}")
        finally:
            if self._log is not None:
                self._log.close()


def start_server(model: Path | str, tmp: Path, *args: str, token: str | None = None,
                 ready_timeout: float = 30.0, access_log: bool = False) -> ServerProcess:
    """Start ``python -m edgemp.cli.serve MODEL --port P ...`` and wait for /v2/health/ready."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    log = log_path.open("w")
    env = dict(os.environ)
    env.pop("EDGEMP_AUTH_TOKEN", None)
    if token is not None:
        env["EDGEMP_AUTH_TOKEN"] = token
    cmd = [sys.executable, "-m", "edgemp.cli.serve", str(model), "--port", str(port),
           "--access-log" if access_log else "--no-access-log", *args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = ServerProcess(proc, port, log_path, token, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.base}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"server not ready after {ready_timeout}s:\n{server.log()[-3000:]}")


def http(server: ServerProcess, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """One plain HTTP request; returns (status, headers, body) for any status."""
    hdrs = {**server.headers(), **(headers or {})}
    req = urllib.request.Request(server.base + path, data=body, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def batch_tensors(graphs: Sequence[Graph], edge_features: int = 0) -> dict[str, np.ndarray]:
    """Graphs in the V2 request layout (sparse batch tensors)."""
    b = collate(graphs)
    out = {"x": b.x, "edge_index": b.edge_index}
    if edge_features:
        out["edge_attr"] = b.edge_attr
    out["node_graph"] = b.node_graph
    out["graph_node_counts"] = b.graph_node_counts
    return out


V2_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def v2_json_body(tensors: dict[str, np.ndarray], request_id: str | None = None, **params) -> bytes:
    """An all-JSON V2 infer body (no binary extension)."""
    body: dict = {"inputs": [
        {"name": k, "datatype": V2_TYPES[v.dtype], "shape": list(v.shape), "data": v.reshape(-1).tolist()}
        for k, v in tensors.items()
    ]}
    if request_id is not None:
        body["id"] = request_id
    if params:
        body["parameters"] = params
    return json.dumps(body).encode()


def v2_binary_body(tensors: dict[str, np.ndarray], request_id: str | None = None,
                   binary_output: bool = True) -> tuple[bytes, int]:
    """A binary-extension V2 infer body and its JSON header length."""
    header: dict = {"inputs": [
        {"name": k, "datatype": V2_TYPES[v.dtype], "shape": list(v.shape),
         "parameters": {"binary_data_size": v.nbytes}}
        for k, v in tensors.items()
    ], "parameters": {"binary_data_output": binary_output}}
    if request_id is not None:
        header["id"] = request_id
    raw = json.dumps(header).encode()
    return raw + b"".join(np.ascontiguousarray(v).tobytes() for v in tensors.values()), len(raw)


def decode_v2_response(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """(header JSON, outputs by name) from a V2 infer response, binary or JSON."""
    n = len(body) if header_length is None else int(header_length)
    header = json.loads(body[:n])
    outputs, pos = {}, n
    for out in header["outputs"]:
        dtype = np.float32 if out["datatype"] == "FP32" else np.int64
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs[out["name"]] = np.asarray(out["data"], dtype).reshape(out["shape"])
        else:
            outputs[out["name"]] = np.frombuffer(body[pos : pos + size], dtype).reshape(out["shape"])
            pos += size
    return header, outputs


def expected_layout(model, graphs: Sequence[Graph]) -> dict[str, np.ndarray]:
    """In-process Model.predict for ``graphs``, in the V2 response layout."""
    per_graph = model.predict(list(graphs))
    levels = model.spec.model.output_levels
    return {
        name: (np.concatenate([r[name] for r in per_graph]) if levels[name] == "node"
               else np.stack([r[name].reshape(-1) for r in per_graph]))
        for name in levels
    }


def assert_outputs_match(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str = "") -> None:
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for name in want:
        assert got[name].shape == want[name].shape, f"{what}: {name} shape {got[name].shape} != {want[name].shape}"
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=f"{what}: {name}")


def triton_inputs(graph: Graph, client_module) -> list:
    """One graph as Triton's one-graph ragged request (docs/scaling-out.md): flat, batch dim 1.

    ``client_module`` is ``tritonclient.http`` or ``tritonclient.grpc``.
    """
    tensors = {"x": graph.x.reshape(1, -1), "edge_index": graph.edge_index.T.reshape(1, -1)}
    if graph.edge_attr is not None:
        tensors["edge_attr"] = graph.edge_attr.reshape(1, -1)
    inputs = []
    for name, arr in tensors.items():
        inp = client_module.InferInput(name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64")
        inp.set_data_from_numpy(np.ascontiguousarray(arr))
        inputs.append(inp)
    return inputs


@contextlib.contextmanager
def serving_grpc(model: Path | str, tmp: Path, *args: str) -> Iterator[ServerProcess]:
    """``start_server`` as ``gnn`` with a gRPC listener too (its port as ``.grpc_port``); on leaving, a clean
    stop (exit 0) and a log without a traceback or an internal error."""
    gport = free_port()
    srv = start_server(model, tmp, "--name", "gnn", "--grpc-port", str(gport), *args)
    srv.grpc_port = gport  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, srv.log()[-3000:]
    log = srv.log()
    assert "Traceback" not in log and "internal error" not in log and "never awaited" not in log, log[-5000:]


def at_once(count: int, work: "Callable[[int], T]", timeout_s: float = 60.0) -> "list[T]":
    """``work(i)`` for each i below ``count``, each on its own thread, all started together; their
    results in order (the first error any raised is raised here)."""
    results: list = [None] * count
    errors: list = []

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except Exception as e:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    return results


def same_size(rng: np.random.Generator, base: Graph) -> Graph:
    """A graph of ``base``'s size (so a request for it has ``base``'s V2 header or gRPC
    description) with other values."""
    return Graph(x=rng.standard_normal(base.x.shape).astype(np.float32), edge_index=base.edge_index,
                 edge_attr=None if base.edge_attr is None else rng.standard_normal(base.edge_attr.shape).astype(np.float32))


def triton_grpc_inputs(tensors: dict) -> list:
    """``tritonclient.grpc`` InferInputs for a request's tensors (FP32 or INT64, as V2 maps the dtypes)."""
    import tritonclient.grpc as tg

    out = []
    for name, value in tensors.items():
        i = tg.InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32 else "INT64")
        i.set_data_from_numpy(value)
        out.append(i)
    return out


# -- raw HTTP/1.1 on a socket (the fast-path tests see exactly the bytes sent) ----------
def wire(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: t"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (``buf`` keeps bytes read past it, for the next one)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(buf) < end + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection mid-body"
        buf += chunk
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return int(lines[0].split()[1]), headers, body
