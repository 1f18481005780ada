"""ModelInfer at the protobuf wire level: the hand-written response encoder and request split,
and the plans built on the split, checked against protobuf itself.

The encoder must write what protobuf's serializer writes; a planned decode must give exactly
what the full decode (parse + ``decode_request``) gives, for any bytes — including bytes
that only look like a message seen before — or leave the message to the full decode.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("google.protobuf")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgemp.errors import EdgempError  # noqa: E402
from edgemp.runtime.server import grpc_proto as pb  # noqa: E402
from edgemp.runtime.server.grpc_plans import GrpcPlans  # noqa: E402
from edgemp.runtime.server.grpc_service import decode_request  # noqa: E402
from edgemp.runtime.server.grpc_wire import MAX_HEAD_BYTES, encode_response, split  # noqa: E402

EXPECTED = {"x": "FP32", "edge_index": "INT64", "node_graph": "INT64", "graph_node_counts": "INT64", "s": "BYTES"}


def _protobuf_response(model: str, version: str, rid: str, outputs) -> bytes:
    resp = pb.ModelInferResponse(model_name=model, model_version=version, id=rid)
    for name, datatype, value in outputs:
        t = resp.outputs.add(name=name, datatype=datatype)
        t.shape.extend(value.shape)
        resp.raw_output_contents.append(value.tobytes())
    return resp.SerializeToString()


@pytest.mark.parametrize("model,version,rid", [("m", "1", ""), ("gnn", "", "req-7"), ("é" * 70, "12", "x" * 300)])
@pytest.mark.parametrize("shapes", [[(1, 1)], [(23, 64), (1, 1)], [(0, 3), (2,), ()], [(200, 1000)]])
def test_response_is_what_protobuf_writes(model, version, rid, shapes):
    rng = np.random.default_rng(len(shapes))
    outputs = []
    for k, shape in enumerate(shapes):
        if k % 2:
            outputs.append((f"out{k}", "INT64", rng.integers(-5, 2**40, size=shape, dtype=np.int64)))
        else:
            outputs.append((f"out{k}", "FP32", rng.standard_normal(shape).astype(np.float32)))
    for _ in range(2):  # the second time from the kept descriptions
        got = encode_response(model, version, rid, outputs)
        assert got == _protobuf_response(model, version, rid, outputs)
    parsed = pb.ModelInferResponse.FromString(got)
    assert [o.name for o in parsed.outputs] == [n for n, _, _ in outputs]
    for (_, _, value), raw in zip(outputs, parsed.raw_output_contents):
        assert raw == value.tobytes()


def _message(rng: np.random.Generator, nodes: int, rid: str = "", extra: bool = False) -> bytes:
    x = rng.standard_normal((nodes, 5)).astype(np.float32)
    tensors = {"x": x, "edge_index": rng.integers(0, nodes, (2, 2 * nodes)).astype(np.int64),
               "node_graph": np.zeros(nodes, np.int64), "graph_node_counts": np.array([nodes], np.int64)}
    req = pb.ModelInferRequest.FromString(pb.infer_request_bytes("gnn", tensors, rid))
    if extra:
        req.outputs.add(name="prediction")
        req.parameters["timeout"].int64_param = 5000
        req.model_version = "1"
    return req.SerializeToString()


def _full(data: bytes):
    """The full decode: (request) or the error it raises."""
    msg = pb.ModelInferRequest()
    try:
        msg.ParseFromString(data)
        return msg, decode_request(msg, EXPECTED)
    except Exception as e:  # noqa: BLE001 - DecodeError or the request's own error
        return msg, e


def _same(planned, full) -> None:
    assert not isinstance(full, Exception), f"planned a message the full decode refuses: {full!r}"
    assert planned.id == full.id
    assert planned.parameters == full.parameters
    assert planned.outputs == full.outputs
    assert list(planned.inputs) == list(full.inputs)
    for name, value in full.inputs.items():
        assert planned.inputs[name].dtype == value.dtype and planned.inputs[name].shape == value.shape
        assert np.array_equal(planned.inputs[name], value, equal_nan=True)


def _prime(plans: GrpcPlans, data: bytes) -> None:
    parts = split(data)
    assert parts is not None
    msg, request = _full(data)
    assert not isinstance(request, Exception), request
    plans.keep(parts, "served", msg, request)


def test_split_head_id_and_raw_contents():
    rng = np.random.default_rng(0)
    data = _message(rng, 7, rid="abc", extra=True)
    parts = split(data)
    msg = pb.ModelInferRequest.FromString(data)
    assert parts.request_id == b"abc"
    assert [data[o:o + n] for o, n in parts.raw] == list(msg.raw_input_contents)
    bare = pb.ModelInferRequest.FromString(data)
    bare.id = ""
    del bare.raw_input_contents[:]
    assert parts.head == bare.SerializeToString()
    # same description, another id and other values: the same head
    assert split(_message(np.random.default_rng(1), 7, rid="zz", extra=True)).head == parts.head


@pytest.mark.parametrize("data", [
    b"\x0a\x05gnn",  # a length past the end
    b"\x0b\x0c",  # a group (wire type 3)
    b"\x38\x01",  # raw_input_contents (field 7) as a varint
    b"\x18\x01",  # id (field 3) as a varint
    b"\x02\x00",  # field 0
    b"\x08" + b"\xff" * 11,  # a varint over ten bytes
    b"\x0a",  # a tag without its length
    b"\x0a" + b"x" * 3000,  # (not parsed: truncated)
    b"\x1a\x01\x80\x1a\x00",  # id twice (protobuf checks both: this first one is not UTF-8)
    b"\xba\x80\x80\x80\x80\x00\x00",  # a raw entry's tag in 6 bytes (protobuf refuses tags over 5)
    b"\x9a\x80\x80\x80\x80\x00\x00",  # the id's tag in 6 bytes
    b"\x3a\x00" * 65,  # more raw entries than a plan can hold
    b"\x08\x00" * 2000,  # a head of tiny fields past MAX_HEAD_BYTES: refused before the walk ends
])
def test_split_refuses_what_it_cannot_read(data):
    assert split(data) is None


def test_split_stops_early_on_a_message_of_tiny_fields():
    """A 256 KiB message of 2-byte fields is refused once the head passes its limit: split
    reads about MAX_HEAD_BYTES of it, not all 131,071 fields (bounded event-loop work)."""
    from edgemp.runtime.server import grpc_wire

    calls = []
    original = grpc_wire._varint

    def counting(data, pos):
        calls.append(pos)
        return original(data, pos)

    grpc_wire._varint = counting
    try:
        assert split(b"\x08\x80\x01" * 87_000) is None  # varint values: each field calls _varint
    finally:
        grpc_wire._varint = original
    assert 0 < len(calls) <= MAX_HEAD_BYTES


def test_split_refuses_a_head_over_its_limit():
    req = pb.ModelInferRequest.FromString(_message(np.random.default_rng(2), 3))
    req.parameters["note"].string_param = "n" * MAX_HEAD_BYTES
    assert split(req.SerializeToString()) is None


def test_planned_decode_equals_the_full_decode():
    rng = np.random.default_rng(3)
    plans = GrpcPlans()
    first = _message(rng, 9, extra=True)
    _prime(plans, first)
    for rid in ("", "r1", "日本"):
        data = _message(rng, 9, rid=rid, extra=True)
        _, planned = plans.lookup(data, lambda served: True)
        assert planned is not None and planned[0] == "served"
        _same(planned[1], _full(data)[1])
        assert not planned[1].inputs["x"].flags.writeable  # a view of the message, not a copy
    _, planned = plans.lookup(_message(rng, 10, extra=True), lambda served: True)
    assert planned is None  # other shapes: another head, not planned yet
    _, planned = plans.lookup(data, lambda served: False)
    assert planned is None  # the plan's model is no longer the one served


def test_bytes_inputs_are_never_planned():
    plans = GrpcPlans()
    req = pb.ModelInferRequest(model_name="gnn")
    req.inputs.add(name="s", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    data = req.SerializeToString()
    msg, request = _full(data)
    assert not isinstance(request, Exception), request
    plans.keep(split(data), "served", msg, request)
    assert len(plans) == 0


@settings(max_examples=600, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_bytes_near_a_plan_decode_as_the_full_decode_does(data):
    """Bytes that share a plan's head (or break it) either take the plan and decode exactly as
    protobuf + decode_request do, or are left to the full decode; never a planned answer for a
    message the full decode refuses."""
    rng = np.random.default_rng(data.draw(st.integers(0, 3)))
    base = _message(rng, data.draw(st.sampled_from([1, 4])), rid=data.draw(st.sampled_from(["", "id"])),
                    extra=data.draw(st.booleans()))
    plans = GrpcPlans()
    _prime(plans, base)
    wire = bytearray(base)
    raw = [o + k for o, n in split(base).raw for k in range(n)]  # where the raw contents lie
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "flip_raw", "flip_raw", "insert", "delete", "append_field",
                                          "truncate"]))
        pos = data.draw(st.integers(0, len(wire) - 1))
        if kind == "flip_raw":  # values only (NaN, huge indices...): the head stays, the plan answers
            pos = min(data.draw(st.sampled_from(raw)), len(wire) - 1)
            wire[pos] = data.draw(st.integers(0, 255))
        elif kind == "flip":
            wire[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=6))
        elif kind == "delete":
            del wire[pos:pos + data.draw(st.integers(1, 6))]
        elif kind == "append_field":  # another raw entry or id, well formed
            payload = data.draw(st.binary(max_size=20))
            wire += bytes([data.draw(st.sampled_from([0x3A, 0x1A])), len(payload)]) + payload
        else:
            del wire[pos:]
        if not wire:
            wire = bytearray(b"\x00")
    wire = bytes(wire)
    _, planned = plans.lookup(wire, lambda served: True)
    if planned is not None:
        _same(planned[1], _full(wire)[1])


def test_full_decode_errors_stay_the_answer_for_planned_heads():
    """A message with a known head but raw contents of the wrong size is not planned: the
    full decode's error is the answer."""
    rng = np.random.default_rng(5)
    plans = GrpcPlans()
    base = _message(rng, 4)
    _prime(plans, base)
    req = pb.ModelInferRequest.FromString(base)
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    wire = req.SerializeToString()
    _, planned = plans.lookup(wire, lambda served: True)
    assert planned is None
    with pytest.raises(EdgempError, match="bytes of data but shape"):
        decode_request(pb.ModelInferRequest.FromString(wire), EXPECTED)


