"""edgemp.runtime: loading, validation, batched == one-by-one, dense padding, CLI predict."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime_fixtures import (
    F,
    build_dense_model,
    build_plain_onnx,
    build_sparse_model,
    random_graph,
    random_graphs,
    reference_outputs,
)

import edgemp.runtime as rt
from edgemp import dense_layout as dense
from edgemp.cli.main import cli
from edgemp.errors import EdgempError, GraphValidationError, MissingExtraError, ModelFormatError
from edgemp.graph import Graph, collate
from edgemp.graphio import write_jsonl, write_npz
from edgemp.metrics import task_metric
from edgemp.runtime.evaluate import evaluate_onnx
from edgemp.runtime.providers import CPU, CUDA, TENSORRT, resolve_providers
from edgemp.spec import ExportedModelSpec


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "sparse": build_sparse_model(d / "sparse.onnx"),
        "sparse_edges": build_sparse_model(d / "sparse_edges.onnx", edge_features=3),
        "dense": build_dense_model(d / "dense.onnx", max_nodes=32),
        "plain": build_plain_onnx(d / "plain.onnx"),
    }


@pytest.fixture(scope="module")
def sparse(models) -> rt.Model:
    return rt.load(models["sparse"], providers="cpu")


def max_diff(a: list[dict], b: list[dict]) -> float:
    assert len(a) == len(b)
    return max(float(np.abs(x[k] - y[k]).max(initial=0.0)) for x, y in zip(a, b) for k in x)


# -- loading ------------------------------------------------------------------------------
def test_load_reads_spec_and_providers(sparse):
    assert sparse.spec.form == "sparse"
    assert sparse.input_names == ("x", "edge_index", "node_graph", "graph_node_counts")
    assert sparse.output_names == ("prediction", "node_out")
    assert sparse.providers == (CPU,)
    assert sparse.provider_fallbacks == ()


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        rt.load(tmp_path / "nope.onnx")


def test_truncated_file(models, tmp_path):
    data = models["sparse"].read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="not a loadable ONNX model") as e:
        rt.load(bad)
    assert "\n" not in str(e.value)


def test_random_bytes_file(tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ModelFormatError, match="not a loadable ONNX model"):
        rt.load(bad)


def test_onnx_without_metadata(models):
    with pytest.raises(ModelFormatError, match=r"not an edgemp model: .* export it with `edgemp export`"):
        rt.load(models["plain"])


def test_metadata_version_mismatch(tmp_path):
    import onnx

    path = build_sparse_model(tmp_path / "b.onnx")
    m = onnx.load(str(path))
    for prop in m.metadata_props:
        if prop.key == "edgemp":
            d = json.loads(prop.value)
            d["format_version"] = 99
            prop.value = json.dumps(d)
    onnx.save(m, str(path))
    with pytest.raises(ModelFormatError, match="format version 99 is not supported"):
        rt.load(path)


def test_contract_mismatch_is_reported(tmp_path):
    # edge_attr input declared while the metadata says the model takes no edge features
    spec = rt.load(build_sparse_model(tmp_path / "e.onnx", edge_features=3)).spec
    bad = ExportedModelSpec.from_json(spec.to_json().replace('"edge_features": 3', '"edge_features": 0'))
    with pytest.raises(ModelFormatError, match="edge_features=0"):
        rt.load(build_sparse_model(tmp_path / "f.onnx", edge_features=3, spec=bad))


def test_provider_resolution():
    assert resolve_providers("auto", [CPU]) == [CPU]
    assert resolve_providers("auto", [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]
    assert resolve_providers("tensorrt", [TENSORRT, CUDA, CPU]) == [TENSORRT, CUDA, CPU]
    assert resolve_providers("cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(EdgempError, match=r"edgemp\[gpu\]"):
        resolve_providers("cuda", [CPU])
    with pytest.raises(EdgempError, match="choose from auto, cpu, cuda, tensorrt"):
        resolve_providers("tpu", [CPU])


def test_gpu_fallback_is_recorded(models, monkeypatch, caplog):
    # onnxruntime-gpu on a machine without a usable GPU lists CUDA but runs on CPU
    import edgemp.runtime.providers as providers

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: [CUDA, CPU])
    with caplog.at_level("WARNING", logger="edgemp.runtime.runners.onnxruntime"):
        m = rt.load(models["sparse"], providers="cuda")
    assert m.providers == (CPU,)
    assert m.provider_fallbacks == (CUDA,)
    assert "requested CUDAExecutionProvider" in caplog.text
    g = random_graphs(np.random.default_rng(0), 3)
    assert max_diff(m.predict(g), [reference_outputs(x) for x in g]) < 1e-4


def test_plan_without_tensorrt(tmp_path, models):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0" * 16)
    (tmp_path / "m.plan.json").write_text(rt.load(models["sparse"]).spec.to_json())
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match=r"edgemp\[tensorrt\]"):
            rt.load(plan)
    else:
        pytest.skip("tensorrt is installed; test_tensorrt_build::test_real_engine_matches_ort covers loading")


# -- answers --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_one_by_one_and_reference(sparse, seed):
    graphs = random_graphs(np.random.default_rng(seed), 40)
    batched = sparse.predict(graphs)
    single = [sparse.predict([g])[0] for g in graphs]
    assert max_diff(batched, single) <= 1e-6
    ref = [reference_outputs(g) for g in graphs]
    assert max_diff(batched, ref) < 1e-4
    for g, out in zip(graphs, batched):
        assert out["prediction"].shape == (1,)
        assert out["node_out"].shape == (g.num_nodes, 2)


def test_edge_features(models):
    m = rt.load(models["sparse_edges"])
    assert "edge_attr" in m.input_names
    graphs = random_graphs(np.random.default_rng(5), 25, edge_features=3)
    # an edgeless graph from JSON carries a [0, 0] edge_attr, or none at all
    graphs[0] = Graph(x=graphs[0].x, edge_index=np.zeros((2, 0), np.int64), edge_attr=np.zeros((0, 0), np.float32))
    graphs[1] = Graph(x=graphs[1].x, edge_index=np.zeros((2, 0), np.int64), edge_attr=None)
    batched = m.predict(graphs)
    assert max_diff(batched, [m.predict([g])[0] for g in graphs]) <= 1e-6
    assert max_diff(batched, [reference_outputs(g, edge_features=3) for g in graphs]) < 1e-4


def test_edge_attr_ignored_when_model_takes_none(sparse):
    rng = np.random.default_rng(3)
    a, b = random_graph(rng, 4, 5), random_graph(rng, 3, 2)
    a_attr = Graph(x=a.x, edge_index=a.edge_index, edge_attr=np.ones((5, 7), np.float32))
    assert max_diff(sparse.predict([a_attr, b]), sparse.predict([a, b])) == 0.0


def test_dense_matches_sparse_and_padding_is_invisible(models, sparse):
    m = rt.load(models["dense"])
    assert m.input_names == ("x", "adjacency", "node_mask")
    graphs = random_graphs(np.random.default_rng(7), 30, max_nodes=32)
    out = m.predict(graphs)
    assert max_diff(out, sparse.predict(graphs)) < 1e-5
    assert max_diff(out, [m.predict([g])[0] for g in graphs]) < 1e-5
    batch = collate(graphs)
    for slots in (32, 33, 64):  # beyond max_nodes too: masks keep padding out of the answer
        raw = m.runner.infer(dense.to_dense(batch, m.spec.max_nodes, slots=slots))
        split = m.split(dense.from_dense(raw, batch, m.spec.model.output_levels), batch)
        assert max_diff(split, out) < 1e-5


def test_dense_adjacency_counts_duplicates_target_rows():
    g = Graph(x=np.zeros((3, F), np.float32), edge_index=np.array([[0, 0, 2], [1, 1, 0]], np.int64))
    t = dense.to_dense(collate([Graph(x=np.zeros((1, F), np.float32), edge_index=np.zeros((2, 0), np.int64)), g]), 8)
    assert t["adjacency"].shape == (2, 4, 4)
    assert t["adjacency"][1, 1, 0] == 2 and t["adjacency"][1, 0, 2] == 1 and t["adjacency"].sum() == 3
    assert t["node_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]
    assert [dense.pad_size(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]


def test_a_dense_form_too_large_to_build_is_one_clear_error():
    """A valid 40,000-node graph on a dense model pads to 65,536 slots: 48 GiB. Refused before a
    byte is allocated (the check is arithmetic), not a MemoryError traceback or the host's memory."""
    from edgemp.errors import ResourceExhaustedError

    g = Graph(x=np.zeros((40_000, F), np.float32), edge_index=np.array([[0], [1]], np.int64))
    with pytest.raises(ResourceExhaustedError, match=r"1 graph\(s\) padded to 65536 node slots needs 48\.\d GiB"):
        dense.to_dense(collate([g]), 1 << 16)
    with pytest.raises(ResourceExhaustedError, match=r"padded to 65536 node slots"):
        dense.groups_within_cap(collate([g]), 1 << 16)


