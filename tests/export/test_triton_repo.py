"""Triton model repositories with ragged batching: layout, config.pbtxt, numerics, serving.

Triton itself cannot run here (no container engine, no GPU), so the evidence is:
config.pbtxt parsed by Triton's own ModelConfig protobuf; Triton's documented ragged
batching reproduced in numpy (``edgemp.ragged_layout``) and the exported model run on it
in ONNX Runtime, each request compared with the plain edgemp model run on that graph
alone; and ``edgemp serve`` answering tritonclient from the same repository.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgemp.data.synthetic import random_sized_graphs
from edgemp import ragged_layout as ragged
from edgemp.errors import ExportError, GraphValidationError, ModelFormatError
from edgemp.graph import Graph
from edgemp.runtime import load

pytest.importorskip("torch")

FE = 4  # make_checkpoint's default edge features
F = 8  # ... and node features


def _graphs(rng: np.random.Generator, k: int, fe: int = FE, max_nodes: int = 30) -> list[Graph]:
    """k graphs of different sizes; some without edges."""
    return random_sized_graphs(rng, k, F, fe, max_nodes=max_nodes)


# -- Triton's ragged batching, reproduced: the documented examples --------------------------
def test_batch_inputs_match_tritons_documented_examples():
    # ragged_batching.md: requests [1, 3], [1, 4], [1, 5] -> INPUT [12], INDEX [3, 7, 12]
    shapes = [(1, 3), (1, 4), (1, 5)]
    assert ragged.batch_input_value("BATCH_ACCUMULATED_ELEMENT_COUNT", shapes).tolist() == [3, 7, 12]
    assert ragged.batch_input_value("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", shapes).tolist() == [0, 3, 7, 12]
    assert ragged.batch_input_value("BATCH_ELEMENT_COUNT", shapes).tolist() == [3, 4, 5]
    assert ragged.batch_input_value("BATCH_MAX_ELEMENT_COUNT_AS_SHAPE", shapes).shape == (5,)
    assert ragged.batch_input_value("BATCH_ELEMENT_COUNT", shapes).dtype == np.int32
    assert ragged.batch_input_value("BATCH_ELEMENT_COUNT", shapes, "TYPE_FP32").dtype == np.float32
    # model_config.proto: a batch-2 [3, 1] request and a batch-1 [2, 2] one
    item = ragged.batch_input_value("BATCH_ITEM_SHAPE", [(2, 3, 1), (1, 2, 2)])
    assert item.tolist() == [[3, 1], [3, 1], [2, 2]]
    assert ragged.batch_input_value("BATCH_ITEM_SHAPE_FLATTEN", [(2, 3, 1), (1, 2, 2)]).tolist() == [3, 1, 3, 1, 2, 2]
    # element counts include the batch dim; ragged inputs concatenate flat in arrival order
    lay = ragged.RaggedLayout((ragged.RaggedInput("INPUT", "TYPE_FP32", 1),),
                              (ragged.BatchInput("BATCH_ACCUMULATED_ELEMENT_COUNT", "INDEX", "INPUT"),))
    reqs = [{"INPUT": np.full((1, n), n, np.float32)} for n in (3, 4, 5)]
    feeds = ragged.triton_batch(reqs, lay)
    assert feeds["INPUT"].shape == (12,) and feeds["INPUT"].tolist() == [3] * 3 + [4] * 4 + [5] * 5
    assert feeds["INDEX"].tolist() == [3, 7, 12]
    with pytest.raises(GraphValidationError, match="TYPE_INT32"):
        ragged.batch_input_value("BATCH_ELEMENT_COUNT", shapes, "TYPE_INT64")
    with pytest.raises(GraphValidationError, match="rows for a batch of 3"):
        ragged.split_outputs({"y": np.zeros((2, 1))}, [1, 1, 1])


def test_request_layout_round_trips_and_rejects_bad_shapes():
    g = _graphs(np.random.default_rng(0), 1)[0]
    req = ragged.graph_to_request(g, FE)
    assert req["x"].shape == (1, g.num_nodes * F) and req["edge_index"].shape == (1, 2 * g.num_edges)
    assert req["edge_index"].reshape(-1, 2).T.tolist() == g.edge_index.tolist()  # (source, target) pairs
    back = ragged.request_to_graph(req, F, FE)
    np.testing.assert_array_equal(back.x, g.x)
    np.testing.assert_array_equal(back.edge_index, g.edge_index)
    np.testing.assert_array_equal(back.edge_attr, g.edge_attr)
    with pytest.raises(GraphValidationError, match=r"\[1, -1\]"):
        ragged.request_to_graph({**req, "x": g.x}, F, FE, index=3)
    with pytest.raises(GraphValidationError, match="not a multiple of 8"):
        ragged.request_to_graph({**req, "x": req["x"][:, :-1]}, F, FE)
    with pytest.raises(GraphValidationError, match="pairs"):
        ragged.request_to_graph({**req, "edge_index": np.zeros((1, 3), np.int64)}, F, FE)


def test_feeds_from_a_collated_batch_equal_tritons_batching():
    """The runtime's fast path (one collated batch) feeds exactly what Triton would."""
    from edgemp.graph import collate

    graphs = _graphs(np.random.default_rng(1), 9)
    lay = ragged.layout(F, FE)
    want = ragged.triton_batch([ragged.graph_to_request(g, FE) for g in graphs], lay)
    got = ragged.feeds_from_batch(collate(graphs), F, FE)
    assert set(got) == set(want) == set(lay.input_names)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# -- the exported repository --------------------------------------------------------------
