"""GIN's encoder folded into its first aggregation: narrower gather/scatter, same numbers as eager."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import edgemp.runtime as rt
from edgemp.data.synthetic import random_graph
from edgemp.export import ExportConfig, export_model
from edgemp.export.encoder_fold import fold_encoder_into_aggregation
from edgemp.graph import Graph, collate
from edgemp.models import ModelConfig, build_model

F, H = 5, 32


def _gin(family: str = "gin", eps: float = 0.25):
    torch.manual_seed(3)
    net = build_model(ModelConfig(family, "regression", F, 3 if family == "gine" else 0, hidden=H, num_rounds=2)).eval()
    with torch.no_grad():
        for layer in net.layers:
            layer.eps.fill_(eps)  # a trained eps: the self term keeps its Mul
    return net


def _graphs(rng, fe: int = 0) -> list[Graph]:
    graphs = [random_graph(rng, int(n), int(2 * n), F, fe) for n in rng.integers(1, 30, 24)]
    graphs.append(Graph(x=np.ones((3, F), np.float32), edge_index=np.zeros((2, 0), np.int64),
                        edge_attr=np.zeros((0, fe), np.float32) if fe else None))
    return graphs


def test_gin_encoder_folds_and_matches_eager(tmp_path):
    net = _gin()
    result = export_model(net, tmp_path / "gin.onnx", ExportConfig())
    assert result.checks["encoders_folded_into_aggregation"] == 1
    model = onnx.load(str(tmp_path / "gin.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Pad") == 1
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    assert [F + 1, H] in inits.values()  # the fused (F + 1) x H weight replaced encoder and first Linear
    assert [H, F] not in inits.values()  # the encoder weight is gone
    batch = collate(_graphs(np.random.default_rng(0)))
    t = {k: torch.from_numpy(v) for k, v in batch.tensors().items()}
    with torch.no_grad():
        expected = net(t["x"], t["edge_index"], None, t["node_graph"], batch.num_graphs)["prediction"].numpy()
    with rt.load(tmp_path / "gin.onnx") as m:
        got = np.stack([r["prediction"] for r in m.predict(_graphs(np.random.default_rng(0)))])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_no_fold_where_the_chain_is_not_linear_or_the_target_is_tensorrt(tmp_path):
    gine = export_model(_gin("gine"), tmp_path / "gine.onnx", ExportConfig())  # messages: relu(h_j + W e)
    assert gine.checks["encoders_folded_into_aggregation"] == 0
    trt = export_model(_gin(), tmp_path / "gin_trt.onnx", ExportConfig(target="tensorrt", verify=False))
    assert trt.checks.get("encoders_folded_into_aggregation", 0) == 0


def _chain(extra_use: bool) -> onnx.ModelProto:
    """x -> Gemm(enc) -> {Gather(src), Mul(c)} -> ScatterND(add) -> Gemm: the GIN first-layer chain."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("we", rng.standard_normal((H, F)).astype(np.float32)), ("be", rng.standard_normal(H).astype(np.float32)),
        ("w1", rng.standard_normal((H, H)).astype(np.float32)), ("b1", rng.standard_normal(H).astype(np.float32)),
        ("c", np.array([1.5], np.float32))]]
    nodes = [
        helper.make_node("Gemm", ["x", "we", "be"], ["h"], transB=1),
        helper.make_node("Gather", ["h", "src"], ["msg"], axis=0),
        helper.make_node("Mul", ["c", "h"], ["self"]),
        helper.make_node("ScatterND", ["self", "dst", "msg"], ["sum"], reduction="add"),
        helper.make_node("Gemm", ["sum", "w1", "b1"], ["y"], transB=1),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])]
    if extra_use:
        nodes.append(helper.make_node("Relu", ["h"], ["h_relu"]))
        outputs.append(helper.make_tensor_value_info("h_relu", TensorProto.FLOAT, ["n", H]))
    graph = helper.make_graph(nodes, "chain", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", F]),
        helper.make_tensor_value_info("src", TensorProto.INT64, ["e"]),
        helper.make_tensor_value_info("dst", TensorProto.INT64, ["e", 1])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], feeds)[0]


