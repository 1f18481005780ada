"""Dynamic batcher vs direct predict: per-request latency and throughput, same model and inputs.

Closed-loop clients (each sends one request, waits for it, sends the next) at several
concurrencies, in three modes measured in one run:

- ``direct``: each client thread calls ``Model.predict`` itself (no queue; ORT runs calls
  concurrently),
- ``batcher, batching off``: through the Batcher with ``max_batch_graphs=1``,
- ``batcher, batching on``: through the Batcher with the given budget / queue delay.

Usage: python benchmarks/bench_batcher.py [--model M.onnx] [--requests 3000] [--concurrency 1,8,32]
Without --model it builds the test fixture model (sparse, hidden 64) in a temp dir.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

import edgemp.runtime as rt
from edgemp.data.synthetic import molecule_like_graphs
from edgemp.graph import Graph
from edgemp.runtime import Batcher, BatcherConfig


@dataclass
class Result:
    mode: str
    concurrency: int
    graphs_per_s: float
    p50_us: float
    p99_us: float
    mean_batch: float


def make_graphs(spec, count: int, seed: int) -> list[Graph]:
    """Molecule-like graphs (QM9/ZINC sizes: 10-35 nodes, ~2.2 directed edges per node)."""
    cap = spec.max_nodes if spec.form == "dense" else 35
    return molecule_like_graphs(count, spec.model.node_features, spec.model.edge_features, seed=seed, max_nodes=cap)


def run_clients(call, graphs: list[Graph], concurrency: int, total: int) -> tuple[float, np.ndarray]:
    """``concurrency`` closed-loop clients share ``total`` one-graph requests; returns (wall s, latencies ns)."""
    per_client = max(total // concurrency, 1)
    lat = np.zeros((concurrency, per_client), np.int64)
    barrier = threading.Barrier(concurrency + 1)

    def client(c: int) -> None:
        barrier.wait()
        for i in range(per_client):
            g = graphs[(c * per_client + i) % len(graphs)]
            t = time.perf_counter_ns()
            call([g])
            lat[c, i] = time.perf_counter_ns() - t

    threads = [threading.Thread(target=client, args=(c,)) for c in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for t in threads:
        t.join()
    return (time.perf_counter_ns() - start) / 1e9, lat.reshape(-1)


def measure(mode: str, call, graphs, concurrency: int, total: int, stats=None) -> Result:
    run_clients(call, graphs, concurrency, max(total // 10, concurrency * 5))  # warm-up
    before = stats() if stats else None
    wall, lat = run_clients(call, graphs, concurrency, total)
    mean_batch = 1.0
    if stats:
        after = stats()
        runs = after.batches - before.batches
        mean_batch = (after.batch_graphs_total - before.batch_graphs_total) / max(runs, 1)
    return Result(mode, concurrency, lat.size / wall, float(np.percentile(lat, 50)) / 1e3,
                  float(np.percentile(lat, 99)) / 1e3, mean_batch)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="exported .onnx (default: fixture model)")
    ap.add_argument("--requests", type=int, default=3000, help="timed one-graph requests per cell")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: edgemp's)")
    ap.add_argument("--max-batch-graphs", type=int, default=64)
    ap.add_argument("--max-queue-delay-us", type=int, default=BatcherConfig().max_queue_delay_us)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            from edgemp.export.handmade_models import build_sparse_model

            path = build_sparse_model(Path(tmp) / "fixture.onnx", hidden=64, node_output=False)
        model = rt.load(path, providers="cpu", threads=args.threads)
        graphs = make_graphs(model.spec, 512, args.seed)
        levels = [int(c) for c in args.concurrency.split(",")]
        on_cfg = BatcherConfig(max_batch_graphs=args.max_batch_graphs, max_queue_delay_us=args.max_queue_delay_us,
                               max_queue_size=4096)
        off_cfg = BatcherConfig(max_batch_graphs=1, max_queue_delay_us=0, max_queue_size=4096)
        results: list[Result] = []
        with Batcher(model, on_cfg) as on, Batcher(model, off_cfg) as off:
            for c in levels:
                results.append(measure("direct predict", model.predict, graphs, c, args.requests))
                results.append(measure("batcher, batching off", off.predict, graphs, c, args.requests, off.stats))
                results.append(measure("batcher, batching on", on.predict, graphs, c, args.requests, on.stats))

    print(f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}")
    print(f"model: {args.model or 'fixture sparse MPNN (hidden 64, 2 rounds)'}; form {model.spec.form}; "
          f"graphs 10-35 nodes, 2.2 edges/node; one graph per request")
    print(f"env: python {platform.python_version()}, onnxruntime {ort.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.machine()}; ORT threads {args.threads or 'default (1)'}; batcher on: "
          f"max_batch_graphs={args.max_batch_graphs}, max_queue_delay_us={args.max_queue_delay_us}")
    print()
    print("| mode | concurrency | graphs/s | p50 µs | p99 µs | mean graphs/run |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.mode} | {r.concurrency} | {r.graphs_per_s:,.0f} | {r.p50_us:,.0f} | {r.p99_us:,.0f} | "
              f"{r.mean_batch:.1f} |")
    base = {r.concurrency: r.graphs_per_s for r in results if r.mode == "direct predict"}
    print()
    for r in results:
        if r.mode == "batcher, batching on":
            print(f"- concurrency {r.concurrency}: batching on = {r.graphs_per_s / base[r.concurrency]:.2f}x "
                  "direct predict throughput")


if __name__ == "__main__":
    main()
