"""edgemp serve vs a real Triton Inference Server, same repository, same client, same graphs.

One Python-backend repository (``edgemp export triton CKPT --repo DIR --backend
python``) is served at once by ``edgemp serve DIR`` and by ``edgemp triton serve DIR``
(tritonserver 2.51 from the nvidia-pytriton wheel; its Python backend runs the same ONNX
file through ``edgemp.runtime``). Both get one model instance with one ONNX Runtime
thread and Triton-style greedy dynamic batching (max 64 graphs, no queue delay). The
load is the real ``edgemp bench server`` CLI: closed loop, one molecule-sized graph
(25 nodes, 54 edges) per request, binary tensors, at concurrency 1, 8 and 32. Servers
alternate within each round, so both see the same machine state; the table gives the
median over rounds and Triton / edgemp ratios.

The model is the README's solubility MPNN shape (34 atom features, 6 bond features,
hidden 64, K=3) with seeded random weights: speed does not depend on the weights.

Usage: python benchmarks/bench_triton.py [--rounds 3] [--duration 4] [--out benchmarks/results/triton.md]
Needs the backend environment: bash scripts/build_triton_env.sh
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from edgemp.bench.local_server import wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
EDGEMP = [sys.executable, "-m", "edgemp.cli.main"]
CONCURRENCY = (1, 8, 32)
ANALYSIS_MARKER = "<!-- reading: kept when the table above is regenerated -->"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repository(tmp: Path) -> Path:
    import torch

    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import export_triton_repo
    from edgemp.models import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(family="mpnn", task="regression", node_features=34, edge_features=6, hidden=64, num_rounds=3)
    save_checkpoint(build_model(cfg), tmp / "ckpt")
    repo = tmp / "repo"
    export_triton_repo(tmp / "ckpt", repo, TritonRepoConfig(name="mpnn", backend="python", max_batch_size=64,
                                                            verify_mixes=4))
    return repo


def _bench(url: str, duration: float, out: Path) -> list[dict]:
    cmd = EDGEMP + ["bench", "server", "--url", url, "--model", "mpnn", "--concurrency", ",".join(map(str, CONCURRENCY)),
                    "--duration", str(duration), "--warmup-time", "1", "--synthetic", "nodes=25,edges=54,graphs=1",
                    "--quiet", "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["results"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per concurrency level per server per round")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "triton.md")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        repo = _repository(tmp)
        e_port, t_ports = _port(), (_port(), _port(), _port())
        servers = {
            # edgemp serves the repository's ONNX file itself: a python-backend config.pbtxt names a
            # backend edgemp does not run (Triton's model.py), and `edgemp serve REPO` refuses it.
            "edgemp serve": subprocess.Popen(EDGEMP + ["serve", str(repo / "mpnn" / "1" / "model.onnx"), "--name", "mpnn",
                                                       "--port", str(e_port)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "Triton (python backend)": subprocess.Popen(
                EDGEMP + ["triton", "serve", str(repo), "--http-port", str(t_ports[0]), "--grpc-port", str(t_ports[1]),
                          "--metrics-port", str(t_ports[2]), "--quiet"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT),
        }
        urls = {"edgemp serve": f"http://127.0.0.1:{e_port}", "Triton (python backend)": f"http://127.0.0.1:{t_ports[0]}"}
        try:
            for name, proc in servers.items():
                wait_until_ready(urls[name], proc, timeout_s=180)
            runs: dict[str, list[list[dict]]] = {name: [] for name in servers}
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    runs[name].append(_bench(urls[name], args.duration, tmp / f"{r}.json"))
        finally:
            for proc in servers.values():
                proc.terminate()
            codes = {name: proc.wait(90) for name, proc in servers.items()}
    _write(args, runs, codes, load_before)


def _median(runs: list[list[dict]], c: int, key) -> float:
    return statistics.median(key(next(row for row in rnd if row["concurrency"] == c)) for rnd in runs)


def _ms(row: dict, percentile: str) -> float:
    """A level's latency percentile in ms; NaN when no request of it finished inside its window
    (Triton's python backend can hold every request in flight past a short window)."""
    value = row["latency"]["percentiles_us"][percentile]
    return float("nan") if value is None else value / 1e3


def _write(args, runs, codes, load_before) -> None:
    import numpy
    import onnxruntime

    e, t = runs["edgemp serve"], runs["Triton (python backend)"]
    lines = ["# edgemp serve vs Triton Inference Server (same repository, client and graphs)", "",
             "| concurrency | server | graphs/s | p50 ms | p99 ms | mean graphs per execution | errors |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    ratios = []
    for c in CONCURRENCY:
        for name, rr in (("edgemp serve", e), ("Triton (python backend)", t)):
            gps = _median(rr, c, lambda row: row["graphs_per_s"])
            p50 = _median(rr, c, lambda row: _ms(row, "p50"))
            p99 = _median(rr, c, lambda row: _ms(row, "p99"))
            mb = _median(rr, c, lambda row: (row.get("server") or {}).get("mean_batch_graphs") or float("nan"))
            errs = sum(next(row for row in rnd if row["concurrency"] == c)["errors"] for rnd in rr)
            lines.append(f"| {c} | {name} | {gps:,.0f} | {p50:.2f} | {p99:.2f} | {mb:.1f} | {errs} |")
        ratios.append((c, _median(t, c, lambda row: row["graphs_per_s"]) / _median(e, c, lambda row: row["graphs_per_s"]),
                       _median(t, c, lambda row: _ms(row, "p50")) / _median(e, c, lambda row: _ms(row, "p50"))))
    lines += ["", "| concurrency | Triton / edgemp graphs/s | Triton / edgemp p50 |", "|---:|---:|---:|"]
    lines += [f"| {c} | {g:.2f}x | {p:.2f}x |" for c, g, p in ratios]
    lines += ["", f"Medians over {args.rounds} interleaved rounds of {args.duration:g} s per level and server "
              f"(after 1 s unrecorded warm-up each). Exit codes after SIGTERM: {codes}.", "",
              f"command: `{' '.join(shlex.quote(a) for a in ['python', 'benchmarks/bench_triton.py'] + sys.argv[1:])}`",
              f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__} (main env; Triton's backend env: numpy<2), "
              f"tritonserver 2.51.0 (nvidia-pytriton 0.7.0); load average before the run "
              f"{load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}"]
    # Keep the hand-written reading of the figures (below the marker) across reruns.
    kept = args.out.read_text().split(ANALYSIS_MARKER, 1) if args.out.exists() else []
    if len(kept) == 2:
        lines += ["", ANALYSIS_MARKER + kept[1].rstrip("\n")]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
