"""One request stream's state, and what the application does with streams (:class:`StreamHandler`)."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgemp.runtime.server.h2.connection import H2Connection


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
    """What the application does with streams (see :mod:`edgemp.runtime.server.h2.grpc_handler`)."""

    def on_headers(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_data(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_complete(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_close(self, conn: "H2Connection", stream: Stream) -> None: ...
    def on_stalled(self, conn: "H2Connection", stream: Stream) -> None: ...
