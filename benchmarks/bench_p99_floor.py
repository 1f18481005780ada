"""The p99 bound at 32 clients beside its floor on this host: what a front end with no per-request work could reach.

Issue 12 asks, at 32 closed-loop clients on GIN (hidden 64, 3 rounds, molecule-sized graphs),
for p99 <= max-queue-delay + 3 × the mean batch compute. This runs, in alternating windows of
the same run and under the same wrk load (benchmarks/wrk_load.py):

- ``edgemp serve`` with dynamic batching on and no queue delay (the real CLI, a subprocess);
- ``floor_server`` (benchmarks/floor_server.c, built here with ``cc -O2``): one C thread that
  reads, frames, batches whatever requests are complete, spins for the batch compute that
  ``edgemp serve`` measured for a batch of that size (its own statistics, in a warm-up run
  first), and writes a real answer of edgemp's. No decoding, collation, Python or encoding:
  a front end on one core serving this model is slower, so a p99 it misses here, none meets.

Each row's bound uses that server's own mean batch compute (edgemp's statistics; the floor's
spins), and shows the share of the servers' CPU time the hypervisor took in its window (steal).
``--pin`` puts both servers on the first CPU and wrk on the others: the floor is a floor for a
server on one core. Unpinned, a server whose reads overlap its compute on the second core could
do better than this one thread, so only pinned rows bound every front end.

Usage: python benchmarks/bench_p99_floor.py [--rounds 4] [--seconds 3] [--pin] [--clients 32] [--delay-us 0]
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_server import _stats, export_random, remote_model, start_server  # this script's folder is on sys.path
from edgemp.bench.local_server import free_port
from edgemp.bench.v2client import encode, request_tensors
from edgemp.data.synthetic import molecule_like_graphs
import wrk_load

HERE = Path(__file__).resolve().parent
MAX_BATCH = 64


def compute_table(stats: dict) -> list[float]:
    """Mean batch compute in µs for sizes 1..MAX_BATCH: each size edgemp ran at least 20 times,
    as measured; the others (a few cold or odd batches) on the count-weighted straight line."""
    seen = {b["batch_size"]: (b["compute_infer"]["count"], b["compute_infer"]["ns"] / 1e3) for b in stats["batch_stats"]
            if b["compute_infer"]["count"] >= 20}
    sizes = np.array(sorted(seen), float)
    counts = np.array([seen[s][0] for s in sorted(seen)], float)
    means = np.array([seen[s][1] / seen[s][0] for s in sorted(seen)])
    if len(sizes) > 1:
        slope, intercept = np.polyfit(sizes, means, 1, w=np.sqrt(counts))
    else:
        slope, intercept = means[0] / sizes[0], 0.0
    return [seen[n][1] / seen[n][0] if n in seen else max(intercept + slope * n, 1.0) for n in range(1, MAX_BATCH + 1)]


def _exchange(port: int, wire: bytes) -> bytes:
    """One request on a fresh connection: the whole answer, head and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(wire)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        end = buf.index(b"\r\n\r\n") + 4
        length = next(int(line.split(b":")[1]) for line in buf[:end].split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(buf) < end + length:
            buf += s.recv(65536)
    if not buf.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {buf[:80]!r}")
    return buf[:end + length]


def raw_answer(port: int, body: bytes, header_length: str) -> bytes:
    """The answer edgemp writes for one request, as bytes on the wire: what the floor writes back."""
    return _exchange(port, (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: "
                            f"{header_length}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)


def floor_stats(port: int) -> tuple[int, int, int]:
    """(batches, requests, spin ns) the floor server has run so far."""
    answer = _exchange(port, b"GET /floor/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    batches, requests, spin_ns = answer.split(b"\r\n\r\n", 1)[1].split()
    return int(batches), int(requests), int(spin_ns)


def build_floor(tmp: Path) -> Path:
    """benchmarks/floor_server.c, compiled into ``tmp``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("needs a C compiler (cc) to build benchmarks/floor_server.c")
    exe = tmp / "floor_server"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "floor_server.c")], check=True)
    return exe


def start_floor(tmp: Path, answer: bytes, table: list[float], delay_us: int, cpus: set[int] | None,
                max_batch: int = MAX_BATCH) -> tuple[subprocess.Popen, int]:
    """The floor server, ready: it spins ``table[n - 1]`` µs for a batch of n and answers ``answer``."""
    exe = build_floor(tmp)
    (tmp / "answer.bin").write_bytes(answer)
    port = free_port()
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    proc = subprocess.Popen([str(exe), str(port), str(tmp / "answer.bin"), str(max_batch),
                             ",".join(f"{t:.1f}" for t in table[:max_batch]), str(delay_us)],
                            stdout=subprocess.PIPE, preexec_fn=pin)
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit(f"floor_server did not start (exit {proc.poll()})")
    return proc, port


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0, help="wrk time per server per round")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--delay-us", type=int, default=0, help="both servers' max queue delay")
    ap.add_argument("--pin", action="store_true", help="servers on the first CPU, wrk on the others")
    args = ap.parse_args(argv)
    if not wrk_load.available():
        raise SystemExit("needs wrk on PATH (apt-get install wrk)")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if args.pin and len(cpus) > 1 else None
    out = [f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}",
           f"machine: {platform.machine()}, {os.cpu_count()} cores; load average (1 min) {os.getloadavg()[0]:.1f} "
           f"at the start; " + (f"servers on CPU {cpus[0]}, wrk on CPU {','.join(map(str, cpus[1:]))}"
                               if server_cpus else "servers and wrk share the CPUs"), ""]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = export_random("gin", 16, 0, tmp / "gin.onnx")
        graphs = molecule_like_graphs(256, 16, seed=0)
        srv = start_server(path, "--max-batch-graphs", str(MAX_BATCH), "--max-queue-size", "4096",
                           "--max-queue-delay-us", str(args.delay_us), cpus=server_cpus)
        watched = sorted(server_cpus or cpus)  # whose stolen time each window reports
        floor = None
        try:
            remote = remote_model(srv)
            encoded = [encode(request_tensors([g], remote), "binary") for g in graphs]
            bodies = [b for b, _ in encoded]
            lengths = [h["Inference-Header-Content-Length"] for _, h in encoded]
            script = wrk_load.write_script(tmp / "wrk", "/v2/models/m/infer", bodies, lengths)
            if server_cpus:
                os.sched_setaffinity(0, set(cpus[1:]))  # wrk inherits it
            edgemp_url = f"http://127.0.0.1:{srv.port}"
            wrk_load.run(edgemp_url, args.clients, max(args.seconds, 3), script)  # warm-up: the compute table
            table = compute_table(_stats(srv.port))
            floor, floor_port = start_floor(tmp, raw_answer(srv.port, bodies[0], lengths[0]), table, args.delay_us,
                                           server_cpus)
            floor_url = f"http://127.0.0.1:{floor_port}"
            ceilings = {"edgemp serve": wrk_load.run(f"{edgemp_url}/v2/health/ready", args.clients, 2).rate,
                        "floor": wrk_load.run(f"{floor_url}/v2/health/ready", args.clients, 2).rate}
            rows = []
            for r in range(args.rounds):
                before, stolen = _stats(srv.port), wrk_load.steal_ticks(watched)
                res = wrk_load.run(edgemp_url, args.clients, args.seconds, script)
                after, stolen = _stats(srv.port), wrk_load.steal_ticks(watched) - stolen
                execs = after["execution_count"] - before["execution_count"]
                compute = sum(b["compute_infer"]["ns"] for b in after["batch_stats"]) - sum(
                    b["compute_infer"]["ns"] for b in before["batch_stats"])
                mean_batch = (after["inference_count"] - before["inference_count"]) / max(execs, 1)
                rows.append((r + 1, "edgemp serve", res, mean_batch, compute / max(execs, 1) / 1e3, stolen))
                (b0, q0, s0), stolen = floor_stats(floor_port), wrk_load.steal_ticks(watched)
                res = wrk_load.run(floor_url, args.clients, args.seconds, script)
                (b1, q1, s1), stolen = floor_stats(floor_port), wrk_load.steal_ticks(watched) - stolen
                rows.append((r + 1, "floor", res, (q1 - q0) / max(b1 - b0, 1), (s1 - s0) / max(b1 - b0, 1) / 1e3,
                             stolen))
        finally:
            os.sched_setaffinity(0, set(cpus))
            srv.stop()
            if floor is not None:
                floor.kill()
                floor.wait()
    out += [f"GIN (hidden 64, 3 rounds, random weights), 256 molecule-sized graphs, one per request, V2 binary; wrk, "
            f"1 thread, {args.clients} connections, {args.seconds:g} s per window; edgemp serve --max-batch-graphs "
            f"{MAX_BATCH} --max-queue-delay-us {args.delay_us}; the floor with the same delay. The floor spins edgemp's warm-up compute per batch size: "
            + ", ".join(f"{n}: {table[n - 1]:.0f} µs" for n in (1, 8, 16, 24, 32, 64)), "",
            f"wrk's own ceiling (against /v2/health/ready, 2 s): edgemp serve {ceilings['edgemp serve']:.0f} req/s, "
            f"floor {ceilings['floor']:.0f} req/s", "",
            f"| round | server | graphs/s | p50 µs | p99 µs | mean batch | mean batch compute µs | bound µs "
            f"({args.delay_us} + 3 × compute) | p99 within | p99 / bound | stolen by the host (CPU "
            f"{','.join(map(str, watched))}) |", "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r, name, res, mean_batch, compute_us, stolen in rows:
        bound = args.delay_us + 3 * compute_us
        share = wrk_load.stolen_share(stolen, args.seconds, len(watched))
        failed = f" ({res.failures} failed)" if res.failures else ""
        out.append(f"| {r} | {name}{failed} | {res.rate:.0f} | {res.p50_us:.0f} | {res.p99_us:.0f} | {mean_batch:.1f} | "
                   f"{compute_us:.0f} | {bound:.0f} | {'yes' if res.p99_us <= bound else 'no'} | "
                   f"{res.p99_us / bound:.2f} | {share:.1%} |")
    out += ["", f"load average (1 min) {os.getloadavg()[0]:.1f} at the end"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
