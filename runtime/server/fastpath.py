"""The hot routes without aiohttp's per-request machinery: health probes, V2 infer, /v1 predict.

aiohttp turns every request into a Request, a task, a middleware chain and a StreamResponse;
measured here (benchmarks/results/server.md §0b) that costs ~40 µs of server CPU for a
health GET and ~90 µs for a V2 binary infer, more than everything edgemp does around the
model. This path parses the request with httptools and answers from the same request core
(:mod:`edgemp.runtime.server.core`) on the same connection, writing the response bytes itself.

A request takes it only when nothing about it needs aiohttp: one whole request in one read,
on a connection with nothing else in progress, HTTP/1.1 keep-alive, ``GET`` of a health
probe or ``POST`` to a served model's V2 ``infer`` or ``/v1`` ``predict`` with a
``Content-Length`` under the offload size, no ``Content-Encoding``, ``Transfer-Encoding`` or
``Expect``, the bearer token (when one is set) right, and the server not draining. Anything
else — a partial read, a pipelined request, a limit, a bad token, unparsable bytes — goes to
aiohttp untouched, so every limit and error answer it has stays the one answer for those
requests. With ``--access-log`` on, aiohttp serves everything (it writes that log). An error
raised while serving a fast request is answered exactly as the middleware answers it
(:func:`edgemp.runtime.server.middleware.error_answer`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from edgemp.runtime.server import core, jsoncodec
from edgemp.runtime.server.header_plans import header_bytes
from edgemp.runtime.server.auth import bearer_matches, token_bytes
from edgemp.runtime.server.body import BadBodyError
from edgemp.runtime.server.middleware import BODY_READER, error_answer
from edgemp.runtime.server.rows import RowGroups
from edgemp.runtime.server.state import STATE
from edgemp.runtime.server.v1 import v1_call
from edgemp.runtime.server.v2 import HttpCall

if TYPE_CHECKING:
    from aiohttp import web

    from edgemp.runtime.server.connections import GuardedRequestHandler

logger = logging.getLogger(__name__)

HEALTH = {b"/v2/health/live": False, b"/v2/health/ready": True}  # path -> answers readiness
_PREFIXES = (b"GET /v2/health/", b"POST /v2/models/", b"POST /v1/models/")
_REFUSING = frozenset({b"content-encoding", b"transfer-encoding", b"expect", b"upgrade"})
MAX_ROUTE_HEAD = 2048  # bytes of request line + headers; longer heads are parsed every time
MAX_ROUTES = 1024  # heads kept per server: clients x distinct body lengths
# aiohttp's own header limits (its RequestHandler defaults): a request past them is aiohttp's to
# refuse (400), so both paths answer the same bytes the same way
MAX_LINE = MAX_FIELD = 8190
MAX_HEADERS = 128


class _Parsed:
    """httptools callbacks: one request's URL, the headers this path looks at, and its body."""

    __slots__ = ("parser", "url", "headers", "count", "body", "messages", "complete", "odd", "keep_alive")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = False  # read when the headers end: llhttp resets it once the message completes
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.count = 0  # header fields
        self.body: list[bytes] = []
        self.messages = 0
        self.complete = False
        self.odd = False  # a header that only aiohttp handles, or one given twice

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE:
            self.odd = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.count += 1
        if name in self.headers or name in _REFUSING or self.count > MAX_HEADERS \
                or len(name) > MAX_FIELD or len(value) > MAX_FIELD:
            self.odd = True
        self.headers[name] = value

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.keep_alive = parser.get_http_version() == "1.1" and parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Route:
    """What a fast POST's head decided (model, protocol, body length), kept by its exact bytes.

    A keep-alive client sends the same head for every request of the same size: the same
    request line, headers, token and ``Content-Length``. Everything the checks of
    :meth:`FastPath.take` read from a head is a function of its bytes (the models and the
    token are fixed for the server's life), so a head that passed them once passes them
    again: a later request with the same head and a body of that length skips the HTTP
    parse and the checks (~5 µs of the event loop's ~45 per request at 32 clients). Only
    draining, the buffer's room and the body itself are looked at again.
    """

    __slots__ = ("served", "v2", "header_length", "header_bytes", "length", "url", "decode")

    def __init__(self, served: Any, v2: bool, header_length: str | None, length: int, url: bytes) -> None:
        self.served = served
        self.v2 = v2
        self.header_length = header_length
        self.header_bytes = header_bytes(header_length, length) if v2 else 0  # 0: no header plan can fit
        self.length = length
        self.url = url
        self.decode = self._decode_v2 if v2 else self._decode_v1

    def _decode_v2(self, data: bytes) -> HttpCall:
        served = self.served
        return HttpCall(served, served.header_plans.decode(data, self.header_length, served.input_types))

    def _decode_v1(self, data: bytes) -> Any:
        return v1_call(self.served, data)


