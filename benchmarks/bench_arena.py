"""ONNX Runtime's CPU arena after an outsized batch: how much memory stays, and what giving it back costs.

ORT's CPU arena keeps every block it ever grew to: after one outsized batch (100k+ edges)
the server stays at that high-water mark forever (issue 17 saw 7 GB). Three policies,
each in a fresh process (RSS is per process), in alternating order, same model and inputs:

- ``arena``: ORT's default (arena on, never shrinks);
- ``no-arena``: ``enable_cpu_mem_arena = False`` (every tensor from malloc);
- ``shrink-big``: arena on, and runs whose feeds exceed a size threshold also ask ORT to
  shrink the arena at the end of the run (``memory.enable_memory_arena_shrinkage``).

Per policy: median / p99 latency of small batches (the serving case) and RSS after warm-up,
after the outsized batch, and after 200 more small batches.

    python benchmarks/bench_arena.py [--hidden 64] [--big-edges 400000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = ("arena", "no-arena", "shrink-big")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(policy: str, model: str, big_edges: int) -> dict:
    import numpy as np

    from edgemp.data.synthetic import random_graph
    from edgemp.runtime.runners import onnxruntime as ort_runner
    from edgemp.runtime.model import load

    ort_runner.ARENA_POLICY = policy  # read when the session is built and at every run
    rng = np.random.default_rng(0)
    m = load(model)
    small = [random_graph(rng, 25, 55, 5) for _ in range(16)]
    big = random_graph(rng, big_edges // 4, big_edges, 5)

    def lat(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            m.predict(small)
            out.append((time.perf_counter_ns() - t) / 1e3)
        return out

    lat(100)
    warm = _rss_mb()
    t = time.perf_counter()
    m.predict([big])
    big_s = time.perf_counter() - t
    after_big = _rss_mb()
    times = lat(200)
    after = _rss_mb()
    times.sort()
    return {"policy": policy, "rss_warm_mb": warm, "rss_after_big_mb": after_big, "rss_after_small_mb": after,
            "small_p50_us": times[len(times) // 2], "small_p99_us": times[int(len(times) * 0.99)], "big_s": big_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--big-edges", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=2, help="processes per policy, alternating")
    ap.add_argument("--child", nargs=3, metavar=("POLICY", "MODEL", "EDGES"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return
    from edgemp.export.handmade_models import build_sparse_model

    model = Path(tempfile.mkdtemp()) / "model.onnx"
    build_sparse_model(model, hidden=args.hidden)
    rows = []
    for _ in range(args.rounds):
        for policy in POLICIES:
            out = subprocess.run([sys.executable, __file__, "--child", policy, str(model), str(args.big_edges)],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    import onnxruntime

    print(f"command: python benchmarks/bench_arena.py --hidden {args.hidden} --big-edges {args.big_edges} "
          f"--rounds {args.rounds}")
    print(f"env: python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs; "
          "fixture sparse MPNN, 2 rounds; small batch = 16 graphs x 25 nodes, 55 edges")
    print("\n| policy | RSS warm MB | RSS after big MB | RSS after 200 small MB | small p50 µs | small p99 µs | big s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['rss_warm_mb']:.0f} | {r['rss_after_big_mb']:.0f} | {r['rss_after_small_mb']:.0f} "
              f"| {r['small_p50_us']:.0f} | {r['small_p99_us']:.0f} | {r['big_s']:.2f} |")


if __name__ == "__main__":
    main()