@pytest.fixture(scope="module")
def gine_repo(tmp_path_factory, make_checkpoint):
    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import export_triton_repo

    repo = tmp_path_factory.mktemp("triton_repo")
    result = export_triton_repo(make_checkpoint("gine"), repo,
                                TritonRepoConfig(name="gine", max_batch_size=16, max_queue_delay_us=200, verify_mixes=8))
    return repo, result


def test_repository_layout_and_verification(gine_repo):
    repo, result = gine_repo
    assert (repo / "gine" / "config.pbtxt").is_file() and (repo / "gine" / "1" / "model.onnx").is_file()
    assert result.report.passed and any(c.name.startswith("triton_mix_") for c in result.report.cases)
    assert result.report.outputs["prediction"]["max_abs_error"] <= 1e-5
    shapes = result.checks["io_shapes"]
    assert all(len(shapes[n]) == 1 for n in ragged.layout(F, FE).input_names)  # what Triton's ORT backend demands
    assert result.checks["control_flow_nodes"] == [] and result.checks["config_schema_checked"]
    assert result.spec.form == "triton-ragged" and result.spec.extra["triton"]["max_batch_size"] == 16


def test_config_parses_into_tritons_model_config(gine_repo):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    repo, _ = gine_repo
    msg = text_format.Parse((repo / "gine" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert msg.name == "gine" and msg.platform == "onnxruntime_onnx" and msg.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch) for i in msg.input] == [
        ("x", mc.TYPE_FP32, [-1], True), ("edge_index", mc.TYPE_INT64, [-1], True), ("edge_attr", mc.TYPE_FP32, [-1], True)]
    assert [(b.kind, list(b.target_name), list(b.source_input), b.data_type) for b in msg.batch_input] == [
        (mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO, ["x_offsets"], ["x"], mc.TYPE_INT32),
        (mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO, ["edge_index_offsets"], ["edge_index"], mc.TYPE_INT32)]
    assert [(o.name, list(o.dims)) for o in msg.output] == [("prediction", [1])]
    assert msg.dynamic_batching.max_queue_delay_microseconds == 200
    assert [(g.count, g.kind) for g in msg.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    assert not msg.optimization.execution_accelerators.gpu_execution_accelerator


def test_tensorrt_config_parses_and_profile_covers_the_batch(gine_repo):
    from tritonclient.grpc import model_config_pb2 as mc

    from edgemp.export.triton_config import TensorRTSettings, TritonRepoConfig, check_config, parse_config, render_config

    _, result = gine_repo
    lay = ragged.layout(F, FE)
    cfg = TritonRepoConfig(name="gine_trt", max_batch_size=8, instances=2, instance_kind="gpu",
                           tensorrt=TensorRTSettings(precision="fp16", max_nodes_per_graph=50, max_edges_per_graph=100,
                                                     engine_cache_path="/cache/gine"))
    text = render_config(cfg, result.spec.model, lay)
    msg = check_config(text, lay.input_names, ("prediction",))
    (acc,) = msg.optimization.execution_accelerators.gpu_execution_accelerator
    p = dict(acc.parameters)
    assert acc.name == "tensorrt" and p["precision_mode"] == "FP16" and p["trt_engine_cache_enable"] == "1"
    assert (msg.instance_group[0].count, msg.instance_group[0].kind) == (2, mc.ModelInstanceGroup.KIND_GPU)
    maxes = dict(kv.split(":") for kv in p["trt_profile_max_shapes"].split(","))
    assert maxes == {"x": str(8 * 50 * F), "edge_index": str(8 * 100 * 2), "edge_attr": str(8 * 100 * FE),
                     "x_offsets": "9", "edge_index_offsets": "9"}
    with pytest.raises(ExportError, match="ModelConfig"):
        parse_config(text + "no_such_field: 1\n")  # the check really rejects unknown fields
    with pytest.raises(ExportError, match="GPU instances"):
        TritonRepoConfig(tensorrt=TensorRTSettings())
    with pytest.raises(ExportError, match="max-batch-size"):
        TritonRepoConfig(max_batch_size=0)


def test_random_request_mixes_equal_the_plain_model_alone(gine_repo, export_checkpoint):
    """Triton's batching of 1-16 requests of mixed sizes vs the plain sparse export, graph by graph."""
    import onnxruntime as ort

    repo, _ = gine_repo
    sess = ort.InferenceSession(str(repo / "gine" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    plain = load(export_checkpoint("gine"), "cpu")
    lay = ragged.layout(F, FE)
    rng = np.random.default_rng(2024)
    worst = 0.0
    for _ in range(30):
        graphs = _graphs(rng, int(rng.integers(1, 17)))
        requests = [ragged.graph_to_request(g, FE) for g in graphs]
        out = dict(zip(["prediction"], sess.run(["prediction"], ragged.triton_batch(requests, lay))))
        for g, row in zip(graphs, ragged.split_outputs(out, [1] * len(graphs))):
            alone = plain.predict([g])[0]["prediction"].reshape(1, -1)
            np.testing.assert_allclose(row["prediction"], alone, rtol=0, atol=1e-5)
            worst = max(worst, float(np.abs(row["prediction"] - alone).max()))
    assert worst <= 1e-5


def test_runtime_loads_the_repository_model(gine_repo, export_checkpoint):
    repo, _ = gine_repo
    model = load(repo / "gine" / "1" / "model.onnx", "cpu")
    plain = load(export_checkpoint("gine"), "cpu")
    assert model.spec.form == "triton-ragged" and set(model.input_names) == set(ragged.layout(F, FE).input_names)
    graphs = _graphs(np.random.default_rng(5), 12)
    for got, want in zip(model.predict(graphs), plain.predict(graphs)):
        np.testing.assert_allclose(got["prediction"], want["prediction"], rtol=1e-5, atol=1e-5)


def test_verification_catches_a_wrong_model(gine_repo, make_checkpoint):
    """Weights that differ from the file's: the ragged verification must fail, not warn."""
    import torch

    from edgemp.export.config import ExportConfig
    from edgemp.export.source import resolve_source
    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import verify_ragged

    repo, _ = gine_repo
    src = resolve_source(make_checkpoint("gine"))
    with torch.no_grad():
        next(src.module.parameters()).add_(0.05)
    report = verify_ragged(src, repo / "gine" / "1" / "model.onnx", TritonRepoConfig(verify_mixes=2), ExportConfig())
    assert not report.passed


def test_node_level_tasks_are_refused(make_checkpoint, tmp_path):
    from edgemp.export.triton_repo import export_triton_repo

    with pytest.raises(ExportError, match="node-level"):
        export_triton_repo(make_checkpoint("gin", task="node_regression"), tmp_path)
    assert not any(tmp_path.iterdir())


def test_runtime_refuses_node_level_ragged_metadata(gine_repo, tmp_path):
    """A hand-edited file claiming node-level outputs in ragged form is refused at load."""
    import dataclasses

    import onnx

    from edgemp.export.onnx_file import write_metadata
    from edgemp.spec import OutputSpec

    repo, result = gine_repo
    model = onnx.load(str(repo / "gine" / "1" / "model.onnx"))
    m = dataclasses.replace(result.spec.model, outputs=(OutputSpec("prediction", "node", 1),))
    write_metadata(model, dataclasses.replace(result.spec, model=m))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelFormatError, match="node-level"):
        load(tmp_path / "bad.onnx", "cpu")


# -- the CLI and edgemp serve on the repository ---------------------------------------------
def test_cli_writes_a_repository_and_refuses_nonsense(make_checkpoint, tmp_path):
    from click.testing import CliRunner

    from edgemp.cli.main import cli
    from edgemp.export.triton_config import parse_config

    ckpt = str(make_checkpoint("gin"))
    runner = CliRunner()
    res = runner.invoke(cli, ["export", ckpt, "--triton-repo", str(tmp_path / "repo"), "--name", "gin",
                              "--max-batch-size", "8", "--max-queue-delay-us", "100", "--instances", "2"])
    assert res.exit_code == 0, res.output
    assert "tritonserver --model-repository=" in res.output
    msg = parse_config((tmp_path / "repo" / "gin" / "config.pbtxt").read_text())
    assert [i.name for i in msg.input] == ["x", "edge_index"]  # gin reads no edge features
    assert msg.max_batch_size == 8 and msg.instance_group[0].count == 2
    assert load(tmp_path / "repo" / "gin" / "1" / "model.onnx", "cpu").spec.form == "triton-ragged"
    for args, why in (
        (["--triton-repo", str(tmp_path / "r2"), "--form", "dense"], "ragged sparse form"),
        (["-o", str(tmp_path / "m.onnx"), "--precision", "fp16"], "add --triton-repo"),
        ([], "--triton-repo DIR"),
        (["--triton-repo", str(tmp_path / "r3"), "--max-batch-size", "0"], "max-batch-size"),
    ):
        res = runner.invoke(cli, ["export", ckpt, *args])
        assert res.exit_code == 1 and why in res.output, (args, res.output)


def test_model_folder_stays_inside_the_repository(make_checkpoint, tmp_path):
    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import export_triton_repo

    for name in (".", "..", "....", "gin\n"):  # '..' wrote 1/model.onnx and config.* beside the repository
        with pytest.raises(ExportError, match="model name .* must be"):
            TritonRepoConfig(name=name)
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    (repo / "gin").symlink_to(elsewhere)  # a folder that leads out: refused before anything is written
    with pytest.raises(ExportError, match="outside the repository"):
        export_triton_repo(make_checkpoint("gin"), repo, TritonRepoConfig(name="gin", verify_mixes=2))
    assert list(elsewhere.iterdir()) == []


def test_edgemp_serve_answers_tritonclient_from_the_repository(gine_repo, export_checkpoint, tmp_path):
    """Both request layouts: edgemp's sparse batch (as for any model) and Triton's one-graph ragged one."""
    import concurrent.futures

    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    from server_utils import assert_outputs_match, batch_tensors, expected_layout, start_server, triton_inputs

    repo, _ = gine_repo
    plain = load(export_checkpoint("gine"), "cpu")
    srv = start_server(repo, tmp_path)
    try:
        client = th.InferenceServerClient(srv.url, concurrency=8)
        assert client.is_model_ready("gine")
        for seed, k in ((0, 1), (1, 7), (2, 16)):  # the sparse layout, as the server tests send it
            graphs = _graphs(np.random.default_rng(seed), k)
            inputs = []
            for name, arr in batch_tensors(graphs, FE).items():
                inp = th.InferInput(name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            result = client.infer("gine", inputs)
            want = expected_layout(plain, graphs)
            assert_outputs_match({"prediction": result.as_numpy("prediction")}, want, f"{k} graphs")
        # Triton's layout, 24 concurrent one-graph requests (the batcher merges them)
        graphs = _graphs(np.random.default_rng(3), 24)
        pending = [client.async_infer("gine", triton_inputs(g, th)) for g in graphs]
        for g, p in zip(graphs, pending):
            got = p.get_result().as_numpy("prediction")
            want = plain.predict([g])[0]["prediction"].reshape(1, -1)
            assert got.shape == (1, 1)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        bad = triton_inputs(graphs[0], th)
        bad[0] = th.InferInput("x", [1, 7], "FP32")
        bad[0].set_data_from_numpy(np.zeros((1, 7), np.float32))
        with pytest.raises(InferenceServerException, match="multiple of 8"):
            client.infer("gine", bad)
        client.close()
    finally:
        assert srv.stop() == 0


def test_kserve_manifest_and_docs_agree_with_the_export():
    yaml = pytest.importorskip("yaml")
    from server_utils import ROOT

    manifest = yaml.safe_load((ROOT / "deploy" / "kserve-inferenceservice.yaml").read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    doc = (ROOT / "docs" / "scaling-out.md").read_text()
    assert "tritonserver --model-repository=/models" in doc and "nvcr.io/nvidia/tritonserver:<YY.MM>-py3" in doc
    for name in ragged.layout(F, FE).input_names:
        assert f"`{name}`" in doc, name


def test_export_fails_and_writes_nothing_when_the_ragged_model_disagrees(gine_repo, make_checkpoint, tmp_path,
                                                                        monkeypatch):
    import shutil

    import torch

    from edgemp.errors import VerificationError
    from edgemp.export import triton_repo
    from edgemp.export.source import resolve_source
    from edgemp.export.triton_config import TritonRepoConfig

    repo, _ = gine_repo
    # Reuse the exported file (skips the slow torch export) against weights it does not hold.
    monkeypatch.setattr(triton_repo, "torch_export", lambda *a: shutil.copy(repo / "gine" / "1" / "model.onnx", a[5]))
    src = resolve_source(make_checkpoint("gine"))
    with torch.no_grad():
        next(src.module.parameters()).add_(0.05)
    with pytest.raises(VerificationError, match="disagrees with the plain model"):
        triton_repo.export_triton_repo(src, tmp_path, TritonRepoConfig(name="gine", verify_mixes=2))
    assert not (tmp_path / "gine").exists()


@pytest.mark.parametrize("family", ["gat", "sage"])
def test_max_aggregating_families_export_ragged(family, make_checkpoint, tmp_path):
    """GAT's softmax shift and SAGE-max aggregate with a scatter max: the ragged export must take them too."""
    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import export_triton_repo

    kw = {"aggr": "max"} if family == "sage" else {}
    result = export_triton_repo(make_checkpoint(family, **kw), tmp_path, TritonRepoConfig(name=family, verify_mixes=3))
    assert result.report.passed and result.checks["control_flow_nodes"] == []


def test_python_backend_flavour_config_and_files(make_checkpoint, tmp_path):
    """--triton-backend python: the same ragged inputs, no batch_input, model.py beside model.onnx."""
    from click.testing import CliRunner

    from edgemp.cli.main import cli
    from edgemp.export.triton_config import TritonRepoConfig, parse_config

    ckpt = str(make_checkpoint("gine"))
    res = CliRunner().invoke(cli, ["export", ckpt, "--triton-repo", str(tmp_path / "repo"), "--name", "g",
                                   "--triton-backend", "python", "--max-batch-size", "8", "--max-queue-size", "100"])
    assert res.exit_code == 0, res.output
    assert "edgemp triton serve" in res.output
    model = tmp_path / "repo" / "g"
    assert (model / "1" / "model.py").is_file() and (model / "1" / "model.onnx").is_file()
    msg = parse_config((model / "config.pbtxt").read_text())
    assert msg.backend == "python" and not msg.platform and msg.max_batch_size == 8
    assert [i.name for i in msg.input] == ["x", "edge_index", "edge_attr"] and not msg.batch_input
    assert all(i.allow_ragged_batch and list(i.dims) == [-1] for i in msg.input)
    policy = msg.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 100 and policy.allow_timeout_override
    assert load(model / "1" / "model.onnx", "cpu").spec.extra["triton"]["backend"] == "python"
    with pytest.raises(ExportError, match="need --triton-backend onnxruntime"):
        TritonRepoConfig(backend="python", instance_kind="gpu")
    with pytest.raises(ExportError, match="not one of"):
        TritonRepoConfig(backend="tensorflow")
    res = CliRunner().invoke(cli, ["export", ckpt, "--triton-repo", str(tmp_path / "r2"), "--triton-backend", "python",
                                   "--precision", "fp16"])
    assert res.exit_code == 1 and "need --triton-backend onnxruntime" in res.output


def test_python_flavour_kserve_manifest_names_a_runtime_it_defines():
    yaml = pytest.importorskip("yaml")
    from server_utils import ROOT

    runtime, isvc = yaml.safe_load_all((ROOT / "deploy" / "kserve-inferenceservice-python.yaml").read_text())
    assert runtime["kind"] == "ServingRuntime" and isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    (container,) = runtime["spec"]["containers"]
    assert container["args"][0] == "tritonserver" and "--model-store=/mnt/models" in container["args"]
    assert (ROOT / "deploy" / "triton-python.Dockerfile").is_file()
    doc = (ROOT / "docs" / "scaling-out.md").read_text()
    assert "deploy/kserve-inferenceservice-python.yaml" in doc and "edgemp triton serve" in doc
