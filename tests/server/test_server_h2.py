"""The gRPC listener's HTTP/2 layer, driven frame by frame over a raw socket.

The real ``edgemp serve --grpc-port`` in a subprocess; the client here writes the frames
itself (hpack encodes its headers), so flow control, CONTINUATION, padding, resets, floods
and malformed input can be sent exactly as a hostile or unusual client would. Every
inference answer is compared with the in-process ``Model.predict``.
"""
from __future__ import annotations

import random
import signal
import socket
import struct
import time

import numpy as np
import pytest

hpack = pytest.importorskip("hpack")
pytest.importorskip("google.protobuf")

from edgemp.runtime.server import grpc_proto as pb  # noqa: E402
from runtime_fixtures import random_graphs  # noqa: E402
from server_utils import assert_outputs_match, batch_tensors, expected_layout, free_port, start_server, serving_grpc  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ServerReady"
PROTOCOL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x1, 0x7, 0xB


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def message(body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(body)) + body


class Client:
    """One raw HTTP/2 connection: frames out, frames in, responses assembled per stream."""

    def __init__(self, port: int, settings: dict[int, int] | None = None, handshake: bool = True,
                 recv_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if recv_buffer is not None:  # before connect, so the kernel's receive window stays this small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.streams: dict[int, dict] = {}
        self.goaway: tuple[int, int] | None = None
        self.resets: dict[int, int] = {}
        self.updates: dict[int, int] = {}  # WINDOW_UPDATE increments from the server, per stream id
        self.pings: list[bytes] = []
        self.auto_window = True
        self.max_frame_seen = 0
        self.server_settings: dict[int, int] = {}
        if handshake:
            payload = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
            self.send(PREFACE + frame(SETTINGS, 0, 0, payload))
            while not self.server_settings:
                self.read()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def headers(self, path: str, extra: list[tuple[str, str]] = (), method: str = "POST") -> bytes:
        return self.encoder.encode([(":method", method), (":scheme", "http"), (":path", path),
                                    (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
                                    ("te", "trailers"), *extra])

    def call(self, sid: int, path: str, body: bytes, extra: list[tuple[str, str]] = ()) -> bytes:
        """HEADERS + the message in 16 KiB DATA frames, ending the stream (the bytes, not yet sent;
        within the windows the server advertises for requests up to 1 MiB)."""
        data = message(body)
        chunks = [data[i:i + 16_384] for i in range(0, len(data), 16_384)]
        return frame(HEADERS, 0x4, sid, self.headers(path, extra)) + b"".join(
            frame(DATA, 0x1 if i == len(chunks) - 1 else 0, sid, chunk) for i, chunk in enumerate(chunks))

    def read(self) -> tuple[int, int, int, bytes] | None:
        """One frame (answering SETTINGS, PING and, when ``auto_window``, replenishing DATA); None at EOF."""
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    kind, flags = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                    self._handle(kind, flags, sid, payload)
                    return kind, flags, sid, payload
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data

    def _handle(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & 1:
            self.server_settings = {k: v for k, v in struct.iter_unpack(">HI", payload)} or {0: 0}
            self.send(frame(SETTINGS, 1, 0))
        elif kind == PING and flags & 1:
            self.pings.append(payload)
        elif kind == GOAWAY:
            self.goaway = struct.unpack(">II", payload[:8])
        elif kind == RST:
            self.resets[sid] = struct.unpack(">I", payload)[0]
        elif kind == WINDOW:
            self.updates[sid] = self.updates.get(sid, 0) + struct.unpack(">I", payload)[0]
        elif kind in (HEADERS, CONT):
            s = self.streams.setdefault(sid, {"block": b"", "headers": [], "data": b"", "done": False})
            s["block"] += payload
            if flags & 0x4:
                s["headers"].append(dict(self.decoder.decode(s["block"])))
                s["block"] = b""
            s["done"] = s["done"] or bool(flags & 0x1)
        elif kind == DATA:
            self.max_frame_seen = max(self.max_frame_seen, len(payload))
            s = self.streams.setdefault(sid, {"block": b"", "headers": [], "data": b"", "done": False})
            s["data"] += payload
            s["done"] = s["done"] or bool(flags & 0x1)
            if self.auto_window and payload:
                self.send(frame(WINDOW, 0, 0, struct.pack(">I", len(payload)))
                          + frame(WINDOW, 0, sid, struct.pack(">I", len(payload))))

    def response(self, sid: int) -> dict:
        """Read until stream ``sid`` ends; its headers, trailers, grpc-status and message."""
        while not (sid in self.streams and self.streams[sid]["done"]):
            if sid in self.resets:
                raise AssertionError(f"stream {sid} reset with {self.resets[sid]}")
            if self.read() is None:
                raise AssertionError(f"connection closed before stream {sid} ended (GOAWAY {self.goaway})")
        s = self.streams[sid]
        last = s["headers"][-1]
        s["status"] = int(last.get("grpc-status", -1))
        s["message"] = s["data"][5:]
        s["http"] = s["headers"][0].get(":status")
        return s

    def until_closed(self) -> None:
        """Read until the server closes the connection (the socket timeout fails a hang)."""
        while self.read() is not None:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    with serving_grpc(model_path, tmp_path_factory.mktemp("h2log"),
                      "--max-body-bytes", str(4 << 20), "--max-request-nodes", "100000",
                      "--max-request-edges", "400000") as srv:
        yield srv


@pytest.fixture()
def conn(server):
    c = Client(server.grpc_port)
    yield c
    c.close()


def _infer(model, graphs, request_id: str = "") -> tuple[bytes, dict[str, np.ndarray]]:
    return pb.infer_request_bytes("gnn", batch_tensors(graphs), request_id), expected_layout(model, graphs)


def _outputs(answer: bytes) -> tuple[str, dict[str, np.ndarray]]:
    resp = pb.ModelInferResponse.FromString(answer)
    out = {}
    for tensor, raw in zip(resp.outputs, resp.raw_output_contents):
        out[tensor.name] = np.frombuffer(raw, np.float32).reshape(list(tensor.shape))
    return resp.id, out


def _expect_answer(r: dict, rid: str, want: dict, where: str) -> None:
    """A stream's answer is a success carrying request id ``rid`` and the in-process outputs ``want``."""
    assert r["status"] == 0, r
    got_rid, got = _outputs(r["message"])
    assert got_rid == rid
    assert_outputs_match(got, want, where)


def test_large_request_beyond_the_servers_windows(conn, model):
    """A 1.5 MB request in 16 KiB DATA frames, more than the stream window the server advertised
    (and than the default 64 KiB): sent only as the server's WINDOW_UPDATEs allow."""
    graphs = random_graphs(np.random.default_rng(1), 2000)
    wire, want = _infer(model, graphs, "big")
    body = message(wire)
    stream_window = conn.server_settings[0x4]
    assert len(body) > stream_window > 65_535
    pos = 0
    while pos < len(body):
        conn_window = 65_535 + conn.updates.get(0, 0) - pos
        room = min(16_384, stream_window + conn.updates.get(1, 0) - pos, conn_window, len(body) - pos)
        if room <= 0:  # blocked until the server replenishes
            assert conn.read() is not None
            continue
        end = pos + room == len(body)
        conn.send((frame(HEADERS, 0x4, 1, conn.headers(INFER)) if pos == 0 else b"")
                  + frame(DATA, 0x1 if end else 0, 1, body[pos:pos + room]))
        pos += room
    assert conn.updates.get(1, 0) > 0  # the stream window was replenished, not just the connection's
    _expect_answer(conn.response(1), "big", want, "large request")


def test_response_beyond_the_clients_window_waits_for_window_update(server, model):
    """A 90 KB answer to a client with a 1,000-byte stream window: DATA stops at the window, in
    frames no larger than 16 KiB, and resumes on each WINDOW_UPDATE."""
    c = Client(server.grpc_port, settings={0x4: 1000})
    try:
        c.auto_window = False
        graphs = random_graphs(np.random.default_rng(2), 700)
        wire, want = _infer(model, graphs, "window")
        c.send(c.call(1, INFER, wire))
        while len(c.streams.get(1, {}).get("data", b"")) < 1000:
            assert c.read() is not None
        c.sock.settimeout(0.3)
        with pytest.raises(socket.timeout):  # blocked: nothing more until the window grows
            c.read()
        assert len(c.streams[1]["data"]) == 1000 and not c.streams[1]["done"]
        c.sock.settimeout(10)
        while not c.streams[1]["done"]:
            c.send(frame(WINDOW, 0, 1, struct.pack(">I", 30_000)) + frame(WINDOW, 0, 0, struct.pack(">I", 30_000)))
            before = len(c.streams[1]["data"])
            while len(c.streams[1]["data"]) < before + 30_000 and not c.streams[1]["done"]:
                assert c.read() is not None
        r = c.response(1)
        assert len(r["data"]) > 65_535 and c.max_frame_seen <= 16_384
        assert r["status"] == 0
        assert_outputs_match(_outputs(r["message"])[1], want, "flow-controlled answer")
    finally:
        c.close()


def test_many_concurrent_streams_each_get_their_own_answer(conn, model):
    rng = np.random.default_rng(3)
    wants = {}
    out = b""
    for k in range(60):
        sid = 2 * k + 1
        wire, wants[sid] = _infer(model, random_graphs(rng, int(rng.integers(1, 5))), f"r{sid}")
        out += conn.call(sid, INFER, wire)
    conn.send(out)
    for sid, want in wants.items():
        _expect_answer(conn.response(sid), f"r{sid}", want, f"stream {sid}")


def test_continuation_padding_priority(conn):
    block = conn.headers(READY, [("x-filler", "y" * 300)])
    first, rest = block[:20], block[20:]
    pad = 7
    # HEADERS with PADDED and PRIORITY, then two CONTINUATIONs; a PRIORITY frame; padded DATA
    headers = frame(HEADERS, 0x8 | 0x20, 1, bytes([pad]) + struct.pack(">IB", 0, 15) + first + b"\0" * pad)
    cont = frame(CONT, 0, 1, rest[:100]) + frame(CONT, 0x4, 1, rest[100:])
    body = message(pb.ServerReadyRequest().SerializeToString())
    data = frame(DATA, 0x8 | 0x1, 1, bytes([3]) + body + b"\0" * 3)
    conn.send(headers + cont + frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 4)) + data)
    r = conn.response(1)
    assert r["status"] == 0 and pb.ServerReadyResponse.FromString(r["message"]).ready


def test_ping_settings_and_rst_stream(conn, model):
    conn.send(frame(PING, 0, 0, b"12345678") + frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 70_000)))
    while not conn.pings:
        assert conn.read() is not None
    assert conn.pings == [b"12345678"]
    # a call reset mid-request (half its message sent) is dropped; the connection serves on
    graphs = random_graphs(np.random.default_rng(4), 3)
    wire, want = _infer(model, graphs, "after")
    conn.send(frame(HEADERS, 0x4, 1, conn.headers(INFER)) + frame(DATA, 0, 1, message(wire)[:20])
              + frame(RST, 0, 1, struct.pack(">I", 0x8)))
    # and one reset right after it was sent whole: its answer, if the reset wins, is never written
    conn.send(conn.call(3, INFER, wire) + frame(RST, 0, 3, struct.pack(">I", 0x8)))
    conn.send(conn.call(5, INFER, wire))
    r = conn.response(5)
    assert r["status"] == 0 and _outputs(r["message"])[0] == "after"
    assert 1 not in conn.streams
    assert not conn.resets and conn.goaway is None


