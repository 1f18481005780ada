"""The gRPC listener against the letter of RFC 9113 / RFC 7541, and clients that read slowly.

Same raw-frame client as ``test_server_h2`` (its helpers are imported), against a server of
this module's own: stream-id rules (a reused or lower id must not leave a call unanswered),
HPACK's dynamic table as an encoder may legally drive it, back-pressure from a peer that
stops reading while its windows are wide open, and calls reset while their batch is queued.
"""
from __future__ import annotations

import json
import signal
import struct
import time

import numpy as np
import pytest

hpack = pytest.importorskip("hpack")
pytest.importorskip("google.protobuf")

from edgemp.runtime.server import grpc_proto as pb  # noqa: E402
from runtime_fixtures import random_graph, random_graphs  # noqa: E402
from server_utils import assert_outputs_match, free_port, http, start_server, serving_grpc  # noqa: E402
from test_server_h2 import (  # noqa: E402
    DATA,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    INFER,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    READY,
    SETTINGS,
    WINDOW,
    Client,
    _expect_answer,
    _expect_goaway,
    _infer,
    _outputs,
    frame,
    message,
)

STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x6, 0x9


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    with serving_grpc(model_path, tmp_path_factory.mktemp("h2speclog"),
                      "--max-body-bytes", str(40 << 20), "--max-request-nodes", "1500000") as srv:
        yield srv


@pytest.fixture()
def conn(server):
    c = Client(server.grpc_port)
    c.sock.settimeout(5)  # a hang fails in seconds, not at the suite's timeout
    yield c
    c.close()


READY_BODY = pb.ServerReadyRequest().SerializeToString()


# -- stream identifiers (RFC 9113 §5.1, §5.1.1) ----------------------------------------------
@pytest.mark.parametrize("case", ["reused_id", "lower_id", "reused_id_end_stream", "data_after_end_stream"])
def test_closed_or_lower_stream_ids_end_the_connection(conn, case):
    """A new request on an id already used, or below the highest one opened, is a connection
    error — it must not vanish silently and leave the client waiting forever."""
    if case == "lower_id":
        conn.send(conn.call(5, READY, READY_BODY))
        assert conn.response(5)["status"] == 0
        conn.send(conn.call(3, READY, READY_BODY))  # 3 was implicitly closed when 5 opened
        _expect_goaway(conn, PROTOCOL_ERROR)
        return
    conn.send(conn.call(1, READY, READY_BODY))
    assert conn.response(1)["status"] == 0  # stream 1 is now closed: both sides sent END_STREAM
    if case == "reused_id":
        conn.send(conn.call(1, READY, READY_BODY))
        _expect_goaway(conn, PROTOCOL_ERROR)
    elif case == "reused_id_end_stream":
        conn.send(frame(HEADERS, 0x5, 1, conn.headers(READY)))
        _expect_goaway(conn, STREAM_CLOSED)
    else:
        conn.send(frame(DATA, 0x1, 1, message(READY_BODY)))
        _expect_goaway(conn, STREAM_CLOSED)


def test_data_after_end_stream_on_a_stream_still_answering(server):
    """Half-closed (remote): the answer waits for window the client has not given, and the client
    sends DATA again — a stream error STREAM_CLOSED (RFC 9113 §5.1), not a silent drop."""
    c = Client(server.grpc_port, settings={0x4: 0})
    try:
        c.sock.settimeout(5)
        c.send(c.call(1, READY, READY_BODY))
        while 1 not in c.streams:  # the response headers: answered, its DATA blocked
            assert c.read() is not None
        c.send(frame(DATA, 0x1, 1, message(READY_BODY)))
        while 1 not in c.resets:
            assert c.read() is not None
        assert c.resets[1] == STREAM_CLOSED and c.goaway is None
    finally:
        c.close()


