"""PyTorch Geometric coverage: stock layers in their default settings export through
``edgemp export --model`` and match PyG eager; PyG's self-loop handling exports exactly;
a layer edgemp cannot export is refused in one line naming the layer.

The matrix exports one panel of rows at a time (edgemp/export/pyg_zoo.py: one output per row) so
that it stays cheap enough for CI; each row is still verified on its own output.
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

pytest.importorskip("torch_geometric")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from edgemp.cli.main import cli  # noqa: E402
from edgemp.export import pyg_zoo  # noqa: E402

ROWS = [(panel, row) for panel, rows in pyg_zoo.PANELS.items() for row in rows]


@pytest.fixture(scope="module")
def panel_export(tmp_path_factory):
    """panel_export(name) -> (CLI result, report dict, onnx path); each panel exported once."""
    done: dict = {}

    def export(name: str):
        if name not in done:
            out = tmp_path_factory.mktemp(f"pyg_{name}")
            args = ["export", "--model", f"edgemp.export.pyg_zoo:panel_{name}", "-o", str(out / "model.onnx"),
                    "--report", str(out / "report.json")]
            for row in pyg_zoo.PANELS[name]:
                args += ["--output-name", row]
            res = CliRunner().invoke(cli, args)
            report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
            done[name] = (res, report, out / "model.onnx")
        return done[name]

    return export


@pytest.mark.slow
@pytest.mark.parametrize(("panel", "row"), ROWS, ids=[row for _, row in ROWS])
def test_stock_layer_exports_and_matches_pyg(panel_export, panel, row):
    res, report, path = panel_export(panel)
    assert res.exit_code == 0, res.output
    assert report["passed"] and path.exists()
    err = report["outputs"][row]  # this row's own output, over every verification case
    assert err["max_abs_error"] <= 1e-5, err


def _ops(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_self_loops_export_with_static_shapes(panel_export):
    """GAT/GATv2/GCN-normalised self loops leave no data-dependent NonZero (nor control flow) in the file."""
    res, _, path = panel_export("self_loops")
    assert res.exit_code == 0, res.output
    assert not _ops(path) & {"NonZero", "Loop", "If", "Scan"}


@pytest.mark.slow
def test_attention_aggregation_uses_scatternd_on_ort_cpu(panel_export):
    """Row scatters over [E, heads, C] (GAT's messages) are rewritten to ScatterND, the fast ORT CPU kernel."""
    import onnx

    from edgemp.export.rewrite import _const_ints

    res, _, path = panel_export("self_loops")
    assert res.exit_code == 0, res.output
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}

    def row_broadcast(node) -> bool:  # ScatterElements(axis 0) indexed by Expand(Reshape(index, [-1, 1, ...]))
        expand = producers.get(node.input[1])
        reshape = producers.get(expand.input[0]) if expand is not None and expand.op_type == "Expand" else None
        if reshape is None or reshape.op_type != "Reshape":
            return False
        shape = _const_ints(model, reshape.input[1]) or []
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return axis == 0 and len(shape) >= 2 and shape[0] == -1 and set(shape[1:]) == {1}

    left = [n.name for n in model.graph.node if n.op_type == "ScatterElements" and row_broadcast(n)]
    assert not left, left
    assert sum(n.op_type == "ScatterND" for n in model.graph.node) >= 10


def _tricky_graphs(rng: np.random.Generator, edge_features: int):
    """Self loops (one node's only in-edge, one repeated), duplicate edges, isolated nodes, no edges."""
    edge_sets = [
        # 0→1 twice, 1→1 twice, 2→2, 3→3 (node 3's only in-edge), 2→0, 4→2; node 5 isolated
        [[0, 0, 1, 1, 2, 3, 2, 4], [1, 1, 1, 1, 2, 3, 0, 2]],
        [[0, 1, 2, 3], [1, 2, 3, 0]],  # no self loops
        [[0, 0, 0], [0, 0, 0]],  # only self loops
        [[], []],  # no edges at all
    ]
    from edgemp.graph import Graph

    graphs = []
    for n, edges in zip((6, 5, 3, 4), edge_sets):
        ei = np.asarray(edges, dtype=np.int64).reshape(2, -1)
        ea = rng.standard_normal((ei.shape[1], edge_features)).astype(np.float32) if edge_features else None
        graphs.append(Graph(x=rng.standard_normal((n, pyg_zoo.NODE_FEATURES)).astype(np.float32), edge_index=ei,
                            edge_attr=ea))
    return graphs


