"""Row requests: the one-graph V2 binary requests of one event-loop turn, queued as one.

At 32 clients the event loop's own work per request sets the served latency (one core reads,
queues, encodes and answers every request of a batch in turn; benchmarks/results/server.md
§0e-§0l). Through the request core a request is a chain of objects — scope, flight, call,
decoded request, batcher request, completion, encoded answer — ~50 µs of Python each. Most
of them say the same thing for every request whose V2 header the server has seen before.

So once a header plan (:mod:`edgemp.runtime.server.header_plans`) has been answered through
the request core as one graph, with binary outputs, no per-request parameters and no queue
timeout, it keeps a :class:`RowPlan`: its response's JSON header and where each output's rows
go. A later request with that header (on the HTTP fast path) is a row: its graph (views of
its body, its values checked as :func:`~edgemp.runtime.server.layout.one_graph` checks them), its
connection and its read time, admitted (counted in flight) and appended to its model's list
of the turn. At the end of the turn the rows go to the batcher as one request that counts as
as many as it carries (its queue limit and early close count the rows), and come back as one
answer: each row's response is its plan's header and its output rows, its statistics are
recorded as the request core records them.

Anything else takes the request core. A row is admitted once and keeps that admission to its
answer, as the core's requests do (a drain finishes it), and where a group cannot answer it
the row is answered on its own as the core would answer it: a turn's lone row while nothing
else is in flight runs at once on the loop's thread (``Batcher.run_now``); rows a full queue
refuses as a group are queued one by one, each refused or taken as a request of the core's
would be; and when a group's batch fails, each row is checked alone (a malformed one gets the
same error) and the others run again, one by one, past the queue's limit, which took them
once already. The answers are the same bytes as the core's, errors included.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgemp.graph import Graph
from edgemp.runtime.server.state import outcome_of

if TYPE_CHECKING:
    from edgemp.runtime.server.served import ServedModel
    from edgemp.runtime.server.state import ServerState


logger = logging.getLogger(__name__)

OPEN_PARAMETERS = frozenset({"binary_data_output"})  # request-level parameters a row may carry


class RowPlan:
    """A plan's answer as rows: what its response holds before the outputs' bytes (V2's JSON
    header; gRPC's ModelInferResponse up to its raw contents), per output its level and width and
    what comes right before its bytes (nothing in V2; gRPC's field tag and length), and (HTTP,
    once a row used it) where its one graph lies in the body."""

    __slots__ = ("header", "outputs", "before", "layout")

    def __init__(self, header: bytes, outputs: tuple[tuple[str, bool, int], ...],
                 before: tuple[bytes, ...] | None = None) -> None:
        self.header = header
        self.outputs = outputs  # (name, node-level, width) in the answer's order
        self.before = before or (b"",) * len(outputs)
        self.layout: _Layout | None = None


class _Layout:
    """One-graph tensors at fixed offsets: the graph's views, its values checked as
    :func:`~edgemp.runtime.server.layout.one_graph` checks them (the shapes were, once)."""

    __slots__ = ("x", "edge_index", "edge_attr", "counts_at", "node_graph", "nodes", "edges")

    def __init__(self, tensors: tuple[tuple[str, np.dtype, int, tuple[int, ...]], ...], header_bytes: int) -> None:
        at = {name: (dtype, header_bytes + offset, shape) for name, dtype, offset, shape in tensors}
        self.x, self.edge_index, self.edge_attr = at["x"], at["edge_index"], at.get("edge_attr")
        self.nodes, self.edges = at["x"][2][0], at["edge_index"][2][1]
        self.counts_at = at["graph_node_counts"][1]
        start = at["node_graph"][1]
        self.node_graph = (start, start + 8 * self.nodes, bytes(8 * self.nodes))  # all zero for one graph

    def graph(self, body: bytes) -> Graph | None:
        """The graph, or None when a value is wrong (the request core then names it)."""
        c = self.counts_at
        start, stop, zeros = self.node_graph
        if self.nodes < 1 or int.from_bytes(body[c:c + 8], "little", signed=True) != self.nodes \
                or body[start:stop] != zeros:
            return None
        x, ei, ea = self.x, self.edge_index, self.edge_attr
        return Graph(x=np.ndarray(x[2], x[0], body, x[1]), edge_index=np.ndarray(ei[2], ei[0], body, ei[1]),
                     edge_attr=None if ea is None else np.ndarray(ea[2], ea[0], body, ea[1]))


def remember(memo: dict[str, Any], request: Any, outputs: list[tuple[str, np.ndarray, bool]],
             payload: bytes, header_length: int | None, levels: dict[str, str]) -> None:
    """Keep a :class:`RowPlan` in a header plan's ``memo`` after its request was answered
    through the request core, if later requests with that header can be rows."""
    if "rows" in memo or header_length is None or not memo.get("one_graph") or request.id is not None \
            or request.timeout_us is not None or not set(request.parameters or ()) <= OPEN_PARAMETERS:
        return
    if not outputs or not all(binary and value.dtype == np.float32 and value.ndim == 2
                              for _, value, binary in outputs):
        return
    memo["rows"] = RowPlan(payload[:header_length], tuple((name, levels.get(name, "graph") == "node", value.shape[1])
                                                          for name, value, _ in outputs))


class _Row:
    """One admitted row; ``done()`` and ``cancel()`` as the core's flight has them (a gRPC call
    reset by its client cancels it: out of flight at once, no outcome, its answer never written)."""

    __slots__ = ("group", "ended", "conn", "held", "route", "plan", "graph", "nodes", "edges", "start_ns",
                 "input_ns")

    def __init__(self, group: "RowGroups", conn: Any, held: int, route: Any, plan: RowPlan, graph: Any, nodes: int,
                 edges: int, start_ns: int, input_ns: int) -> None:
        self.group = group
        self.ended = False  # answered, failed or cancelled: nothing more happens to it
        self.conn = conn
        self.held = held  # body bytes the row holds in the reader's count until it ends
        self.route = route
        self.plan = plan
        self.graph = graph
        self.nodes, self.edges = nodes, edges
        self.start_ns = start_ns
        self.input_ns = input_ns

    def done(self) -> bool:
        return self.ended

    def cancel(self, msg: Any = None) -> None:
        """Its client went away: out of flight now, counted as nothing (its graph still runs if
        its batch does: a batch is not taken apart)."""
        if not self.ended:
            self.ended = True
            self.group.reader.release_bytes(self.held)
            self.group.state.leave()


class RowGroups:
    """One served model's rows of the current loop turn (see the module docstring); on the loop.

    A row is admitted once, in :meth:`take` (HTTP's :meth:`add` checks its body first; gRPC's
    rows come from :mod:`edgemp.runtime.server.grpc_rows`), and ends once: answered by
    ``respond(conn, route, payload, header_length)`` or failed by ``fail(conn, route, error)`` (the
    request core's error answer for it), counted in the statistics either way; or cancelled
    (its client reset a gRPC stream), counted as nothing.
    """

    def __init__(self, state: "ServerState", served: "ServedModel", reader: Any, loop: Any,
                 respond: Callable[[Any, Any, bytes, int], None], fail: Callable[[Any, Any, BaseException], None]) -> None:
        self.state = state
        self.served = served
        self.reader = reader
        self.loop = loop
        self.respond = respond
        self.fail = fail
        self.pending: list[_Row] = []
        self.scheduled = False
        budget = served.batcher.config
        self.budget = (budget.max_batch_graphs, budget.max_batch_nodes, budget.max_batch_edges)
        self.open = served.batcher.config.default_timeout_us == 0 and state.config.request_timeout_cap_us == 0

    def add(self, conn: Any, route: Any, body: bytes, header_bytes: int) -> bool:
        """Take a held, begun fast request as a row; False: it goes to the request core."""
        if not self.open or header_bytes <= 0:
            return False
        start = time.perf_counter_ns()
        plan = self.served.header_plans.known(body[:header_bytes], len(body) - header_bytes)
        if plan is None:
            return False
        rows = plan.memo.get("rows")
        if rows is None:
            return False
        layout = rows.layout
        if layout is None:
            layout = rows.layout = _Layout(plan.tensors, header_bytes)
        graph = layout.graph(body)
        if graph is None:  # the core names what is wrong
            return False
        self.take(conn, route, rows, graph, layout.nodes, layout.edges, start, len(body))
        return True

    def take(self, conn: Any, route: Any, plan: RowPlan, graph: Graph, nodes: int, edges: int, start_ns: int,
             held: int) -> _Row:
        """Admit a checked row (its graph's values as the core checks them; the caller took it
        only while not draining) into this turn's list; ``held``: bytes it releases when it ends.
        The row is its handle (``done()``, ``cancel()``)."""
        self.state.inflight += 1
        row = _Row(self, conn, held, route, plan, graph, nodes, edges, start_ns, time.perf_counter_ns() - start_ns)
        self.pending.append(row)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)
        return row

    def _flush(self) -> None:
        self.scheduled = False
        rows, self.pending = [row for row in self.pending if not row.ended], []
        if not rows:
            return
        if len(rows) == 1 and self.state.inflight == 1:
            self._run_alone(rows[0])  # alone in the server: run now, on this thread, as the core does
            return
        max_graphs, max_nodes, max_edges = self.budget
        group: list[_Row] = []
        nodes = edges = 0
        for row in rows:  # groups within the batch budget: the batcher runs a request whole
            n, e = row.nodes, row.edges
            if group and (len(group) == max_graphs or nodes + n > max_nodes or edges + e > max_edges):
                self._queue(group)
                group, nodes, edges = [], 0, 0
            group.append(row)
            nodes, edges = nodes + n, edges + e
        self._queue(group)

    def _run_alone(self, row: _Row) -> None:
        start = time.perf_counter_ns()
        try:
            done = self.served.batcher.run_now([row.graph])
        except Exception as error:  # noqa: BLE001 - malformed (checked there) or a failed run: its answer
            self._fail(row, error)
            return
        if done is None:  # something else came meanwhile: it batches
            self._queue([row])
            return
        results, timing = done
        self._answer([row], start, results, timing)

    def _queue(self, rows: list[_Row], accepted: bool = False) -> None:
        """Queue ``rows`` as one request; one by one if the queue cannot take them all (each as
        the core's request would be). ``accepted``: the queue took them before (a group that
        failed, run again row by row), so its limit does not refuse them now."""
        flushed = time.perf_counter_ns()
        try:
            self.served.queue([row.graph for row in rows], 0,
                              lambda results, error, timing: self._finish(rows, flushed, results, error, timing),
                              weight=len(rows), force=accepted)
        except Exception as error:  # noqa: BLE001 - a full queue, a closed batcher
            if len(rows) == 1:
                self._fail(rows[0], error)
                return
            for row in rows:
                if not row.ended:
                    self._queue([row], accepted)

    def _finish(self, rows: list[_Row], flushed: int, results: Any, error: BaseException | None, timing: Any) -> None:
        """The batcher's answer for a group, on the loop."""
        if error is None:
            self._answer(rows, flushed, results, timing)
        elif len(rows) == 1:
            self._fail(rows[0], error)  # checked and run alone: the error is its own
        else:
            self._split(rows)

    def _split(self, rows: list[_Row]) -> None:
        """A group whose batch failed: each row checked alone (a malformed one gets the error the
        batcher gives a request of its own), the others run again, each alone, so only the culprit fails."""
        validate = self.served.model.validate
        for row in rows:
            if row.ended:
                continue  # cancelled: nothing to answer
            try:
                validate([row.graph])
            except Exception as error:  # noqa: BLE001 - the check's own failure is an answer too
                self._fail(row, error)
                continue
            self._queue([row], accepted=True)

    def _answer(self, rows: list[_Row], flushed: int, results: Any, timing: Any) -> None:
        """Each row answered with its rows of the outputs, and accounted."""
        out_start = time.perf_counter_ns()
        try:
            payloads = self._payloads(rows, results)
        except Exception as error:  # noqa: BLE001 - never strand a row: each gets the error
            logger.exception("answering %d rows failed", len(rows))
            for row in rows:
                self._fail(row, error)
            return
        if any(row.ended for row in rows):  # cancelled meanwhile: counted as nothing, never written
            payloads = [p for row, p in zip(rows, payloads) if not row.ended]
            rows = [row for row in rows if not row.ended]
            if not rows:
                return
        queue_ns, compute_ns = timing.queue_ns, timing.compute_ns
        now = time.perf_counter_ns()  # each row's time ends here: its answer is written in this callback
        self.served.stats.record_successes([(now - row.start_ns, queue_ns + flushed - row.start_ns, row.input_ns)
                                            for row in rows], compute_ns, (now - out_start) // len(rows))
        self.reader.release_bytes(sum(row.held for row in rows))
        self.served.rows_answered += len(rows)
        state, respond = self.state, self.respond
        for row in rows:  # every row out of flight first: one answer that cannot be written strands no other
            row.ended = True
            state.leave()
        for row, payload in zip(rows, payloads):
            try:
                respond(row.conn, row.route, payload, len(row.plan.header))
            except Exception:  # noqa: BLE001 - its connection is this row's alone
                logger.exception("writing a V2 answer failed")

    def _fail(self, row: _Row, error: BaseException) -> None:
        """A row ends in ``error``, counted and answered as the request core counts and answers one."""
        if row.ended:
            return  # cancelled: counted as nothing, never answered
        row.ended = True
        self.served.stats.record_failure(outcome_of(error), time.perf_counter_ns() - row.start_ns)
        self.reader.release_bytes(row.held)
        self.state.leave()
        try:
            self.fail(row.conn, row.route, error)
        except Exception:  # noqa: BLE001 - its connection is this row's alone
            logger.exception("writing an error answer failed")

    def _payloads(self, rows: list[_Row], results: Any) -> list[bytes]:
        """Each row's answer: its plan's header, then before each output its plan's bytes for it
        and its rows of that output."""
        plan = rows[0].plan
        if len(rows) == 1:
            return [self._payload(plan, results)]
        tensors = results.tensors([name for name, _, _ in plan.outputs])
        columns = []
        for name, node_level, width in plan.outputs:
            data = np.ascontiguousarray(tensors[name], np.float32).tobytes()
            if node_level:
                ends = np.cumsum([row.nodes for row in rows]) * (4 * width)
                columns.append([data[a:b] for a, b in zip([0, *ends[:-1].tolist()], ends.tolist())])
            else:
                step = 4 * width
                columns.append([data[i * step:(i + 1) * step] for i in range(len(rows))])
        outputs, before = plan.outputs, plan.before
        if any(before):  # gRPC: each output's tag and length before its bytes
            columns = [[b + part for part in column] for b, column in zip(before, columns)]
        return [b"".join([row.plan.header, *(column[i] for column in columns)])
                if row.plan.outputs == outputs and row.plan.before == before
                else self._payload(row.plan, results[i : i + 1]) for i, row in enumerate(rows)]

    @staticmethod
    def _payload(plan: RowPlan, results: Any) -> bytes:
        """One row's answer from its own results (a lone row, or one whose plan asks for other
        outputs than its group's first)."""
        tensors = results.tensors([name for name, _, _ in plan.outputs])
        parts = [plan.header]
        for (name, _, _), before in zip(plan.outputs, plan.before):
            parts.append(before)
            parts.append(np.ascontiguousarray(tensors[name], np.float32).tobytes())
        return b"".join(parts)
