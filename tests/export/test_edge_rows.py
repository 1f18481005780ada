"""MPNN's edge network on distinct edge-feature rows: both in-graph products agree with eager PyTorch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgemp.data.synthetic import random_graph, with_edge_palette
from edgemp.export.edge_rows import edge_network_on_distinct_rows
from edgemp.export.lint import lint_model
from edgemp.graph import Graph, collate
from edgemp.models import load_checkpoint

FORCE_TYPE_PRODUCTS, FORCE_PER_EDGE = 10**9, -(10**9)


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _graphs(rng, count: int, nodes: int, edges: int, palette: np.ndarray | None) -> list[Graph]:
    graphs = [random_graph(rng, nodes, edges, 8, 4) for _ in range(count)]  # continuous: every edge its own row
    return graphs if palette is None else [with_edge_palette(rng, g, palette) for g in graphs]


def _batches() -> dict[str, list[Graph]]:
    rng = np.random.default_rng(7)
    palette = rng.standard_normal((5, 4)).astype(np.float32)
    return {
        "bond_types": _graphs(rng, 12, 20, 42, palette),
        "continuous": _graphs(rng, 6, 30, 70, None),
        "one_small_continuous": _graphs(rng, 1, 3, 4, None),
        "with_edgeless": _graphs(rng, 3, 9, 16, palette) + [Graph(x=np.ones((2, 8), np.float32),
                                                                  edge_index=np.zeros((2, 0), np.int64),
                                                                  edge_attr=np.zeros((0, 4), np.float32))],
    }


def _eager(net, batch) -> np.ndarray:
    t = {k: torch.from_numpy(v) for k, v in batch.tensors().items()}
    with torch.no_grad():
        out = net(t["x"], t["edge_index"], t["edge_attr"], t["node_graph"], batch.num_graphs)
    return next(iter(out.values())).numpy()


def _run(model, batch) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    t = batch.tensors()
    return sess.run(None, {i.name: t[i.name] for i in sess.get_inputs()})


@pytest.fixture(scope="module")
def mpnn(make_checkpoint, export_checkpoint):
    """The eager model and its TensorRT-target export (the graph before the rewrite)."""
    ckpt = make_checkpoint("mpnn")
    return load_checkpoint(ckpt), onnx.load(str(export_checkpoint("mpnn", target="tensorrt")))


@pytest.mark.parametrize("cost", [FORCE_TYPE_PRODUCTS, FORCE_PER_EDGE], ids=["type_products", "per_edge"])
def test_both_products_match_eager(mpnn, cost):
    net, exported = mpnn
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    assert edge_network_on_distinct_rows(model, gemv_to_gemm_cost=cost) == 3  # one product per round
    assert "Unique" in _ops(model) and not {"Loop", "If", "Scan"} & set(_ops(model))
    for name, graphs in _batches().items():
        batch = collate(graphs)
        got = _run(model, batch)[0]
        np.testing.assert_allclose(got, _eager(net, batch), atol=1e-5, rtol=1e-5, err_msg=name)


def test_product_is_chosen_by_batch_size_and_distinct_rows(mpnn):
    net, exported = mpnn
    model = onnx.ModelProto()
    model.CopyFrom(exported)
    edge_network_on_distinct_rows(model)
    # Expose the in-graph choice (1 = type products, 0 = per-edge products) as a second output.
    model.graph.output.append(onnx.helper.make_tensor_value_info("distinct_rows_by_type", onnx.TensorProto.INT64, [1]))
    chosen = {}
    for name, graphs in _batches().items():
        batch = collate(graphs)
        out, by_type = _run(model, batch)
        chosen[name] = int(by_type[0])
        np.testing.assert_allclose(out, _eager(net, batch), atol=1e-5, rtol=1e-5, err_msg=name)
    # Bond-type-like rows: one GEMM per round; many distinct rows on big graphs: per-edge products.
    assert chosen["bond_types"] == 1 and chosen["continuous"] == 0
    assert chosen["one_small_continuous"] == 1  # tiny graph: every node x every row is still cheaper


def test_ort_cpu_export_uses_distinct_rows_and_tensorrt_export_does_not(export_checkpoint):
    cpu = onnx.load(str(export_checkpoint("mpnn")))  # verified on every case at export, palette case included
    trt = onnx.load(str(export_checkpoint("mpnn", target="tensorrt")))
    assert "Unique" in _ops(cpu)
    assert "Unique" not in _ops(trt) and lint_model(trt, "tensorrt").ok
    assert not lint_model(cpu, "tensorrt").ok  # Unique is not TensorRT's: the target choice matters


def test_cheap_edge_projection_is_left_alone(export_checkpoint):
    # GINE projects edge features once (Fe -> H): a gather per edge would cost as much as the projection.
    assert "Unique" not in _ops(onnx.load(str(export_checkpoint("gine"))))
