"""TensorRT: profile derivation, ORT TensorRT-EP options, engine-build logic (fake tensorrt), real builds on GPU."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgemp.errors import EdgempError, ExportError, MissingExtraError
from edgemp.export.tensorrt_profiles import (
    ProfileRange,
    derive_profiles,
    input_shapes,
    merge_profiles,
    ort_tensorrt_options,
    parse_profile,
)
from edgemp.spec import ExportedModelSpec, ModelSpec, OutputSpec


def _spec(form: str = "sparse", edge_features: int = 4, precision: str = "fp32") -> ExportedModelSpec:
    model = ModelSpec("mpnn", "regression", 34, edge_features, 3, (OutputSpec("prediction", "graph", 1),))
    if form == "dense":
        return ExportedModelSpec(model, ("x", "adjacency", "node_mask"), form="dense", max_nodes=32, precision=precision)
    names = ("x", "edge_index") + (("edge_attr",) if edge_features else ()) + ("node_graph", "graph_node_counts")
    return ExportedModelSpec(model, names, precision=precision)


# -- profiles ------------------------------------------------------------------------------
def test_parse_profile():
    assert parse_profile("num_nodes=1:32:2048") == ProfileRange("num_nodes", 1, 32, 2048)
    assert str(parse_profile("num_edges=0:64:4096")) == "num_edges=0:64:4096"
    for bad in ("num_nodes=1:2", "num_nodes", "num_nodes=a:b:c", "num_nodes=5:2:9", "num_graphs=0:1:2"):
        with pytest.raises(EdgempError):
            parse_profile(bad)


def test_derive_sparse_profiles_exact():
    nodes, edges = [10, 20, 30], [0, 18, 40]
    got = derive_profiles((nodes, edges), "sparse", max_batch_graphs=4, opt_batch_graphs=2)
    assert got == (
        ProfileRange("num_nodes", 10, 40, 120),  # one smallest graph; 2 x median 20; 4 x largest 30
        ProfileRange("num_edges", 0, 36, 160),
        ProfileRange("num_graphs", 1, 2, 4),
    )
    # opt defaults to the max batch; half-up rounding of median x batch (median 15.5 x 3 = 46.5 -> 47)
    got = derive_profiles(([11, 20], [5, 26]), "sparse", max_batch_graphs=3)
    assert got == (ProfileRange("num_nodes", 11, 47, 60), ProfileRange("num_edges", 5, 47, 78),
                   ProfileRange("num_graphs", 1, 3, 3))


def test_derive_profiles_from_graphs_matches_sizes():
    from edgemp.data.synthetic import synthetic_graphs

    graphs = synthetic_graphs(20, seed=4)
    n = [g.num_nodes for g in graphs]
    e = [g.num_edges for g in graphs]
    assert derive_profiles(graphs, max_batch_graphs=8) == derive_profiles((n, e), max_batch_graphs=8)


def test_derive_dense_profiles_exact():
    got = derive_profiles(([3, 5, 9, 17], [2, 4, 8, 16]), "dense", max_batch_graphs=8, opt_batch_graphs=4, max_nodes=32)
    # slots: pad_size(3) = 4; largest of a 4-graph batch ~ 80th percentile = 12.2 -> 13 -> 16; pad_size(17) = 32
    assert got == (ProfileRange("num_graphs", 1, 4, 8), ProfileRange("max_nodes", 4, 16, 32))
    with pytest.raises(EdgempError, match="at most 16"):
        derive_profiles(([3, 17], [0, 0]), "dense", max_nodes=16)


def test_derive_profiles_rejects_bad_arguments():
    with pytest.raises(EdgempError):
        derive_profiles(([], []))
    with pytest.raises(EdgempError):
        derive_profiles(([3], [2]), max_batch_graphs=4, opt_batch_graphs=5)
    with pytest.raises(EdgempError):
        derive_profiles(([3], [2]), "ragged")


def test_merge_profiles():
    derived = derive_profiles(([10, 20], [12, 30]), max_batch_graphs=4)
    merged = merge_profiles(derived, [parse_profile("num_graphs=1:1:2")], "sparse")
    assert [p.dim for p in merged] == ["num_nodes", "num_edges", "num_graphs"]
    assert merged[2] == ProfileRange("num_graphs", 1, 1, 2) and merged[0] == derived[0]
    with pytest.raises(EdgempError, match="num_edges"):
        merge_profiles([], [parse_profile("num_nodes=1:2:3"), parse_profile("num_graphs=1:2:3")], "sparse")
    with pytest.raises(EdgempError, match="not a dim"):
        merge_profiles(derived, [parse_profile("max_nodes=1:2:4")], "sparse")


SPARSE = (ProfileRange("num_nodes", 1, 34, 2000), ProfileRange("num_edges", 0, 70, 4400), ProfileRange("num_graphs", 1, 2, 64))


def test_input_shapes_sparse_and_dense():
    shapes = input_shapes(_spec(), SPARSE)
    assert list(shapes) == ["x", "edge_index", "edge_attr", "node_graph", "graph_node_counts"]
    assert shapes["x"] == ((1, 34), (34, 34), (2000, 34))
    assert shapes["edge_index"] == ((2, 0), (2, 70), (2, 4400))
    assert shapes["edge_attr"] == ((0, 4), (70, 4), (4400, 4))
    assert shapes["graph_node_counts"] == ((1,), (2,), (64,))
    dense = input_shapes(_spec("dense"), (ProfileRange("num_graphs", 1, 8, 64), ProfileRange("max_nodes", 4, 16, 32)))
    assert dense == {
        "x": ((1, 4, 34), (8, 16, 34), (64, 32, 34)),
        "adjacency": ((1, 4, 4), (8, 16, 16), (64, 32, 32)),
        "node_mask": ((1, 4), (8, 16), (64, 32)),
    }
    with pytest.raises(EdgempError, match="lack"):
        input_shapes(_spec(), SPARSE[:2])


def test_ort_tensorrt_options_exact(tmp_path):
    opts = ort_tensorrt_options(_spec(), SPARSE, fp16=True, engine_cache_dir=tmp_path / "engines",
                                timing_cache_dir=tmp_path / "timing")
    assert opts == {
        "trt_profile_min_shapes": "x:1x34,edge_index:2x0,edge_attr:0x4,node_graph:1,graph_node_counts:1",
        "trt_profile_opt_shapes": "x:34x34,edge_index:2x70,edge_attr:70x4,node_graph:34,graph_node_counts:2",
        "trt_profile_max_shapes": "x:2000x34,edge_index:2x4400,edge_attr:4400x4,node_graph:2000,graph_node_counts:64",
        "trt_fp16_enable": "True",
        "trt_int8_enable": "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "engines"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "timing"),
    }
    # A model without edge features has no edge_attr input; int8 follows a QDQ model's precision.
    plain = ort_tensorrt_options(_spec(edge_features=0, precision="int8-static"), SPARSE)
    assert plain["trt_profile_min_shapes"] == "x:1x34,edge_index:2x0,node_graph:1,graph_node_counts:1"
    assert plain["trt_int8_enable"] == "True" and plain["trt_engine_cache_enable"] == "False"
    assert "trt_engine_cache_path" not in plain and plain["trt_timing_cache_enable"] == "False"


def test_ort_options_are_strings():
    """ORT's provider-option parser takes strings ("True"/"False", paths, "AxB" shapes)."""
    opts = ort_tensorrt_options(_spec(), SPARSE)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in opts.items())


