"""Build the aiohttp application: models behind batchers, routes, middleware, metrics.

``create_app`` is the library entry point (embed it in your own aiohttp runner or test
client); :func:`edgemp.runtime.server.run.run_server` adds the listening socket and the
signal-driven graceful shutdown the CLI uses.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence, Union

from aiohttp import web

from edgemp.errors import EdgempError
from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.model import Model
from edgemp.runtime.server import unsupported, v1, v2
from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server.body import BodyReader
from edgemp.runtime.server.limits import RequestLimits
from edgemp.runtime.server.metrics import ServerMetrics
from edgemp.runtime.server.middleware import BODY_READER, expect_handler, request_middleware
from edgemp.runtime.server.repository import NAME_RE, NAME_RULE, ModelSource
from edgemp.runtime.server.served import ServedModel
from edgemp.runtime.server.state import STATE, ServerState, outcome_of
from edgemp.runtime.server.text_served import TextServedModel

logger = logging.getLogger(__name__)

ModelsArg = Union[Sequence[ModelSource], Mapping[str, Union[Model, str, Path]]]


def _serve_all(models: ModelsArg, batcher: BatcherConfig) -> dict[str, ServedModel]:
    served: dict[str, ServedModel] = {}
    try:
        if isinstance(models, Mapping):
            for name, m in models.items():
                if not NAME_RE.match(name):
                    raise EdgempError(f"model name {name!r} must be {NAME_RULE}")
                if isinstance(m, Model):
                    source = ModelSource(name, "1", m.path or Path(f"{name}.onnx"), batcher)
                    served[name] = ServedModel(source, m)
                else:
                    served[name] = ServedModel.load(ModelSource(name, "1", Path(m), batcher))
        else:
            for source in models:
                if source.name in served:
                    raise EdgempError(f"model name {source.name!r} is given twice")
                served[source.name] = ServedModel.load(source)
    except BaseException:
        for s in served.values():
            s.close(drain=False)
        raise
    if not served:
        raise EdgempError("no models to serve")
    return served


async def _close_models(app: web.Application) -> None:
    for served in app[STATE].models.values():
        served.close(drain=True)


def create_app(
    models: ModelsArg,
    config: ServerConfig | None = None,
    batcher: BatcherConfig | None = None,
) -> web.Application:
    """An aiohttp app serving ``models`` over KServe V2 (+ ``/v1`` predict and ``/metrics``).

    Args:
        models: :class:`ModelSource` entries (from
            :func:`edgemp.runtime.server.repository.discover`), or a mapping of name to a
            loaded :class:`~edgemp.runtime.model.Model` or a model path.
        config: server settings (limits, auth, timeout cap).
        batcher: batching settings for models given by mapping (sources carry their own).
    """
    config = config or ServerConfig()
    served = _serve_all(models, batcher or BatcherConfig())
    for s in served.values():
        if not isinstance(s, TextServedModel):  # texts are bounded by the tokenizer's max length
            s.limits = RequestLimits.for_model(s.spec, s.source.path, s.source.batcher, config)
    state = ServerState(served, config)
    state.metrics = ServerMetrics(lambda: list(state.models.values()), lambda: state.ready)
    if config.auth_token is not None:
        logger.info("bearer-token auth is on for every route except /v2/health/live and /v2/health/ready")
    body_reader = BodyReader(config)
    def refused(request: web.Request, error: Exception) -> None:
        """A model's request refused by its announced size: its statistics count it."""
        served_model = state.models.get(request.match_info.get("model", ""))
        if served_model is not None:
            served_model.stats.record_failure(outcome_of(error), 0)

    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[request_middleware(body_reader, config.auth_token, refused)])
    expect = expect_handler(body_reader, config.auth_token, refused)
    app[STATE] = state
    app[BODY_READER] = body_reader
    v2.add_routes(app, expect)
    v1.add_routes(app, expect)
    unsupported.add_routes(app, expect)
    app.on_cleanup.append(_close_models)
    return app


def app_state(app: web.Application) -> ServerState:
    """The shared state of an app built by :func:`create_app` (for drain control and tests)."""
    return app[STATE]
