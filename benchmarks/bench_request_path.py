"""The event loop's own work per request (HTTP fast path or gRPC), in process and without sockets.

At 32 closed-loop clients the served p99 is bounded by the event loop's serial work per
request (benchmarks/results/server.md §0d-§0e): the loop reads, decodes and queues every
request of a batch, then encodes and writes every answer, one after another. This measures
the Python part of that work with nothing else in the way: the app ``edgemp serve`` builds,
its fast path, the real batcher and model, and a stand-in connection that keeps the
response bytes instead of writing them (so no kernel time, no load generator).

Each round hands the fast path 32 one-molecule V2 binary requests (a loop turn's worth,
as a convoy of 32 clients delivers them), then lets the loop sleep until the batcher's
answers come back and are turned into HTTP responses. Reported per request:

- take: parse (or a known head), decode, admit, queue; timed around the 32 ``take`` calls;
- answer: the rest of the loop thread's CPU in the round (the batch's answers encoded,
  accounted and written out, and the loop's own callbacks); the round's loop-thread CPU
  (``time.thread_time``) minus the take time. The batcher's thread is not counted.

With ``--protocol grpc`` the same round goes through the gRPC listener's connection
instead: 32 HTTP/2 connections (a stand-in transport each) are handed one ModelInfer call
each per round, HEADERS and DATA in one read, as a raw client sends them; "take" is then
the frames parsed, the header block, the message decoded, admitted and queued.

With ``--clients 1`` each round is one request, alone in the server: it runs inline on the
loop's thread (``Batcher.run_now``), so the loop's CPU holds the model's run too; the table
then shows the run (its compute time from the batcher's statistics) and the rest, which is
what serving adds to a lone request before the sockets.

    python benchmarks/bench_request_path.py [--rounds 400] [--protocol http|grpc|both] [--clients 32]
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import struct
import sys
import tempfile
import time
from pathlib import Path

from bench_server import export_random  # benchmarks/bench_server.py: this script's folder is on sys.path

from edgemp.bench.v2client import encode
from edgemp.data.synthetic import molecule_like_graphs
from edgemp.graph import collate
from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.server.app import app_state, create_app
from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server import loop as event_loop
from edgemp.runtime.server.fastpath import attach
from edgemp.runtime.server.heap import frozen_startup_heap

CLIENTS = 32
INPUTS = ("x", "edge_index", "node_graph", "graph_node_counts")  # the GIN takes no edge features


class HeldConnection:
    """What the fast path needs of a connection; the answers are kept, not written."""

    def __init__(self, answered: "Answered") -> None:
        self.answered = answered

    def fast_begin(self) -> None:
        pass

    def fast_write(self, response: bytes) -> None:
        self.answered.add(response)

    def fast_finish(self, response: bytes) -> None:
        self.answered.add(response)

    def fast_abort(self) -> None:
        raise SystemExit("the fast path could not answer a request")


class Answered:
    """Counts a round's answers; wakes the round when all are in."""

    def __init__(self) -> None:
        self.count = 0
        self.want = 0
        self.done = asyncio.Event()
        self.bad = 0
        self.example = b""

    def add(self, response: bytes) -> None:
        self.count += 1
        if not response.startswith(b"HTTP/1.1 200 "):
            self.bad += 1
            self.example = response[:300]
        if self.count == self.want:
            self.done.set()


def wire(body: bytes, headers: dict[str, str]) -> bytes:
    head = "POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class HeldTransport:
    """What an HTTP/2 connection needs of its transport; counts the gRPC answers written."""

    def __init__(self, answered: Answered) -> None:
        self.answered = answered

    def write(self, data: bytes) -> None:
        ok = data.count(_GRPC_OK)  # one grpc-status per answered call, in its trailers
        for k in range(data.count(_GRPC_STATUS)):
            self.answered.add(b"HTTP/1.1 200 " if k < ok else data[:200])

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        raise SystemExit("the gRPC connection was closed")


_GRPC_STATUS = b"\x00\x0bgrpc-status"  # as the server writes it: an HPACK literal
_GRPC_OK = _GRPC_STATUS + b"\x010"


