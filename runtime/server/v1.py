"""The friendly routes: graphs (or texts) as JSON in, per-item outputs out; and ``/metrics``.

``POST /v1/models/{m}/predict`` takes ``{"graphs": [{"x": ..., "edge_index": ...,
"edge_attr": ...}, ...]}`` — the same objects as a ``.jsonl`` graph file — for callers who
would rather not build the V2 batch layout (curl, scripts). A text model takes
``{"texts": ["...", ...]}`` instead (:mod:`edgemp.runtime.server.text_served`). Both take
the one request path of :mod:`edgemp.runtime.server.core`.
"""
from __future__ import annotations

from typing import Any, Sequence

from aiohttp import web

from edgemp.graphio import graph_from_json
from edgemp.runtime.server import core, jsoncodec
from edgemp.runtime.server.middleware import read_body
from edgemp.runtime.server.peers import model_views
from edgemp.runtime.server.molecules import V1SmilesCall, is_smiles_body, takes_smiles
from edgemp.runtime.server.protocol import V1_BINARY_HINT, json_values, parse_v1_body
from edgemp.runtime.server.served import ServedModel
from edgemp.runtime.server.state import STATE
from edgemp.runtime.server.text_served import TextServedModel, V1TextCall
from edgemp.runtime.server.v2 import served_model


class V1GraphCall:
    """``{"graphs": [...]}`` → ``{"model_name", "id"?, "outputs": [{name: value}, ...]}``."""

    __slots__ = ("model_name", "items", "timeout_us", "request_id")

    def __init__(self, served: ServedModel, body: bytes) -> None:
        graphs, self.timeout_us, self.request_id = parse_v1_body(
            body, "graphs", '{"graphs": [{"x": [[...]], "edge_index": [[...], [...]]}, ...]}')
        bools = b"true" in body or b"false" in body  # else no graph needs the scan for them
        self.items: Sequence = [graph_from_json(g, i, bools) for i, g in enumerate(graphs)]
        self.model_name = served.name

    def encode(self, results: list) -> bytes:
        out: dict = {"model_name": self.model_name}
        if self.request_id is not None:
            out["id"] = self.request_id
        out["outputs"] = [{name: json_values(name, value, V1_BINARY_HINT) for name, value in r.items()}
                          for r in results]
        return jsoncodec.dumps(out)


def v1_call(served: ServedModel, body: bytes):
    """The /v1 body as a call: texts for a text model, SMILES or graphs for a graph model."""
    if isinstance(served, TextServedModel):
        return V1TextCall(served, body)
    if takes_smiles(served.spec) and is_smiles_body(body):
        return V1SmilesCall(served, body)
    return V1GraphCall(served, body)


async def predict(request: web.Request) -> web.Response:
    served = served_model(request)
    payload = await core.infer(request.app[STATE], served, lambda: read_body(request),
                               lambda body: v1_call(served, body))
    return web.Response(body=payload, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    m = state.metrics
    views = None if state.peers is None else await model_views(state)
    return web.Response(body=m.render(views), headers={"Content-Type": m.content_type})


def add_routes(app: web.Application, expect: Any = None) -> None:
    """``expect``: the POST route's handler of ``Expect: 100-continue`` (aiohttp's when None)."""
    app.router.add_post("/v1/models/{model}/predict", predict, expect_handler=expect)
    app.router.add_get("/metrics", metrics)
