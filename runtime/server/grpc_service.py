"""KServe V2 over gRPC (``inference.GRPCInferenceService``), beside the HTTP listener.

Stock ``tritonclient.grpc`` works against it: ServerLive/Ready, ModelReady, ServerMetadata,
ModelMetadata, ModelConfig, ModelStatistics and ModelInfer with ``raw_input_contents`` /
``raw_output_contents`` (the client decodes outputs only from raw contents, in the order of
its requested outputs). Inference takes the request core of the HTTP routes
(:func:`edgemp.runtime.server.core.infer`): same batcher, statistics, admission and
draining. The serialized request is decoded inside the core, so a large one is parsed off
the event loop like a large HTTP body. Errors keep their meaning across protocols: what is
HTTP 400 is ``INVALID_ARGUMENT``, 404 ``NOT_FOUND``, 503 ``UNAVAILABLE`` (queue full,
draining, queue timeout), a wrong bearer token (``authorization`` metadata)
``UNAUTHENTICATED``, and a message over the size limit ``RESOURCE_EXHAUSTED``.

Needs ``grpcio`` (``pip install 'edgemp[grpc]'``); imported only when a gRPC port is given.
"""
from __future__ import annotations

import hmac
import logging
from typing import Any, Awaitable, Callable

import numpy as np

from edgemp import __version__
from edgemp.errors import EdgempError
from edgemp.runtime.server import core
from edgemp.runtime.server.metadata import EXTENSIONS, SERVER_NAME, model_config, model_metadata
from edgemp.runtime.server.middleware import one_line, status_for
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

logger = logging.getLogger(__name__)

OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})  # as /v2/health/{live,ready}: no token needed


def _grpc():
    try:
        import grpc
    except ImportError as e:
        raise EdgempError("gRPC serving needs grpcio: pip install 'edgemp[grpc]'") from e
    return grpc


def _where(name: str) -> str:
    return f"input {name[:MAX_NAME]!r}"


def _parameters(params: Any, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise ProtocolError(f"{where}: parameter {key[:MAX_NAME]!r} has no value")
        out[key] = getattr(value, choice)
    return out


_TYPED = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}


