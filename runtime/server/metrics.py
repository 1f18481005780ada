"""Prometheus metrics, rendered at scrape time from each model's :class:`ModelStats`.

One collector per app (its own :class:`CollectorRegistry`), so tests and embedders can run
several servers in one process. Nothing here runs per request: the request path updates
``ModelStats`` only, and a scrape turns it into series.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms) rather
than Triton's ``nv_*`` cumulative-µs counters: histograms give quantiles (p99 alerts in
``deploy/alerts.yml``), which cumulative sums cannot.

``prometheus_client`` is imported at the first scrape, not at start-up: nothing before the
first ``/metrics`` needs it, and the server is ready that much sooner.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from edgemp.runtime.server.stats import OUTCOMES

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from edgemp.runtime.server.peers import ModelView
    from edgemp.runtime.server.served import ServedModel

HISTOGRAMS = {
    "request_duration_seconds": "Server-side request latency (body read to response).",
    "queue_duration_seconds": "Time a request waited in the batcher queue.",
    "compute_duration_seconds": "Model run time per executed batch.",
    "batch_graphs": "Graphs per executed batch.",
    "batch_nodes": "Nodes per executed batch.",
}


class _Collector:
    def __init__(self, models: Callable[[], Iterable["ServedModel"]], ready: Callable[[], bool]) -> None:
        self._models, self._ready = models, ready
        self.views: "dict[str, ModelView] | None" = None  # set for one render: the statistics to show

    def collect(self) -> Iterator["Metric"]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily("edgemp_requests", "Inference requests by model and outcome.",
                                       labels=["model", "outcome"])
        graphs = CounterMetricFamily("edgemp_inference_graphs", "Graphs inferred successfully.", labels=["model"])
        hists = {k: HistogramMetricFamily(f"edgemp_{k}", text, labels=["model"]) for k, text in HISTOGRAMS.items()}
        depth = GaugeMetricFamily("edgemp_queue_depth", "Requests waiting in the batcher queue.", labels=["model"])
        capacity = GaugeMetricFamily("edgemp_queue_capacity", "max_queue_size of the model's batcher.",
                                     labels=["model"])
        loaded = GaugeMetricFamily("edgemp_model_loaded", "1 when the model is loaded and serving.",
                                   labels=["model", "version"])
        views = self.views
        for served in self._models():
            name = served.name
            view = None if views is None else views.get(name)
            snap = (served.stats if view is None else view.stats).metrics()
            for outcome in OUTCOMES:
                requests.add_metric([name, outcome], snap.outcomes[outcome])
            graphs.add_metric([name], snap.graphs)
            for key, (buckets, total) in snap.histograms.items():
                hists[key].add_metric([name], buckets, total)
            depth.add_metric([name], served.queue_depth() if view is None else view.queue_depth)
            capacity.add_metric([name], served.source.batcher.max_queue_size)
            loaded.add_metric([name, served.version], 0 if served.closed else 1)
        yield requests
        yield graphs
        yield from hists.values()
        yield depth
        yield capacity
        yield loaded
        ready = GaugeMetricFamily("edgemp_server_ready", "1 when the server accepts inference requests.")
        ready.add_metric([], 1 if self._ready() else 0)
        yield ready


class ServerMetrics:
    """Every series the server exports; label values are model names (never client input)."""

    def __init__(self, models: Callable[[], Iterable["ServedModel"]], ready: Callable[[], bool]) -> None:
        self._collector = _Collector(models, ready)
        self._registry: Any = None

    @property
    def registry(self) -> Any:
        """The app's own ``CollectorRegistry`` (built, and prometheus_client imported, on first use)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry(auto_describe=False)
            registry.register(self._collector)  # type: ignore[arg-type]
            self._registry = registry
        return self._registry

    @property
    def content_type(self) -> str:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST

    def render(self, views: "dict[str, ModelView] | None" = None) -> bytes:
        """The exposition text; ``views``: the statistics to show per model (all workers' sums),
        else each model's own."""
        from prometheus_client import generate_latest

        registry = self.registry
        self._collector.views = views
        try:
            return generate_latest(registry)
        finally:
            self._collector.views = None
