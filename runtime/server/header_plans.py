"""V2 binary request headers a model has seen before, each decoded once.

A V2 binary request's JSON header says only which inputs come, in what datatype and
shape, and where their bytes lie; for molecule-sized graphs it is the same few hundred
bytes for every request with the same node and edge counts. Decoding and checking it
cost ~17 µs of the event loop per request (benchmarks/results/server.md §0d), about a
fifth of what the loop spends on one. A header decoded once successfully is kept, keyed
by its exact bytes, as a plan: the arrays of a later request with the same header are
views of its body at the planned offsets. Only headers whose every input is binary and
that carry no ``id`` are kept (an id makes every header different); the body's binary
length is checked against the plan on every use, and anything else — a new header, a
bad body — takes the full decode, whose errors stay the one answer for bad requests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgemp.runtime.server import jsoncodec
from edgemp.runtime.server.protocol import DTYPES, InferRequest, RequestedOutput, decode_infer_request

MAX_HEADER_BYTES = 2048  # larger headers (many inputs, long names) are decoded every time
MAX_PLANS = 512  # per model: distinct (nodes, edges) sizes of the graphs a client sends


@dataclass(frozen=True)
class _Plan:
    tensors: tuple[tuple[str, np.dtype, int, tuple[int, ...]], ...]  # name, dtype, offset, shape
    binary_bytes: int
    # The header's request-level fields (shared, read-only); never its arrays, which would
    # keep the first body alive.
    parameters: dict[str, Any]
    outputs: list[RequestedOutput] | None
    binary_default: bool
    # What the served model decided once for this header's requests (InferRequest.memo).
    memo: dict[str, Any] = field(default_factory=dict, compare=False)

    def decode(self, body: bytes, header_bytes: int) -> InferRequest:
        inputs = {name: np.ndarray(shape, dtype, body, header_bytes + offset)  # a read-only view
                  for name, dtype, offset, shape in self.tensors}
        return InferRequest(inputs, None, self.parameters, self.outputs, self.binary_default, self.memo)


class HeaderPlans:
    """Per model: decode a V2 infer body, through a plan when its header was seen before."""

    def __init__(self, max_plans: int = MAX_PLANS) -> None:
        self.max_plans = max_plans
        self._plans: dict[bytes, _Plan] = {}

    def __len__(self) -> int:
        return len(self._plans)

    def known(self, header: bytes, binary_bytes: int) -> "_Plan | None":
        """The plan of a header decoded before, if a body with ``binary_bytes`` after it fits it."""
        plan = self._plans.get(header)
        return plan if plan is not None and plan.binary_bytes == binary_bytes else None

    def decode(self, body: bytes, header_length: str | None, expected: dict[str, str]) -> InferRequest:
        """As :func:`decode_infer_request` (same result, same errors), faster for a known header."""
        n = header_bytes(header_length, len(body))
        if n == 0:
            return decode_infer_request(body, header_length, expected)
        header = body[:n]
        plan = self._plans.get(header)
        if plan is not None and plan.binary_bytes == len(body) - n:
            return plan.decode(body, n)
        request = decode_infer_request(body, header_length, expected)  # raises for a bad request
        plan = _plan_of(header, len(body) - n, request)
        if plan is not None:
            if len(self._plans) >= self.max_plans:
                try:  # the oldest goes; a decode in an offload thread may race us to it
                    del self._plans[next(iter(self._plans))]
                except (KeyError, RuntimeError, StopIteration):
                    pass
            self._plans[header] = plan
        return request


def header_bytes(header_length: str | None, body_length: int) -> int:
    """The header's length when this body's header may have a plan, else 0."""
    # ASCII digits only: str.isdigit() is also true of "²", which int() refuses.
    if header_length is None or not (0 < len(header_length) <= 4) or not header_length.isascii() \
            or not header_length.isdigit():
        return 0
    n = int(header_length)
    return n if 0 < n <= min(MAX_HEADER_BYTES, body_length) else 0


def _plan_of(header: bytes, binary_bytes: int, request: InferRequest) -> _Plan | None:
    """The plan of a header that just decoded without error; None when it cannot be replayed."""
    if request.id is not None or any(a.dtype == object for a in request.inputs.values()):
        return None  # an id, or BYTES (texts): every header differs, so none is parsed twice
    obj = jsoncodec.loads(header)  # valid: it just decoded
    tensors, offset = [], 0
    for spec in obj["inputs"]:
        params = spec.get("parameters") or {}
        size = params.get("binary_data_size")
        if size is None or spec["datatype"] not in DTYPES:  # JSON data, or BYTES: decoded every time
            return None
        dtype = DTYPES[spec["datatype"]]
        shape = tuple(spec["shape"])
        tensors.append((spec["name"], dtype, offset, shape))
        offset += size
    if offset != binary_bytes:
        return None
    return _Plan(tuple(tensors), binary_bytes, request.parameters, request.outputs, request.binary_default)