def test_a_head_then_raw_message_skips_the_walk(monkeypatch):
    """A message that is a kept head followed by its raw entries (what tritonclient writes) is
    planned by its length and bytes, without the field walk, and decodes as the full decode; a
    message with an id, or of the same length with another head, still takes the walk."""
    from edgemp.runtime.server import grpc_plans

    rng = np.random.default_rng(6)
    plans = GrpcPlans()
    _prime(plans, _message(rng, 8, extra=True))
    walks = []
    monkeypatch.setattr(grpc_plans, "split", lambda data: walks.append(data) or split(data))
    for _ in range(3):
        data = _message(rng, 8, extra=True)
        parts, planned = plans.lookup(data, lambda served: True)
        assert planned is not None and not walks
        assert parts == split(data)
        _same(planned[1], _full(data)[1])
    with_id = _message(rng, 8, rid="r", extra=True)
    _, planned = plans.lookup(with_id, lambda served: True)
    assert planned is not None and walks == [with_id]
    other = bytearray(_message(rng, 8, extra=True))
    other[other.index(b"prediction")] = ord("q")  # same length, another requested output
    _, planned = plans.lookup(bytes(other), lambda served: True)
    assert planned is None and walks[-1] == bytes(other)


def test_forgotten_plans_leave_no_shortcut():
    rng = np.random.default_rng(7)
    plans = GrpcPlans(max_plans=2)
    for nodes in (3, 4, 5):
        _prime(plans, _message(rng, nodes))
    assert len(plans) == 2
    _, planned = plans.lookup(_message(rng, 3), lambda served: True)
    assert planned is None  # the oldest went, from both tables
    assert all(plans._plans.get(head) for shortcuts in plans._by_length.values() for head, *_ in shortcuts)
    assert sum(len(s) for s in plans._by_length.values()) == 2


def test_a_stale_plan_is_replaced_not_kept_twice():
    """A head whose plan names a model no longer served decodes the long way and is kept again,
    for the model served now: one plan, one shortcut."""
    rng = np.random.default_rng(8)
    plans = GrpcPlans()
    first = _message(rng, 6)
    _prime(plans, first)
    data = _message(rng, 6)
    parts, planned = plans.lookup(data, lambda served: False)
    assert planned is None
    msg, request = _full(data)
    plans.keep(parts, "served again", msg, request)
    assert len(plans) == 1 and sum(len(s) for s in plans._by_length.values()) == 1
    _, planned = plans.lookup(_message(rng, 6), lambda served: served == "served again")
    assert planned is not None and planned[0] == "served again"
