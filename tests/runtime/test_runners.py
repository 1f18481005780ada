"""edgemp.runtime.runners: the backend registry, the Runner interface, the old import paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import build_plain_onnx, build_sparse_model, random_graphs, reference_outputs

import edgemp.runtime as rt
from edgemp.errors import EdgempError, ModelFormatError
from edgemp.runtime.model import Model
from edgemp.spec import METADATA_KEY
from edgemp.runtime.runners import (
    RUNNERS,
    OrtRunner,
    RunnerOptions,
    TensorRTRunner,
    open_runner,
    runner_class,
    runner_name_for,
)


@pytest.fixture(scope="module")
def sparse_path(tmp_path_factory) -> Path:
    return build_sparse_model(tmp_path_factory.mktemp("runners") / "sparse.onnx")


def test_registry_resolves_names_and_lists_choices_on_error():
    assert runner_class("onnxruntime") is OrtRunner and runner_class("TensorRT") is TensorRTRunner
    assert set(RUNNERS) == {"onnxruntime", "tensorrt"}
    with pytest.raises(EdgempError, match=r"could not resolve runner 'tpu' among choices \['onnxruntime', 'tensorrt'\]"):
        runner_class("tpu")
    with pytest.raises(EdgempError, match="could not resolve runner"):
        open_runner("m.onnx", runner="openvino")


def test_runner_is_chosen_by_file_kind():
    assert runner_name_for("a/m.plan") == "tensorrt"
    assert runner_name_for("a/m.onnx") == "onnxruntime" and runner_name_for(Path("model")) == "onnxruntime"


def test_open_runner_gives_the_graph_layout_a_plain_runner(sparse_path):
    runner = open_runner(sparse_path, RunnerOptions(providers="cpu", threads=1))
    assert isinstance(runner, OrtRunner) and runner.path == sparse_path
    assert METADATA_KEY in runner.metadata and runner.output_names == ()  # nothing fetched until a layout asks
    assert runner.session.get_session_options().intra_op_num_threads == 1
    with Model(runner, sparse_path) as model:
        assert runner.output_names == tuple(o.name for o in model.spec.model.outputs)
        graphs = random_graphs(np.random.default_rng(3), 5)
        for got, g in zip(model.predict(graphs), graphs):
            ref = reference_outputs(g)
            assert all(np.abs(got[k] - ref[k]).max() < 1e-4 for k in ref)


def test_fetching_an_output_the_graph_lacks_is_a_format_error(sparse_path):
    runner = open_runner(sparse_path, RunnerOptions(providers="cpu"))
    with pytest.raises(ModelFormatError, match=r"metadata lists output\(s\) \['nope'\] that the ONNX graph does not"):
        runner.fetch(["nope"])


def test_model_without_edgemp_metadata_is_named(tmp_path):
    plain = build_plain_onnx(tmp_path / "plain.onnx")
    with pytest.raises(ModelFormatError, match=r"not an edgemp model: .*plain.onnx has no 'edgemp' metadata"):
        Model(open_runner(plain, RunnerOptions(providers="cpu")), plain)


def test_tensorrt_runner_by_name_needs_its_sidecar(sparse_path):
    with pytest.raises(ModelFormatError, match=r"spec sidecar sparse.onnx.json is missing"):
        open_runner(sparse_path, runner="tensorrt")


def test_old_import_paths_are_the_same_objects(sparse_path):
    from edgemp.runtime import providers, tensorrt_engine
    from edgemp.runtime.runners import onnxruntime, tensorrt

    assert providers.OrtRunner is OrtRunner and providers.resolve_providers is onnxruntime.resolve_providers
    assert providers.session_options is onnxruntime.session_options and providers.ORT_ERRORS is onnxruntime.ORT_ERRORS
    assert tensorrt_engine.TensorRTRunner is TensorRTRunner and tensorrt_engine.sidecar_path is tensorrt.sidecar_path
    assert isinstance(rt.load(sparse_path, providers="cpu").runner, providers.OrtRunner)


def _edited(src: Path, dst: Path, spec_edit) -> Path:
    """A copy of ``src`` with its edgemp metadata changed by ``spec_edit`` (a dict, in place)."""
    import json

    import onnx

    proto = onnx.load(str(src))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            spec = json.loads(prop.value)
            spec_edit(spec)
            prop.value = json.dumps(spec)
    onnx.save(proto, str(dst))
    return dst


def test_metadata_that_does_not_describe_the_graph_is_refused_at_load(sparse_path, tmp_path):
    """Edited or mismatched metadata: one line at load, not an ONNX Runtime traceback at the first
    batch (inputs) or answers of the wrong width (outputs)."""
    pytest.importorskip("onnx")

    def features(spec):
        spec["model"]["node_features"] += 4

    def width(spec):
        spec["model"]["outputs"][0]["width"] += 2

    with pytest.raises(ModelFormatError, match=r"input 'x' takes \d+ features per row but the metadata says"):
        rt.load(_edited(sparse_path, tmp_path / "features.onnx", features), providers="cpu")
    with pytest.raises(ModelFormatError, match=r"output '\w+' is \d+ wide but the metadata says"):
        rt.load(_edited(sparse_path, tmp_path / "width.onnx", width), providers="cpu")


def test_an_output_width_the_backend_does_not_declare_is_checked_when_it_comes_back(sparse_path, tmp_path):
    """A backend that declares no shapes (a TensorRT engine here says nothing): the width is
    checked on every batch instead, so rows of the wrong width never reach a caller."""
    pytest.importorskip("onnx")

    def width(spec):
        spec["model"]["outputs"][0]["width"] += 2

    graphs = random_graphs(np.random.default_rng(0), 3)
    for path, wrong in ((_edited(sparse_path, tmp_path / "w.onnx", width), True), (sparse_path, False)):
        runner = open_runner(path, RunnerOptions(providers="cpu"))
        runner.output_shapes = {}
        model = Model(runner, path)
        if wrong:
            with pytest.raises(ModelFormatError, match=r"came back with shape \[3, \d+\]; its metadata says \[rows, \d+\]"):
                model.predict(graphs)
        else:
            assert len(model.predict(graphs)) == 3
