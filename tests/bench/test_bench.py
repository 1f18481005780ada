"""edgemp bench: statistics, the open-loop scheduler, reports, the CLI in-process and against a real server."""
from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgemp.bench.loadgen import Target, arrival_offsets_ns, closed_loop, open_loop
from edgemp.bench.stats import percentile, stability, summarize
from edgemp.bench.workload import SyntheticSpec, WorkloadSpec, build_buckets, make_schedule
from edgemp.cli.main import cli
from edgemp.errors import EdgempError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- statistics ---------------------------------------------------------------------------
@pytest.mark.parametrize("data", [
    [5.0],
    [1.0, 2.0],
    [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0],
    list(np.random.default_rng(0).exponential(1.0, 1001)),
    list(range(100)),
])
@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(data, q):
    assert percentile(data, q) == pytest.approx(np.percentile(np.asarray(data), q, method="linear"), rel=1e-12)


def test_percentile_known_values():
    v = [10, 20, 30, 40]  # h = 3 * q / 100
    assert percentile(v, 50) == 25.0
    assert percentile(v, 90) == pytest.approx(37.0)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_summarize_in_microseconds():
    s = summarize(np.arange(1, 101) * 1000, (50, 99))  # 1..100 µs
    assert s.count == 100 and s.min_us == 1.0 and s.max_us == 100.0
    assert s.mean_us == pytest.approx(50.5)
    assert s.stdev_us == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert s.percentiles_us == {"p50": pytest.approx(50.5), "p99": pytest.approx(99.01)}


def test_stability_flags_a_drift():
    flat = np.full(300, 1000)
    assert stability(flat, 3, 0.1).stable
    drift = np.concatenate([np.full(100, 1000), np.full(100, 1050), np.full(100, 1500)])
    s = stability(drift, 3, 0.1)
    assert not s.stable and s.spread == pytest.approx(0.5)
    assert not stability([1, 2], 3, 0.1).stable  # too few samples is never "stable"


def test_schedule_is_shared_and_buckets_interleave():
    ws = WorkloadSpec(synthetic=(SyntheticSpec(), SyntheticSpec(nodes=(5, 9), edges=(4, 12), graphs=8)))
    buckets = build_buckets(ws, 8, 4)
    s = make_schedule(buckets, 2)
    assert set(s.bucket) == {0, 1} and s.bucket[:2] == [0, 1]
    for batch, b in zip(s.batches, s.bucket):
        assert all((g.num_nodes == 25) == (b == 0) for g in batch)
    again = make_schedule(build_buckets(ws, 8, 4), 2)
    assert all(np.array_equal(a[0].x, b[0].x) for a, b in zip(s.batches, again.batches))


