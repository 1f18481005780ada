"""The gRPC listener against two independent clients, answer for answer with in-process predict.

* The ``h2`` package (python-hyper): its own HTTP/2 state machine and HPACK encoder (dynamic
  table insertions, Huffman-coded strings), its own flow control — a second implementation
  of the client side besides grpcio's C-core, written against the same RFCs.
* ``tritonclient.grpc.aio``: many concurrent calls multiplexed on one channel, mixed with
  metadata RPCs, large messages beyond the default windows, and calls the client cancels.
"""
from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
import pytest

h2_config = pytest.importorskip("h2.config")
h2_connection = pytest.importorskip("h2.connection")
h2_events = pytest.importorskip("h2.events")
pytest.importorskip("google.protobuf")

from edgemp.runtime.server import grpc_proto as pb  # noqa: E402
from runtime_fixtures import random_graphs  # noqa: E402
from server_utils import (  # noqa: E402
    assert_outputs_match,
    batch_tensors,
    expected_layout,
    serving_grpc,
    triton_grpc_inputs,
)

from test_server_h2 import _expect_answer, _outputs  # noqa: E402

SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    with serving_grpc(model_path, tmp_path_factory.mktemp("h2interop_log"),
                      "--max-body-bytes", str(8 << 20), "--max-request-nodes", "200000",
                      "--max-request-edges", "800000") as srv:
        yield srv


class H2Client:
    """A unary gRPC client on python-hyper's ``h2``: one connection, any number of calls on it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2_connection.H2Connection(h2_config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.answers: dict[int, dict] = {}

    def start(self, rpc: str, message: bytes, metadata: list[tuple[str, str]] = ()) -> int:
        """Open a call (headers, then as much of the message as the server's windows allow)."""
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", SERVICE + rpc),
                                     (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
                                     ("te", "trailers"), ("user-agent", "h2-interop-test"), *metadata])
        self.answers[sid] = {"pending": b"\x00" + struct.pack(">I", len(message)) + message, "data": b"",
                             "headers": [], "ended": False}
        self._send_pending()
        return sid

    def _send_pending(self) -> None:
        for sid, a in self.answers.items():
            while a["pending"]:
                room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size,
                           len(a["pending"]))
                if room <= 0:
                    break
                chunk, a["pending"] = a["pending"][:room], a["pending"][room:]
                self.conn.send_data(sid, chunk, end_stream=not a["pending"])
        self.sock.sendall(self.conn.data_to_send())

    def wait(self, sid: int) -> dict:
        """Read until call ``sid`` has ended; its headers, trailers and message bytes."""
        while not self.answers[sid]["ended"]:
            data = self.sock.recv(1 << 20)
            assert data, "server closed the connection"
            for event in self.conn.receive_data(data):
                self._on(event)
            self._send_pending()
        a = self.answers[sid]
        assert a["headers"][0][b":status"] == b"200", a["headers"]
        trailers = a["headers"][-1]
        a["status"] = int(trailers[b"grpc-status"])
        a["message"] = a["data"][5:]
        return a

    def _on(self, event) -> None:
        if isinstance(event, (h2_events.ResponseReceived, h2_events.TrailersReceived)):
            self.answers[event.stream_id]["headers"].append(dict(event.headers))
        elif isinstance(event, h2_events.DataReceived):
            self.answers[event.stream_id]["data"] += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2_events.StreamEnded):
            self.answers[event.stream_id]["ended"] = True
        elif isinstance(event, h2_events.StreamReset):
            raise AssertionError(f"stream {event.stream_id} reset with {event.error_code}")
        elif isinstance(event, h2_events.ConnectionTerminated):
            raise AssertionError(f"GOAWAY {event.error_code}: {event.additional_data}")

    def close(self) -> None:
        self.conn.close_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.sock.close()


