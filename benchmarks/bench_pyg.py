"""edgemp vs the PyTorch Geometric peers on the same workload, in one interleaved run.

The bar is the best peer, not a strawman. Rows (1 intra-op thread, molecule-sized graphs
of 25 nodes / 54 edges, batch 1 and 64):

- PyG eager: GINConv x4 (hidden 128, 2-layer MLPs) + global_add_pool + linear head;
- PyG torch.compile (dynamic=True; compile time reported, not timed);
- the same PyG model exported by ``edgemp export model`` and run in ONNX Runtime CPU
  (PyG aggregates with scatter_add -> ScatterElements(add); edgemp rewrites those row
  scatters to ScatterND for ORT CPU, see edgemp.export.rewrite);
- edgemp's own GIN at the same widths and depth (sum aggregation via index_add ->
  ScatterND), fp32 and int8-dynamic, through ``edgemp.runtime`` (collate + run + split).

Different weights (random, seeded): the rows compare speed of equally sized models, not
outputs. The last column is each ORT row's GEMM work against a same-run fp32 sgemm peak; the
int8 row also against a same-run int8-dynamic peak, with the ratio to torch.compile its GEMMs
alone would allow (the int8 ceiling). Prints a markdown table with the command and environment.
Usage: python benchmarks/bench_pyg.py [--rounds 20] [--per-round 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, LAYERS, F = 128, 4, 8


def pyg_factory():
    import torch
    from torch_geometric.nn import GINConv, global_add_pool

    class PygGIN(torch.nn.Module):
        node_features = F

        def __init__(self) -> None:
            super().__init__()
            dims = [F] + [HIDDEN] * LAYERS
            self.convs = torch.nn.ModuleList(
                GINConv(torch.nn.Sequential(torch.nn.Linear(a, b), torch.nn.ReLU(), torch.nn.Linear(b, b)))
                for a, b in zip(dims, dims[1:])
            )
            self.head = torch.nn.Linear(HIDDEN, 1)

        def forward(self, x, edge_index, node_graph, num_graphs):
            for conv in self.convs:
                x = conv(x, edge_index).relu()
            return self.head(global_add_pool(x, node_graph, size=num_graphs))

    torch.manual_seed(0)
    return PygGIN().eval()


def graphs(n: int, seed: int = 0):
    from edgemp.data.synthetic import random_graph

    rng = np.random.default_rng(seed)
    return [random_graph(rng, 25, 54, F) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="interleaving rounds")
    ap.add_argument("--per-round", type=int, default=20, help="timed calls per engine per round")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or process CPU time (robust to other jobs on a shared machine)")
    args = ap.parse_args(argv)

    import torch

    import edgemp.runtime as rt
    from edgemp.bench.floor import CLOCKS, GemmPeak, gemm_profile, share_of_peak
    from edgemp.export import ExportConfig, export_model, export_onnx
    from edgemp.export.quantize import QuantizeConfig, quantize
    from edgemp.export.source import ExportSource
    from edgemp.graph import collate
    from edgemp.models import ModelConfig, build_model
    from edgemp.spec import ModelSpec, OutputSpec

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    pyg = pyg_factory()
    spec = ModelSpec("custom:pyg-gin", "regression", F, 0, LAYERS, (OutputSpec("prediction", "graph", 1),))
    export_model(ExportSource(pyg, spec, "", False, False), tmp / "pyg.onnx", ExportConfig())
    torch.manual_seed(0)
    own = build_model(ModelConfig("gin", "regression", F, 0, hidden=HIDDEN, num_rounds=LAYERS)).eval()
    export_onnx(own, tmp / "gin.onnx", ExportConfig())
    quantize(tmp / "gin.onnx", tmp / "gin_int8.onnx", QuantizeConfig(precision="int8-dynamic"))
    sessions = {name: rt.load(tmp / f"{name}.onnx", threads=1) for name in ("pyg", "gin", "gin_int8")}
    compiled = torch.compile(pyg, dynamic=True)

    rows = []
    for batch in (1, 64):
        gs = graphs(batch)
        b = collate(gs)
        t = {k: torch.from_numpy(v) for k, v in b.tensors().items()}

        def pyg_call(model):
            with torch.no_grad():
                return model(t["x"], t["edge_index"], t["node_graph"], b.num_graphs)

        start = time.perf_counter()
        pyg_call(compiled)
        compile_s = time.perf_counter() - start
        engines = {
            "PyG eager": lambda: pyg_call(pyg),
            f"PyG torch.compile (compile {compile_s:.1f} s, untimed)": lambda: pyg_call(compiled),
            "PyG model exported by edgemp (scatter rewritten to ScatterND), ORT": lambda: sessions["pyg"].predict(gs),
            "edgemp GIN fp32 (ScatterND), ORT": lambda: sessions["gin"].predict(gs),
            "edgemp GIN int8-dynamic, ORT": lambda: sessions["gin_int8"].predict(gs),
        }
        # The floor: GEMM FLOPs each ORT engine runs per call, against a same-run sgemm of the largest shape.
        onnx_of = dict(zip(list(engines)[2:], ("pyg", "gin", "gin_int8")))
        flops = {label: gemm_profile(tmp / f"{name}.onnx", b.tensors()).flops for label, name in onnx_of.items()}
        largest = gemm_profile(tmp / "gin.onnx", b.tensors()).largest
        peak = GemmPeak(*largest, clock=args.clock)
        peak8 = GemmPeak(*largest, clock=args.clock, int8=True)  # the int8 row's own yardstick
        clock = CLOCKS[args.clock]
        times: dict[str, list[int]] = {k: [] for k in engines}
        for fn in engines.values():  # warm-up
            for _ in range(5):
                fn()
        for r in range(args.rounds):  # interleaved, rotating order: drift hits all alike
            names = list(engines)
            names = names[r % len(names):] + names[: r % len(names)]
            for name in names:
                fn = engines[name]
                for _ in range(args.per_round):
                    t0 = clock()
                    fn()
                    times[name].append(clock() - t0)
            peak.sample(3)
            peak8.sample(3)
        base = float(np.median(times["PyG eager"]))
        best_peer = min(float(np.median(times[n])) for n in list(engines)[:2])
        compile_ns = float(np.median(times[list(engines)[1]]))
        for name, ts in times.items():
            arr = np.asarray(ts) / 1e3
            floor = "-"
            if name in flops:
                share = share_of_peak(flops[name], float(np.median(ts)), peak.gflops)
                floor = f"{flops[name] / 1e6:.0f} M, {share * 100:.0f}% of {peak.gflops:.0f} GFLOP/s ({peak.label()})"
                if "int8" in name:
                    share8 = share_of_peak(flops[name], float(np.median(ts)), peak8.gflops)
                    gemm_only_ns = flops[name] / peak8.gflops  # the int8 GEMMs alone, at the int8 peak
                    floor += (f"; {share8 * 100:.0f}% of the same-run int8 peak {peak8.gflops:.0f} GOP/s: "
                              f"its GEMMs alone at that peak {gemm_only_ns / 1e3:.0f} µs, a ceiling of "
                              f"{compile_ns / gemm_only_ns:.2f}x torch.compile")
            rows.append((batch, name, np.median(arr), np.percentile(arr, 99), base / 1e3 / np.median(arr),
                         best_peer / 1e3 / np.median(arr), floor))

    print("| batch | engine | p50 µs | p99 µs | vs PyG eager (p50) | vs best peer (p50) "
          "| GEMM FLOP/call, % of same-run sgemm peak |\n|---|---|---|---|---|---|---|")
    for batch, name, p50, p99, ratio, vs_best, floor in rows:
        print(f"| {batch} | {name} | {p50:.0f} | {p99:.0f} | {ratio:.2f}x | {vs_best:.2f}x | {floor} |")
    print(f"\nGIN x{LAYERS}, hidden {HIDDEN}, 25 nodes / 54 edges per graph, 1 thread, "
          f"{args.rounds} rounds x {args.per_round} calls per engine, interleaved; {args.clock} clock")
    from edgemp.bench.env import footer

    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
