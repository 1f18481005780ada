"""KServe V2 / Open Inference Protocol codec: JSON tensors plus Triton's binary extension.

Decoding is strict, as Triton is: a tensor's datatype must be the model's, its data must
hold exactly ``prod(shape)`` elements, and binary sections must add up to the body. Every
problem raises :class:`ProtocolError` (HTTP 400) with a message that names the tensor,
so a client sees what to fix and never a 500. Tensor *contents* never appear in messages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemp.errors import EdgempError, clipped
from edgemp.jsonio import holds_bool
from edgemp.runtime.server import jsoncodec
from edgemp.runtime.server.unsupported import REASONS

if TYPE_CHECKING:
    from edgemp.runtime.server.served import ServedModel

# The datatypes edgemp models speak; a V2 name maps to one little-endian numpy dtype.
DTYPES: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
CONFIG_TYPES: dict[str, str] = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING"}
# Every V2 datatype name, so "INT32" is reported as unsupported rather than unknown.
V2_DATATYPES = frozenset(
    "BOOL UINT8 UINT16 UINT32 UINT64 INT8 INT16 INT32 INT64 FP16 FP32 FP64 BYTES BF16".split()
)
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_NAME = 64  # longest client string echoed back in an error
# Bounds on client-declared shapes, checked before anything is sized from them: edgemp
# tensors have rank <= 2 (numpy refuses > 64 dims with an error we would not name), and
# no request can hold 2**40 elements under any body limit.
MAX_DIMS = 8
MAX_ELEMENTS = 2**40
MAX_TIMEOUT_US = 2**53  # a queue timeout beyond exact floats (~285 years) is a client mistake


class ProtocolError(EdgempError):
    """The request does not follow the V2 protocol or the model's tensor layout (HTTP 400)."""


def _name(value: object) -> str:
    return clipped(value, MAX_NAME)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None  # None: follow the request-level binary_data_output


@dataclass
class InferRequest:
    """A decoded infer request. ``outputs`` is None when the client asked for all of them."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_default: bool = False  # request-level binary_data_output
    # Decoded through a header plan (runtime/server/header_plans.py): what was decided once
    # for every request with this header (its shapes, wanted outputs); None otherwise.
    memo: dict[str, Any] | None = None

    @property
    def timeout_us(self) -> int | None:
        """The request's queue timeout in µs, if it set one (Triton's ``timeout`` parameter)."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT_US:
            raise ProtocolError(f"parameter 'timeout' must be an integer in 0..{MAX_TIMEOUT_US} (microseconds)")
        return value


