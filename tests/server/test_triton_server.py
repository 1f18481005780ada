"""A real Triton Inference Server (the nvidia-pytriton wheel's tritonserver 2.51, Python backend)
serving an edgemp repository exported with ``--triton-backend python``, started by
``edgemp triton serve`` and queried with the stock tritonclient over HTTP and gRPC.

Needs the backend environment ``scripts/build_triton_env.sh`` builds (the README's test
command builds it); without it the module is skipped, saying so.
"""
from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edgemp.data.synthetic import random_sized_graphs
from edgemp.graph import Graph
from edgemp.graphio import read_graphs, write_jsonl
from server_utils import TRITON_ENV, free_port, needs_triton_server, triton_inputs

pytestmark = needs_triton_server()
pytest.importorskip("torch")
F, FE = 8, 4  # make_checkpoint's feature widths
MAX_BATCH = 32


def _graphs(seed: int, k: int, max_nodes: int = 40) -> list[Graph]:
    """k graphs of different sizes (1..max_nodes nodes), some without edges."""
    return random_sized_graphs(np.random.default_rng(seed), k, F, FE, max_nodes=max_nodes)


class _Triton:
    def __init__(self, proc: subprocess.Popen, log: Path, http: int, grpc: int, metrics: int) -> None:
        self.proc, self.log, self.http, self.grpc, self.metrics = proc, log, http, grpc, metrics

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(repo: Path, tmp: Path) -> _Triton:
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = tmp / "triton.log"
    cmd = [sys.executable, "-m", "edgemp.cli.main", "triton", "serve", str(repo), "--backend-env", str(TRITON_ENV),
           "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--exit-timeout", "10"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp)
    t = _Triton(proc, log, http, grpc, metrics)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"edgemp triton serve exited {proc.returncode} before ready:\n{t.log_text()[-4000:]}")
        if "Triton ready:" in t.log_text():
            return t
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"Triton not ready within 180 s:\n{t.log_text()[-4000:]}")


@pytest.fixture(scope="module")
def triton(tmp_path_factory, make_checkpoint):
    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import export_triton_repo

    tmp = tmp_path_factory.mktemp("triton_server")
    repo = tmp / "repo"
    export_triton_repo(make_checkpoint("gine"), repo,
                       TritonRepoConfig(name="gine", backend="python", max_batch_size=MAX_BATCH, verify_mixes=4))
    t = _start(repo, tmp)
    t.repo = repo
    yield t
    if t.proc.poll() is None:
        t.proc.send_signal(signal.SIGTERM)
        try:
            t.proc.wait(60)
        except subprocess.TimeoutExpired:
            t.proc.kill()


@pytest.fixture(scope="module")
def expected(tmp_path_factory, export_checkpoint):
    """expected(graphs) -> [G, 1] from `edgemp predict` on the plain (sparse) export of the same checkpoint."""
    from click.testing import CliRunner

    from edgemp.cli.main import cli

    plain = export_checkpoint("gine")
    tmp = tmp_path_factory.mktemp("predict")

    def run(graphs: list[Graph], tag: str) -> tuple[list[Graph], np.ndarray]:
        path = tmp / f"{tag}.jsonl"
        write_jsonl(graphs, path)
        res = CliRunner().invoke(cli, ["predict", str(plain), str(path), "--providers", "cpu"])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line)["outputs"]["prediction"] for line in res.stdout.splitlines() if line.strip()]
        return read_graphs(path), np.asarray(rows, np.float32).reshape(len(graphs), -1)

    return run


