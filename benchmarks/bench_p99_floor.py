"""The p99 bound at 32 clients beside a reference server with no per-request work, on this host.

Issue 12 asks, at 32 closed-loop clients on GIN (hidden 64, 3 rounds, molecule-sized graphs),
for p99 <= max-queue-delay + 3 × the mean batch compute. This runs, in alternating windows of
the same run and under the same wrk load (benchmarks/wrk_load.py):

- ``edgemp serve`` with dynamic batching on (the real CLI, a subprocess);
- ``floor_server`` (benchmarks/floor_server.c, built here with ``cc -O2``): one C thread with
  edgemp's batching policy that reads and frames HTTP/1.1, spins for the model's CPU time for
  each batch, and writes a recorded answer of edgemp's. It has the model's cost and the
  sockets' cost, and nothing else: what this policy, on this core, with this model, could reach
  without a per-request Python path;
- ``py_floor_server`` (benchmarks/py_floor_server.py): the real model in Python on uvloop, as
  ``edgemp serve`` runs it, with the same policy, but a request path of rows instead of objects
  (a request is its body and its header's plan; the batch is collated and checked over the whole
  batch, answers are the kept head plus the rows): what the Python request path would cost
  written that way. Its answers are checked against edgemp's, byte for byte but the Date,
  before the load.

The model's time per batch size comes from the model alone, in this process before the load
(``Model.validated_batch`` + ``run_batch`` + ``split``, the batcher's "compute", on the
servers' CPU, median per size). Each row shows two bounds: the issue's (delay + 3 × the mean
batch compute the server itself reported: edgemp's statistics, the floor's spins) and a common
one (delay + 3 × the model's time for the batch sizes that server ran), since edgemp's own figure
also holds its event loop's time when both share one core. The last columns are the share of
the servers' CPUs and of wrk's the hypervisor took in the window (steal): a window is only
quiet when both are near zero. ``--pin`` puts both servers on the first CPU and wrk on the others.

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
import time
from pathlib import Path

import numpy as np

from bench_server import _stats, export_random, remote_model, start_server  # this script's folder is on sys.path
from edgemp.bench.local_server import free_port
from edgemp.bench.v2client import encode, request_tensors
from edgemp.data.synthetic import molecule_like_graphs
import wrk_load

HERE = Path(__file__).resolve().parent
MAX_BATCH = 64


def model_table(path: Path, graphs: list, cpus: set[int] | None, runs: int = 31) -> list[float]:
    """The model's median time in µs for each batch size 1..MAX_BATCH, alone in this process on ``cpus``:
    the batcher's compute (validate and collate, run, split), nothing of a server."""
    import edgemp.runtime as rt

    model = rt.load(path)
    saved = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        for n in (MAX_BATCH, 32, 16, 8, 4, 2, 1) * 3:  # ORT's first runs and its arena's growth are not the model
            _, batch = model.validated_batch(graphs[:n])
            model.split(model.run_batch(batch), batch)
        table = []
        for n in range(1, MAX_BATCH + 1):
            times = []
            for r in range(runs + 2):  # two warm-ups
                items = [graphs[(r * n + i) % len(graphs)] for i in range(n)]
                t0 = time.perf_counter_ns()
                _, batch = model.validated_batch(items)
                model.split(model.run_batch(batch), batch)
                times.append(time.perf_counter_ns() - t0)
            table.append(float(np.median(times[2:])) / 1e3)
        return table
    finally:
        os.sched_setaffinity(0, saved)


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
    """The floor server, ready: it spins ``table[n - 1]`` µs of CPU for a batch of n and answers ``answer``."""
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


def start_py_floor(model: Path, delay_us: int, cpus: set[int] | None,
                   max_batch: int = MAX_BATCH) -> tuple[subprocess.Popen, int]:
    """benchmarks/py_floor_server.py on ``model``, ready."""
    port = free_port()
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    proc = subprocess.Popen([sys.executable, str(HERE / "py_floor_server.py"), str(model), str(port), str(delay_us),
                             str(max_batch)], stdout=subprocess.PIPE, preexec_fn=pin)
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit(f"py_floor_server did not start (exit {proc.poll()})")
    return proc, port


