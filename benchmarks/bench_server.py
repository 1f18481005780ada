"""What serving costs on top of the model, and what dynamic batching buys behind it.

Three measurements, each in one run with the same model and molecules:

1. ``latency``: batch 1, one client, keep-alive, every path interleaved call by call
   with an in-process ``Model.predict`` on the quickstart's solubility-style MPNN (hidden 64,
   3 rounds, real solubility molecules), in two passes: raw clients (the floor ``GET
   /v2/health/ready``, V2 binary and JSON, ``/v1`` JSON, stock ``tritonclient.http``, and
   gRPC ServerReady and ModelInfer over a raw HTTP/2 client), then grpcio's (a grpcio
   channel, stock ``tritonclient.grpc``, and a bare grpcio server's empty call). The figure
   of merit is served p50 minus the in-process p50 of the same pass. The passes are apart
   because grpc's client threads slow everything else in the process, the in-process
   baseline included (by up to ~40% on 2 cores).
2. ``batching``: 32 closed-loop clients on GIN (hidden 64, 3 rounds, molecule-sized graphs),
   dynamic batching off, on with no queue delay (greedy), on with a 500 µs delay (whose
   batches close once every connection has sent), and greedy with ``--workers 2`` (two
   server processes on one port), next to the load generator's own ceiling
   (the rate it drives against the health endpoint), so a client-bound result is visible.
   ``--pin`` puts the servers on CPU 0 and the load generators on the other CPUs: the nearest
   this machine has to a client on another host.
3. ``start``: process exec to the first 200 on ``/v2/health/ready``, and RSS idle / after load.

The server is the real CLI in a subprocess; the clients run in this process, so on a small
machine they compete with the server for cores (the output prints the core count) unless
``--pin`` keeps them apart.

Usage: python benchmarks/bench_server.py [--sections latency,batching,start] [--requests 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import edgemp.runtime as rt
from edgemp.bench.loadgen import LoadResult, RawHttpSender, Target, closed_loop
from edgemp.bench.rawhttp import RawConnection, build_request
from edgemp.bench.v2client import V2_TYPES, RemoteModel, encode, request_tensors
from edgemp.data.synthetic import molecule_like_graphs
from edgemp.graph import Graph
from edgemp.runtime.batcher import Batcher, BatcherConfig
from edgemp.graphio import graph_to_json
from edgemp.bench.local_server import free_port
from h2_client import RawGrpcClient  # benchmarks/h2_client.py: this script's folder is on sys.path
import wrk_load  # benchmarks/wrk_load.py

logger = logging.getLogger("bench_server")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    grpc_port: int | None
    ready_s: float

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def wait_ready(proc: subprocess.Popen, port: int, t0: float) -> float:
    """Seconds from ``t0`` to the first 200 on /v2/health/ready."""
    wire = build_request("GET", "127.0.0.1", "/v2/health/ready")
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            conn = RawConnection("127.0.0.1", port, timeout_s=1)
            try:
                if conn.request(wire).status == 200:
                    return time.perf_counter() - t0
            finally:
                conn.close()
        except OSError:
            time.sleep(0.002)


def start_server(model: Path, *args: str, grpc: bool = False, cmd: list[str] | None = None,
                 cpus: set[int] | None = None) -> Server:
    """The CLI server in a subprocess, ready; ``cpus``: the only CPUs it (every thread) may run on."""
    port = free_port()
    grpc_port = free_port() if grpc else None
    base = cmd or [sys.executable, "-m", "edgemp.cli.serve"]
    full = [*base, str(model), "--name", "m", "--port", str(port), "--no-access-log", "--log-level", "WARNING",
            *(["--grpc-port", str(grpc_port)] if grpc else []), *args]
    t0 = time.perf_counter()
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))  # before exec: all threads inherit
    proc = subprocess.Popen(full, cwd=ROOT, preexec_fn=pin)
    return Server(proc, port, grpc_port, wait_ready(proc, port, t0))


# -- models and inputs ------------------------------------------------------------------
def export_random(family: str, node_features: int, edge_features: int, path: Path) -> Path:
    """A seeded, untrained model of ``family`` (hidden 64, 3 rounds), exported and verified."""
    import torch

    from edgemp.export import ExportConfig, export_onnx
    from edgemp.models import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(family=family, task="regression", node_features=node_features, edge_features=edge_features,
                      hidden=64, num_rounds=3)
    ckpt = save_checkpoint(build_model(cfg), path.parent / f"ckpt_{family}")
    return export_onnx(ckpt, path, ExportConfig())


def remote_model(srv: "Server") -> RemoteModel:
    """The served model as a V2 client sees it (its metadata), so requests use its input layout."""
    conn = RawConnection("127.0.0.1", srv.port)
    try:
        r = conn.request(build_request("GET", f"127.0.0.1:{srv.port}", "/v2/models/m"))
    finally:
        conn.close()
    return RemoteModel.from_metadata(json.loads(r.body))


def v1_json(g: Graph) -> tuple[bytes, dict]:
    obj = {k: v for k, v in graph_to_json(g).items() if k != "y"}  # inputs only
    return json.dumps({"graphs": [obj]}).encode(), {"Content-Type": "application/json"}


def pct(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns), q)) / 1e3


# -- 1. latency -------------------------------------------------------------------------
IN_PROCESS = "in-process Model.predict"
LONE_RUN = "in-process Batcher.run_now (the server's own run of a lone request)"
READY_PATH = "/inference.GRPCInferenceService/ServerReady"
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def _latency_paths(srv: Server, model, graphs: list[Graph]) -> Iterator[dict[str, Callable[[int], object]]]:
    """The passes (raw clients, then grpcio's if gRPC is served): one callable per path, each
    sending request ``i`` (round-robin over the molecules); each pass starts with its own
    in-process baseline. grpcio's channels are made only once the raw pass is done."""
    host = f"127.0.0.1:{srv.port}"
    remote = remote_model(srv)
    conn = RawConnection("127.0.0.1", srv.port)
    ready = build_request("GET", host, "/v2/health/ready")
    t = [request_tensors([g], remote) for g in graphs]
    binary = [build_request("POST", host, "/v2/models/m/infer", *encode(x, "binary")) for x in t]
    jsons = [build_request("POST", host, "/v2/models/m/infer", *encode(x, "json")) for x in t]
    v1 = [build_request("POST", host, "/v1/models/m/predict", *v1_json(g)) for g in graphs]
    n = len(graphs)

    def raw(wires: list[bytes]) -> Callable[[int], object]:
        def call(i: int) -> object:
            r = conn.request(wires[i % n])
            if r.status != 200:
                raise SystemExit(f"request failed with {r.status}: {r.body[:200]!r}")
            return r
        return call

    in_process = lambda i: model.predict([graphs[i % n]])  # noqa: E731
    lone = Batcher(model, BatcherConfig())  # what the server runs a request alone in it with
    paths: dict[str, Callable[[int], object]] = {
        f"{IN_PROCESS} (raw-client pass)": in_process,
        LONE_RUN: lambda i: lone.run_now([graphs[i % n]]),
        "HTTP GET /v2/health/ready (floor)": lambda i: conn.request(ready),
        "HTTP V2 binary, raw client": raw(binary),
        "HTTP V2 JSON, raw client": raw(jsons),
        "HTTP /v1 JSON, raw client": raw(v1),
    }
    import tritonclient.http as th

    tc = th.InferenceServerClient(host)

    def tc_inputs(mod, x: dict[str, np.ndarray]) -> list:
        out = []
        for k, v in x.items():
            i = mod.InferInput(k, list(v.shape), V2_TYPES[v.dtype])
            i.set_data_from_numpy(v)
            out.append(i)
        return out

    tc_in = [tc_inputs(th, x) for x in t]
    paths["tritonclient.http binary"] = lambda i: tc.infer("m", tc_in[i % n])
    if srv.grpc_port:  # the raw gRPC client beside the raw HTTP one: same pass, same baseline
        from edgemp.runtime.server import grpc_proto as pb

        empty = pb.ServerReadyRequest().SerializeToString()
        infer_wire = [pb.infer_request_bytes("m", x) for x in t]
        h2 = RawGrpcClient("127.0.0.1", srv.grpc_port)

        def h2_call(path: str, message: bytes) -> object:
            status, answer = h2.call(path, message)
            if status != 0:
                raise SystemExit(f"gRPC {path} failed with status {status}")
            return answer

        paths["gRPC ServerReady, raw HTTP/2 client (floor)"] = lambda i: h2_call(READY_PATH, empty)
        paths["gRPC ModelInfer, raw HTTP/2 client"] = lambda i: h2_call(INFER_PATH, infer_wire[i % n])
    yield paths
    if srv.grpc_port:
        import grpc
        import tritonclient.grpc as tg

        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        ready_rpc = channel.unary_unary(READY_PATH)
        infer_rpc = channel.unary_unary(INFER_PATH)
        tcg = tg.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        tcg_in = [tc_inputs(tg, x) for x in t]

        yield {
            f"{IN_PROCESS} (grpcio pass)": in_process,
            "gRPC ServerReady, grpcio channel (floor)": lambda i: ready_rpc(empty),
            "gRPC ModelInfer, grpcio channel": lambda i: infer_rpc(infer_wire[i % n]),
            "tritonclient.grpc": lambda i: tcg.infer("m", tcg_in[i % n]),
        }
    lone.close()


def _thread_cpu_ns(pid: int) -> tuple[int, int]:
    """(event-loop thread, every other thread) CPU ns of a server process, from schedstat;
    with ``--workers`` the sums over its worker processes (the supervisor only waits).

    The loop runs on the main thread (``asyncio.run``); the rest is the batcher worker and
    ONNX Runtime's own threads, i.e. the model."""
    loop = other = 0
    for child in _children(pid):
        child_loop, child_other = _thread_cpu_ns(child)
        loop, other = loop + child_loop, other + child_other
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between listing and reading
        if task.name == str(pid):
            loop += ns
        else:
            other += ns
    return loop, other


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for t in Path(f"/proc/{pid}/task").iterdir()
                for p in (t / "children").read_text().split()]
    except OSError:
        return []


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bare_grpc() -> tuple[subprocess.Popen, Callable[[int], object]]:
    """grpcio alone: an empty unary RPC on a bare ``grpc.aio`` server on uvloop (no edgemp, no
    protobuf; bench_http_layers.py's server), so the gRPC rows can be read against grpcio's own floor."""
    import grpc

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bench_http_layers.py"), "--serve",
                             "grpc-aio:uvloop", "--port", str(port)], cwd=ROOT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    rpc = channel.unary_unary("/bench.Floor/Empty")
    return proc, lambda i: rpc(b"", timeout=30)