class _Answer:
    """The request core's answer to one fast request, written as the HTTP response."""

    __slots__ = ("reader", "held", "conn", "v2", "url")

    def __init__(self, reader: Any, held: int, conn: "GuardedRequestHandler", route: _Route) -> None:
        self.reader = reader
        self.held = held
        self.conn = conn
        self.v2 = route.v2
        self.url = route.url

    def __call__(self, payload: Any, error: BaseException | None) -> None:
        self.reader.release_bytes(self.held)
        try:
            if error is not None:
                response = _error_response(error, self.url)
            elif not self.v2:
                response = _response(200, b"application/json", payload)
            elif payload[1] is None:  # a V2 JSON answer
                response = _response(200, b"application/json", payload[0])
            else:
                response = _response(200, b"application/octet-stream", payload[0], payload[1])
        except Exception:  # noqa: BLE001 - cannot answer: close rather than leave the client waiting
            logger.exception("could not write the answer to %s", self.url.decode("latin-1"))
            self.conn.fast_abort()
            return
        self.conn.fast_finish(response)


class _Clock:
    """The ``Date`` header, formatted once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second, self.value = now, formatdate(now, usegmt=True).encode()
        return self.value


_CLOCK = _Clock()


_HEADS: dict[tuple, bytes] = {}  # (status, content type, header length, body length) -> head up to the Date
MAX_HEADS = 4096  # answers of a few sizes per model: a few dozen in practice


def _response(status: int, content_type: bytes | None, body: bytes, json_length: int | None = None) -> bytes:
    """The whole HTTP/1.1 response; ``json_length`` is a V2 binary answer's JSON header length."""
    key = (status, content_type, json_length, len(body))
    head = _HEADS.get(key)
    if head is None:
        head = b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
        if content_type is not None:
            head += b"Content-Type: " + content_type + b"\r\n"
        if json_length is not None:
            head += b"Inference-Header-Content-Length: %d\r\n" % json_length
        head += b"Content-Length: %d\r\nDate: " % len(body)
        if len(_HEADS) >= MAX_HEADS:
            _HEADS.clear()
        _HEADS[key] = head
    return b"".join((head, _CLOCK.date(), b"\r\nServer: edgemp\r\n\r\n", body))


def _write(conn: "GuardedRequestHandler", url: bytes, make: Any, *args: Any) -> None:
    """Answer a fast request with ``make(*args)``; if that fails, close rather than leave the client waiting."""
    try:
        response = make(*args)
    except Exception:  # noqa: BLE001
        logger.exception("could not write the answer to %s", url.decode("latin-1"))
        conn.fast_abort()
        return
    conn.fast_finish(response)


def _error_response(error: BaseException, url: bytes) -> bytes:
    """A fast POST's error, answered exactly as the middleware answers it."""
    status, message = error_answer(error, "POST", url.decode("latin-1"))
    return _response(status, b"application/json; charset=utf-8", jsoncodec.dumps({"error": message}))