def test_a_dense_batch_too_large_padded_as_one_runs_in_groups(models, monkeypatch):
    """One large graph among small ones pads them all to its size: past the cap the batch runs in
    consecutive groups, and the answers are those of each graph run alone, in order."""
    m = rt.load(models["dense"])
    rng = np.random.default_rng(3)
    graphs = [random_graph(rng, n, 2 * n) for n in (3, 30, 4, 5, 31, 2)]
    alone = [m.predict([g])[0] for g in graphs]
    monkeypatch.setattr(dense, "MAX_DENSE_BYTES", dense.dense_bytes(2, 32, F))  # two graphs of 32 slots fit
    batch = collate(m.validate(graphs))
    assert dense.groups_within_cap(batch, m.spec.max_nodes) == [(0, 2), (2, 4), (4, 6)]
    together = m.predict(graphs)
    for i, (got, want) in enumerate(zip(together, alone)):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=f"graph {i} {name}")


def test_dense_too_many_nodes(models):
    m = rt.load(models["dense"])
    graphs = [random_graph(np.random.default_rng(0), 4, 3), random_graph(np.random.default_rng(1), 33, 3)]
    with pytest.raises(GraphValidationError, match="graph 1: has 33 nodes .* at most 32"):
        m.predict(graphs)


@pytest.mark.parametrize(
    "bad, match",
    [
        (Graph(x=np.zeros((2, F + 1), np.float32), edge_index=np.zeros((2, 0), np.int64)), "graph 1: x has 6 features"),
        (Graph(x=np.zeros((2, F), np.float32), edge_index=np.array([[0], [5]], np.int64)), "graph 1: edge_index holds node 5"),
        (Graph(x=np.zeros((2, F), np.float64), edge_index=np.zeros((2, 0), np.int64)), "graph 1: x must be a float32"),
        (Graph(x=np.full((2, F), np.nan, np.float32), edge_index=np.zeros((2, 0), np.int64)), "graph 1: x contains NaN"),
    ],
)
def test_validation_names_graph_and_field(sparse, bad, match):
    good = random_graph(np.random.default_rng(0), 3, 2)
    with pytest.raises(GraphValidationError, match=match):
        sparse.predict([good, bad])


