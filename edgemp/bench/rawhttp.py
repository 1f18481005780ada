"""A minimal HTTP/1.1 keep-alive client for load generation: pre-built requests, lean parsing.

A general client (aiohttp, http.client) spends tens of microseconds per request building
headers and parsing responses; at batch 1 that is as much as the server's own overhead, so a
benchmark driven by it measures the client. This one sends request bytes built once and
reads just enough of the response (status line, ``Content-Length``,
``Inference-Header-Content-Length``) to find its end. Plain ``http://`` only; chunked
responses are not supported (edgemp and Triton send ``Content-Length``).
"""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from edgemp.errors import EdgempError

HEADER_LENGTH = b"inference-header-content-length"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    header_length: int | None  # Inference-Header-Content-Length, when the body is binary


def build_request(method: str, host: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """The wire bytes of one request (Content-Length set; keep-alive is HTTP/1.1's default)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        if k.lower() not in ("host", "content-length"):
            lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(head: bytes) -> tuple[int, int, int | None]:
    """(status, content length, inference header length) from the response head."""
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError) as e:
        raise EdgempError(f"not an HTTP response: {lines[0][:80]!r}") from e
    length, hlen = None, None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == HEADER_LENGTH:
            hlen = int(value)
        elif name == b"transfer-encoding":
            raise EdgempError("chunked responses are not supported by the raw client")
    return status, length or 0, hlen


class RawConnection:
    """A blocking keep-alive connection (for sequential latency measurements)."""

    def __init__(self, host: str, port: int, timeout_s: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def request(self, wire: bytes) -> Response:
        self.sock.sendall(wire)
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        status, length, hlen = _parse_head(buf[:end])
        start = end + 4
        while len(buf) - start < length:
            chunk = self.sock.recv(max(65536, length - (len(buf) - start)))
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            buf += chunk
        self._buf = buf[start + length:]
        return Response(status, buf[start:start + length], hlen)

    def close(self) -> None:
        self.sock.close()


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class AsyncRawConnection:
    """One keep-alive connection on the running event loop; one request at a time."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._t, self._p = transport, protocol

    @classmethod
    async def open(cls, host: str, port: int) -> "AsyncRawConnection":
        transport, protocol = await asyncio.get_running_loop().create_connection(_Protocol, host, port)
        return cls(transport, protocol)  # type: ignore[arg-type]

    async def _more(self) -> None:
        p = self._p
        if p.lost is not None:
            raise ConnectionError(str(p.lost))
        p.waiter = asyncio.get_running_loop().create_future()
        await p.waiter
        p.waiter = None

    async def request(self, wire: bytes) -> Response:
        p = self._p
        self._t.write(wire)
        while True:
            end = p.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            await self._more()
        status, length, hlen = _parse_head(bytes(p.buf[:end]))
        start = end + 4
        while len(p.buf) - start < length:
            await self._more()
        body = bytes(p.buf[start:start + length])
        del p.buf[:start + length]
        return Response(status, body, hlen)

    def close(self) -> None:
        self._t.close()
