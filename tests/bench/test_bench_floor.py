"""GEMM FLOPs from ONNX Runtime's profile and the same-run sgemm peak (edgemp.bench.floor)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper

from edgemp.bench.floor import GemmPeak, gemm_profile, share_of_peak


def _model(path) -> None:
    """a [M, 4] -> Gemm(transB, W [3, 4]) -> Relu -> MatMul(B [3, 6]) -> y [M, 6]."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "b"], ["y"])],
        "two_gemms",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 6])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 4], w.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [3, 6], b.ravel().tolist())],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_gemm_flops_follow_the_shapes_each_call_ran(tmp_path):
    path = tmp_path / "m.onnx"
    _model(path)
    for m in (5, 37):  # dynamic rows: FLOPs are read from the run, not from static shapes
        prof = gemm_profile(path, {"a": np.ones((m, 4), np.float32)})
        assert prof.flops == 2 * m * 4 * 3 + 2 * m * 3 * 6
        assert prof.largest == (m, 3, 6)
    assert gemm_profile(path, {"a": np.ones((0, 4), np.float32)}).flops == 0


def test_peak_is_a_measured_rate_and_share_divides_by_it():
    peak = GemmPeak(64, 64, 64)
    assert math.isnan(peak.gflops)  # nothing sampled yet: no made-up figure
    peak.sample(3)
    assert len(peak.samples_ns) == 3 and 0 < peak.gflops < 1e5 and peak.label() == "64x64 @ 64x64"
    assert share_of_peak(2_000, 1_000.0, 4.0) == 0.5  # 2 GFLOP/s of a 4 GFLOP/s peak
    assert math.isnan(share_of_peak(10, 0.0, 1.0))


def test_peak_on_the_cpu_clock_counts_this_process_cpu_time():
    import time

    peak = GemmPeak(128, 128, 128, clock="cpu")
    before = time.process_time_ns()
    peak.sample(4)
    spent = time.process_time_ns() - before
    assert len(peak.samples_ns) == 4 and 0 < sum(peak.samples_ns) <= spent and 0 < peak.gflops < 1e5



def test_int8_peak_runs_the_dynamic_int8_gemm():
    # The int8 rows' yardstick: the same chain, each product quantized the way int8-dynamic runs it.
    fp32, int8 = GemmPeak(64, 64, 64), GemmPeak(64, 64, 64, int8=True)
    assert set(fp32.op_types) == {"MatMul"}
    assert int8.op_types and "MatMul" not in int8.op_types and "DynamicQuantizeLinear" in int8.op_types
    assert int8.label() == "64x64 @ 64x64 int8-dynamic"
    int8.sample(3)
    assert 0 < int8.gflops < 1e6


def test_torch_gemm_flops_counts_the_eager_models_matmuls():
    pytest.importorskip("torch")
    import torch

    from edgemp.bench.floor import torch_gemm_flops
    from edgemp.data.synthetic import random_graph
    from edgemp.graph import collate
    from edgemp.models import ModelConfig, build_model

    torch.manual_seed(0)
    f, h, rounds = 5, 16, 2
    model = build_model(ModelConfig("gin", "regression", f, 0, hidden=h, num_rounds=rounds)).eval()
    rng = np.random.default_rng(0)
    batch = collate([random_graph(rng, 7, 12, f) for _ in range(3)])
    n, g = batch.x.shape[0], batch.num_graphs
    # encoder F -> H, two H x H Linears per round, head H -> H -> 1: 2·M·K·N each
    want = 2 * n * f * h + rounds * 2 * (2 * n * h * h) + 2 * g * h * h + 2 * g * h * 1
    assert torch_gemm_flops(model, batch) == want
