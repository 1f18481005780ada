"""Reading request bodies with bounded time and memory, shared by every route.

A body is read chunk by chunk under four rules:

- **rate**: after a grace period (``header_timeout_s``), the body must keep arriving at
  ``body_min_rate_bytes_per_s`` on average, or the request ends with 408 and the
  connection closes (a stalled upload holds memory and a drain slot, never forever);
- **size**: at most ``max_body_bytes`` on the wire and after decompression (413);
- **memory across requests**: bytes held by bodies in flight are counted against
  ``max_buffered_bytes``; past it a request gets 503 before more is read;
- **decompression** (gzip, deflate) runs in a worker thread, a chunk at a time, and stops
  at the limit: a 1 MiB body that would inflate to 1 GiB costs the limit, not 1 GiB, and
  never blocks the event loop (aiohttp's own inflation runs on the loop, so the runner
  turns it off; see :class:`~edgemp.runtime.server.connections.GuardedAppRunner`).

On drain, uploads still in progress are aborted with 503 so SIGTERM never waits on a
client that stopped sending.
"""
from __future__ import annotations

import asyncio
import zlib

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from edgemp.errors import EdgempError, clipped
from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server.connections import GuardedRequestHandler

INFLATE_CHUNK = 64 * 1024
INFLATE_RATIO = 16  # room first reserved for an inflated body: 16x its compressed size ...
INFLATE_FIRST_BYTES = 64 * 1024  # ... and at least 64 KiB
ENCODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class BadBodyError(EdgempError):
    """The body cannot be read (corrupt compression, bad chunking, too slow): answer, then close."""

    status = 400


class BodyTimeoutError(BadBodyError):
    status = 408


class BodyTooLargeError(BadBodyError):
    status = 413


class UnsupportedEncodingError(BadBodyError):
    status = 415


class BufferFullError(BadBodyError):
    """Bodies in flight already hold ``max_buffered_bytes``: try again shortly (503)."""

    status = 503


class UploadAbortedError(BadBodyError):
    """The server began draining while this body was still arriving (503)."""

    status = 503


class ClientGoneError(EdgempError):
    """The client disconnected before its body arrived; nobody is left to answer."""


class _Inflater:
    """A compressed body inflated a chunk at a time, in steps: :meth:`run` goes on until the output
    passes the room it was given (then it can be called again with more) or the stream ends.
    Nothing is inflated twice, so a body that needs more room than first reserved costs no re-work."""

    def __init__(self, data: bytes, encoding: str) -> None:
        self.encoding = encoding
        self._d = zlib.decompressobj(ENCODINGS[encoding])
        if encoding == "deflate" and data[:1] and (data[0] & 0x0F) != 8:
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some clients send it
        self._view = memoryview(data)
        self._pos = 0
        self._pending: bytes | memoryview = b""
        self._out: list[bytes] = []
        self.size = 0  # bytes inflated so far

    def run(self, room: int) -> bool:
        """Inflate on; True once the stream has ended within ``room`` bytes of output in all, False as
        soon as the output passes ``room`` (call again with more). BadBodyError for bad data."""
        d = self._d
        try:
            while True:
                if not self._pending:
                    if self._pos >= len(self._view):
                        break
                    self._pending = self._view[self._pos : self._pos + INFLATE_CHUNK]
                    self._pos += INFLATE_CHUNK
                piece = d.decompress(self._pending, room + 1 - self.size)
                self.size += len(piece)
                self._out.append(piece)
                self._pending = d.unconsumed_tail
                if self.size > room:
                    return False
            tail = d.flush(room + 1 - self.size)
        except zlib.error as e:
            raise BadBodyError(f"cannot read the request body: corrupt {self.encoding} data ({e})") from e
        self.size += len(tail)
        self._out.append(tail)
        if self.size > room:
            return False
        if not d.eof:
            raise BadBodyError(f"cannot read the request body: truncated {self.encoding} data")
        if d.unused_data:
            raise BadBodyError(f"cannot read the request body: data after the end of the {self.encoding} stream")
        return True

    def body(self) -> bytes:
        return b"".join(self._out)


