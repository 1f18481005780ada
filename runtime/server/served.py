"""A loaded model behind its own dynamic batcher, as the HTTP layer sees it.

The event loop never runs inference: :meth:`ServedModel.infer` submits to the batcher
(whose worker thread runs the model) and awaits the future. The await is shielded, so a
client that disconnects mid-request cancels only its own wait, never the shared batch.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from typing import Any, Sequence

import numpy as np

from edgemp.graph import Graph, GraphBatch
from edgemp.runtime.batcher import Batcher, BatchFuture
from edgemp.runtime.model import Model, load
from edgemp.runtime.server.layout import graphs_to_tensors, input_specs, output_specs, tensors_to_graphs
from edgemp.runtime.server.limits import RequestLimits
from edgemp.runtime.server.metrics import ServerMetrics
from edgemp.runtime.server.repository import ModelSource
from edgemp.runtime.server.stats import ModelStats
from edgemp.runtime.text import text_model_files

logger = logging.getLogger(__name__)


class _MeteredModel:
    """The model as the batcher sees it: times each executed batch for stats and metrics.

    The batcher only knows requests; batch sizes and per-batch compute time exist only
    inside ``run_batch``, so that is where they are recorded.
    """

    def __init__(self, model: Model, served: "ServedModel") -> None:
        self._model = model
        self._served = served

    def run_batch(self, batch: GraphBatch) -> dict[str, np.ndarray]:
        start = time.perf_counter_ns()
        out = self._model.run_batch(batch)
        self._served.record_batch(batch.num_graphs, batch.num_nodes, time.perf_counter_ns() - start)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _consume(fut: "asyncio.Future[Any]") -> None:
    """Retrieve an abandoned result so asyncio does not log 'exception never retrieved'."""
    if not fut.cancelled():
        fut.exception()


class ServedModel:
    """One model: name, version, runtime model, batcher, statistics and metric children."""

    def __init__(self, source: ModelSource, model: Model, metrics: ServerMetrics) -> None:
        self._setup(source, model, metrics, input_specs(model.spec), output_specs(model.spec),
                    lambda: Batcher(_MeteredModel(model, self), source.batcher))  # type: ignore[arg-type]

    def _setup(self, source: ModelSource, model, metrics: ServerMetrics, inputs, outputs, make_batcher) -> None:
        """State shared by graph and text models; ``make_batcher`` builds the model's batcher."""
        self.name = source.name
        self.version = source.version
        self.source = source
        self.model = model
        self.spec = model.spec
        self.stats = ModelStats()
        self.metrics = metrics
        self.inputs = inputs
        self.outputs = outputs
        self.input_types = {t.name: t.datatype for t in self.inputs}
        self.output_names = [t.name for t in self.outputs]
        self._closed = False
        self.limits: RequestLimits | None = None  # per-request work limits, set by create_app
        self.batcher = make_batcher()
        self._m_compute = metrics.compute_seconds.labels(self.name)
        self._m_graphs = metrics.batch_graphs.labels(self.name)
        self._m_nodes = metrics.batch_nodes.labels(self.name)
        metrics.add_model(self.name, self.version, lambda: self.batcher.stats().queue_depth,
                          source.batcher.max_queue_size)

    @classmethod
    def load(cls, source: ModelSource, metrics: ServerMetrics) -> "ServedModel":
        if text_model_files(source.path) is not None:  # model.onnx + tokenizer.json: a text model
            from edgemp.runtime.server.text_served import TextServedModel

            return TextServedModel.load(source, metrics)
        start = time.perf_counter()
        model = load(source.path, providers=source.providers, threads=source.threads)
        served = cls(source, model, metrics)
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
            edge_index=np.array([[0], [1]], np.int64),
            edge_attr=np.zeros((1, m.edge_features), np.float32) if m.edge_features > 0 else None,
        )
        self.model.predict([g])

    def describe(self) -> dict[str, str]:
        """Model facts for the ``parameters`` of ``/config``."""
        levels = self.spec.model.output_levels
        return {"edgemp_form": self.spec.form, "edgemp_task": self.spec.model.task,
                "edgemp_output_levels": ",".join(f"{k}:{v}" for k, v in levels.items())}

    def to_items(self, tensors: dict[str, np.ndarray]) -> list:
        """A V2 request's input tensors as what the batcher takes (graphs; texts for a text model)."""
        return tensors_to_graphs(tensors, self.spec)

    def to_tensors(self, results: list, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-item results back as the V2 output tensors ``names``."""
        return graphs_to_tensors(results, self.spec, list(names))

    def record_batch(self, graphs: int, nodes: int, compute_ns: int) -> None:
        self.stats.record_batch(graphs, compute_ns)
        self._m_compute.observe(compute_ns / 1e9)
        self._m_graphs.observe(graphs)
        self._m_nodes.observe(nodes)

    def submit(self, graphs: Sequence[Graph], timeout_us: int | None) -> BatchFuture:
        """Queue a request (raises GraphValidationError / QueueFullError / ShuttingDownError).

        The one place every protocol's request passes before it is queued, so the work
        limits (RequestTooLargeError, 413) are checked here.
        """
        if self.limits is not None:
            self.limits.check(graphs)
        return self.batcher.submit(graphs, timeout_us)

    @staticmethod
    async def wait(future: Future) -> list[dict[str, np.ndarray]]:
        """Await a batcher future without letting a cancelled caller cancel the batch."""
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(_consume)
        return await asyncio.shield(wrapped)

    def queue_depth(self) -> int:
        return self.batcher.stats().queue_depth

    def close(self, drain: bool = True) -> None:
        """Stop the batcher (running what is queued when ``drain``) and release the model."""
        if self._closed:
            return
        self._closed = True
        self.batcher.close(drain=drain)
        self.metrics.model_loaded.labels(self.name, self.version).set(0)
        self.model.close()
