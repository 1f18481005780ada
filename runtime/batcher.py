"""Dynamic batching of graph requests for a :class:`~edgemp.runtime.model.Model`.

Many small graphs run far faster as one disjoint-union batch than one by one, but a
server receives them from independent callers. :class:`Batcher` queues requests, and a
single worker thread forms batches in arrival order up to a graph / node / edge budget or
until the oldest request has waited ``max_queue_delay_us`` (Triton's dynamic batcher
semantics), runs them once, and resolves each caller's future with exactly its own rows.
A caller that knows how many requests can be outstanding at most (the server: one per open
HTTP/1.1 connection) lets a batch close before the delay once every one of them is queued,
since waiting longer cannot fill it (:attr:`Batcher.most_outstanding`).

Requests are validated in :meth:`Batcher.submit`, so a malformed graph is rejected to its
caller and never reaches a batch. If a batch still fails, its requests are re-run one by
one so only the culprit fails.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from edgemp.errors import EdgempError, QueueFullError, RequestTimeoutError, ShuttingDownError
from edgemp.graph import Graph, GraphBatch, collate
from edgemp.runtime.batch_outputs import BatchSlice
from edgemp.runtime.model import Model

logger = logging.getLogger(__name__)

RECENT_SAMPLES = 1024  # per-series ring size in stats snapshots (for histograms/percentiles)


@dataclass(frozen=True)
class BatcherConfig:
    """Batch budget and queue limits. ``default_timeout_us=0`` means requests never time out.

    Raise ``max_queue_delay_us`` under heavy open-loop load to trade latency for bigger batches.
    """

    max_batch_graphs: int = 64
    max_batch_nodes: int = 4096
    max_batch_edges: int = 8192
    # 0 = greedy, Triton's default: take whatever queued while the last batch ran.
    # Measured here (benchmarks/bench_batcher.py): 0 beat 500 µs at concurrency 1/8/32,
    # because closed-loop clients cannot fill a batch while they wait for their answer. The
    # server closes a batch early once every open connection's request is queued
    # (Batcher.most_outstanding), so a delay costs its closed-loop clients nothing.
    max_queue_delay_us: int = 0
    max_queue_size: int = 1024  # requests waiting, not graphs
    default_timeout_us: int = 0

    def __post_init__(self) -> None:
        for name in ("max_batch_graphs", "max_batch_nodes", "max_batch_edges", "max_queue_size"):
            if getattr(self, name) < 1:
                raise EdgempError(f"BatcherConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_queue_delay_us", "default_timeout_us"):
            if getattr(self, name) < 0:
                raise EdgempError(f"BatcherConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RequestTiming:
    """Where one request's time went. ``compute_ns`` is its whole batch's run time."""

    queue_ns: int
    compute_ns: int
    batch_graphs: int
    batch_nodes: int


class BatchFuture(Future):
    """A Future for one request; ``timing`` is set before the result is, once it ran."""

    timing: RequestTiming | None = None


# on_complete(outcome, timing): outcome is "success", "failed", "timed_out", "rejected", or "invalid"
# for a request whose graphs the worker found malformed (submit_callback(check_in_batch=True)).
CompletionHook = Callable[[str, "RequestTiming | None"], None]
# done(results, error, timing): how a request submitted with submit_callback is answered,
# on the thread that finished it: (results, None, timing) or (None, error, None).
Done = Callable[[Optional[list], Optional[BaseException], Optional[RequestTiming]], None]
# on_batch(items, nodes, compute_ns): once per executed batch, on the thread that ran it.
BatchHook = Callable[[int, int, int], None]


@dataclass(frozen=True)
class BatcherStats:
    """Snapshot of counters since start; ``recent_*`` are the last samples (ns / sizes).

    Queue and compute totals are per request (a request's compute time is its batch's), as
    Triton's cumulative duration metrics are; ``batches`` counts model runs.
    """

    succeeded: int
    rejected: int  # queue full or shutting down
    invalid: int  # failed validation at submit
    timed_out: int
    failed: int
    queue_ns_total: int
    queue_count: int
    compute_ns_total: int
    compute_count: int
    batches: int
    batch_graphs_total: int
    batch_nodes_total: int
    queue_depth: int  # requests waiting now
    queue_graphs: int  # graphs waiting now
    recent_queue_ns: tuple[int, ...] = ()
    recent_compute_ns: tuple[int, ...] = ()
    recent_batch_graphs: tuple[int, ...] = ()
    recent_batch_nodes: tuple[int, ...] = ()


class _Request:
    """One queued request: its graphs, and a future or a callback to answer it with."""

    __slots__ = ("graphs", "future", "done", "unchecked", "enqueued_ns", "deadline_ns", "nodes", "edges", "weight")

    def __init__(self, graphs: list[Graph], future: BatchFuture | None, done: Done | None, enqueued_ns: int,
                 deadline_ns: int | None, unchecked: bool = False, weight: int = 1) -> None:
        self.graphs = graphs
        self.weight = weight  # the callers' requests it carries (the server's row groups: one per graph)
        self.future = future
        self.done = done
        self.unchecked = unchecked  # validated by the worker, with its batch
        self.enqueued_ns = enqueued_ns
        self.deadline_ns = deadline_ns
        if len(graphs) == 1:  # the common server request: no generator per count
            self.nodes, self.edges = graphs[0].num_nodes, graphs[0].num_edges
        else:
            self.nodes = sum(g.num_nodes for g in graphs)
            self.edges = sum(g.num_edges for g in graphs)

    def takes_part(self) -> bool:
        """Mark a future-backed request running; False if its caller cancelled it while queued."""
        return self.future is None or self.future.set_running_or_notify_cancel()


class _Counters:
    """Mutable counters behind :class:`BatcherStats`; guarded by the batcher's lock."""

    def __init__(self) -> None:
        self.outcomes = collections.Counter()
        self.queue_ns = self.queue_count = self.compute_ns = self.compute_count = 0
        self.batches = self.batch_graphs = self.batch_nodes = 0
        self.recent = {k: collections.deque(maxlen=RECENT_SAMPLES) for k in ("queue", "compute", "graphs", "nodes")}


