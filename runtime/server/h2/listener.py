"""The HTTP/2 listener: accepts connections on the running loop, sweeps idle ones, drains on SIGTERM.

The connection-level limits mirror the HTTP side's (:mod:`edgemp.runtime.server.connections`):
a connection must send the preface within ``header_timeout_s``; one with no open stream
for ``keepalive_timeout_s`` gets GOAWAY and closes (gRPC clients reconnect on their own);
a request whose DATA arrives slower than ``body_min_rate_bytes_per_s`` after the grace
period is ended; a peer that leaves answers waiting for flow-control window and says
nothing for ``keepalive_timeout_s`` is closed; at ``max_connections`` newcomers are closed at once. One timer per
listener, once a second, checks all of them: nothing is scheduled per request.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server.connections import RateLimitedLog, connection_limit
from edgemp.runtime.server.h2 import frames as f
from edgemp.runtime.server.h2.connection import H2Connection
from edgemp.runtime.server.h2.limits import ConnectionLimits
from edgemp.runtime.server.h2.stream import StreamHandler

logger = logging.getLogger(__name__)

SWEEP_S = 1.0


class H2Listener:
    """Serves HTTP/2 connections with one :class:`StreamHandler` (see the module docstring)."""

    def __init__(self, handler: StreamHandler, config: ServerConfig, limits: ConnectionLimits | None = None,
                 counted: Any = None) -> None:
        self.handler = handler
        self.counted = counted  # the app's OpenConnections (state.py): a gRPC connection has no request bound
        self.limits = limits or ConnectionLimits()
        self.header_timeout_s = config.header_timeout_s
        self.keepalive_timeout_s = config.keepalive_timeout_s
        self.min_rate = config.body_min_rate_bytes_per_s
        self.max_connections = connection_limit(config.max_connections)
        self.connections: set[H2Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.draining = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._refused_log = RateLimitedLog(logger)

    async def start(self, host: str, port: int, socks: "list[socket.socket] | None" = None) -> int:
        """Listen on ``host:port`` (0 picks a free port), or on ``socks`` already bound; the bound port."""
        loop = asyncio.get_running_loop()
        factory = lambda: H2Connection(self.handler, self.limits, self)  # noqa: E731
        if socks:
            for sock in socks:
                self.servers.append(await loop.create_server(factory, sock=sock, backlog=1024))
        else:
            self.servers.append(await loop.create_server(factory, host, port, backlog=1024, reuse_address=True))
        self._sweeper = loop.call_later(SWEEP_S, self._sweep)
        return self.servers[0].sockets[0].getsockname()[1]

    # -- called by connections -------------------------------------------------------------
    def admit(self, conn: H2Connection) -> bool:
        if self.draining or len(self.connections) >= self.max_connections:
            self._refused_log.warning("gRPC connection refused: %d connections open (max_connections) or draining",
                                      len(self.connections))
            return False
        self.connections.add(conn)
        if self.counted is not None:
            self.counted.opened(multiplexed=True)
        return True

    def forget(self, conn: H2Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if self.counted is not None:
                self.counted.closed(multiplexed=True)

    # -- housekeeping ----------------------------------------------------------------------
    def _sweep(self) -> None:
        now = time.monotonic()
        try:
            for conn in list(self.connections):
                if conn.closed:
                    continue
                if not conn.preface_seen:
                    if now - conn.opened > self.header_timeout_s:
                        conn.abort(f.PROTOCOL_ERROR, "no connection preface in time")
                    continue
                if not conn.streams:
                    if now - conn.last_active > self.keepalive_timeout_s:
                        conn.goaway(f.NO_ERROR, "idle")
                    continue
                if (conn.blocked or conn.window_blocked) and now - conn.last_active > self.keepalive_timeout_s:
                    conn.abort(f.NO_ERROR, "answers wait for flow-control window the peer never gives")
                    continue
                for stream in list(conn.streams.values()):
                    elapsed = now - stream.opened
                    if (not stream.remote_closed and not stream.answered and elapsed > self.header_timeout_s
                            and stream.received < self.min_rate * (elapsed - self.header_timeout_s)):
                        self.handler.on_stalled(conn, stream)
        except Exception:  # noqa: BLE001 - the sweep must keep running
            logger.exception("error sweeping HTTP/2 connections")
        finally:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    # -- shutdown ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Stop accepting; every connection gets GOAWAY and closes once its open streams are answered."""
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.goaway(f.NO_ERROR, "server shutting down")

    async def close(self, grace_s: float = 1.0) -> None:
        """Drain (if not yet), wait up to ``grace_s`` for connections to finish, then close the rest."""
        self.begin_drain()
        deadline = time.monotonic() + grace_s
        while any(not c.closed for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.abort(f.NO_ERROR, "server shut down")
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self.servers:
            await server.wait_closed()
