"""What each piece of the int8 GIN costs in ONNX Runtime: the floor under bench_pyg's int8 row.

The 64-graph GIN batch of bench_pyg (1,600 nodes, 3,456 edges, hidden 128) split into the
kernels its int8 run is made of, each timed alone in one interleaved run (1 thread):

- sum aggregation ``h + Σ_j h_j`` in every form ONNX Runtime CPU offers: Gather + ScatterND(add)
  (what edgemp exports), a per-graph dense batched MatMul (graphs padded to 25 slots), a padded
  neighbour table + ReduceSum, and ``SparseToDenseMatMul`` on a CSR adjacency (a sparse input);
- one int8 layer: DynamicQuantizeMatMul (what int8-dynamic runs), the same after a Relu,
  MatMulIntegerToFloat on an already-quantized input (the GEMM core), DynamicQuantizeLinear,
  and the fp32 Gemm for comparison.

Every aggregation form is checked against numpy before it is timed. Prints a markdown table.
Usage: python benchmarks/bench_pyg_floor.py [--rounds 20] [--per-round 20]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HIDDEN = 128


def _session(nodes, inputs, outputs, inits=()):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "piece", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def aggregation_pieces(src: np.ndarray, dst: np.ndarray, n: int, slots: int, h: np.ndarray) -> dict:
    """name -> (zero-argument call, its output): every form computes ``h + A·h``."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper
    from onnx import numpy_helper as nh

    def v(name, ty=T.FLOAT):
        return helper.make_tensor_value_info(name, ty, None)

    out = [v("y")]
    pieces = {}
    s = _session([helper.make_node("Gather", ["h", "src"], ["g"]),
                  helper.make_node("ScatterND", ["h", "dst2", "g"], ["y"], reduction="add")],
                 [v("h"), v("src", T.INT64), v("dst2", T.INT64)], out)
    feeds = {"h": h, "src": src, "dst2": dst[:, None].copy()}
    pieces["Gather + ScatterND(add) (edgemp's export)"] = lambda s=s, f=feeds: s.run(None, f)[0]

    graphs = n // slots
    adj = np.zeros((graphs, slots, slots), np.float32)
    np.add.at(adj, (dst // slots, dst % slots, src % slots), 1.0)
    adj[:, np.arange(slots), np.arange(slots)] += 1.0  # the self term
    s = _session([helper.make_node("Reshape", ["h", "s3"], ["h3"]), helper.make_node("MatMul", ["A", "h3"], ["m"]),
                  helper.make_node("Reshape", ["m", "s2"], ["y"])], [v("h"), v("A")], out,
                 [nh.from_array(np.array([graphs, slots, h.shape[1]], np.int64), "s3"),
                  nh.from_array(np.array([n, h.shape[1]], np.int64), "s2")])
    feeds = {"h": h, "A": adj}
    pieces[f"per-graph dense MatMul [{graphs}, {slots}, {slots}] @ [{graphs}, {slots}, H]"] = \
        lambda s=s, f=feeds: s.run(None, f)[0]

    deg = np.bincount(dst, minlength=n)
    width = int(deg.max()) + 1
    table = np.full((n, width), n, np.int64)  # row n of the padded h is zeros
    table[:, 0] = np.arange(n)
    fill = np.ones(n, np.int64)
    for e in np.argsort(dst, kind="stable"):
        table[dst[e], fill[dst[e]]] = src[e]
        fill[dst[e]] += 1
    s = _session([helper.make_node("Pad", ["h", "pads"], ["hp"]), helper.make_node("Gather", ["hp", "table"], ["g"]),
                  helper.make_node("ReduceSum", ["g", "axes"], ["y"], keepdims=0)], [v("h"), v("table", T.INT64)], out,
                 [nh.from_array(np.array([0, 0, 1, 0], np.int64), "pads"),
                  nh.from_array(np.array([1], np.int64), "axes")])
    feeds = {"h": h, "table": table}
    pieces[f"padded neighbour table [N, {width}] + ReduceSum"] = lambda s=s, f=feeds: s.run(None, f)[0]

    rows = np.concatenate([dst, np.arange(n)])
    cols = np.concatenate([src, np.arange(n)])
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    csr = ort.SparseTensor.sparse_csr_from_numpy([n, n], np.ones(len(rows), np.float32),
                                                 cols[order].astype(np.int64), indptr, ort.OrtDevice.make("cpu", 0))
    s = _session([helper.make_node("SparseToDenseMatMul", ["A", "h"], ["y"], domain="com.microsoft")],
                 [helper.make_sparse_tensor_value_info("A", T.FLOAT, [n, n]), v("h")], out)
    a_value, h_value = ort.OrtValue.ort_value_from_sparse_tensor(csr), ort.OrtValue.ortvalue_from_numpy(h)
    pieces["SparseToDenseMatMul, CSR (A + I) as a sparse input"] = \
        lambda s=s: s.run_with_ort_values(["y"], {"A": a_value, "h": h_value})[0].numpy()
    return pieces


def int8_pieces(rows: int, h: np.ndarray) -> dict:
    """name -> zero-argument call: one [rows, H] x [H, H] layer, int8 and fp32."""
    from onnx import TensorProto as T
    from onnx import helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(1)
    k = h.shape[1]
    inits = [nh.from_array(rng.integers(-127, 128, (k, k), dtype=np.int8), "wq"),
             nh.from_array(np.array(0.01, np.float32), "ws"), nh.from_array(np.array(0, np.int8), "wz"),
             nh.from_array(np.zeros(k, np.float32), "b"), nh.from_array(np.array(0.02, np.float32), "xs"),
             nh.from_array(np.array(0, np.uint8), "xz"),
             nh.from_array((rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32), "wf")]

    def v(name, ty=T.FLOAT):
        return helper.make_tensor_value_info(name, ty, None)

    x = h[:rows]
    xq = np.clip(np.round(np.maximum(x, 0) / 0.02), 0, 255).astype(np.uint8)
    dqmm = helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws", "wz", "b"], ["y"], domain="com.microsoft")
    cases = {
        "DynamicQuantizeMatMul (int8-dynamic's layer)": ([dqmm], [v("x")], [v("y")], {"x": x}),
        "Relu + DynamicQuantizeMatMul": ([helper.make_node("Relu", ["r"], ["x"]), dqmm], [v("r")], [v("y")], {"r": x}),
        "MatMulIntegerToFloat on a u8 input (the int8 GEMM core)": (
            [helper.make_node("MatMulIntegerToFloat", ["xq", "wq", "xs", "ws", "xz", "wz", "b"], ["y"],
                              domain="com.microsoft")], [v("xq", T.UINT8)], [v("y")], {"xq": xq}),
        "DynamicQuantizeLinear (the activation's range + u8)": (
            [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])], [v("x")], [v("y", T.UINT8)], {"x": x}),
        "Relu": ([helper.make_node("Relu", ["x"], ["y"])], [v("x")], [v("y")], {"x": x}),
        "fp32 Gemm (bias)": ([helper.make_node("Gemm", ["x", "wf", "b"], ["y"])], [v("x")], [v("y")], {"x": x}),
    }
    pieces = {}
    for name, (nodes, ins, outs, feeds) in cases.items():
        s = _session(nodes, ins, outs, inits)
        pieces[name] = lambda s=s, f=feeds: s.run(None, f)
    return pieces


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="interleaving rounds")
    ap.add_argument("--per-round", type=int, default=20, help="timed calls per piece per round")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pyg import graphs

    from edgemp.graph import collate

    batch = collate(graphs(64))
    src, dst = batch.edge_index[0], batch.edge_index[1]
    n = batch.x.shape[0]
    h = np.random.default_rng(0).standard_normal((n, HIDDEN)).astype(np.float32)
    want = h.copy()
    np.add.at(want, dst, h[src])
    agg = aggregation_pieces(src, dst, n, 25, h)
    for name, fn in agg.items():
        err = float(np.abs(fn() - want).max())
        if err > 1e-4:
            raise SystemExit(f"{name}: wrong aggregation (max abs error {err:.2e})")
    pieces = {**{f"aggregation: {k}": v for k, v in agg.items()}, **int8_pieces(n, h)}
    times: dict[str, list[int]] = {k: [] for k in pieces}
    for fn in pieces.values():
        for _ in range(5):
            fn()
    for r in range(args.rounds):
        names = list(pieces)
        names = names[r % len(names):] + names[: r % len(names)]
        for name in names:
            for _ in range(args.per_round):
                t0 = time.process_time_ns()
                pieces[name]()
                times[name].append(time.process_time_ns() - t0)
    print(f"| piece ({n} nodes, {len(src)} edges, H = {HIDDEN}) | p50 µs (CPU time) |\n|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {np.median(ts) / 1e3:.1f} |")
    print(f"\n1 thread, {args.rounds} rounds x {args.per_round} calls per piece, interleaved; process CPU time")
    from edgemp.bench.env import footer

    print(footer())
    return 0


if __name__ == "__main__":
    sys.exit(main())