def same_answers(port: int, other: int, bodies: list[bytes], lengths: list[str]) -> None:
    """Exit unless the two servers answer each request with the same bytes (the Date apart)."""
    for body, length in zip(bodies, lengths):
        mine, theirs = (raw_answer(p, body, length) for p in (port, other))
        strip = [b"".join(line for line in a.split(b"\r\n") if not line.startswith(b"Date: ")) for a in (mine, theirs)]
        if strip[0] != strip[1]:
            raise SystemExit(f"py_floor_server answered {mine[-200:]!r} where edgemp serve answered {theirs[-200:]!r}")


def _batch_sizes(after: dict, before: dict) -> dict[int, int]:
    """How many batches of each size edgemp ran between two statistics."""
    counted = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    return {b["batch_size"]: b["compute_infer"]["count"] - counted.get(b["batch_size"], 0)
            for b in after["batch_stats"]}


def _model_mean(sizes: dict[int, int], table: list[float]) -> float:
    """The model's mean time over these batches (a size past the table: the largest, scaled by the size)."""
    total = sum(sizes.values())
    return sum(k * table[min(n, MAX_BATCH) - 1] * max(1.0, n / MAX_BATCH) for n, k in sizes.items()) / max(total, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=3, help="wrk time per server per round (whole seconds, as wrk)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--delay-us", type=int, default=0, help="both servers' max queue delay")
    ap.add_argument("--pin", action="store_true", help="servers on the first CPU, wrk on the others")
    args = ap.parse_args(argv)
    if not wrk_load.available():
        raise SystemExit("needs wrk on PATH (apt-get install wrk)")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if args.pin and len(cpus) > 1 else None
    watched = sorted(server_cpus or cpus)  # whose stolen time each window reports
    wrk_cpus = sorted(set(cpus) - set(watched)) or cpus
    out = [f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}",
           f"machine: {platform.machine()}, {os.cpu_count()} cores; load average (1 min) {os.getloadavg()[0]:.1f} "
           f"at the start; " + (f"servers on CPU {cpus[0]}, wrk on CPU {','.join(map(str, wrk_cpus))}"
                               if server_cpus else "servers and wrk share the CPUs"), ""]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = export_random("gin", 16, 0, tmp / "gin.onnx")
        graphs = molecule_like_graphs(256, 16, seed=0)
        stolen0, t0 = wrk_load.steal_ticks(watched), time.monotonic()
        table = model_table(path, graphs, server_cpus)
        table_stolen = wrk_load.stolen_share(wrk_load.steal_ticks(watched) - stolen0, time.monotonic() - t0,
                                             len(watched))
        srv = start_server(path, "--max-batch-graphs", str(MAX_BATCH), "--max-queue-size", "4096",
                           "--max-queue-delay-us", str(args.delay_us), cpus=server_cpus)
        floor = rows_server = None
        try:
            remote = remote_model(srv)
            encoded = [encode(request_tensors([g], remote), "binary") for g in graphs]
            bodies = [b for b, _ in encoded]
            lengths = [h["Inference-Header-Content-Length"] for _, h in encoded]
            script = wrk_load.write_script(tmp / "wrk", "/v2/models/m/infer", bodies, lengths)
            floor, floor_port = start_floor(tmp, raw_answer(srv.port, bodies[0], lengths[0]), table, args.delay_us,
                                            server_cpus)
            rows_server, rows_port = start_py_floor(path, args.delay_us, server_cpus)
            same_answers(rows_port, srv.port, bodies[:32], lengths[:32])
            if server_cpus:
                os.sched_setaffinity(0, set(wrk_cpus))  # wrk inherits it
            urls = {"edgemp serve": f"http://127.0.0.1:{srv.port}", "floor": f"http://127.0.0.1:{floor_port}",
                    "rows (Python)": f"http://127.0.0.1:{rows_port}"}
            for url in urls.values():
                wrk_load.run(url, args.clients, 2, script)  # warm-up
            ceilings = {name: wrk_load.run(f"{url}/v2/health/ready", args.clients, 2).rate
                        for name, url in urls.items()}
            rows = []
            for r in range(args.rounds):
                for name, url in urls.items():
                    port = {"floor": floor_port, "rows (Python)": rows_port}.get(name)
                    before = _stats(srv.port) if name == "edgemp serve" else floor_stats(port)
                    steal0 = (wrk_load.steal_ticks(watched), wrk_load.steal_ticks(wrk_cpus))
                    t0 = time.monotonic()
                    res = wrk_load.run(url, args.clients, args.seconds, script)
                    elapsed = time.monotonic() - t0
                    stolen = (wrk_load.stolen_share(wrk_load.steal_ticks(watched) - steal0[0], elapsed, len(watched)),
                              wrk_load.stolen_share(wrk_load.steal_ticks(wrk_cpus) - steal0[1], elapsed,
                                                    len(wrk_cpus)))
                    if name == "edgemp serve":
                        after = _stats(srv.port)
                        execs = after["execution_count"] - before["execution_count"]
                        own = (sum(b["compute_infer"]["ns"] for b in after["batch_stats"])
                               - sum(b["compute_infer"]["ns"] for b in before["batch_stats"])) / max(execs, 1) / 1e3
                        mean_batch = (after["inference_count"] - before["inference_count"]) / max(execs, 1)
                        model_us = _model_mean(_batch_sizes(after, before), table)
                    else:
                        b1, q1, s1 = floor_stats(port)
                        execs = b1 - before[0]
                        own = (s1 - before[2]) / max(execs, 1) / 1e3
                        mean_batch = (q1 - before[1]) / max(execs, 1)
                        # the C floor spins the table's time; the Python one runs the model (its common
                        # bound, as edgemp's, is the table's time for its mean batch)
                        model_us = own if name == "floor" else table[min(round(mean_batch), MAX_BATCH) - 1]
                    rows.append((r + 1, name, res, mean_batch, own, model_us, stolen))
        finally:
            os.sched_setaffinity(0, set(cpus))
            srv.stop()
            for proc in (floor, rows_server):
                if proc is not None:
                    proc.kill()
                    proc.wait()
    delay = args.delay_us
    out += [f"GIN (hidden 64, 3 rounds, random weights), 256 molecule-sized graphs, one per request, V2 binary; wrk, "
            f"1 thread, {args.clients} connections, {args.seconds} s per window; edgemp serve --max-batch-graphs "
            f"{MAX_BATCH} --max-queue-delay-us {delay}; the floor and the rows server with the same policy (the "
            "rows server's common bound: the model's time at its mean batch).", "",
            f"The model alone per batch size (µs, median of 31; {table_stolen:.1%} of the servers' CPU stolen while "
            f"measured): " + ", ".join(f"{n}: {table[n - 1]:.0f}" for n in range(1, MAX_BATCH + 1)), "",
            f"wrk's own ceiling (against /v2/health/ready, 2 s): edgemp serve {ceilings['edgemp serve']:.0f} req/s, "
            f"floor {ceilings['floor']:.0f} req/s, rows server {ceilings['rows (Python)']:.0f} req/s", "",
            "| round | server | graphs/s | p50 µs | p99 µs | mean batch | its mean batch compute µs | its bound µs "
            "| p99 / its bound | the model's mean for its batches µs | common bound µs | p99 / common bound | "
            f"stolen: servers' CPU {','.join(map(str, watched))} | stolen: wrk's CPU {','.join(map(str, wrk_cpus))} |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r, name, res, mean_batch, own_us, model_us, (stolen_srv, stolen_wrk) in rows:
        own_bound, common = delay + 3 * own_us, delay + 3 * model_us
        failed = f" ({res.failures} failed)" if res.failures else ""
        out.append(f"| {r} | {name}{failed} | {res.rate:.0f} | {res.p50_us:.0f} | {res.p99_us:.0f} | {mean_batch:.1f} | "
                   f"{own_us:.0f} | {own_bound:.0f} | {res.p99_us / own_bound:.2f} | {model_us:.0f} | {common:.0f} | "
                   f"{res.p99_us / common:.2f} | {stolen_srv:.1%} | {stolen_wrk:.1%} |")
    out += ["", f"load average (1 min) {os.getloadavg()[0]:.1f} at the end"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
