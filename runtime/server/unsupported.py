"""Triton endpoints edgemp does not serve, answered with what is unsupported instead of a bare 404.

Stock ``tritonclient`` has a method for every Triton extension (model load/unload, trace and
log settings, system and CUDA shared memory, streaming). A user who calls one against
``edgemp serve`` gets a 400 (HTTP) or UNIMPLEMENTED (gRPC) naming the feature and what to do
instead, from one table for both protocols.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemp.errors import EdgempError

if TYPE_CHECKING:
    from aiohttp import web


class UnsupportedError(EdgempError):
    """A Triton call edgemp does not serve (HTTP 400, gRPC UNIMPLEMENTED), with what to do instead."""


REASONS = {
    "load": "edgemp serve loads its models at start; load and unload are not supported "
            "(restart it with the models to serve)",
    "trace": "trace settings are not supported (edgemp has no trace extension; see /metrics and the statistics)",
    "logging": "log settings are not supported; set --log-level when starting edgemp serve",
    "shared_memory": "shared memory is not supported; send tensors in the request (binary data or JSON; "
                     "raw_input_contents over gRPC)",
    "stream": "streaming inference is not supported; call ModelInfer",
    # Triton's own words for it, then ours
    "repository_name": "'repository_name' specification is not supported: edgemp serve has one model "
                       "repository; leave the repository name out",
}

GRPC = {
    "ModelStreamInfer": "stream",
    "RepositoryModelLoad": "load",
    "RepositoryModelUnload": "load",
    "SystemSharedMemoryStatus": "shared_memory",
    "SystemSharedMemoryRegister": "shared_memory",
    "SystemSharedMemoryUnregister": "shared_memory",
    "CudaSharedMemoryStatus": "shared_memory",
    "CudaSharedMemoryRegister": "shared_memory",
    "CudaSharedMemoryUnregister": "shared_memory",
    "TraceSetting": "trace",
    "LogSettings": "logging",
}

_SHM = [("GET", "/v2/{kind}/status"), ("GET", "/v2/{kind}/region/{region}/status"),
        ("POST", "/v2/{kind}/region/{region}/register"), ("POST", "/v2/{kind}/region/{region}/unregister"),
        ("POST", "/v2/{kind}/unregister")]
HTTP = [
    ("POST", "/v2/repository/models/{model}/load", "load"),
    ("POST", "/v2/repository/models/{model}/unload", "load"),
    ("POST", "/v2/repository/{repository}/index", "repository_name"),
    ("POST", "/v2/repository/{repository}/models/{model}/load", "repository_name"),
    ("POST", "/v2/repository/{repository}/models/{model}/unload", "repository_name"),
    *((method, path, "trace") for method in ("GET", "POST")
      for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting")),
    ("GET", "/v2/logging", "logging"),
    ("POST", "/v2/logging", "logging"),
    *((method, path.format(kind=kind, region="{region}"), "shared_memory") for kind in
      ("systemsharedmemory", "cudasharedmemory") for method, path in _SHM),
]


def grpc_reason(method: str) -> str | None:
    """Why an RPC of Triton's service is not served here (None: not one edgemp knows of)."""
    feature = GRPC.get(method)
    return None if feature is None else f"{method}: {REASONS[feature]}"


def add_routes(app: web.Application, expect: Any = None) -> None:
    """The HTTP side: each unsupported endpoint answers 400 with its reason (the bearer token
    is checked first, as on every route)."""
    from edgemp.runtime.server.middleware import error_response  # here: protocol.py reads REASONS, without aiohttp

    def answer(feature: str):
        async def handler(request: web.Request) -> web.Response:
            return error_response(400, REASONS[feature])
        return handler

    for method, path, feature in HTTP:
        if method == "POST":
            app.router.add_post(path, answer(feature), expect_handler=expect)
        else:
            app.router.add_get(path, answer(feature))
