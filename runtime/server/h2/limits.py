"""What one HTTP/2 connection may ask of the server, and the per-second budgets that enforce it."""
from __future__ import annotations

import time


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


class Budget:
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
