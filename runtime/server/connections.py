"""Connection hygiene: header timeouts, a connection cap, and quiet accept errors.

aiohttp holds a connection as long as its peer keeps it open: a client that sends its
headers one byte a minute (slowloris), or opens sockets and says nothing, pins a file
descriptor each, and with enough of them the server stops accepting anyone. Here:

- a request's headers must be complete within ``header_timeout_s`` of the connection
  opening, or of its first byte after an idle keep-alive; otherwise 408 and close;
- an idle keep-alive connection closes after ``keepalive_timeout_s`` (aiohttp's timer);
- at ``max_connections``, the oldest connection still waiting for its headers is closed
  to make room (a slow client never locks out a fast one); if every connection is busy
  serving a request, the newcomer gets 503 and is closed;
- ``socket.accept()`` failures (file descriptors exhausted) are logged at most once per
  :data:`LOG_EVERY_S` with a count, not once per attempt.

Body timeouts (a minimum transfer rate) live in :mod:`edgemp.runtime.server.body`,
because the body is read by the handler, not by the protocol.
"""
from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import TYPE_CHECKING, Any

import httptools
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from edgemp.errors import clipped
from edgemp.runtime.server.config import ServerConfig

if TYPE_CHECKING:
    from edgemp.runtime.server.fastpath import FastPath

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
FD_RESERVE = 64  # descriptors kept for model files, logs and the listening socket
PENDING_LIMIT = 1 << 20  # bytes read ahead while a fast request runs; past it, reading pauses
FAST_RUN_KEEPALIVE_S = 1e6  # a connection serving a fast request is not idle


def _raw_response(status: str, message: str) -> bytes:
    """A complete JSON error response, written straight to a transport that has no request."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


_TIMEOUT_408 = _raw_response("408 Request Timeout", "request headers not received in time")
_BUSY_503 = _raw_response("503 Service Unavailable", "too many connections; retry shortly")


class RateLimitedLog:
    """Log the first event, then at most one line per ``every_s`` saying how many were folded in."""

    def __init__(self, log: logging.Logger, every_s: float = LOG_EVERY_S) -> None:
        self._log = log
        self._every_s = every_s
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._every_s:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" (and {self._suppressed} more like it in the last {now - self._last:.0f} s)"
        self._log.warning(message, *args)
        self._last, self._suppressed = now, 0


def connection_limit(requested: int) -> int:
    """``requested`` connections, lowered to what the open-file limit can hold."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= requested:
        return requested
    limit = max(soft - FD_RESERVE, 1)
    logger.warning("max_connections=%d exceeds the open-file limit (%d); using %d (raise it with ulimit -n)",
                   requested, soft, limit)
    return limit