@pytest.mark.parametrize("case", ["method", "content_type", "unknown", "two_messages", "compressed", "no_message",
                                  "too_large", "deadline", "bad_protobuf"])
def test_grpc_semantics(conn, case):
    ready = pb.ServerReadyRequest().SerializeToString()
    if case == "method":
        conn.send(frame(HEADERS, 0x5, 1, conn.headers(READY, method="GET")))
        assert conn.response(1)["http"] == "405"
        return
    if case == "content_type":
        for sid, kind in ((1, "application/json"), (3, "application/grpc-web"), (5, None)):
            fields = [(":method", "POST"), (":scheme", "http"), (":path", READY), (":authority", "x")]
            block = conn.encoder.encode(fields + ([("content-type", kind)] if kind else []))
            conn.send(frame(HEADERS, 0x4, sid, block) + frame(DATA, 1, sid, message(ready)))
            assert conn.response(sid)["http"] == "415"
        conn.send(conn.call(7, READY, ready, [("content-type", "application/grpc+proto")]))
        assert conn.response(7)["status"] == 0
        return
    expected = {"unknown": 12, "two_messages": 12, "compressed": 12, "no_message": 12, "too_large": 8,
                "deadline": 4, "bad_protobuf": 3}[case]
    if case == "unknown":
        conn.send(conn.call(1, "/inference.GRPCInferenceService/Nope", ready))
    elif case == "two_messages":
        conn.send(frame(HEADERS, 0x4, 1, conn.headers(READY)) + frame(DATA, 1, 1, message(ready) + message(ready)))
    elif case == "compressed":
        conn.send(frame(HEADERS, 0x4, 1, conn.headers(READY, [("grpc-encoding", "gzip")]))
                  + frame(DATA, 1, 1, b"\x01" + message(b"x")[1:]))
    elif case == "no_message":
        conn.send(frame(HEADERS, 0x5, 1, conn.headers(READY)))
    elif case == "too_large":  # refused from the 5-byte prefix, before the rest is sent
        prefix = b"\x00" + struct.pack(">I", 50 << 20)
        conn.send(frame(HEADERS, 0x4, 1, conn.headers(INFER)) + frame(DATA, 0, 1, prefix))
    elif case == "deadline":  # the message never completes; grpc-timeout ends the call
        conn.send(frame(HEADERS, 0x4, 1, conn.headers(INFER, [("grpc-timeout", "200m")])) + frame(DATA, 0, 1, b"\0\0"))
    elif case == "bad_protobuf":
        conn.send(conn.call(1, INFER, b"\xff\xff\xff not a protobuf"))
    r = conn.response(1)
    assert r["status"] == expected, r
    assert r["headers"][-1].get("grpc-message"), r
    conn.send(conn.call(3, READY, ready))  # the connection is still good
    assert conn.response(3)["status"] == 0


