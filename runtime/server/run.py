"""Run the server until SIGTERM/SIGINT, then drain: the shutdown order matters.

1. Readiness goes false and new inference requests get 503 (load balancers move away).
2. Every request already admitted finishes (its batch runs; its response is written);
   bodies still arriving are cut off with 503, so a stalled upload cannot hold the drain.
3. The listener and idle keep-alive connections close; batchers and models shut down.
4. Exit 0 — a clean, expected stop, so orchestrators do not count it as a crash.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Callable

from aiohttp import web

from edgemp.errors import EdgempError
from edgemp.runtime.server import loop as event_loop
from edgemp.runtime.server.app import app_state
from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server.connections import GuardedAppRunner, quiet_accept_errors
from edgemp.runtime.server.heap import frozen_startup_heap
from edgemp.runtime.server.middleware import BODY_READER

if TYPE_CHECKING:
    from edgemp.runtime.server.workers import Worker

logger = logging.getLogger(__name__)

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


async def serve_app(
    app: web.Application,
    config: ServerConfig,
    *,
    started_at: float | None = None,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    worker: "Worker | None" = None,
) -> None:
    """Serve ``app`` until ``stop`` is set (or SIGTERM/SIGINT arrives), then drain.

    ``on_ready`` receives the bound port (useful with ``port=0``). ``worker``: this process is
    one of ``edgemp serve --workers N``'s (:mod:`edgemp.runtime.server.workers`): it listens on
    the sockets its supervisor bound for it, or (a replacement beside serving workers) binds its
    own in the port's groups only now, with its models loaded, and sums its statistics with the
    other workers'.
    """
    state = app_state(app)
    if worker is not None:
        state.peers = worker.peers
        await worker.peers.start(state)
    access_log = logging.getLogger("edgemp.access") if config.access_log else None
    runner = GuardedAppRunner(
        app, config, handle_signals=False, access_log=access_log, access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=config.shutdown_timeout_s,
    )
    quiet_accept_errors(asyncio.get_running_loop())
    await runner.setup()
    grpc_listener = None
    if config.grpc_port is not None:  # KServe V2 gRPC beside HTTP: same state, drained together
        from edgemp.runtime.server.grpc_service import start_grpc

        try:  # before HTTP: once /v2/health/ready answers, the gRPC port is listening too
            grpc_listener, grpc_port = await start_grpc(state, config.host, config.grpc_port, app.get(BODY_READER),
                                                        None if worker is None else worker.bind_grpc())
        except BaseException:
            await runner.cleanup()
            raise
        if worker is None:  # a worker's supervisor says it once for all
            logger.info("serving gRPC (inference.GRPCInferenceService) on %s:%d", config.host, grpc_port)
    try:
        sites = ([web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)] if worker is None
                 else [web.SockSite(runner, sock, backlog=1024) for sock in worker.bind_http()])
        for site in sites:
            await site.start()
    except (OSError, EdgempError) as e:
        if grpc_listener is not None:
            await grpc_listener.close(grace_s=0)
        await runner.cleanup()
        if isinstance(e, EdgempError):  # a worker's bind names the address itself
            raise
        raise OSError(f"cannot listen on {config.host}:{config.port}: {e.strerror}") from e
    port = runner.addresses[0][1] if runner.addresses else config.port
    stop = stop or asyncio.Event()  # the drain handlers are up before anyone hears it serves
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread; an embedded server in
    # another thread (tests, a host application) stops through ``stop`` instead.
    signals = (signal.SIGTERM, signal.SIGINT) if threading.current_thread() is threading.main_thread() else ()
    for sig in signals:
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    since = f" ({(time.perf_counter() - started_at) * 1e3:.0f} ms after start)" if started_at else ""
    if worker is None:
        logger.info("serving %s on http://%s:%d%s", ", ".join(sorted(state.models)), config.host, port, since)
    else:  # the supervisor says "serving" once every worker is ready
        logger.info("worker %d ready%s", worker.index, since)
        worker.keep_reporting(state)  # from now on its supervisor knows a silent worker is stuck
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
        state.begin_drain()
        if grpc_listener is not None:
            grpc_listener.begin_drain()  # GOAWAY: no new streams; open ones are answered
        body_reader = app.get(BODY_READER)
        if body_reader is not None:
            body_reader.abort_uploads()  # a stalled upload must not hold the drain
        if not await state.wait_idle(config.shutdown_timeout_s):
            logger.warning("shutdown timeout: %d request(s) still in flight", state.inflight)
    finally:
        try:
            if grpc_listener is not None:
                await grpc_listener.close(grace_s=1.0)  # in-flight calls already finished in wait_idle
            await runner.cleanup()  # closes listeners, waits for handlers, runs on_cleanup (batchers)
            if worker is not None:
                await worker.peers.close(stopping=state.draining)
            for served in state.models.values():
                s = served.stats.to_json(served.name, served.version)["inference_stats"]
                logger.info("model %r: %d request(s) succeeded, %d failed; shutdown complete",
                            served.name, s["success"]["count"], s["fail"]["count"])
        finally:
            # Only now: a second signal during the clean-up (Ctrl-C reaches every worker and its
            # supervisor, which forwards SIGTERM) must not kill it half-way. A worker has nothing
            # left to do but exit, so it ignores them from here on.
            for sig in signals:
                loop.remove_signal_handler(sig)
                if worker is not None:
                    signal.signal(sig, signal.SIG_IGN)


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    logger.info("received %s: draining", signal.Signals(sig).name)
    stop.set()


def run_server(app: web.Application, config: ServerConfig, *, started_at: float | None = None,
               on_ready: Callable[[int], None] | None = None, worker: "Worker | None" = None) -> None:
    """Blocking: serve until a signal, drain, return (the CLI then exits 0).

    While it serves, every object made before it started is frozen out of the collector's
    full passes (:mod:`edgemp.runtime.server.heap`), and unfrozen when it returns; an
    application that runs :func:`serve_app` on its own loop keeps its own collector policy.
    """
    with frozen_startup_heap():
        event_loop.run(serve_app(app, config, started_at=started_at, on_ready=on_ready, worker=worker))
