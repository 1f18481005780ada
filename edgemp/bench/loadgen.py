"""Load generators: closed loop (fixed concurrency) and open loop (arrival schedule).

Requests go out through a :class:`Sender`: raw keep-alive HTTP/1.1 for ``http://`` (a general
client costs as much per request as a small model, see :mod:`edgemp.bench.rawhttp`), aiohttp
for ``https://``, or gRPC ``ModelInfer`` with pre-serialized messages. :func:`ceiling` drives
the server's cheapest endpoint the same way, so a result near it is marked client-bound.

Open loop charges every request from its *intended* send time on a schedule fixed in
advance (Poisson or constant arrivals), not from when it actually went out: if the
server (or this client) stalls, the requests due during the stall carry the stall in
their latency instead of silently not being sent (coordinated omission). Closed loop is
the perf_analyzer concurrency mode: each of C workers sends, waits, sends again.
Every request is accounted for: success, HTTP error, timeout or connection error.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from edgemp.bench.rawhttp import AsyncRawConnection, build_request
from edgemp.errors import EdgempError

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("poisson", "constant")
MAX_SCHEDULED = 1 << 25  # requests in one open-loop load: ~270 MB per array of the schedule


@dataclass
class LoadResult:
    """Samples of one measured load. ``latencies_ns`` are successes in intended-start order."""

    latencies_ns: np.ndarray
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    duration_s: float = 0.0
    send_lag_ns: np.ndarray | None = None  # open loop: actual - intended send time
    error_latencies_ns: list[int] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Target:
    """Where and how to send: the infer URL, pre-encoded bodies and their headers."""

    url: str
    bodies: tuple[bytes, ...]
    headers: tuple[dict[str, str], ...]
    timeout_s: float = 10.0


class Sender(Protocol):
    """Sends request ``i`` (round-robin over pre-encoded bodies); None on success, else an error kind."""

    async def send(self, i: int) -> str | None: ...

    async def close(self) -> None: ...


class RawHttpSender:
    """Keep-alive raw HTTP/1.1 connections, one per concurrent request, reused."""

    def __init__(self, target: Target, method: str = "POST") -> None:
        url = urlsplit(target.url)
        if url.scheme != "http" or not url.hostname:
            raise EdgempError(f"the raw HTTP sender takes http:// URLs, got {target.url!r}")
        self.host, self.port = url.hostname, url.port or 80
        path = url.path or "/"
        self.wires = [build_request(method, f"{self.host}:{self.port}", path, b, h)
                      for b, h in zip(target.bodies, target.headers)]
        self.timeout_s = target.timeout_s
        self._free: list[AsyncRawConnection] = []

    async def send(self, i: int) -> str | None:
        conn = self._free.pop() if self._free else None
        try:
            if conn is None:
                conn = await AsyncRawConnection.open(self.host, self.port)
            response = await asyncio.wait_for(conn.request(self.wires[i % len(self.wires)]), self.timeout_s)
        except asyncio.TimeoutError:
            if conn is not None:
                conn.close()  # mid-response: the connection's state is unknown
            return "timeout"
        except (OSError, EdgempError) as e:
            if conn is not None:
                conn.close()
            return f"connection_{type(e).__name__}"
        self._free.append(conn)
        return None if response.status == 200 else f"http_{response.status}"

    async def close(self) -> None:
        for conn in self._free:
            conn.close()
        self._free.clear()


class AiohttpSender:
    """Any URL aiohttp takes (https included), through a caller's session."""

    def __init__(self, session: aiohttp.ClientSession, target: Target) -> None:
        self.session, self.target = session, target

    async def send(self, i: int) -> str | None:
        return await _send(self.session, self.target, i)

    async def close(self) -> None:
        return None


