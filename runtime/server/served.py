"""A loaded model behind its own dynamic batcher, as the protocol handlers see it.

:meth:`ServedModel.run` hands a request to the batcher, whose worker thread runs the
model, and the batcher's answer comes back on the event loop (a callback for the
request core's callback path, a future of its own for :meth:`ServedModel.run`), so a
client that disconnects mid-request cancels only its own wait, never the shared batch.
Requests queued in one event-loop turn wake the worker once, so they batch together. A
small request that is alone in the server runs at once on the calling thread instead
(:meth:`Batcher.run_now`): the two thread hand-offs cost about as much as a small
molecule's model run.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Any, Callable, Sequence

import numpy as np

from edgemp.graph import Graph
from edgemp.runtime.batch_outputs import BatchSlice
from edgemp.runtime.batcher import Batcher, Done, RequestTiming
from edgemp.runtime.model import Model, load
from edgemp.runtime.server.header_plans import HeaderPlans
from edgemp.runtime.server.layout import (
    graphs_to_tensors,
    input_specs,
    one_graph,
    output_specs,
    takes_one_graph_path,
    tensors_to_graphs,
)
from edgemp.runtime.server.limits import RequestLimits
from edgemp.runtime.server.molecules import SMILES_INPUT, takes_smiles
from edgemp.runtime.server.molecules import tensor_to_graphs as smiles_tensor_to_graphs
from edgemp.runtime.server.repository import ModelSource
from edgemp.runtime.server.stats import ModelStats
from edgemp.runtime.text import text_model_files

logger = logging.getLogger(__name__)


class _Completions:
    """Batcher results handed to the event loop a batch at a time, not one call each.

    The batcher's worker finishes a batch's requests one after another; each answer is
    queued here, and only the first of a run schedules a drain on the loop
    (``call_soon_threadsafe``), so a batch of 30 requests costs one loop wake-up and one
    callback, not 30 of each.
    """

    __slots__ = ("loop", "_done", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: collections.deque[tuple[Done, list | None, BaseException | None, Any]] = collections.deque()
        self._scheduled = False

    def add(self, answer: Done, results: list | None, error: BaseException | None, timing: Any) -> None:
        """On the batcher's thread: queue ``answer(results, error, timing)`` for the loop."""
        self._done.append((answer, results, error, timing))
        if not self._scheduled:  # a drain already scheduled will see this entry
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop has closed: nobody is left to answer
                self._scheduled = False
                self._done.clear()
                logger.warning("a request finished after its event loop closed; its answer is dropped")

    def _drain(self) -> None:
        self._scheduled = False  # first: an entry added from now on schedules another drain
        done = self._done
        while done:
            answer, results, error, timing = done.popleft()
            try:
                answer(results, error, timing)
            except Exception:  # noqa: BLE001 - one caller's failure must not strand the rest of the batch
                logger.exception("answering a finished request failed")


