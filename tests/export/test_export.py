"""Export: unrolled, weights once, verified at unseen sizes, linted per target, clear errors."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from edgemp.data.synthetic import random_graph
from edgemp.cli.main import cli
from edgemp.errors import EdgempError, ExportError
from edgemp.export import ExportConfig, export_model
from edgemp.export.lint import lint_model
from edgemp.export.onnx_export import verify_onnx_file
from edgemp.graph import collate
from edgemp.models import load_checkpoint
from edgemp.spec import METADATA_KEY, ExportedModelSpec

SPARSE_FAMILIES = ["gin", "gine", "gcn", "sage", "gat", "mpnn", "ggnn"]
DENSE_FAMILIES = ["gin", "gcn", "sage", "gat", "ggnn"]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("family", SPARSE_FAMILIES)
def test_every_family_exports_sparse_and_verifies(family, make_checkpoint, tmp_path):
    result = export_model(make_checkpoint(family), tmp_path / "m.onnx", ExportConfig())
    assert result.report.passed
    assert {c.name for c in result.report.cases} >= {"single_node", "mixed_64", "duplicate_edges", "no_edges", "all_negative"}
    assert max(c.num_graphs for c in result.report.cases) >= 64
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert not _ops(result.path) & {"Loop", "If", "Scan", "SequenceMap"}
    # Dynamic axes by name; the graph count is a shape, never a constant.
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["x"][0] == "num_nodes" and dims["edge_index"][1] == "num_edges"
    assert dims["graph_node_counts"] == ["num_graphs"]
    meta = ExportedModelSpec.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta.model.family == family and meta.form == "sparse" and len(meta.checkpoint_sha256) == 64


@pytest.mark.parametrize("family", DENSE_FAMILIES)
def test_dense_form_has_no_scatter_and_matches_sparse(family, export_checkpoint):
    path = export_checkpoint(family, form="dense", max_nodes=32)
    assert not any(op.startswith("Scatter") for op in _ops(path))
    # export verified dense ORT against the sparse PyTorch model ("vs_sparse" cases).


def test_edge_families_refuse_dense(make_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="no dense form"):
        export_model(make_checkpoint("mpnn"), tmp_path / "m.onnx", ExportConfig(form="dense", max_nodes=16))


@pytest.mark.parametrize("family", ["mpnn", "ggnn"])
def test_shared_weights_stored_once_whatever_k(family, make_checkpoint, tmp_path):
    counts = []
    for k in (2, 6):
        r = export_model(make_checkpoint(family, num_rounds=k), tmp_path / f"k{k}.onnx", ExportConfig(verify=False))
        counts.append(r.checks["parameters_in_file"])
        assert r.checks["parameters_in_file"] <= r.checks["parameters_in_model"] + 8
    assert counts[0] == counts[1]


def test_unseen_sizes_match_pytorch(export_checkpoint, make_checkpoint):
    path = export_checkpoint("mpnn")
    net = load_checkpoint(make_checkpoint("mpnn"))
    rng = np.random.default_rng(7)
    graphs = []
    for n in (1, 3, 50, 120):
        e = 0 if n == 1 else 3 * n
        graphs.append(random_graph(rng, n, e, 8, 4))
    b = collate(graphs)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, b.tensors())[0]
    t = {k: torch.from_numpy(v) for k, v in b.tensors().items()}
    with torch.no_grad():
        ref = net(t["x"], t["edge_index"], t["edge_attr"], t["node_graph"], b.num_graphs)["prediction"].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_legacy_exporter_trap_is_caught_by_verification(make_checkpoint, tmp_path):
    """The TorchScript exporter turns index_add into ScatterElements without reduction."""
    from edgemp.export.wrappers import sparse_export

    net = load_checkpoint(make_checkpoint("gin"))
    wrapper = sparse_export(net, ("prediction",), False).eval()
    x = torch.randn(7, 8)
    ei = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 1, 1, 4, 4, 6]])  # duplicate targets
    legacy = tmp_path / "legacy.onnx"
    with torch.no_grad():
        torch.onnx.export(wrapper, (x, ei, torch.tensor([0, 0, 0, 1, 1, 2, 2]), torch.tensor([3, 2, 2])), str(legacy),
                          dynamo=False, input_names=list(wrapper.input_names()), output_names=["prediction"],
                          dynamic_axes={"x": {0: "n"}, "edge_index": {1: "e"}, "node_graph": {0: "n"}, "graph_node_counts": {0: "g"}},
                          opset_version=18)
    report = verify_onnx_file(make_checkpoint("gin"), legacy)
    assert not report.passed
    assert any(not c.passed for c in report.cases if c.name == "duplicate_edges")


@pytest.mark.parametrize("ref,got,found", [
    (np.nan, np.nan, "(PyTorch and ONNX Runtime alike)"),
    (np.nan, 1.0, "(PyTorch)"),  # NaN compares false with every tolerance: this case used to pass
    (1.0, np.inf, "(ONNX Runtime)"),
], ids=["both", "reference", "candidate"])
def test_verification_names_nan_outputs(ref, got, found):
    """A max error over NaN reads 0.000; the failure must say the outputs are NaN, and on which side."""
    from edgemp.errors import VerificationError
    from edgemp.export.verify import VerificationReport, compare

    batch = collate([random_graph(np.random.default_rng(0), 3, 2, 8)])
    report = VerificationReport(passed=True, atol=1e-5, rtol=1e-5)
    compare("single_node", batch, {"prediction": np.full((1, 1), ref, np.float32)},
            {"prediction": np.full((1, 1), got, np.float32)}, 1e-5, 1e-5, report)
    compare("fine", batch, {"prediction": np.ones((1, 1), np.float32)}, {"prediction": np.ones((1, 1), np.float32)},
            1e-5, 1e-5, report)
    with pytest.raises(VerificationError, match=rf"outputs are NaN/infinite {re.escape(found)} on 1 case\(s\), "
                                                r"first single_node; the file was not written"):
        report.require_passed("ONNX Runtime disagrees with PyTorch", "the file was not written")


def test_verification_names_the_worst_case_not_the_first():
    """With several cases off, the message names the one with the largest error, with that error
    (it named the first case beside the largest error, which could be another case's)."""
    from edgemp.errors import VerificationError
    from edgemp.export.verify import VerificationReport, compare

    batch = collate([random_graph(np.random.default_rng(0), 3, 2, 8)])
    report = VerificationReport(passed=True, atol=1e-5, rtol=1e-5, reference="ONNX Runtime CPU",
                                candidate="the TensorRT engine")
    for name, off in (("small_miss", 1e-3), ("big_miss", 0.5), ("middle_miss", 1e-2)):
        compare(name, batch, {"prediction": np.ones((1, 1), np.float32)},
                {"prediction": np.full((1, 1), 1 + off, np.float32)}, 1e-5, 1e-5, report)
    with pytest.raises(VerificationError, match=r"3 case\(s\) differ, worst big_miss: max_abs_error=5\.000e-01"):
        report.require_passed("the TensorRT engine disagrees with ONNX Runtime CPU", "the engine was not kept")


def test_tensorrt_lint_rejects_scatternd_reduction_and_accepts_tensorrt_export(export_checkpoint):
    cpu = onnx.load(str(export_checkpoint("gin", target="ort-cpu")))
    trt = onnx.load(str(export_checkpoint("gin", target="tensorrt")))
    bad = lint_model(cpu, "tensorrt")
    assert not bad.ok and any("ScatterND" in p and "reduction" in p for p in bad.problems)
    assert lint_model(trt, "tensorrt").ok
    assert "ScatterElements" in {n.op_type for n in trt.graph.node}


def test_lint_flags_dynamic_int8_ops_for_tensorrt():
    from onnx import TensorProto, helper

    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"], name="dq")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [2])])
    res = lint_model(helper.make_model(graph), "tensorrt")
    assert not res.ok and "dq (DynamicQuantizeLinear)" in res.problems[0]


def test_cli_export_report_and_inspect(make_checkpoint, tmp_path):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["export", str(make_checkpoint("gcn")), "-o", str(out), "--report", str(report)])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert data["outputs"]["prediction"]["max_abs_error"] <= 1e-5
    assert "max_rel_error" in data["outputs"]["prediction"]
    res = CliRunner().invoke(cli, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    assert "family=gcn" in res.output and "num_nodes" in res.output and "lint tensorrt:" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "/nonexistent/ckpt", "-o", "x.onnx"], "does not exist"),
        (["export", "--model", "no_such_module:factory", "-o", "x.onnx"], "cannot import module"),
        (["export", "--model", "json:nothing_here", "-o", "x.onnx"], "has no callable"),
        (["export", "--model", "bad-spec", "-o", "x.onnx"], "package.module:factory"),
    ],
)
def test_cli_bad_inputs_give_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert message in res.output
    assert "Traceback" not in res.output