def _measure(paths: dict[str, Callable[[int], object]], cpu_of: dict[str, Callable[[], float]], requests: int,
             samples: dict[str, list[int]], cpu: dict[str, float]) -> None:
    """Time every path call by call, interleaved, then each path's CPU per call (into the dicts)."""
    for name in paths:
        samples[name] = []
    for i in range(requests + 100):  # interleaved: every path sees the same machine state
        for name, call in paths.items():
            t0 = time.perf_counter_ns()
            call(i)
            dt = time.perf_counter_ns() - t0
            if i >= 100:
                samples[name].append(dt)
    for name, call in paths.items():
        in_process = name.startswith("in-process")
        clock = time.process_time if in_process else cpu_of[name]
        t0 = clock()
        for i in range(requests):
            call(i)
        cpu[name] = (clock() - t0) / requests * 1e6


def latency(requests: int, tmp: Path, grpc: bool) -> list[str]:
    from edgemp.data.solubility import load_solubility

    graphs = load_solubility("test")
    nf, ef = graphs[0].x.shape[1], graphs[0].edge_attr.shape[1]
    path = export_random("mpnn", nf, ef, tmp / "solubility_mpnn.onnx")
    model = rt.load(path, providers="cpu")
    srv = start_server(path, grpc=grpc)
    bare = None
    samples: dict[str, list[int]] = {}
    cpu: dict[str, float] = {}  # CPU per call: contention inflates wall time, much less the CPU a request burns
    try:
        # raw clients first, before any grpcio channel exists: grpc's client threads slow everything
        # else in the process (the in-process baseline by up to ~40%, a raw client's calls too).
        for paths in _latency_paths(srv, model, graphs):
            cpu_of = {name: srv.cpu_s for name in paths}
            if any("grpcio" in name for name in paths):
                bare, call_bare = _bare_grpc()
                name = "gRPC empty call, bare grpc.aio server (grpcio's floor)"
                paths[name] = call_bare
                cpu_of[name] = lambda: _proc_cpu_s(bare.pid)
            _measure(paths, cpu_of, requests, samples, cpu)
    finally:
        srv.stop()
        if bare is not None:
            bare.terminate()
            bare.wait(10)
    lines = [f"model: solubility-style MPNN (hidden 64, 3 rounds, random weights), {len(graphs)} solubility "
             f"test molecules (median {int(np.median([g.num_nodes for g in graphs]))} atoms); {requests} calls per "
             "path, interleaved", "",
             "| batch-1 path (keep-alive, sequential) | p50 µs | p99 µs | p50 − in-process p50 µs | "
             "server CPU µs/call |", "|---|---:|---:|---:|---:|"]
    for name, s in samples.items():
        p50 = pct(s, 50)
        if name.startswith(IN_PROCESS):
            base = p50  # the rows after it, up to the next pass, are measured against it
        over = "" if name.startswith("in-process") or "floor" in name else f"{p50 - base:+.0f}"
        lines.append(f"| {name} | {p50:.0f} | {pct(s, 99):.0f} | {over} | {cpu[name]:.0f} |")
    lines.append("")
    lone = pct(samples[LONE_RUN], 50)
    served = [f"{name} {pct(samples[name], 50) - lone:+.0f} µs" for name in
              ("HTTP V2 binary, raw client", "gRPC ModelInfer, raw HTTP/2 client") if name in samples]
    lines.append(f"against the server's own lone run in process ({lone:.0f} µs p50, the model without the "
                 f"network, the sockets or the protocols): " + ", ".join(served))
    lines.append("")
    lines.append("server CPU µs/call: the server process's user+system CPU over the same number of calls "
                 "per path, run after the interleaved timing (in-process rows: this process's CPU per predict); "
                 "each pass (raw HTTP and HTTP/2 clients with tritonclient.http, then grpcio's) is interleaved within "
                 "itself and measured against its own "
                 "in-process row")
    return lines