def test_frames_after_our_reset_are_ignored(conn):
    """After the server answers early (RST_STREAM NO_ERROR: stop sending), the client's DATA and
    trailers already in flight are ignored (RFC 9113 §5.1 "closed"), and the connection serves on."""
    prefix = b"\x00" + struct.pack(">I", 50 << 20)  # too large: answered from the prefix alone
    conn.send(frame(HEADERS, 0x4, 1, conn.headers(INFER)) + frame(DATA, 0, 1, prefix))
    assert conn.response(1)["status"] == 8
    while 1 not in conn.resets:
        assert conn.read() is not None
    trailers = conn.encoder.encode([("x-trailer", "1")])
    conn.send(frame(DATA, 0, 1, b"\0" * 1000) + frame(HEADERS, 0x5, 1, trailers))
    conn.send(conn.call(3, READY, READY_BODY))
    assert conn.response(3)["status"] == 0 and conn.goaway is None


def test_frames_on_server_stream_ids_are_protocol_errors(conn):
    """Even ids are the server's, and it never opens one: they are all idle (RFC 9113 §5.1)."""
    conn.send(conn.call(3, READY, READY_BODY))
    assert conn.response(3)["status"] == 0
    conn.send(frame(WINDOW, 0, 2, struct.pack(">I", 100)))
    _expect_goaway(conn, PROTOCOL_ERROR)


def test_resets_the_client_provokes_count_as_rapid_resets(server):
    """"MadeYouReset" (CVE-2025-8671): streams the *server* must reset for a client's protocol
    error (here WINDOW_UPDATE of 0 on an open stream) free their slot as a client's RST_STREAM
    does, so they spend the same per-second budget: past it, GOAWAY ENHANCE_YOUR_CALM."""
    c = Client(server.grpc_port)
    try:
        c.sock.settimeout(5)
        c.send(b"".join(frame(HEADERS, 0x4, 2 * k + 1, c.headers(INFER)) + frame(WINDOW, 0, 2 * k + 1, b"\0\0\0\0")
                        for k in range(1000)))
        _expect_goaway(c, ENHANCE_YOUR_CALM)
        assert len(c.resets) < 1000
    finally:
        c.close()


@pytest.mark.parametrize("field", [(b"x-bad", b"a\nb"), (b"x-bad", b"a\x00b"), (b"bad name", b"v"), (b"x:colon", b"v"),
                                   (b"x-pad", b" leading"), (b"x-pad", b"trailing\t"), (b"x-high", b"v"), (b":bad", b"v"),
                                   (b"X-Upper", b"v")])
def test_invalid_field_names_and_values_are_malformed(conn, field):
    """RFC 9113 §8.2.1: a name with controls, space, colon or non-ASCII, a value with NUL, CR or LF
    or with white space at either end: the request is malformed (RST_STREAM PROTOCOL_ERROR), the
    connection serves on."""
    name, value = field
    if name == b"x-high":
        name = b"x-\xe9"
    base = conn.headers(READY)
    extra = _hpack_literal(name, value, False)
    block = (extra + base) if name.startswith(b":") else (base + extra)
    conn.send(frame(HEADERS, 0x4, 1, block) + frame(DATA, 0x1, 1, message(READY_BODY)))
    while 1 not in conn.resets:
        assert conn.read() is not None
    assert conn.resets[1] == PROTOCOL_ERROR and 1 not in conn.streams
    conn.send(conn.call(3, READY, READY_BODY))
    assert conn.response(3)["status"] == 0


@pytest.mark.parametrize("declared", ["3", "x", "6"])
def test_content_length_must_match_the_data(conn, declared):
    """RFC 9113 §8.1.1: a content-length other than the DATA received makes the request malformed."""
    body = message(READY_BODY)  # 5 bytes: "6" declares one more than arrives
    conn.send(frame(HEADERS, 0x4, 1, conn.headers(READY, [("content-length", declared)])) + frame(DATA, 0x1, 1, body))
    while 1 not in conn.resets:
        assert conn.read() is not None
    assert conn.resets[1] == PROTOCOL_ERROR and 1 not in conn.streams
    conn.send(conn.call(3, READY, READY_BODY, [("content-length", str(len(body)))]))
    assert conn.response(3)["status"] == 0


