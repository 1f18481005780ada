"""Issue 13's benchmark: the default MPNN on real molecules vs PyTorch eager and torch.compile.

One seeded default MPNN (hidden 64, 3 rounds, the packaged featuriser's widths) and the
packaged solubility molecules. Cases: one 23-atom molecule; the first 64 training
molecules; the same 64 topologies with continuous (all-distinct) edge features, where
running the edge network on distinct rows cannot help and must not hurt. Engines, all
through the same collate / run / split path (``edgemp.bench`` backends), interleaved in
rounds: PyTorch eager, torch.compile (dynamic=True, compile excluded), edgemp's export
before issue 13 (``distinct_edge_rows=False``: edge network per edge) and now.

Each edgemp row also shows the GEMM FLOPs ONNX Runtime executes per call and their share
of the same-run sgemm peak of the model's largest GEMM shape (``edgemp.bench.floor``).
Usage: python benchmarks/bench_mpnn.py [--rounds 8] [--calls 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgemp.bench.backends import OrtBackend, make_backend
from edgemp.bench.env import capture_environment
from edgemp.bench.floor import CLOCKS, GemmPeak, gemm_profile, share_of_peak
from edgemp.bench.report import fmt_ratio, fmt_us
from edgemp.graph import Graph, collate

PEERS = ("torch-eager", "torch-compile")
EDGEMP = {"edgemp per-edge (before)": False, "edgemp": True}  # label -> distinct_edge_rows


def cases() -> dict[str, list[Graph]]:
    from edgemp.data.solubility import load_solubility

    mols = load_solubility("train")
    one = next(g for g in mols if g.num_nodes == 23)
    first64 = mols[:64]
    rng = np.random.default_rng(0)
    continuous = [dataclasses.replace(g, edge_attr=rng.standard_normal(g.edge_attr.shape).astype(np.float32))
                  for g in first64]
    return {"1 molecule": [one], "64 molecules": first64, "64 graphs, continuous edge features": continuous}


def build(d: Path) -> tuple[Path, dict[str, Path]]:
    import torch

    from edgemp.data.featurize import EDGE_FEATURES, NODE_FEATURES
    from edgemp.export import ExportConfig, export_onnx
    from edgemp.models import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(family="mpnn", task="regression", node_features=NODE_FEATURES, edge_features=EDGE_FEATURES)
    ckpt = save_checkpoint(build_model(cfg), d / "ckpt")
    models = {label: export_onnx(ckpt, d / f"mpnn_{int(on)}.onnx", ExportConfig(distinct_edge_rows=on))
              for label, on in EDGEMP.items()}
    return ckpt, models


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per engine, case and round (batch 1: x5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or process CPU time (robust to other jobs on a shared machine)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    env = capture_environment(sys.argv if argv is None else ["bench_mpnn.py", *argv])
    work = cases()
    with tempfile.TemporaryDirectory(prefix="edgemp-bench-mpnn-") as tmp:
        ckpt, models = build(Path(tmp))
        engines = {name: make_backend(name, None, ckpt, args.threads) for name in PEERS}
        engines.update({label: OrtBackend("ort-cpu", path, args.threads) for label, path in models.items()})
        profiles, peaks = {}, {}
        for case, graphs in work.items():
            feeds = collate(graphs).tensors()
            for label, path in models.items():
                profiles[case, label] = gemm_profile(path, feeds, args.threads)
            peaks[case] = GemmPeak(*profiles[case, "edgemp"].largest, threads=args.threads, clock=args.clock)
        clock = CLOCKS[args.clock]
        samples: dict[tuple[str, str], list[int]] = {(c, e): [] for c in work for e in engines}
        for name, eng in engines.items():  # warm-up (torch.compile compiles here, untimed)
            eng.activate()
            for graphs in work.values():
                for _ in range(3):
                    eng.infer(graphs)
        for r in range(args.rounds):
            order = list(engines)[r % len(engines):] + list(engines)[: r % len(engines)]  # rotate who goes first
            for case, graphs in work.items():
                calls = args.calls * (5 if len(graphs) == 1 else 1)
                for name in order:
                    eng = engines[name]
                    eng.activate()
                    for _ in range(calls):
                        t0 = clock()
                        eng.infer(graphs)  # collate + run + split
                        samples[case, name].append(clock() - t0)
                peaks[case].sample()
        for eng in engines.values():
            eng.close()
    print(table(work, samples, profiles, peaks))
    print()
    print(f"p50 of collate + run + split per call ({args.clock} clock); {args.rounds} interleaved rounds x {args.calls} calls "
          f"(batch 1: x5) per engine and case; {args.threads} intra-op thread(s) for ORT and torch. "
          "Peak: a pair of chained plain ORT MatMuls of the model's largest GEMM shape at that batch, "
          "timed in the same rounds.")
    print(f"command: {env.get('command')}")
    print(f"edgemp {env.get('edgemp')}, onnxruntime {env.get('onnxruntime')}, torch {env.get('torch')}, "
          f"python {env.get('python')}; cpu: {env.get('cpu')} ({env.get('usable_cores')} usable cores), "
          f"load average {env.get('load_average_1m')} at start")
    return 0


def table(work, samples, profiles, peaks) -> str:
    p50 = {k: float(np.median(v)) / 1e3 for k, v in samples.items()}  # µs
    lines = [
        "| case | graphs / atoms / bonds / distinct bond rows | eager | torch.compile | edgemp per-edge (before) "
        "| edgemp | vs eager | vs torch.compile | vs best peer | GEMM MFLOP per call | same-run peak (shape) "
        "| share of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, graphs in work.items():
        b = collate(graphs)
        distinct = len(np.unique(b.edge_attr, axis=0))
        best_peer = min(p50[case, n] for n in PEERS)
        ours = p50[case, "edgemp"]
        prof, peak = profiles[case, "edgemp"], peaks[case]
        share = share_of_peak(prof.flops, ours * 1e3, peak.gflops)
        lines.append(
            f"| {case} | {b.num_graphs} / {b.num_nodes} / {b.num_edges} / {distinct} "
            f"| {fmt_us(p50[case, 'torch-eager'])} | {fmt_us(p50[case, 'torch-compile'])} "
            f"| {fmt_us(p50[case, 'edgemp per-edge (before)'])} | {fmt_us(ours)} "
            f"| {fmt_ratio(p50[case, 'torch-eager'] / ours)} | {fmt_ratio(p50[case, 'torch-compile'] / ours)} "
            f"| {fmt_ratio(best_peer / ours)} | {prof.flops / 1e6:.1f} (before: "
            f"{profiles[case, 'edgemp per-edge (before)'].flops / 1e6:.1f}) "
            f"| {peak.gflops:.0f} GFLOP/s ({peak.label()}) | {share * 100:.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