class GrpcSender:
    """KServe V2 gRPC: one channel, pre-serialized requests, raw bytes back (never decoded)."""

    def __init__(self, address: str, method: str, bodies: tuple[bytes, ...], timeout_s: float,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            import grpc
        except ImportError as e:
            raise EdgempError("--protocol grpc needs grpcio: pip install grpcio") from e
        self._grpc = grpc
        self.channel = grpc.aio.insecure_channel(address)
        self.call = self.channel.unary_unary(method)
        self.bodies, self.timeout_s, self.metadata = bodies, timeout_s, metadata or None

    async def send(self, i: int) -> str | None:
        try:
            await self.call(self.bodies[i % len(self.bodies)], timeout=self.timeout_s, metadata=self.metadata)
        except self._grpc.aio.AioRpcError as e:
            return "timeout" if e.code() == self._grpc.StatusCode.DEADLINE_EXCEEDED else f"grpc_{e.code().name}"
        return None

    async def close(self) -> None:
        await self.channel.close()


async def _dispatch(client: Any, target: Target | None, i: int) -> str | None:
    if isinstance(client, aiohttp.ClientSession):
        return await _send(client, target, i)  # type: ignore[arg-type]
    return await client.send(i)


async def ceiling(sender: Sender, concurrency: int, duration_s: float) -> float:
    """Requests/s this client reaches against ``sender`` (the server's cheapest endpoint)."""
    res = await closed_loop(sender, None, concurrency, duration_s, warmup_s=min(0.2, duration_s))
    return res.latencies_ns.size / res.duration_s


async def _send(session: aiohttp.ClientSession, target: Target, i: int) -> str | None:
    """One request; returns None on success or an error kind."""
    j = i % len(target.bodies)
    try:
        async with session.post(target.url, data=target.bodies[j], headers=target.headers[j],
                                timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as resp:
            await resp.read()
            return None if resp.status == 200 else f"http_{resp.status}"
    except asyncio.TimeoutError:
        return "timeout"
    except aiohttp.ClientError as e:
        return f"connection_{type(e).__name__}"


async def closed_loop(session: aiohttp.ClientSession | Sender, target: Target | None, concurrency: int,
                      duration_s: float, warmup_s: float = 0.5) -> LoadResult:
    """``concurrency`` workers back to back; requests started in the warm-up are not recorded.

    ``session`` is a :class:`Sender` (``target`` unused) or an aiohttp session for ``target``.
    """
    if concurrency < 1:
        raise EdgempError(f"--concurrency must be >= 1, got {concurrency}")
    start = time.perf_counter_ns()
    measure_from = start + int(warmup_s * 1e9)
    end = measure_from + int(duration_s * 1e9)
    samples: list[tuple[int, int]] = []
    errors: dict[str, int] = {}
    err_lat: list[int] = []
    counter = iter(range(1 << 62))
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while True:
            t0 = time.perf_counter_ns()
            if t0 >= end:
                return
            err = await _dispatch(session, target, next(counter))
            t1 = time.perf_counter_ns()
            if t0 < measure_from:
                continue
            sent += 1
            if err is None:
                samples.append((t0, t1 - t0))
            else:
                errors[err] = errors.get(err, 0) + 1
                err_lat.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.sort()
    lat = np.fromiter((s[1] for s in samples), np.int64, len(samples))
    return LoadResult(lat, errors, sent, duration_s, None, err_lat)


def arrival_offsets_ns(rate: float, duration_s: float, distribution: str, seed: int = 0) -> np.ndarray:
    """Intended send times (ns from start) for ``rate`` requests/s over ``duration_s``."""
    if rate <= 0:
        raise EdgempError(f"--request-rate must be > 0, got {rate}")
    if distribution not in DISTRIBUTIONS:
        raise EdgempError(f"unknown distribution {distribution!r}; choose from {list(DISTRIBUTIONS)}")
    expected = rate * duration_s
    if not expected <= MAX_SCHEDULED:  # the schedule is built up front: a few arrays of n floats
        raise EdgempError(f"{rate:g} requests/s for {duration_s:g} s schedules {expected:.3g} requests; "
                          f"at most {MAX_SCHEDULED:,} per load (lower --request-rate or --duration)")
    n = max(1, int(np.ceil(expected * 1.2)) + 16)
    if distribution == "constant":
        gaps = np.full(n, 1.0 / rate)
    else:
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    t = np.concatenate([[0.0], np.cumsum(gaps)[:-1]])
    return np.round(t[t < duration_s] * 1e9).astype(np.int64)


async def open_loop(session: aiohttp.ClientSession | Sender, target: Target | None, rate: float, duration_s: float,
                    distribution: str = "poisson", warmup_s: float = 0.5, seed: int = 0,
                    on_sent: Callable[[int], None] | None = None) -> LoadResult:
    """Send on a fixed schedule, never waiting for replies; latency = completion - intended start."""
    offsets = arrival_offsets_ns(rate, warmup_s + duration_s, distribution, seed)
    warm_ns = int(warmup_s * 1e9)
    n = offsets.size
    lat = np.full(n, -1, np.int64)
    lag = np.zeros(n, np.int64)
    kinds: list[str | None] = [None] * n
    start = time.perf_counter_ns() + 2_000_000  # a little slack to create the first task on time
    intended = start + offsets

    async def one(i: int) -> None:
        lag[i] = time.perf_counter_ns() - intended[i]
        err = await _dispatch(session, target, i)
        lat[i] = time.perf_counter_ns() - intended[i]
        kinds[i] = err

    tasks = []
    for i in range(n):
        delay = (intended[i] - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        if on_sent:
            on_sent(i)
    timeout_s = target.timeout_s if target is not None else getattr(session, "timeout_s", 10.0)
    done, pending = await asyncio.wait(tasks, timeout=timeout_s + 1.0) if tasks else (set(), set())
    for t in pending:  # the per-request timeout should have fired; never drop one silently
        t.cancel()
    measured = offsets >= warm_ns
    errors: dict[str, int] = {}
    ok = []
    err_lat = []
    for i in np.flatnonzero(measured):
        kind = kinds[i] if lat[i] >= 0 else "timeout"
        if kind is None:
            ok.append(lat[i])
        else:
            errors[kind] = errors.get(kind, 0) + 1
            err_lat.append(int(lat[i]) if lat[i] >= 0 else int(timeout_s * 1e9))
    return LoadResult(np.asarray(ok, np.int64), errors, int(measured.sum()), duration_s, lag[measured], err_lat)