# -- HPACK (RFC 7541) ------------------------------------------------------------------------
def _hpack_literal(name: bytes, value: bytes, indexing: bool) -> bytes:
    """A literal with a new name: incremental indexing (0x40) or without indexing (0x00); short strings."""
    return bytes([0x40 if indexing else 0x00, len(name)]) + name + bytes([len(value)]) + value


def test_header_cache_follows_a_dynamic_table_that_shifts(conn):
    """An encoder may insert a field equal to the newest entry: the table then holds the same
    newest entry and count, but every older index now means something else. A block cached
    before must decode against the table as it is now (here: a different :path)."""
    nope = b"/inference.GRPCInferenceService/NopeNopeNop"  # as long as READY: equal-sized entries
    ready = READY.encode()
    assert len(nope) == len(ready)
    entry = 32 + len(b":path") + len(ready)

    def block(path_field: bytes) -> bytes:
        rest = b"".join(_hpack_literal(n, v, False) for n, v in (
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers")))
        return path_field + rest

    def ask(sid: int, hb: bytes) -> int:
        conn.send(frame(HEADERS, 0x4, sid, hb) + frame(DATA, 0x1, sid, message(READY_BODY)))
        return conn.response(sid)["status"]

    size_update = _hpack_size_update(2 * entry)  # room for exactly two :path entries
    assert ask(1, size_update + block(_hpack_literal(b":path", nope, True))) == 12  # table: [nope]
    assert ask(3, block(_hpack_literal(b":path", ready, True))) == 0  # [ready, nope]
    by_index = block(bytes([0x80 | 63]))  # the second dynamic entry: nope, for now
    assert ask(5, by_index) == 12
    assert ask(7, block(_hpack_literal(b":path", ready, True))) == 0  # [ready, ready]: nope evicted
    assert ask(9, by_index) == 0  # the same bytes, now naming ServerReady


def test_a_refused_block_that_changed_the_table_still_empties_the_cache(conn):
    """A block may insert into the dynamic table and then be refused as malformed (a stream
    error: the connection and its table live on). The cache must be emptied all the same, or a
    cached block that names a table index keeps decoding to what the index meant before — with
    an ``authorization`` entry that would let a wrong token through on a right one's bytes."""
    nope = b"/inference.GRPCInferenceService/NopeNopeNop"
    ready = READY.encode()
    rest = b"".join(_hpack_literal(n, v, False) for n, v in (
        (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers")))

    def ask(sid: int, hb: bytes) -> int:
        conn.send(frame(HEADERS, 0x4, sid, hb) + frame(DATA, 0x1, sid, message(READY_BODY)))
        return conn.response(sid)["status"]

    assert ask(1, _hpack_literal(b":path", ready, True) + rest) == 0  # table: [ready]
    by_index = bytes([0x80 | 62]) + rest  # the newest dynamic entry: ready, for now
    assert ask(3, by_index) == 0  # decoded once: now cached
    # inserts nope (index 62 now names it), then breaks RFC 9113 §8.2.1 with an upper-case name
    conn.send(frame(HEADERS, 0x4, 5, _hpack_literal(b":path", nope, True) + rest
                    + _hpack_literal(b"X-Upper", b"v", False)) + frame(DATA, 0x1, 5, message(READY_BODY)))
    while 5 not in conn.resets:
        assert conn.read() is not None
    assert conn.resets[5] == PROTOCOL_ERROR
    assert ask(7, by_index) == 12  # the same bytes, decoded against the table as it is: UNIMPLEMENTED


def _hpack_size_update(size: int) -> bytes:
    """A dynamic table size update (RFC 7541 §6.3): 5-bit prefix integer after 001."""
    if size < 31:
        return bytes([0x20 | size])
    out, size = bytearray([0x3F]), size - 31
    while size >= 128:
        out.append((size & 0x7F) | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


# -- frames whose cost must not grow with what they touch -----------------------------------------
def test_header_blocks_may_open_with_two_table_size_updates_not_more(server):
    """RFC 7541 §4.2: at most two dynamic table size updates, at the start of a block. hpack
    takes any number, one slow Python step each and counted against no limit, so a block of
    them was a cheap way to hold the event loop: more than two is a COMPRESSION_ERROR."""
    c = Client(server.grpc_port)
    try:
        c.send(frame(HEADERS, 0x4, 1, _hpack_size_update(0) + _hpack_size_update(4096) + c.headers(READY))
               + frame(DATA, 0x1, 1, message(READY_BODY)))
        assert c.response(1)["status"] == 0
        c.send(frame(HEADERS, 0x5, 3, _hpack_size_update(4096) * 3 + c.headers(READY)))
        _expect_goaway(c, COMPRESSION_ERROR)
    finally:
        c.close()


def test_a_settings_frame_of_many_entries_is_a_flood(server):
    """Seven settings exist; a frame of thousands of INITIAL_WINDOW_SIZE entries made the server
    walk every open stream once per entry. 64 entries pass, more are ENHANCE_YOUR_CALM."""
    c = Client(server.grpc_port)
    try:
        c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65_535) * 64) + c.call(1, READY, READY_BODY))
        assert c.response(1)["status"] == 0
        c.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65_535) * 65))
        _expect_goaway(c, ENHANCE_YOUR_CALM)
    finally:
        c.close()


