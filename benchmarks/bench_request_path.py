"""The event loop's own work per request on the HTTP fast path, in process and without sockets.

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

    python benchmarks/bench_request_path.py [--rounds 400]
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench_server import export_random  # benchmarks/bench_server.py: this script's folder is on sys.path

from edgemp.bench.v2client import encode
from edgemp.data.synthetic import molecule_like_graphs
from edgemp.graph import collate
from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.server.app import create_app
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

    def add(self, response: bytes) -> None:
        self.count += 1
        self.bad += not response.startswith(b"HTTP/1.1 200 ")
        if self.count == self.want:
            self.done.set()


def wire(body: bytes, headers: dict[str, str]) -> bytes:
    head = "POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def run(model: Path, rounds: int) -> dict[str, float]:
    app = create_app({"m": model}, ServerConfig(port=0, access_log=False),
                     BatcherConfig(max_batch_graphs=64, max_queue_size=4096))
    for hook in app.on_startup:
        await hook(app)
    fast = attach(app)
    assert fast is not None, "this aiohttp has no fast path"
    requests = []
    for g in molecule_like_graphs(256, 16, seed=0):
        tensors = collate([g]).tensors()
        body, headers = encode({n: tensors[n] for n in INPUTS}, "binary")
        requests.append(wire(body, headers))
    answered = Answered()
    conns = [HeldConnection(answered) for _ in range(CLIENTS)]
    take_s = loop_cpu_s = 0.0
    measured = 0
    try:
        for r in range(rounds):
            answered.count, answered.want = 0, CLIENTS
            answered.done.clear()
            cpu0 = time.thread_time()
            t0 = time.perf_counter()
            for k, conn in enumerate(conns):
                if not fast.take(conn, requests[(r * CLIENTS + k) % len(requests)]):
                    raise SystemExit("the fast path declined a request")
            t1 = time.perf_counter()
            await answered.done.wait()
            cpu1 = time.thread_time()
            if r >= rounds // 10:  # the first tenth warms up (header plans, known heads, caches)
                take_s += t1 - t0
                loop_cpu_s += cpu1 - cpu0
                measured += CLIENTS
        if answered.bad:
            raise SystemExit(f"{answered.bad} answers were not 200")
    finally:
        for hook in app.on_cleanup:
            await hook(app)
    take = take_s / measured * 1e6
    return {"take": take, "answer": loop_cpu_s / measured * 1e6 - take, "loop": loop_cpu_s / measured * 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = export_random("gin", 16, 0, Path(tmp) / "gin.onnx")
        with frozen_startup_heap():  # as the server runs: its loop, its collector policy
            result = event_loop.run(run(model, args.rounds))
    print(f"command: python benchmarks/bench_request_path.py --rounds {args.rounds}")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print("model: GIN (hidden 64, 3 rounds, random weights), 256 molecule-sized graphs (10-35 nodes), "
          f"one per request, {CLIENTS} requests per loop turn, V2 binary, no sockets")
    print()
    print("| event loop, per request | µs |")
    print("|---|---:|")
    print(f"| take: parse or known head, decode, admit, queue | {result['take']:.1f} |")
    print(f"| answer: encode, account, respond (and the loop's callbacks) | {result['answer']:.1f} |")
    print(f"| loop thread CPU, all | {result['loop']:.1f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
