"""The garbage collector's pauses inside a loaded `edgemp serve`, beside the latency they cause.

Usage: python benchmarks/trace_server_gc.py [--seconds 5] [--clients 32]

Starts the real server (GIN, hidden 64, 3 rounds; batching on) with ``gc.callbacks`` hooked
in before the CLI runs, drives it with the closed-loop raw-HTTP load generator, and prints
each collector generation's pass count and pause (mean, max) and how much garbage the passes
found, with the clients' p50/p99. A full (generation 2) pass holds the GIL, so every request
in flight waits for it (benchmarks/results/server.md §0d).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_server as bs  # noqa: E402 - this folder's helpers

# Run as the server process: records every collector pass, writes them on exit, then runs the CLI.
TRACED_SERVER = """
import atexit, gc, json, sys, time
passes = []
def on_gc(phase, info):
    passes.append((time.perf_counter_ns(), phase == "start", info["generation"], info.get("collected", 0)))
gc.callbacks.append(on_gc)
def dump():
    with open(OUT, "w") as f:
        json.dump(passes, f)
OUT = sys.argv.pop(1)
atexit.register(dump)
from edgemp.cli.serve import serve_main
sys.argv[0] = "edgemp-serve"
serve_main()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = bs.export_random("gin", 16, 0, tmp / "gin.onnx")
        trace = tmp / "gc.json"
        srv = bs.start_server(model, "--max-batch-graphs", "64", "--max-queue-size", "4096",
                              cmd=[sys.executable, "-c", TRACED_SERVER, str(trace)])
        try:
            remote = bs.remote_model(srv)
            graphs = bs.molecule_like_graphs(256, 16, seed=0)
            encoded = [bs.encode(bs.request_tensors([g], remote), "binary") for g in graphs]
            url = f"http://127.0.0.1:{srv.port}/v2/models/m/infer"
            run = bs._closed_loop(url, [b for b, _ in encoded], [h for _, h in encoded], args.clients, args.seconds)
        finally:
            srv.stop()
        passes = json.loads(trace.read_text())
    lat = run.latencies_ns / 1e3
    print(f"command: python benchmarks/trace_server_gc.py --seconds {args.seconds:g} --clients {args.clients}")
    print(f"{args.clients} clients: {lat.size / run.duration_s:.0f} graphs/s, p50 {np.percentile(lat, 50):.0f} µs, "
          f"p99 {np.percentile(lat, 99):.0f} µs (server start-up and warm-up passes included below)")
    print("| generation | passes | mean pause µs | max pause µs | objects collected |")
    print("|---|---:|---:|---:|---:|")
    starts: dict[int, int] = {}
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    collected = {0: 0, 1: 0, 2: 0}
    for t, is_start, gen, found in passes:
        if is_start:
            starts[gen] = t
        elif gen in starts:
            pauses[gen].append((t - starts.pop(gen)) / 1e3)
            collected[gen] += found
    for gen, p in pauses.items():
        print(f"| {gen} | {len(p)} | {np.mean(p) if p else 0:.0f} | {max(p, default=0):.0f} | {collected[gen]} |")


if __name__ == "__main__":
    main()
