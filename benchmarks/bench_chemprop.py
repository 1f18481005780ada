"""chemprop v2 vs edgemp, end to end: SMILES in → prediction out, featurization included.

    python benchmarks/bench_chemprop.py [--checkpoint best.pt] [--rounds 5] [--json out.json]

Without ``--checkpoint`` a model is trained with chemprop's own CLI (defaults: BondMessagePassing,
d_h 300, depth 3, norm aggregation; 3 epochs on the packaged solubility training split) into
``--work-dir``. It is exported once with ``edgemp export`` (verified). Molecules: the 257
solubility test molecules, which training never saw. Engines, all on the same molecules,
interleaved round by round (the order alternates), one thread each:

* ``chemprop``: chemprop's predict path in-process — ``MoleculeDatapoint.from_smi`` +
  ``MoleculeDataset`` (its featurizer) + ``build_dataloader`` collate + ``MPNN`` under
  ``torch.inference_mode`` (eager);
* ``chemprop-compile``: the same with ``torch.compile(model, dynamic=True)`` (warm);
* ``edgemp``: :mod:`edgemp.chem` featurizer + the torch-free runtime (ONNX Runtime CPU);
* ``edgemp-served``: ``POST /v1/models/model/predict {"smiles": [...]}`` to ``edgemp serve``
  on 127.0.0.1 over one keep-alive connection (JSON both ways, batcher included).

At batch 1 each request is one molecule; at batch 64 one request carries 64. Reported:
molecules/s (median over rounds) and the ratio to chemprop eager; then cold start (fresh
process: imports + model load + first answer) and peak RSS of each, and parity (max |Δ|
against chemprop over all molecules).
"""
from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _molecules(split: str) -> list[tuple[str, str]]:
    with open(ROOT / "edgemp" / "data" / "solubility.csv", newline="") as fh:
        return [(r["smiles"], r["logS"]) for r in csv.DictReader(fh) if r["split"] == split]


def _train(work: Path) -> Path:
    ckpt = work / "chemprop" / "model_0" / "best.pt"
    if ckpt.is_file():
        return ckpt
    data = work / "train.csv"
    data.write_text("smiles,logS\n" + "".join(f"{s},{y}\n" for s, y in _molecules("train")))
    exe = Path(sys.executable).with_name("chemprop")
    subprocess.run([str(exe), "train", "--data-path", str(data), "--task-type", "regression", "--epochs", "3",
                    "--save-dir", str(work / "chemprop"), "-q"], check=True, capture_output=True)
    return ckpt


class ChempropEngine:
    def __init__(self, ckpt: Path, compile_model: bool) -> None:
        import torch
        from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
        from chemprop.models import load_model

        self.torch = torch
        self.model = load_model(str(ckpt)).eval()
        self.featurizer = SimpleMoleculeMolGraphFeaturizer()
        self.forward = torch.compile(self.model, dynamic=True) if compile_model else self.model

    def __call__(self, smiles: list[str]) -> np.ndarray:
        from chemprop.data import MoleculeDatapoint, MoleculeDataset, build_dataloader

        dset = MoleculeDataset([MoleculeDatapoint.from_smi(s) for s in smiles], self.featurizer)
        loader = build_dataloader(dset, batch_size=len(smiles), shuffle=False, num_workers=0)
        with self.torch.inference_mode():
            out = [self.forward(b.bmg, b.V_d, b.X_d) for b in loader]
        return self.torch.cat(out).reshape(len(smiles), -1).numpy()


class EdgempEngine:
    def __init__(self, onnx_path: Path) -> None:
        import edgemp.runtime as rt
        from edgemp.runtime.smiles import model_featurizer

        self.model = rt.load(onnx_path, providers="cpu", threads=1)
        self.featurizer = model_featurizer(self.model.spec)

    def __call__(self, smiles: list[str]) -> np.ndarray:
        graphs = [self.featurizer.featurize(s) for s in smiles]
        return np.stack([o["prediction"] for o in self.model.predict(graphs)])