class Batcher:
    """Queue graph requests from many threads; run them in dynamic batches on one worker.

    Use as a context manager, or call :meth:`close`. ``on_complete`` is called on the
    worker thread for every finished request (and on the caller's thread for rejections);
    ``on_batch`` once per executed batch. Both must be quick; their exceptions are logged,
    never propagated.
    """

    checks_in_batch = True  # submit_callback(check_in_batch=True) validates graphs in the worker

    def __init__(self, model: Model, config: BatcherConfig | None = None, on_complete: CompletionHook | None = None,
                 on_batch: BatchHook | None = None):
        self.model = model
        self.config = config or BatcherConfig()
        self._on_complete = on_complete
        self._on_batch = on_batch
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_graphs = 0
        self._queued = 0  # callers' requests waiting: the queue's requests, each by its weight
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # a batch is running (on the worker, or inline in run_now)
        self._busy_since_ns = 0  # when it started (read without the lock: one int)
        # The most requests that can be outstanding at once, or None when unknown; set by
        # the server (its open HTTP/1.1 connections carry one request each). Read on the
        # worker thread: it must be quick and must not raise.
        self.most_outstanding: Callable[[], int | None] | None = None
        self._counters = _Counters()
        self._worker = threading.Thread(target=self._run, name="edgemp-batcher", daemon=True)
        self._worker.start()

    # -- caller side --------------------------------------------------------------------
    def submit(self, graphs: Sequence[Graph], timeout_us: int | None = None, *, wake: bool = True) -> BatchFuture:
        """Queue ``graphs`` as one request; the future resolves to one output dict per graph.

        Raises at once (nothing queued) :class:`GraphValidationError` for a bad graph,
        :class:`QueueFullError` when ``max_queue_size`` requests wait, and
        :class:`ShuttingDownError` after :meth:`close`. ``timeout_us`` (default from the
        config; 0 = none) bounds the time in the queue: past it the future fails with
        :class:`RequestTimeoutError` and the graphs are not run. ``wake=False`` leaves the
        worker asleep until :meth:`wake`, so a caller that queues many requests at once (an
        event loop turn's worth) hands the worker one batch instead of a trickle of small ones.
        """
        checked = self._admit(graphs)
        future = BatchFuture()
        if not checked:
            future.set_result([])
            return future
        self._enqueue(checked, future, None, timeout_us, wake)
        return future

    def submit_callback(self, graphs: Sequence[Graph], done: Done, timeout_us: int | None = None, *,
                        wake: bool = True, check_in_batch: bool = False, weight: int = 1, force: bool = False) -> None:
        """As :meth:`submit`, but answered by calling ``done(results, error, timing)`` on the
        worker's thread instead of through a future: ``(results, None, timing)`` once it ran,
        ``(None, error, None)`` if it failed, timed out in the queue or (``check_in_batch``)
        was malformed. Raises as :meth:`submit` does, and then ``done`` is never called.

        For a caller that hands results on by itself (the server, to its event loop): no
        future, condition or lock per request. ``done`` must be quick and must not raise.

        ``check_in_batch`` leaves the graphs' validation to the worker, once over the whole
        batch (:func:`edgemp.graph.collate_valid`): graph by graph, the checks cost the
        submitting thread more than the model's own run of a small molecule. A malformed
        request is then answered with the same :class:`GraphValidationError` through
        ``done``, and never runs with the others.

        ``weight``: how many of its callers' requests this one carries (the server queues a
        loop turn's one-graph requests as one, :mod:`edgemp.runtime.server.rows`). The queue's
        size limit and :attr:`most_outstanding` count those, not the one. ``force``: the queue
        took these requests before (a group that failed, run again one by one): its size limit
        does not refuse them now.
        """
        # Only with room in the queue: a request that cannot be queued is validated first, so a
        # malformed one gets its 400, not a retryable 503 it would only be refused again after.
        if check_in_batch and self.checks_in_batch and graphs and not self._closed \
                and (force or self._queued + weight <= self.config.max_queue_size):
            try:
                self._enqueue(list(graphs), None, done, timeout_us, wake, unchecked=True, weight=weight, force=force)
                return
            except (AttributeError, TypeError, IndexError):  # not even shaped like graphs: the checks name why
                pass
        checked = self._admit(graphs)
        if not checked:
            done([], None, RequestTiming(0, 0, 0, 0))
            return
        self._enqueue(checked, None, done, timeout_us, wake, weight=weight, force=force)

    def _enqueue(self, checked: list, future: BatchFuture | None, done: Done | None, timeout_us: int | None,
                 wake: bool, unchecked: bool = False, weight: int = 1, force: bool = False) -> None:
        timeout_us = self.config.default_timeout_us if timeout_us is None else timeout_us
        if timeout_us < 0:
            raise EdgempError(f"timeout_us must be >= 0 (0 = no timeout), got {timeout_us}")
        now = time.perf_counter_ns()
        req = _Request(checked, future, done, now, now + timeout_us * 1000 if timeout_us > 0 else None, unchecked,
                       weight)
        with self._cond:
            if self._closed:
                full = "closed"
            elif not force and self._queued + weight > self.config.max_queue_size:
                full = "full"
            else:
                full = ""
                self._queue.append(req)
                self._queue_graphs += len(checked)
                self._queued += weight
                if wake:
                    self._cond.notify()
        if full == "closed":
            self._reject("rejected")
            raise ShuttingDownError("the batcher is shutting down and accepts no new requests")
        if full:
            self._reject("rejected")
            raise QueueFullError(
                f"batcher queue is full ({self.config.max_queue_size} requests waiting); retry later"
            )

    def _admit(self, graphs: Sequence[Graph]) -> list:
        if self._closed:
            self._reject("rejected")
            raise ShuttingDownError("the batcher is shutting down and accepts no new requests")
        try:
            return self.model.validate(graphs)
        except EdgempError:
            self._count("invalid")
            raise

    def run_now(self, graphs: Sequence[Graph]) -> tuple[list[dict[str, np.ndarray]], RequestTiming] | None:
        """Run ``graphs`` on the calling thread if nothing is queued or running; else None.

        The no-wait path for a lone request: it skips the two thread hand-offs (to the
        worker and back) that dominate a small request's latency at low load, yet counts
        as one batch, so statistics are the queue's own. Under load the queue is rarely
        empty and requests batch as usual. With ``max_queue_delay_us`` set, a request waits
        for a fuller batch by design, so this declines, unless :attr:`most_outstanding`
        says no other request can come. Raises as :meth:`submit` does. On None nothing was
        validated or counted: :meth:`submit` the graphs instead.
        """
        with self._cond:
            waits = self.config.max_queue_delay_us and not self._none_can_join(1)
            if self._queue or self._busy or self._closed or waits:
                return None
            self._busy_since_ns = time.perf_counter_ns()  # before _busy: running_for_s reads them in the other order
            self._busy = True
        try:
            start = time.perf_counter_ns()
            one = self._run_one(graphs)
            if one is not None:
                results, size, nodes = one, 1, graphs[0].x.shape[0]
            else:
                checked = self._admit(graphs)
                start = time.perf_counter_ns()
                if not checked:
                    return [], RequestTiming(0, 0, 0, 0)
                try:
                    results, size, nodes = self._run_items(checked)
                except Exception:
                    self._count("failed")
                    raise
            timing = RequestTiming(0, time.perf_counter_ns() - start, size, nodes)
            self._count_success(timing)
            self._record_batch(size, nodes, timing.compute_ns)
            self._notify("success", timing)
            return results, timing
        finally:
            with self._cond:
                self._busy = False
                if self._queue or self._closed:
                    self._cond.notify_all()

    def wake(self) -> None:
        """Let the worker see requests submitted with ``wake=False``.

        A busy worker needs no wake-up: it looks at the queue, under the lock, right after
        it clears ``_busy``, so it finds what was queued before this read. Skipping the
        lock then matters under load: the event loop contending for it with the worker's
        per-request bookkeeping cost ~18% of the loop's time at 32 clients.
        """
        if self._busy:
            return
        with self._cond:
            self._cond.notify()

    def running_for_s(self) -> float:
        """How long the batch running now has run (0.0 when none is): a model call that never
        returns (a hung GPU, a deadlock in native code) shows here, and nowhere else."""
        if not self._busy:  # first: a start time read after it is this batch's or a later one's
            return 0.0
        return (time.perf_counter_ns() - self._busy_since_ns) / 1e9

    def predict(self, graphs: Sequence[Graph], timeout_us: int | None = None) -> list[dict[str, np.ndarray]]:
        """Blocking convenience: submit and wait for the result."""
        return self.submit(graphs, timeout_us).result()

    def stats(self) -> BatcherStats:
        with self._cond:
            c = self._counters
            return BatcherStats(
                succeeded=c.outcomes["success"], rejected=c.outcomes["rejected"], invalid=c.outcomes["invalid"],
                timed_out=c.outcomes["timed_out"], failed=c.outcomes["failed"],
                queue_ns_total=c.queue_ns, queue_count=c.queue_count,
                compute_ns_total=c.compute_ns, compute_count=c.compute_count,
                batches=c.batches, batch_graphs_total=c.batch_graphs, batch_nodes_total=c.batch_nodes,
                queue_depth=self._queued, queue_graphs=self._queue_graphs,
                recent_queue_ns=tuple(c.recent["queue"]), recent_compute_ns=tuple(c.recent["compute"]),
                recent_batch_graphs=tuple(c.recent["graphs"]), recent_batch_nodes=tuple(c.recent["nodes"]),
            )

    @property
    def queue_depth(self) -> int:
        """Requests waiting now (no lock: a gauge read, as cheap as the scrape that wants it)."""
        return self._queued

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; run (``drain``) or fail everything queued; join the worker."""
        with self._cond:
            self._closed = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
                self._queue_graphs = 0
                self._queued = 0
            self._cond.notify_all()
        for req in dropped:
            if not self._answered_invalid(req):
                self._finish_error(req, ShuttingDownError("the batcher shut down before this request ran"), "rejected")
        self._worker.join(timeout)

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch, expired = self._next_batch()
            for req in expired:
                if self._answered_invalid(req):  # malformed is its answer, not the timeout
                    continue
                self._finish_error(req, RequestTimeoutError(
                    f"request waited {(time.perf_counter_ns() - req.enqueued_ns) // 1000} us in the queue, "
                    "past its timeout; it was not run"), "timed_out")
            if batch is None:
                return
            if batch:
                try:
                    self._execute(batch)
                finally:
                    with self._cond:
                        self._busy = False

    def _next_batch(self) -> tuple[list[_Request] | None, list[_Request]]:
        """Block until a batch is due; returns (batch or None when closed and empty, expired)."""
        cfg = self.config
        delay_ns = cfg.max_queue_delay_us * 1000
        with self._cond:
            while True:
                while (not self._queue or self._busy) and not self._closed:
                    self._cond.wait()
                while self._busy:  # closing while an inline run finishes
                    self._cond.wait()
                if not self._queue:
                    return None, []
                now = time.perf_counter_ns()
                expired = [r for r in self._queue if r.deadline_ns is not None and r.deadline_ns <= now]
                if expired:
                    for r in expired:
                        self._queue.remove(r)
                        self._queue_graphs -= len(r.graphs)
                        self._queued -= r.weight
                    return [], expired
                take, full = self._fit()
                flush_at = self._queue[0].enqueued_ns + delay_ns
                if full or self._closed or now >= flush_at or self._none_can_join(self._queued):
                    batch = [self._queue.popleft() for _ in range(take)]
                    self._queue_graphs -= sum(len(r.graphs) for r in batch)
                    self._queued -= sum(r.weight for r in batch)
                    self._busy_since_ns = now  # before _busy (see running_for_s)
                    self._busy = True
                    return batch, []
                wake = min([flush_at] + [r.deadline_ns for r in self._queue if r.deadline_ns is not None])
                self._cond.wait(max(wake - now, 0) / 1e9)

    def _none_can_join(self, outstanding: int) -> bool:
        """Whether no further request can arrive while ``outstanding`` ones wait: every
        sender :attr:`most_outstanding` knows of has one here (a delay cannot fill the batch)."""
        most_outstanding = self.most_outstanding
        if most_outstanding is None:
            return False
        try:
            most = most_outstanding()
        except Exception:  # noqa: BLE001 - a broken hint only costs the delay
            logger.exception("most_outstanding failed; batches wait for their delay")
            self.most_outstanding = None
            return False
        return most is not None and outstanding >= most

    def _fit(self) -> tuple[int, bool]:
        """How many head-of-queue requests fit the budget, and whether the batch is full.

        The first request always fits (an oversized request runs alone); we never skip
        ahead of a request that does not fit, so arrival order is kept.
        """
        cfg = self.config
        graphs = nodes = edges = take = 0
        for req in self._queue:
            g, n, e = graphs + len(req.graphs), nodes + req.nodes, edges + req.edges
            if take and (g > cfg.max_batch_graphs or n > cfg.max_batch_nodes or e > cfg.max_batch_edges):
                return take, True
            graphs, nodes, edges, take = g, n, e, take + 1
        full = graphs >= cfg.max_batch_graphs or nodes >= cfg.max_batch_nodes or edges >= cfg.max_batch_edges
        return take, full

    def _run_one(self, items: Sequence) -> "BatchSlice | None":
        """A lone graph through the model's shortcut (:meth:`Model.run_one`), unvalidated and
        uncounted so far; None when it does not apply: validate, collate, run and split it."""
        run_one = getattr(self.model, "run_one", None)
        if run_one is None or len(items) != 1 or type(items[0]) is not Graph:
            return None
        try:
            return run_one(items[0])
        except Exception:
            self._count("failed")
            raise

    def _run_items(self, items: list, batch: "GraphBatch | None" = None) -> tuple[list[dict[str, np.ndarray]], int, int]:
        """Run one batch (``batch``: ``items`` already collated): per-item outputs, plus its
        size (items, nodes) for statistics.

        The one place that knows what an item is; :class:`TextBatcher` runs texts here.
        """
        if batch is None:
            batch = collate(items)
        return self.model.split(self.model.run_batch(batch), batch), batch.num_graphs, batch.num_nodes

    def _checked(self, requests: list[_Request]) -> tuple[list[_Request], "GraphBatch | None"]:
        """The batch's requests with their graphs validated (and collated, when all are valid).

        One batch-wide check (:meth:`Model.validated_batch`); if it fails, or the model has
        none, each unchecked request is checked alone, and a malformed one is answered with
        its error and left out. Never raises: every request is either kept or answered.
        """
        items = [g for r in requests for g in r.graphs]
        validated_batch = getattr(self.model, "validated_batch", None)
        try:
            if validated_batch is None:
                raise EdgempError("no batch-wide check: check request by request")
            conformed, batch = validated_batch(items)
        except Exception:  # noqa: BLE001 - a bad graph, or the check itself failed: request by request
            return [r for r in requests if not self._answered_invalid(r)], None
        pos = 0
        for req in requests:
            k = len(req.graphs)
            req.graphs, req.unchecked, pos = conformed[pos : pos + k], False, pos + k
        return requests, batch

    def _answered_invalid(self, req: _Request) -> bool:
        """Validate an unchecked request alone; True if that answered it (malformed, or the
        check itself failed), False if it is valid now (or was checked at submit)."""
        if not req.unchecked:
            return False
        try:
            req.graphs, req.unchecked = self.model.validate(req.graphs), False
        except EdgempError as e:
            self._finish_error(req, e, "invalid")
            return True
        except Exception as e:  # noqa: BLE001 - the worker must survive anything a check raises
            logger.warning("validating a request of %d item(s) failed: %s", len(req.graphs), e)
            self._finish_error(req, e, "failed")
            return True
        return False

    def _execute(self, requests: list[_Request]) -> None:
        requests = [r for r in requests if r.takes_part()]
        if not requests:
            return
        start = time.perf_counter_ns()
        batch = None
        if any(r.unchecked for r in requests):  # in the batch's compute: it is the batch's collation too
            requests, batch = self._checked(requests)
            if not requests:
                return
        try:
            items = [g for r in requests for g in r.graphs]
            results, size, nodes = self._run_items(items, batch)
        except Exception as e:  # noqa: BLE001 - the worker must survive any model failure
            if len(requests) == 1:
                logger.warning("request of %d item(s) failed: %s", len(requests[0].graphs), e)
                self._finish_error(requests[0], e, "failed")
                return
            logger.warning("batch of %d requests failed (%s); re-running them one by one", len(requests), e)
            for req in requests:
                self._execute_alone(req)
            return
        compute_ns = time.perf_counter_ns() - start
        timings = [RequestTiming(start - req.enqueued_ns, compute_ns, size, nodes) for req in requests]
        self._count_successes(timings, [req.weight for req in requests])  # one lock for the batch
        pos = 0
        for req, timing in zip(requests, timings):
            k = len(req.graphs)
            self._answer(req, results[pos : pos + k], timing)
            pos += k
        self._record_batch(size, nodes, compute_ns)

    def _execute_alone(self, req: _Request) -> None:
        start = time.perf_counter_ns()
        if self._answered_invalid(req):  # never run a graph nobody validated
            return
        try:
            results, size, nodes = self._run_items(req.graphs)
        except Exception as e:  # noqa: BLE001 - isolate the failing request, keep the worker alive
            logger.warning("request of %d item(s) failed alone: %s", len(req.graphs), e)
            self._finish_error(req, e, "failed")
            return
        timing = RequestTiming(start - req.enqueued_ns, time.perf_counter_ns() - start, size, nodes)
        self._finish_ok(req, results, timing)
        self._record_batch(size, nodes, timing.compute_ns)

    # -- bookkeeping --------------------------------------------------------------------
    def _count_success(self, timing: RequestTiming) -> None:
        self._count_successes([timing])

    def _count_successes(self, timings: list[RequestTiming], weights: list[int] | None = None) -> None:
        """Each timing is one queued request's; ``weights``: the callers' requests each carried."""
        with self._cond:
            c = self._counters
            queue, compute = c.recent["queue"], c.recent["compute"]
            for timing, weight in zip(timings, weights or [1] * len(timings)):
                c.outcomes["success"] += weight
                c.queue_count += weight
                c.compute_count += weight
                c.queue_ns += timing.queue_ns * weight
                c.compute_ns += timing.compute_ns * weight
                queue.append(timing.queue_ns)
                compute.append(timing.compute_ns)

    def _finish_ok(self, req: _Request, result: list[dict[str, np.ndarray]], timing: RequestTiming) -> None:
        self._count_success(timing)
        self._answer(req, result, timing)

    def _answer(self, req: _Request, result: list[dict[str, np.ndarray]], timing: RequestTiming) -> None:
        """Hand a counted success to its caller."""
        if req.done is not None:
            self._call_done(req.done, result, None, timing)
        else:
            req.future.timing = timing
            req.future.set_result(result)
        self._notify("success", timing)

    def _finish_error(self, req: _Request, error: BaseException, outcome: str) -> None:
        self._count(outcome)
        if req.done is not None:
            self._call_done(req.done, None, error, None)
        else:
            if req.future.done() or (outcome != "failed" and not req.future.set_running_or_notify_cancel()):
                return  # cancelled by its caller while queued
            req.future.set_exception(error)
        self._notify(outcome, None)

    @staticmethod
    def _call_done(done: Done, result: list | None, error: BaseException | None, timing: RequestTiming | None) -> None:
        try:
            done(result, error, timing)
        except Exception:  # noqa: BLE001 - a caller's callback must never stop the worker
            logger.exception("batcher completion callback failed")

    def _record_batch(self, graphs: int, nodes: int, compute_ns: int) -> None:
        with self._cond:
            c = self._counters
            c.batches += 1
            c.batch_graphs += graphs
            c.batch_nodes += nodes
            c.recent["graphs"].append(graphs)
            c.recent["nodes"].append(nodes)
        if self._on_batch is not None:
            try:
                self._on_batch(graphs, nodes, compute_ns)
            except Exception:  # noqa: BLE001 - a metrics hook must never break serving
                logger.exception("batcher on_batch hook failed")

    def _count(self, outcome: str) -> None:
        with self._cond:
            self._counters.outcomes[outcome] += 1

    def _reject(self, outcome: str) -> None:
        self._count(outcome)
        self._notify(outcome, None)

    def _notify(self, outcome: str, timing: RequestTiming | None) -> None:
        if self._on_complete is None:
            return
        try:
            self._on_complete(outcome, timing)
        except Exception:  # noqa: BLE001 - a metrics hook must never break serving
            logger.exception("batcher on_complete hook failed")
