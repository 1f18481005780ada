"""A Python reference server: edgemp's batching policy and the real model, with no per-request objects.

``benchmarks/floor_server.c`` shows what a server with no per-request work reaches on this host
(it spins the model's time). This one runs the real model, in Python on uvloop, as ``edgemp
serve`` does, but takes a different shape for the request path: a request is a row, not a
chain of objects. Per request the event loop only finds the head (cached by its bytes) and the
V2 header's plan (cached by its bytes: where ``x``, ``edge_index``, ``node_graph`` and
``graph_node_counts`` lie in the body), and appends ``(connection, body, plan, read time)`` to
a list. The batcher's thread collates a batch from those rows with a few numpy calls over the
whole batch (one join per tensor, edge offsets by ``np.repeat``), checks it over the whole
batch, runs it, and hands back one list of answers, each the kept response head, its JSON
header and the request's output rows.

It is a measurement, not a server: one-graph V2 binary requests and health GETs only, no
limits, no statistics beyond its batch counts (``GET /floor/stats``: batches, requests, compute
ns), no per-request errors (a batch that fails its checks is dropped, and the benchmark would
show it). It answers what ``edgemp serve`` answers for the same request, byte for byte apart
from the ``Date`` (checked by ``bench_p99_floor.py`` before the load). What it shows is what
the request path would cost written this way: the next step for the real server.

    python benchmarks/py_floor_server.py MODEL PORT DELAY_US [MAX_BATCH]   (prints "ready")
"""
from __future__ import annotations

import asyncio
import collections
import json
import sys
import threading
import time
from email.utils import formatdate

import numpy as np
import uvloop

import edgemp.runtime as rt
from edgemp.graph import GraphBatch


class Plan:
    """Where one V2 header's tensors lie in its body (one graph of ``n`` nodes and ``e`` edges)."""

    __slots__ = ("n", "e", "x0", "ei0", "ng0", "c0", "end")

    def __init__(self, header: bytes, features: int) -> None:
        spec = {t["name"]: t for t in json.loads(header)["inputs"]}
        offset, spans = len(header), {}
        for t in json.loads(header)["inputs"]:  # in the body's order
            size = t["parameters"]["binary_data_size"]
            spans[t["name"]] = offset
            offset += size
        self.n, self.e = spec["x"]["shape"][0], spec["edge_index"]["shape"][1]
        if spec["x"]["shape"][1] != features or spec["graph_node_counts"]["shape"] != [1]:
            raise ValueError("not a one-graph request of this model")
        self.x0, self.ei0 = spans["x"], spans["edge_index"]
        self.ng0, self.c0, self.end = spans["node_graph"], spans["graph_node_counts"], offset


