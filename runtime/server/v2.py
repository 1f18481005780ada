"""KServe V2 HTTP routes, as Triton serves them, so stock ``tritonclient.http`` works unmodified.

An infer request carries a batch of graphs; it becomes one batcher request (one future
for all its graphs), and the batcher merges it with whatever else is queued. The request
itself takes the one path of :mod:`edgemp.runtime.server.core`; this module only turns
HTTP bodies into calls and answers into HTTP responses.
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from edgemp.runtime.server import core, jsoncodec, rows
from edgemp.runtime.server.metadata import model_config, model_metadata, server_metadata
from edgemp.runtime.server.metadata import repository_index as index_of
from edgemp.runtime.server.middleware import one_line, read_body
from edgemp.runtime.server.peers import model_views
from edgemp.runtime.server.protocol import (HEADER_LENGTH, ProtocolError, V2Call, encode_infer_response,
                                            encode_planned_response)
from edgemp.runtime.server.served import ServedModel
from edgemp.runtime.server.state import STATE, ServerState



def _state(request: web.Request) -> ServerState:
    return request.app[STATE]


def served_model(request: web.Request) -> ServedModel:
    """The model a ``/v{1,2}/models/{model}[/versions/{version}]/...`` route names (404 if none)."""
    info = request.match_info
    return request.app[STATE].model(info["model"], info.get("version"))


def _status(ok: bool) -> web.Response:
    return web.Response(status=200 if ok else 503)


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    return _status(_state(request).ready)


async def model_ready(request: web.Request) -> web.Response:
    served_model(request)
    return _status(_state(request).ready)


async def metadata(request: web.Request) -> web.Response:
    return web.json_response(server_metadata())


async def model_meta(request: web.Request) -> web.Response:
    return web.json_response(model_metadata(served_model(request)))


async def config(request: web.Request) -> web.Response:
    return web.json_response(model_config(served_model(request)))


async def stats(request: web.Request) -> web.Response:
    state = _state(request)
    served = [served_model(request)] if "model" in request.match_info else [state.models[n] for n in sorted(state.models)]
    views = await model_views(state)
    return web.json_response({"model_stats": [views[s.name].stats.to_json(s.name, s.version) for s in served]})


async def repository_index(request: web.Request) -> web.Response:
    """The index; a body ``{"ready": true}`` leaves out models that are not ready (as gRPC's flag)."""
    state = _state(request)
    body = await read_body(request)
    only_ready = False
    if body.strip():
        try:
            obj = jsoncodec.loads(body)
        except ValueError as e:
            raise ProtocolError(f"repository index body is not JSON: {one_line(e)}") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("ready", False), bool):
            raise ProtocolError('repository index body must be a JSON object like {"ready": true}')
        only_ready = obj.get("ready", False)
    return web.json_response(index_of(state.models, state.ready, only_ready))


class HttpCall(V2Call):
    """A V2 HTTP body (JSON header + optional binary tensors) as a call; answers in kind."""

    __slots__ = ()

    def encode(self, results: list) -> tuple[bytes, int | None]:
        served, request = self.served, self.request
        if request.memo is not None:  # decoded through a header plan: its response header is kept too
            outputs = self.outputs(results)
            payload, length = encode_planned_response(request.memo, served.name, served.version, request, outputs)
            if "rows" not in request.memo:  # later requests with this header can be rows (rows.py)
                rows.remember(request.memo, request, outputs, payload, length, served.spec.model.output_levels)
            return payload, length
        return encode_infer_response(served.name, served.version, request, self.outputs(results))


async def infer(request: web.Request) -> web.Response:
    state = _state(request)
    served = served_model(request)
    header_length = request.headers.get(HEADER_LENGTH)

    def decode(body: bytes) -> HttpCall:
        return HttpCall(served, served.header_plans.decode(body, header_length, served.input_types))

    payload, json_length = await core.infer(state, served, lambda: read_body(request), decode)
    if json_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(body=payload, content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})


def add_routes(app: web.Application, expect: Any = None) -> None:
    """``expect``: the POST routes' handler of ``Expect: 100-continue`` (aiohttp's when None)."""
    versioned = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    app.router.add_post(versioned[0] + "/infer", infer, expect_handler=expect)  # first: the router tries resources in order
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", metadata)
    app.router.add_get("/v2/models/stats", stats)
    app.router.add_post("/v2/repository/index", repository_index, expect_handler=expect)
    for base in versioned:
        app.router.add_get(base, model_meta)
        app.router.add_get(base + "/ready", model_ready)
        app.router.add_get(base + "/config", config)
        app.router.add_get(base + "/stats", stats)
    app.router.add_post(versioned[1] + "/infer", infer, expect_handler=expect)