class BodyReader:
    """Reads bodies for one app and accounts for the bytes they hold (see the module docstring)."""

    def __init__(self, config: ServerConfig) -> None:
        self.max_body_bytes = config.max_body_bytes
        self.max_buffered_bytes = config.max_buffered_bytes
        self.min_rate = config.body_min_rate_bytes_per_s
        self.grace_s = config.header_timeout_s
        self.buffered = 0  # bytes held by bodies of requests still being handled
        self.held: dict[int, int] = {}  # id(request) -> its share of `buffered` (requests are unhashable)
        self._active: set = set()  # StreamReaders of bodies still arriving
        self._draining = False

    # -- accounting -----------------------------------------------------------------------
    def _check_room(self, nbytes: int) -> None:
        if self.buffered + nbytes > self.max_buffered_bytes:
            raise BufferFullError(
                f"the server is already buffering {self.buffered} bytes of request bodies "
                f"(max_buffered_bytes={self.max_buffered_bytes}); retry shortly")

    def _hold(self, request: web.Request, nbytes: int, check: bool = True) -> None:
        if check:
            self._check_room(nbytes)
        self.buffered += nbytes
        self.held[id(request)] = self.held.get(id(request), 0) + nbytes

    def _drop(self, request: web.Request, nbytes: int) -> None:
        held = self.held.get(id(request), 0)
        nbytes = min(nbytes, held)
        self.buffered -= nbytes
        if held - nbytes:
            self.held[id(request)] = held - nbytes
        else:
            self.held.pop(id(request), None)

    def hold(self, owner: object, nbytes: int) -> None:
        """Count a body already read (by the gRPC listener) against ``max_buffered_bytes``
        until :meth:`release` of ``owner`` (BufferFullError past it)."""
        self._hold(owner, nbytes)  # type: ignore[arg-type]

    def hold_bytes(self, nbytes: int) -> None:
        """Count a body already read (by the fast path) against ``max_buffered_bytes`` until
        :meth:`release_bytes` gives the same count back (BufferFullError past it)."""
        self._check_room(nbytes)
        self.buffered += nbytes

    def release_bytes(self, nbytes: int) -> None:
        self.buffered -= nbytes

    def release(self, request: web.Request) -> None:
        """Forget the bytes ``request`` held (its handler has finished)."""
        self._drop(request, self.held.get(id(request), 0))

    def check_announced(self, length: int) -> None:
        """Refuse a body by its Content-Length before reading a byte of it."""
        if length > self.max_body_bytes:
            raise BodyTooLargeError(f"request body of {length} bytes exceeds the limit of {self.max_body_bytes}")
        self._check_room(length)

    def abort_uploads(self) -> None:
        """Drain: every body still arriving ends with 503 now, not when its client resumes."""
        self._draining = True
        for content in list(self._active):
            content.set_exception(UploadAbortedError("the server is shutting down; resend the request"))

    # -- reading --------------------------------------------------------------------------
    async def read(self, request: web.Request, aiohttp_inflates: bool) -> bytes:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if aiohttp_inflates or encoding in ("", "identity"):
            encoding = "identity"
        elif encoding not in ENCODINGS:
            raise UnsupportedEncodingError(
                f"Content-Encoding {clipped(encoding, 32)!r} is not supported; use gzip or deflate")
        if self._draining:
            raise UploadAbortedError("the server is shutting down; resend the request")
        raw = await self._read_raw(request)
        if encoding == "identity":
            return raw
        # The inflated body's room is reserved as it grows, so concurrent inflations cannot overshoot:
        # first what most bodies inflate to (reserving the whole body limit up front let four small
        # gzip requests fill a 256 MiB buffer), then 8 times more each time the output passes it, up
        # to the body limit. The body's own compressed bytes, freed once it is inflated, do not count
        # against its room: a body at the limit fits whenever no other request holds the buffer.
        inflater = _Inflater(raw, encoding)
        loop = asyncio.get_running_loop()
        want = min(max(len(raw) * INFLATE_RATIO, INFLATE_FIRST_BYTES), self.max_body_bytes)
        room = 0
        try:
            while True:
                others = self.buffered - self.held.get(id(request), 0)
                grow = min(want, self.max_buffered_bytes - others) - room
                if grow > 0:
                    self._hold(request, grow, check=False)  # room the limit above already allows
                    room += grow
                if await loop.run_in_executor(None, inflater.run, room):
                    break
                if room >= self.max_body_bytes:
                    raise BodyTooLargeError(f"request body inflates past the limit of {self.max_body_bytes} bytes")
                if room < want:  # stopped at what the other requests left of the buffer
                    raise BufferFullError("the server is buffering too many request bodies; retry shortly")
                want = min(want * 8, self.max_body_bytes)
        finally:
            self._drop(request, room)
        body = inflater.body()
        self._drop(request, len(raw))
        self._hold(request, len(body))
        return body

    async def _read_raw(self, request: web.Request) -> bytes:
        content = request.content
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks: list[bytes] = []
        received = 0
        announced = request.content_length
        if announced is not None:  # reserve it all now: concurrent big uploads are refused early, not late
            self._hold(request, announced)
        self._active.add(content)
        try:
            while True:
                chunk = content.read_nowait(-1)  # what already arrived; b"" when nothing has
                if not chunk:
                    if content.is_eof():
                        break
                    deadline = start + self.grace_s + (received + 1) / self.min_rate if self.min_rate > 0 else None
                    wait = None if deadline is None else max(deadline - loop.time(), 0.001)
                    try:
                        chunk = await asyncio.wait_for(content.readany(), wait)
                    except asyncio.TimeoutError as e:
                        raise BodyTimeoutError(
                            f"request body arrived slower than {self.min_rate} bytes/s "
                            f"({received} bytes in {loop.time() - start:.1f} s)") from e
                    if not chunk:
                        break
                if received + len(chunk) > self.max_body_bytes:
                    raise BodyTooLargeError(f"request body exceeds the limit of {self.max_body_bytes} bytes")
                if announced is None:
                    self._hold(request, len(chunk))
                chunks.append(chunk)
                received += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            raise ClientGoneError("client disconnected while sending the body") from e
        except (RequestPayloadError, ClientPayloadError, HttpProcessingError) as e:
            raise BadBodyError(f"cannot read the request body: {clipped(' '.join(str(e).split()), 200)}") from e
        finally:
            self._active.discard(content)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def aiohttp_inflates(request: web.Request) -> bool:
    """Whether aiohttp already decompressed this request's body.

    :class:`~edgemp.runtime.server.connections.GuardedAppRunner` turns aiohttp's inflation
    off; an app embedded in another runner keeps aiohttp's default (on) and must not
    inflate twice.
    """
    return not isinstance(request.protocol, GuardedRequestHandler)
