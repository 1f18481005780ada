"""Biased MatMuls that share an input become one wider MatMul + Split, with the same fp32 outputs."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgemp.export.matmul_merge import merge_shared_input_matmuls  # noqa: E402

K = 16


def _run(model, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def _projections_graph(opset: int = 18):
    """x feeds: q, k, v (biased; k's bias through an Identity, v's Add with the bias first), a
    MatMul without a bias, and a MatMul whose weight another node reads too; only q, k, v match."""
    rng = np.random.default_rng(0)
    arrays = {"wq": rng.normal(size=(K, 8)), "wk": rng.normal(size=(K, 8)), "wv": rng.normal(size=(K, 12)),
              "bq": rng.normal(size=8), "bk": rng.normal(size=8), "bv": rng.normal(size=12),
              "wn": rng.normal(size=(K, 8)), "ws": rng.normal(size=(K, K)), "bs": rng.normal(size=K)}
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["mq"], name="q"), helper.make_node("Add", ["mq", "bq"], ["q"]),
        helper.make_node("Identity", ["bk"], ["bk_alias"]),
        helper.make_node("MatMul", ["x", "wk"], ["mk"], name="k"), helper.make_node("Add", ["mk", "bk_alias"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["mv"], name="v"), helper.make_node("Add", ["bv", "mv"], ["v"]),
        helper.make_node("MatMul", ["x", "wn"], ["n"], name="no_bias"),
        helper.make_node("MatMul", ["x", "ws"], ["ms"], name="shared"), helper.make_node("Add", ["ms", "bs"], ["s1"]),
        helper.make_node("MatMul", ["s1", "ws"], ["s"], name="shared_again"),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None, None]) for n in ("q", "k", "v", "n", "s")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, K])
    graph = helper.make_graph(nodes, "projections", [x], outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 18])  # Split's sizes are an attribute before opset 13, an input after
def test_biased_projections_of_one_input_merge_and_stay_exact(opset):
    model = _projections_graph(opset)
    merged, groups = merge_shared_input_matmuls(model)
    assert groups == 1
    onnx.checker.check_model(merged)
    names = {n.name for n in merged.graph.node if n.op_type == "MatMul"}
    assert {"no_bias", "shared", "shared_again"} <= names and not names & {"q", "k", "v"}
    (w,) = [i for i in merged.graph.initializer if i.name.endswith("_merged_weight")]
    assert list(w.dims) == [K, 8 + 8 + 12]
    assert [n.op_type for n in merged.graph.node].count("Split") == 1
    assert not {i.name for i in merged.graph.initializer} & {"wq", "wk", "wv"}  # no dead weights left behind
    x = np.random.default_rng(1).normal(size=(2, 5, K)).astype(np.float32)
    for a, b in zip(_run(merged, x), _run(model, x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_graph_without_the_pattern_is_left_as_it_is():
    model = _projections_graph()
    keep = [n for n in model.graph.node if n.name not in ("k", "v") and n.output[0] not in ("k", "v", "bk_alias")]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.output[1:3]
    merged, groups = merge_shared_input_matmuls(model)  # q alone shares x with unbiased / shared-weight MatMuls
    assert groups == 0
    assert [n.name for n in merged.graph.node] == [n.name for n in model.graph.node]


def test_ort_fusions_leave_a_graph_without_attention_or_gelu_alone():
    from edgemp.export.ort_fusions import approximate_gelu, fuse_attention

    model = _projections_graph()
    x = np.random.default_rng(1).normal(size=(2, 5, K)).astype(np.float32)
    assert fuse_attention(model, [{"x": x}]) == (model, 0)
    assert approximate_gelu(model) == (model, 0)


def _add_chains_graph(elem: int = TensorProto.FLOAT):
    """x + y + z (merges), (x + bias) + y (a bias Add: stays), and x + y read twice (stays); nodes unnamed."""
    bias = numpy_helper.from_array(np.arange(4, dtype=np.float32 if elem == TensorProto.FLOAT else np.int64), "bias")
    nodes = [
        helper.make_node("Add", ["x", "y"], ["xy"]), helper.make_node("Add", ["xy", "z"], ["chain"]),
        helper.make_node("Add", ["x", "bias"], ["xb"]), helper.make_node("Add", ["y", "xb"], ["biased"]),
        helper.make_node("Add", ["y", "z"], ["yz"]), helper.make_node("Add", ["yz", "x"], ["shared1"]),
        helper.make_node("Mul", ["yz", "x"], ["shared2"]),
    ]
    ins = [helper.make_tensor_value_info(n, elem, [None, 4]) for n in ("x", "y", "z")]
    outs = [helper.make_tensor_value_info(n, elem, [None, 4]) for n in ("chain", "biased", "shared1", "shared2")]
    return helper.make_model(helper.make_graph(nodes, "adds", ins, outs, [bias]), opset_imports=[helper.make_opsetid("", 18)])


def test_add_chains_of_activations_become_one_sum_with_the_same_outputs():
    from edgemp.export.ort_fusions import sum_add_chains

    rng = np.random.default_rng(1)
    feeds = [{n: rng.normal(size=(3, 4)).astype(np.float32) for n in "xyz"}]
    model = _add_chains_graph()
    merged, n = sum_add_chains(model, feeds)
    assert n == 1
    ops = [(node.op_type, list(node.input)) for node in merged.graph.node]
    assert ("Sum", ["x", "y", "z"]) in ops and sum(op == "Add" for op, _ in ops) == 4  # bias + shared chains stay
    sess = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    for a, b in zip(sess(merged).run(None, feeds[0]), sess(model).run(None, feeds[0])):
        np.testing.assert_array_equal(a, b)


def test_add_chains_over_integers_stay_adds():
    from edgemp.export.ort_fusions import sum_add_chains

    model = _add_chains_graph(TensorProto.INT64)
    feeds = [{n: np.arange(8, dtype=np.int64).reshape(2, 4) for n in "xyz"}]
    out, n = sum_add_chains(model, feeds)  # Sum takes no int64: the check fails and nothing changes
    assert n == 0 and out is model