def test_incompatible_weights_for_user_model(tmp_path, monkeypatch):
    mod = tmp_path / "my_models.py"
    mod.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    node_features = 8\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lin = torch.nn.Linear(8, 4); self.out = torch.nn.Linear(4, 1)\n"
        "    def forward(self, x, edge_index, node_graph, num_graphs):\n"
        "        h = torch.relu(self.lin(x))\n"
        "        agg = torch.zeros_like(h).index_add(0, edge_index[1], h.index_select(0, edge_index[0]))\n"
        "        pooled = h.new_zeros((num_graphs, 4)).index_add(0, node_graph, h + agg)\n"
        "        return self.out(pooled)\n"
        "def factory():\n    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from safetensors.torch import save_file

    good, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    import my_models

    save_file(my_models.factory().state_dict(), str(good))
    save_file({"lin.weight": torch.zeros(3, 3)}, str(bad))
    res = CliRunner().invoke(cli, ["export", "--model", "my_models:factory", "--weights", str(bad), "-o", str(tmp_path / "u.onnx")])
    assert res.exit_code == 1 and "weights do not match" in res.output
    res = CliRunner().invoke(cli, ["export", "--model", "my_models:factory", "--weights", str(good), "-o", str(tmp_path / "u.onnx")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "u.onnx").exists()


@pytest.mark.parametrize("case,body,match", [
    ("scalar", "self.lin(x).sum()", r"output 'prediction' has shape \[\] .*must be \[G, W\]"),
    ("per_node", "self.lin(x)", r"has shape \[5, 1\] .*one row per graph \(2 here\)"),
    ("rank3", "torch.zeros(num_graphs, 1, 1) + self.lin(x).sum()", r"has shape \[2, 1, 1\]"),
], ids=["scalar", "per_node", "rank3"])
def test_user_model_output_must_be_one_row_per_graph(case, body, match, tmp_path, monkeypatch):
    """The runtime splits outputs by rows; a scalar used to export fine and crash every prediction."""
    from edgemp.export.source import load_user_model

    (tmp_path / f"shape_{case}.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    node_features = 8\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lin = torch.nn.Linear(8, 1)\n"
        "    def forward(self, x, edge_index, node_graph, num_graphs):\n"
        f"        return {body}\n"
        "def build():\n    return M()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ExportError, match=match):
        load_user_model(f"shape_{case}:build", None)


def test_pyg_gin_exports_and_verifies(tmp_path, monkeypatch):
    pytest.importorskip("torch_geometric")
    mod = tmp_path / "pyg_models.py"
    mod.write_text(
        "import torch\n"
        "from torch_geometric.nn import GINConv, global_add_pool\n"
        "class PygGIN(torch.nn.Module):\n"
        "    node_features = 8\n"
        "    def __init__(self, hidden=16, layers=3):\n"
        "        super().__init__()\n"
        "        dims = [8] + [hidden] * layers\n"
        "        self.convs = torch.nn.ModuleList(GINConv(torch.nn.Sequential(torch.nn.Linear(a, b), torch.nn.ReLU(),\n"
        "            torch.nn.Linear(b, b))) for a, b in zip(dims, dims[1:]))\n"
        "        self.head = torch.nn.Linear(hidden, 1)\n"
        "    def forward(self, x, edge_index, node_graph, num_graphs):\n"
        "        for conv in self.convs:\n"
        "            x = torch.relu(conv(x, edge_index))\n"
        "        return self.head(global_add_pool(x, node_graph, size=num_graphs))\n"
        "def factory():\n    torch.manual_seed(0)\n    return PygGIN()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from edgemp.export.source import load_user_model

    src = load_user_model("pyg_models:factory", None)
    result = export_model(src, tmp_path / "pyg.onnx", ExportConfig())
    assert result.report.passed
    assert not _ops(result.path) & {"Loop", "If", "Scan"}


def test_malicious_weights_refused_for_user_model(tmp_path, monkeypatch):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"lin.weight": Evil()}))
    from edgemp.models.checkpoint import load_state_dict_safely

    with pytest.raises(EdgempError, match="refused"):
        load_state_dict_safely(bad)
    assert not marker.exists()