# -- engine building without TensorRT / GPU -------------------------------------------------
def test_build_engine_without_tensorrt(export_checkpoint, tmp_path, monkeypatch):
    from edgemp.export.tensorrt_build import EngineConfig, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    src = export_checkpoint("gin", target="tensorrt")
    with pytest.raises(MissingExtraError, match=r"pip install 'edgemp\[tensorrt\]'"):
        build_engine(src, tmp_path / "m.plan", EngineConfig(profiles=SPARSE[:2] + (SPARSE[2],)))
    assert not (tmp_path / "m.plan").exists()


def test_build_engine_lints_before_needing_tensorrt(export_checkpoint, tmp_path):
    from edgemp.export.tensorrt_build import EngineConfig, build_engine

    src = export_checkpoint("gin")  # ort-cpu target: ScatterND(add), which TensorRT rejects
    with pytest.raises(ExportError, match="ScatterND"):
        build_engine(src, tmp_path / "m.plan", EngineConfig(profiles=SPARSE))
    with pytest.raises(EdgempError, match="QDQ"):
        build_engine(export_checkpoint("gin", target="tensorrt"), tmp_path / "m.plan",
                     EngineConfig(profiles=SPARSE, int8=True))
    with pytest.raises(EdgempError, match="profiles"):
        EngineConfig(profiles=())


