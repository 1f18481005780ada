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
