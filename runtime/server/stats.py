"""Per-model statistics: the one record behind ``/v2/models/{m}/stats``, gRPC ModelStatistics
and the Prometheus series (:mod:`edgemp.runtime.server.metrics` reads it at scrape time).

Triton's schema: ``success.ns`` is whole-request time, ``queue`` the batcher wait,
``compute_input`` decoding + splitting the request, ``compute_infer`` the model run of the
request's batch, ``compute_output`` re-assembly + encoding; ``inference_count`` counts
graphs and ``execution_count`` batches run. Prometheus histograms need bucket counts, so
the same record keeps them (a bisect per sample), and the hot path never touches
prometheus_client (whose label lookups and locks cost more than the counters).
Updated from the event loop and the batcher thread, hence the lock.
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass
from typing import Any

OUTCOMES = ("success", "rejected", "timeout", "failed", "bad_request")
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NODE_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class _Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += int(ns)

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class Histogram:
    """Cumulative-at-read bucket counts and a sum, as a Prometheus histogram exposes them."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """(le, cumulative count) pairs ending with +Inf, and the sum."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            running += n
            out.append((bound, running))
        return out, self.total


@dataclass(frozen=True)
class MetricsSnapshot:
    """What /metrics exports for one model, copied under the lock."""

    outcomes: dict[str, int]
    graphs: int
    histograms: dict[str, tuple[list[tuple[str, int]], float]]


class ModelStats:
    """Counters behind one model's statistics entry and its Prometheus series."""

    FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._d = {f: _Duration() for f in self.FIELDS}
        self._batches: dict[int, _Duration] = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        self._hist = {
            "request_duration_seconds": Histogram(LATENCY_BUCKETS),
            "queue_duration_seconds": Histogram(LATENCY_BUCKETS),
            "compute_duration_seconds": Histogram(LATENCY_BUCKETS),
            "batch_graphs": Histogram(GRAPH_BUCKETS),
            "batch_nodes": Histogram(NODE_BUCKETS),
        }
        d = self._d
        self._timed = (d["success"], d["queue"], d["compute_input"], d["compute_infer"], d["compute_output"])
        self._request_hist = self._hist["request_duration_seconds"]
        self._queue_hist = self._hist["queue_duration_seconds"]

    def record_batch(self, graphs: int, nodes: int, compute_ns: int) -> None:
        """One executed batch (the batcher's ``on_batch`` hook)."""
        with self._lock:
            self.execution_count += 1
            d = self._batches.get(graphs)
            if d is None:
                d = self._batches[graphs] = _Duration()
            d.add(compute_ns)
            h = self._hist
            h["compute_duration_seconds"].observe(compute_ns / 1e9)
            h["batch_graphs"].observe(graphs)
            h["batch_nodes"].observe(nodes)

    def record_success(self, graphs: int, total_ns: int, queue_ns: int, input_ns: int, infer_ns: int,
                       output_ns: int) -> None:
        # Once per request on the event loop: the adds are written out, not method calls.
        success, queue, compute_input, compute_infer, compute_output = self._timed
        request_hist, queue_hist = self._request_hist, self._queue_hist
        with self._lock:
            success.count += 1
            success.ns += total_ns
            queue.count += 1
            queue.ns += queue_ns
            compute_input.count += 1
            compute_input.ns += input_ns
            compute_infer.count += 1
            compute_infer.ns += infer_ns
            compute_output.count += 1
            compute_output.ns += output_ns
            self.inference_count += graphs
            self.last_inference_ms = int(time.time() * 1000)
            self._outcomes["success"] += 1
            request_hist.observe(total_ns / 1e9)
            queue_hist.observe(queue_ns / 1e9)

    def record_successes(self, rows: "list[tuple[int, int, int]]", infer_ns: int, output_ns: int) -> None:
        """:meth:`record_success` for the one-graph requests of one batch, under one lock:
        ``(total_ns, queue_ns, input_ns)`` each, the batch's compute and output time shared."""
        success, queue, compute_input, compute_infer, compute_output = self._timed
        request_hist, queue_hist = self._request_hist, self._queue_hist
        k = len(rows)
        with self._lock:
            for total_ns, queue_ns, input_ns in rows:
                success.ns += total_ns
                queue.ns += queue_ns
                compute_input.ns += input_ns
                request_hist.observe(total_ns / 1e9)
                queue_hist.observe(queue_ns / 1e9)
            success.count += k
            queue.count += k
            compute_input.count += k
            compute_infer.count += k
            compute_infer.ns += infer_ns * k
            compute_output.count += k
            compute_output.ns += output_ns * k
            self.inference_count += k
            self.last_inference_ms = int(time.time() * 1000)
            self._outcomes["success"] += k

    def record_failure(self, outcome: str, total_ns: int) -> None:
        """A failed request; a client's bad request is counted but not timed as a failure."""
        with self._lock:
            self._outcomes[outcome] += 1
            if outcome != "bad_request":
                self._d["fail"].add(total_ns)

    def metrics(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(dict(self._outcomes), self.inference_count,
                                   {k: h.snapshot() for k, h in self._hist.items()})

    def raw(self) -> dict[str, Any]:
        """Every counter as plain numbers, for another process to add up (:meth:`merged`)."""
        with self._lock:
            return {
                "durations": {f: [d.count, d.ns] for f, d in self._d.items()},
                "batches": [[size, d.count, d.ns] for size, d in self._batches.items()],
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "last_inference_ms": self.last_inference_ms,
                "outcomes": dict(self._outcomes),
                "histograms": {k: [list(h.counts), h.total] for k, h in self._hist.items()},
            }

    @classmethod
    def merged(cls, raws: "list[dict[str, Any]]") -> "ModelStats":
        """One record holding the sums of several :meth:`raw` ones (the workers of one server)."""
        out = cls()
        for raw in raws:
            for f, (count, ns) in raw["durations"].items():
                out._d[f].count += count
                out._d[f].ns += ns
            for size, count, ns in raw["batches"]:
                d = out._batches.get(size)
                if d is None:
                    d = out._batches[size] = _Duration()
                d.count += count
                d.ns += ns
            out.inference_count += raw["inference_count"]
            out.execution_count += raw["execution_count"]
            out.last_inference_ms = max(out.last_inference_ms, raw["last_inference_ms"])
            for outcome, n in raw["outcomes"].items():
                out._outcomes[outcome] += n
            for k, (counts, total) in raw["histograms"].items():
                h = out._hist[k]
                h.counts = [a + b for a, b in zip(h.counts, counts)]
                h.total += total
        return out

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        with self._lock:
            batch_stats = [
                {
                    "batch_size": size,
                    "compute_input": {"count": d.count, "ns": 0},
                    "compute_infer": d.to_json(),
                    "compute_output": {"count": d.count, "ns": 0},
                }
                for size, d in sorted(self._batches.items())
            ]
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {f: d.to_json() for f, d in self._d.items()},
                "response_stats": {},
                "batch_stats": batch_stats,
                "memory_usage": [],
            }