def test_h2_client_unary_calls_match_in_process(server, model):
    """Sequential then concurrent calls on one ``h2`` connection: from the second call on, its
    HPACK encoder sends indexed references into the dynamic table it built with the first (and
    Huffman-coded literals for what is new, like each call's metadata); a 1.2 MB request goes out
    only as our WINDOW_UPDATEs allow (h2 enforces the windows itself)."""
    c = H2Client(server.grpc_port)
    try:
        ready = c.wait(c.start("ServerReady", pb.ServerReadyRequest().SerializeToString()))
        assert ready["status"] == 0 and pb.ServerReadyResponse.FromString(ready["message"]).ready
        rng = np.random.default_rng(21)
        for k in range(3):  # one at a time, each with metadata the table has not seen yet
            graphs = random_graphs(rng, int(rng.integers(1, 6)))
            sid = c.start("ModelInfer", pb.infer_request_bytes("gnn", batch_tensors(graphs), f"seq{k}"),
                          [("x-request-tag", f"tag-{k}-" + "z" * k)])
            _expect_answer(c.wait(sid), f"seq{k}", expected_layout(model, graphs), f"sequential call {k}")
        calls = {}
        for k in range(12):  # concurrent, one of them larger than the 1 MiB stream window
            graphs = random_graphs(rng, 1600 if k == 5 else int(rng.integers(1, 8)))
            sid = c.start("ModelInfer", pb.infer_request_bytes("gnn", batch_tensors(graphs), f"par{k}"))
            calls[sid] = (f"par{k}", graphs)
        assert len(c.conn.encoder.header_table.dynamic_entries) >= 8  # it did index (and so re-reference) fields
        for sid, (rid_want, graphs) in calls.items():
            _expect_answer(c.wait(sid), rid_want, expected_layout(model, graphs), rid_want)
        bad = c.wait(c.start("ModelInfer", b"\xff\xff not protobuf"))
        assert bad["status"] == 3 and bad["headers"][-1][b"grpc-message"]  # INVALID_ARGUMENT, connection lives on
        assert c.wait(c.start("ServerLive", b""))["status"] == 0
    finally:
        c.close()


def test_aio_client_mixed_concurrent_calls_on_one_channel(server, model):
    """tritonclient.grpc.aio: 48 calls at once on one channel — inference of assorted sizes (some
    past the 64 KiB default windows), metadata and statistics RPCs between them, and calls the
    client cancels mid-flight — then more calls on the same channel: every answer is its own."""
    tga = pytest.importorskip("tritonclient.grpc.aio")
    tg = pytest.importorskip("tritonclient.grpc")

    rng = np.random.default_rng(22)
    requests = [random_graphs(rng, 400 if i % 8 == 3 else int(rng.integers(1, 6))) for i in range(48)]
    outputs_in_order = [tg.InferRequestedOutput("node_out"), tg.InferRequestedOutput("prediction")]

    async def main() -> tuple[list, list]:
        c = tga.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        try:
            async def infer(i: int):
                return await c.infer("gnn", triton_grpc_inputs(batch_tensors(requests[i])), request_id=str(i),
                                     outputs=outputs_in_order if i % 2 else None)

            async def cancelled(i: int) -> None:
                task = asyncio.ensure_future(infer(i))
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            work = []
            for i in range(len(requests)):
                work.append(cancelled(i) if i % 12 == 7 else infer(i))
                if i % 6 == 0:
                    work.append(c.get_model_metadata("gnn"))
                if i % 16 == 0:
                    work.append(c.get_inference_statistics("gnn"))
            first = await asyncio.gather(*work)
            again = await asyncio.gather(*(infer(i) for i in range(0, 10)))
            return first, again
        finally:
            await c.close()

    first, again = asyncio.run(main())
    answers = [r for r in first + again if hasattr(r, "as_numpy")]
    assert len(answers) == 48 - 4 + 10
    for result in answers:
        i = int(result.get_response().id)
        want = expected_layout(model, requests[i])
        if i % 2:  # raw_output_contents in the order the client asked for
            assert [o.name for o in result.get_response().outputs] == ["node_out", "prediction"]
        assert_outputs_match({k: result.as_numpy(k) for k in want}, want, f"request {i}")
    metadata = [r for r in first if getattr(r, "platform", None) is not None]
    assert metadata and all(m.name == "gnn" for m in metadata)


def test_benchmark_raw_client_splits_messages_at_max_frame_size(server, model):
    """benchmarks/h2_client.py (the gRPC rows' raw client): a message over 16 KiB goes out in
    DATA frames the server accepts, and its answers equal in-process predict."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from h2_client import MAX_MESSAGE, RawGrpcClient
    finally:
        sys.path.pop(0)
    client = RawGrpcClient("127.0.0.1", server.grpc_port)
    try:
        rng = np.random.default_rng(23)
        for count in (1, 50):
            graphs = random_graphs(rng, count)
            wire = pb.infer_request_bytes("gnn", batch_tensors(graphs), f"raw{count}")
            assert count == 1 or 16_384 < len(wire) <= MAX_MESSAGE
            status, answer = client.call(SERVICE + "ModelInfer", wire)
            assert status == 0
            rid, got = _outputs(answer)
            assert rid == f"raw{count}"
            assert_outputs_match(got, expected_layout(model, graphs), f"{count} graphs")
        with pytest.raises(ValueError, match="exceeds"):
            client.call(SERVICE + "ModelInfer", b"\0" * (MAX_MESSAGE + 1))
    finally:
        client.close()
