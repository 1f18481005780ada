"""gRPC over HTTP/2 (grpc/doc/PROTOCOL-HTTP2.md), unary calls only: the bytes around an RPC.

Per stream: ``POST`` only (else HTTP 405), ``content-type: application/grpc[+proto|;...]``
(else HTTP 415), a known ``:path`` (else UNIMPLEMENTED), the bearer token in
``authorization`` for every RPC but ServerLive/Ready (else UNAUTHENTICATED), exactly one
length-prefixed message (else UNIMPLEMENTED; a compressed one, which no ``grpc-encoding``
here can undo, also UNIMPLEMENTED), no larger than the message limit — checked from the
declared length in the 5-byte prefix, before the rest is buffered (RESOURCE_EXHAUSTED) —
and ``grpc-timeout`` honoured (DEADLINE_EXCEEDED). Errors are trailers-only responses with
``grpc-status`` and a percent-encoded ``grpc-message``.

Cheap RPCs (health, metadata) are answered inline from ``data_received``; ModelInfer is
started through the request core and answered by a callback on the same loop (no thread
hop; for a small message no task either); a reset stream or a passed deadline cancels it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from edgemp.errors import RequestTimeoutError, clipped
from edgemp.runtime.server import core
from edgemp.runtime.server import grpc_service as svc
from edgemp.runtime.server.h2 import frames as f
from edgemp.runtime.server.h2.connection import H2Connection
from edgemp.runtime.server.h2.stream import Stream
from edgemp.runtime.server.unsupported import grpc_reason

logger = logging.getLogger(__name__)

_CONTENT_TYPE = f.literal(b"content-type", b"application/grpc")
HEAD_OK = f.STATUS_200 + _CONTENT_TYPE
TRAILERS_OK = f.literal(b"grpc-status", b"0")
_IDENTITY = frozenset({b"", b"identity"})
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> bytes:
    """``grpc-message`` encoding: printable ASCII except ``%`` as is, every other byte as ``%XX``."""
    raw = message.encode("utf-8", "replace")
    return b"".join(bytes([b]) if b in _PLAIN else b"%%%02X" % b for b in raw)


def trailers_only(code: int, message: str) -> bytes:
    return HEAD_OK + f.literal(b"grpc-status", str(code).encode()) + f.literal(b"grpc-message", percent_encode(message))


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` value (1-8 digits and a unit); None if malformed."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


class _Call:
    """A stream's gRPC state: its RPC, the message length it declared, whether bytes are held."""

    __slots__ = ("rpc", "expected", "held")

    def __init__(self, rpc: svc.Rpc) -> None:
        self.rpc = rpc
        self.expected = -1  # 5 + the declared message length, once the prefix has arrived
        self.held = False