@pytest.mark.slow
def test_exported_self_loops_match_pyg_on_tricky_graphs(panel_export):
    """ORT on graphs chosen to break self-loop handling, one at a time and batched, vs PyG eager (1e-5)."""
    import edgemp.runtime as rt
    from edgemp.graph import collate

    res, _, path = panel_export("self_loops")
    assert res.exit_code == 0, res.output
    model = pyg_zoo.panel("self_loops")
    graphs = _tricky_graphs(np.random.default_rng(0), model.edge_features)
    onnx_model = rt.load(path)
    batched = onnx_model.predict(graphs)
    for i, g in enumerate(graphs):
        single = onnx_model.predict([g])[0]
        b = collate([g])
        t = {k: torch.from_numpy(v) for k, v in b.tensors().items()}
        kwargs = {"edge_attr": t["edge_attr"]} if model.edge_features else {}
        with torch.no_grad():
            expected = model(t["x"], t["edge_index"], t["node_graph"], 1, **kwargs)
        for row, want in expected.items():
            want = want.numpy()[0]
            np.testing.assert_allclose(single[row], want, atol=1e-5, rtol=1e-5, err_msg=f"{row}, graph {i}")
            np.testing.assert_allclose(batched[i][row], want, atol=1e-5, rtol=1e-5, err_msg=f"{row}, graph {i} batched")


def _edge_cases():
    """(edge_index, num_nodes) pairs: loops incl. a repeated one and a loop-only node, duplicates, isolated, empty."""
    return [
        (torch.tensor([[0, 0, 1, 1, 2, 3, 2, 4], [1, 1, 1, 1, 2, 3, 0, 2]]), 6),
        (torch.tensor([[0, 1, 2], [1, 2, 0]]), 4),
        (torch.zeros(2, 0, dtype=torch.long), 3),
    ]


def _layers():
    from torch_geometric import nn as g

    torch.manual_seed(0)
    layers = [("GATConv", g.GATConv(5, 6), False), ("GATConv_heads", g.GATConv(5, 3, heads=2), False),
              ("GATv2Conv", g.GATv2Conv(5, 6), False), ("GCNConv", g.GCNConv(5, 6), False),
              ("GCNConv_improved_weighted", g.GCNConv(5, 6, improved=True), "weight"),
              ("GCNConv_weighted", g.GCNConv(5, 6), "weight")]
    for fill in ("mean", "add", "max", "min", "mul", 0.5, torch.tensor([0.1, -0.2, 0.3])):
        layers.append((f"GATConv_edge_dim_fill_{fill if isinstance(fill, (str, float)) else 'tensor'}",
                       g.GATConv(5, 6, edge_dim=3, fill_value=fill), "attr"))
    layers.append(("GATv2Conv_edge_dim", g.GATv2Conv(5, 6, edge_dim=3), "attr"))
    return layers


@pytest.mark.parametrize("index", range(len(_edge_cases())))
def test_static_self_loops_equal_pyg_in_eager(index):
    """The stand-ins compute what PyG computes, per layer and fill_value (cheap: no export)."""
    from edgemp.export.pyg_translations import pyg_translations

    edge_index, n = _edge_cases()[index]
    x = torch.randn(n, 5)
    for name, layer, extra in _layers():
        layer.eval()
        loops_on = layer.add_self_loops
        args = [x, edge_index]
        if extra == "attr":
            args.append(torch.randn(edge_index.shape[1], 3))
        elif extra == "weight":
            args.append(torch.rand(edge_index.shape[1]) + 0.5)
        with torch.no_grad():
            want = layer(*args)
            with pyg_translations():
                got = layer(*args)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6, msg=f"{name} on edge case {index}")
        assert layer.add_self_loops == loops_on  # the stand-in restores the layer's own setting


