"""One HTTP/2 connection (h2c, prior knowledge) as an asyncio Protocol on the server's event loop.

This is the part of RFC 9113 a unary-RPC server needs, done so that stock clients (grpcio's
C-core) and hostile ones get correct answers: the preface, SETTINGS and their ACK, PING,
flow control both ways (the client's windows are replenished as its DATA arrives; ours are
respected when answering, with DATA split at the peer's MAX_FRAME_SIZE and resumed on
WINDOW_UPDATE), HEADERS + CONTINUATION, PADDED and PRIORITY, RST_STREAM and GOAWAY. What a
stream *means* is the application's (:class:`StreamHandler`, here gRPC): the connection
hands it complete header lists and DATA as it arrives, and sends what it answers.

The connection is assembled from its parts, one job each: :mod:`~.receiver` (frame dispatch,
request streams, header blocks), :mod:`~.control` (SETTINGS, WINDOW_UPDATE, PING, RST_STREAM,
PRIORITY, GOAWAY) and :mod:`~.writer` (answers under flow control and back-pressure); here are
its state, the byte stream's framing and the streams' and connection's ends.

Abuse is bounded per connection: concurrent streams (REFUSED_STREAM past the limit),
header block size and CONTINUATION count, and per-second budgets of RST_STREAM (rapid
reset, including resets the client provokes), SETTINGS and PING frames, past which the
connection ends with GOAWAY ENHANCE_YOUR_CALM. A protocol error ends it with GOAWAY and the
RFC's error code; nothing raised while parsing escapes the protocol.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from edgemp.runtime.server.h2 import frames as f
from edgemp.runtime.server.h2.control import ControlFrames
from edgemp.runtime.server.h2.frames import H2Error
from edgemp.runtime.server.h2.headers import HeaderDecoder
from edgemp.runtime.server.h2.limits import Budget, ConnectionLimits
from edgemp.runtime.server.h2.receiver import FrameReceiver
from edgemp.runtime.server.h2.stream import Stream, StreamHandler
from edgemp.runtime.server.h2.writer import FlowControlledWriter

logger = logging.getLogger(__name__)

__all__ = ["ConnectionLimits", "H2Connection", "H2Error", "Stream", "StreamHandler"]


class H2Connection(FrameReceiver, ControlFrames, FlowControlledWriter, asyncio.Protocol):
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
        self.blocked: dict[int, Stream] = {}  # answers waiting for the connection window or the transport
        self.window_blocked: dict[int, Stream] = {}  # answers waiting for their stream's own window
        # our receive side
        self.recv_window = limits.connection_window
        self.header_block: bytearray | None = None  # a header block still awaiting CONTINUATION
        self.header_stream = 0
        self.header_end_stream = False
        self.header_self_dependent = False  # the block's HEADERS made its stream depend on itself
        self.continuations = 0
        self.resets = Budget(limits.resets_per_s)
        self.settings_budget = Budget(limits.settings_per_s)
        self.pings = Budget(limits.pings_per_s)
        self.out: list[bytes] = []

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

    def _forget(self, stream: Stream, cancel: bool = False) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self.blocked.pop(stream.id, None)
        self.window_blocked.pop(stream.id, None)
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
