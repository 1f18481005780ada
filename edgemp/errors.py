"""One exception root for everything a user can cause and fix.

The CLI prints an :class:`EdgempError` as one line and exits 1; anything else is a bug
and keeps its traceback (:class:`InternalError` marks the ones we detect ourselves).
"""
from __future__ import annotations


class EdgempError(Exception):
    """Base class for errors caused by input, files or environment (user-fixable)."""


class GraphValidationError(EdgempError, ValueError):
    """A graph or batch does not match the schema or the model's input spec."""


class CheckpointError(EdgempError):
    """A checkpoint directory or weights file is missing, malformed or unsafe."""


class ModelFormatError(EdgempError):
    """A model file (ONNX / engine) is not a valid edgemp model."""


class ExportError(EdgempError):
    """Export produced a graph that fails a check (loop ops, lint, numerics)."""


class VerificationError(ExportError):
    """Exported model outputs differ from PyTorch beyond tolerance."""


class MissingExtraError(EdgempError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" ({purpose})" if purpose else ""
        super().__init__(
            f"{package} is not installed{what}: pip install 'edgemp[{extra}]'"
        )
        self.package = package
        self.extra = extra


class QueueFullError(EdgempError):
    """The dynamic batcher's queue is full; the request was not accepted."""


class RequestTimeoutError(EdgempError):
    """A request waited in the queue past its timeout and was not run."""


class ShuttingDownError(EdgempError):
    """The batcher or server is draining and accepts no new requests."""


class RequestTooLargeError(EdgempError):
    """A request asks for more work than the server's per-request limits allow (HTTP 413)."""


class ResourceExhaustedError(EdgempError):
    """The server ran out of memory or buffer space for a valid request (HTTP 507/503)."""


class InternalError(Exception):
    """A bug in edgemp (an invariant broke); not the user's fault."""


def clipped(value: object, limit: int = 64) -> str:
    """``value`` as text for an error message: a client's string echoed back is cut to ``limit``
    characters, with "..." to show it was cut (a 10 kB name must not become a 10 kB answer)."""
    text = str(value)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."
