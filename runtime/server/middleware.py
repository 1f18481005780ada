"""Cross-cutting HTTP concerns: bearer-token auth, body limits and the error body shape.

Every error leaves as ``{"error": "..."}`` with the status V2 clients expect (tritonclient
parses the body of any non-200 response as JSON). A user-caused error maps to 4xx or 503;
only an unexpected exception becomes a 500, and that one is logged with its traceback.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from edgemp.errors import (
    EdgempError,
    GraphValidationError,
    QueueFullError,
    RequestTimeoutError,
    RequestTooLargeError,
    ResourceExhaustedError,
    ShuttingDownError,
)
from edgemp.runtime.server import jsoncodec
from edgemp.runtime.server.auth import CHALLENGE, bearer_matches, token_bytes
from edgemp.runtime.server.body import BadBodyError, BodyReader, ClientGoneError, aiohttp_inflates
from edgemp.runtime.server.config import ServerConfig

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
BODY_READER = web.AppKey("edgemp_body_reader", BodyReader)
__all__ = ["BadBodyError", "ClientGoneError", "read_body"]  # body errors are re-exported for handlers


class NotFoundError(EdgempError):
    """Unknown model or version (HTTP 404)."""


class UnavailableError(EdgempError):
    """The server is draining or not ready (HTTP 503)."""


async def read_body(request: web.Request) -> bytes:
    """The whole (decompressed) body, read under the app's time and memory limits.

    A vanished client, a corrupt encoding or a stalled upload is never a 500 (see
    :mod:`edgemp.runtime.server.body`).
    """
    reader = request.app.get(BODY_READER)
    if reader is None:  # an app not built by create_app: default limits
        reader = _default_reader(request.app)
    return await reader.read(request, aiohttp_inflates(request))


def _default_reader(app: web.Application) -> BodyReader:
    return BodyReader(ServerConfig(max_body_bytes=app._client_max_size))  # noqa: SLF001 - the app's own limit


def status_for(error: BaseException) -> int:
    """The HTTP status for an exception raised while serving a request."""
    if isinstance(error, NotFoundError):
        return 404
    if isinstance(error, RequestTooLargeError):
        return 413
    if isinstance(error, (ResourceExhaustedError, MemoryError)):
        return 507
    if isinstance(error, (QueueFullError, ShuttingDownError, RequestTimeoutError, UnavailableError)):
        return 503
    if isinstance(error, (GraphValidationError, EdgempError)):
        return 400
    return 500


def one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_answer(e: Exception, method: str, path: str) -> tuple[int, str]:
    """(status, message) for a failure while serving ``method path``; logs what is not the client's.

    A client's error is its 4xx (or 503) without a log line; real exhaustion is one warning
    line, no traceback per request; anything unexpected is a 500 with its traceback logged.
    """
    if isinstance(e, ResourceExhaustedError):
        logger.warning("%s %s: %s", method, path, one_line(e))
        return status_for(e), str(e)
    if isinstance(e, EdgempError):
        return status_for(e), str(e)
    if isinstance(e, MemoryError):
        logger.warning("%s %s: out of memory serving the request", method, path)
        return 507, "the server ran out of memory for this request; send fewer or smaller graphs"
    # exc_info=e, not logger.exception: the fast path answers from a callback, where the
    # error is no longer the one being handled.
    logger.error("internal error serving %s %s", method, path, exc_info=e)
    return 500, "internal server error; see the server log"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The V2 error body, byte for byte what the fast path sends (runtime/server/fastpath.py)."""
    return web.Response(body=jsoncodec.dumps({"error": message}), status=status, content_type="application/json",
                        charset="utf-8", headers=headers)


def _refusal_check(reader: BodyReader, token: str | None,
                   refused: Callable[[web.Request, Exception], None] | None) -> Callable[[web.Request], web.Response | None]:
    """What may be refused from a request's headers alone, before a byte of its body is read:
    the bearer token (401) and the announced body size against the limits (413, 503)."""
    expected = token_bytes(token)

    def refusal(request: web.Request) -> web.Response | None:
        if expected is not None and request.path not in OPEN_PATHS:
            # aiohttp keeps undecodable header bytes as surrogates: encode them back, never raise.
            given = request.headers.getall("Authorization", [])
            given = given[0].encode("utf-8", "surrogateescape") if len(given) == 1 else b""  # two: neither counts
            if not bearer_matches(given, expected):
                return error_response(401, "missing or invalid bearer token", CHALLENGE)
        length = request.content_length
        if length is not None and request.method in ("POST", "PUT"):
            try:
                reader.check_announced(length)
            except BadBodyError as e:
                if refused is not None:
                    refused(request, e)  # counted as when the same body is refused while read
                return error_response(e.status, str(e))
        return None

    return refusal


def expect_handler(reader: BodyReader, token: str | None = None,
                   refused: Callable[[web.Request, Exception], None] | None = None) -> Callable:
    """``Expect: 100-continue``: the same refusals as :func:`request_middleware` first, so a
    client is never invited to upload a body that is then refused. aiohttp answers the
    expectation before any middleware runs, so POST routes take this as their handler of it."""
    refusal = _refusal_check(reader, token, refused)

    async def expect(request: web.Request) -> web.StreamResponse | None:
        response = refusal(request)
        if response is not None:
            response.force_close()  # the client holds its body back: nothing to read after this
            return response
        return await _default_expect_handler(request)  # 100 Continue (417 for other expectations)

    return expect


def request_middleware(reader: BodyReader, token: str | None = None,
                       refused: Callable[[web.Request, Exception], None] | None = None) -> Callable:
    """Every route's one middleware: errors as V2 bodies, the bearer token, the body limits.

    One layer instead of three: each aiohttp middleware costs a call layer and a partial
    per request, as much as a health check's own handler. In order, for each request:

    - an unexpected exception becomes a 500 with its traceback logged; a client's error
      its 4xx (see :func:`status_for`), as the V2 error body;
    - with a ``token``, every route but the health probes needs ``Authorization: Bearer``
      (401, before anything of the body is looked at);
    - a body is refused by its Content-Length before a byte of it is read, and the bytes
      it holds count against ``max_buffered_bytes`` until its handler has answered.

    (A request with ``Expect: 100-continue`` meets the first two in :func:`expect_handler`.)
    """
    refusal = _refusal_check(reader, token, refused)
    held = reader.held  # requests holding body bytes (most GETs never do)

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            # Nothing of the body is read when refused: answered without closing, and aiohttp
            # discards the unread body (for at most its lingering time) so the client can finish
            # sending and read the answer.
            response = refusal(request)
            if response is not None:
                return response
            try:
                return await handler(request)
            finally:
                if held:
                    reader.release(request)
        except web.HTTPRequestEntityTooLarge as e:
            return error_response(413, e.text or "request body too large")
        except web.HTTPException as e:
            if e.status < 400:
                raise
            allow = e.headers.get("Allow")  # a 405 must say which methods the path takes (RFC 9110)
            return error_response(e.status, e.reason, None if allow is None else {"Allow": allow})
        except ClientGoneError:
            logger.info("%s %s: client disconnected mid-request", request.method, request.path)
            return error_response(400, "client disconnected")
        except BadBodyError as e:
            response = error_response(e.status, str(e))
            response.force_close()  # the rest of the stream is unreadable: answer, then close
            request.content.feed_eof()  # and do not let aiohttp try to drain it again
            return response
        except Exception as e:  # noqa: BLE001 - every failure is answered (see error_answer)
            status, message = error_answer(e, request.method, request.path)
            return error_response(status, message)

    return handle