class FastPath:
    """The fast routes of one app (see the module docstring); one per server, shared by its connections."""

    def __init__(self, app: "web.Application") -> None:
        self.state = app[STATE]
        self.reader = app[BODY_READER]
        token = self.state.config.auth_token
        self.expected = token_bytes(token)
        self.max_length = min(self.reader.max_body_bytes, self.state.config.offload_bytes - 1)
        self._routes: dict[bytes, _Route] = {}  # a fast POST's head bytes -> what it decided
        self._rows: dict[str, RowGroups] = {}  # per served model: its rows of this loop turn

    def take(self, conn: "GuardedRequestHandler", data: bytes) -> bool:
        """Serve ``data`` here if it is one whole fast request; False leaves it to aiohttp."""
        if not data.startswith(_PREFIXES):  # other routes are aiohttp's: do not parse them twice
            return False
        end = data.find(b"\r\n\r\n", 0, MAX_ROUTE_HEAD)
        if end > 0:
            route = self._routes.get(data[:end + 4])
            if route is not None and len(data) - end - 4 == route.length and not self.state.draining:
                return self._serve(conn, route, data[end + 4:])
        return self._take_parsed(conn, data)

    def _take_parsed(self, conn: "GuardedRequestHandler", data: bytes) -> bool:
        """:meth:`take` for a request whose head is not a known route: parsed and checked in full."""
        parsed = _Parsed()
        parser = parsed.parser
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # aiohttp answers these
            return False
        finally:
            # The parser holds parsed's bound callbacks and parsed holds the parser: a cycle
            # only the garbage collector frees. Broken here, both go by refcount at once, so a
            # request leaves nothing for the collector (whose full passes stalled every
            # request in flight for 15-20 ms, benchmarks/results/server.md §0d).
            parsed.parser = None
        if parsed.messages != 1 or not parsed.complete or parsed.odd or not parsed.keep_alive:
            return False
        method, headers = parser.get_method(), parsed.headers
        if b"host" not in headers or not data.startswith(b"%s %s HTTP/1.1\r\n" % (method, parsed.url)):
            return False  # HTTP/1.1 without Host, or a request line httptools forgives: aiohttp's 400
        if method == b"GET":
            readiness = HEALTH.get(parsed.url)
            if readiness is None or parsed.body or b"content-length" in headers:
                return False
            ok = self.state.ready if readiness else True
            conn.fast_write(_response(200 if ok else 503, b"application/octet-stream", b""))
            return True
        if method != b"POST" or self.state.draining:
            return False
        served, v2 = self._model(parsed.url)
        if served is None or not self._authorized(headers):
            return False
        length = headers.get(b"content-length")
        body = b"".join(parsed.body)
        if length is None or not length.isdigit() or int(length) != len(body) or len(body) > self.max_length:
            return False
        header_length = headers.get(b"inference-header-content-length") if v2 else None
        # decoded as aiohttp decodes header values, so both paths name a bad one alike
        route = _Route(served, v2, None if header_length is None else header_length.decode("utf-8", "surrogateescape"),
                       len(body), parsed.url)
        head = data[:len(data) - len(body)]
        if len(head) <= MAX_ROUTE_HEAD:
            if len(self._routes) >= MAX_ROUTES:
                del self._routes[next(iter(self._routes))]  # the oldest goes
            self._routes[head] = route
        return self._serve(conn, route, body)

    def _serve(self, conn: "GuardedRequestHandler", route: "_Route", body: bytes) -> bool:
        """Start a POST the checks let through; False (aiohttp answers) if the buffer is full."""
        try:  # the body's bytes count against max_buffered_bytes until it is answered
            self.reader.hold_bytes(len(body))
        except BadBodyError:  # the buffer is full: aiohttp's path gives the 503
            return False
        conn.fast_begin()
        if route.header_bytes:  # a V2 binary request whose header may have been answered before
            rows = self._rows.get(route.served.name)
            if rows is None:
                rows = self._rows[route.served.name] = RowGroups(
                    self.state, route.served, self.reader, asyncio.get_running_loop(), self._respond, self._fail)
            if rows.add(conn, route, body, route.header_bytes):
                return True
        core.start(self.state, route.served, body, route.decode, _Answer(self.reader, len(body), conn, route))
        return True

    @staticmethod
    def _respond(conn: "GuardedRequestHandler", route: "_Route", payload: bytes, json_length: int) -> None:
        """A row's V2 binary answer (:mod:`edgemp.runtime.server.rows`), written as :class:`_Answer` writes one."""
        _write(conn, route.url, _response, 200, b"application/octet-stream", payload, json_length)

    @staticmethod
    def _fail(conn: "GuardedRequestHandler", route: "_Route", error: BaseException) -> None:
        """A row's error, answered exactly as :class:`_Answer` answers the request core's."""
        _write(conn, route.url, _error_response, error, route.url)

    def _model(self, url: bytes) -> tuple[Any, bool]:
        """The served model a ``/v2/models/{m}[/versions/{v}]/infer`` or ``/v1/models/{m}/predict``
        URL names (None if none), and whether it is the V2 route."""
        parts = url.split(b"/")
        v2 = parts[1:3] == [b"v2", b"models"]
        if v2 and len(parts) == 5 and parts[4] == b"infer":
            version = None
        elif v2 and len(parts) == 7 and parts[4] == b"versions" and parts[6] == b"infer":
            version = parts[5].decode("latin-1")
        elif parts[1:3] == [b"v1", b"models"] and len(parts) == 5 and parts[4] == b"predict":
            version = None
        else:
            return None, v2
        if parts[0]:
            return None, v2
        served = self.state.models.get(parts[3].decode("latin-1"))
        if served is None or version not in (None, served.version):
            return None, v2  # aiohttp answers unknown models and versions (404)
        return served, v2

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        return self.expected is None or bearer_matches(headers.get(b"authorization"), self.expected)


# aiohttp internals the fast path steers (its keep-alive timer and request bookkeeping, see
# connections.GuardedRequestHandler). They are private, so they are checked once at start-up:
# an aiohttp that renamed one serves every request itself instead of failing request by request.
AIOHTTP_INTERNALS = ("_keepalive_handle", "_keepalive_timeout", "_next_keepalive_close_time",
                     "_process_keepalive", "_request_count", "_request_in_progress", "_messages", "_manager")


def aiohttp_has_fast_path_internals() -> bool:
    """Whether the installed aiohttp's request handler still has every name the fast path uses."""
    from aiohttp.web_protocol import RequestHandler

    names = set(dir(RequestHandler)).union(*(getattr(k, "__slots__", ()) for k in RequestHandler.__mro__))
    return all(name in names for name in AIOHTTP_INTERNALS)


def attach(app: "web.Application") -> FastPath | None:
    """The app's fast path; None for an app not built by ``create_app``, or an aiohttp it does not know."""
    if STATE not in app or BODY_READER not in app:
        return None
    if not aiohttp_has_fast_path_internals():
        logger.info("fast path off: this aiohttp lacks internals it steers; aiohttp serves every request")
        return None
    return FastPath(app)
