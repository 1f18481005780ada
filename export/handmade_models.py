"""Tiny real edgemp-contract ONNX models built with onnx.helper, plus a numpy reference.

They need no torch and no training, so tests and benchmarks of the runtime and server
share them (a benchmark never imports ``tests/``).

Both forms compute the same function with the same weights, so the sparse model, the
dense model and :func:`reference_outputs` must agree on every graph:

    h0      = relu(x W0 + b0)                                   # [N, H]
    h_{k+1} = relu(h_k Ws + (sum_{j->i} h_k[j] + e_ji We) Wn + b)   # 2 rounds
    prediction = (sum_i h_K[i]) Wo + bo                          # [G, 1] graph level
    node_out   = h_K Wno + bno                                   # [N, 2] node level

(``e_ji We`` only when the model takes edge features; dense models never do.)
Needs onnx (the ``export`` extra); the runtime never imports this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgemp.errors import MissingExtraError
from edgemp.graph import Graph
from edgemp.spec import ExportedModelSpec, ModelSpec, OutputSpec

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # the runtime-only install has no onnx; these models are for tests and benchmarks
    raise MissingExtraError("onnx", "export", "the handmade test models") from e

F, H, ROUNDS = 5, 8, 2


def make_weights(node_features: int = F, edge_features: int = 0, hidden: int = H, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    out = {"W0": w(node_features, hidden), "b0": w(1, hidden)[0], "Wo": w(hidden, 1), "bo": w(1, 1)[0],
           "Wno": w(hidden, 2), "bno": w(1, 2)[0]}
    for k in range(ROUNDS):
        out[f"Ws{k}"], out[f"Wn{k}"], out[f"b{k + 1}"] = w(hidden, hidden), w(hidden, hidden), w(1, hidden)[0]
        if edge_features:
            out[f"We{k}"] = w(edge_features, hidden)
    return out


def _spec(form: str, node_features: int, edge_features: int, input_names: list[str], max_nodes: int = 0,
          node_output: bool = True) -> ExportedModelSpec:
    outputs = [OutputSpec("prediction", "graph", 1)]
    if node_output:
        outputs.append(OutputSpec("node_out", "node", 2))
    model = ModelSpec(family="fixture", task="regression", node_features=node_features, edge_features=edge_features,
                      num_rounds=ROUNDS, outputs=tuple(outputs))
    return ExportedModelSpec(model=model, input_names=tuple(input_names), form=form, max_nodes=max_nodes,
                             edgemp_version="test")


def _finish(nodes, inputs, outputs, weights: dict, path: Path, spec: ExportedModelSpec | None) -> Path:
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "fixture", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if spec is not None:
        helper.set_model_props(model, {"edgemp": spec.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_sparse_model(path: Path, *, edge_features: int = 0, node_output: bool = True, seed: int = 0,
                       with_metadata: bool = True, spec: ExportedModelSpec | None = None, hidden: int = H) -> Path:
    """Sparse-form model: Gather sources, ScatterND(add) onto targets, ScatterND readout."""
    wts = make_weights(F, edge_features, hidden, seed=seed)
    wts["axis_last"] = np.array([-1], np.int64)
    wts["hidden"] = np.array([hidden], np.int64)
    n = helper.make_node
    nodes = [
        n("Gather", ["edge_index", "zero_i"], ["src"], axis=0),  # [E]
        n("Gather", ["edge_index", "one_i"], ["dst"], axis=0),  # [E]
        n("Unsqueeze", ["dst", "axis_last"], ["dst_idx"]),  # [E, 1]
        n("Gemm", ["x", "W0", "b0"], ["h0_lin"]),
        n("Relu", ["h0_lin"], ["h0"]),  # [N, H]
        n("Shape", ["h0"], ["h_shape"]),
    ]
    wts["zero_i"] = np.array(0, np.int64)
    wts["one_i"] = np.array(1, np.int64)
    h = "h0"
    for k in range(ROUNDS):
        nodes += [
            n("Gather", [h, "src"], [f"msg{k}"], axis=0),  # [E, H]
        ]
        msg = f"msg{k}"
        if edge_features:
            nodes += [n("MatMul", ["edge_attr", f"We{k}"], [f"emsg{k}"]), n("Add", [msg, f"emsg{k}"], [f"msge{k}"])]
            msg = f"msge{k}"
        nodes += [
            n("ConstantOfShape", ["h_shape"], [f"zeros{k}"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
            n("ScatterND", [f"zeros{k}", "dst_idx", msg], [f"agg{k}"], reduction="add"),  # [N, H]
            n("MatMul", [h, f"Ws{k}"], [f"self{k}"]),
            n("MatMul", [f"agg{k}", f"Wn{k}"], [f"nbr{k}"]),
            n("Add", [f"self{k}", f"nbr{k}"], [f"sum{k}"]),
            n("Add", [f"sum{k}", f"b{k + 1}"], [f"pre{k}"]),
            n("Relu", [f"pre{k}"], [f"h{k + 1}"]),
        ]
        h = f"h{k + 1}"
    nodes += [
        n("Shape", ["graph_node_counts"], ["g_shape"]),
        n("Concat", ["g_shape", "hidden"], ["pool_shape"], axis=0),
        n("ConstantOfShape", ["pool_shape"], ["pool_zeros"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        n("Unsqueeze", ["node_graph", "axis_last"], ["ng_idx"]),
        n("ScatterND", ["pool_zeros", "ng_idx", h], ["pooled"], reduction="add"),  # [G, H]
        n("Gemm", ["pooled", "Wo", "bo"], ["prediction"]),  # [G, 1]
    ]
    outs = [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["num_graphs", 1])]
    if node_output:
        nodes.append(n("Gemm", [h, "Wno", "bno"], ["node_out"]))
        outs.append(helper.make_tensor_value_info("node_out", TensorProto.FLOAT, ["num_nodes", 2]))
    else:
        for k in ("Wno", "bno"):
            wts.pop(k)
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["num_nodes", F]),
        helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"]),
    ]
    if edge_features:
        inputs.append(helper.make_tensor_value_info("edge_attr", TensorProto.FLOAT, ["num_edges", edge_features]))
    inputs += [
        helper.make_tensor_value_info("node_graph", TensorProto.INT64, ["num_nodes"]),
        helper.make_tensor_value_info("graph_node_counts", TensorProto.INT64, ["num_graphs"]),
    ]
    if spec is None and with_metadata:
        spec = _spec("sparse", F, edge_features, [i.name for i in inputs], node_output=node_output)
    return _finish(nodes, inputs, outs, wts, Path(path), spec if with_metadata else None)


def build_dense_model(path: Path, *, max_nodes: int = 32, seed: int = 0, hidden: int = H) -> Path:
    """Dense-form model: MatMul with the adjacency, masked sum readout (no edge features)."""
    wts = make_weights(F, 0, hidden, seed=seed)
    wts["axis_last"] = np.array([-1], np.int64)
    wts["axis_nodes"] = np.array([1], np.int64)
    n = helper.make_node
    nodes = [
        n("Unsqueeze", ["node_mask", "axis_last"], ["mask3"]),  # [G, M, 1]
        n("MatMul", ["x", "W0"], ["h0_mm"]),
        n("Add", ["h0_mm", "b0"], ["h0_lin"]),
        n("Relu", ["h0_lin"], ["h0_r"]),
        n("Mul", ["h0_r", "mask3"], ["h0"]),  # [G, M, H]
    ]
    h = "h0"
    for k in range(ROUNDS):
        nodes += [
            n("MatMul", ["adjacency", h], [f"agg{k}"]),  # [G, M, H]
            n("MatMul", [h, f"Ws{k}"], [f"self{k}"]),
            n("MatMul", [f"agg{k}", f"Wn{k}"], [f"nbr{k}"]),
            n("Add", [f"self{k}", f"nbr{k}"], [f"sum{k}"]),
            n("Add", [f"sum{k}", f"b{k + 1}"], [f"pre{k}"]),
            n("Relu", [f"pre{k}"], [f"hr{k}"]),
            n("Mul", [f"hr{k}", "mask3"], [f"h{k + 1}"]),
        ]
        h = f"h{k + 1}"
    nodes += [
        n("ReduceSum", [h, "axis_nodes"], ["pooled"], keepdims=0),  # [G, H]
        n("Gemm", ["pooled", "Wo", "bo"], ["prediction"]),  # [G, 1]
        n("MatMul", [h, "Wno"], ["node_mm"]),
        n("Add", ["node_mm", "bno"], ["node_out"]),  # [G, M, 2]
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["num_graphs", "max_nodes", F]),
        helper.make_tensor_value_info("adjacency", TensorProto.FLOAT, ["num_graphs", "max_nodes", "max_nodes"]),
        helper.make_tensor_value_info("node_mask", TensorProto.FLOAT, ["num_graphs", "max_nodes"]),
    ]
    outs = [
        helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["num_graphs", 1]),
        helper.make_tensor_value_info("node_out", TensorProto.FLOAT, ["num_graphs", "max_nodes", 2]),
    ]
    spec = _spec("dense", F, 0, [i.name for i in inputs], max_nodes=max_nodes)
    return _finish(nodes, inputs, outs, wts, Path(path), spec)


def build_plain_onnx(path: Path) -> Path:
    """A valid ONNX model with no edgemp metadata."""
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])]
    return _finish(nodes, inputs, outs, {}, Path(path), None)


def reference_outputs(g: Graph, *, edge_features: int = 0, seed: int = 0, hidden: int = H) -> dict[str, np.ndarray]:
    """The fixture models' math for one graph, in float64 numpy."""
    w = {k: v.astype(np.float64) for k, v in make_weights(F, edge_features, hidden, seed=seed).items()}
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    h = relu(g.x.astype(np.float64) @ w["W0"] + w["b0"])
    src, dst = g.edge_index
    for k in range(ROUNDS):
        msg = h[src]
        if edge_features and len(src):
            msg = msg + g.edge_attr.astype(np.float64) @ w[f"We{k}"]
        agg = np.zeros_like(h)
        np.add.at(agg, dst, msg)
        h = relu(h @ w[f"Ws{k}"] + agg @ w[f"Wn{k}"] + w[f"b{k + 1}"])
    return {"prediction": h.sum(axis=0) @ w["Wo"] + w["bo"], "node_out": h @ w["Wno"] + w["bno"]}
