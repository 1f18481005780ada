"""Stock PyTorch Geometric layers: edgemp's export in ONNX Runtime vs PyG eager and torch.compile.

For each layer, the model a PyG user writes (export/pyg_zoo.py: two layers of the stock layer
in its default configuration, ReLU, global mean pool, linear head) at hidden 64, on
molecule-sized graphs (25 nodes / 54 edges, random, 4 edge features where the layer reads
them), batch 1 and 64, 1 intra-op thread. Three engines run interleaved in rotating order
on the same model, weights and inputs:

- PyG eager (``torch.no_grad``);
- PyG ``torch.compile(dynamic=True)`` (compile time reported, not timed);
- the same model exported by edgemp (``export_model``, verified) in ``edgemp.runtime``, twice:
  ``run_batch`` on the already-collated batch (the same input preparation the PyG rows get), and
  ``predict`` on the list of graphs (validate + collate + run + split: what a runtime caller pays).

Prints a markdown table with the command and environment.
Usage: python benchmarks/bench_pyg_layers.py [--layers GCNConv,GATConv] [--rounds 10] [--per-round 10]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_LAYERS = ("GCNConv", "SAGEConv", "SAGEConv_max", "GraphConv", "GINConv", "GINEConv", "GATConv",
                  "GATConv_edge_dim", "GATv2Conv", "TransformerConv", "NNConv", "EdgeConv", "ChebConv",
                  "ResGatedGraphConv", "GENConv", "LEConv")
HIDDEN, NODES, EDGES = 64, 25, 54


def make_graphs(n: int, node_features: int, edge_features: int, seed: int = 0):
    from edgemp.graph import Graph

    rng = np.random.default_rng(seed)
    return [Graph(rng.standard_normal((NODES, node_features)).astype(np.float32),
                  rng.integers(0, NODES, (2, EDGES)).astype(np.int64),
                  rng.standard_normal((EDGES, edge_features)).astype(np.float32) if edge_features else None)
            for _ in range(n)]


def time_interleaved(engines: dict, rounds: int, per_round: int) -> dict[str, np.ndarray]:
    """Microseconds per call for each engine; rotating order so drift hits every engine alike."""
    for fn in engines.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[int]] = {k: [] for k in engines}
    names = list(engines)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = engines[name]
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                fn()
                times[name].append(time.perf_counter_ns() - t0)
    return {k: np.asarray(v) / 1e3 for k, v in times.items()}


def bench_layer(name: str, tmp: Path, rounds: int, per_round: int) -> list[tuple]:
    import torch

    import edgemp.runtime as rt
    from edgemp.export import ExportConfig, export_model, pyg_zoo
    from edgemp.export.source import ExportSource
    from edgemp.graph import collate
    from edgemp.spec import ModelSpec, OutputSpec

    model = pyg_zoo.build(name, hidden=HIDDEN)
    fe = model.edge_features
    spec = ModelSpec(f"custom:pyg-{name}", "regression", pyg_zoo.NODE_FEATURES, fe, 2,
                     (OutputSpec("prediction", "graph", 1),))
    path = tmp / f"{name}.onnx"
    export_model(ExportSource(model, spec, "", False, False), path, ExportConfig())
    session = rt.load(path, threads=1)
    compiled = torch.compile(model, dynamic=True)
    rows = []
    for batch in (1, 64):
        gs = make_graphs(batch, pyg_zoo.NODE_FEATURES, fe)
        b = collate(gs)
        t = {k: torch.from_numpy(v) for k, v in b.tensors().items()}
        extra = (t["edge_attr"],) if fe else ()

        def call(m):
            with torch.no_grad():
                return m(t["x"], t["edge_index"], *extra, t["node_graph"], b.num_graphs)

        start = time.perf_counter()
        call(compiled)
        compile_s = time.perf_counter() - start
        got = np.stack([o["prediction"] for o in session.predict(gs)]).reshape(-1)
        want = call(model).numpy().reshape(-1)
        max_err = float(np.abs(got - want).max())
        times = time_interleaved({"eager": lambda: call(model), "compile": lambda: call(compiled),
                                  "edgemp": lambda: session.run_batch(b), "predict": lambda: session.predict(gs)},
                                 rounds, per_round)
        p50 = {k: float(np.median(v)) for k, v in times.items()}
        rows.append((name, batch, p50["eager"], p50["compile"], p50["edgemp"], p50["predict"], compile_s, max_err))
        print(f"{name} batch {batch}: {p50} compile {compile_s:.1f}s max_err {max_err:.1e}", file=sys.stderr,
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default=",".join(DEFAULT_LAYERS), help="comma-separated zoo rows")
    ap.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    ap.add_argument("--per-round", type=int, default=10, help="timed calls per engine per round")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name in args.layers.split(","):
        rows += bench_layer(name.strip(), tmp, args.rounds, args.per_round)

    print("| layer | batch | PyG eager µs | torch.compile µs | edgemp ORT µs | vs eager | vs compile "
          "| edgemp predict() µs | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, batch, eager, comp, ours, predict, _, err in rows:
        print(f"| {name} | {batch} | {eager:.0f} | {comp:.0f} | {ours:.0f} | {eager / ours:.2f}x | "
              f"{comp / ours:.2f}x | {predict:.0f} | {err:.1e} |")
    compile_s = [r[6] for r in rows]
    print(f"\np50 of {args.rounds} rounds x {args.per_round} calls per engine, interleaved; hidden {HIDDEN}, "
          f"2 layers, {NODES} nodes / {EDGES} edges per graph, 1 thread; torch.compile first call {min(compile_s):.1f}-"
          f"{max(compile_s):.1f} s (untimed)")
    from edgemp.bench.env import footer

    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
