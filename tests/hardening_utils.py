"""Helpers for the attack tests: the real server in a background thread, and raw HTTP.

The server is the public surface — :func:`edgemp.runtime.server.create_app` served by
:func:`edgemp.runtime.server.run.serve_app` on 127.0.0.1:0 — so these tests keep their
meaning whatever the request decoders look like inside.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.server import ServerConfig, create_app
from edgemp.runtime.server.run import serve_app
from runtime_fixtures import build_dense_model, build_sparse_model

EF = 3  # edge features of the edge model
TOKEN = "fuzz-token-1"


def build_repo(root: Path) -> Path:
    """Three small real models: sparse, sparse with edge features, dense (32 nodes per graph)."""
    for name in ("gnn", "gnn_edge", "gnn_dense"):
        (root / name).mkdir(parents=True, exist_ok=True)
    build_sparse_model(root / "gnn" / "model.onnx")
    build_sparse_model(root / "gnn_edge" / "model.onnx", edge_features=EF, seed=1)
    build_dense_model(root / "gnn_dense" / "model.onnx", max_nodes=32)
    return root


@dataclass
class ThreadServer:
    """``serve_app`` on its own event loop in a daemon thread; ``close()`` drains it."""

    port: int
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event
    thread: threading.Thread
    app: object

    def connection(self, timeout: float = 30.0) -> HTTPConnection:
        return HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def close(self, timeout: float = 30.0) -> float:
        """Stop (as SIGTERM does) and return how long the drain and exit took."""
        start = time.monotonic()
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "server thread did not stop"
        return time.monotonic() - start


def start_thread_server(repo: Path, config: ServerConfig, batcher: BatcherConfig | None = None,
                        uvloop: bool = False) -> ThreadServer:
    """``uvloop``: on the loop ``edgemp serve`` runs on (uvloop reads sockets at other points of
    a loop turn than asyncio's own loop, which orders callbacks differently)."""
    from edgemp.runtime.server import discover

    ready = threading.Event()
    box: dict = {}

    def run() -> None:
        if uvloop:
            import uvloop as uv

            loop = uv.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        box["loop"], box["stop"] = loop, stop
        app = create_app(discover(repo, batcher or BatcherConfig()), config)
        box["app"] = app

        def on_ready(port: int) -> None:
            box["port"] = port
            ready.set()

        try:
            loop.run_until_complete(serve_app(app, config, on_ready=on_ready, stop=stop))
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            box["error"] = e
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True, name="edgemp-test-server")
    thread.start()
    assert ready.wait(60), "server did not start"
    if "error" in box:
        raise box["error"]
    return ThreadServer(box["port"], box["loop"], box["stop"], thread, box["app"])


def request(conn: HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def raw_socket(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_status(sock: socket.socket) -> int | None:
    """The status of the response on ``sock`` (None if the server closed without one)."""
    data = b""
    while b"\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return None
        if not chunk:
            return None
        data += chunk
    return int(data.split(b" ", 2)[1])


def json_error(body: bytes) -> str:
    return json.loads(body)["error"]