class ConnectionGuard:
    """What every connection of one server shares: its settings, the cap, the logs and the fast path."""

    def __init__(self, config: ServerConfig, fast: "FastPath | None" = None, connections: Any = None) -> None:
        self.fast = fast
        self.connections = connections  # the app's OpenConnections (state.py): counted here
        self.header_timeout_s = config.header_timeout_s
        self.max_connections = connection_limit(config.max_connections)
        self.evicted_log = RateLimitedLog(logger)
        self.refused_log = RateLimitedLog(logger)
        self.timeout_log = RateLimitedLog(logger)
        self.bad_http_log = RateLimitedLog(logger)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol plus a header deadline and the connection cap."""

    guard: ConnectionGuard

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._opened = time.monotonic()
        # A parser that follows aiohttp's bytes only to know where in a request they end: between
        # requests (the fast path may take the next read), in a request's headers (the header
        # deadline runs) or in its body (it does not). None once it cannot tell.
        self._stream: _StreamTracker | None = _StreamTracker()
        # the request the header deadline runs for (the tracker's count of begun requests), or None
        self._timed_message: int | None = None
        self._fast_busy = False  # a fast request is being served: later bytes wait for its answer
        self._fast_pending: list[bytes] = []
        self._fast_paused = False
        self._handled = 0  # requests aiohttp parsed (its _request_count) whose handler has finished
        self._fast_served = False  # the fast path has taken a request on this connection
        self._counted = False  # in the app's OpenConnections

    # -- waiting for headers --------------------------------------------------------------
    @property
    def awaiting_headers(self) -> bool:
        """True while no request is queued or being handled (idle or mid-headers).

        Every request aiohttp parsed must have finished its handler, not merely have left
        its queue: aiohttp takes a request off ``_messages`` and only then starts the task
        that handles it, and before Python 3.12 that task first runs a loop turn later. uvloop
        reads sockets in between, so a pipelined request read in that gap would otherwise be
        served here and answered before the one aiohttp was about to answer.
        """
        return (self._handled == self._request_count and not self._request_in_progress and not self._messages
                and not self._fast_busy)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self.guard.header_timeout_s > 0:
            self._header_timer = self._loop.call_later(
                self.guard.header_timeout_s, self._on_header_timeout, self._request_count)

    def _cancel_header_timer(self) -> None:
        self._timed_message = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _follow_headers(self) -> None:
        """After a read: the deadline runs while a request's headers are incomplete, from the
        read its first byte came in, and only then. A body still arriving is not late headers:
        a request refused before its body was read (413, 401, 404) used to be answered a second
        time, with a 408, while its body came in, and a later request on the connection could
        read that stale 408 as its own answer."""
        stream = self._stream
        if stream is None:
            return
        if stream.headers_pending:
            if self._timed_message != stream.begun:  # a new request's headers, begun in this read
                self._cancel_header_timer()
                self._timed_message = stream.begun
                self._arm_header_timer()
        elif self._any_request_began(stream):
            self._cancel_header_timer()
        # else no request has begun at all (only blank lines so far): the opening deadline stands

    def _any_request_began(self, stream: "_StreamTracker") -> bool:
        """Whether any request has begun on this connection (aiohttp's, or one the fast path took
        without the tracker seeing it); blank lines before the first do not begin one."""
        return bool(stream.begun or self._handled or self._fast_served)

    def _on_header_timeout(self, count_when_armed: int) -> None:
        self._header_timer = None
        stream = self._stream
        if stream is not None:
            # late only if the headers it was armed for are still incomplete, or nothing at all came
            late = stream.headers_pending or not self._any_request_began(stream)
        else:
            late = self._request_count == count_when_armed and self.awaiting_headers
        if not late or self.transport is None:
            return  # a request arrived in time
        self.guard.timeout_log.warning("closed a connection that sent no complete request headers in %.0f s",
                                       self.guard.header_timeout_s)
        self.transport.write(_TIMEOUT_408)
        self.force_close()

    # -- protocol events ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if manager is not None and len(manager.connections) >= self.guard.max_connections:
            if not self._evict_one_waiting(manager):
                self._refused = True
                self.guard.refused_log.warning("refused a connection: %d open, all busy (max_connections)",
                                               len(manager.connections))
                transport.write(_BUSY_503)  # type: ignore[attr-defined]
                transport.close()
                return
        super().connection_made(transport)
        self._arm_header_timer()
        self._timed_message = 1  # the first request's headers: due within the timeout of the connection opening
        if self.guard.connections is not None:
            self.guard.connections.opened()
            self._counted = True

    def _evict_one_waiting(self, manager: Server) -> bool:
        """Close the longest-waiting connection that has not sent a request (at the cap)."""
        waiting = [h for h in manager.connections
                   if isinstance(h, GuardedRequestHandler) and h.awaiting_headers and h.transport is not None]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda h: h._opened)
        self.guard.evicted_log.warning("at max_connections (%d): closed the oldest idle or slow connection",
                                       self.guard.max_connections)
        oldest.force_close()
        return True

    def data_received(self, data: bytes) -> None:
        if self._refused or self._close or self._force_close:
            return  # closing: aiohttp discards what comes now (no fast answer, no header deadline either)
        if self._fast_busy:  # in order: these bytes are read once the fast answer is written
            self._fast_pending.append(data)
            if not self._fast_paused and sum(map(len, self._fast_pending)) > PENDING_LIMIT and self.transport:
                self._fast_paused = True
                self.transport.pause_reading()
            return
        stream = self._stream
        if stream is not None and data and stream.between_requests and self.awaiting_headers \
                and self.guard.fast is not None and self.transport is not None and self._manager is not None \
                and self.guard.fast.take(self, data):
            self._fast_served = True
            self._cancel_header_timer()
            return
        pieces: Any = (data,)
        if stream is not None:
            between, completed = stream.between_requests, stream.completed
            if not stream.feed(data):
                self._stream = None
                if between and 0 < stream.completed - completed <= MAX_SPLIT_REQUESTS:
                    # Whole requests, then bytes no parser accepts: aiohttp answers a read that
                    # fails to parse with one 400 in place of every request in it. Fed one by
                    # one, each request is answered, and then the 400.
                    pieces = _split_after_requests(data, stream.completed - completed)
        waiting = data and self.awaiting_headers  # first bytes of a request after an idle keep-alive
        before = self._request_count
        for piece in pieces:
            super().data_received(piece)
        if self._stream is not None:
            self._follow_headers()
        elif self._request_count != before:  # the tracker gave up: by aiohttp's count of requests
            self._cancel_header_timer()
        elif waiting:  # headers still incomplete: they have until the deadline. A request whose
            self._arm_header_timer()  # headers came in one read (nearly all) never arms a timer.

    # -- the fast path's side of the connection ------------------------------------------
    def fast_write(self, response: bytes) -> None:
        """Send a fast request's answer; the connection is idle again (keep-alive timer restarts)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        self._opened = time.monotonic()
        if self._keepalive_timeout > 0:  # as aiohttp does after each request it answers
            self._keep_alive_until(self._loop.time() + self._keepalive_timeout)

    def _keep_alive_until(self, close_time: float) -> None:
        self._next_keepalive_close_time = close_time
        handle = self._keepalive_handle
        if handle is not None:
            if handle.when() <= close_time:
                return  # it fires first and re-arms itself for close_time
            handle.cancel()
        self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)

    def _process_keepalive(self) -> None:
        if self._fast_busy:
            # aiohttp re-arms this timer when its handler loop resumes after a request, which can
            # be after a fast request that followed at once has begun: that one is not idle time.
            self._keepalive_handle = None
            self._keep_alive_until(self._loop.time() + max(self._keepalive_timeout, 1.0))
            return
        super()._process_keepalive()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        if self._handled == self._request_count and not self._messages and not self._request_in_progress \
                and self._task_handler is not None and not self._task_handler.done():
            # Every request answered: aiohttp's handler loop waits for the next one, or reads the
            # rest of a body it refused unread (its lingering read, up to 10 s) — bytes a closing
            # connection now discards, so that read would only hold the drain.
            self._task_handler.cancel()
        await super().shutdown(timeout)

    def fast_begin(self) -> None:
        """A fast request that has to wait (an infer) starts: later bytes wait for its answer."""
        self._fast_busy = True
        # aiohttp sees an idle connection meanwhile: its keep-alive timer must not close it.
        self._next_keepalive_close_time = self._loop.time() + FAST_RUN_KEEPALIVE_S

    def fast_finish(self, response: bytes) -> None:
        """Its answer: written in the callback the request core finished in (before a drain
        that waited for this request can go on to close the connection), then the bytes
        that arrived meanwhile are read."""
        self.fast_write(response)
        self._fast_done()

    def fast_abort(self) -> None:
        """It cannot be answered: close rather than leave the client waiting."""
        if self.transport is not None:
            self.transport.close()
        self._fast_done()

    def _fast_done(self) -> None:
        self._fast_busy = False
        pending, self._fast_pending = self._fast_pending, []
        if self._fast_paused and self.transport is not None:
            self._fast_paused = False
            self.transport.resume_reading()
        if pending and self.transport is not None:
            self.data_received(b"".join(pending))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._refused:
            return
        super().connection_lost(exc)
        if self._counted:
            self._counted = False
            self.guard.connections.closed()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Malformed HTTP (bad header bytes, bad chunking): a JSON 4xx and one rate-limited log line.

        aiohttp answers these in text/plain and logs a traceback per request, which lets
        any client flood the log; V2 clients expect a JSON error body.
        """
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        text = clipped(" ".join(str(exc or message or "malformed request").split()), 200)
        self.guard.bad_http_log.warning("malformed HTTP request from %s: %s", request.remote, text)
        response = web.json_response({"error": f"malformed HTTP request: {text}"}, status=status)
        response.force_close()
        return response

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await super()._handle_request(*args, **kwargs)
        finally:
            self._handled += 1  # (see awaiting_headers)
        self._opened = time.monotonic()  # idle since now: eviction order is by time waiting
        return result


class _StreamTracker:
    """Follows a connection's bytes with httptools to know whether they end between requests.

    The fast path may only take a read when aiohttp's parser holds nothing of a request
    (else the read is the middle of one). Bytes aiohttp reads pass through here first;
    ``feed`` returns False on anything it cannot follow (the fast path is then off for
    the connection: aiohttp alone parses it).
    """

    __slots__ = ("_parser", "_begun", "_headed", "_done")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._begun = self._headed = self._done = 0

    @property
    def between_requests(self) -> bool:
        return self._begun == self._done

    @property
    def headers_pending(self) -> bool:
        """A request has begun whose headers are not complete yet."""
        return self._begun > self._headed

    @property
    def begun(self) -> int:
        return self._begun

    def on_message_begin(self) -> None:
        self._begun += 1

    def on_headers_complete(self) -> None:
        self._headed += 1

    def on_message_complete(self) -> None:
        self._done += 1

    def feed(self, data: bytes) -> bool:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # an upgrade: not HTTP/1.1 requests
            return False
        return True

    @property
    def completed(self) -> int:
        return self._done


MAX_SPLIT_REQUESTS = 64  # more whole requests than this in one read before bad bytes: one 400 for all


def _split_after_requests(data: bytes, count: int) -> list[bytes]:
    """``data`` cut after each of its first ``count`` whole requests, then the rest.

    Each request's end is the shortest prefix a fresh parser completes a request in, found
    by doubling then halving (O(n log n) over the read): httptools reports that a request
    ended, not where.
    """
    pieces, pos = [], 0
    for _ in range(count):
        size = 64
        while pos + size < len(data) and not _completes_a_request(data[pos:pos + size]):
            size *= 2
        lo, hi = pos + size // 2 + 1 if size > 64 else pos + 1, min(pos + size, len(data))
        if not _completes_a_request(data[pos:hi]):
            break
        while lo < hi:
            mid = (lo + hi) // 2
            if _completes_a_request(data[pos:mid]):
                hi = mid
            else:
                lo = mid + 1
        pieces.append(data[pos:hi])
        pos = hi
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def _completes_a_request(data: bytes) -> bool:
    tracker = _StreamTracker()
    tracker.feed(data)  # a request that completed before bad bytes still counts
    return tracker.completed >= 1


class _GuardedServer(Server):
    """aiohttp's protocol factory, building :class:`GuardedRequestHandler` connections."""

    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections follow a :class:`ServerConfig`."""

    def __init__(self, app: web.Application, config: ServerConfig, **kwargs: Any) -> None:
        # auto_decompress=False: bodies are inflated by edgemp.runtime.server.body, in a
        # worker thread and only up to the body limit (aiohttp inflates on the event loop).
        super().__init__(app, keepalive_timeout=config.keepalive_timeout_s, auto_decompress=False, **kwargs)
        # The fast path answers without aiohttp's access log: with that log on, aiohttp serves all.
        from edgemp.runtime.server import fastpath  # it builds on the middleware, which imports this module

        from edgemp.runtime.server.state import STATE

        fast = fastpath.attach(app) if "access_log" in kwargs and kwargs["access_log"] is None else None
        state = app.get(STATE)
        connections = None if state is None else state.connections
        if connections is not None:
            connections.counting = True  # batches may close once every connection has sent
        self._guard = ConnectionGuard(config, fast, connections)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # same state; only the protocol it builds differs
        server.guard = self._guard  # type: ignore[attr-defined]
        return server


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Fold repeated ``socket.accept()`` failures (EMFILE) into one line per interval.

    asyncio reports each failed accept with a traceback; with descriptors exhausted that
    is thousands of lines a second, which fills the disk and hides everything else.
    """
    accept_log = RateLimitedLog(logging.getLogger("asyncio"))
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        message = str(context.get("message", ""))
        if "accept" in message:
            exc = context.get("exception")
            accept_log.warning("%s: %s (is the open-file limit too low?)", message, exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