async def _local_server(app):
    """``app`` served on a free port of 127.0.0.1: its runner (clean it up) and base URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


# -- open loop: latency from the intended start ---------------------------------------------
async def _stalling_server_run(mode: str):
    from aiohttp import ClientSession, TCPConnector, web

    lock = asyncio.Lock()
    seen = 0

    async def infer(request):
        nonlocal seen
        await request.read()
        async with lock:  # one request at a time, like a single model instance
            seen += 1
            if seen == 5:
                await asyncio.sleep(0.3)  # the stall
            else:
                await asyncio.sleep(0.001)
        return web.Response(body=b"{}")

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", infer)
    runner, url = await _local_server(app)
    target = Target(f"{url}/v2/models/m/infer", (b"{}",), ({},), timeout_s=5.0)
    try:
        async with ClientSession(connector=TCPConnector(limit=0)) as session:
            if mode == "open":
                return await open_loop(session, target, 100.0, 1.0, "constant", warmup_s=0.0)
            return await closed_loop(session, target, 1, 1.0, warmup_s=0.0)
    finally:
        await runner.cleanup()


def test_open_loop_charges_the_stall_to_requests_queued_behind_it():
    res = asyncio.run(_stalling_server_run("open"))
    lat_ms = res.latencies_ns / 1e6
    assert res.error_count == 0 and res.sent == 100
    # ~30 requests were due during the 300 ms stall: each carries its wait since its intended start.
    assert lat_ms.max() > 250
    assert (lat_ms > 100).sum() >= 10
    assert percentile(lat_ms, 90) > 50
    # A closed-loop client waits for the stall and shows it once: the tail hides it (coordinated omission).
    closed = asyncio.run(_stalling_server_run("closed")).latencies_ns / 1e6
    assert (closed > 100).sum() == 1


def test_arrival_schedules(monkeypatch):
    const = arrival_offsets_ns(100, 1.0, "constant")
    assert const.size == 100 and np.all(np.diff(const) == 10_000_000)
    pois = arrival_offsets_ns(1000, 2.0, "poisson", seed=1)
    assert 1800 < pois.size < 2200 and np.all(np.diff(pois) >= 0)
    # built up front: 1e6/s for 1000 s would need tens of GB (the cap is lowered here to stay cheap)
    monkeypatch.setattr("edgemp.bench.loadgen.MAX_SCHEDULED", 1000, raising=False)
    with pytest.raises(EdgempError, match="schedules 2e\\+03 requests; at most 1,000"):
        arrival_offsets_ns(1000, 2.0, "constant")


# -- a server that answers garbage: one line naming the endpoint or the metadata field -------
async def _get_json_from(body: bytes, required: bool):
    from aiohttp import ClientSession, web

    from edgemp.bench.server import ServerBenchConfig, _Client

    async def answer(request):
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/v2/models/m", answer)
    runner, url = await _local_server(app)
    try:
        async with ClientSession() as session:
            return await _Client(session, ServerBenchConfig(url=url, model="m")).get_json("/v2/models/m", required)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("body,match", [
    (b"<html>hi</html>", "not valid JSON"), (b"[1, 2]", "expected a V2 JSON object"), (b"\xff{}", "not UTF-8"),
    (b"[" * 100_000, "not valid JSON \\(nested too deeply"),
])
def test_server_metadata_that_is_not_a_json_object(body, match):
    with pytest.raises(EdgempError, match=f"GET http://127.0.0.1:[0-9]+/v2/models/m: {match}"):
        asyncio.run(_get_json_from(body, required=True))
    assert asyncio.run(_get_json_from(body, required=False)) is None  # optional endpoints (stats) are skipped


def _inputs(**shapes):
    return {"name": "m", "inputs": [{"name": n, "shape": s} for n, s in shapes.items()]}


@pytest.mark.parametrize("meta,config,match", [
    (_inputs(x=[], edge_index=[2, -1], node_graph=[-1], graph_node_counts=[-1]), None, "input 'x' has shape \\[\\]"),
    (_inputs(x=7, edge_index=[2, -1], node_graph=[-1], graph_node_counts=[-1]), None, "input 'x' has shape 7"),
    (_inputs(x=[-1, True], edge_index=[2, -1], node_graph=[-1], graph_node_counts=[-1]), None, "input 'x'"),
    (_inputs(x=[-1, 8], edge_index=[2, -1], edge_attr=[-1, -4], node_graph=[-1], graph_node_counts=[-1]), None,
     "input 'edge_attr' has shape \\[-1, -4\\]"),
    (_inputs(x=[1, -1], edge_index=[1, -1]),
     {"parameters": {"edgemp_node_features": {"string_value": "-5"}, "edgemp_edge_features": {"string_value": "0"}}},
     "'edgemp_node_features' is -5"),
    (_inputs(x=[1, -1], edge_index=[1, -1]),
     {"parameters": {"edgemp_node_features": {"string_value": "8"}, "edgemp_edge_features": {"string_value": "-1"}}},
     "'edgemp_edge_features' is -1"),
])
def test_remote_model_widths_are_checked(meta, config, match):
    from edgemp.bench.v2client import RemoteModel

    with pytest.raises(EdgempError, match=match):
        RemoteModel.from_metadata(meta, config)


def test_server_stats_in_another_shape_are_skipped():
    from edgemp.bench.v2client import stats_delta

    assert stats_delta({"model_stats": [1]}, {"model_stats": [1]}, "m") is None
    odd = {"model_stats": [{"name": "m", "inference_stats": []}]}
    assert stats_delta(odd, odd, "m") is None


# -- CLI in-process --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gin_model(export_checkpoint, make_checkpoint):
    return export_checkpoint("gin"), make_checkpoint("gin")


def test_cli_inprocess_json_csv_raw_plot(gin_model, tmp_path):
    model, ckpt = gin_model
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, [
        "bench", str(model), "--checkpoint", str(ckpt), "--backend", "torch-eager,ort-cpu,ort-cuda,tensorrt",
        "--batch", "1,4", "--iterations", "40", "--warmup", "3", "--rounds", "4",
        "--synthetic", "nodes=25,edges=54,graphs=1", "--synthetic", "nodes=5-12,edges=4-20,graphs=6",
        "--json", str(out), "--csv", str(tmp_path / "r.csv"), "--raw", "--plot", str(tmp_path / "r.png"), "--quiet",
    ])
    assert res.exit_code == 0, res.output
    assert "vs eager" in res.output and "command: " in res.output
    doc = json.loads(out.read_text())
    env = doc["environment"]
    for key in ("edgemp", "onnxruntime", "torch", "cpu", "cpu_count", "command", "numpy"):
        assert env[key] is not None, key
    rows = doc["results"]
    ok = [r for r in rows if r["status"] == "ok"]
    # 2 backends x 2 batch sizes x (aggregate + 2 buckets)
    assert len(ok) == 12
    ort = next(r for r in ok if r["backend"] == "ort-cpu" and r["batch"] == 1 and r["bucket"] == "all")
    from edgemp.bench.env import file_sha256

    assert ort["model_sha256"] == file_sha256(model) and ort["precision"] == "fp32"
    assert ort["providers"] == ["CPUExecutionProvider"] and ort["threads"] == 1
    assert ort["speedup_p50_vs_eager"] > 0 and ort["max_abs_diff_vs_eager"] < 1e-4
    assert len(ort["raw_us"]) == 40 and ort["latency"]["count"] == 40
    assert set(ort["breakdown_mean_us"]) == {"collate", "run", "split"}
    # The floor columns: GEMM work per call from ORT's profile, against a same-run sgemm peak.
    assert ort["gemm_flops_per_call"] > 0 and 0 < ort["share_of_gemm_peak_p50"] < 1.5
    assert ort["gemm_peak_gflops"] > 0 and "GFLOP/s" in res.output
    assert set(ort["latency"]["percentiles_us"]) == {"p50", "p90", "p95", "p99", "p99.9"}
    eager = next(r for r in ok if r["backend"] == "torch-eager" and r["batch"] == 4 and r["bucket"] == "all")
    assert eager["speedup_p50_vs_eager"] == pytest.approx(1.0)
    statuses = {r["backend"]: r["status"] for r in rows if r["status"] != "ok"}
    assert statuses.get("tensorrt") == "unavailable"  # an .onnx is not a .plan engine: never faked
    import onnxruntime as ort_mod

    if "CUDAExecutionProvider" not in ort_mod.get_available_providers():
        assert statuses.get("ort-cuda") == "unavailable"
    # CSV: one row per result, every JSON figure as a column (nested keys joined with dots).
    with (tmp_path / "r.csv").open() as fh:
        reader = csv.DictReader(fh)
        csv_rows = list(reader)
        header = set(reader.fieldnames)
    assert len(csv_rows) == len(rows)
    for r in rows:
        r = {k: v for k, v in r.items() if k != "raw_us"}
        assert _flat_keys(r) <= header, _flat_keys(r) - header
    assert {"env.cpu", "env.command", "latency.percentiles_us.p99.9"} <= header
    raw_lines = (tmp_path / "r.raw.csv").read_text().splitlines()
    assert len(raw_lines) == 1 + sum(len(r.get("raw_us") or []) for r in rows)
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in d.items():
        if isinstance(v, dict):
            keys |= _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(f"{prefix}{k}")
    return keys


def test_require_stable_exits_nonzero(gin_model):
    model, _ = gin_model
    res = CliRunner().invoke(cli, ["bench", str(model), "--iterations", "30", "--warmup", "2",
                                   "--stability-threshold", "0.0000001", "--require-stable", "--quiet"])
    assert res.exit_code == 1
    assert "UNSTABLE" in res.output and res.output.strip().splitlines()[-1].startswith("error: ")


def test_baseline_skipped_with_a_note_without_checkpoint(gin_model):
    model, _ = gin_model
    res = CliRunner().invoke(cli, ["bench", str(model), "--backend", "torch-eager,ort-cpu", "--iterations", "10",
                                   "--warmup", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "torch-eager checkpoint: skipped: torch-eager needs the model's checkpoint" in res.output


@pytest.mark.parametrize("args", [
    ["bench"],
    ["bench", "missing.onnx"],
    ["bench", "M", "--batch", "abc"],
    ["bench", "M", "--batch", "0"],
    ["bench", "M", "--backend", "onnx-magic"],
    ["bench", "M", "--scenario", "server"],
    ["bench", "M", "--concurrency", "4"],
    ["bench", "M", "--percentiles", "50,120"],
    ["bench", "M", "--synthetic", "nodes=abc"],
    ["bench", "M", "--synthetic", "atoms=3"],
    ["bench", "M", "--iterations", "-3"],
    ["bench", "M", "--no-such-flag"],
    ["bench", "--url", "ftp://host", "--model", "m"],
    ["bench", "--url", "http://127.0.0.1:9"],
    ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--concurrency", "1", "--request-rate", "5"],
    ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--protocol", "grpc"],
    ["bench", "--url", "http://127.0.0.1:9", "--model", "m", "--duration", "1"],  # nothing listens on port 9
    ["bench", "M", "--duration", "nan"],
    ["bench", "M", "--duration", "inf"],
    ["bench", "M", "--duration", "1e300"],
])
def test_bad_arguments_give_one_line(args, gin_model):
    model, _ = gin_model
    args = [str(model) if a == "M" else a for a in args]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output


@pytest.mark.parametrize("flag,value", [("--duration", "nan"), ("--timeout", "inf"), ("--warmup-time", "nan"),
                                        ("--warmup-time", "1e300"), ("--request-rate", "5,inf"),
                                        ("--p99-bound-ms", "nan"), ("--stability-threshold", "nan")])
def test_server_mode_names_a_non_finite_number_before_connecting(flag, value):
    # float() takes nan and inf, and nan <= 0 is False: they reached time and numpy arithmetic
    res = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:9", "--model", "m", flag, value])
    assert res.exit_code == 1 and res.output.startswith(f"error: {flag} "), res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_bench_imports_no_torch():
    code = ("import sys, edgemp.bench, edgemp.bench.server, edgemp.bench.report, edgemp.cli.bench_cmds; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- server mode against a real `edgemp serve` ---------------------------------------------------
def test_server_mode_against_edgemp_serve(gin_model, tmp_path):
    from tests.server_utils import start_server

    model, _ = gin_model
    server = start_server(model, tmp_path, "--name", "gin", "--max-queue-delay-us", "0")
    try:
        out = tmp_path / "s.json"
        res = CliRunner().invoke(cli, [
            "bench", "--url", server.base, "--model", "gin", "--concurrency", "1,4", "--duration", "1",
            "--warmup-time", "0.3", "--json", str(out), "--csv", str(tmp_path / "s.csv"),
            "--plot", str(tmp_path / "s.png"), "--quiet",
        ])
        assert res.exit_code == 0, res.output
        doc = json.loads(out.read_text())
        rows = doc["results"]
        assert [r["load"] for r in rows] == ["c=1", "c=4"]
        for r in rows:
            assert r["status"] == "ok" and r["errors"] == 0 and r["successes"] > 10
            srv = r["server"]
            assert srv["success_count"] >= r["successes"]  # the server saw at least what we timed
            assert srv["queue_us"] is not None and srv["compute_infer_us"] > 0
            assert srv["mean_batch_graphs"] >= 1
        assert doc["environment"]["server"]["name"] == "edgemp"
        assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC
        # Open loop, JSON protocol, 3 graphs per request.
        res = CliRunner().invoke(cli, [
            "bench", "--url", server.base, "--model", "gin", "--request-rate", "40", "--distribution", "constant",
            "--protocol", "json", "--batch", "3", "--duration", "1", "--warmup-time", "0.2", "--quiet",
        ])
        assert res.exit_code == 0, res.output
        assert "constant 40/s" in res.output
        # Unknown model: one clear line from the server's 404.
        res = CliRunner().invoke(cli, ["bench", "--url", server.base, "--model", "nope", "--duration", "1"])
        assert res.exit_code == 1 and res.output.strip().startswith("error: GET ")
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_each_compiled_backend_really_compiles_whatever_came_before(tmp_path):
    """Every GraphNet shares one forward: without a dynamo reset per backend, a suite's later
    families hit the recompile limit and their "torch.compile" rows silently ran eager."""
    torch = pytest.importorskip("torch")
    import torch._dynamo.utils as dynamo_utils

    from edgemp.bench.torch_backends import TorchBackend
    from edgemp.data.synthetic import random_graph
    from edgemp.models import ModelConfig, build_model, save_checkpoint

    rng = np.random.default_rng(0)
    with torch._dynamo.config.patch(recompile_limit=1):  # the limit, reached after one family
        for family in ("gin", "gcn"):
            ckpt = save_checkpoint(build_model(ModelConfig(family, "regression", 4, 0, hidden=8, num_rounds=1)),
                                   tmp_path / family)
            backend = TorchBackend(ckpt, 1, compiled=True)
            before = dynamo_utils.counters["stats"]["unique_graphs"]
            backend.infer([random_graph(rng, 5, 8, 4) for _ in range(3)])
            assert dynamo_utils.counters["stats"]["unique_graphs"] > before, f"{family} ran eager, not compiled"
