"""The friendly routes: graphs (or texts) as JSON in, per-item outputs out; and ``/metrics``.

``POST /v1/models/{m}/predict`` takes ``{"graphs": [{"x": ..., "edge_index": ...,
"edge_attr": ...}, ...]}`` — the same objects as a ``.jsonl`` graph file — for callers who
would rather not build the V2 batch layout (curl, scripts). It shares the batcher, limits
and metrics with V2 infer. A text model takes ``{"texts": ["...", ...]}`` instead
(:mod:`edgemp.runtime.server.text_served`).
"""
from __future__ import annotations

import json
import time

from aiohttp import web

from edgemp.graphio import graph_from_json
from edgemp.runtime.server.middleware import read_body
from edgemp.runtime.server.molecules import is_smiles_body, takes_smiles
from edgemp.runtime.server.molecules import predict_v1 as predict_smiles
from edgemp.runtime.server.protocol import parse_v1_body
from edgemp.runtime.server.state import effective_timeout_us
from edgemp.runtime.server.text_served import TextServedModel
from edgemp.runtime.server.text_served import predict_v1 as predict_text
from edgemp.runtime.server.v2 import STATE, _served, offload


def _parse(body: bytes) -> tuple[list, int | None, str | None]:
    graphs, timeout, request_id = parse_v1_body(
        body, "graphs", '{"graphs": [{"x": [[...]], "edge_index": [[...], [...]]}, ...]}')
    return [graph_from_json(g, i) for i, g in enumerate(graphs)], timeout, request_id


def _render(results: list, model_name: str, request_id: str | None) -> bytes:
    out: dict = {"model_name": model_name}
    if request_id is not None:
        out["id"] = request_id
    out["outputs"] = [{name: value.tolist() for name, value in r.items()} for r in results]
    return json.dumps(out, separators=(",", ":")).encode()


async def predict(request: web.Request) -> web.Response:
    state = request.app[STATE]
    served = _served(request)
    if isinstance(served, TextServedModel):  # {"texts": [...]} instead of {"graphs": [...]}
        return await predict_text(request, state, served)
    if takes_smiles(served.spec) and is_smiles_body(await read_body(request)):  # {"smiles": [...]}
        return await predict_smiles(request, state, served)
    with state.admit(served) as scope:
        body = await read_body(request)
        graphs, requested, request_id = await offload(state, len(body), _parse, body)
        timeout = effective_timeout_us(requested, served.source.batcher.default_timeout_us,
                                       state.config.request_timeout_cap_us)
        scope.input_ns = time.perf_counter_ns() - scope.start_ns
        future = served.submit(graphs, timeout)
        results = await served.wait(future)
        out_start = time.perf_counter_ns()
        payload = await offload(state, len(body), _render, results, served.name, request_id)
        scope.success(len(graphs), future.timing, time.perf_counter_ns() - out_start)
    return web.Response(body=payload, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    m = request.app[STATE].metrics
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/models/{model}/predict", predict)
    app.router.add_get("/metrics", metrics)