# -- 2. batching ------------------------------------------------------------------------
def _closed_loop(url: str, bodies: list[bytes], headers: list[dict], clients: int, seconds: float,
                 method: str = "POST") -> LoadResult:
    """The library's closed-loop load generator over raw keep-alive HTTP; any failed request stops the run."""
    async def drive() -> LoadResult:
        sender = RawHttpSender(Target(url, tuple(bodies), tuple(headers)), method)
        try:
            return await closed_loop(sender, None, clients, seconds, warmup_s=0.5)
        finally:
            await sender.close()

    result = asyncio.run(drive())
    if result.error_count:
        raise SystemExit(f"{url}: requests failed: {result.errors}")
    return result


DELAYED = "on (delay 500 µs)"
WORKERS = "on (delay 0), 2 workers"  # edgemp serve --workers 2: two processes on one port
QUEUE_DELAY_US = {"off": 0, "on (delay 0)": 0, DELAYED: 500, WORKERS: 0}


def batching(seconds: float, clients: int, tmp: Path, rounds: int = 5, pin: bool = False) -> list[str]:
    """Batching off vs on, all servers up at once and measured in alternating windows.

    On a shared machine the load from other jobs drifts; alternating short windows gives
    every mode the same conditions, so their ratio holds even when absolute rates do not.
    """
    nf = 16
    path = export_random("gin", nf, 0, tmp / "gin.onnx")
    graphs = molecule_like_graphs(256, nf, seed=0)
    modes = {"off": ("--max-batch-graphs", "1"), "on (delay 0)": ("--max-batch-graphs", "64"),
             DELAYED: ("--max-batch-graphs", "64", "--max-queue-delay-us", str(QUEUE_DELAY_US[DELAYED])),
             WORKERS: ("--max-batch-graphs", "64", "--workers", "2")}
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = {cpus[0]} if pin and len(cpus) > 1 else None
    client_cpus = set(cpus[1:]) if server_cpus else None
    servers = {mode: start_server(path, *args, "--max-queue-size", "4096", cpus=server_cpus)
               for mode, args in modes.items()}
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # this process's load generator, and the wrk it starts
    done = {m: 0.0 for m in modes}
    elapsed = {m: 0.0 for m in modes}
    lat: dict[str, list[int]] = {m: [] for m in modes}
    ceilings: dict[str, list[float]] = {m: [] for m in modes}
    loop_ns = {m: 0 for m in modes}  # server event-loop thread, during the infer windows
    model_ns = {m: 0 for m in modes}  # the server's other threads (batcher worker, ORT)
    client_ns = {m: 0 for m in modes}  # this process: the load generator
    served = {m: 0 for m in modes}  # graphs answered in those windows, warm-up included
    try:
        remote = remote_model(next(iter(servers.values())))
        encoded = [encode(request_tensors([g], remote), "binary") for g in graphs]
        bodies, headers = [b for b, _ in encoded], [h for _, h in encoded]
        before = {mode: _stats(srv.port) for mode, srv in servers.items()}
        window = seconds / rounds
        for _ in range(rounds):
            for mode, srv in servers.items():
                base = f"http://127.0.0.1:{srv.port}"
                health = _closed_loop(f"{base}/v2/health/ready", [b""], [{}], clients, min(window, 1.0), "GET")
                ceilings[mode].append(health.latencies_ns.size / health.duration_s)
                served0 = _stats(srv.port)["inference_count"]
                loop0, model0 = _thread_cpu_ns(srv.proc.pid)
                client0 = time.process_time_ns()
                run = _closed_loop(f"{base}/v2/models/m/infer", bodies, headers, clients, window)
                client_ns[mode] += time.process_time_ns() - client0
                loop1, model1 = _thread_cpu_ns(srv.proc.pid)
                loop_ns[mode] += loop1 - loop0
                model_ns[mode] += model1 - model0
                served[mode] += _stats(srv.port)["inference_count"] - served0  # warm-up included, as the CPU is
                done[mode] += run.latencies_ns.size
                elapsed[mode] += run.duration_s
                lat[mode] += run.latencies_ns.tolist()
        after = {mode: _stats(srv.port) for mode, srv in servers.items()}
        native = (_native_rows(servers, bodies, headers, clients, seconds, tmp, sorted(server_cpus or cpus))
                  if wrk_load.available() else {})
    finally:
        if client_cpus:
            os.sched_setaffinity(0, set(cpus))
        for srv in servers.values():
            srv.stop()
    placement = (f"servers on CPU {min(server_cpus)}, load generators on CPU {','.join(map(str, sorted(client_cpus)))}"
                 if server_cpus else f"servers and load generators share the {len(cpus)} CPUs")
    lines = [f"model: GIN (hidden 64, 3 rounds, random weights), molecule-sized graphs (10-35 nodes); {clients} "
             f"closed-loop clients, raw keep-alive HTTP, V2 binary, one graph per request; all servers up, measured "
             f"in {rounds} alternating windows of {seconds / rounds:g} s each; {placement}", "",
             *BATCHING_TABLE]
    rates = {}
    for mode in modes:
        rates[mode] = done[mode] / elapsed[mode]
        lines.append(_batching_row(mode, rates[mode], float(np.median(ceilings[mode])), pct(lat[mode], 50),
                                   pct(lat[mode], 99), before[mode], after[mode]))
    lines.append("")
    lines.append(f"batching on / off: {rates['on (delay 0)'] / rates['off']:.2f}x graphs/s (delay 0), "
                 f"{rates[DELAYED] / rates['off']:.2f}x ({DELAYED[4:-1]}), {rates[WORKERS] / rates['off']:.2f}x "
                 f"(2 workers)")
    lines += ["", "Where the CPU went during the infer windows (per-thread schedstat; one graph per request), and what "
              "it implies: a mode cannot beat 1 / (its busiest thread's CPU per request), and a closed loop of "
              f"{clients} clients waits {clients} / rate on average (Little's law), whatever the tail does. The CPU "
              "floor is that mean at the rate the CPUs allow if every one of them were busy all the time: "
              f"{clients} × the CPU a request takes (server and client) / the CPUs they share; pinned, the busier "
              "side's.", "",
              "| batching | loop thread µs/request (its ceiling req/s) | model threads µs/graph | client µs/request | "
              f"mean latency {clients} / rate µs | its CPU floor µs |", "|---|---:|---:|---:|---:|---:|"]
    for mode in modes:
        n = max(served[mode], 1)
        loop_us, model_us, client_us = loop_ns[mode] / n / 1e3, model_ns[mode] / n / 1e3, client_ns[mode] / n / 1e3
        if server_cpus:
            floor_us = clients * max(loop_us + model_us, client_us / len(client_cpus))
        else:
            floor_us = clients * (loop_us + model_us + client_us) / len(cpus)
        lines.append(f"| {mode} | {loop_us:.0f} ({1e6 / max(loop_us, 1e-3):.0f}) | {model_us:.0f} | {client_us:.0f} | "
                     f"{clients / rates[mode] * 1e6:.0f} | {floor_us:.0f} |")
    if not native:
        return lines + ["", "(no wrk on PATH: the native load generator rows are skipped; apt-get install wrk)"]
    lines += ["", f"Same servers, native load generator (benchmarks/wrk_load.py: wrk, 1 thread, {clients} connections, "
              f"the same bodies, {max(seconds, 1):.0f} s per mode; its ceiling is wrk against /v2/health/ready; the "
              f"last column is the share of the servers' CPUs the hypervisor took in the window, /proc/stat's "
              f"steal):", "", BATCHING_TABLE[0] + " stolen |", BATCHING_TABLE[1] + "---:|"]
    for mode, (res, ceiling, b, a, stolen) in native.items():
        nan = float("nan")
        lines.append(_batching_row(mode, res.rate, ceiling, res.p50_us or nan, res.p99_us or nan, b, a)
                     + f" {stolen:.1%} |")
    on, delayed, workers, off = (native[m][0].rate for m in ("on (delay 0)", DELAYED, WORKERS, "off"))
    lines += ["", f"batching on / off (wrk): {on / off:.2f}x graphs/s (delay 0), {delayed / off:.2f}x ({DELAYED[4:-1]}), "
              f"{workers / off:.2f}x (2 workers)"]
    return lines


