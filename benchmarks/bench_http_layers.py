"""The HTTP layer and event loop under edgemp's server, side by side: what each costs per request.

Each candidate serves the same trivial endpoint (``GET /v2/health/ready`` → 200, empty body)
in its own process; one client sends keep-alive requests to all of them interleaved, call by
call, and the table gives the round-trip p50/p99 and the server process's CPU per request.
The trivial endpoint isolates the layer's own cost (parsing, routing, response writing,
event-loop wake-ups) from edgemp's. Candidates (those installed are run):

- ``aiohttp`` on asyncio's loop, and on uvloop (edgemp's server today: every limit —
  413, 401, 503, timeouts, drain — lives in its middleware);
- ``uvicorn`` + ``httptools`` with a bare ASGI app, on uvloop;
- a raw ``asyncio.Protocol`` + ``httptools`` parser on uvloop (no framework at all: the
  floor any rewrite could reach in Python).

Usage: python benchmarks/bench_http_layers.py [--requests 3000]
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
    "uvicorn + httptools (ASGI), uvloop": "uvicorn:uvloop",
    "raw asyncio.Protocol + httptools, uvloop": "raw:uvloop",
}


def _serve(kind: str, port: int) -> None:
    """Child process: serve GET /v2/health/ready with ``kind`` until killed."""
    layer, loop = kind.split(":")
    if layer == "aiohttp":
        import asyncio

        from aiohttp import web

        async def ready(request: web.Request) -> web.Response:
            return web.Response(status=200)

        app = web.Application()
        app.router.add_get("/v2/health/ready", ready)
        if loop == "uvloop":
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
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
    mods = {"aiohttp": ["aiohttp"], "uvicorn": ["uvicorn", "httptools"], "raw": ["httptools"]}[layer]
    mods += ["uvloop"] if loop == "uvloop" else []
    try:
        for m in mods:
            __import__(m)
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port)
        return
    procs, conns = {}, {}
    try:
        for label, kind in SERVERS.items():
            if not _available(kind):
                print(f"skipping {label}: not installed")
                continue
            port = free_port()
            procs[label] = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)])
            deadline = time.monotonic() + 30
            while True:
                try:
                    conns[label] = RawConnection("127.0.0.1", port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        wire = build_request("GET", "127.0.0.1", "/v2/health/ready")
        lat: dict[str, list[int]] = {k: [] for k in conns}
        for i in range(args.requests + 200):
            for label, conn in conns.items():
                t0 = time.perf_counter_ns()
                if conn.request(wire).status != 200:
                    raise SystemExit(f"{label}: not 200")
                if i >= 200:
                    lat[label].append(time.perf_counter_ns() - t0)
        cpu = {}
        for label, conn in conns.items():
            c0 = _cpu_s(procs[label].pid)
            for _ in range(args.requests):
                conn.request(wire)
            cpu[label] = (_cpu_s(procs[label].pid) - c0) / args.requests * 1e6
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
    print(f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), Python "
          f"{platform.python_version()}; {args.requests} keep-alive GETs per server, interleaved\n")
    print("| HTTP layer, event loop | RTT p50 µs | RTT p99 µs | server CPU µs/request |")
    print("|---|---:|---:|---:|")
    for label in conns:
        a = np.asarray(lat[label]) / 1e3
        print(f"| {label} | {np.percentile(a, 50):.0f} | {np.percentile(a, 99):.0f} | {cpu[label]:.0f} |")


if __name__ == "__main__":
    main()