def test_run_batch_and_empty(sparse):
    graphs = random_graphs(np.random.default_rng(9), 6)
    batch = collate(graphs)
    raw = sparse.run_batch(batch)
    assert raw["prediction"].shape == (6, 1) and raw["node_out"].shape == (batch.num_nodes, 2)
    assert sparse.predict([]) == []
    with pytest.raises(GraphValidationError, match="single Graph"):
        sparse.predict(graphs[0])


def test_evaluate_onnx(models):
    graphs = random_graphs(np.random.default_rng(4), 20)
    result = evaluate_onnx(models["sparse"], graphs)
    preds = [reference_outputs(g)["prediction"] for g in graphs]
    expected = task_metric("regression", preds, [g.y for g in graphs])
    assert result.metric_name == "rmse" and result.num_graphs == 20
    assert abs(result.value - expected.value) < 1e-4


def test_real_export_sparse_and_dense(export_checkpoint):
    """A checkpoint from edgemp.models exported by edgemp.export runs through the runtime."""
    graphs = random_graphs(np.random.default_rng(13), 20, max_nodes=32)
    answers = {}
    for form in ("sparse", "dense"):
        path = export_checkpoint("gin", form=form, max_nodes=32 if form == "dense" else 0, node_features=F,
                                 edge_features=0, hidden=16, num_rounds=2)
        m = rt.load(path)
        assert m.spec.form == form
        answers[form] = m.predict(graphs)
        assert max_diff(answers[form], [m.predict([g])[0] for g in graphs]) <= 1e-6
    assert max_diff(answers["sparse"], answers["dense"]) < 1e-4


# -- CLI ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".npz"])
def test_cli_predict(models, sparse, tmp_path, suffix):
    graphs = random_graphs(np.random.default_rng(11), 12)
    path = tmp_path / f"graphs{suffix}"
    (write_jsonl if suffix == ".jsonl" else write_npz)(graphs, path)
    out = tmp_path / "pred.jsonl"
    res = CliRunner().invoke(cli, ["predict", str(models["sparse"]), str(path), "-o", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = sparse.predict(graphs)
    assert len(lines) == len(graphs)
    for line, exp in zip(lines, expected):
        assert set(line["outputs"]) == {"prediction", "node_out"}
        np.testing.assert_allclose(np.array(line["outputs"]["prediction"]), exp["prediction"], atol=1e-6)
        np.testing.assert_allclose(np.array(line["outputs"]["node_out"]).reshape(-1, 2), exp["node_out"], atol=1e-6)


def test_cli_predict_stdout_and_errors(models, tmp_path):
    path = tmp_path / "g.jsonl"
    write_jsonl(random_graphs(np.random.default_rng(12), 3), path)
    res = CliRunner().invoke(cli, ["predict", str(models["sparse"]), str(path)])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3
    res = CliRunner().invoke(cli, ["predict", str(models["plain"]), str(path)])
    assert res.exit_code == 1 and "not an edgemp model" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"x": [[0.0] * (F + 2)], "edge_index": [[], []]}) + "\n")
    res = CliRunner().invoke(cli, ["predict", str(models["sparse"]), str(bad)])
    assert res.exit_code == 1 and "graph 0: x has 7 features" in res.output


# -- import hygiene -------------------------------------------------------------------------
def test_runtime_imports_no_heavy_dependencies():
    code = (
        "import pkgutil, importlib, sys\n"
        "import edgemp.runtime as rt\n"
        "for m in pkgutil.walk_packages(rt.__path__, 'edgemp.runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "import edgemp.cli.runtime_cmds\n"
        "bad = [m for m in ('torch', 'onnx', 'optimum', 'tensorrt') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"edgemp.runtime imported {res.stdout.strip()}"