class _Kept:
    """A stand-in transport: keeps what the connection writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class _AnswerAll:
    """A stream handler that answers every request with 100 bytes of DATA and trailers."""

    def on_headers(self, conn, stream) -> None:
        pass

    def on_data(self, conn, stream) -> None:
        pass

    def on_complete(self, conn, stream) -> None:
        conn.respond(stream, b"\x88", b"x" * 100, b"\x88")

    def on_close(self, conn, stream) -> None:
        pass

    def on_stalled(self, conn, stream) -> None:
        pass


def _data_streams(out: bytes) -> list[int]:
    """The stream ids of the DATA frames in ``out``."""
    ids, pos = [], 0
    while pos + 9 <= len(out):
        n = int.from_bytes(out[pos:pos + 3], "big")
        if out[pos + 3] == DATA:
            ids.append(int.from_bytes(out[pos + 5:pos + 9], "big"))
        pos += 9 + n
    return ids


def test_connection_window_updates_do_not_retry_answers_out_of_their_own_window():
    """A peer with INITIAL_WINDOW_SIZE 0 holds 100 answers back; each 13-byte connection-level
    WINDOW_UPDATE used to re-try all of them (45 µs of loop per frame, with no budget). Such
    answers wait for their own stream's window: connection updates leave them alone, a stream
    update sends that stream's answer, a larger INITIAL_WINDOW_SIZE sends the rest."""
    from edgemp.runtime.server.h2.connection import ConnectionLimits, H2Connection

    conn = H2Connection(_AnswerAll(), ConnectionLimits())
    transport = _Kept()
    conn.connection_made(transport)
    encoder = hpack.Encoder()
    block = encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")])
    conn.data_received(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 0))
                       + b"".join(frame(HEADERS, 0x5, 2 * k + 1, block) for k in range(100)))
    assert len(conn.window_blocked) == 100 and not conn.blocked
    pumps = []
    pump = conn._pump
    conn._pump = lambda stream: (pumps.append(stream.id), pump(stream))[1]
    transport.data.clear()
    conn.data_received(frame(WINDOW, 0, 0, struct.pack(">I", 1)) * 1000)
    assert pumps == [] and _data_streams(bytes(transport.data)) == []
    conn.data_received(frame(WINDOW, 0, 7, struct.pack(">I", 1000)))
    assert pumps == [7] and _data_streams(bytes(transport.data)) == [7]
    transport.data.clear()
    conn.data_received(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 1000)))
    assert sorted(_data_streams(bytes(transport.data))) == [2 * k + 1 for k in range(100) if k != 3]
    assert not conn.window_blocked and not conn.blocked and not conn.streams


