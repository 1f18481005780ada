"""Quantization, offline optimization and the accuracy report, on tiny exported models (ORT CPU)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemp.data.synthetic import synthetic_graphs
from edgemp.errors import EdgempError, ModelFormatError
from edgemp.export.accuracy import AccuracyBudgetError, compare_models, require_budget
from edgemp.export.calibration import GraphCalibrationReader, batch_groups
from edgemp.export.quantize import QuantizationError, QuantizeConfig, dense_layer_nodes, quantize
from edgemp.graph import Graph, collate

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def calib():
    return synthetic_graphs(48, seed=1)


@pytest.fixture(scope="module")
def evalset():
    return synthetic_graphs(40, seed=2)


MODELS = {
    "mpnn": dict(family="mpnn"),  # edge network + shared GRU, ScatterND aggregation
    "gin_dense": dict(family="gin", form="dense", max_nodes=32),  # adjacency MatMul
    "gat": dict(family="gat"),  # ScatterElements(max) + IsInf in the softmax
}


def _outputs(path: Path, graphs: list[Graph]) -> np.ndarray:
    from edgemp.runtime import load

    with load(path, providers="cpu") as m:
        return np.stack([o[m.output_names[0]] for o in m.predict(graphs)])


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8-static", "fp16"])
@pytest.mark.parametrize("which", list(MODELS))
def test_each_precision_loads_and_runs_on_ort_cpu(export_checkpoint, tmp_path, calib, evalset, precision, which):
    from edgemp.runtime import load

    src = export_checkpoint(**MODELS[which])
    out = tmp_path / f"{which}.{precision}.onnx"
    result = quantize(src, out, QuantizeConfig(precision), calib)
    with load(out, providers="cpu") as m:
        assert m.spec.precision == precision
        assert m.providers == ("CPUExecutionProvider",)
        ref_spec = load(src, providers="cpu").spec
        assert m.spec.model == ref_spec.model and m.spec.input_names == ref_spec.input_names
        assert m.spec.form == ref_spec.form and m.spec.max_nodes == ref_spec.max_nodes
    summary = result.spec.extra["quantization"]
    assert summary["precision"] == precision and summary["tool"].startswith("onnxruntime")
    if precision == "int8-dynamic":  # 7-bit weights: no u8 x s8 saturation on CPUs without VNNI
        assert summary["reduce_range"] is True
    if precision == "int8-static":
        assert summary["calibration"]["num_graphs"] == len(calib)
        assert summary["calibration"]["method"] == "minmax"
    ref, got = _outputs(src, evalset), _outputs(out, evalset)
    scale = float(np.abs(ref).max())
    err = float(np.abs(ref - got).max())
    bound = {"int8-dynamic": 0.03, "int8-static": 0.15, "fp16": 0.005}[precision]
    assert err <= bound * max(scale, 1.0), f"{precision} max abs error {err:.3g} for outputs up to {scale:.3g}"
    assert err > 0 or precision == "fp16"  # int8 really changed the arithmetic


def test_only_dense_layers_are_quantized(export_checkpoint, tmp_path, calib):
    src = export_checkpoint("gin", form="dense", max_nodes=32)
    out = tmp_path / "q.onnx"
    quantize(src, out, QuantizeConfig("int8-static"), calib)
    model = onnx.load(str(out))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    consumers = [n for n in model.graph.node if any(i in dq_outputs for i in n.input)]
    assert consumers and {n.op_type for n in consumers} <= {"Gemm", "MatMul"}
    aggregation = [n for n in model.graph.node if n.op_type == "MatMul" and "adjacency" in n.input]
    assert aggregation, "the dense GIN should aggregate with adjacency @ h"
    assert all(not (set(n.input) & dq_outputs) for n in aggregation)

    mpnn = export_checkpoint("mpnn")
    out2 = tmp_path / "m.onnx"
    res = quantize(mpnn, out2, QuantizeConfig("int8-dynamic"))
    # Data-by-data products stay float: per round, the type-product GEMM and the per-edge matmul
    # (edgemp.export.edge_rows keeps both; the batch's sizes pick which one gets rows).
    assert res.float_ops_kept["ScatterND"] == 5 and res.float_ops_kept["MatMul"] == 6
    src_model = onnx.load(str(mpnn))
    per_edge = [n.name for n in src_model.graph.node if n.op_type == "MatMul"]
    assert per_edge and not set(per_edge) & set(dense_layer_nodes(src_model))


def test_gat_head_widening_stays_float(export_checkpoint, tmp_path):
    # GAT widens per-head softmax weights with a 0/1 [heads, H] MatMul: a copy, never an int8 layer.
    src = export_checkpoint("gat")
    model = onnx.load(str(src))
    inits = {i.name for i in model.graph.initializer}
    widening = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
                and not n.name.endswith("_attention_logits")]
    assert widening, "the sparse GAT should widen its attention weights with a MatMul"
    assert not set(widening) & set(dense_layer_nodes(model))
    res = quantize(src, tmp_path / "gat8.onnx", QuantizeConfig("int8-dynamic"))
    assert res.quantized_nodes and not set(widening) & set(res.quantized_nodes)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_methods(export_checkpoint, tmp_path, calib, method):
    from edgemp.runtime import load

    out = tmp_path / f"{method}.onnx"
    quantize(export_checkpoint("mpnn"), out, QuantizeConfig("int8-static", calibration_method=method), calib)
    with load(out, providers="cpu") as m:
        assert m.spec.extra["quantization"]["calibration"]["method"] == method
        assert np.all(np.isfinite(np.stack([o["prediction"] for o in m.predict(calib[:5])])))


def test_calibration_reader_yields_every_graph_once():
    graphs = synthetic_graphs(23, seed=3, empty_fraction=0.3)
    names = ("x", "edge_index", "edge_attr", "node_graph", "graph_node_counts")
    reader = GraphCalibrationReader(graphs, names, batch_graphs=4)
    seen = []
    while (feeds := reader.get_next()) is not None:
        seen.append(feeds)
    assert reader.graphs_fed == len(graphs)
    assert sum(len(f["graph_node_counts"]) for f in seen) == len(graphs)
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in seen]), np.concatenate([g.x for g in graphs]))
    assert all(f["edge_index"].shape[1] > 0 for f in seen)  # edge-less chunks were merged

    # ORT's strided calibration: set_range(i, i + 1) then drain, once per batch.
    strided = GraphCalibrationReader(graphs, names, batch_graphs=4)
    xs = []
    for i in range(len(strided)):
        strided.set_range(i, i + 1)
        while (feeds := strided.get_next()) is not None:
            xs.append(feeds["x"])
    assert strided.graphs_fed == len(graphs)
    np.testing.assert_array_equal(np.concatenate(xs), collate(graphs).x)


def test_batch_groups_merge_edgeless_chunks():
    def g(edges: int) -> Graph:
        ei = np.array([[0] * edges, [1] * edges], np.int64).reshape(2, edges)
        return Graph(np.zeros((2, 1), np.float32), ei)

    graphs = [g(0), g(0), g(1), g(0), g(0), g(0), g(2)]
    groups = batch_groups(graphs, 2)
    assert [list(r) for r in groups] == [[0, 1, 2, 3, 4, 5], [6]]
    assert [i for r in groups for i in r] == list(range(len(graphs)))
    with pytest.raises(EdgempError):
        batch_groups(graphs, 0)


def test_dense_calibration_feeds(export_checkpoint, calib):
    reader = GraphCalibrationReader(calib, ("x", "adjacency", "node_mask"), form="dense", max_nodes=32, batch_graphs=16)
    feeds = reader.get_next()
    assert set(feeds) == {"x", "adjacency", "node_mask"} and feeds["x"].shape[0] == 16


def test_int8_static_is_tensorrt_clean_and_dynamic_is_not(export_checkpoint, tmp_path, calib):
    from edgemp.export.lint import lint_model

    src = export_checkpoint("gin", target="tensorrt")
    static, dynamic = tmp_path / "s.onnx", tmp_path / "d.onnx"
    quantize(src, static, QuantizeConfig("int8-static"), calib)
    quantize(src, dynamic, QuantizeConfig("int8-dynamic"))
    s = lint_model(onnx.load(str(static)), "tensorrt")
    assert s.ok, s.summary()
    ops = {n.op_type for n in onnx.load(str(static)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    d = lint_model(onnx.load(str(dynamic)), "tensorrt")
    assert not d.ok and "DynamicQuantizeLinear" in d.summary()


def test_accuracy_report_from_real_outputs(export_checkpoint, tmp_path, calib, evalset):
    src = export_checkpoint("mpnn")
    out = tmp_path / "q.onnx"
    quantize(src, out, QuantizeConfig("int8-dynamic"))
    rep = compare_models(src, out, evalset, max_metric_delta=0.05)
    assert rep.metric_name == "rmse" and rep.num_graphs == len(evalset)
    ref, got = _outputs(src, evalset), _outputs(out, evalset)
    assert rep.max_abs_error == pytest.approx(float(np.abs(ref - got).max()), rel=1e-6)
    y = np.stack([g.y for g in evalset])
    assert rep.fp32_metric == pytest.approx(float(np.sqrt(np.mean((ref - y) ** 2))), rel=1e-5)
    assert rep.relative_delta == pytest.approx((rep.quantized_metric - rep.fp32_metric) / rep.fp32_metric)
    assert rep.passed
    require_budget(rep)
    d = rep.to_dict()
    for key in ("metric_name", "fp32_metric", "quantized_metric", "relative_delta", "max_abs_error"):
        assert key in d


def _break_head_bias(path: Path) -> None:
    """Shift the final layer's bias: every prediction moves by 3, as a bad quantization might."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name.endswith("head.2.bias"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 3.0, init.name))
            break
    else:
        raise AssertionError("no head bias initializer found")
    onnx.save(model, str(path))