def test_dense_shared_weights_are_not_duplicated_by_constant_folding(make_checkpoint, tmp_path):
    """The exporter folds W.T once per use on rank-3 inputs; edgemp merges the copies."""
    counts = []
    for k in (2, 5):
        ckpt = make_checkpoint("ggnn", num_rounds=k, hidden=64)
        r = export_model(ckpt, tmp_path / f"d{k}.onnx", ExportConfig(form="dense", max_nodes=16, verify=False))
        counts.append(r.checks["parameters_in_file"])
    assert counts[0] == counts[1]


def test_dedupe_initializers_merges_identical_weights():
    from onnx import TensorProto, helper, numpy_helper

    from edgemp.export.checks import dedupe_initializers

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    inits = [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w.copy(), "w2"),
             numpy_helper.from_array(w + 1, "w3")]
    nodes = [helper.make_node("MatMul", ["x", n], [f"y{i}"]) for i, n in enumerate(["w1", "w2", "w3"])]
    nodes.append(helper.make_node("Sum", ["y0", "y1", "y2"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializer=inits)
    model = helper.make_model(graph)
    assert dedupe_initializers(model) == 1
    assert sorted(i.name for i in model.graph.initializer) == ["w1", "w3"]
    x = np.ones((2, 3), np.float32)
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, 2 * x @ w + x @ (w + 1))


def test_max_aggregation_op_per_target(export_checkpoint):
    """ORT CPU gets ScatterND(max) (fast kernel), TensorRT gets ScatterElements(max) (parsable)."""
    def reductions(path, op_type):
        return {a.s.decode() for n in onnx.load(str(path)).graph.node if n.op_type == op_type
                for a in n.attribute if a.name == "reduction"}

    cpu = export_checkpoint("gat", target="ort-cpu")
    trt = export_checkpoint("gat", target="tensorrt")
    assert "max" in reductions(cpu, "ScatterND") and "ScatterElements" not in _ops(cpu)
    assert "max" in reductions(trt, "ScatterElements") and not reductions(trt, "ScatterND") - {"none"}


def test_row_scatter_elements_from_other_exporters_become_scatternd(tmp_path):
    """PyG-style scatter_add (ScatterElements) is rewritten to ScatterND for ORT CPU, verified."""
    from edgemp.export.source import ExportSource
    from edgemp.spec import ModelSpec, OutputSpec

    class ScatterAddNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.out = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1)

        def forward(self, x, edge_index, node_graph, num_graphs):
            h = torch.relu(self.lin(x))
            msg = h.index_select(0, edge_index[0])
            idx = edge_index[1].unsqueeze(1).expand_as(msg)
            agg = torch.zeros_like(h).scatter_add(0, idx, msg)  # what PyG's sum aggregation does
            pooled = h.new_zeros((num_graphs, 16)).scatter_add(0, node_graph.unsqueeze(1).expand_as(h), h + agg)
            return self.out(pooled)

    torch.manual_seed(0)
    spec = ModelSpec("custom:test", "regression", 8, 0, 1, (OutputSpec("prediction", "graph", 1),))
    src = ExportSource(ScatterAddNet().eval(), spec, "", False, False)
    cpu = export_model(src, tmp_path / "cpu.onnx", ExportConfig())
    assert cpu.report.passed and cpu.checks["scatter_elements_rewritten_to_scatternd"] == 2
    assert "ScatterElements" not in _ops(cpu.path)
    trt = export_model(src, tmp_path / "trt.onnx", ExportConfig(target="tensorrt"))
    assert trt.checks["scatter_elements_rewritten_to_scatternd"] == 0 and "ScatterElements" in _ops(trt.path)


def test_gin_aggregates_straight_into_its_self_term(export_checkpoint):
    # (1 + eps) h + sum_j h_j: the scatter starts from the self term instead of zeros plus an Add
    # (one pass over [N, H] less per layer); the export verified this on every case.
    model = onnx.load(str(export_checkpoint("gin")))
    producers = {o: n for n in model.graph.node for o in n.output}
    scatters = [n for n in model.graph.node if n.op_type == "ScatterND"]
    into_self = [n for n in scatters if producers[n.input[0]].op_type != "ConstantOfShape"]
    assert len(into_self) == 3  # one per round (fixtures: 3 rounds); readout still starts from zeros