class GrpcHandler:
    """Serves :class:`~edgemp.runtime.server.grpc_service.InferenceService` on HTTP/2 streams."""

    def __init__(self, service: svc.InferenceService, max_message_bytes: int, body_reader: Any = None) -> None:
        self.service = service
        self.max_message_bytes = max_message_bytes
        self.reader = body_reader  # counts messages against max_buffered_bytes, as HTTP bodies are

    # -- StreamHandler ---------------------------------------------------------------------
    def on_headers(self, conn: H2Connection, stream: Stream) -> None:
        if stream.method != b"POST":
            conn.respond(stream, f.status(405))
            return
        headers = stream.headers
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc") or content_type[16:17] not in (b"", b"+", b";"):
            conn.respond(stream, f.status(415))
            return
        rpc = self.service.rpcs.get(stream.path)
        # the token first, for every method but the open ones (as HTTP checks it on every path)
        if (rpc is None or rpc.needs_token) and not self.service.authorized(headers.get(b"authorization")):
            self._fail(conn, stream, svc.UNAUTHENTICATED, "missing or invalid bearer token")
            return
        if rpc is None:
            service, _, method = stream.path.decode("latin-1")[1:].partition("/")
            reason = grpc_reason(method) if service == self.service.pb.SERVICE else None
            self._fail(conn, stream, svc.UNIMPLEMENTED, reason or (
                f"unknown method {clipped(stream.path.decode('latin-1'), 200)}; "
                f"this server serves {self.service.pb.SERVICE}"))
            return
        timeout = headers.get(b"grpc-timeout")
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                self._fail(conn, stream, svc.INVALID_ARGUMENT,
                           f"malformed grpc-timeout {clipped(timeout.decode('latin-1'), 20)!r}")
                return
            stream.timer = asyncio.get_running_loop().call_later(seconds, self._deadline, conn, stream)
        stream.app = _Call(rpc)

    def on_data(self, conn: H2Connection, stream: Stream) -> None:
        call: _Call = stream.app
        if call.expected < 0:
            if stream.received < 5:
                return
            prefix = stream.chunks[0] if len(stream.chunks[0]) >= 5 else stream.body()
            length = int.from_bytes(prefix[1:5], "big")
            if prefix[0] > 1:  # the Compressed-Flag is 0 or 1; anything else is not gRPC (as grpc-core answers)
                self._fail(conn, stream, svc.INTERNAL, f"invalid compressed-flag {prefix[0]} in the message prefix")
                return
            if prefix[0] and stream.headers.get(b"grpc-encoding", b"") in _IDENTITY:
                self._fail(conn, stream, svc.INTERNAL, "compressed message without a grpc-encoding")
                return
            if prefix[0]:
                self._fail(conn, stream, svc.UNIMPLEMENTED, "compressed messages are not supported; "
                           "send them uncompressed (grpc-accept-encoding: identity)")
                return
            if length > self.max_message_bytes:
                self._fail(conn, stream, svc.RESOURCE_EXHAUSTED, f"request message of {length} bytes exceeds the "
                           f"limit of {self.max_message_bytes} (max_body_bytes)")
                return
            if self.reader is not None and length:
                try:
                    self.reader.hold(call, length)
                except Exception as e:  # noqa: BLE001 - BufferFullError: the server holds too much already
                    self._fail(conn, stream, svc.UNAVAILABLE, str(e))
                    return
                call.held = True
            call.expected = 5 + length
        if stream.received > call.expected:
            self._fail(conn, stream, svc.UNIMPLEMENTED, "a unary RPC takes exactly one request message")

    def on_complete(self, conn: H2Connection, stream: Stream) -> None:
        call: _Call = stream.app
        if call.expected < 0 or stream.received < call.expected:
            self._fail(conn, stream, svc.UNIMPLEMENTED if stream.received == 0 else svc.INTERNAL,
                       "a unary RPC takes exactly one request message" if stream.received == 0
                       else "the request message ends before its declared length")
            return
        body = stream.body()
        payload = body[5:]
        stream.chunks = []
        rpc = call.rpc
        try:
            if rpc.deferred:
                started = rpc.handler(payload, functools.partial(self._finish, conn, stream), stream.timer is not None)
                if not stream.answered:  # answered already (a bad request): nothing to cancel
                    stream.task = started
            else:
                self._answer(conn, stream, rpc.handler(payload))
        except Exception as e:  # noqa: BLE001 - every failure is answered with its status
            self._fail(conn, stream, *svc.grpc_status(e, rpc.name))

    def on_close(self, conn: H2Connection, stream: Stream) -> None:
        call = stream.app
        if call is not None and call.held:
            call.held = False
            self.reader.release(call)

    def on_stalled(self, conn: H2Connection, stream: Stream) -> None:
        self._fail(conn, stream, svc.UNAVAILABLE, "request message arrives too slowly (body_min_rate_bytes_per_s)")

    # -- answers ---------------------------------------------------------------------------
    def _finish(self, conn: H2Connection, stream: Stream, data: bytes | None, error: BaseException | None) -> None:
        """A deferred RPC's answer, on the loop (dropped by ``respond`` if the stream is gone)."""
        if error is not None:
            self._fail(conn, stream, *svc.grpc_status(error, stream.app.rpc.name))
        else:
            self._answer(conn, stream, data)

    @staticmethod
    def _answer(conn: H2Connection, stream: Stream, data: bytes) -> None:
        conn.respond(stream, HEAD_OK, b"\x00" + len(data).to_bytes(4, "big") + data, TRAILERS_OK)

    @staticmethod
    def _fail(conn: H2Connection, stream: Stream, code: int, message: str) -> None:
        conn.respond(stream, trailers_only(code, message))

    def _deadline(self, conn: H2Connection, stream: Stream) -> None:
        stream.timer = None
        if stream.task is not None and not stream.task.done():
            # the server ends the call: a timeout in the statistics (a reset by the client is not counted)
            core.expire(stream.task, RequestTimeoutError("deadline exceeded (grpc-timeout)"))
        self._fail(conn, stream, svc.DEADLINE_EXCEEDED, "deadline exceeded (grpc-timeout)")
