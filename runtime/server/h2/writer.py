"""The send side of an HTTP/2 connection: answers written as flow control and the transport allow.

Response DATA is bounded three ways: the peer's stream and connection windows (resumed on
WINDOW_UPDATE and SETTINGS), its MAX_FRAME_SIZE (DATA is split at it), and the transport's
back-pressure: when its buffer passes the high-water mark (``pause_writing``) DATA waits
until ``resume_writing``, so a peer that reads slowly gets its answers late, not a cut
connection. What is not flow-controlled (header-only answers, control frames) to a peer
that never reads is bounded by ``max_write_buffer``, past which the connection is closed.
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from edgemp.runtime.server.h2 import frames as f

if TYPE_CHECKING:
    from edgemp.runtime.server.h2.limits import ConnectionLimits
    from edgemp.runtime.server.h2.stream import Stream

_WRITE_SLICE = 64 << 10  # response DATA bytes queued between checks of the transport's back-pressure
_MAX_RESET_IDS = 1024  # recent streams whose late frames are ignored (RFC 9113 §5.1, "closed")


class FlowControlledWriter:
    """Part of :class:`~edgemp.runtime.server.h2.connection.H2Connection`: sending (see the module docstring)."""

    # state the connection owns (set in its __init__)
    transport: asyncio.Transport | None
    limits: ConnectionLimits
    closed: bool
    out: list[bytes]
    streams: dict[int, Stream]
    blocked: dict[int, Stream]  # answers waiting for the connection window or the transport
    window_blocked: dict[int, Stream]  # answers waiting for their own stream's window
    reset_ids: dict[int, None]
    peer_max_frame: int
    send_window: int
    write_paused: bool
    last_active: float

    if TYPE_CHECKING:  # the other parts' (resolved on the connection class, not here)
        def _forget(self, stream: Stream, cancel: bool = False) -> None: ...
        def _close(self) -> None: ...

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: response DATA waits (back-pressure)."""
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_active = time.monotonic()  # the peer is reading: not idle, even if it sends nothing
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
        elif 0 < len(body) <= min(self.peer_max_frame, _WRITE_SLICE, stream.send_window, self.send_window) \
                and not self.write_paused:
            # a small answer the windows allow at once (a unary RPC's, nearly always): what _pump
            # writes for it, without the slicing loop
            stream.send_window -= len(body)
            self.send_window -= len(body)
            self._header_frames(stream.id, head, False)
            self.out.append(f.frame(f.DATA, 0, stream.id, body))
            self._header_frames(stream.id, trailers, True)
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
            # a peer may allow frames of up to 16 MiB: slices of _WRITE_SLICE keep each write under
            # the transport's back-pressure check (one huge frame would trip max_write_buffer)
            n = min(len(out), self.peer_max_frame, _WRITE_SLICE, stream.send_window, self.send_window)
            if n <= 0 or self.write_paused:
                stream.out = out
                self._block(stream)
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
        self.window_blocked.pop(stream.id, None)
        self._header_frames(stream.id, stream.trailers, True)
        self._finish(stream)

    def _block(self, stream: Stream) -> None:
        """Park ``stream``'s answer where what frees it will look: a stream out of its own window
        waits for that stream's WINDOW_UPDATE (or a larger INITIAL_WINDOW_SIZE), not for every
        connection-level one: re-trying them all on each 13-byte WINDOW_UPDATE let a client
        with many blocked answers make the loop work per frame in proportion to them."""
        if stream.send_window <= 0:
            self.blocked.pop(stream.id, None)
            self.window_blocked[stream.id] = stream
        else:
            self.window_blocked.pop(stream.id, None)
            self.blocked[stream.id] = stream

    def _resume(self) -> None:
        """Answers waiting for the connection window or the transport: send what is allowed now."""
        for stream in list(self.blocked.values()):
            if self.send_window <= 0 or self.write_paused or self.closed:
                return
            self._pump(stream)

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
