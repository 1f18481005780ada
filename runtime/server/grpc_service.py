"""KServe V2 over gRPC (``inference.GRPCInferenceService``): the RPCs, protocol-neutral.

Stock ``tritonclient.grpc`` works against it: ServerLive/Ready, ModelReady, ServerMetadata,
ModelMetadata, ModelConfig, ModelStatistics, RepositoryIndex and ModelInfer with ``raw_input_contents`` /
``raw_output_contents`` (the client decodes outputs only from raw contents, in the order of
its requested outputs). Each RPC here is serialized request bytes in, serialized response
bytes out, or an exception; :func:`grpc_status` turns that into a gRPC status. The wire
(HTTP/2, the 5-byte message prefix, metadata, trailers) is :mod:`edgemp.runtime.server.h2`'s:
an asyncio protocol on the server's own event loop, because grpcio's server alone cost
~300-450 µs per call here (benchmarks/results/server.md), more than the model.

Inference takes the request core of the HTTP routes (:mod:`edgemp.runtime.server.core`):
same batcher, statistics, admission and draining. Errors keep their meaning across
protocols: what is HTTP 400 is ``INVALID_ARGUMENT``, 404 ``NOT_FOUND``, 503 ``UNAVAILABLE``
(queue full, draining, queue timeout), 413 ``RESOURCE_EXHAUSTED``, a wrong bearer token
(``authorization`` metadata) ``UNAUTHENTICATED``.

Needs ``protobuf`` and ``hpack`` (``pip install 'edgemp[grpc]'``); imported only when a gRPC
port is given.
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Awaitable, Callable, NamedTuple, Protocol

import numpy as np

from edgemp import __version__
from edgemp.errors import EdgempError, MissingExtraError, clipped
from edgemp.runtime.server import core, grpc_rows
from edgemp.runtime.server.auth import bearer_matches, token_bytes
from edgemp.runtime.server.grpc_plans import GrpcPlans
from edgemp.runtime.server.grpc_wire import encode_response
from edgemp.runtime.server.metadata import EXTENSIONS, SERVER_NAME, model_config, model_metadata, repository_index
from edgemp.runtime.server.middleware import one_line, status_for
from edgemp.runtime.server.peers import model_views
from edgemp.runtime.server.protocol import (
    DTYPES,
    MAX_NAME,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    V2Call,
    array_from_bytes,
    bytes_elements,
    check_datatype,
    check_shape,
    object_array,
)
from edgemp.runtime.server.state import ServerState
from edgemp.runtime.server.unsupported import REASONS, UnsupportedError

logger = logging.getLogger(__name__)

OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})  # as /v2/health/{live,ready}: no token needed

# gRPC status codes (grpc/doc/statuscodes.md)
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 8, 12, 13, 14, 16
_FROM_HTTP = {400: INVALID_ARGUMENT, 404: NOT_FOUND, 413: RESOURCE_EXHAUSTED, 503: UNAVAILABLE,
              507: RESOURCE_EXHAUSTED}


def grpc_status(error: BaseException, rpc: str) -> tuple[int, str]:
    """(gRPC status code, message) for an exception raised serving ``rpc``; logs what is not the client's."""
    if isinstance(error, UnsupportedError):
        return UNIMPLEMENTED, one_line(error, 1000)
    if isinstance(error, EdgempError):
        return _FROM_HTTP.get(status_for(error), INVALID_ARGUMENT), one_line(error, 1000)
    logger.error("internal error serving gRPC %s", rpc, exc_info=error)
    return INTERNAL, "internal server error; see the server log"


def _where(name: str) -> str:
    return f"input {clipped(name, MAX_NAME)!r}"


def _parameters(params: Any, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise ProtocolError(f"{where}: parameter {clipped(key, MAX_NAME)!r} has no value")
        out[key] = getattr(value, choice)
    return out


_TYPED = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}