class ServedModel:
    """One model: name, version, runtime model, batcher, statistics and metric children."""

    def __init__(self, source: ModelSource, model: Model) -> None:
        self._setup(source, model, input_specs(model.spec), output_specs(model.spec), Batcher)
        if takes_smiles(model.spec):  # molecule models also take a V2 BYTES "smiles" input
            self.input_types = {**self.input_types, SMILES_INPUT: "BYTES"}

    def _setup(self, source: ModelSource, model, inputs, outputs, batcher_class: type[Batcher]) -> None:
        """State shared by graph and text models; ``batcher_class`` is the model's batcher."""
        self.name = source.name
        self.version = source.version
        self.source = source
        self.model = model
        self.spec = model.spec
        self.stats = ModelStats()
        self.inputs = inputs
        self.outputs = outputs
        self.input_types = {t.name: t.datatype for t in self.inputs}
        self._input_specs = {t.name: t for t in self.inputs}
        self.header_plans = HeaderPlans()  # V2 binary headers seen before, decoded once
        self.rows_answered = 0  # requests answered as rows of a group (rows.py), on the event loop
        self.output_names = [t.name for t in self.outputs]
        self.closed = False
        self._wake_pending = False
        self._completions: _Completions | None = None  # made on the first request, on the serving loop
        self.limits: RequestLimits | None = None  # per-request work limits, set by create_app
        self.batcher = batcher_class(model, source.batcher, on_batch=self.stats.record_batch)

    @classmethod
    def load(cls, source: ModelSource) -> "ServedModel":
        if text_model_files(source.path) is not None:  # model.onnx + tokenizer.json: a text model
            from edgemp.runtime.server.text_served import TextServedModel

            return TextServedModel.load(source)
        start = time.perf_counter()
        model = load(source.path, providers=source.providers, threads=source.threads)
        served = cls(source, model)
        served.warm_up()
        logger.info(
            "loaded model %r version %s from %s in %.0f ms (form=%s, providers=%s)",
            source.name, source.version, source.path, (time.perf_counter() - start) * 1e3,
            model.spec.form, ",".join(model.providers),
        )
        return served

    def warm_up(self) -> None:
        """Run one tiny graph so the first client does not pay ORT's first-run cost."""
        m = self.spec.model
        g = Graph(
            x=np.zeros((2, m.node_features), np.float32),
            edge_index=np.array([[0, 1], [1, 0]], np.int64),  # one bond both ways: valid for every family
            edge_attr=np.zeros((2, m.edge_features), np.float32) if m.edge_features > 0 else None,
        )
        self.model.predict([g])

    def describe(self) -> dict[str, str]:
        """Model facts for the ``parameters`` of ``/config``."""
        levels = self.spec.model.output_levels
        facts = {"edgemp_form": self.spec.form, "edgemp_task": self.spec.model.task,
                 "edgemp_output_levels": ",".join(f"{k}:{v}" for k, v in levels.items())}
        if takes_smiles(self.spec):  # it also takes a BYTES "smiles" input, featurized like this
            facts["edgemp_featurizer"] = self.spec.model.featurizer
        return facts

    def to_items(self, tensors: dict[str, np.ndarray], memo: dict[str, Any] | None = None) -> list:
        """A V2 request's input tensors as what the batcher takes (graphs; texts for a text model).

        ``memo`` is the request's header plan's (:class:`InferRequest.memo`): every request with
        that header has the same tensor shapes, so once one has passed the shape checks as a
        one-graph request, later ones only have their values checked.
        """
        if SMILES_INPUT in tensors:
            return smiles_tensor_to_graphs(tensors, self.spec)
        if memo is not None and memo.get("one_graph"):
            return [one_graph(tensors)]
        graphs = tensors_to_graphs(tensors, self.spec, self._input_specs)
        if memo is not None and takes_one_graph_path(tensors, self.spec):
            memo["one_graph"] = True
        return graphs

    def to_tensors(self, results: list, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-item results back as the V2 output tensors ``names``."""
        if isinstance(results, BatchSlice):  # rows of the batch the request ran in: views, no copies
            return results.tensors(names)
        return graphs_to_tensors(results, self.spec, list(names))

    async def run(self, items: Sequence, timeout_us: int | None,
                  alone: Callable[[], bool] | None = None) -> tuple[list, RequestTiming | None]:
        """Per-item results and their timing. Raises what :meth:`Batcher.submit` raises, and
        RequestTooLargeError (413) past the work limits: every protocol's request passes here.

        ``alone`` says whether this is the only request in the server; when it still is
        after one turn of the event loop (requests that arrived together get to admit
        themselves first, so they batch instead of queueing behind an inline run), the
        request runs now on this thread.
        """
        self.check_limits(items)
        if alone is not None and alone():
            await asyncio.sleep(0)
            if alone():
                done = self.batcher.run_now(items)
                if done is not None:
                    return done
        waiter = asyncio.get_running_loop().create_future()

        def answer(results: list | None, error: BaseException | None, timing: RequestTiming | None) -> None:
            if waiter.done():  # its caller gave up waiting (a cancelled wait never cancels the batch)
                return
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result((results, timing))

        self.queue(items, timeout_us, answer)
        return await waiter

    def check_limits(self, items: Sequence) -> None:
        """RequestTooLargeError (413) past the per-request work limits."""
        if self.limits is not None:
            self.limits.check(items)

    def queue(self, items: Sequence, timeout_us: int | None, answer: Done, weight: int = 1,
              force: bool = False) -> None:
        """Hand ``items`` to the batcher; ``answer(results, error, timing)`` is called on this
        event loop once they ran (or failed, malformed graphs included: they are checked by the
        batcher with their batch). Raises at once what cannot be queued, as
        :meth:`Batcher.submit_callback` does.

        Must be called on the serving event loop. The worker is woken once per loop turn,
        so requests decoded together batch together. ``weight`` and ``force``: as
        :meth:`Batcher.submit_callback` takes them.
        """
        loop = asyncio.get_running_loop()
        completions = self._completions
        if completions is None or completions.loop is not loop:
            completions = self._completions = _Completions(loop)
        self.batcher.submit_callback(items, functools.partial(completions.add, answer), timeout_us, wake=False,
                                     check_in_batch=True, weight=weight, force=force)
        if not self._wake_pending:  # one wake-up per event-loop turn: requests decoded together batch together
            self._wake_pending = True
            loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
        self.batcher.wake()

    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    def close(self, drain: bool = True) -> None:
        """Stop the batcher (running what is queued when ``drain``) and release the model."""
        if self.closed:
            return
        self.closed = True
        self.batcher.close(drain=drain)
        self.model.close()
