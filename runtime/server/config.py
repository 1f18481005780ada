"""Server settings, as one frozen dataclass with units in the field names.

Per-model batching settings live in :class:`~edgemp.runtime.batcher.BatcherConfig`; the
server-wide ones (network, limits, auth) live here so ``create_app`` and the CLI share
one definition and one set of defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgemp.errors import EdgempError

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP server behaves.

    Attributes:
        host, port: where to listen (default 127.0.0.1:8000; Triton's HTTP port).
        max_body_bytes: largest request body accepted, after decompression (413 beyond).
        auth_token: bearer token every route except ``/v2/health/{live,ready}`` needs;
            ``None`` disables auth. Never taken from the command line (it would show in ``ps``).
        request_timeout_cap_us: upper bound on a request's queue timeout (0 = no cap). A
            request's ``timeout`` parameter may shorten it, never lengthen it.
        access_log: log one line per request (method, path, status, time; no tensor data).
        offload_bytes: bodies at least this large are decoded and encoded in a worker
            thread so one big request does not stall the event loop for everyone else.
        shutdown_timeout_s: how long SIGTERM waits for accepted requests before giving up.
        grpc_port: also serve KServe V2 gRPC on this port (same host; 0 picks a free one;
            None, the default, serves HTTP only). Triton's gRPC port is 8001.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    auth_token: str | None = None
    request_timeout_cap_us: int = 0
    access_log: bool = True
    offload_bytes: int = 256 * 1024
    shutdown_timeout_s: float = 60.0
    grpc_port: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise EdgempError(f"port must be in 0..65535, got {self.port}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise EdgempError(f"gRPC port must be in 0..65535, got {self.grpc_port}")
        if self.max_body_bytes < 1024:
            raise EdgempError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.request_timeout_cap_us < 0:
            raise EdgempError(f"request_timeout_cap_us must be >= 0, got {self.request_timeout_cap_us}")
        if self.auth_token is not None and not self.auth_token.strip():
            raise EdgempError("auth token is empty; unset it to disable auth")