def _stats(client) -> tuple[int, int]:
    s = client.get_inference_statistics("gine")["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def test_http_and_grpc_answers_equal_edgemp_predict(triton, expected):
    import tritonclient.grpc as tg
    import tritonclient.http as th

    graphs, want = expected(_graphs(0, 40), "mixed")
    with th.InferenceServerClient(f"127.0.0.1:{triton.http}", concurrency=8) as client:
        assert client.is_server_ready() and client.is_model_ready("gine")
        meta = client.get_model_metadata("gine")
        assert [i["name"] for i in meta["inputs"]] == ["x", "edge_index", "edge_attr"]
        pending = [client.async_infer("gine", triton_inputs(g, th)) for g in graphs]
        got_http = np.concatenate([p.get_result().as_numpy("prediction") for p in pending])
    client = tg.InferenceServerClient(f"127.0.0.1:{triton.grpc}")
    try:
        got_grpc = np.concatenate([client.infer("gine", triton_inputs(g, tg)).as_numpy("prediction") for g in graphs])
    finally:
        client.close()
    assert got_http.shape == got_grpc.shape == want.shape == (40, 1)
    np.testing.assert_allclose(got_http, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_grpc, want, rtol=0, atol=1e-5)


def test_32_concurrent_clients_are_batched_by_tritons_dynamic_batcher(triton, expected):
    import tritonclient.http as th

    graphs, want = expected(_graphs(1, 256), "concurrent")
    with th.InferenceServerClient(f"127.0.0.1:{triton.http}") as client:
        before = _stats(client)

    def one_client(worker: int) -> list[tuple[int, np.ndarray]]:
        with th.InferenceServerClient(f"127.0.0.1:{triton.http}") as c:
            return [(i, c.infer("gine", triton_inputs(graphs[i], th)).as_numpy("prediction"))
                    for i in range(worker, len(graphs), 32)]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = [a for part in pool.map(one_client, range(32)) for a in part]
    got = np.concatenate([a for _, a in sorted(answers, key=lambda t: t[0])])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # every caller got its own graph's row
    with th.InferenceServerClient(f"127.0.0.1:{triton.http}") as client:
        after = _stats(client)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(graphs)
    assert executions < inferences, (executions, inferences)  # requests of different sizes shared executions


def test_a_malformed_graph_fails_only_its_own_request(triton, expected):
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    graphs, want = expected(_graphs(2, 12), "with_bad")
    bad = Graph(np.ones((2, F), np.float32), np.array([[0], [5]], np.int64), np.ones((1, FE), np.float32))
    short = triton_inputs(graphs[0], th)
    short[0] = th.InferInput("x", [1, 7], "FP32")
    short[0].set_data_from_numpy(np.zeros((1, 7), np.float32))
    with th.InferenceServerClient(f"127.0.0.1:{triton.http}", concurrency=16) as client:
        # the bad ones are sent amid the good ones, so the batcher puts them into the same executions
        pending = [client.async_infer("gine", triton_inputs(g, th)) for g in graphs[:6]]
        bad_pending = [client.async_infer("gine", triton_inputs(bad, th)), client.async_infer("gine", short)]
        pending += [client.async_infer("gine", triton_inputs(g, th)) for g in graphs[6:]]
        got = np.concatenate([p.get_result().as_numpy("prediction") for p in pending])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        with pytest.raises(InferenceServerException, match="edge_index holds node 5 but the graph has 2 nodes"):
            bad_pending[0].get_result()
        with pytest.raises(InferenceServerException, match="not a multiple of 8 node features"):
            bad_pending[1].get_result()
        assert client.is_model_ready("gine")


def test_metrics_endpoint_counts_the_model(triton):
    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="gine",version="1"}' in text


def test_edgemp_bench_url_drives_triton_in_its_one_graph_layout(triton):
    """The side-by-side benchmark's client: widths from /config, one flat graph per request, no errors."""
    from edgemp.bench.server import ServerBenchConfig, run_server_bench
    from edgemp.errors import EdgempError

    url = f"http://127.0.0.1:{triton.http}"
    report = run_server_bench(ServerBenchConfig(url=url, model="gine", concurrency=(8,), duration_s=1.0, warmup_s=0.2))
    (row,) = report.rows
    assert row.ok and row.metrics["errors"] == 0 and row.metrics["successes"] > 0
    assert row.metrics["server"]["executions"] > 0  # Triton's own statistics were read
    with pytest.raises(EdgempError, match="one graph per request"):
        run_server_bench(ServerBenchConfig(url=url, model="gine", concurrency=(1,), duration_s=0.5, batch=4))