def _refuse_shared_memory(msg: Any) -> None:
    """An input whose data is missing because it names a shared memory region: say so."""
    for tensor in msg.inputs:
        if "shared_memory_region" in tensor.parameters:
            raise ProtocolError(f"{_where(tensor.name)}: {REASONS['shared_memory']}")


def decode_request(msg: Any, expected: dict[str, str]) -> InferRequest:
    """A ModelInferRequest as the protocol-neutral :class:`InferRequest` (checks as HTTP does)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        _refuse_shared_memory(msg)
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
                            "give one per input, in input order")
    if not msg.inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    decoded: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(msg.inputs):
        where = _where(tensor.name)
        if tensor.name in decoded:
            raise ProtocolError(f"{where} is given twice")
        datatype = check_datatype(tensor.name, tensor.datatype, expected, where)
        shape = check_shape(list(tensor.shape), where)
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"{where} has both 'contents' and raw_input_contents")
            if datatype == "BYTES":
                decoded[tensor.name] = object_array(
                    bytes_elements(raw[i], math.prod(shape), where, "its raw_input_contents"), shape)
            else:
                decoded[tensor.name] = array_from_bytes(raw[i], datatype, shape, where)
            continue
        count = math.prod(shape)  # Python ints: check_shape bounded it
        values = getattr(tensor.contents, _TYPED[datatype])
        if len(values) != count:
            _refuse_shared_memory(msg)
            raise ProtocolError(f"{where}: contents hold {len(values)} values but shape {list(shape)} needs {count}")
        if datatype == "BYTES":
            decoded[tensor.name] = object_array(list(values), shape)
        else:
            decoded[tensor.name] = np.asarray(values, dtype=DTYPES[datatype]).reshape(shape)
    outputs = None
    if msg.outputs:
        outputs = []
        for out in msg.outputs:
            params = _parameters(out.parameters, f"output {clipped(out.name, MAX_NAME)!r}")
            unsupported = set(params) & {"classification", "shared_memory_region"}
            if unsupported:
                raise ProtocolError(f"output {clipped(out.name, MAX_NAME)!r}: parameter(s) {sorted(unsupported)} "
                                    "are not supported")
            outputs.append(RequestedOutput(out.name, True))
    params = _parameters(msg.parameters, "request")
    return InferRequest(decoded, msg.id or None, params, outputs, binary_default=True)


class _GrpcCall(V2Call):
    """A ModelInferRequest as a call; answers a serialized ModelInferResponse (raw contents)."""

    __slots__ = ()

    def encode(self, results: list) -> bytes:
        outputs = []
        for name, value, _ in self.outputs(results):
            datatype = "FP32" if value.dtype.kind == "f" else "INT64"
            outputs.append((name, datatype, np.ascontiguousarray(value, dtype=DTYPES[datatype])))
        payload = encode_response(self.served.name, self.served.version, self.request.id or "", outputs)
        memo = self.request.memo
        if memo is not None and "rows" not in memo:  # later calls on this plan can be rows (grpc_rows.py)
            grpc_rows.remember(memo, self.request, outputs, payload, self.served.spec.model.output_levels)
        return payload


class Rpc(NamedTuple):
    """One RPC: its handler (bytes -> bytes; when ``deferred``, (bytes, answer, whether the call
    has a deadline) -> a :class:`Cancellable` whose answer comes later, as
    :meth:`InferenceService.ModelInfer`) and whether it needs the bearer token."""

    name: str
    handler: Callable[[bytes], Any]
    deferred: bool
    needs_token: bool


class InferenceService:
    """The RPCs over one :class:`ServerState` (the HTTP app's own); see the module docstring."""

    def __init__(self, state: ServerState) -> None:
        from edgemp.runtime.server import grpc_proto as pb

        self.state = state
        self.pb = pb
        self.plans = GrpcPlans()
        self.rows = grpc_rows.GrpcRows(state)
        token = state.config.auth_token
        self._expected = token_bytes(token)
        self.rpcs: dict[bytes, Rpc] = {}
        for name in pb.RPCS:
            deferred = name in ("ModelInfer", "ModelStatistics")
            handler = getattr(self, name) if deferred else self._unary(name)
            self.rpcs[f"/{pb.SERVICE}/{name}".encode()] = Rpc(name, handler, deferred, name not in OPEN_RPCS)

    def _current(self, served: Any) -> bool:
        """Whether ``served`` is still the model served under its name (a plan names it)."""
        return self.state.models.get(served.name) is served

    def authorized(self, header: bytes | None) -> bool:
        """Whether an ``authorization`` metadata value carries the server's bearer token."""
        return self._expected is None or bearer_matches(header, self._expected)

    def _unary(self, name: str) -> Callable[[bytes], bytes]:
        answer = getattr(self, name)

        def handler(data: bytes) -> bytes:
            return answer(self._parse(name, data)).SerializeToString()

        return handler

    def _parse(self, name: str, data: bytes) -> Any:
        """The request message of RPC ``name``, or the ProtocolError naming why it is not one."""
        req_class = self.pb.CLASSES[self.pb.RPCS[name][0]]
        request = req_class()
        try:
            request.ParseFromString(data)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and its C variants
            raise ProtocolError(f"request is not a valid {req_class.DESCRIPTOR.name}: {one_line(e)}") from e
        return request

    # -- RPCs (a parsed request in, a response message out) -----------------------------------
    def ServerLive(self, request: Any) -> Any:  # noqa: N802 - the RPC's name
        return self.pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any) -> Any:  # noqa: N802
        return self.pb.ServerReadyResponse(ready=self.state.ready)

    def ModelReady(self, request: Any) -> Any:  # noqa: N802
        try:
            self.state.model(request.name, request.version)
        except EdgempError:
            return self.pb.ModelReadyResponse(ready=False)
        return self.pb.ModelReadyResponse(ready=self.state.ready)

    def ServerMetadata(self, request: Any) -> Any:  # noqa: N802
        return self.pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    def ModelMetadata(self, request: Any) -> Any:  # noqa: N802
        meta = model_metadata(self.state.model(request.name, request.version))
        resp = self.pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for field in ("inputs", "outputs"):
            for t in meta[field]:
                getattr(resp, field).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    def ModelConfig(self, request: Any) -> Any:  # noqa: N802
        from google.protobuf import json_format

        config = model_config(self.state.model(request.name, request.version))
        resp = self.pb.ModelConfigResponse()
        json_format.ParseDict(config, resp.config, ignore_unknown_fields=True)
        return resp

    def RepositoryIndex(self, request: Any) -> Any:  # noqa: N802
        if request.repository_name:
            raise UnsupportedError(f"RepositoryIndex: {REASONS['repository_name']}")
        resp = self.pb.RepositoryIndexResponse()
        for entry in repository_index(self.state.models, self.state.ready, request.ready):
            resp.models.add(**entry)
        return resp

    def ModelStatistics(self, data: bytes, answer: core.Answer,  # noqa: N802
                        deadline: bool = False) -> "asyncio.Task | None":
        """Deferred: under ``--workers N`` the other workers' counters are fetched first
        (:mod:`edgemp.runtime.server.peers`); alone, answered at once."""
        request = self._parse("ModelStatistics", data)
        state = self.state
        served = ([state.model(request.name, request.version)] if request.name
                  else [state.models[n] for n in sorted(state.models)])
        if state.peers is None:
            answer(self._statistics({s.name: s.stats for s in served}, served), None)
            return None

        async def gathered() -> None:
            try:
                views = await model_views(state)
                payload = self._statistics({n: v.stats for n, v in views.items()}, served)
            except Exception as e:  # noqa: BLE001 - a worker out of reach: UNAVAILABLE
                answer(None, e)
                return
            answer(payload, None)

        return asyncio.get_running_loop().create_task(gathered())

    def _statistics(self, stats: dict[str, Any], served: list) -> bytes:
        from google.protobuf import json_format

        resp = self.pb.ModelStatisticsResponse()
        for s in served:
            json_format.ParseDict(stats[s.name].to_json(s.name, s.version), resp.model_stats.add(),
                                  ignore_unknown_fields=True)
        return resp.SerializeToString()

    def ModelInfer(self, request: bytes, answer: core.Answer,  # noqa: N802 - raw bytes in and out
                   deadline: bool = False) -> "Cancellable | None":
        """Start the call; ``answer(serialized response, None)`` or ``answer(None, error)`` follows
        on the loop unless the returned handle is cancelled first (None: answered already).
        Raises what is wrong with the message itself (not a ModelInferRequest, an unknown model).

        A small message on a plan the core answered before is a row (:mod:`grpc_rows`) unless
        the call has a ``deadline`` (``grpc-timeout``); other small ones take the request core's
        callback path (:func:`core.start`: no task, coroutine or future per call, as the HTTP
        fast path); a large one a task on :func:`core.infer`, whose decode and encode may move
        off the loop.
        """
        state = self.state
        small = len(request) < state.config.offload_bytes
        parts = None
        if small:  # a message whose description was seen before skips protobuf (grpc_plans.py)
            parts, planned = self.plans.lookup(request, self._current)
            if planned is not None:
                served, decoded = planned
                row = None if deadline else self.rows.take(served, decoded, answer)
                if row is not None:
                    return row
                return core.start(state, served, request, lambda _: _GrpcCall(served, decoded), answer)
        header = self.pb.ModelInferRequest()
        try:
            header.ParseFromString(request)  # once, here: the model name picks the model before admission
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and its C variants
            raise ProtocolError(f"request is not a valid ModelInferRequest: {one_line(e)}") from e
        served = state.model(header.model_name, header.model_version)

        def decode(_: bytes) -> _GrpcCall:
            call = _GrpcCall(served, decode_request(header, served.input_types))
            if parts is not None:  # decoded and checked without error: later ones may take the plan
                self.plans.keep(parts, served, header, call.request)
            return call

        if small:
            return core.start(state, served, request, decode, answer)
        return asyncio.get_running_loop().create_task(
            _answer_from(lambda: core.infer(state, served, request, decode), answer))