def test_settings_that_would_overflow_a_window_on_the_way_are_refused():
    """Entries apply in order: INITIAL_WINDOW_SIZE 2^31-1 then 0 overflows the window of a stream
    10 bytes above the initial one at the first entry, even though the frame ends at 0."""
    from edgemp.runtime.server.h2.connection import ConnectionLimits, H2Connection

    conn = H2Connection(_AnswerAll(), ConnectionLimits())
    transport = _Kept()
    conn.connection_made(transport)
    block = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")])
    conn.data_received(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 0x4, 1, block)  # open, not ended
                       + frame(WINDOW, 0, 1, struct.pack(">I", 10)))  # its window: 10 above the initial one
    assert 1 in conn.streams
    transport.data.clear()
    conn.data_received(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 2**31 - 1) + struct.pack(">HI", 0x4, 0)))
    assert transport.closed
    assert transport.data[3] == GOAWAY
    assert struct.unpack(">I", bytes(transport.data[13:17]))[0] == 0x3  # FLOW_CONTROL_ERROR


@pytest.mark.parametrize("where", ["priority_frame", "headers"])
def test_a_stream_cannot_depend_on_itself(server, where):
    """RFC 9113 §5.3.1: a stream error, PROTOCOL_ERROR; the connection serves on."""
    c = Client(server.grpc_port)
    try:
        if where == "priority_frame":
            c.send(frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16)))
        else:
            c.send(frame(HEADERS, 0x4 | 0x1 | 0x20, 1, struct.pack(">IB", 1, 16) + c.headers(READY)))
        while 1 not in c.resets:
            assert c.read() is not None
        assert c.resets[1] == PROTOCOL_ERROR
        c.send(c.call(3, READY, READY_BODY))
        assert c.response(3)["status"] == 0 and c.goaway is None
    finally:
        c.close()


def test_a_goaway_shorter_than_its_fields_is_a_frame_size_error(server):
    c = Client(server.grpc_port)
    try:
        c.send(frame(GOAWAY, 0, 0, b"\0"))
        _expect_goaway(c, FRAME_SIZE_ERROR)
    finally:
        c.close()


@pytest.mark.parametrize("flag", [2, 0x80])
def test_a_compressed_flag_other_than_0_or_1_is_refused(conn, flag):
    """The gRPC message prefix's flag is 0 or 1 (grpc-core answers INTERNAL for anything else)."""
    data = bytes([flag]) + struct.pack(">I", len(READY_BODY)) + READY_BODY
    conn.send(frame(HEADERS, 0x4, 1, conn.headers(READY)) + frame(DATA, 0x1, 1, data))
    r = conn.response(1)
    assert r["status"] == 13 and b"compressed-flag" in r["headers"][-1].get("grpc-message", "").encode()


# -- back-pressure -----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_peer_that_reads_late_gets_every_answer(server, model):
    """Wide-open windows and a peer that stops reading: answers wait in the socket (writes pause
    with the transport) instead of piling up until the connection is cut; once it reads, every
    answer arrives whole and equal to in-process predict."""
    c = Client(server.grpc_port, settings={0x4: 2**31 - 1}, recv_buffer=16 << 10)
    try:
        c.sock.settimeout(20)
        c.auto_window = False
        c.send(frame(WINDOW, 0, 0, struct.pack(">I", 2**31 - 1 - 65_535)))
        rng = np.random.default_rng(7)
        wants = {}
        for k in range(4):  # 4 answers of ~3.2 MB each: more than the transport's and the kernel's buffers
            sid = 2 * k + 1
            graphs = [random_graph(rng, 400_000, 0)]
            wire, wants[sid] = _infer(model, graphs, f"late{sid}")
            c.send(c.call(sid, INFER, wire))
        time.sleep(1.0)  # answers are ready by now; nothing has been read
        for sid, want in wants.items():
            _expect_answer(c.response(sid), f"late{sid}", want, f"stream {sid}")
        assert c.goaway is None
    finally:
        c.close()


