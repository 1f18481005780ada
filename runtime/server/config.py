"""Server settings, as one frozen dataclass with units in the field names.

Per-model batching settings live in :class:`~edgemp.runtime.batcher.BatcherConfig`; the
server-wide ones (network, limits, auth) live here so ``create_app`` and the CLI share
one definition and one set of defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgemp.errors import EdgempError

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_MEMORY_BYTES = 1024 * 1024 * 1024
# --workers: a worker not heard from for this long is stuck and replaced (gunicorn's default, too).
# The floor leaves room for the supervisor's 0.1 s tick and a worker's report period (a quarter
# of the timeout); whether the interpreter may legitimately be busy longer (a long batch, a large
# JSON body decoded) is the operator's to size (docs/operations.md).
DEFAULT_WORKER_TIMEOUT_S = 30.0
MIN_WORKER_TIMEOUT_S = 1.0


def check_worker_timeout(timeout_s: float) -> None:
    """Refuse a ``--worker-timeout-s`` that is not 0 (never) or a finite number of seconds >= 1."""
    if not (timeout_s == 0 or MIN_WORKER_TIMEOUT_S <= timeout_s < float("inf")):  # NaN fails too
        raise EdgempError(f"--worker-timeout-s must be 0 (never) or a number of seconds from "
                          f"{MIN_WORKER_TIMEOUT_S:g} up, got {timeout_s}")


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP server behaves. Every limit is listed, with its reason, in docs/operations.md.

    Attributes:
        host, port: where to listen (default 127.0.0.1:8000; Triton's HTTP port).
        max_body_bytes: largest request body accepted, on the wire and after decompression (413 beyond).
        auth_token: bearer token every route except ``/v2/health/{live,ready}`` needs;
            ``None`` disables auth. Never taken from the command line (it would show in ``ps``).
        request_timeout_cap_us: upper bound on a request's queue timeout (0 = no cap). A
            request's ``timeout`` parameter may shorten it, never lengthen it.
        access_log: log one line per request (method, path, status, time; no tensor data).
            Off by default, as in Triton: the line costs 30-45 µs of server CPU per request
            (measured; benchmarks/results/server.md), a tenth of a small model's whole request.
        offload_bytes: bodies at least this large are decoded and encoded in a worker
            thread so one big request does not stall the event loop for everyone else.
        shutdown_timeout_s: how long SIGTERM waits for accepted requests before giving up.
        grpc_port: also serve KServe V2 gRPC on this port (same host; 0 picks a free one;
            None, the default, serves HTTP only). Triton's gRPC port is 8001.
        header_timeout_s: a request's headers must be complete this long after the
            connection opens (or its first byte after an idle keep-alive); 408 and close
            otherwise. Also the grace period before ``body_min_rate_bytes_per_s`` applies.
        body_min_rate_bytes_per_s: after the grace period a body must keep arriving at
            this average rate (408 and close otherwise); 0 disables the check.
        keepalive_timeout_s: an idle keep-alive connection closes after this long.
        max_connections: open connections at most; at the cap the oldest connection still
            waiting for headers is closed, or the newcomer gets 503 if all are busy.
            Lowered at start to what the open-file limit allows.
        max_buffered_bytes: bytes all request bodies in flight may hold together
            (503 beyond); 0 = four times ``max_body_bytes``.
        max_request_nodes, max_request_edges: nodes / edges one request may carry (413
            beyond); 0 = four times the model's batch budget (``max_batch_nodes`` /
            ``max_batch_edges``), so one request can never stall the batcher for long.
        max_request_memory_bytes: estimated peak inference memory of one request, from
            the model's weights and the request's node and edge counts (413 beyond);
            0 disables the estimate.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    auth_token: str | None = None
    request_timeout_cap_us: int = 0
    access_log: bool = False
    offload_bytes: int = 256 * 1024
    shutdown_timeout_s: float = 60.0
    grpc_port: int | None = None
    header_timeout_s: float = 10.0
    body_min_rate_bytes_per_s: int = 64 * 1024
    keepalive_timeout_s: float = 30.0
    max_connections: int = 1024
    max_buffered_bytes: int = 0
    max_request_nodes: int = 0
    max_request_edges: int = 0
    max_request_memory_bytes: int = DEFAULT_MAX_REQUEST_MEMORY_BYTES

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise EdgempError(f"port must be in 0..65535, got {self.port}")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise EdgempError(f"gRPC port must be in 0..65535, got {self.grpc_port}")
        if self.max_body_bytes < 1024:
            raise EdgempError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if self.request_timeout_cap_us < 0:
            raise EdgempError(f"request_timeout_cap_us must be >= 0, got {self.request_timeout_cap_us}")
        if self.auth_token is not None and (not self.auth_token.strip() or self.auth_token != self.auth_token.strip()):
            raise EdgempError("auth token is empty or has surrounding whitespace; unset it to disable auth")
        for name in ("header_timeout_s", "keepalive_timeout_s", "shutdown_timeout_s"):
            if not getattr(self, name) > 0:
                raise EdgempError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("body_min_rate_bytes_per_s", "max_buffered_bytes", "max_request_nodes",
                     "max_request_edges", "max_request_memory_bytes"):
            if getattr(self, name) < 0:
                raise EdgempError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise EdgempError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.max_buffered_bytes == 0:
            object.__setattr__(self, "max_buffered_bytes", 4 * self.max_body_bytes)
        if self.max_buffered_bytes < self.max_body_bytes:
            raise EdgempError(f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                              f"max_body_bytes ({self.max_body_bytes})")