def test_broken_model_fails_the_budget(export_checkpoint, tmp_path, evalset):
    src = export_checkpoint("mpnn")
    out = tmp_path / "q.onnx"
    quantize(src, out, QuantizeConfig("int8-dynamic"))
    _break_head_bias(out)
    rep = compare_models(src, out, evalset, max_metric_delta=0.05)
    assert not rep.passed and rep.degradation > 0.05 and rep.max_abs_error == pytest.approx(3.0, abs=0.1)
    with pytest.raises(AccuracyBudgetError, match="over the budget"):
        require_budget(rep)


@pytest.fixture
def graph_files(tmp_path, calib, evalset):
    from edgemp.graphio import write_graphs

    cal, ev = tmp_path / "cal.jsonl", tmp_path / "eval.jsonl"
    write_graphs(calib, cal)
    write_graphs(evalset, ev)
    return cal, ev


def test_cli_quantize_report_and_budget(export_checkpoint, tmp_path, graph_files, monkeypatch):
    from click.testing import CliRunner

    import edgemp.export.quantize as qmod
    from edgemp.cli.main import cli

    cal, ev = graph_files
    src = export_checkpoint("mpnn")
    report = tmp_path / "report.json"
    out = tmp_path / "q.onnx"
    args = ["quantize", str(src), "-o", str(out), "--precision", "int8-static", "--calibration", str(cal),
            "--eval", str(ev), "--report", str(report), "--max-metric-delta", "0.5", "--no-progress"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["metric_name"] == "rmse" and data["precision"] == "int8-static"
    assert {"fp32_metric", "quantized_metric", "relative_delta", "max_abs_error"} <= set(data)

    real = qmod.quantize

    def broken_quantize(*a, **kw):
        result = real(*a, **kw)
        _break_head_bias(result.path)
        return result

    monkeypatch.setattr(qmod, "quantize", broken_quantize)
    res = CliRunner().invoke(cli, args[:-3] + ["--max-metric-delta", "0.05", "--no-progress"])
    assert res.exit_code == 1
    assert "over the budget" in res.output
    assert json.loads(report.read_text())["passed"] is False  # the evidence is written before the exit


def test_cli_needs_eval_for_a_budget(export_checkpoint, tmp_path):
    from click.testing import CliRunner

    from edgemp.cli.main import cli

    res = CliRunner().invoke(cli, ["quantize", str(export_checkpoint("mpnn")), "-o", str(tmp_path / "q.onnx"),
                                   "--precision", "int8-dynamic", "--max-metric-delta", "0.01"])
    assert res.exit_code == 1 and "--eval" in res.output


def test_quantize_errors(export_checkpoint, tmp_path, calib):
    src = export_checkpoint("mpnn")
    with pytest.raises(QuantizationError, match="calibration"):
        quantize(src, tmp_path / "a.onnx", QuantizeConfig("int8-static"))
    q = tmp_path / "q.onnx"
    quantize(src, q, QuantizeConfig("int8-dynamic"))
    with pytest.raises(QuantizationError, match="already int8-dynamic"):
        quantize(q, tmp_path / "b.onnx", QuantizeConfig("int8-static"), calib)
    with pytest.raises(QuantizationError, match="precision"):
        QuantizeConfig("int4")
    with pytest.raises(QuantizationError, match="calibration method"):
        QuantizeConfig("int8-static", calibration_method="kl")
    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    with pytest.raises(ModelFormatError, match="not an edgemp model"):
        quantize(plain, tmp_path / "c.onnx", QuantizeConfig("int8-dynamic"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all")
    with pytest.raises(ModelFormatError):
        quantize(garbage, tmp_path / "d.onnx", QuantizeConfig("int8-dynamic"))


@pytest.mark.parametrize("level", ["basic", "all"])
def test_optimize_keeps_metadata_and_outputs(export_checkpoint, tmp_path, evalset, level):
    from edgemp.export.optimize import OptimizeConfig, optimize
    from edgemp.runtime import load

    src = export_checkpoint("gin", target="tensorrt")
    out = optimize(src, tmp_path / "opt.onnx", OptimizeConfig(level))
    with load(out, providers="cpu") as m:
        assert m.spec.precision == "fp32" and m.spec.extra["optimization"]["level"] == level
    np.testing.assert_allclose(_outputs(out, evalset), _outputs(src, evalset), rtol=1e-5, atol=1e-5)
    if level == "basic":  # plain ONNX, still fine for TensorRT
        from edgemp.export.lint import lint_model

        assert lint_model(onnx.load(str(out)), "tensorrt").ok
    with pytest.raises(EdgempError, match="level"):
        OptimizeConfig("max")


def test_quantize_and_optimize_do_not_need_torch(export_checkpoint, tmp_path):
    """onnx + onnxruntime only: torch is made unimportable in a fresh interpreter."""
    src = export_checkpoint("gin", target="tensorrt")
    code = f"""
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
from edgemp.data.synthetic import synthetic_graphs
from edgemp.export.quantize import QuantizeConfig, quantize
from edgemp.export.optimize import optimize
from edgemp.export.accuracy import compare_models
g = synthetic_graphs(12, seed=0)
for p in ("int8-dynamic", "int8-static", "fp16"):
    quantize({str(src)!r}, {str(tmp_path)!r} + f"/{{p}}.onnx", QuantizeConfig(p), g)
optimize({str(src)!r}, {str(tmp_path)!r} + "/opt.onnx")
print(compare_models({str(src)!r}, {str(tmp_path)!r} + "/int8-static.onnx", g).metric_name)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("rmse")