BATCHING_TABLE = ["| batching | graphs/s | client ceiling req/s | client-bound | p50 µs | p99 µs | mean batch | "
                  "mean batch compute µs | max-queue-delay + 3 × mean batch compute µs | p99 within |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]


def _batching_row(mode: str, rate: float, ceiling: float, p50_us: float, p99_us: float, before: dict,
                  after: dict) -> str:
    """One batching cell: the load's figures beside the server's batches between ``before`` and ``after``."""
    execs = after["execution_count"] - before["execution_count"]
    mean_batch = (after["inference_count"] - before["inference_count"]) / max(execs, 1)
    compute_us = _batch_compute_ns(after, before) / max(execs, 1) / 1e3
    bound_us = QUEUE_DELAY_US[mode] + 3 * compute_us
    return (f"| {mode} | {rate:.0f} | {ceiling:.0f} | {'yes' if rate >= 0.8 * ceiling else 'no'} | {p50_us:.0f} | "
            f"{p99_us:.0f} | {mean_batch:.1f} | {compute_us:.0f} | {bound_us:.0f} | "
            f"{'yes' if p99_us <= bound_us else 'no'} |")


def _native_rows(servers: dict, bodies: list[bytes], headers: list[dict], clients: int, seconds: float,
                 tmp: Path, server_cpus: list[int]) -> dict:
    """Per mode: (wrk's infer result, its health ceiling, server stats before, after, the share of
    ``server_cpus`` the hypervisor took in the window)."""
    script = wrk_load.write_script(tmp / "wrk", "/v2/models/m/infer", bodies,
                                   [h["Inference-Header-Content-Length"] for h in headers])
    rows = {}
    for mode, srv in servers.items():
        base = f"http://127.0.0.1:{srv.port}"
        ceiling = wrk_load.run(f"{base}/v2/health/ready", clients, 2)
        before, stolen = _stats(srv.port), wrk_load.steal_ticks(server_cpus)
        result = wrk_load.run(base, clients, seconds, script)
        stolen = wrk_load.steal_ticks(server_cpus) - stolen
        if result.failures:
            raise SystemExit(f"{base}: wrk saw {result.failures} failed requests")
        rows[mode] = (result, ceiling.rate, before, _stats(srv.port),
                      wrk_load.stolen_share(stolen, seconds, len(server_cpus)))
    return rows


def _stats(port: int) -> dict:
    conn = RawConnection("127.0.0.1", port)
    try:
        r = conn.request(build_request("GET", f"127.0.0.1:{port}", "/v2/models/m/stats"))
    finally:
        conn.close()
    return json.loads(r.body)["model_stats"][0]


def _batch_compute_ns(after: dict, before: dict) -> int:
    def total(s: dict) -> int:
        return sum(b["compute_infer"]["ns"] for b in s["batch_stats"])
    return total(after) - total(before)


# -- 3. start ---------------------------------------------------------------------------
def start(tmp: Path, runs: int, binaries: list[Path]) -> list[str]:
    """Exec to ready for the venv server and each binary, runs interleaved (one of each per round)."""
    path = tmp / "gin.onnx"
    if not path.exists():
        path = export_random("gin", 16, 0, path)
    commands: dict[str, list[str] | None] = {
        "venv `python -m edgemp.cli.serve`": None,
        "venv `edgemp-serve` entry point": [str(Path(sys.executable).with_name("edgemp-serve"))],
    }
    for b in binaries:
        commands[f"binary `{b}`"] = [str(b)]
    times: dict[str, list[float]] = {k: [] for k in commands}
    rss: dict[str, list[float]] = {k: [] for k in commands}
    first: dict[str, float] = {}
    for label, cmd in commands.items():  # the first start of each (a self-extracting binary unpacks here)
        srv = start_server(path, cmd=cmd)
        first[label] = srv.ready_s * 1e3
        srv.stop()
    for _ in range(runs):
        for label, cmd in commands.items():
            srv = start_server(path, cmd=cmd)
            times[label].append(srv.ready_s * 1e3)
            rss[label].append(srv.rss_mib())
            srv.stop()
    lines = [f"model: GIN (hidden 64, 3 rounds); one first start each, then {runs} starts each, interleaved; "
             "RSS of the process started (a PyInstaller --onefile parent is only its unpacking bootloader)", "",
             "| server | first start ms | exec → ready ms, median (min, max) | RSS idle MiB |", "|---|---:|---:|---:|"]
    for label in commands:
        t = times[label]
        lines.append(f"| {label} | {first[label]:.0f} | {np.median(t):.0f} ({min(t):.0f}, {max(t):.0f}) | "
                     f"{np.median(rss[label]):.0f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="latency,batching,start")
    ap.add_argument("--requests", type=int, default=1000, help="calls per path in the latency section")
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per batching cell")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pin", action="store_true",
                    help="batching: servers on the first CPU, load generators on the rest (a client on another host)")
    ap.add_argument("--start-runs", type=int, default=5)
    ap.add_argument("--no-grpc", action="store_true", help="skip the gRPC rows")
    ap.add_argument("--binary", type=Path, action="append", default=[],
                    help="a one-file edgemp-serve to time in the start section (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sections = args.sections.split(",")
    out = [f"command: python {' '.join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])}",
           f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
           f"{platform.python_version()}; load average (1 min) {os.getloadavg()[0]:.1f} at the start", ""]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "latency" in sections:
            out += latency(args.requests, tmp, not args.no_grpc) + [""]
        if "batching" in sections:
            out += batching(args.seconds, args.clients, tmp, pin=args.pin) + [""]
        if "start" in sections:
            out += start(tmp, args.start_runs, args.binary) + [""]
    out.append(f"load average (1 min) {os.getloadavg()[0]:.1f} at the end")
    print("\n".join(out))


if __name__ == "__main__":
    main()