class _FakeTRT(types.ModuleType):
    """Just enough of the TensorRT 10 Python API to drive build_engine without a GPU."""

    def __init__(self, parse_ok: bool = True, inputs: tuple[str, ...] = ()) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.99-fake"
        self.calls: dict = {"shapes": {}, "flags": set(), "cache_in": None}
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class _Err:
            def __init__(self, i):
                self.i = i

            def desc(self):
                return "Assertion failed: reduction is not supported"

            def node_name(self):
                return f"node_ScatterND_{self.i}"

            def node_operator(self):
                return "ScatterND"

        class _Tensor:
            def __init__(self, name):
                self.name = name

        class _Network:
            num_inputs = len(inputs)

            def get_input(self, i):
                return _Tensor(inputs[i])

        class OnnxParser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                return parse_ok

            def get_error(self, i):
                return _Err(i)

        class _Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls["shapes"][name] = (tuple(lo), tuple(opt), tuple(hi))

        class _Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"cache:" + self.data

        class _Config:
            builder_optimization_level = 0

            def set_memory_pool_limit(self, pool, size):
                fake.calls["workspace"] = size

            def set_flag(self, flag):
                fake.calls["flags"].add(flag)

            def add_optimization_profile(self, p):
                fake.calls["profiles"] = fake.calls.get("profiles", 0) + 1

            def create_timing_cache(self, data):
                fake.calls["cache_in"] = bytes(data)
                return _Cache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                self._cache = cache

            def get_timing_cache(self):
                return self._cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return _Network()

            def create_builder_config(self):
                return _Config()

            def create_optimization_profile(self):
                return _Profile()

            def build_serialized_network(self, network, config):
                return b"PLAN"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
        self.init_libnvinfer_plugins = lambda logger, ns: True


def test_build_engine_flow_with_fake_tensorrt(export_checkpoint, tmp_path, monkeypatch):
    from edgemp.export.tensorrt_build import EngineConfig, build_engine
    from edgemp.runtime.tensorrt_engine import sidecar_path

    src = export_checkpoint("gin", target="tensorrt")
    names = ("x", "edge_index", "node_graph", "graph_node_counts")
    fake = _FakeTRT(inputs=names)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = tmp_path / "gin.plan"
    cfg = EngineConfig(profiles=SPARSE, fp16=True, timing_cache=cache, verify=False, workspace_bytes=1 << 28)
    result = build_engine(src, plan, cfg)
    assert plan.read_bytes() == b"PLAN"
    assert fake.calls["flags"] == {"FP16"} and fake.calls["workspace"] == 1 << 28 and fake.calls["profiles"] == 1
    assert fake.calls["shapes"] == {
        "x": ((1, 8), (34, 8), (2000, 8)),
        "edge_index": ((2, 0), (2, 70), (2, 4400)),
        "node_graph": ((1,), (34,), (2000,)),
        "graph_node_counts": ((1,), (2,), (64,)),
    }
    assert fake.calls["cache_in"] == b"old" and cache.read_bytes() == b"cache:old"  # read, then written back
    side = sidecar_path(plan)
    assert side.name == "gin.plan.json" and result.sidecar == side
    spec = ExportedModelSpec.from_json(side.read_text())
    assert spec.target == "tensorrt" and spec.precision == "fp16"
    assert spec.extra["tensorrt"]["profiles"] == [str(p) for p in SPARSE]
    assert spec.input_names == names


