"""One HTTP/2 connection (h2c, prior knowledge) as an asyncio Protocol on the server's event loop.

This is the part of RFC 9113 a unary-RPC server needs, done so that stock clients (grpcio's
C-core) and hostile ones get correct answers: the preface, SETTINGS and their ACK, PING,
flow control both ways (the client's windows are replenished as its DATA arrives; ours are
respected when answering, with DATA split at the peer's MAX_FRAME_SIZE and resumed on
WINDOW_UPDATE), HEADERS + CONTINUATION, PADDED and PRIORITY, RST_STREAM and GOAWAY. What a
stream *means* is the application's (:class:`StreamHandler`, here gRPC): the connection
hands it complete header lists and DATA as it arrives, and sends what it answers.

Abuse is bounded per connection: concurrent streams (REFUSED_STREAM past the limit),
header block size and CONTINUATION count, and per-second budgets of RST_STREAM (rapid
reset), SETTINGS and PING frames, past which the connection ends with GOAWAY
ENHANCE_YOUR_CALM. A protocol error ends it with GOAWAY and the RFC's error code; nothing
raised while parsing escapes the protocol.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any, Protocol

import hpack

from edgemp.runtime.server.h2 import frames as f
from edgemp.runtime.server.h2.headers import HeaderDecoder, MalformedFieldError

logger = logging.getLogger(__name__)

_CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_PSEUDO = frozenset({b":method", b":path", b":scheme", b":authority"})
_WRITE_SLICE = 64 << 10  # response DATA bytes queued between checks of the transport's back-pressure
_MAX_RESET_IDS = 1024  # recent streams whose late frames are ignored (RFC 9113 §5.1, "closed")


class ConnectionLimits:
    """What one connection may ask of the server (shared by every connection of a listener)."""

    __slots__ = ("max_streams", "stream_window", "connection_window", "max_header_list", "max_header_block",
                 "max_continuations", "resets_per_s", "settings_per_s", "pings_per_s", "max_write_buffer")

    def __init__(self, max_streams: int = 100, stream_window: int = 1 << 20, connection_window: int = 16 << 20,
                 max_header_list: int = 16 << 10, resets_per_s: int = 200, settings_per_s: int = 50,
                 pings_per_s: int = 100) -> None:
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.max_header_list = max_header_list
        self.max_header_block = 4 * max_header_list  # compressed bytes across HEADERS + CONTINUATION
        self.max_continuations = 64
        self.resets_per_s = resets_per_s
        self.settings_per_s = settings_per_s
        self.pings_per_s = pings_per_s
        self.max_write_buffer = 4 << 20  # control answers queued for a peer that does not read


class H2Error(Exception):
    """A connection error: answered with GOAWAY ``code`` and the connection closes."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One request stream: its headers, the DATA received so far, and the answer not yet sent."""

    __slots__ = ("id", "method", "path", "scheme", "headers", "chunks", "received", "recv_window", "send_window",
                 "remote_closed", "answered", "out", "trailers", "task", "timer", "opened", "app")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.method = self.path = self.scheme = b""
        self.headers: dict[bytes, bytes] = {}
        self.chunks: list[bytes] = []
        self.received = 0  # DATA payload bytes (padding excluded)
        self.recv_window = recv_window
        self.send_window = send_window
        self.remote_closed = False
        self.answered = False  # the application has answered; later DATA is discarded
        self.out: memoryview | None = None  # response DATA still to send (flow control)
        self.trailers = b""
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.opened = time.monotonic()
        self.app: Any = None  # the application's per-stream state

    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class StreamHandler(Protocol):
    """What the application does with streams (see :mod:`edgemp.runtime.server.h2.grpc`)."""

    def on_headers(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_data(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_complete(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_close(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_stalled(self, conn: "H2Connection", stream: Stream) -> None: ...


class _Budget:
    """At most ``limit`` events per second (a fixed one-second window)."""

    __slots__ = ("limit", "count", "since")

    def __init__(self, limit: int) -> None:
        self.limit, self.count, self.since = limit, 0, 0.0

    def spend(self) -> bool:
        now = time.monotonic()
        if now - self.since >= 1.0:
            self.count, self.since = 0, now
        self.count += 1
        return self.count <= self.limit


class H2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection (see the module docstring)."""

    def __init__(self, handler: StreamHandler, limits: ConnectionLimits, registry: Any = None) -> None:
        self.handler = handler
        self.limits = limits
        self.registry = registry  # the listener: tracks connections for idle sweeps and drain
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface_seen = False
        self.settings_seen = False  # the client's preface ends with its SETTINGS frame
        self.decoder = HeaderDecoder(limits.max_header_list)
        self.streams: dict[int, Stream] = {}
        self.highest = 0  # highest client stream id seen
        self.reset_ids: dict[int, None] = {}  # recent streams we closed before the client finished (ordered)
        self.goaway_sent = False
        self.goaway_last = 0  # the last stream id our GOAWAY promised to serve
        self.write_paused = False  # the transport's buffer is above its high-water mark
        self.closed = False
        self.last_active = time.monotonic()
        self.opened = self.last_active
        # peer settings and our send windows
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.send_window = f.DEFAULT_WINDOW
        self.blocked: dict[int, Stream] = {}  # streams whose answer waits for window
        # our receive side
        self.recv_window = limits.connection_window
        self.header_block: bytearray | None = None  # a header block still awaiting CONTINUATION
        self.header_stream = 0
        self.header_end_stream = False
        self.continuations = 0
        self.resets = _Budget(limits.resets_per_s)
        self.settings_budget = _Budget(limits.settings_per_s)
        self.pings = _Budget(limits.pings_per_s)
        self.out: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.registry is not None and not self.registry.admit(self):
            transport.close()
            return
        lim = self.limits
        self.transport.write(f.settings({
            f.MAX_CONCURRENT_STREAMS: lim.max_streams, f.INITIAL_WINDOW_SIZE: lim.stream_window,
            f.MAX_FRAME_SIZE: f.DEFAULT_MAX_FRAME, f.MAX_HEADER_LIST_SIZE: lim.max_header_list, f.ENABLE_PUSH: 0,
        }) + f.window_update(0, lim.connection_window - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            self._forget(stream, cancel=True)
        if self.registry is not None:
            self.registry.forget(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = time.monotonic()
        buf = self.buf
        buf += data
        try:
            if not self.preface_seen:
                if len(buf) < len(f.PREFACE):
                    if not f.PREFACE.startswith(bytes(buf)):
                        raise H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                if not buf.startswith(f.PREFACE):
                    raise H2Error(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[:len(f.PREFACE)]
                self.preface_seen = True
            pos, end = 0, len(buf)
            max_frame = f.DEFAULT_MAX_FRAME
            while end - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > max_frame:
                    raise H2Error(f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds MAX_FRAME_SIZE {max_frame}")
                if end - pos < 9 + length:
                    break
                kind, flags = buf[pos + 3], buf[pos + 4]
                sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
                payload = bytes(buf[pos + 9:pos + 9 + length])
                pos += 9 + length
                self._frame(kind, flags, sid, payload)
                if self.closed:
                    return
            del buf[:pos]
        except H2Error as e:
            self.abort(e.code, str(e))
            return
        except Exception:  # noqa: BLE001 - a bug must not leave the connection half-parsed
            logger.exception("internal error in an HTTP/2 connection")
            self.abort(f.INTERNAL_ERROR, "internal error")
            return
        self.flush()

    # -- sending ---------------------------------------------------------------------------
    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: response DATA waits (back-pressure)."""
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume()
        self.flush()

    def flush(self) -> None:
        if self.out and not self.closed:
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.transport.write(data)  # type: ignore[union-attr]
            # DATA stops at the high-water mark (pause_writing); what still grows is control frames
            # and header-only answers to a peer that sends but never reads
            if self.transport.get_write_buffer_size() > self.limits.max_write_buffer:  # type: ignore[union-attr]
                self.out.clear()
                self._close()

    def _header_frames(self, sid: int, block: bytes, end_stream: bool) -> None:
        limit = self.peer_max_frame
        flags = f.END_STREAM if end_stream else 0
        if len(block) <= limit:
            self.out.append(f.frame(f.HEADERS, flags | f.END_HEADERS, sid, block))
            return
        self.out.append(f.frame(f.HEADERS, flags, sid, block[:limit]))
        for i in range(limit, len(block), limit):
            last = i + limit >= len(block)
            self.out.append(f.frame(f.CONTINUATION, f.END_HEADERS if last else 0, sid, block[i:i + limit]))

    def respond(self, stream: Stream, head: bytes, body: bytes = b"", trailers: bytes | None = None) -> None:
        """Answer ``stream``: the header block ``head``, then ``body`` as DATA and ``trailers``
        (both subject to flow control); with no trailers, ``head`` ends the stream (trailers-only)."""
        if stream.answered or self.closed or self.streams.get(stream.id) is not stream:
            return
        stream.answered = True
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if trailers is None:
            self._header_frames(stream.id, head, True)
            self._finish(stream)
        else:
            self._header_frames(stream.id, head, False)
            stream.out, stream.trailers = memoryview(body), trailers
            self._pump(stream)
        self.flush()

    def _pump(self, stream: Stream) -> None:
        """Send what flow control and the transport allow of ``stream``'s answer; the trailers
        once all DATA is out. DATA is handed to the transport a slice at a time, so a paused
        transport stops it within one slice of its high-water mark."""
        out = stream.out
        queued = 0
        while out is not None and len(out):
            n = min(len(out), self.peer_max_frame, stream.send_window, self.send_window)
            if n <= 0 or self.write_paused:
                stream.out = out
                self.blocked[stream.id] = stream
                return
            self.out.append(f.frame(f.DATA, 0, stream.id, bytes(out[:n])))
            out = out[n:]
            stream.send_window -= n
            self.send_window -= n
            queued += n
            if queued >= _WRITE_SLICE and len(out):
                queued = 0
                self.flush()  # may pause writing (or close, for a peer far behind)
                if self.closed:
                    return
        stream.out = None
        self.blocked.pop(stream.id, None)
        self._header_frames(stream.id, stream.trailers, True)
        self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        """Our side of ``stream`` is done: tell a client still sending to stop, and forget it."""
        if not stream.remote_closed:
            self._send_reset(stream.id, f.NO_ERROR)
        self._forget(stream)

    def _send_reset(self, sid: int, code: int) -> None:
        """RST_STREAM ``sid``; frames the client already sent on it will be ignored, not errors."""
        self.out.append(f.rst_stream(sid, code))
        ids = self.reset_ids
        ids[sid] = None
        if len(ids) > _MAX_RESET_IDS:
            del ids[next(iter(ids))]

    def _forget(self, stream: Stream, cancel: bool = False) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self.blocked.pop(stream.id, None)
        if stream.timer is not None:
            stream.timer.cancel()
        if cancel and stream.task is not None and not stream.task.done():
            stream.task.cancel()
        self.handler.on_close(self, stream)
        if self.goaway_sent and not self.streams:
            self.flush()
            self._close()

    def reset(self, stream: Stream, code: int) -> None:
        """End ``stream`` with RST_STREAM ``code`` (its work is cancelled, its answer dropped).

        Such resets are the client's doing (a stream error it caused) and free a stream slot
        as its own RST_STREAM would, so they spend the same budget ("MadeYouReset")."""
        self._send_reset(stream.id, code)
        self._forget(stream, cancel=True)
        if not self.resets.spend():
            self.abort(f.ENHANCE_YOUR_CALM, "too many streams reset for protocol errors")
            return
        self.flush()

    def goaway(self, code: int = f.NO_ERROR, message: str = "") -> None:
        """Accept no new streams; close once the open ones are answered (at once if none)."""
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        self.goaway_last = self.highest
        self.out.append(f.goaway(self.highest, code, message.encode()))
        self.flush()
        if not self.streams:
            self._close()

    def abort(self, code: int, message: str) -> None:
        """A connection error: GOAWAY ``code``, then close now (open streams are cancelled)."""
        if self.closed:
            return
        logger.debug("HTTP/2 connection error %d: %s", code, message)
        self.out.append(f.goaway(self.highest, code, message.encode()))
        self.goaway_sent = True
        self.goaway_last = self.highest
        self.flush()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]

    # -- receiving -------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if not self.settings_seen:
            if kind != f.SETTINGS or flags & f.ACK:
                raise H2Error(f.PROTOCOL_ERROR, "the connection preface must end with a SETTINGS frame")
            self.settings_seen = True
        if self.header_block is not None and kind != f.CONTINUATION:
            raise H2Error(f.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == f.DATA:
            self._data(flags, sid, payload)
        elif kind == f.HEADERS:
            self._headers(flags, sid, payload)
        elif kind == f.CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == f.SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == f.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == f.PING:
            if len(payload) != 8:
                raise H2Error(f.FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if sid:
                raise H2Error(f.PROTOCOL_ERROR, "PING on a stream")
            if not flags & f.ACK:
                if not self.pings.spend():
                    raise H2Error(f.ENHANCE_YOUR_CALM, "too many PING frames")
                self.out.append(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.RST_STREAM:
            if len(payload) != 4:
                raise H2Error(f.FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
            self._check_known(sid, "RST_STREAM")
            if not self.resets.spend():
                raise H2Error(f.ENHANCE_YOUR_CALM, "too many RST_STREAM frames (rapid reset)")
            stream = self.streams.get(sid)
            if stream is not None:
                self._forget(stream, cancel=True)
        elif kind == f.PRIORITY:
            if not sid:
                raise H2Error(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise H2Error(f.FRAME_SIZE_ERROR, "PRIORITY payload must be 5 bytes")
        elif kind == f.GOAWAY:
            if sid:
                raise H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
            self.goaway()  # the client is leaving: answer what is open, then close
        elif kind == f.PUSH_PROMISE:
            raise H2Error(f.PROTOCOL_ERROR, "a client cannot send PUSH_PROMISE")
        # other frame types are ignored (RFC 9113 §4.1)

    def _check_known(self, sid: int, what: str) -> None:
        if sid == 0:
            raise H2Error(f.PROTOCOL_ERROR, f"{what} on stream 0")
        if sid > self.highest or not sid & 1:  # even ids are the server's, and it opens none
            raise H2Error(f.PROTOCOL_ERROR, f"{what} on idle stream {sid}")

    def _closed_stream(self, sid: int, what: str) -> None:
        """``what`` arrived on a closed stream: ignored if we reset it (the client may not know
        yet), else a connection error (RFC 9113 §5.1: the client itself ended it, or never opened
        it and has since opened a higher id)."""
        if sid in self.reset_ids or (self.goaway_sent and sid > self.goaway_last):
            return
        raise H2Error(f.STREAM_CLOSED, f"{what} on closed stream {sid}")

    def _strip_padding(self, flags: int, payload: bytes, what: str) -> bytes:
        if flags & f.PADDED:
            if not payload:
                raise H2Error(f.FRAME_SIZE_ERROR, f"PADDED {what} without a pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise H2Error(f.PROTOCOL_ERROR, f"{what} padding exceeds its payload")
            return payload[1:len(payload) - pad]
        return payload

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        self._check_known(sid, "DATA")
        n = len(payload)  # padding counts against flow control
        self.recv_window -= n
        if self.recv_window < 0:
            raise H2Error(f.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if self.recv_window < self.limits.connection_window // 2:
            self.out.append(f.window_update(0, self.limits.connection_window - self.recv_window))
            self.recv_window = self.limits.connection_window
        data = self._strip_padding(flags, payload, "DATA")
        stream = self.streams.get(sid)
        if stream is None:
            self._closed_stream(sid, "DATA")
            return  # discarded (the connection window is replenished above)
        if stream.answered:
            return  # the answer is out (RST_STREAM follows it), what else the client sends is moot
        if stream.remote_closed:
            self.reset(stream, f.STREAM_CLOSED)
            return
        stream.recv_window -= n
        if stream.recv_window < 0:
            raise H2Error(f.FLOW_CONTROL_ERROR, f"DATA beyond stream {sid}'s window")
        if data:
            stream.chunks.append(data)
            stream.received += len(data)
            self.handler.on_data(self, stream)
        if flags & f.END_STREAM:
            self._complete(stream)
        elif stream.recv_window < self.limits.stream_window // 2 and not stream.answered:
            self.out.append(f.window_update(sid, self.limits.stream_window - stream.recv_window))
            stream.recv_window = self.limits.stream_window

    def _complete(self, stream: Stream) -> None:
        stream.remote_closed = True
        if stream.answered:
            return
        declared = stream.headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) != stream.received):
            self.reset(stream, f.PROTOCOL_ERROR)  # malformed: content-length is not what arrived (§8.1.1)
            return
        self.handler.on_complete(self, stream)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2Error(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if not sid & 1:
            raise H2Error(f.PROTOCOL_ERROR, f"client stream ids are odd, got {sid}")
        payload = self._strip_padding(flags, payload, "HEADERS")
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2Error(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            payload = payload[5:]
        self.header_stream, self.header_end_stream = sid, bool(flags & f.END_STREAM)
        if flags & f.END_HEADERS:
            self._header_block(payload)
        else:
            self.header_block = bytearray(payload)
            self.continuations = 0

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        block = self.header_block
        if block is None or sid != self.header_stream:
            raise H2Error(f.PROTOCOL_ERROR, "CONTINUATION without a header block in progress")
        block += payload
        self.continuations += 1
        if len(block) > self.limits.max_header_block or self.continuations > self.limits.max_continuations:
            raise H2Error(f.ENHANCE_YOUR_CALM, "header block too large (CONTINUATION flood)")
        if flags & f.END_HEADERS:
            self.header_block = None
            self._header_block(bytes(block))

    def _header_block(self, block: bytes) -> None:
        if len(block) > self.limits.max_header_block:
            raise H2Error(f.ENHANCE_YOUR_CALM, "header block too large")
        try:  # always decoded, even for a stream we refuse: HPACK state is per connection
            fields: list[tuple[bytes, bytes]] | None = self.decoder.decode(block)
        except MalformedFieldError as e:
            logger.debug("malformed request on stream %d: %s", self.header_stream, e)
            fields = None
        except hpack.OversizedHeaderListError as e:
            raise H2Error(f.ENHANCE_YOUR_CALM, "header list exceeds MAX_HEADER_LIST_SIZE") from e
        except (hpack.HPACKError, IndexError, ValueError, UnicodeError) as e:
            raise H2Error(f.COMPRESSION_ERROR, f"cannot decode the header block: {e}") from e
        sid, end_stream = self.header_stream, self.header_end_stream
        stream = self.streams.get(sid)
        if sid <= self.highest:
            if stream is None:
                if not end_stream:  # not trailers: a new stream whose id does not increase
                    raise H2Error(f.PROTOCOL_ERROR, f"stream id {sid} is not above {self.highest}, "
                                                    "the highest opened so far")
                self._closed_stream(sid, "HEADERS")  # trailers for a stream we reset are ignored
                return
            if not end_stream:
                raise H2Error(f.PROTOCOL_ERROR, f"second header block on stream {sid} without END_STREAM")
            if fields is None or any(name[:1] == b":" for name, _ in fields):
                self.reset(stream, f.PROTOCOL_ERROR)  # malformed trailers (RFC 9113 §8.1)
            elif stream.remote_closed:
                self.reset(stream, f.STREAM_CLOSED)
            elif not stream.answered:
                self._complete(stream)  # request trailers: their contents mean nothing to a unary RPC
            else:
                stream.remote_closed = True
            return
        self.highest = sid
        if self.goaway_sent:
            return  # past our GOAWAY's last stream id: the client retries it elsewhere
        if len(self.streams) >= self.limits.max_streams:
            self._send_reset(sid, f.REFUSED_STREAM)
            return
        stream = Stream(sid, self.peer_initial_window, self.limits.stream_window)
        if fields is None or not self._fill(stream, fields):
            self._send_reset(sid, f.PROTOCOL_ERROR)
            return
        self.streams[sid] = stream
        self.handler.on_headers(self, stream)
        if end_stream and self.streams.get(sid) is stream:
            self._complete(stream)

    @staticmethod
    def _fill(stream: Stream, fields: list[tuple[bytes, bytes]]) -> bool:
        """Copy a request's header list into ``stream``; False if it is malformed (RFC 9113 §8.3; the
        fields' own syntax, §8.2.1, the decoder checked)."""
        regular = False
        headers = stream.headers
        seen: set[bytes] = set()
        for name, value in fields:
            if name[:1] == b":":
                if regular or name not in _PSEUDO or name in seen:
                    return False
                seen.add(name)
                if name == b":method":
                    stream.method = value
                elif name == b":path":
                    stream.path = value
                elif name == b":scheme":
                    stream.scheme = value
                continue
            regular = True
            if name in _CONNECTION_HEADERS or (name == b"te" and value != b"trailers"):
                return False
            headers[name] = value
        return bool(stream.method and stream.path and stream.scheme)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise H2Error(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise H2Error(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(f.FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 bytes")
        if not self.settings_budget.spend():
            raise H2Error(f.ENHANCE_YOUR_CALM, "too many SETTINGS frames")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == f.ENABLE_PUSH and value > 1:
                raise H2Error(f.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2Error(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta, self.peer_initial_window = value - self.peer_initial_window, value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > f.MAX_WINDOW:
                        raise H2Error(f.FLOW_CONTROL_ERROR, "a stream window grew above 2^31-1")
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise H2Error(f.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
        self.out.append(f.SETTINGS_ACK)
        self._resume()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise H2Error(f.PROTOCOL_ERROR, "WINDOW_UPDATE with a zero increment")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise H2Error(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._resume()
            return
        self._check_known(sid, "WINDOW_UPDATE")
        stream = self.streams.get(sid)
        if stream is None:
            return
        if increment == 0:
            self.reset(stream, f.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > f.MAX_WINDOW:
            self.reset(stream, f.FLOW_CONTROL_ERROR)
            return
        if sid in self.blocked:
            self._pump(stream)

    def _resume(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0 or self.write_paused or self.closed:
                return
            self._pump(stream)
