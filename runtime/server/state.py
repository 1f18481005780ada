"""What every handler shares: the served models, settings, and the drain state.

Draining (SIGTERM) flips readiness to false and turns *new* inference requests away with
503 (gRPC: UNAVAILABLE), while :meth:`ServerState.wait_idle` lets the shutdown path wait
for every request already admitted, whichever listener it came from. Admission and the
in-flight count change together, with no await in between, so no request can slip in
after the drain starts and be dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edgemp.errors import EdgempError, QueueFullError, RequestTimeoutError, ShuttingDownError, clipped
from edgemp.runtime.batcher import RequestTiming
from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server.metrics import ServerMetrics
from edgemp.runtime.server.middleware import ClientGoneError, NotFoundError, UnavailableError
from edgemp.runtime.server.served import ServedModel

logger = logging.getLogger(__name__)


def outcome_of(error: BaseException) -> str:
    """The statistics outcome label for a failed request."""
    if isinstance(error, (QueueFullError, ShuttingDownError, UnavailableError)) or getattr(error, "status", 0) == 503:
        return "rejected"  # the server's capacity (a full queue or body buffer), not the request's fault
    if isinstance(error, RequestTimeoutError):
        return "timeout"
    if isinstance(error, EdgempError):
        return "bad_request"
    return "failed"


class RequestScope:
    """Times one admitted inference request and records its outcome exactly once.

    A context manager (made by :meth:`ServerState.admit`): on leaving, the request is out
    of the in-flight count, and an exception it raised is its failure outcome. A class
    rather than a ``contextlib`` generator: this runs once per request.
    """

    __slots__ = ("state", "served", "start_ns", "input_ns", "done")

    def __init__(self, state: "ServerState", served: ServedModel) -> None:
        self.state = state
        self.served = served
        self.start_ns = time.perf_counter_ns()
        self.input_ns = 0  # decode + split, set by the request core
        self.done = False

    def success(self, graphs: int, timing: RequestTiming | None, output_ns: int) -> None:
        total = time.perf_counter_ns() - self.start_ns
        queue_ns = timing.queue_ns if timing else 0
        infer_ns = timing.compute_ns if timing else 0
        self.served.stats.record_success(graphs, total, queue_ns, self.input_ns, infer_ns, output_ns)
        self.done = True

    def failure(self, error: BaseException) -> None:
        if self.done:
            return
        self.served.stats.record_failure(outcome_of(error), time.perf_counter_ns() - self.start_ns)
        self.done = True

    def __enter__(self) -> "RequestScope":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> None:
        if error is not None:
            if isinstance(error, asyncio.CancelledError) and error.args and isinstance(error.args[0], Exception):
                self.failure(error.args[0])  # cancelled by the server with its reason (core.expire)
            elif isinstance(error, (asyncio.CancelledError, ClientGoneError)):
                self.done = True  # the client went away; not a server outcome
            elif isinstance(error, Exception):
                self.failure(error)
        self.state.leave()


class OpenConnections:
    """The server's open connections, as a bound on how many requests can be outstanding.

    An HTTP/1.1 connection has at most one request in the server at a time (the fast path
    and aiohttp both read a pipelined request only after answering the one before), so
    with ``n`` such connections open and nothing else, at most ``n`` requests can wait:
    once a model's queue holds that many, its batch closes without waiting out
    ``max_queue_delay_us`` (:attr:`edgemp.runtime.batcher.Batcher.most_outstanding`). An
    HTTP/2 (gRPC) connection can carry any number, so while one is open there is no bound.
    A request whose client went away stays queued while its connection no longer counts; the
    batch then closes a little early, which costs batch size, never an answer.
    Counted by the listeners edgemp starts (:func:`edgemp.runtime.server.run.serve_app`);
    an app served by some other runner has no count and batches wait their delay as before.
    Changed on the event loop; read by the batcher threads (plain ints).
    """

    __slots__ = ("counting", "http", "multiplexed", "_models")

    def __init__(self, models: dict[str, ServedModel]) -> None:
        self.counting = False  # True once a listener that counts is attached
        self.http = 0
        self.multiplexed = 0
        self._models = models

    def most_outstanding(self) -> int | None:
        """The most requests the open connections can have in the server; None if unbounded."""
        if not self.counting or self.multiplexed:
            return None
        return self.http

    def opened(self, multiplexed: bool = False) -> None:
        if multiplexed:
            self.multiplexed += 1
        else:
            self.http += 1

    def closed(self, multiplexed: bool = False) -> None:
        if multiplexed:
            self.multiplexed -= 1
        else:
            self.http -= 1
        for served in self._models.values():  # a batch waiting for this connection can go now
            batcher = served.batcher
            if batcher.config.max_queue_delay_us and batcher.queue_depth:
                batcher.wake()


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    config: ServerConfig
    metrics: ServerMetrics | None = None  # set by create_app; it reads this state at scrape time
    peers: Any = None  # the other workers' statistics (edgemp.runtime.server.peers.Peers) under --workers N
    draining: bool = False
    inflight: int = 0
    connections: OpenConnections = field(init=False, repr=False)
    _idle: asyncio.Event | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.connections = OpenConnections(self.models)
        for served in self.models.values():
            served.batcher.most_outstanding = self.connections.most_outstanding

    def model(self, name: str, version: str | None = None) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise NotFoundError(f"unknown model {clipped(name)!r}; serving {sorted(self.models)}")
        if version not in (None, "", served.version):
            raise NotFoundError(
                f"model {name!r} has no version {clipped(version, 16)!r}; serving version {served.version}")
        return served

    @property
    def ready(self) -> bool:
        return not self.draining and bool(self.models)

    def alone(self) -> bool:
        """True when exactly one inference request is admitted (the caller's own)."""
        return self.inflight == 1

    def admit(self, served: ServedModel) -> RequestScope:
        """Admit one inference request (use the scope in ``with``), or raise UnavailableError
        (503) while draining."""
        scope = RequestScope(self, served)
        if self.draining:
            error = UnavailableError("the server is shutting down and accepts no new requests")
            scope.failure(error)
            raise error
        self.inflight += 1
        return scope

    def leave(self) -> None:
        """An admitted request has finished (its scope was left)."""
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    def begin_drain(self) -> None:
        if not self.draining:
            logger.info("draining: refusing new requests, finishing %d in flight", self.inflight)
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is in flight; False if the timeout passed first."""
        deadline = time.monotonic() + timeout_s
        while self.inflight:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                return False
        return True


STATE = web.AppKey("edgemp_state", ServerState)
