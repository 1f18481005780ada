"""Connection-level control frames from the client: SETTINGS, WINDOW_UPDATE, PING, RST_STREAM,
PRIORITY and GOAWAY (RFC 9113 §6.3-6.9), each checked for its size, stream and values."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from edgemp.runtime.server.h2 import frames as f
from edgemp.runtime.server.h2.frames import H2Error

if TYPE_CHECKING:
    from edgemp.runtime.server.h2.limits import Budget
    from edgemp.runtime.server.h2.stream import Stream


MAX_SETTINGS = 64  # entries in one SETTINGS frame


class ControlFrames:
    """Part of :class:`~edgemp.runtime.server.h2.connection.H2Connection`: control frames."""

    # state the connection owns (set in its __init__)
    out: list[bytes]
    streams: dict[int, Stream]
    blocked: dict[int, Stream]
    window_blocked: dict[int, Stream]
    peer_max_frame: int
    peer_initial_window: int
    send_window: int
    resets: Budget
    settings_budget: Budget
    pings: Budget

    if TYPE_CHECKING:  # the other parts' (resolved on the connection class, not here)
        def _check_known(self, sid: int, what: str) -> None: ...
        def _forget(self, stream: Stream, cancel: bool = False) -> None: ...
        def _pump(self, stream: Stream) -> None: ...
        def _resume(self) -> None: ...
        def reset(self, stream: Stream, code: int) -> None: ...
        def _send_reset(self, sid: int, code: int) -> None: ...
        def goaway(self, code: int = f.NO_ERROR, message: str = "") -> None: ...

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
        if len(payload) > MAX_SETTINGS * 6:  # seven settings are defined; a frame of thousands is a flood
            raise H2Error(f.ENHANCE_YOUR_CALM, f"SETTINGS frame with over {MAX_SETTINGS} entries")
        windows = []
        for key, value in struct.iter_unpack(">HI", payload):
            if key == f.ENABLE_PUSH and value > 1:
                raise H2Error(f.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise H2Error(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                windows.append(value)
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise H2Error(f.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
        if windows:
            self._new_initial_window(windows)
        self.out.append(f.SETTINGS_ACK)
        self._resume()

    def _new_initial_window(self, values: list[int]) -> None:
        """INITIAL_WINDOW_SIZE changed (``values``: the frame's, in order): every stream's window
        moves by the difference, once per frame. A window that any of the values would push above
        2^31-1 is an error, as if each had been applied in turn (the largest value does it if any)."""
        old, new = self.peer_initial_window, values[-1]
        self.peer_initial_window = new
        if not self.streams:
            return
        if max(values) - old + max(s.send_window for s in self.streams.values()) > f.MAX_WINDOW:
            raise H2Error(f.FLOW_CONTROL_ERROR, "a stream window grew above 2^31-1")
        delta = new - old
        for stream in self.streams.values():
            stream.send_window += delta
        if delta > 0:  # answers out of their own window may go on (on to the connection's)
            for stream in list(self.window_blocked.values()):
                if stream.send_window > 0:
                    self._pump(stream)

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
        if sid in self.window_blocked or sid in self.blocked:
            self._pump(stream)

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if len(payload) != 8:
            raise H2Error(f.FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
        if sid:
            raise H2Error(f.PROTOCOL_ERROR, "PING on a stream")
        if not flags & f.ACK:
            if not self.pings.spend():
                raise H2Error(f.ENHANCE_YOUR_CALM, "too many PING frames")
            self.out.append(f.frame(f.PING, f.ACK, 0, payload))

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(f.FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
        self._check_known(sid, "RST_STREAM")
        if not self.resets.spend():
            raise H2Error(f.ENHANCE_YOUR_CALM, "too many RST_STREAM frames (rapid reset)")
        stream = self.streams.get(sid)
        if stream is not None:
            self._forget(stream, cancel=True)

    def _priority(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2Error(f.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise H2Error(f.FRAME_SIZE_ERROR, "PRIORITY payload must be 5 bytes")
        if f.depends_on(payload) == sid:  # a stream cannot depend on itself: a stream error (§5.3.1)
            stream = self.streams.get(sid)
            if stream is not None:
                self.reset(stream, f.PROTOCOL_ERROR)
            else:
                self._send_reset(sid, f.PROTOCOL_ERROR)

    def _peer_goaway(self, sid: int, payload: bytes) -> None:
        if sid:
            raise H2Error(f.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2Error(f.FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
        self.goaway()  # the client is leaving: answer what is open, then close
