"""MiniLM-L6 through `edgemp serve`: V2 BYTES (stock tritonclient) and /v1 {"texts"} vs in-process.

    python benchmarks/bench_text_server.py --models /tmp/edgemp-bench-minilm/edgemp-fp32,/tmp/edgemp-bench-minilm/edgemp-int8

MODELS are exported text model dirs (benchmarks/bench_minilm.py writes fp32 and int8 ones into its
--work-dir). Each model is served by the real ``edgemp serve`` (a subprocess on a free 127.0.0.1
port, ``--threads 1``); per request, the same texts go in-process (``TextModel.predict``), over V2
binary BYTES with tritonclient, and over ``POST /v1/models/m/predict {"texts": [...]}``,
interleaved request by request. Then ``--concurrency`` clients send one mixed-length text each
(V2 BYTES) to measure what dynamic batching of texts does under load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from edgemp.bench.env import capture_environment
from edgemp.bench.text import LengthMix, synthetic_texts
from edgemp.bench.local_server import free_port, wait_until_ready
from edgemp.errors import EdgempError


def _serve(model_dir: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgemp.cli.serve", str(model_dir), "--name", "m", "--port", str(port),
           "--threads", "1", "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", proc, timeout_s=120)
    except EdgempError as e:
        proc.kill()
        raise SystemExit(f"{e}: {log.read_text()[-2000:]}") from e
    return proc, port


def _v2(client, texts: list[str]) -> np.ndarray:
    import tritonclient.http as th

    arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    inp = th.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(arr, binary_data=True)
    out = client.infer("m", [inp], outputs=[th.InferRequestedOutput("embedding", binary_data=True)])
    return out.as_numpy("embedding")


def _v1(port: int, texts: list[str]) -> np.ndarray:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/m/predict", method="POST",
                                 data=json.dumps({"texts": texts}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return np.asarray(json.loads(r.read())["embeddings"], np.float32)


def _pct(v: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(v) / 1e6, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="comma-separated text model dirs")
    ap.add_argument("--iters-b1", type=int, default=60)
    ap.add_argument("--iters-b32", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests-per-client", type=int, default=25)
    args = ap.parse_args()
    import tritonclient.http as th

    from edgemp.runtime.text import load_text_model

    rows, conc_rows = [], []
    for model_dir in [Path(m) for m in args.models.split(",")]:
        local = load_text_model(model_dir, providers="cpu", threads=1)
        tok = __import__("tokenizers").Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        seq128 = synthetic_texts(tok, [128] * args.iters_b1, seed=1)
        mix = synthetic_texts(tok, LengthMix.parse("realistic").sample(32 * args.iters_b32 + args.iters_b1, 256, seed=2), seed=2)
        cases = [("seq128 b1", [[t] for t in seq128]), ("mix b1", [[t] for t in mix[: args.iters_b1]]),
                 ("mix b32", [mix[i * 32:(i + 1) * 32] for i in range(args.iters_b32)])]
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = _serve(model_dir, Path(tmp) / "serve.log")
            try:
                client = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=60, network_timeout=60)
                paths = {"in-process": lambda b: local.embed(b), "V2 BYTES (tritonclient, binary)": lambda b: _v2(client, b),
                         "/v1 {\"texts\"} JSON": lambda b: _v1(port, b)}
                for label, batches in cases:
                    for fn in paths.values():  # warm-up, and every path answers the same
                        want = local.embed(batches[0])
                        got = fn(batches[0])
                        if not np.allclose(got, want, atol=1e-4):
                            raise SystemExit(f"{label}: a served path disagrees with in-process")
                    lat: dict[str, list[float]] = {k: [] for k in paths}
                    for i, b in enumerate(batches):
                        for name in (list(paths) if i % 2 == 0 else list(reversed(paths))):
                            t0 = time.perf_counter_ns()
                            paths[name](b)
                            lat[name].append(time.perf_counter_ns() - t0)
                    base = _pct(lat["in-process"], 50)
                    for name, v in lat.items():
                        rows.append((model_dir.name, label, name, _pct(v, 50), _pct(v, 99), _pct(v, 50) - base))
                    print(f"  {model_dir.name} {label} done", file=sys.stderr)
                client.close()
                # concurrency: clients each send single mixed texts back to back (V2 binary BYTES)
                done: list[float] = []
                lock = threading.Lock()

                def worker(k: int) -> None:
                    c = th.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=60, network_timeout=60)
                    mine = []
                    for j in range(args.requests_per_client):
                        t0 = time.perf_counter_ns()
                        _v2(c, [mix[(k * args.requests_per_client + j) % len(mix)]])
                        mine.append(time.perf_counter_ns() - t0)
                    c.close()
                    with lock:
                        done.extend(mine)

                threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.concurrency)]
                t0 = time.perf_counter()
                for th_ in threads:
                    th_.start()
                for th_ in threads:
                    th_.join()
                wall = time.perf_counter() - t0
                conc_rows.append((model_dir.name, args.concurrency, len(done) / wall, _pct(done, 50), _pct(done, 99)))
            finally:
                proc.terminate()
                proc.wait(30)
    print("| model | case | path | p50 ms | p99 ms | p50 added vs in-process ms |\n|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:+.2f} |")
    print(f"\n| model | concurrent clients (1 mixed text each, V2 BYTES) | texts/s | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for r in conc_rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.2f} |")
    env = capture_environment()
    print(f"\ncommand: {env['command']}")
    print("environment: " + json.dumps({k: env.get(k) for k in ("cpu", "cpu_count", "onnxruntime", "python", "load_average_1m")}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
