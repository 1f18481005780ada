"""A minimal blocking gRPC-over-HTTP/2 client for benchmarks: what a call costs without a client library.

One connection (prior knowledge h2c), literal HPACK headers, the request as one HEADERS and
its message in DATA frames of at most 16 KiB (the MAX_FRAME_SIZE every server accepts), read
to the trailers. A message must fit in the 64 KiB window every server grants before its
SETTINGS (the client does not wait for WINDOW_UPDATE). It answers PING and SETTINGS, replenishes the
server's send windows as answers arrive and handles CONTINUATION, so it works against any
gRPC server, grpcio's included; it is a measuring tool, not a general client.
"""
from __future__ import annotations

import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
WINDOW = 1 << 30
MAX_FRAME = 16_384  # the smallest MAX_FRAME_SIZE a server may advertise (RFC 9113 §6.5.2)
MAX_MESSAGE = 65_535 - 5  # the initial stream window, less the gRPC message prefix
_HEAD = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_LENGTH = struct.Struct(">I")


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, sid) + payload


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
        self.buf = bytearray()
        self.sid = 1
        self.authority = f"{host}:{port}".encode()
        self.blocks: dict[str, bytes] = {}
        self.received = 0

    def _block(self, path: str) -> bytes:
        block = self.blocks.get(path)
        if block is None:
            block = self.blocks[path] = (
                b"\x83\x86" + _literal(b":path", path.encode()) + _literal(b":authority", self.authority)
                + _literal(b"content-type", b"application/grpc") + _literal(b"te", b"trailers"))
        return block

    def call(self, path: str, message: bytes) -> tuple[int, bytes]:
        """(grpc-status, response message) of one unary call; the status is -1 without one (HTTP error)."""
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"a {len(message)}-byte message exceeds the {MAX_MESSAGE} bytes this client can send "
                             "without flow control")
        sid, self.sid = self.sid, self.sid + 2
        block = self._block(path)
        n = len(message) + 5
        if n <= MAX_FRAME:  # the common case: one DATA frame, no copy of the message
            data = [_HEAD.pack(n >> 8, n & 0xFF, 0, 1, sid), b"\x00", _LENGTH.pack(n - 5), message]
        else:
            whole = b"\x00" + _LENGTH.pack(n - 5) + message
            data = [_frame(0, 1 if end >= n else 0, sid, whole[end - MAX_FRAME:end])
                    for end in range(MAX_FRAME, n + MAX_FRAME, MAX_FRAME)]
        self.sock.sendall(b"".join((_HEAD.pack(len(block) >> 8, len(block) & 0xFF, 1, 4, sid), block, *data)))
        body: list[bytes] = []
        status = -1
        buf = self.buf
        pos = 0
        while True:
            if len(buf) - pos < 9:
                del buf[:pos]
                pos = 0
                self._recv()
                continue
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if len(buf) - pos < 9 + length:
                del buf[:pos]
                pos = 0
                self._recv()
                continue
            kind, flags = buf[pos + 3], buf[pos + 4]
            fsid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            if kind == 0:
                self.received += length
                if fsid == sid:
                    body.append(payload)
            elif kind in (1, 9) and fsid == sid:
                marker = payload.find(b"grpc-status")
                if marker >= 0:  # our own server's literal encoding; grpcio's may be indexed
                    status = int(payload[marker + 12:marker + 12 + payload[marker + 11]])
                elif flags & 1 and status < 0:
                    status = 0 if body else -1
                if flags & 1:
                    break
            elif kind == 3 and fsid == sid:
                raise ConnectionError(f"stream {sid} reset")
            else:
                self._control(kind, flags, payload)
        del buf[:pos]
        if self.received > WINDOW // 2:
            self.sock.sendall(_frame(8, 0, 0, _LENGTH.pack(self.received)))
            self.received = 0
        data = b"".join(body)
        return status, data[5:]

    def _control(self, kind: int, flags: int, payload: bytes) -> None:
        if kind == 4 and not flags & 1:
            self.sock.sendall(_frame(4, 1, 0))
        elif kind == 6 and not flags & 1:
            self.sock.sendall(_frame(6, 1, 0, payload))
        elif kind == 7:
            raise ConnectionError("server sent GOAWAY")

    def _recv(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()
