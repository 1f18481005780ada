"""gRPC ModelInfer calls as rows (:mod:`edgemp.runtime.server.rows`), as the HTTP fast path takes V2 ones.

A call whose message matched a plan (:mod:`edgemp.runtime.server.grpc_plans`) that the request
core has answered once as one graph, with no id, no parameters and no queue timeout, answers
with the same ModelInferResponse bytes every time but for the outputs' values: the response up
to its raw contents, then per output its field tag and length and its bytes. Such a plan keeps
a :class:`~edgemp.runtime.server.rows.RowPlan` of those parts, and a later call on it (with no
``grpc-timeout``: a deadline is the core's to enforce) is a row: its graph is views of the
message, its values checked as :func:`~edgemp.runtime.server.layout.one_graph` checks them, and it
joins its model's rows of the loop turn. Everything else, and a row whose values the check
refuses, takes the request core, so errors stay the core's.

A row's answer goes to the call's ``answer`` callback (the stream's). A stream reset, or a lost
connection, cancels the row as it cancels the core's flight: out of flight at once, counted as
nothing, its answer never written (its graph still runs if its batch does).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import numpy as np

from edgemp.graph import Graph
from edgemp.runtime.server.grpc_wire import raw_output_prefix
from edgemp.runtime.server.protocol import InferRequest
from edgemp.runtime.server.rows import RowGroups, RowPlan


def remember(memo: dict[str, Any], request: InferRequest, outputs: list[tuple[str, str, np.ndarray]],
             payload: bytes, levels: dict[str, str]) -> None:
    """Keep a RowPlan in a plan's ``memo`` once the core answered its call with ``payload``
    (``outputs``: name, datatype, array as encoded), if later calls on the plan can be rows."""
    if "rows" in memo or not memo.get("one_graph") or request.id is not None or request.timeout_us is not None \
            or request.parameters:
        return
    if not outputs or not all(datatype == "FP32" and value.dtype == np.float32 and value.ndim == 2
                              for _, datatype, value in outputs):
        return
    before = tuple(raw_output_prefix(value.nbytes) for _, _, value in outputs)
    tail = sum(len(b) + value.nbytes for b, (_, _, value) in zip(before, outputs))
    header = payload[:len(payload) - tail]
    if b"".join([header, *(part for b, (_, _, v) in zip(before, outputs) for part in (b, v.tobytes()))]) != payload:
        return  # not the layout rows write (cannot happen for encode_response's bytes; never guessed)
    memo["rows"] = RowPlan(header, tuple((name, levels.get(name, "graph") == "node", value.shape[1])
                                         for name, _, value in outputs), before)


def _graph(inputs: dict[str, np.ndarray]) -> Graph | None:
    """A planned one-graph call's graph (views), or None where the core would refuse a value.
    Its shapes are its plan's, which passed the core's shape checks once."""
    x, counts, node_graph = inputs["x"], inputs.get("graph_node_counts"), inputs.get("node_graph")
    n = x.shape[0]
    if counts is None or node_graph is None or n < 1 or int(counts[0]) != n or node_graph.shape[0] != n \
            or np.count_nonzero(node_graph):
        return None
    return Graph(x=x, edge_index=inputs["edge_index"], edge_attr=inputs.get("edge_attr"))


class _NothingHeld:
    """The gRPC handler holds a call's message bytes until its stream closes: a row holds none."""

    @staticmethod
    def release_bytes(n: int) -> None:
        pass


def _respond(answer: Callable[[Any, Any], None], route: Any, payload: bytes, header_length: int) -> None:
    answer(payload, None)


def _fail(answer: Callable[[Any, Any], None], route: Any, error: BaseException) -> None:
    answer(None, error)


class GrpcRows:
    """The gRPC service's rows, one :class:`RowGroups` per served model; on the event loop."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._groups: dict[str, RowGroups] = {}

    def take(self, served: Any, request: InferRequest, answer: Callable[[Any, Any], None]) -> Any:
        """Take a planned call as a row: its handle (``done()``, ``cancel()``: a reset stream
        cancels it, as it cancels the core's flight); ``answer`` follows once its batch ran. None:
        the request core takes it."""
        plan = request.memo.get("rows") if request.memo is not None else None
        if plan is None or request.id is not None or self.state.draining:  # an id is not in the plan: echoed
            return None
        start = time.perf_counter_ns()
        group = self._groups.get(served.name)
        if group is None or group.served is not served:
            group = self._groups[served.name] = RowGroups(self.state, served, _NothingHeld(),
                                                          asyncio.get_running_loop(), _respond, _fail)
        if not group.open:
            return None
        graph = _graph(request.inputs)
        if graph is None:
            return None
        return group.take(answer, None, plan, graph, graph.x.shape[0], graph.edge_index.shape[1], start, 0)