@pytest.mark.parametrize("opening", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", PREFACE + frame(PING, 0, 0, b"\0" * 8)])
def test_bad_preface_is_refused(server, opening):
    """HTTP/1.1 on the gRPC port, or a preface not followed by SETTINGS: GOAWAY PROTOCOL_ERROR, closed."""
    c = Client(server.grpc_port, handshake=False)
    try:
        c.send(opening)
        c.until_closed()
        assert c.goaway is not None and c.goaway[1] == PROTOCOL_ERROR
    finally:
        c.close()


def _expect_goaway(c: Client, code: int) -> None:
    c.until_closed()
    assert c.goaway is not None and c.goaway[1] == code, c.goaway


@pytest.mark.parametrize("case", ["streams", "rapid_reset", "settings_flood", "ping_flood", "header_list",
                                  "continuation_flood"])
def test_abuse_limits(server, case):
    c = Client(server.grpc_port)
    try:
        if case == "streams":  # MAX_CONCURRENT_STREAMS: the one past it is refused, the others live on
            limit = c.server_settings[0x3]
            out = b"".join(frame(HEADERS, 0x4, 2 * k + 1, c.headers(READY)) for k in range(limit + 1))
            c.send(out)
            last = 2 * limit + 1
            while last not in c.resets:
                assert c.read() is not None
            assert c.resets == {last: REFUSED_STREAM}
            c.send(frame(DATA, 1, 1, message(b"")))
            assert c.response(1)["status"] == 0
            return
        if case == "rapid_reset":
            c.send(b"".join(frame(HEADERS, 0x4, 2 * k + 1, c.headers(READY)) + frame(RST, 0, 2 * k + 1, b"\0\0\0\x08")
                            for k in range(1000)))
        elif case == "settings_flood":
            c.send(frame(SETTINGS, 0, 0) * 500)
        elif case == "ping_flood":
            c.send(frame(PING, 0, 0, b"\0" * 8) * 1000)
        elif case == "header_list":  # 40 KB of metadata, past MAX_HEADER_LIST_SIZE
            block = c.headers(READY, [(f"x-big-{i}", "v" * 4000) for i in range(10)])
            c.send(frame(HEADERS, 0, 1, block[:16_000]) + frame(CONT, 0, 1, block[16_000:32_000])
                   + frame(CONT, 0x4, 1, block[32_000:]))
        elif case == "continuation_flood":
            c.send(frame(HEADERS, 0, 1, c.headers(READY)[:3]) + frame(CONT, 0, 1, b"") * 5000)
        _expect_goaway(c, ENHANCE_YOUR_CALM)
    finally:
        c.close()


def _fuzz_frame(rng: random.Random, sid_hint: int) -> bytes:
    kind = rng.choice([DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT, 0x0A, 0xFF])
    flags = rng.choice([0, 1, 4, 5, 8, 0x20, 0x2D, rng.randrange(256)])
    sid = rng.choice([0, 1, sid_hint, sid_hint + 1, 2**31 - 1, rng.randrange(2**31)])
    size = rng.choice([0, 1, 4, 5, 6, 8, 9, rng.randrange(64)])
    return frame(kind, flags, sid, bytes(rng.randrange(256) for _ in range(size)))


def test_frame_fuzz_never_hangs_or_crashes(server, model):
    """600 connections of seeded random (well-framed) frames and raw garbage: each ends in an
    answered PING, a GOAWAY or a close — never a hang — and the server keeps serving."""
    rng = random.Random(12)
    ready = pb.ServerReadyRequest().SerializeToString()
    for n in range(600):
        c = Client(server.grpc_port, handshake=n % 10 != 0)
        try:
            if n % 10 == 0:  # garbage instead of a preface, or after it
                c.send((PREFACE if rng.random() < 0.5 else b"") + bytes(rng.randrange(256) for _ in range(64)))
                c.sock.shutdown(socket.SHUT_WR)
                c.until_closed()
                continue
            out = c.call(1, READY, ready) if rng.random() < 0.5 else b""
            for _ in range(rng.randrange(1, 8)):
                out += _fuzz_frame(rng, 3)
            c.send(out + frame(PING, 0, 0, b"fuzzping"))
            while b"fuzzping" not in c.pings and c.goaway is None:
                if c.read() is None:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: an answer too
        finally:
            c.close()
    c = Client(server.grpc_port)
    try:
        wire, want = _infer(model, random_graphs(np.random.default_rng(5), 3))
        c.send(c.call(1, INFER, wire))
        r = c.response(1)
        assert r["status"] == 0
        assert_outputs_match(_outputs(r["message"])[1], want, "after fuzzing")
    finally:
        c.close()


def test_idle_timeouts_and_drain_by_goaway(model_path, model, tmp_path):
    """No preface in time: closed. Idle past the keep-alive timeout: GOAWAY. A peer that never opens
    its window for an answer: closed. SIGTERM: GOAWAY, the
    queued call is still answered, then the connection closes and the server exits 0."""
    gport = free_port()
    srv = start_server(model_path, tmp_path, "--name", "gnn", "--grpc-port", str(gport), "--header-timeout-s", "1",
                       "--keepalive-timeout-s", "1", "--max-queue-delay-us", "500000", "--max-batch-graphs", "64")
    try:
        silent = Client(gport, handshake=False)
        idle = Client(gport)
        stuck = Client(gport, settings={0x4: 0})  # a zero window: its answer can never be sent
        stuck.send(stuck.call(1, READY, b""))
        t0 = time.monotonic()
        silent.until_closed()
        _expect_goaway(idle, 0)
        stuck.until_closed()
        assert time.monotonic() - t0 < 5
        assert not stuck.streams.get(1, {}).get("done")  # closed with its answer unsent
        for c in (silent, idle, stuck):
            c.close()
        c = Client(gport)
        graphs = random_graphs(np.random.default_rng(6), 2)
        wire, want = _infer(model, graphs, "queued")
        c.send(c.call(1, INFER, wire))
        time.sleep(0.15)  # waiting in the batcher for a fuller batch
        srv.proc.send_signal(signal.SIGTERM)
        r = c.response(1)
        assert c.goaway == (1, 0)
        assert r["status"] == 0 and _outputs(r["message"])[0] == "queued"
        assert_outputs_match(_outputs(r["message"])[1], want, "answered while draining")
        c.until_closed()
        c.close()
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-3000:]


def test_serving_grpc_needs_neither_grpcio_nor_torch():
    """The gRPC listener is edgemp's own: importing everything it runs loads no grpc (grpcio) and no torch."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import edgemp.runtime.server.run, edgemp.runtime.server.grpc_service\n"
            "import edgemp.runtime.server.h2.grpc_handler, edgemp.runtime.server.h2.listener\n"
            "bad = {'grpc', 'torch'} & set(sys.modules)\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
