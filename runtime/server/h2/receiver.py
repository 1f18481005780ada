"""The receive side of an HTTP/2 connection: frame dispatch, request streams and their header blocks.

Stream lifecycle per RFC 9113 §5.1: client ids are odd and increase (a HEADERS that would
open a lower or reused id is a connection error, so no call is silently dropped); frames on a
stream we reset are ignored for a while, frames on one the client closed are STREAM_CLOSED.
DATA is counted against our windows, which are replenished as it arrives. A header block
(HEADERS + CONTINUATION, padding and priority fields stripped) is always HPACK-decoded, even
for a refused stream, since the decoder's table is the connection's; a request's header list
must be well-formed (§8.2-8.3), else the stream is reset with PROTOCOL_ERROR.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import hpack

from edgemp.runtime.server.h2 import frames as f
from edgemp.runtime.server.h2.frames import H2Error
from edgemp.runtime.server.h2.headers import HeaderDecoder, MalformedFieldError
from edgemp.runtime.server.h2.stream import Stream

if TYPE_CHECKING:
    from edgemp.runtime.server.h2.limits import ConnectionLimits
    from edgemp.runtime.server.h2.stream import StreamHandler

logger = logging.getLogger(__name__)

_CONNECTION_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_PSEUDO = frozenset({b":method", b":path", b":scheme", b":authority"})


class FrameReceiver:
    """Part of :class:`~edgemp.runtime.server.h2.connection.H2Connection`: receiving (see the module docstring)."""

    # state the connection owns (set in its __init__)
    handler: StreamHandler
    limits: ConnectionLimits
    decoder: HeaderDecoder
    out: list[bytes]
    streams: dict[int, Stream]
    settings_seen: bool
    highest: int
    reset_ids: dict[int, None]
    goaway_sent: bool
    goaway_last: int
    peer_initial_window: int
    recv_window: int
    header_block: bytearray | None
    header_stream: int
    header_end_stream: bool
    header_self_dependent: bool
    continuations: int

    if TYPE_CHECKING:  # the other parts' (resolved on the connection class, not here)
        def _settings(self, flags: int, sid: int, payload: bytes) -> None: ...
        def _window_update(self, sid: int, payload: bytes) -> None: ...
        def _ping(self, flags: int, sid: int, payload: bytes) -> None: ...
        def _rst_stream(self, sid: int, payload: bytes) -> None: ...
        def _priority(self, sid: int, payload: bytes) -> None: ...
        def _peer_goaway(self, sid: int, payload: bytes) -> None: ...
        def _send_reset(self, sid: int, code: int) -> None: ...
        def reset(self, stream: Stream, code: int) -> None: ...

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
            self._ping(flags, sid, payload)
        elif kind == f.RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == f.PRIORITY:
            self._priority(sid, payload)
        elif kind == f.GOAWAY:
            self._peer_goaway(sid, payload)
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
        if stream.remote_closed:  # DATA after END_STREAM (RFC 9113 §5.1, half-closed (remote))
            self.reset(stream, f.STREAM_CLOSED)
            return
        if stream.answered:  # its answer waits for window: what the client still sends is moot
            stream.remote_closed = bool(flags & f.END_STREAM)  # (then no RST_STREAM after the answer)
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
        self.header_self_dependent = False
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2Error(f.FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            self.header_self_dependent = f.depends_on(payload) == sid  # a stream error (§5.3.1), once decoded
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
        if self.header_self_dependent:
            fields = None  # the stream depends on itself: reset as a malformed request is
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
            if name == b"authorization" and name in headers:
                value = b""  # two credentials: neither is taken (HTTP refuses them alike)
            headers[name] = value
        return bool(stream.method and stream.path and stream.scheme)