class GrpcConnections:
    """``CLIENTS`` HTTP/2 connections of the server's gRPC listener, each with a stand-in transport."""

    def __init__(self, app, answered: Answered, clients: int = CLIENTS) -> None:
        from edgemp.runtime.server.grpc_service import InferenceService
        from edgemp.runtime.server.h2 import frames as f
        from edgemp.runtime.server.h2.connection import H2Connection
        from edgemp.runtime.server.h2.grpc_handler import GrpcHandler
        from edgemp.runtime.server.h2.limits import ConnectionLimits
        from edgemp.runtime.server.middleware import BODY_READER

        state = app_state(app)
        handler = GrpcHandler(InferenceService(state), state.config.max_body_bytes, app.get(BODY_READER))
        limits = ConnectionLimits()
        self.f = f
        self.conns = []
        for _ in range(clients):
            conn = H2Connection(handler, limits)
            conn.connection_made(HeldTransport(answered))
            # as the raw benchmark client: windows wide open, so no answer waits for WINDOW_UPDATE
            conn.data_received(f.PREFACE + f.frame(f.SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31 - 1))
                               + f.frame(f.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1 - 65_535)))
            self.conns.append(conn)
        self.block = b"\x83\x86" + b"".join(f.literal(n, v) for n, v in (
            (b":path", b"/inference.GRPCInferenceService/ModelInfer"), (b":authority", b"127.0.0.1"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")))

    def call_bytes(self, sid: int, message: bytes) -> bytes:
        f = self.f
        return (f.frame(f.HEADERS, f.END_HEADERS, sid, self.block)
                + f.frame(f.DATA, f.END_STREAM, sid, b"\x00" + len(message).to_bytes(4, "big") + message))


async def run(model: Path, rounds: int, protocol: str = "http", clients: int = CLIENTS) -> dict[str, float]:
    app = create_app({"m": model}, ServerConfig(port=0, access_log=False),
                     BatcherConfig(max_batch_graphs=64, max_queue_size=4096))
    for hook in app.on_startup:
        await hook(app)
    answered = Answered()
    requests = []
    graphs = molecule_like_graphs(256, 16, seed=0)
    if protocol == "grpc":
        from edgemp.runtime.server import grpc_proto as pb

        grpc = GrpcConnections(app, answered, clients)
        messages = [pb.infer_request_bytes("m", {n: collate([g]).tensors()[n] for n in INPUTS}) for g in graphs]

        def take(k: int, r: int) -> bool:
            grpc.conns[k].data_received(grpc.call_bytes(2 * r + 1, messages[(r * clients + k) % len(messages)]))
            return True
    else:
        fast = attach(app)
        assert fast is not None, "this aiohttp has no fast path"
        for g in graphs:
            tensors = collate([g]).tensors()
            body, headers = encode({n: tensors[n] for n in INPUTS}, "binary")
            requests.append(wire(body, headers))
        conns = [HeldConnection(answered) for _ in range(clients)]

        def take(k: int, r: int) -> bool:
            return fast.take(conns[k], requests[(r * clients + k) % len(requests)])
    take_s = loop_cpu_s = 0.0
    measured = 0
    batcher = app_state(app).models["m"].batcher
    try:
        for r in range(rounds):
            answered.count, answered.want = 0, clients
            answered.done.clear()
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            for k in range(clients):
                if not take(k, r):
                    raise SystemExit("the fast path declined a request")
            t1 = time.perf_counter()
            await answered.done.wait()
            cpu1 = time.thread_time()
            if r == rounds // 10:
                before = batcher.stats()
            if r >= rounds // 10:  # the first tenth warms up (header plans, known heads, caches)
                take_s += t1 - t0
                loop_cpu_s += cpu1 - cpu0
                measured += clients
        if answered.bad:
            raise SystemExit(f"{answered.bad} answers were not 200 (or gRPC OK); one: {answered.example!r}")
    finally:
        for hook in app.on_cleanup:
            await hook(app)
    after = batcher.stats()
    take = take_s / measured * 1e6
    batches = after.batches - before.batches
    # a run's compute time counts once per request it served: per batch, divide by the requests in it
    model_us = (after.compute_ns_total - before.compute_ns_total) / max(after.compute_count - before.compute_count, 1) / 1e3
    return {"take": take, "answer": loop_cpu_s / measured * 1e6 - take, "loop": loop_cpu_s / measured * 1e6,
            "model": model_us * batches / measured}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--protocol", choices=("http", "grpc", "both"), default="http",
                        help="the HTTP fast path (V2 binary), gRPC ModelInfer, or both side by side")
    parser.add_argument("--clients", type=int, default=CLIENTS,
                        help="requests per loop turn; 1: a lone request, which runs inline on the loop")
    args = parser.parse_args(argv)
    protocols = ("http", "grpc") if args.protocol == "both" else (args.protocol,)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = export_random("gin", 16, 0, Path(tmp) / "gin.onnx")
        for protocol in protocols:
            with frozen_startup_heap():  # as the server runs: its loop, its collector policy
                results[protocol] = event_loop.run(run(model, args.rounds, protocol, args.clients))
    print(f"command: python benchmarks/bench_request_path.py --rounds {args.rounds} --protocol {args.protocol}"
          + (f" --clients {args.clients}" if args.clients != CLIENTS else ""))
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print("model: GIN (hidden 64, 3 rounds, random weights), 256 molecule-sized graphs (10-35 nodes), "
          f"one per request, {args.clients} requests per loop turn, no sockets (HTTP: V2 binary; gRPC: ModelInfer, "
          "raw_input_contents)")
    print()
    print("| event loop, per request | " + " | ".join(f"{p} µs" for p in protocols) + " |")
    print("|---|" + "---:|" * len(protocols))
    for key, label in (("take", "take: parse, decode, admit, queue"),
                       ("answer", "answer: encode, account, respond (and the loop's callbacks)"),
                       ("loop", "loop thread CPU, all")):
        print(f"| {label} | " + " | ".join(f"{results[p][key]:.1f}" for p in protocols) + " |")
    if args.clients == 1:  # alone in the server, a request runs on the loop's thread (Batcher.run_now)
        print("| of which the model's run, inline | " + " | ".join(f"{results[p]['model']:.1f}" for p in protocols)
              + " |")
        print("| loop thread CPU less the model's run | "
              + " | ".join(f"{results[p]['loop'] - results[p]['model']:.1f}" for p in protocols) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