def test_a_peer_allowing_huge_frames_keeps_its_connection_after_a_large_answer(server, model):
    """SETTINGS_MAX_FRAME_SIZE may be up to 16 MiB - 1. A multi-megabyte answer must still go out
    in slices the transport's back-pressure can follow: written as one frame it would pass the
    write-buffer bound at once and the connection would be closed (after the transport flushed
    the answer) without a GOAWAY, failing whatever the client sends next."""
    c = Client(server.grpc_port, settings={0x5: (1 << 24) - 1, 0x4: 2**31 - 1}, recv_buffer=16 << 10)
    try:
        c.sock.settimeout(20)
        c.send(frame(WINDOW, 0, 0, struct.pack(">I", 2**31 - 1 - 65_535)))
        rng = np.random.default_rng(11)
        wire, want = _infer(model, [random_graph(rng, 1_400_000, 0)], "huge")  # ~39 MB in, ~11 MB out
        c.send(c.call(1, INFER, wire))
        time.sleep(1.0)  # the answer is written while nothing is read: the socket takes little of it
        _expect_answer(c.response(1), "huge", want, "stream 1")
        assert len(c.streams[1]["data"]) > 8 << 20  # past the write-buffer bound (4 MiB) and the socket buffers
        c.send(c.call(3, READY, READY_BODY))  # the connection serves on
        assert c.response(3)["status"] == 0 and c.goaway is None
    finally:
        c.close()


# -- cancellation ------------------------------------------------------------------------------
def test_calls_reset_while_queued_leave_nothing_behind(model_path, model, tmp_path):
    """RST_STREAM, or a grpc-timeout that passes, on calls waiting in the batcher: the others are
    answered right; statistics count the answered calls, a passed deadline as a failure (the
    server ended that call; a reset one is the client's doing and counts as nothing), on the
    callback path and on a large message's task alike; nothing stays in flight (SIGTERM drains
    at once and exits 0)."""
    gport = free_port()
    srv = start_server(model_path, tmp_path, "--name", "gnn", "--grpc-port", str(gport),
                       "--max-queue-delay-us", "300000", "--max-batch-graphs", "1000", "--max-batch-nodes", "100000")
    try:
        c = Client(gport)
        c.sock.settimeout(10)
        rng = np.random.default_rng(8)
        wants, out = {}, b""
        late = {3, 15, 23}  # none of them reset below; these ask for an answer within 100 ms; the batch waits 300
        for k in range(20):
            sid = 2 * k + 1
            wire, wants[sid] = _infer(model, random_graphs(rng, 3), f"q{sid}")
            out += c.call(sid, INFER, wire, [("grpc-timeout", "100m")] if sid in late else [])
        wire, _ = _infer(model, [random_graph(rng, 16_000, 0)], "big")  # ~1 MB: past offload_bytes: a task runs it
        big = c.call(41, INFER, wire, [("grpc-timeout", "100m")])
        c.send(out + big)
        time.sleep(0.05)  # decoded and queued: the batch waits for max-queue-delay
        reset = [sid for sid in wants if sid % 4 == 1]
        c.send(b"".join(frame(0x3, 0, sid, struct.pack(">I", 0x8)) for sid in reset))
        for sid in [*late, 41]:
            r = c.response(sid)
            assert r["status"] == 4, r["headers"]  # DEADLINE_EXCEEDED
        for sid, want in wants.items():
            if sid in reset or sid in late:
                continue
            r = c.response(sid)
            assert r["status"] == 0, r
            assert_outputs_match(_outputs(r["message"])[1], want, f"stream {sid}")
        assert not any(sid in c.streams for sid in reset)
        status, _, body = http(srv, "GET", "/v2/models/gnn/stats")
        assert status == 200
        stats = json.loads(body)["model_stats"][0]["inference_stats"]
        assert stats["success"]["count"] == len(wants) - len(reset) - len(late), stats
        assert stats["fail"]["count"] == len(late) + 1, stats
        status, _, body = http(srv, "GET", "/metrics")
        assert f'edgemp_requests_total{{model="gnn",outcome="timeout"}} {len(late) + 1}.0' in body.decode(), body
        c.close()
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0
        assert time.monotonic() - t0 < 5  # no call left "in flight" for the drain to wait on
    finally:
        srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-3000:]