def test_hand_built_chain_folds_to_the_same_numbers():
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((40, F)).astype(np.float32),
             "src": rng.integers(0, 40, 90), "dst": rng.integers(0, 40, (90, 1))}
    model = _chain(extra_use=False)
    before = _run(model, feeds)
    assert fold_encoder_into_aggregation(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Pad", "Gather", "Mul", "ScatterND", "Gemm"]
    np.testing.assert_allclose(_run(model, feeds), before, rtol=1e-4, atol=1e-4)


def test_encoder_output_used_elsewhere_is_left_alone():
    model = _chain(extra_use=True)  # a third use of the wide encoding: folding would have to keep it
    assert fold_encoder_into_aggregation(model) == 0
    assert [n.op_type for n in model.graph.node][0] == "Gemm"


@pytest.mark.parametrize("eps", [0.0, -0.5])
def test_fold_is_exact_algebra_for_any_eps(eps, tmp_path):
    net = _gin(eps=eps)
    export_model(net, tmp_path / "gin.onnx", ExportConfig())  # export verification: eager parity on every case


def _two_linears(between: str | None, inner_bias: bool = True) -> onnx.ModelProto:
    """x -> Gemm(W1[, b1]) [-> between] -> Gemm(W2, b2): the GCN encoder -> lin pair, by hand."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((H, F)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((H, 7)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(7).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"] if inner_bias else ["x", "w1"], ["h"], transB=1)]
    if between is not None:
        nodes.append(helper.make_node(between, ["h"], ["h2"]))
    nodes.append(helper.make_node("Gemm", ["h2" if between else "h", "w2", "b2"], ["y"]))
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", F])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 7])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("inner_bias", [True, False])
def test_consecutive_linears_fold_into_one_gemm(inner_bias):
    from edgemp.export.encoder_fold import fold_linear_chains

    feeds = {"x": np.random.default_rng(4).standard_normal((11, F)).astype(np.float32)}
    model = _two_linears(None, inner_bias)
    before = _run(model, feeds)
    assert fold_linear_chains(model) == 1 and [n.op_type for n in model.graph.node] == ["Gemm"]
    np.testing.assert_allclose(_run(model, feeds), before, rtol=1e-4, atol=1e-4)
    assert fold_linear_chains(_two_linears("Relu")) == 0  # a nonlinearity between: two layers stay


def test_gcn_export_folds_its_encoder_into_the_first_linear(tmp_path):
    torch.manual_seed(5)
    net = build_model(ModelConfig("gcn", "regression", F, 0, hidden=H, num_rounds=2)).eval()
    result = export_model(net, tmp_path / "gcn.onnx", ExportConfig())  # verification: eager parity on every case
    assert result.checks["linear_pairs_folded"] == 1


@pytest.mark.parametrize("gemm_bias", [True, False])
def test_bias_add_after_a_gemm_folds_into_it(gemm_bias):
    from onnx import TensorProto, helper, numpy_helper

    from edgemp.export.encoder_fold import fold_bias_adds

    rng = np.random.default_rng(8)

    def model(bias_shape, second_use: bool):
        inits = [numpy_helper.from_array(rng.standard_normal((H, F)).astype(np.float32), "w"),
                 numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "c"),
                 numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b")]
        nodes = [helper.make_node("Gemm", ["x", "w", "c"] if gemm_bias else ["x", "w"], ["z"], transB=1),
                 helper.make_node("Add", ["b", "z"], ["y"])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])]
        if second_use:  # the bias-free product is needed too: nothing to fold
            nodes.append(helper.make_node("Identity", ["z"], ["z_out"]))
            outputs.append(helper.make_tensor_value_info("z_out", TensorProto.FLOAT, ["n", H]))
        graph = helper.make_graph(nodes, "gemm_add", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", F])],
                                  outputs, inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    feeds = {"x": rng.standard_normal((13, F)).astype(np.float32)}
    for shape in ((H,), (1,)):
        m = model(shape, second_use=False)
        before = _run(m, feeds)
        assert fold_bias_adds(m) == 1 and [n.op_type for n in m.graph.node] == ["Gemm"]
        np.testing.assert_allclose(_run(m, feeds), before, rtol=1e-5, atol=1e-5)
    assert fold_bias_adds(model((H,), second_use=True)) == 0
    assert fold_bias_adds(model((13, H), second_use=False)) == 0  # a per-row addend is no bias


def test_gat_export_folds_its_bias_into_the_gemm(tmp_path):
    torch.manual_seed(6)
    net = build_model(ModelConfig("gat", "regression", F, 0, hidden=H, num_rounds=2)).eval()
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.uniform_(-1, 1)  # a trained bias, so the fold is not a no-op
    result = export_model(net, tmp_path / "gat.onnx", ExportConfig())  # verification: eager parity on every case
    assert result.checks["bias_adds_folded_into_gemm"] == 2
