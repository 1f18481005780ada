"""ModelInfer messages at the protobuf wire level, for the calls that skip protobuf objects.

Two jobs, both exact to the protobuf encoding (grpc_service.proto's field numbers):

- :func:`split`: a serialized ModelInferRequest as its *head* (every top-level field but
  ``id`` and ``raw_input_contents``, in order), its id and where its raw contents lie, for
  :mod:`edgemp.runtime.server.grpc_plans`;
- :func:`encode_response`: a ModelInferResponse with raw output contents, byte for byte what
  protobuf's serializer writes (fields in number order, shapes packed), with its constant
  parts (model name and version, the output descriptions for a set of shapes) built once.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

MAX_HEAD_BYTES = 2048  # longer descriptions (many inputs, long names) are decoded every time
MAX_RAW_ENTRIES = 64  # a head within MAX_HEAD_BYTES describes fewer inputs than this
_ID, _RAW = 3, 7  # ModelInferRequest field numbers
_MAX_KEPT = 512  # output descriptions kept (per distinct model, names, datatypes, shapes)


class Split(NamedTuple):
    head: bytes
    request_id: bytes
    raw: list[tuple[int, int]]  # (offset, length) of each raw_input_contents entry, in order


def raw_entry_prefix(nbytes: int) -> bytes:
    """What precedes a raw_input_contents entry of ``nbytes`` in a request: field 7's tag and the length."""
    return b"\x3a" + _encode_varint(nbytes)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); IndexError when truncated, ValueError past 10 bytes."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    value, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = data[pos]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def split(data: bytes) -> Split | None:
    """The message's head, id and raw contents (see the module docstring); None when irregular."""
    head: list[bytes] = []
    raw: list[tuple[int, int]] = []
    request_id, seen_id = b"", False
    kept = 0  # head bytes in ``head`` so far
    pos, end, mark = 0, len(data), 0  # head bytes run from ``mark`` to the field being read
    try:
        while pos < end:
            start = pos
            # Bounded work for any message: the walk stops once the head is past its limit (or the
            # raw entries past what a plan can hold), not after a message full of tiny fields.
            if kept + start - mark > MAX_HEAD_BYTES:
                return None
            tag = data[pos]  # one-byte tags and lengths inline: the varint call is the loop's cost
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _varint(data, pos)
                if pos - start > 5 or tag > 0xFFFFFFFF:
                    return None  # protobuf refuses tags over 5 bytes or 32 bits
            field, wire = tag >> 3, tag & 7
            if wire == 2:
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = _varint(data, pos)
                if pos + length > end:
                    return None
                if field == _RAW or field == _ID:
                    if start > mark:
                        head.append(data[mark:start])
                        kept += start - mark
                    if field == _RAW:
                        if len(raw) == MAX_RAW_ENTRIES:
                            return None
                        raw.append((pos, length))
                    elif seen_id:
                        return None  # protobuf checks every occurrence (UTF-8), not just the last
                    else:
                        request_id, seen_id = data[pos:pos + length], True
                    mark = pos + length
                pos += length
            elif field == _RAW or field == _ID:
                return None  # wrong wire type: the parser's error, not ours
            elif wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return None  # groups (deprecated) and invalid wire types
            if pos > end or field == 0:
                return None
    except (IndexError, ValueError):
        return None
    if end > mark:
        head.append(data[mark:end])
    whole = b"".join(head)
    return Split(whole, request_id, raw) if len(whole) <= MAX_HEAD_BYTES else None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _string(number: int, value: str) -> bytes:
    return _field(number, value.encode()) if value else b""  # proto3 leaves out empty strings


_kept: dict[tuple, bytes] = {}


def _described(model: str, version: str, outputs: tuple[tuple[str, str, tuple[int, ...]], ...]) -> tuple[bytes, bytes]:
    """(fields 1-2: model name and version, fields 5: the output tensors' descriptions)."""
    key = (model, version, outputs)
    parts = _kept.get(key)
    if parts is None:
        descriptions = b"".join(
            _field(5, _string(1, name) + _string(2, datatype)
                   + (_field(3, b"".join(_encode_varint(d) for d in shape)) if shape else b""))
            for name, datatype, shape in outputs)
        parts = (_string(1, model) + _string(2, version), descriptions)
        if len(_kept) >= _MAX_KEPT:
            _kept.clear()
        _kept[key] = parts
    return parts


def raw_output_prefix(nbytes: int) -> bytes:
    """What precedes an output's bytes in a ModelInferResponse: field 6's tag and the length."""
    return b"\x32" + _encode_varint(nbytes)


def encode_response(model: str, version: str, request_id: str,
                    outputs: Sequence[tuple[str, str, np.ndarray]]) -> bytes:
    """A serialized ModelInferResponse: ``outputs`` as (name, V2 datatype, C-contiguous array)
    described in ``outputs`` and carried in ``raw_output_contents``, in that order."""
    head, descriptions = _described(model, version, tuple((n, t, a.shape) for n, t, a in outputs))
    parts: list = [head]
    if request_id:
        parts.append(_field(3, request_id.encode()))
    parts.append(descriptions)
    for _, _, array in outputs:
        parts.append(raw_output_prefix(array.nbytes))
        parts.append(array)  # its buffer, joined without an intermediate copy
    return b"".join(parts)
