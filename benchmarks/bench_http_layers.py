"""The HTTP layer and event loop under edgemp's server, side by side: what each costs per request.

Each candidate serves the same trivial endpoint (``GET /v2/health/ready`` → 200, empty body)
in its own process; one client sends keep-alive requests to all of them interleaved, call by
call, and the table gives the round-trip p50/p99 and the server process's CPU per request.
The trivial endpoint isolates the layer's own cost (parsing, routing, response writing,
event-loop wake-ups) from edgemp's. Candidates (those installed are run):

- ``aiohttp`` on asyncio's loop, and on uvloop (edgemp's server today: every limit —
  413, 401, 503, timeouts, drain — lives in its middleware), and on uvloop with the access
  log on (``edgemp serve --access-log``'s format, written to /dev/null: the log line's own cost);
- ``uvicorn`` + ``httptools`` with a bare ASGI app, on uvloop;
- a raw ``asyncio.Protocol`` + ``httptools`` parser on uvloop (no framework at all: the
  floor any rewrite could reach in Python).

``--protocol grpc`` does the same for grpcio: an empty unary RPC (generic handler, raw bytes
in and out, no protobuf at all) on ``grpc.aio`` (uvloop, asyncio's loop, and with
``grpc.optimization_target=latency``) and on the thread-pool ``grpc.server`` (1 and 4
workers), called through one ``grpc.insecure_channel`` each: the per-call floor of grpcio
itself, below which no gRPC service written on it can go.

Usage: python benchmarks/bench_http_layers.py [--requests 3000] [--protocol http|grpc]
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgemp.bench.rawhttp import RawConnection, build_request  # noqa: E402
from edgemp.bench.local_server import free_port

SERVERS = {
    "aiohttp, asyncio loop": "aiohttp:asyncio",
    "aiohttp, uvloop": "aiohttp:uvloop",
    "aiohttp, uvloop, access log on (to /dev/null)": "aiohttp-log:uvloop",
    "uvicorn + httptools (ASGI), uvloop": "uvicorn:uvloop",
    "raw asyncio.Protocol + httptools, uvloop": "raw:uvloop",
}
GRPC_SERVERS = {
    "grpc.aio, uvloop (edgemp today)": "grpc-aio:uvloop",
    "grpc.aio, asyncio loop": "grpc-aio:asyncio",
    "grpc.aio, uvloop, optimization_target=latency": "grpc-aio-latency:uvloop",
    "grpc.server, 1 worker thread": "grpc-sync1:threads",
    "grpc.server, 4 worker threads": "grpc-sync4:threads",
}
GRPC_METHOD = "/bench.Floor/Empty"


def _serve_grpc(kind: str, port: int) -> None:
    """Child process: serve an empty unary RPC (raw bytes, no protobuf) with grpcio ``kind``."""
    import asyncio

    import grpc

    layer, loop = kind.split(":")
    options = [("grpc.so_reuseport", 0)]
    if layer.endswith("-latency"):
        options.append(("grpc.optimization_target", "latency"))
    service, method = GRPC_METHOD.strip("/").split("/")
    if layer.startswith("grpc-sync"):
        from concurrent.futures import ThreadPoolExecutor

        def empty(request: bytes, context) -> bytes:  # noqa: ANN001
            return b""

        server = grpc.server(ThreadPoolExecutor(max_workers=int(layer.removeprefix("grpc-sync"))), options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(empty)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def aempty(request: bytes, context) -> bytes:  # noqa: ANN001
        return b""

    async def main() -> None:
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(aempty)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def _serve(kind: str, port: int) -> None:
    """Child process: serve GET /v2/health/ready with ``kind`` until killed."""
    layer, loop = kind.split(":")
    if layer.startswith("grpc"):
        _serve_grpc(kind, port)
    elif layer.startswith("aiohttp"):
        import asyncio
        import logging

        from aiohttp import web

        async def ready(request: web.Request) -> web.Response:
            return web.Response(status=200)

        app = web.Application()
        app.router.add_get("/v2/health/ready", ready)
        if loop == "uvloop":
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        access_log = None
        if layer == "aiohttp-log":  # what `edgemp serve --access-log` adds: one formatted line per request
            from edgemp.runtime.server.run import ACCESS_LOG_FORMAT

            logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"),  # noqa: SIM115 - lives as long as the server
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            access_log = logging.getLogger("edgemp.access")
        web.run_app(app, host="127.0.0.1", port=port, access_log=access_log, print=None,
                    **({"access_log_format": ACCESS_LOG_FORMAT} if access_log else {}))
    elif layer == "uvicorn":
        import uvicorn

        async def app(scope, receive, send):  # noqa: ANN001 - bare ASGI
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

        uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="error",
                    access_log=False, lifespan="off")
    else:
        import asyncio

        import httptools
        import uvloop

        class Proto(asyncio.Protocol):
            def connection_made(self, transport) -> None:  # noqa: ANN001
                self.t = transport
                self.p = httptools.HttpRequestParser(self)

            def data_received(self, data: bytes) -> None:
                self.p.feed_data(data)

            def on_message_complete(self) -> None:
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        async def main() -> None:
            server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
            await server.serve_forever()

        uvloop.run(main())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _available(kind: str) -> bool:
    layer, loop = kind.split(":")
    mods = ["grpc"] if layer.startswith("grpc") else {
        "aiohttp": ["aiohttp"], "aiohttp-log": ["aiohttp"], "uvicorn": ["uvicorn", "httptools"], "raw": ["httptools"]}[layer]
    mods += ["uvloop"] if loop == "uvloop" else []
    try:
        for m in mods:
            __import__(m)
    except ImportError:
        return False
    return True


class _HttpClient:
    """One keep-alive connection sending the health GET."""

    wire = build_request("GET", "127.0.0.1", "/v2/health/ready")

    def __init__(self, port: int) -> None:
        self.conn = RawConnection("127.0.0.1", port)

    def __call__(self) -> None:
        if self.conn.request(self.wire).status != 200:
            raise SystemExit("not 200")


class _GrpcClient:
    """One channel calling the empty RPC (raw bytes both ways)."""

    def __init__(self, port: int) -> None:
        import grpc

        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.call = self.channel.unary_unary(GRPC_METHOD)

    def __call__(self) -> None:
        self.call(b"", timeout=30)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port)
        return
    procs, conns = {}, {}
    grpc = args.protocol == "grpc"
    client = _GrpcClient if grpc else _HttpClient
    try:
        for label, kind in (GRPC_SERVERS if grpc else SERVERS).items():
            if not _available(kind):
                print(f"skipping {label}: not installed")
                continue
            port = free_port()
            procs[label] = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
            deadline = time.monotonic() + 30
            while True:
                try:
                    conns[label] = client(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        lat: dict[str, list[int]] = {k: [] for k in conns}
        for i in range(args.requests + 200):
            for label, call in conns.items():
                t0 = time.perf_counter_ns()
                call()
                if i >= 200:
                    lat[label].append(time.perf_counter_ns() - t0)
        cpu = {}
        for label, call in conns.items():
            c0 = _cpu_s(procs[label].pid)
            for _ in range(args.requests):
                call()
            cpu[label] = (_cpu_s(procs[label].pid) - c0) / args.requests * 1e6
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
    print(f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}")
    what = "empty unary gRPC calls" if grpc else "keep-alive GETs"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; {args.requests} {what} per server, "
          "interleaved\n")
    print(f"| {'gRPC server' if grpc else 'HTTP layer, event loop'} | RTT p50 µs | RTT p99 µs | server CPU µs/request |")
    print("|---|---:|---:|---:|")
    for label in conns:
        a = np.asarray(lat[label]) / 1e3
        print(f"| {label} | {np.percentile(a, 50):.0f} | {np.percentile(a, 99):.0f} | {cpu[label]:.0f} |")


if __name__ == "__main__":
    main()
