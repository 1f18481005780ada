"""Server mode: benchmark any KServe V2 endpoint (edgemp serve, Triton, ...) over HTTP or gRPC.

Sweeps closed-loop concurrencies or open-loop request rates; reads the server's
``/v2/models/{m}/stats`` (and ``/metrics`` when the server is edgemp) before and after each
load so the server-side queue / compute split sits next to the client latency; and with
``p99_bound_ms`` searches for the highest rate whose p99 stays under the bound with no
errors (MLPerf Server scenario, FindPeakPerformance-style: double, then bisect).

Every closed-loop row also carries the load generator's own ceiling: the rate the same
client reaches at the same concurrency against the server's cheapest endpoint
(``/v2/health/ready``, or gRPC ``ServerReady``). A result at 80% of it or more is marked
client-bound: the figure says more about this client than about the server.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import aiohttp
import numpy as np

from edgemp.bench import env as envmod
from edgemp.bench.loadgen import (
    DISTRIBUTIONS,
    AiohttpSender,
    GrpcSender,
    LoadResult,
    RawHttpSender,
    Sender,
    Target,
    ceiling,
    closed_loop,
    open_loop,
)
from edgemp.bench.results import BenchReport, ResultRow
from edgemp.bench.stats import DEFAULT_PERCENTILES, percentile, stability, summarize
from edgemp.bench.v2client import (RemoteModel, encode, is_ragged, metrics_delta, parse_metrics, request_tensors,
                                   stats_delta)
from edgemp.bench.workload import WorkloadSpec, build_buckets, make_schedule
from edgemp.errors import EdgempError
from edgemp.jsonio import decode_utf8, load_json

logger = logging.getLogger(__name__)

TOKEN_ENV = "EDGEMP_AUTH_TOKEN"
PROTOCOLS = ("binary", "json", "grpc")
GRPC_SERVICE = "/inference.GRPCInferenceService/"
CLIENT_BOUND = 0.8  # a rate at this share of the client's own ceiling or more is client-bound
CEILING_S = 1.0


@dataclass(frozen=True)
class ServerBenchConfig:
    """One server benchmark. Give ``concurrency`` (closed loop) or ``request_rates`` (open loop)."""

    url: str
    model: str
    protocol: str = "binary"
    grpc_url: str | None = None  # HOST:PORT for --protocol grpc (default: --url's host, port 8001)
    concurrency: tuple[int, ...] = ()
    request_rates: tuple[float, ...] = ()
    distribution: str = "poisson"
    duration_s: float = 5.0
    warmup_s: float = 1.0
    batch: int = 1  # graphs per request
    workload: WorkloadSpec = WorkloadSpec()
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    windows: int = 3
    stability_threshold: float = 0.10
    timeout_s: float = 10.0
    p99_bound_ms: float | None = None
    search_steps: int = 5
    raw: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise EdgempError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.concurrency and self.request_rates:
            raise EdgempError("give --concurrency (closed loop) or --request-rate (open loop), not both")
        if self.distribution not in DISTRIBUTIONS:
            raise EdgempError(f"--distribution must be one of {list(DISTRIBUTIONS)}, got {self.distribution!r}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise EdgempError("--duration and the request timeout must be > 0, warm-up >= 0")
        if any(c < 1 for c in self.concurrency) or any(r <= 0 for r in self.request_rates):
            raise EdgempError("--concurrency values must be >= 1 and --request-rate values > 0")
        if self.p99_bound_ms is not None and self.p99_bound_ms <= 0:
            raise EdgempError(f"--p99-bound-ms must be > 0, got {self.p99_bound_ms}")
        if not self.url.startswith(("http://", "https://")):
            raise EdgempError(f"--url must start with http:// or https://, got {self.url!r}")
        if self.grpc_url is not None and (not self.grpc_url or "://" in self.grpc_url or ":" not in self.grpc_url):
            raise EdgempError(f"--grpc-url must be HOST:PORT, got {self.grpc_url!r}")

    @property
    def grpc_address(self) -> str:
        from urllib.parse import urlsplit

        return self.grpc_url or f"{urlsplit(self.url).hostname}:8001"


class _Client:
    """The endpoints this benchmark reads, with one-line errors for an unreachable or odd server."""

    def __init__(self, session: aiohttp.ClientSession, cfg: ServerBenchConfig) -> None:
        self.s, self.cfg = session, cfg
        self.base = cfg.url.rstrip("/")

    async def get(self, path: str, required: bool = True) -> bytes | None:
        """The body of a 200 answer; anything else is None, or an error if ``required``."""
        url = self.base + path
        try:
            async with self.s.get(url, timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s)) as r:
                body = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            if not required:
                return None
            raise EdgempError(f"cannot reach {url}: {type(e).__name__} {e}") from e
        if r.status == 200:
            return body
        if not required:
            return None
        raise EdgempError(f"GET {url} returned HTTP {r.status}: {body[:200].decode('utf-8', 'replace')}")

    async def get_json(self, path: str, required: bool = True) -> dict | None:
        """A JSON object from ``path``; a body that is not one (HTML, a list) is None, or an error if ``required``."""
        body = await self.get(path, required)
        if body is None:
            return None
        where = f"GET {self.base}{path}"
        try:
            value = load_json(decode_utf8(body, where), where)
            if not isinstance(value, dict):
                raise EdgempError(f"{where}: expected a V2 JSON object, got a JSON {type(value).__name__}")
        except EdgempError:
            if not required:
                return None
            raise
        return value

    async def get_text(self, path: str) -> str | None:
        body = await self.get(path, required=False)
        return None if body is None else body.decode("utf-8", "replace")


async def _snapshot(client: _Client, model: str, is_edgemp: bool) -> tuple[dict | None, dict | None]:
    stats = await client.get_json(f"/v2/models/{model}/stats", required=False)
    metrics = None
    if is_edgemp:
        text = await client.get_text("/metrics")
        metrics = parse_metrics(text, model) if text else None
    return stats, metrics


def run_server_bench(cfg: ServerBenchConfig, on_progress: Callable[[int, int], None] | None = None,
                     argv: list[str] | None = None) -> BenchReport:
    """Run the sweep (and the p99-bound search) against ``cfg.url``; one report."""
    return asyncio.run(_run(cfg, on_progress, argv))


async def _run(cfg: ServerBenchConfig, on_progress, argv) -> BenchReport:
    report = BenchReport("server", envmod.capture_environment(argv), _settings(cfg))
    headers = {}
    token = os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token.strip()}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        client = _Client(session, cfg)
        await client.get("/v2/health/ready")  # Triton answers an empty body: only the status counts
        server_meta = await client.get_json("/v2", required=False) or {}
        is_edgemp = server_meta.get("name") == "edgemp"
        meta = await client.get_json(f"/v2/models/{cfg.model}")
        config = await client.get_json(f"/v2/models/{cfg.model}/config", required=False) if is_ragged(meta) else None
        remote = RemoteModel.from_metadata(meta, config)
        report.environment["server"] = {"url": cfg.url, "name": server_meta.get("name"),
                                        "version": server_meta.get("version"), "platform": remote.platform}
        target = _target(cfg, remote)
        auth = (("authorization", headers["Authorization"]),) if headers else ()
        sender = _sender(cfg, session, target, auth)
        probe = _health_sender(cfg, session, target, auth)
        try:
            await _check_one(session, target, sender)
            loads = _loads(cfg)
            total = len(loads)
            ceilings: dict[int, float] = {}
            for k, (kind, value) in enumerate(loads):
                row = await _measure(client, sender, target, cfg, kind, value, is_edgemp)
                c = int(value) if kind == "concurrency" else 32
                if c not in ceilings:
                    ceilings[c] = await ceiling(probe, c, CEILING_S)
                _mark_client_bound(row, ceilings[c], report)
                report.rows.append(row)
                if on_progress:
                    on_progress(k + 1, total)
            if cfg.p99_bound_ms is not None:
                await _search(client, sender, target, cfg, is_edgemp, report)
        finally:
            await sender.close()
            await probe.close()
    report.notes.append(
        "open-loop latency is charged from each request's intended send time (no coordinated omission)"
        if cfg.request_rates or cfg.p99_bound_ms else "closed loop: latency from send to full response"
    )
    return report


def _settings(cfg: ServerBenchConfig) -> dict:
    return {
        "url": cfg.url, "model": cfg.model, "protocol": cfg.protocol, "concurrency": list(cfg.concurrency),
        "request_rates": list(cfg.request_rates), "distribution": cfg.distribution, "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s, "graphs_per_request": cfg.batch, "workload": cfg.workload.describe(),
        "percentiles": list(cfg.percentiles), "windows": cfg.windows,
        "stability_threshold": cfg.stability_threshold, "timeout_s": cfg.timeout_s,
        "p99_bound_ms": cfg.p99_bound_ms,
    }


def _loads(cfg: ServerBenchConfig) -> list[tuple[str, float]]:
    if cfg.request_rates:
        return [("rate", r) for r in cfg.request_rates]
    if cfg.concurrency:
        return [("concurrency", c) for c in cfg.concurrency]
    return [] if cfg.p99_bound_ms is not None else [("concurrency", 1)]


def _target(cfg: ServerBenchConfig, remote: RemoteModel) -> Target:
    buckets = build_buckets(cfg.workload, remote.node_features, remote.edge_features)
    sched = make_schedule(buckets, cfg.batch)
    if cfg.protocol == "grpc":
        from edgemp.runtime.server.grpc_proto import infer_request_bytes

        bodies = tuple(infer_request_bytes(cfg.model, request_tensors(b, remote)) for b in sched.batches)
        return Target(cfg.grpc_address, bodies, tuple({} for _ in bodies), cfg.timeout_s)
    encoded = [encode(request_tensors(b, remote), cfg.protocol) for b in sched.batches]
    return Target(f"{cfg.url.rstrip('/')}/v2/models/{cfg.model}/infer", tuple(e[0] for e in encoded),
                  tuple(e[1] for e in encoded), cfg.timeout_s)


def _with_auth(target: Target, auth: tuple[tuple[str, str], ...]) -> Target:
    extra = {"Authorization": v for _, v in auth}
    return Target(target.url, target.bodies, tuple({**h, **extra} for h in target.headers), target.timeout_s)


def _sender(cfg: ServerBenchConfig, session: aiohttp.ClientSession, target: Target, auth) -> Sender:
    if cfg.protocol == "grpc":
        return GrpcSender(target.url, GRPC_SERVICE + "ModelInfer", target.bodies, target.timeout_s, auth)
    if target.url.startswith("http://"):
        return RawHttpSender(_with_auth(target, auth))
    return AiohttpSender(session, target)


def _health_sender(cfg: ServerBenchConfig, session: aiohttp.ClientSession, target: Target, auth) -> Sender:
    """The cheapest request of the same protocol: what this client can drive at best."""
    if cfg.protocol == "grpc":
        return GrpcSender(target.url, GRPC_SERVICE + "ServerReady", (b"",), target.timeout_s, auth)
    health = Target(f"{cfg.url.rstrip('/')}/v2/health/ready", (b"",), ({},), target.timeout_s)
    if health.url.startswith("http://"):
        return RawHttpSender(_with_auth(health, auth), method="GET")

    class _Get(AiohttpSender):
        async def send(self, i: int) -> str | None:
            try:
                async with self.session.get(self.target.url) as r:
                    await r.read()
                    return None if r.status == 200 else f"http_{r.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return type(e).__name__

    return _Get(session, health)


def _mark_client_bound(row: ResultRow, client_ceiling: float, report: BenchReport) -> None:
    rate = row.metrics["requests_per_s"]
    bound = client_ceiling > 0 and rate >= CLIENT_BOUND * client_ceiling
    row.metrics["client_ceiling_rps"] = round(client_ceiling, 1)
    row.metrics["client_bound"] = bound
    if bound:
        report.notes.append(
            f"{row.config['load']}: {rate:.0f} req/s is {rate / client_ceiling:.0%} of this client's own ceiling "
            f"({client_ceiling:.0f} req/s against the health endpoint): client-bound, the server may do more")


async def _check_one(session: aiohttp.ClientSession, target: Target, sender: Sender) -> None:
    """One request before timing: a layout mismatch is a clear error, not a table of failures."""
    if isinstance(sender, GrpcSender):
        import grpc

        try:
            await sender.call(target.bodies[0], timeout=target.timeout_s, metadata=sender.metadata)
        except grpc.aio.AioRpcError as e:
            raise EdgempError(f"the server rejected a benchmark request over gRPC at {target.url} "
                              f"({e.code().name}): {' '.join((e.details() or '')[:300].split())}") from e
        return
    try:
        async with session.post(target.url, data=target.bodies[0], headers=target.headers[0],
                                timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as r:
            if r.status != 200:
                text = " ".join((await r.text())[:300].split())
                raise EdgempError(f"the server rejected a benchmark request (HTTP {r.status}): {text}")
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise EdgempError(f"first request to {target.url} failed: {type(e).__name__} {e}") from e


def _label(kind: str, value: float, cfg: ServerBenchConfig) -> str:
    return f"c={int(value)}" if kind == "concurrency" else f"{cfg.distribution} {value:g}/s"


async def _measure(client: _Client, session: Sender, target: Target, cfg: ServerBenchConfig, kind: str,
                   value: float, is_edgemp: bool) -> ResultRow:
    before = await _snapshot(client, cfg.model, is_edgemp)
    if kind == "concurrency":
        res = await closed_loop(session, target, int(value), cfg.duration_s, cfg.warmup_s)
    else:
        res = await open_loop(session, target, value, cfg.duration_s, cfg.distribution, cfg.warmup_s, cfg.seed)
    after = await _snapshot(client, cfg.model, is_edgemp)
    return _row(cfg, kind, value, res, before, after)


def _row(cfg: ServerBenchConfig, kind: str, value: float, res: LoadResult, before, after) -> ResultRow:
    ident = {"model": cfg.model, "url": cfg.url, "protocol": cfg.protocol, "load": _label(kind, value, cfg),
             "mode": "closed" if kind == "concurrency" else "open",
             "concurrency": int(value) if kind == "concurrency" else None,
             "request_rate": value if kind == "rate" else None,
             "distribution": cfg.distribution if kind == "rate" else None, "batch": cfg.batch}
    lat = summarize(res.latencies_ns, cfg.percentiles)
    ok = res.latencies_ns.size
    server = stats_delta(before[0], after[0], cfg.model) or {}
    met = metrics_delta(before[1], after[1])
    if met:
        server["metrics"] = met
        server.setdefault("mean_batch_graphs", met.get("mean_batch_graphs"))
    metrics = {
        "requests": res.sent, "successes": int(ok), "errors": res.error_count, "error_kinds": res.errors,
        "duration_s": res.duration_s, "requests_per_s": ok / res.duration_s,
        "graphs_per_s": ok * cfg.batch / res.duration_s, "target_rate": value if kind == "rate" else None,
        "send_lag_p99_us": (percentile(res.send_lag_ns, 99) / 1e3) if res.send_lag_ns is not None and
        res.send_lag_ns.size else None,
        "server": server,
        "client_overhead_us": (lat.mean_us - server["request_us"]) if server.get("request_us") else None,
    }
    status = "ok" if ok else "failed"
    note = "" if ok else f"no successful requests ({res.errors})"
    row = ResultRow(ident, status, note, lat, stability(res.latencies_ns, cfg.windows, cfg.stability_threshold),
                    metrics)
    if cfg.raw:
        row.raw_us = [round(v / 1e3, 3) for v in res.latencies_ns.tolist()]
    return row


def _passes(row: ResultRow, bound_ms: float) -> bool:
    return row.ok and row.metrics["errors"] == 0 and row.latency.p(99) <= bound_ms * 1e3


async def _search(client: _Client, session, target: Target, cfg: ServerBenchConfig, is_edgemp: bool,
                  report: BenchReport) -> None:
    """Highest request rate with p99 <= bound and no errors: double until a failure, then bisect."""
    if 99.0 not in cfg.percentiles:
        raise EdgempError("--p99-bound-ms needs 99 among --percentiles")
    bound = cfg.p99_bound_ms
    rate = cfg.request_rates[0] if cfg.request_rates else 50.0
    best, lo, hi = None, 0.0, None
    trials = 0

    async def trial(r: float) -> bool:
        row = await _measure(client, session, target, cfg, "rate", r, is_edgemp)
        row.config["search"] = f"p99<={bound:g}ms"
        row.config["load"] = "search " + row.config["load"]
        passed = _passes(row, bound)
        row.metrics["meets_bound"] = passed
        report.rows.append(row)
        return passed

    while trials < 12:  # doubling / halving phase
        trials += 1
        if await trial(rate):
            best, lo = rate, rate
            if hi is not None:
                break
            rate *= 2
        else:
            hi = rate
            if best is not None:
                break
            rate /= 2
            if rate < 1.0:
                break
    for _ in range(cfg.search_steps if best is not None and hi is not None else 0):
        mid = (lo + hi) / 2
        if await trial(mid):
            best, lo = mid, mid
        else:
            hi = mid
    report.summary["p99_bound_ms"] = bound
    report.summary["max_rate_under_p99_bound"] = None if best is None else round(best, 1)
    if best is None:
        report.notes.append(f"no tried rate kept p99 under {bound:g} ms without errors")
    else:
        report.notes.append(f"max request rate with p99 <= {bound:g} ms: {best:.1f}/s "
                            f"(bracket {lo:.1f}..{hi if hi is not None else math.inf:.1f}/s)")
