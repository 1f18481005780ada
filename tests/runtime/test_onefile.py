"""The one-file `edgemp-serve` binary builds, starts, answers and drains — twice.

The file unpacks itself once into a per-user cache and runs from there afterwards, so the
second start must reuse the first one's copy (no second unpack). Builds in a fresh
base-install venv (no torch), so it also proves the server's install footprint. A minute
or two on 2 cores; set EDGEMP_SKIP_ONEFILE=1 to skip locally.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import build_sparse_model, random_graphs
from server_utils import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("EDGEMP_SKIP_ONEFILE") == "1", reason="EDGEMP_SKIP_ONEFILE=1"),
]


def test_onefile_binary_serves_and_drains(tmp_path):
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build_onefile.sh"), str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    binary = tmp_path / "dist" / "edgemp-serve"
    assert binary.is_file()

    import edgemp.runtime as rt

    model_path = build_sparse_model(tmp_path / "m.onnx")
    graphs = random_graphs(np.random.default_rng(0), 3)
    expected = rt.load(model_path).predict(graphs)

    cache = tmp_path / "cache"
    env = {**os.environ, "EDGEMP_SERVE_CACHE": str(cache)}
    for start in ("first", "cached"):
        _serve_once(binary, model_path, graphs, expected, env, tmp_path / f"serve-{start}.log")
        unpacked = [p for p in cache.iterdir() if not p.name.startswith(".")]
        assert len(unpacked) == 1 and not [p for p in cache.iterdir() if p.name.startswith(".unpack")], unpacked
        if start == "first":
            stamp = unpacked[0].stat().st_mtime_ns
    assert unpacked[0].stat().st_mtime_ns == stamp, "the cached start unpacked again"


def _serve_once(binary: Path, model_path: Path, graphs, expected, env: dict, log_path: Path) -> None:
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen([str(binary), str(model_path), "--port", str(port), "--no-access-log"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "binary did not become ready"
                time.sleep(0.05)
        body = json.dumps({"graphs": [{"x": g.x.tolist(), "edge_index": g.edge_index.tolist()} for g in graphs]})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/m/predict", body.encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            got = json.loads(r.read())["outputs"]
        for mine, want in zip(got, expected):
            for name, value in want.items():
                np.testing.assert_allclose(np.asarray(mine[name], np.float32), value, rtol=1e-6, atol=1e-6)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    assert code == 0, log_path.read_text()[-2000:]