def test_build_engine_lists_parser_errors(export_checkpoint, tmp_path, monkeypatch):
    from edgemp.export.tensorrt_build import EngineConfig, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTRT(parse_ok=False))
    with pytest.raises(ExportError, match=r"node_ScatterND_0 \(ScatterND\): Assertion failed.*node_ScatterND_1"):
        build_engine(export_checkpoint("gin", target="tensorrt"), tmp_path / "m.plan", EngineConfig(profiles=SPARSE))
    assert not (tmp_path / "m.plan").exists()


def test_verification_batches_fit_the_profile(export_checkpoint):
    from edgemp.data.synthetic import synthetic_graphs
    from edgemp.export.tensorrt_build import verification_batches
    from edgemp.runtime import load

    spec = load(export_checkpoint("gin", target="tensorrt"), providers="cpu").spec
    graphs = synthetic_graphs(30, seed=5)
    profiles = derive_profiles(graphs, max_batch_graphs=8)
    by = {p.dim: p for p in profiles}
    cases = verification_batches(spec, profiles, graphs)
    assert any(name.startswith("graphs_") for name, _ in cases)
    for _, batch in cases:
        assert by["num_graphs"].min <= len(batch) <= by["num_graphs"].max
        assert by["num_nodes"].min <= sum(g.num_nodes for g in batch) <= by["num_nodes"].max
        assert by["num_edges"].min <= sum(g.num_edges for g in batch) <= by["num_edges"].max


# -- CLI ------------------------------------------------------------------------------------
def test_cli_engine_ort_options_and_missing_tensorrt(export_checkpoint, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgemp.cli.main import cli
    from edgemp.data.synthetic import synthetic_graphs
    from edgemp.graphio import write_graphs

    src = export_checkpoint("gin", target="tensorrt")
    graphs = synthetic_graphs(10, seed=6)
    gfile = tmp_path / "g.jsonl"
    write_graphs(graphs, gfile)
    res = CliRunner().invoke(cli, ["engine", str(src), "--profile-from", str(gfile), "--max-batch-graphs", "4",
                                   "--profile", "num_graphs=1:2:4", "--ort-options",
                                   "--engine-cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    opts = json.loads(res.output)
    nodes = [g.num_nodes for g in graphs]
    assert opts["trt_profile_max_shapes"].startswith(f"x:{4 * max(nodes)}x8,")
    assert opts["trt_profile_min_shapes"].endswith(",graph_node_counts:1")
    assert opts["trt_engine_cache_path"] == str(tmp_path / "c")

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    res = CliRunner().invoke(cli, ["engine", str(src), "-o", str(tmp_path / "m.plan"), "--profile-from", str(gfile)])
    assert res.exit_code == 1 and "tensorrt is not installed" in res.output
    res = CliRunner().invoke(cli, ["engine", str(src), "-o", str(tmp_path / "m.plan"), "--profile", "num_nodes=1:2:3"])
    assert res.exit_code == 1 and "num_edges" in res.output


# -- real TensorRT (GPU machines only) ------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_matches_ort(export_checkpoint, tmp_path, precision):
    from edgemp.data.synthetic import synthetic_graphs
    from edgemp.export.quantize import QuantizeConfig, quantize
    from edgemp.export.tensorrt_build import EngineConfig, build_engine
    from edgemp.runtime import load

    src = export_checkpoint("gin", target="tensorrt")
    graphs = synthetic_graphs(40, seed=7)
    if precision == "int8":
        src = quantize(src, tmp_path / "qdq.onnx", QuantizeConfig("int8-static"), graphs).path
    profiles = derive_profiles(graphs, max_batch_graphs=16)
    tol = 1e-3 if precision == "fp32" else 5e-2
    cache = tmp_path / "timing.cache"
    cfg = EngineConfig(profiles=profiles, fp16=precision == "fp16", int8=precision == "int8",
                       timing_cache=cache, atol=tol, rtol=tol)
    result = build_engine(src, tmp_path / "m.plan", cfg, graphs)
    assert result.report.passed and cache.stat().st_size > 0
    with load(result.path) as m:
        out = m.predict(graphs[:3])
        assert len(out) == 3 and np.all(np.isfinite(out[0]["prediction"]))