def test_a_model_that_fails_to_load_is_one_error_with_tritons_reason(triton, tmp_path):
    import shutil

    from click.testing import CliRunner

    from edgemp.cli.main import cli

    repo = tmp_path / "broken"
    shutil.copytree(triton.repo, repo)
    (repo / "gine" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    res = CliRunner().invoke(cli, ["triton", "serve", str(repo), "--backend-env", str(TRITON_ENV), "--quiet",
                                   "--http-port", str(free_port()), "--grpc-port", str(free_port()),
                                   "--metrics-port", str(free_port())])
    assert res.exit_code == 1, res.output
    assert "exited with code" in res.output and "before it was ready" in res.output, res.output
    assert "model.onnx" in res.output, res.output  # Triton's own reason, from model.py's initialize


def test_sigterm_stops_triton_cleanly(triton, expected):
    """Last in this module: stops the shared server. SIGTERM to `edgemp triton serve` reaches tritonserver,
    which unloads the model and exits 0; so does the command."""
    import tritonclient.http as th

    graphs, want = expected(_graphs(3, 8), "before_stop")
    with th.InferenceServerClient(f"127.0.0.1:{triton.http}", concurrency=8) as client:
        pending = [client.async_infer("gine", triton_inputs(g, th)) for g in graphs]
        got = np.concatenate([p.get_result().as_numpy("prediction") for p in pending])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    triton.proc.send_signal(signal.SIGTERM)
    assert triton.proc.wait(60) == 0, triton.log_text()[-3000:]
    log = triton.log_text()
    assert "successfully unloaded" in log.lower() or "unloading" in log.lower(), log[-3000:]
    with pytest.raises(OSError):  # the server process is gone, not just the wrapper
        urllib.request.urlopen(f"http://127.0.0.1:{triton.http}/v2/health/live", timeout=2)


# -- bad input: one line, exit 1, before any server starts ---------------------------------
def test_bad_repositories_are_one_clear_error(tmp_path, make_checkpoint):
    from click.testing import CliRunner

    from edgemp.cli.main import cli
    from edgemp.export.triton_config import TritonRepoConfig
    from edgemp.export.triton_repo import export_triton_repo

    ort_repo = tmp_path / "ort"
    export_triton_repo(make_checkpoint("gin"), ort_repo, TritonRepoConfig(name="gin", verify_mixes=0))
    empty = tmp_path / "empty"
    empty.mkdir()
    no_cfg = tmp_path / "nocfg"
    (no_cfg / "m" / "1").mkdir(parents=True)
    cases = [
        (tmp_path / "missing", "is not a directory"),
        (empty, "holds no model folders"),
        (no_cfg, "has no config.pbtxt"),
        (ort_repo, "export with --triton-backend python"),
    ]
    for repo, why in cases:
        res = CliRunner().invoke(cli, ["triton", "serve", str(repo), "--backend-env", str(TRITON_ENV), "--quiet"])
        assert res.exit_code == 1, (repo, res.output)
        assert why in res.output and len(res.output.strip().splitlines()) == 1, (repo, res.output)
    res = CliRunner().invoke(cli, ["triton", "serve", str(ort_repo), "--backend-env", str(tmp_path / "noenv")])
    assert res.exit_code == 1 and "scripts/build_triton_env.sh" in res.output
    if int(np.__version__.split(".")[0]) >= 2:  # this test's own environment would break the stub's outputs
        res = CliRunner().invoke(cli, ["triton", "serve", str(ort_repo), "--backend-env", sys.prefix])
        assert res.exit_code == 1 and "needs numpy<2" in res.output, res.output
