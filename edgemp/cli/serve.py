"""``edgemp serve`` (and its alias ``edgemp-serve``): a KServe V2 server for exported models.

The token never comes from the command line (it would show in ``ps`` and shell history):
use ``--auth-token-file`` or the ``EDGEMP_AUTH_TOKEN`` environment variable. Per-model
``config.json`` options in a repository override the batching flags given here.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from edgemp.errors import EdgempError

TOKEN_ENV = "EDGEMP_AUTH_TOKEN"
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")  # where OpenSSL looks for CA certificates


def _import_server_fast() -> None:
    """Import the server without paying for aiohttp's client TLS set-up.

    ``import aiohttp`` builds two client SSL contexts at module level, each reading the
    system CA bundle: ~40 ms of every start (a quarter of aiohttp's import), for an HTTP
    client the server never uses. For that one import the CA locations point nowhere, so
    those two contexts hold no CAs: a TLS client using them would fail to verify (fails
    closed, never open). Every context made afterwards reads the real locations again.
    """
    if "aiohttp" in sys.modules:
        return
    saved = {k: os.environ.get(k) for k in CA_ENV}
    os.environ.update({k: os.devnull + "/edgemp-no-ca" for k in CA_ENV})
    try:
        import aiohttp  # noqa: F401 - imported here for the side effect above
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _ServeCommand(click.Command):
    """Print an EdgempError as one line and exit 1, also when run as ``edgemp-serve``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgempError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


def _token(token_file: Path | None) -> str | None:
    """The bearer token, failing closed: a token source that is set but blank is an error.

    An empty ``EDGEMP_AUTH_TOKEN`` (a typo in a unit file, a missing secret) must not
    silently turn auth off; only an *unset* variable and no file means "no auth".
    """
    env = os.environ.get(TOKEN_ENV)
    if token_file is not None and env is not None:
        raise EdgempError(f"both --auth-token-file and {TOKEN_ENV} are set; use one")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise EdgempError(f"cannot read auth token file {token_file}: {e}") from e
        source = f"auth token file {token_file}"
    elif env is not None:
        token, source = env.strip(), TOKEN_ENV
    else:
        return None
    if not token:
        raise EdgempError(f"{source} is empty or whitespace; set a token, or unset it to run without auth")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise EdgempError(f"{source} holds spaces or non-ASCII characters; a bearer token is visible ASCII")
    return token


@click.command("serve", cls=_ServeCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option("--grpc-port", default=None, type=int,
              help="Also serve KServe V2 gRPC on this port (Triton's is 8001; 0 picks a free one). Off by default.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="Server processes on the same port(s), each with its own copy of the model: throughput on more "
                   "cores. Statistics and /metrics are summed over them; limits are per worker. POSIX only.")
@click.option("--worker-timeout-s", default=30.0, show_default=True, type=float,
              help="With --workers: a worker whose event loop, or one model run, has been stuck this long is "
                   "killed and replaced (0 = never; else at least 1).")
@click.option("--name", default=None, help="Model name for a single .onnx file (default: file stem).")
@click.option("--max-batch-graphs", default=64, show_default=True, type=int, help="Graphs per batch.")
@click.option("--max-batch-nodes", default=4096, show_default=True, type=int, help="Nodes per batch.")
@click.option("--max-batch-edges", default=8192, show_default=True, type=int, help="Edges per batch.")
@click.option("--max-queue-delay-us", default=0, show_default=True, type=int,
              help="Longest a request waits for a fuller batch. 0 (Triton's default) batches whatever "
                   "queued while the model was busy: no added latency at low load, full batches under load. "
                   "A batch closes before its delay once every open HTTP/1.1 connection has a request "
                   "queued (no gRPC connection open): nothing more could join it.")
@click.option("--max-queue-size", default=1024, show_default=True, type=int,
              help="Requests waiting before new ones get 503.")
@click.option("--request-timeout-us", default=0, show_default=True, type=int,
              help="Cap on a request's queue timeout (0 = no cap); requests may ask for less.")
@click.option("--max-body-bytes", default=64 * 1024 * 1024, show_default=True, type=int,
              help="Largest request body (after decompression); 413 beyond.")
@click.option("--header-timeout-s", default=10.0, show_default=True, type=float,
              help="Request headers must arrive within this (408 and close otherwise); also the body's grace period.")
@click.option("--body-min-rate-bytes-per-s", default=64 * 1024, show_default=True, type=int,
              help="After the grace period a body must keep arriving this fast (408 and close); 0 = off.")
@click.option("--keepalive-timeout-s", default=30.0, show_default=True, type=float,
              help="Close idle keep-alive connections after this long.")
@click.option("--max-connections", default=1024, show_default=True, type=int,
              help="Open connections at most (the oldest one still waiting for headers makes room).")
@click.option("--max-buffered-bytes", default=0, show_default=True, type=int,
              help="Bytes all request bodies in flight may hold together (503 beyond); 0 = 4 x --max-body-bytes.")
@click.option("--max-request-nodes", default=0, show_default=True, type=int,
              help="Nodes one request may carry (413 beyond); 0 = 4 x --max-batch-nodes.")
@click.option("--max-request-edges", default=0, show_default=True, type=int,
              help="Edges one request may carry (413 beyond); 0 = 4 x --max-batch-edges.")
@click.option("--max-request-memory-bytes", default=1024**3, show_default=True, type=int,
              help="Estimated peak inference memory one request may need (413 beyond); 0 = no estimate.")
@click.option("--auth-token-file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=f"File holding the bearer token (or set {TOKEN_ENV}).")
@click.option("--providers", default="auto", show_default=True, help="auto, cpu, cuda or tensorrt.")
@click.option("--threads", default=None, type=int, help="ORT intra-op threads per model (default: runtime's).")
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="One log line per request (never tensor data); costs 30-45 µs of server CPU per request.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(model: Path, host: str, port: int, grpc_port: int | None, workers: int, worker_timeout_s: float,
          name: str | None, max_batch_graphs: int, max_batch_nodes: int,
          max_batch_edges: int, max_queue_delay_us: int, max_queue_size: int, request_timeout_us: int,
          max_body_bytes: int, header_timeout_s: float, body_min_rate_bytes_per_s: int, keepalive_timeout_s: float,
          max_connections: int, max_buffered_bytes: int, max_request_nodes: int, max_request_edges: int,
          max_request_memory_bytes: int, auth_token_file: Path | None, providers: str, threads: int | None,
          access_log: bool, log_level: str) -> None:
    """Serve MODEL (an exported .onnx, or a model repository directory) over KServe V2 HTTP (and gRPC).

    Stock tritonclient (http and grpc) works against it; also POST /v1/models/NAME/predict and GET /metrics.
    SIGTERM/SIGINT drain in-flight requests, then exit 0.
    """
    started = time.perf_counter()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _import_server_fast()
    from edgemp.runtime.batcher import BatcherConfig
    from edgemp.runtime.server import ServerConfig, create_app, discover, run_server
    from edgemp.runtime.server.config import check_worker_timeout

    batcher = BatcherConfig(
        max_batch_graphs=max_batch_graphs, max_batch_nodes=max_batch_nodes, max_batch_edges=max_batch_edges,
        max_queue_delay_us=max_queue_delay_us, max_queue_size=max_queue_size,
    )
    config = ServerConfig(
        host=host, port=port, max_body_bytes=max_body_bytes, auth_token=_token(auth_token_file),
        request_timeout_cap_us=request_timeout_us, access_log=access_log, grpc_port=grpc_port,
        header_timeout_s=header_timeout_s, body_min_rate_bytes_per_s=body_min_rate_bytes_per_s,
        keepalive_timeout_s=keepalive_timeout_s, max_connections=max_connections,
        max_buffered_bytes=max_buffered_bytes, max_request_nodes=max_request_nodes,
        max_request_edges=max_request_edges, max_request_memory_bytes=max_request_memory_bytes,
    )
    check_worker_timeout(worker_timeout_s)  # with one worker too: a bad value is an error whatever it affects
    if workers != 1:  # imported only then: a lone server's start does not pay for it
        from edgemp.runtime.server.workers import check_workers, serve_workers

        check_workers(workers, worker_timeout_s)
    sources = discover(model, batcher, name=name, providers=providers, threads=threads)
    if workers > 1:
        from edgemp.runtime.server.repository import model_files_state

        files = model_files_state(sources)

        def serve_one(worker, ready) -> None:  # in each worker process, after the fork
            changed = [path for path, was in model_files_state(sources).items() if files.get(path) != was]
            if changed:  # a replacement would serve another model than the other workers, under the same name
                raise EdgempError(f"{changed[0]} changed since the server started; a new worker would serve "
                                  "another model than the others: restart the server to serve it")
            run_server(create_app(sources, config), config, started_at=started, on_ready=lambda port: ready(),
                       worker=worker)

        serve_workers(workers, config, serve_one, started, worker_timeout_s)
        return
    app = create_app(sources, config)
    try:
        run_server(app, config, started_at=started)
    except OSError as e:
        raise EdgempError(str(e)) from e


COMMANDS = [serve]


def serve_main() -> None:
    """Entry point of the ``edgemp-serve`` console script."""
    from edgemp.cli import oneline

    oneline.run(serve, "edgemp-serve")


if __name__ == "__main__":
    serve_main()