def decode_request(msg: Any, expected: dict[str, str]) -> InferRequest:
    """A ModelInferRequest as the protocol-neutral :class:`InferRequest` (checks as HTTP does)."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
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
        count = int(np.prod(shape, dtype=object)) if shape else 1
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"{where} has both 'contents' and raw_input_contents")
            if datatype == "BYTES":
                decoded[tensor.name] = object_array(bytes_elements(raw[i], count, where, "its raw_input_contents"), shape)
            else:
                decoded[tensor.name] = array_from_bytes(raw[i], datatype, shape, where)
            continue
        values = getattr(tensor.contents, _TYPED[datatype])
        if len(values) != count:
            raise ProtocolError(f"{where}: contents hold {len(values)} values but shape {list(shape)} needs {count}")
        if datatype == "BYTES":
            decoded[tensor.name] = object_array(list(values), shape)
        else:
            decoded[tensor.name] = np.asarray(values, dtype=DTYPES[datatype]).reshape(shape)
    outputs = None
    if msg.outputs:
        outputs = []
        for out in msg.outputs:
            params = _parameters(out.parameters, f"output {out.name[:MAX_NAME]!r}")
            unsupported = set(params) & {"classification", "shared_memory_region"}
            if unsupported:
                raise ProtocolError(f"output {out.name[:MAX_NAME]!r}: parameter(s) {sorted(unsupported)} "
                                    "are not supported")
            outputs.append(RequestedOutput(out.name, True))
    params = _parameters(msg.parameters, "request")
    return InferRequest(decoded, msg.id or None, params, outputs, binary_default=True)


class _GrpcCall(V2Call):
    """A ModelInferRequest as a call; answers a serialized ModelInferResponse (raw contents)."""

    __slots__ = ()

    def encode(self, results: list) -> bytes:
        from edgemp.runtime.server import grpc_proto as pb

        resp = pb.ModelInferResponse(model_name=self.served.name, model_version=self.served.version,
                                     id=self.request.id or "")
        for name, value, _ in self.outputs(results):
            datatype = "FP32" if value.dtype.kind == "f" else "INT64"
            value = np.ascontiguousarray(value, dtype=DTYPES[datatype])
            tensor = resp.outputs.add(name=name, datatype=datatype)
            tensor.shape.extend(value.shape)
            resp.raw_output_contents.append(value.tobytes())
        return resp.SerializeToString()


class InferenceService:
    """The RPC handlers over one :class:`ServerState` (the HTTP app's own)."""

    def __init__(self, state: ServerState) -> None:
        from edgemp.runtime.server import grpc_proto as pb

        self.state = state
        self.pb = pb
        token = state.config.auth_token
        self._expected = f"Bearer {token}".encode() if token is not None else None

    # -- plumbing -------------------------------------------------------------------------
    def _authorized(self, context: Any) -> bool:
        if self._expected is None:
            return True
        given = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode("latin-1")
        return hmac.compare_digest(given.encode(), self._expected)

    def _wrap(self, name: str, fn: Callable[[Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
        grpc = _grpc()
        codes = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}
        open_rpc = name in OPEN_RPCS

        async def handler(request: Any, context: Any) -> Any:
            if not open_rpc and not self._authorized(context):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            try:
                return await fn(request)
            except EdgempError as e:
                await context.abort(codes.get(status_for(e), grpc.StatusCode.INVALID_ARGUMENT), one_line(e, 1000))
            except Exception:
                logger.exception("internal error serving gRPC %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")

        return handler

    # -- RPCs -----------------------------------------------------------------------------
    async def ServerLive(self, request: Any) -> Any:  # noqa: N802 - the RPC's name
        return self.pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any) -> Any:  # noqa: N802
        return self.pb.ServerReadyResponse(ready=self.state.ready)

    async def ModelReady(self, request: Any) -> Any:  # noqa: N802
        try:
            self.state.model(request.name, request.version)
        except EdgempError:
            return self.pb.ModelReadyResponse(ready=False)
        return self.pb.ModelReadyResponse(ready=self.state.ready)

    async def ServerMetadata(self, request: Any) -> Any:  # noqa: N802
        return self.pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: Any) -> Any:  # noqa: N802
        meta = model_metadata(self.state.model(request.name, request.version))
        resp = self.pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for field in ("inputs", "outputs"):
            for t in meta[field]:
                getattr(resp, field).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return resp

    async def ModelConfig(self, request: Any) -> Any:  # noqa: N802
        from google.protobuf import json_format

        config = model_config(self.state.model(request.name, request.version))
        resp = self.pb.ModelConfigResponse()
        json_format.ParseDict(config, resp.config, ignore_unknown_fields=True)
        return resp

    async def ModelStatistics(self, request: Any) -> Any:  # noqa: N802
        from google.protobuf import json_format

        state = self.state
        served = ([state.model(request.name, request.version)] if request.name
                  else [state.models[n] for n in sorted(state.models)])
        resp = self.pb.ModelStatisticsResponse()
        for s in served:
            json_format.ParseDict(s.stats.to_json(s.name, s.version), resp.model_stats.add(),
                                  ignore_unknown_fields=True)
        return resp

    async def ModelInfer(self, request: bytes) -> bytes:  # noqa: N802 - raw bytes in and out
        state = self.state
        header = self.pb.ModelInferRequest()
        try:
            header.ParseFromString(request)  # once, here: the model name picks the model before admission
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and its C variants
            raise ProtocolError(f"request is not a valid ModelInferRequest: {one_line(e)}") from e
        served = state.model(header.model_name, header.model_version)

        def decode(_: bytes) -> _GrpcCall:
            return _GrpcCall(served, decode_request(header, served.input_types))

        return await core.infer(state, served, request, decode)

    def handlers(self) -> Any:
        grpc = _grpc()
        methods = {}
        for name, (req, resp) in self.pb.RPCS.items():
            if name == "ModelInfer":
                methods[name] = grpc.unary_unary_rpc_method_handler(self._wrap(name, self.ModelInfer))
            else:
                methods[name] = grpc.unary_unary_rpc_method_handler(
                    self._wrap(name, getattr(self, name)),
                    request_deserializer=self.pb.CLASSES[req].FromString,
                    response_serializer=self.pb.CLASSES[resp].SerializeToString,
                )
        return grpc.method_handlers_generic_handler(self.pb.SERVICE, methods)


async def start_grpc(state: ServerState, host: str, port: int) -> tuple[Any, int]:
    """Start the gRPC listener on the running event loop; (server, bound port)."""
    grpc = _grpc()
    limit = state.config.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers((InferenceService(state).handlers(),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        raise OSError(f"cannot listen for gRPC on {host}:{port}: {e}") from e
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
