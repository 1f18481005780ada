"""GAT's attention logits as one small GEMM per side: same numbers as eager, broadcast Mul + ReduceSum gone."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgemp.export import ExportConfig, export_model
from edgemp.export.attention_logits import LOGIT_NODE_SUFFIX, fold_attention_logits
from edgemp.models import ModelConfig, build_model


@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_gat_logits_fold_in_every_round_and_verify(form, tmp_path):
    torch.manual_seed(4)
    net = build_model(ModelConfig("gat", "regression", 6, 0, hidden=32, num_rounds=2)).eval()
    cfg = ExportConfig(form=form, max_nodes=16) if form == "dense" else ExportConfig()
    result = export_model(net, tmp_path / "gat.onnx", cfg)  # verification: eager parity on every case
    assert result.checks["attention_logits_as_matmul"] == 4  # source and target side, two rounds
    graph = onnx.load(str(tmp_path / "gat.onnx")).graph
    att = {i.name for i in graph.initializer if "att_" in i.name}
    assert not att  # the per-head attention vectors live on only inside the folded [H, heads] weights
    # Both sides read the same h: one [H, 2 * heads] product and a Split per round.
    merged = [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith(LOGIT_NODE_SUFFIX)]
    assert len(merged) == 2
    splits = [n for n in graph.node if n.op_type == "Split" and n.input[0] in {m.output[0] for m in merged}]
    assert len(splits) == 2 and all(len(n.output) == 2 for n in splits)


def test_merged_logit_products_are_exact():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("Gemm", ["h", "w"], ["z"], transB=1),
             helper.make_node("Reshape", ["z", "shape"], ["view"]),
             helper.make_node("Identity", ["view"], ["z_out"])]
    outputs = [helper.make_tensor_value_info("z_out", TensorProto.FLOAT, ["n", 2, 3])]
    for side in ("src", "dst"):
        inits.append(numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), f"att_{side}"))
        nodes += [helper.make_node("Mul", ["view", f"att_{side}"], [f"prod_{side}"]),
                  helper.make_node("ReduceSum", [f"prod_{side}", "axes"], [f"logit_{side}"], keepdims=0)]
        outputs.append(helper.make_tensor_value_info(f"logit_{side}", TensorProto.FLOAT, ["n", 2]))
    graph = helper.make_graph(nodes, "two_sides", [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 4])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    h = rng.standard_normal((11, 4)).astype(np.float32)
    before = _run(model, h)
    assert fold_attention_logits(model) == 2
    assert sorted(n.op_type for n in model.graph.node) == ["Gemm", "Identity", "MatMul", "Reshape", "Split"]
    for got, want in zip(_run(model, h), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _logits(bias: bool) -> onnx.ModelProto:
    """h -> Gemm(W[, b]) -> Reshape [-1, 2, 3] -> Mul(att) -> ReduceSum(-1): GAT's logit chain, by hand."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "att"),
             numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("Gemm", ["h", "w", "b"] if bias else ["h", "w"], ["z"], transB=1),
             helper.make_node("Reshape", ["z", "shape"], ["view"]),
             helper.make_node("Mul", ["view", "att"], ["prod"]),
             helper.make_node("ReduceSum", ["prod", "axes"], ["logit"], keepdims=0),
             helper.make_node("Identity", ["view"], ["z_out"])]  # z stays in use, as GAT's messages use it
    graph = helper.make_graph(nodes, "logits", [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n", 2]),
                               helper.make_tensor_value_info("z_out", TensorProto.FLOAT, ["n", 2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, h):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"h": h})


def test_hand_built_logits_fold_exactly_and_a_bias_is_left_alone():
    h = np.random.default_rng(6).standard_normal((9, 4)).astype(np.float32)
    model = _logits(bias=False)
    before = _run(model, h)
    assert fold_attention_logits(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Reshape", "MatMul", "Identity"]
    for got, want in zip(_run(model, h), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert fold_attention_logits(_logits(bias=True)) == 0


def test_int8_leaves_the_folded_logits_float(tmp_path):
    from edgemp.export.quantize import QuantizeConfig, quantize

    torch.manual_seed(4)
    net = build_model(ModelConfig("gat", "regression", 6, 0, hidden=32, num_rounds=2)).eval()
    export_model(net, tmp_path / "gat.onnx", ExportConfig())
    result = quantize(tmp_path / "gat.onnx", tmp_path / "gat_int8.onnx", QuantizeConfig(precision="int8-dynamic"))
    assert result.quantized_nodes and not any(n.endswith(LOGIT_NODE_SUFFIX) for n in result.quantized_nodes)
    graph = onnx.load(str(tmp_path / "gat_int8.onnx")).graph
    assert sum(n.op_type == "MatMul" and n.name.endswith(LOGIT_NODE_SUFFIX) for n in graph.node) == 2