def _parameters(obj: dict, where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object")
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ProtocolError(f"{where}: parameter {_name(key)!r} must be a string, number or bool")
    return params


def check_shape(value: object, where: object) -> tuple[int, ...]:
    """A client's tensor shape, checked before anything is sized from it (HTTP and gRPC).

    ``where`` names the tensor in errors (a string, or anything that formats as one).
    """
    if type(value) is list and len(value) <= MAX_DIMS:  # noqa: E721 - the JSON case, checked in one pass
        count = 1
        for d in value:
            if type(d) is not int or d < 0 or d > MAX_ELEMENTS:  # noqa: E721 - bool is not a dimension
                break
            count *= d
        else:
            if count <= MAX_ELEMENTS:
                return tuple(value)
    return _check_shape_slow(value, where)


def _check_shape_slow(value: object, where: object) -> tuple[int, ...]:
    """:func:`check_shape` for anything but a plain valid list: the error that fits, or the shape."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_DIMS:
        if isinstance(value, (list, tuple)):
            raise ProtocolError(f"{where}: 'shape' has {len(value)} dimensions; at most {MAX_DIMS} are allowed")
        raise ProtocolError(f"{where}: 'shape' must be a list of integers")
    count = 1
    for d in value:  # one pass; Python ints cannot wrap, and an absurd product stops early
        if type(d) is not int:  # noqa: E721 - bool (an int subclass) is not a dimension
            raise ProtocolError(f"{where}: 'shape' must be a list of integers")
        if d < 0:
            raise ProtocolError(f"{where}: 'shape' {_name(list(value))} has a negative dimension")
        count *= d
        if count > MAX_ELEMENTS or d > MAX_ELEMENTS:  # [0, 2**62] holds nothing but cannot be sized either
            raise ProtocolError(f"{where}: 'shape' {_name(list(value))} has more than {MAX_ELEMENTS} elements")
    return tuple(value)


def check_datatype(name: str, datatype: object, expected: dict[str, str], where: str) -> str:
    """The input's declared datatype, which must be the model's (any client value is safe here)."""
    if name not in expected:
        raise ProtocolError(f"unexpected {where}; the model takes {sorted(expected)}")
    if datatype != expected[name]:
        known = isinstance(datatype, str) and datatype in V2_DATATYPES
        raise ProtocolError(f"{where}: {'unexpected' if known else 'unknown'} datatype {_name(datatype)!r}, "
                            f"expecting {expected[name]}")
    return datatype  # type: ignore[return-value]


def array_from_bytes(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A numeric tensor from its little-endian bytes (no copy); the size must match the shape."""
    dtype = DTYPES[datatype]
    need = math.prod(shape) * dtype.itemsize
    if len(raw) != need:
        raise ProtocolError(f"{where}: {len(raw)} bytes of data but shape {list(shape)} {datatype} needs {need}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def load_json(data: bytes | memoryview | str, what: str) -> Any:
    """``json.loads`` whose every failure (syntax, encoding, nesting depth, huge ints) is a 400."""
    try:
        return jsoncodec.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"{what} is not valid JSON: {_name(e)}") from e


def _from_json_data(data: object, dtype: np.dtype, shape: tuple[int, ...], where: str,
                    may_hold_bools: bool = True) -> np.ndarray:
    """JSON ``data`` (nested or flat, row-major) as an array of ``shape``; no silent casts.

    ``may_hold_bools=False``: the caller knows the JSON text has no ``true``/``false`` token,
    so the scan for them (~50 ns a number) is skipped.
    """
    if may_hold_bools and holds_bool(data):  # numpy would take true among numbers as 1
        raise ProtocolError(f"{where}: 'data' must hold numbers, not true/false")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError(f"{where}: 'data' is not a rectangular array of numbers") from e
    count = math.prod(shape)
    if arr.size != count:
        raise ProtocolError(f"{where}: 'data' holds {arr.size} elements but shape {list(shape)} needs {count}")
    if count == 0:
        return np.zeros(shape, dtype)
    kind = arr.dtype.kind
    if dtype.kind == "i" and kind not in "iu":
        raise ProtocolError(f"{where}: INT64 'data' must hold integers")
    if dtype.kind == "f" and kind not in "iuf":
        raise ProtocolError(f"{where}: FP32 'data' must hold numbers")
    try:
        return arr.astype(dtype, casting="unsafe" if kind == "f" else "same_kind").reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError(f"{where}: 'data' does not fit {dtype.name}") from e


class _Where:
    """``input 'name'`` for error messages, built only when one is raised."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"input {_name(self.name)!r}"

    def __format__(self, spec: str) -> str:  # f"{where}" in a message
        return str(self)


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    # ASCII digits only: int() also takes other scripts' digits, signs, spaces and underscores
    if not (header_length.isascii() and header_length.isdigit()):
        raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {_name(header_length)!r}")
    n = int(header_length) if len(header_length) <= 20 else -1
    if n == 0:
        raise ProtocolError(
            f"{HEADER_LENGTH}: 0 (a raw binary request) only suits single-input models; "
            "send a JSON header with one entry per input"
        )
    if n < 0 or n > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def decode_infer_request(body: bytes, header_length: str | None, expected: dict[str, str]) -> InferRequest:
    """Decode a V2 infer body; ``expected`` maps each model input name to its V2 datatype."""
    header, binary = _split_body(body, header_length)
    obj = load_json(header, "request header")
    if not isinstance(obj, dict):
        raise ProtocolError("request must be a JSON object")
    may_hold_bools = b"true" in header or b"false" in header  # one C scan spares a per-number one
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    params = _parameters(obj, "request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError("parameter 'binary_data_output' must be a bool")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    decoded: dict[str, np.ndarray] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        if type(spec) is not dict:  # noqa: E721 - JSON objects parse to dict, never a subclass
            raise ProtocolError(f"inputs[{i}] must be a JSON object")
        name = spec.get("name")
        if type(name) is not str:  # noqa: E721
            raise ProtocolError(f"inputs[{i}]: 'name' must be a string")
        where = _Where(name)  # formatted only if an error message needs it
        if name in decoded:
            raise ProtocolError(f"{where} is given twice")
        datatype = spec.get("datatype")
        if datatype is None or expected.get(name) != datatype:
            check_datatype(name, datatype, expected, where)  # raises the error that fits
        if datatype == "BYTES":  # texts: variable-length elements, decoded apart from the numeric types
            decoded[name], offset = _bytes_input(spec, binary, offset, where)
            continue
        dtype = DTYPES[datatype]
        shape = check_shape(spec.get("shape"), where)
        tensor_params = spec.get("parameters")
        if type(tensor_params) is dict and len(tensor_params) == 1 and "binary_data_size" in tensor_params:  # noqa: E721
            size = tensor_params["binary_data_size"]  # what tritonclient sends; checked just below
        else:
            size = _parameters(spec, where).get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise _no_data(spec, where)
            decoded[name] = _from_json_data(spec["data"], dtype, shape, where, may_hold_bools)
            continue
        if "data" in spec:
            raise ProtocolError(f"{where} has both 'data' and 'binary_data_size'")
        if type(size) is not int or size < 0:  # noqa: E721 - bool (an int subclass) is not a size
            raise ProtocolError(f"{where}: 'binary_data_size' must be a non-negative integer")
        count = math.prod(shape)
        if size != count * dtype.itemsize:
            raise ProtocolError(f"{where}: binary_data_size is {size} bytes but shape {list(shape)} "
                                f"{datatype} needs {count * dtype.itemsize}")
        if offset + size > len(binary):
            raise ProtocolError(f"{where}: binary data runs past the end of the body")
        decoded[name] = np.frombuffer(binary, dtype, count, offset).reshape(shape)  # a view of the body
        offset += size
    if offset != len(binary):
        raise ProtocolError(f"body has {len(binary) - offset} bytes of binary data that no input claims")
    return InferRequest(decoded, request_id, params, _requested_outputs(obj), binary_default)


def _no_data(spec: dict, where: object) -> ProtocolError:
    """What is wrong with an input that carries no data: a shared memory region, or nothing."""
    if "shared_memory_region" in _parameters(spec, where):
        return ProtocolError(f"{where}: {REASONS['shared_memory']}")
    return ProtocolError(f"{where} has neither 'data' nor a 'binary_data_size' parameter")


def _json_strings(data: object, where: str) -> list[str]:
    """Nested or flat JSON ``data`` of a BYTES tensor as a flat list of strings (row-major)."""
    out: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        else:
            raise ProtocolError(f"{where}: BYTES 'data' must hold strings")
    return out


def _bytes_input(spec: dict, binary: memoryview, offset: int, where: str) -> tuple[np.ndarray, int]:
    """A BYTES tensor (object array of str or bytes) and the binary offset after it.

    Binary form (Triton's): each element is a 4-byte little-endian length, then its bytes;
    ``binary_data_size`` must cover the elements exactly.
    """
    shape = check_shape(spec.get("shape"), where)
    count = math.prod(shape)
    size = _parameters(spec, where).get("binary_data_size")
    items: list = []
    if size is None:
        if "data" not in spec:
            raise _no_data(spec, where)
        items = _json_strings(spec["data"], where)
        if len(items) != count:
            raise ProtocolError(f"{where}: 'data' holds {len(items)} strings but shape {list(shape)} needs {count}")
    else:
        if "data" in spec:
            raise ProtocolError(f"{where} has both 'data' and 'binary_data_size'")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"{where}: 'binary_data_size' must be a non-negative integer")
        if offset + size > len(binary):
            raise ProtocolError(f"{where}: binary data runs past the end of the body")
        items = bytes_elements(binary[offset : offset + size], count, where)
        offset += size
    return object_array(items, shape), offset


def bytes_elements(chunk: bytes | memoryview, count: int, where: str, size_name: str = "binary_data_size") -> list[bytes]:
    """``count`` BYTES elements in Triton's raw form: each a 4-byte little-endian length, then its bytes."""
    items, pos, size = [], 0, len(chunk)
    for i in range(count):
        n = int.from_bytes(chunk[pos : pos + 4], "little") if pos + 4 <= size else -1
        if n < 0 or pos + 4 + n > size:
            raise ProtocolError(f"{where}: BYTES element {i} runs past {size_name} ({size} bytes)")
        items.append(bytes(chunk[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    if pos != size:
        raise ProtocolError(f"{where}: {size_name} is {size} bytes but its {count} BYTES elements use {pos}")
    return items


def object_array(items: list, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def _requested_outputs(obj: dict) -> list[RequestedOutput] | None:
    outputs = obj.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise ProtocolError("'outputs' must be a list")
    result = []
    for i, spec in enumerate(outputs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
        params = _parameters(spec, f"output {_name(spec['name'])!r}")
        unsupported = set(params) & {"classification", "shared_memory_region"}
        if unsupported:
            raise ProtocolError(f"output {_name(spec['name'])!r}: parameter(s) {sorted(unsupported)} are not supported")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise ProtocolError(f"output {_name(spec['name'])!r}: 'binary_data' must be a bool")
        result.append(RequestedOutput(spec["name"], binary))
    return result


def json_values(name: str, value: np.ndarray, binary_hint: str) -> list:
    """``value`` as JSON numbers; a :class:`ProtocolError` naming ``name`` if it holds inf or NaN.

    JSON has no such numbers: orjson writes them as ``null``, which tritonclient reads back
    as NaN (so +inf came back NaN), and the stdlib writes tokens that are not JSON at all.
    ``binary_hint`` says how this protocol asks for the exact values instead.
    """
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ProtocolError(f"output {_name(name)!r} holds values JSON cannot carry (inf or NaN); {binary_hint}")
    return value.tolist()


BINARY_HINT = 'ask for it in binary: "parameters": {"binary_data": true} on the output'
V1_BINARY_HINT = "the V2 binary protocol carries them (POST /v2/models/NAME/infer with binary_data)"


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length.

    ``outputs`` lists (name, array, binary) in the order they should appear.
    """
    entries, blobs = [], []
    for name, value, binary in outputs:
        datatype = "FP32" if value.dtype.kind == "f" else "INT64"
        value = np.ascontiguousarray(value, dtype=DTYPES[datatype])
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            raw = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = json_values(name, value.reshape(-1), BINARY_HINT)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    header = jsoncodec.dumps(response)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


MAX_MEMO_HEADERS = 16  # response headers kept per header plan (one per output shape set)


def encode_planned_response(
    memo: dict[str, Any],
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """:func:`encode_infer_response` for a request decoded through a header plan, whose
    response JSON header is kept in the plan's ``memo`` once made.

    Such a request has no ``id`` and the same wanted outputs as its plan's others, so its
    JSON header is a function of the output arrays' shapes and dtypes alone, and is reused
    whenever they match. Outputs in JSON (not binary) carry their values in the header:
    those are encoded in full.
    """
    if request.id is not None or not outputs or not all(binary for _, _, binary in outputs):
        return encode_infer_response(model_name, model_version, request, outputs)  # no binary part: all JSON
    arrays = [np.ascontiguousarray(v, dtype=np.float32 if v.dtype.kind == "f" else np.int64) for _, v, _ in outputs]
    key = tuple((a.shape, a.dtype.char) for a in arrays)
    headers = memo.get("response_headers")
    if headers is None:
        headers = memo["response_headers"] = {}
    header = headers.get(key)
    if header is None:
        payload, length = encode_infer_response(model_name, model_version, request, outputs)
        if length is not None and len(headers) < MAX_MEMO_HEADERS:
            headers[key] = payload[:length]
        return payload, length
    return b"".join([header, *arrays]), len(header)


def parse_v1_body(body: bytes, key: str, example: str) -> tuple[list, int | None, str | None]:
    """The /v1 predict envelope ``{key: [...], "timeout_us"?: int, "id"?: str}``.

    Returns the non-empty item list (unparsed), the timeout and the id; ``example`` shows
    the expected shape in the error message.
    """
    obj = load_json(body, "request")
    if not isinstance(obj, dict) or not isinstance(obj.get(key), list) or not obj[key]:
        raise ProtocolError(f"request must be {example}")
    unknown = set(obj) - {key, "timeout_us", "id"}
    if unknown:
        raise ProtocolError(f"unknown field(s) {sorted(unknown)}; expected {key}, timeout_us, id")
    timeout = obj.get("timeout_us")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or not 0 <= timeout <= MAX_TIMEOUT_US):
        raise ProtocolError(f"'timeout_us' must be an integer in 0..{MAX_TIMEOUT_US}")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    return obj[key], timeout, request_id


def wanted_outputs(request: InferRequest, output_names: list[str]) -> list[tuple[str, bool]]:
    """(name, binary) per output to answer, in the order the client asked (all when it did not)."""
    if request.outputs is None:
        return [(name, request.binary_default) for name in output_names]
    wanted, seen = [], set()
    for out in request.outputs:
        if out.name not in output_names:
            raise ProtocolError(f"unknown output {_name(out.name)!r}; the model has {output_names}")
        if out.name in seen:
            raise ProtocolError(f"output {_name(out.name)!r} is requested twice")
        seen.add(out.name)
        wanted.append((out.name, request.binary_default if out.binary is None else out.binary))
    return wanted


class V2Call:
    """A decoded V2 infer request (from HTTP or gRPC) as the request core runs it.

    Subclasses add ``encode(results)`` for their wire format; everything else — the model's
    items, the outputs to answer and the queue timeout — is decided here, once.
    """

    __slots__ = ("served", "request", "items", "wanted", "timeout_us")

    def __init__(self, served: "ServedModel", request: InferRequest) -> None:
        self.served = served
        self.request = request
        memo = request.memo
        if memo is None:
            self.items = served.to_items(request.inputs)
            self.wanted = wanted_outputs(request, served.output_names)
        else:  # same header, same shapes and wanted outputs: checked once, kept in the plan's memo
            self.items = served.to_items(request.inputs, memo)
            wanted = memo.get("wanted")
            if wanted is None:
                wanted = memo["wanted"] = wanted_outputs(request, served.output_names)
            self.wanted = wanted
        self.timeout_us = request.timeout_us

    def outputs(self, results: list) -> list[tuple[str, np.ndarray, bool]]:
        """(name, array, binary) per wanted output, in the request's layout."""
        tensors = self.served.to_tensors(results, [name for name, _ in self.wanted])
        return [(name, tensors[name], binary) for name, binary in self.wanted]