class Cancellable(Protocol):
    """A started call (a task, or the request core's flight): its end, or its cancel."""

    def done(self) -> bool: ...
    def cancel(self) -> Any: ...


async def _answer_from(work: Callable[[], Awaitable[bytes]], answer: core.Answer) -> None:
    # ``work`` makes its coroutine here, inside the task: a task cancelled before its first
    # step (a reset in the same loop turn) then leaves no coroutine that was never awaited
    try:
        data = await work()
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is the call's answer
        answer(None, e)
        return
    answer(data, None)


async def start_grpc(state: ServerState, host: str, port: int, body_reader: Any = None,
                     socks: Any = None) -> tuple[Any, int]:
    """Start the gRPC listener on the running event loop; (listener, bound port).

    ``body_reader`` (the HTTP app's) counts request messages against the same
    ``max_buffered_bytes`` as HTTP bodies; ``socks``: sockets already bound (a worker's).
    """
    try:
        from edgemp.runtime.server.h2.grpc_handler import GrpcHandler
        from edgemp.runtime.server.h2.listener import H2Listener

        service = InferenceService(state)
    except ImportError as e:
        raise MissingExtraError(e.name or "hpack", "grpc", "serving gRPC (--grpc-port)") from e
    listener = H2Listener(GrpcHandler(service, state.config.max_body_bytes, body_reader), state.config,
                          counted=state.connections)
    try:
        bound = await listener.start(host, port, socks)
    except OSError as e:
        raise OSError(f"cannot listen for gRPC on {host}:{port}: {e.strerror}") from e
    return listener, bound