class Floor:
    def __init__(self, model_path: str, delay_us: int, max_batch: int) -> None:
        self.model = rt.load(model_path)
        self.features = self.model.spec.model.node_features
        self.outputs = [(o.name, o.width) for o in self.model.spec.model.outputs]
        if any(o.level != "graph" for o in self.model.spec.model.outputs):
            raise SystemExit("graph-level outputs only")
        self.delay_ns, self.max_batch = delay_us * 1000, max_batch
        self.routes: dict[bytes, tuple[int, int]] = {}  # head -> (content length, header length); (-1, 0): health
        self.plans: dict[bytes, Plan] = {}
        self.pending: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.open = 0
        self.batches = self.requests = self.compute_ns = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.kicked = False
        header = {"model_name": "m", "model_version": "1", "outputs": [
            {"name": name, "datatype": "FP32", "shape": [1, w], "parameters": {"binary_data_size": 4 * w}}
            for name, w in self.outputs]}
        self.json_header = json.dumps(header, separators=(",", ":")).encode()
        self.row_bytes = 4 * sum(w for _, w in self.outputs)
        self.head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\nDate: "
                     % (len(self.json_header), len(self.json_header) + self.row_bytes))
        self.model.predict([self._warm_graph()])

    def _warm_graph(self):
        from edgemp.graph import Graph

        return Graph(x=np.zeros((2, self.features), np.float32), edge_index=np.array([[0, 1], [1, 0]], np.int64))

    # -- the event loop ------------------------------------------------------------------
    def route(self, head: bytes) -> tuple[int, int]:
        if head.startswith(b"GET "):
            return (-1, 0)
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        return int(fields[b"content-length"]), int(fields[b"inference-header-content-length"])

    def take(self, conn: "Conn", data: bytes) -> bytes:
        """Queue every whole request in ``data``; the rest (a partial request) is returned."""
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return data
            head = data[:end + 4]
            route = self.routes.get(head)
            if route is None:
                route = self.routes[head] = self.route(head)
            length, header_length = route
            if length < 0:
                conn.transport.write(self._health(head))
                data = data[end + 4:]
                continue
            if len(data) < end + 4 + length:
                return data
            body = data[end + 4:end + 4 + length]
            data = data[end + 4 + length:]
            header = body[:header_length]
            plan = self.plans.get(header)
            if plan is None:
                plan = self.plans[header] = Plan(header, self.features)
            self.pending.append((conn, body, plan, time.perf_counter_ns()))
            if not self.kicked:  # one wake-up per loop turn, as edgemp's batcher gets
                self.kicked = True
                self.loop.call_soon(self.kick)

    def _health(self, head: bytes) -> bytes:
        if head.startswith(b"GET /floor/stats"):
            body = b"%d %d %d" % (self.batches, self.requests, self.compute_ns)
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    def kick(self) -> None:
        self.kicked = False
        with self.cond:
            self.cond.notify()

    def answer(self, done: list) -> None:
        date = formatdate(usegmt=True).encode()
        head = self.head + date + b"\r\nServer: edgemp\r\n\r\n" + self.json_header
        for conn, rows in done:
            if conn.transport is not None:
                conn.transport.write(head + rows)

    # -- the batcher's thread ------------------------------------------------------------
    def run(self) -> None:
        pending, cond = self.pending, self.cond
        while True:
            with cond:
                while True:
                    if pending:
                        now = time.perf_counter_ns()
                        due = pending[0][3] + self.delay_ns
                        if len(pending) >= min(self.open, self.max_batch) or now >= due:
                            break
                        cond.wait((due - now) / 1e9)
                    else:
                        cond.wait()
            rows = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
            start = time.perf_counter_ns()
            done = self.execute(rows)
            self.compute_ns += time.perf_counter_ns() - start
            self.batches += 1
            self.requests += len(rows)
            self.loop.call_soon_threadsafe(self.answer, done)

    def execute(self, rows: list) -> list:
        plans = [r[2] for r in rows]
        ns = np.fromiter((p.n for p in plans), np.int64, len(rows))
        es = np.fromiter((p.e for p in plans), np.int64, len(rows))
        x = np.frombuffer(b"".join([b[p.x0:p.ei0] for _, b, p, _ in rows]), np.float32).reshape(-1, self.features)
        src = np.frombuffer(b"".join([b[p.ei0:p.ei0 + 8 * p.e] for _, b, p, _ in rows]), np.int64)
        dst = np.frombuffer(b"".join([b[p.ei0 + 8 * p.e:p.ng0] for _, b, p, _ in rows]), np.int64)
        node_graph = np.frombuffer(b"".join([b[p.ng0:p.c0] for _, b, p, _ in rows]), np.int64)
        counts = np.frombuffer(b"".join([b[p.c0:p.end] for _, b, p, _ in rows]), np.int64)
        nodes_of_edge = np.repeat(ns, es)
        if (counts != ns).any() or node_graph.any() or (src < 0).any() or (dst < 0).any() \
                or (src >= nodes_of_edge).any() or (dst >= nodes_of_edge).any() or not np.isfinite(x).all():
            return []  # a measurement: the benchmark sends only valid graphs
        offsets = np.repeat(np.cumsum(ns) - ns, es)
        batch = GraphBatch(x=x, edge_index=np.stack([src + offsets, dst + offsets]),
                           node_graph=np.repeat(np.arange(len(rows), dtype=np.int64), ns),
                           graph_node_counts=ns, graph_edge_counts=es)
        out = self.model.run_batch(batch)
        table = np.concatenate([np.asarray(out[name], np.float32).reshape(len(rows), w) for name, w in self.outputs],
                               axis=1)
        data = table.tobytes()
        k = self.row_bytes
        return [(r[0], data[i * k:(i + 1) * k]) for i, r in enumerate(rows)]


class Conn(asyncio.Protocol):
    __slots__ = ("floor", "transport", "rest")

    def __init__(self, floor: Floor) -> None:
        self.floor, self.transport, self.rest = floor, None, b""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.floor.open += 1

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.floor.open -= 1

    def data_received(self, data: bytes) -> None:
        self.rest = self.floor.take(self, self.rest + data if self.rest else data)


async def main(model: str, port: int, delay_us: int, max_batch: int) -> None:
    floor = Floor(model, delay_us, max_batch)
    floor.loop = asyncio.get_running_loop()
    threading.Thread(target=floor.run, daemon=True).start()
    server = await floor.loop.create_server(lambda: Conn(floor), "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = sys.argv[1:]
    uvloop.run(main(args[0], int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else 64))