class ServedEngine:
    def __init__(self, onnx_path: Path, work: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = (work / "serve.log").open("w")
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgemp.cli.serve", str(onnx_path), "--port", str(self.port), "--threads", "1",
             "--no-access-log"], stdout=self.log, stderr=subprocess.STDOUT)
        self.conn = self._wait_ready()
        self.ready_s = time.perf_counter() - self.start

    def _wait_ready(self) -> http.client.HTTPConnection:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/v2/health/ready")
                r = conn.getresponse()
                r.read()  # drain it, so the connection can carry the next request
                if r.status == 200:
                    return conn
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("edgemp serve did not become ready in 60 s")

    def __call__(self, smiles: list[str]) -> np.ndarray:
        self.conn.request("POST", "/v1/models/model/predict", json.dumps({"smiles": smiles}),
                          {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(body.decode())
        return np.array([o["prediction"] for o in json.loads(body)["outputs"]])

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


_COLD = {
    "chemprop": ("import sys, torch; torch.set_num_threads(1); from chemprop.models import load_model; "
                 "from chemprop.data import MoleculeDatapoint, MoleculeDataset, build_dataloader; "
                 "from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer; m = load_model(sys.argv[1]).eval(); "
                 "d = MoleculeDataset([MoleculeDatapoint.from_smi('CCO')], SimpleMoleculeMolGraphFeaturizer()); "
                 "b = next(iter(build_dataloader(d, batch_size=1, shuffle=False, num_workers=0))); "
                 "torch.inference_mode()(m)(b.bmg)"),
    "edgemp": ("import sys, edgemp.runtime as rt; from edgemp.runtime.smiles import model_featurizer; "
               "m = rt.load(sys.argv[2], providers='cpu', threads=1); "
               "m.predict([model_featurizer(m.spec).featurize('CCO')])"),
}


def _cold(kind: str, ckpt: Path, onnx_path: Path) -> tuple[float, float]:
    """Seconds from process start to the first answer (interpreter start-up included), and peak RSS (MB)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the forking parent
    code = ("import time; t0 = time.perf_counter(); " + _COLD[kind] + "; dt = time.perf_counter() - t0; "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(dt, int(hwm) / 1024)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(ckpt), str(onnx_path)], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    return wall, float(out.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="chemprop v2 best.pt (default: train one)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "edgemp-bench-chemprop")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--b1-molecules", type=int, default=64, help="molecules per round at batch 1")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile engine")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from edgemp.bench.env import capture_environment

    torch.set_num_threads(1)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or _train(args.work_dir)
    onnx_path = args.work_dir / "model.onnx"
    subprocess.run([sys.executable, "-m", "edgemp.cli.main", "export", "graph", str(ckpt), "-o", str(onnx_path)],
                   check=True, capture_output=True)
    smiles = [s for s, _ in _molecules("test")]

    engines = {"chemprop": ChempropEngine(ckpt, False)}
    if not args.no_compile:
        engines["chemprop-compile"] = ChempropEngine(ckpt, True)
    engines["edgemp"] = EdgempEngine(onnx_path)
    served = ServedEngine(onnx_path, args.work_dir)
    engines["edgemp-served"] = served
    try:
        reference = engines["chemprop"](smiles)
        parity = {k: float(np.abs(e(smiles) - reference).max()) for k, e in engines.items()}  # also warms up
        for e in engines.values():  # compile every batch-1 shape path once too
            for s in smiles[:8]:
                e([s])
        rates: dict = {k: {1: [], 64: []} for k in engines}
        order = list(engines)
        for r in range(args.rounds):
            for k in order if r % 2 == 0 else order[::-1]:
                e = engines[k]
                t0 = time.perf_counter()
                for s in smiles[: args.b1_molecules]:
                    e([s])
                rates[k][1].append(args.b1_molecules / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for i in range(0, 256, 64):
                    e(smiles[i : i + 64])
                rates[k][64].append(256 / (time.perf_counter() - t0))
        served_rss = served.rss_mb()
        served_ready = served.ready_s
    finally:
        served.close()
    cold = {"chemprop": _cold("chemprop", ckpt, onnx_path), "edgemp": _cold("edgemp", ckpt, onnx_path)}
    base = {b: float(np.median(rates["chemprop"][b])) for b in (1, 64)}
    print(f"model: {ckpt} → {onnx_path}; {len(smiles)} unseen molecules; {args.rounds} interleaved rounds, 1 thread")
    print("\n| engine | batch 1 mol/s | × chemprop | batch 64 mol/s | × chemprop | max abs diff vs chemprop |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in engines:
        m1, m64 = float(np.median(rates[k][1])), float(np.median(rates[k][64]))
        print(f"| {k} | {m1:,.0f} | {m1 / base[1]:.2f} | {m64:,.0f} | {m64 / base[64]:.2f} | {parity[k]:.2e} |")
    print("\nper round (mol/s), batch 1 | batch 64:")
    for k in engines:
        print(f"  {k}: {[round(v) for v in rates[k][1]]} | {[round(v) for v in rates[k][64]]}")
    print("\n| engine | cold start to first answer (s) | peak RSS (MB) |")
    print("|---|---:|---:|")
    print(f"| chemprop (in-process) | {cold['chemprop'][0]:.2f} | {cold['chemprop'][1]:.0f} |")
    print(f"| edgemp (in-process) | {cold['edgemp'][0]:.2f} | {cold['edgemp'][1]:.0f} |")
    print(f"| edgemp serve (spawn → ready, warm-up included) | {served_ready:.2f} | {served_rss:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"rates": {k: {str(b): v for b, v in r.items()} for k, r in rates.items()},
                                         "parity": parity, "cold": cold, "served_ready_s": served_ready,
                                         "served_rss_mb": served_rss, "environment": capture_environment(sys.argv)},
                                        indent=2))
    print("\nenvironment:", json.dumps(capture_environment(sys.argv)))


if __name__ == "__main__":
    main()
