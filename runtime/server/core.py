"""The request core: every inference request, whatever its protocol, takes this one path.

V2 HTTP (binary and JSON), ``/v1`` (graphs or texts) and gRPC differ only in how bytes
become a :class:`Call` and how results become bytes again; admission and draining,
decode → run → encode, the queue timeout and the statistics are written once, here::

    admit → read → decode (items validated once, by the batcher) → run → encode → account

Decoding and encoding run inline on the event loop for small bodies (microseconds) and in
a worker thread for large ones, so one big request does not stall everyone else.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Protocol, Sequence, TypeVar

from edgemp.runtime.server.served import ServedModel
from edgemp.runtime.server.state import ServerState

T = TypeVar("T")
P = TypeVar("P", covariant=True)


class Call(Protocol[P]):
    """A decoded request: what to run, its queue timeout, and how to answer it."""

    items: Sequence
    timeout_us: int | None

    def encode(self, results: list) -> P: ...


async def offload(state: ServerState, size: int, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` inline when cheap, else in a thread so the event loop keeps serving."""
    if size < state.config.offload_bytes:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def effective_timeout_us(requested: int | None, default_us: int, cap_us: int) -> int:
    """A request may shorten the queue timeout below the cap, never lengthen it (0 = none)."""
    timeout = default_us if requested is None or requested == 0 else requested
    if cap_us > 0 and (timeout == 0 or timeout > cap_us):
        return cap_us
    return timeout


async def infer(
    state: ServerState,
    served: ServedModel,
    body: bytes | Callable[[], Awaitable[bytes]],
    decode: Callable[[bytes], Call[T]],
) -> T:
    """Admit, decode ``body`` (bytes, or an async reader), run, encode; the encoded answer.

    Raises the request's error (a :class:`~edgemp.errors.EdgempError` subclass for anything
    the client caused); the caller maps it to its protocol's status.
    """
    with state.admit(served) as scope:
        data = body if isinstance(body, (bytes, bytearray, memoryview)) else await body()
        size = len(data)
        call = await offload(state, size, decode, data)
        timeout = effective_timeout_us(call.timeout_us, served.source.batcher.default_timeout_us,
                                       state.config.request_timeout_cap_us)
        scope.input_ns = time.perf_counter_ns() - scope.start_ns
        alone = state.alone if size < state.config.offload_bytes else None
        results, timing = await served.run(call.items, timeout, alone)
        out_start = time.perf_counter_ns()
        payload = await offload(state, size, call.encode, results)
        scope.success(len(call.items), timing, time.perf_counter_ns() - out_start)
    return payload

