"""The request core: every inference request, whatever its protocol, takes this one path.

V2 HTTP (binary and JSON), ``/v1`` (graphs or texts) and gRPC differ only in how bytes
become a :class:`Call` and how results become bytes again; admission and draining,
decode → run → encode, the queue timeout and the statistics are written once, here::

    admit → read → decode (items validated once, by the batcher) → run → encode → account

Decoding and encoding run inline on the event loop for small bodies (microseconds) and in
a worker thread for large ones, so one big request does not stall everyone else.

The steps come in two shapes, side by side here: :func:`infer`, a coroutine that reads
the body itself (aiohttp's routes, large gRPC messages), and :func:`start`, plain callbacks
for a small body already read (the HTTP fast path, gRPC ModelInfer), which spares each request a task, three
coroutines and two futures: at 32 clients the event loop's time per request is what
bounds the tail (benchmarks/results/server.md §0e).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Optional, Protocol, Sequence, TypeVar

from edgemp.runtime.batcher import RequestTiming
from edgemp.runtime.server.served import ServedModel
from edgemp.runtime.server.state import RequestScope, ServerState

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
        timeout = _decoded(state, served, scope, call)
        alone = state.alone if size < state.config.offload_bytes else None
        results, timing = await served.run(call.items, timeout, alone)
        out_start = time.perf_counter_ns()
        payload = await offload(state, size, call.encode, results)
        scope.success(len(call.items), timing, time.perf_counter_ns() - out_start)
    return payload


def _decoded(state: ServerState, served: ServedModel, scope: RequestScope, call: Call) -> int:
    """A request is decoded: its input time is taken; its effective queue timeout."""
    scope.input_ns = time.perf_counter_ns() - scope.start_ns
    return effective_timeout_us(call.timeout_us, served.source.batcher.default_timeout_us,
                                state.config.request_timeout_cap_us)


# answer(payload, None) once the request ran, or answer(None, error) when it failed.
Answer = Callable[[Any, Optional[BaseException]], None]


def expire(work: "_Flight | asyncio.Task", error: Exception) -> None:
    """End a request started by :func:`start` (its flight) or :func:`infer` (a task running it)
    as a failure of ``error``, counted in the statistics, without answering it: the caller
    answers (a gRPC call whose deadline passed gets DEADLINE_EXCEEDED). A plain cancel would
    count it as nothing, as for a client that went away."""
    if isinstance(work, _Flight):
        work.expire(error)
    else:
        work.cancel(error)  # RequestScope records a cancellation that carries an error as that failure


def start(state: ServerState, served: ServedModel, data: bytes, decode: Callable[[bytes], Call[T]],
          answer: Answer) -> "_Flight | None":
    """:func:`infer` without a coroutine, for a small body already read: ``answer`` is called
    exactly once on the event loop, with the encoded payload or with the request's error —
    unless the request is cancelled first (its client went away): the returned flight's
    ``cancel()`` is then the request's end, and ``answer`` is never called.

    The same steps as :func:`infer` (admission, decode, limits, the lone-request inline
    run, the batcher, encode, statistics), with no task, coroutine or future per request:
    the HTTP fast path (:mod:`edgemp.runtime.server.fastpath`) serves each request from
    two plain callbacks, this one and the batcher's answer. Decoding and encoding run
    inline, so ``data`` must be under ``offload_bytes`` (larger bodies take :func:`infer`).
    Must be called on the serving event loop.
    """
    try:
        scope = state.admit(served)
    except Exception as error:  # noqa: BLE001 - draining: answered, never raised
        answer(None, error)
        return None
    flight = _Flight(state, served, scope, answer)
    flight.begin(data, decode)
    return flight


class _Flight:
    """One request on :func:`start`'s path, from admission to its one answer (or its cancel).

    ``done()`` and ``cancel()`` as a task has them, so a protocol can hold either: a
    cancelled request leaves the in-flight count at once, is not counted as a success or a
    failure (as a cancelled :func:`infer`), and its results, if it still runs, are dropped.
    """

    __slots__ = ("state", "served", "scope", "answer", "call", "timeout", "ended")

    def __init__(self, state: ServerState, served: ServedModel, scope: RequestScope, answer: Answer) -> None:
        self.state = state
        self.served = served
        self.scope = scope
        self.answer = answer
        self.call: Call | None = None
        self.timeout = 0
        self.ended = False  # answered or cancelled: nothing more happens

    def done(self) -> bool:
        return self.ended

    def cancel(self) -> None:
        if not self.ended:
            self.ended = True
            error = asyncio.CancelledError()
            self.scope.__exit__(type(error), error, None)  # the client went away: out of flight, no outcome

    def expire(self, error: BaseException) -> None:
        """End the request as a failure of ``error`` without answering it: its protocol answers
        by itself (a gRPC deadline that passed). Its results, if it still runs, are dropped."""
        if not self.ended:
            self.ended = True
            self.scope.__exit__(type(error), error, None)

    def begin(self, data: bytes, decode: Callable[[bytes], Call]) -> None:
        try:
            call = self.call = decode(data)
            self.timeout = _decoded(self.state, self.served, self.scope, call)
            self.served.check_limits(call.items)
            if self.state.alone():
                # As ServedModel.run: after one loop turn, so requests that arrived together
                # admit themselves first and batch instead of queueing behind an inline run.
                asyncio.get_running_loop().call_soon(self.run_alone)
            else:
                self.served.queue(call.items, self.timeout, self.finish)
        except Exception as error:  # noqa: BLE001 - every failure is the request's answer
            self.fail(error)

    def run_alone(self) -> None:
        if self.ended:
            return
        try:
            done = self.served.batcher.run_now(self.call.items) if self.state.alone() else None
            if done is None:
                self.served.queue(self.call.items, self.timeout, self.finish)
                return
        except Exception as error:  # noqa: BLE001
            self.fail(error)
            return
        self.finish(done[0], None, done[1])  # outside the try: a failure past the answer is not a second answer

    def finish(self, results: list | None, error: BaseException | None, timing: RequestTiming | None) -> None:
        """The batcher's answer (on the loop): encode, account, answer."""
        if self.ended:
            return
        if error is not None:
            self.fail(error)
            return
        try:
            out_start = time.perf_counter_ns()
            payload = self.call.encode(results)
            self.scope.success(len(self.call.items), timing, time.perf_counter_ns() - out_start)
        except Exception as failure:  # noqa: BLE001
            self.fail(failure)
            return
        self.ended = True
        self.scope.__exit__(None, None, None)
        self.answer(payload, None)

    def fail(self, error: BaseException) -> None:
        if self.ended:
            return
        self.ended = True
        self.scope.__exit__(type(error), error, None)  # the failure outcome, and out of flight
        self.answer(None, error)