def test_translations_are_removed_after_export():
    from torch_geometric.nn import GATConv, GATv2Conv
    from torch_geometric.nn.conv import gcn_conv

    from edgemp.export.pyg_translations import pyg_translations

    before = (GATConv.forward, GATConv.edge_update, GATv2Conv.forward, gcn_conv.gcn_norm)
    with pyg_translations():
        assert GATConv.forward is not before[0] and gcn_conv.gcn_norm is not before[3]
    assert (GATConv.forward, GATConv.edge_update, GATv2Conv.forward, gcn_conv.gcn_norm) == before


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_unsupported_layer_is_refused_in_one_line(tmp_path):
    """SortAggregation sizes its output from int(index.max()): refused naming the layer and the line."""
    out = tmp_path / "sort.onnx"
    res = CliRunner().invoke(cli, ["export", "--model", "edgemp.export.pyg_zoo:SortAggregation", "-o", str(out)])
    assert res.exit_code == 1
    lines = _error_lines(res.output)
    assert len(lines) == 1, res.output
    line = lines[0]
    assert line.startswith("error: cannot export layer pool_module (SortAggregation): torch_geometric/nn/aggr/"), line
    assert "int(index.max())" in line and "Usual fix:" in line and "--verbose" in line
    assert not out.exists()

    res = CliRunner().invoke(cli, ["export", "--model", "edgemp.export.pyg_zoo:SortAggregation", "-o", str(out), "--verbose"])
    assert res.exit_code == 1
    assert "Traceback" in res.output and len(_error_lines(res.output)) > 20
    assert _error_lines(res.output)[-1] == line  # the same one-line reason, after the trace


def test_refusal_names_the_layer_for_pyg_gat_without_translation(tmp_path, monkeypatch):
    """What users hit before the stand-ins: GATConv's branch on a masked edge count, in one line."""
    import edgemp.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "pyg_translations", contextlib.nullcontext)
    res = CliRunner().invoke(cli, ["export", "--model", "edgemp.export.pyg_zoo:GATConv", "-o", str(tmp_path / "gat.onnx")])
    assert res.exit_code == 1
    lines = _error_lines(res.output)
    assert len(lines) == 1, res.output
    assert "cannot export layer convs.0 (GATConv): torch_geometric/nn/conv/gat_conv.py:" in lines[0]
    assert "index.numel() == 0" in lines[0]


def test_op_without_onnx_translation_is_refused_naming_layer_and_op(tmp_path, monkeypatch):
    """A failure after tracing (ONNX translation) still names the module, the op and the user's line."""
    (tmp_path / "bessel_model.py").write_text(
        "import torch\n"
        "class Bessel(torch.nn.Module):\n"
        "    def forward(self, h):\n"
        "        return torch.special.bessel_j0(h)\n"
        "class Net(torch.nn.Module):\n"
        "    node_features = 4\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin, self.act = torch.nn.Linear(4, 1), Bessel()\n"
        "    def forward(self, x, edge_index, node_graph, num_graphs):\n"
        "        h = self.act(self.lin(x))\n"
        "        return torch.zeros(num_graphs, 1).index_add(0, node_graph, h)\n"
        "def factory():\n    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(cli, ["export", "--model", "bessel_model:factory", "-o", str(tmp_path / "b.onnx")])
    assert res.exit_code == 1
    lines = _error_lines(res.output)
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: cannot export layer act (Bessel): "), lines[0]
    assert "bessel_model.py:4 `return torch.special.bessel_j0(h)`" in lines[0]
    assert "no ONNX translation (prims.bessel_j0)" in lines[0]
