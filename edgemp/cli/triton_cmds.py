"""``edgemp triton serve``: a real Triton Inference Server on an edgemp model repository.

The command only wires flags to :class:`edgemp.triton_server.TritonServer`, which finds
the binary and sets up the Python backend's environment (see that module for why each
step is needed), then forwards SIGTERM / SIGINT so Triton drains and exits cleanly.
"""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click


@click.group("triton")
def triton_group() -> None:
    """Run exported repositories on NVIDIA Triton Inference Server."""


@triton_group.command("serve")
@click.argument("repository", type=click.Path(path_type=Path))
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address Triton listens on (0.0.0.0 to accept other machines).")
@click.option("--backend-env", type=click.Path(path_type=Path), default=None,
              help="The Python backend's environment (edgemp + numpy<2). Default: $EDGEMP_TRITON_ENV, "
                   "else ./.venv-triton (bash scripts/build_triton_env.sh builds it).")
@click.option("--tritonserver", "binary", type=click.Path(path_type=Path), default=None,
              help="The tritonserver binary. Default: on PATH, else the nvidia-pytriton wheel's in --backend-env.")
@click.option("--ready-timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for ready.")
@click.option("--exit-timeout", type=int, default=30, show_default=True,
              help="Seconds Triton drains in-flight requests after SIGTERM.")
@click.option("--quiet", is_flag=True, help="Do not copy Triton's log to stderr.")
def serve_cmd(repository, http_port, grpc_port, metrics_port, host, backend_env, binary, ready_timeout, exit_timeout,
              quiet):
    """Serve REPOSITORY (`edgemp export triton CKPT --repo DIR --backend python`) on Triton.

    Exits with Triton's exit code after SIGTERM or Ctrl-C (0 after a clean drain).
    """
    from edgemp.triton_server import TritonServeConfig, TritonServer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TritonServeConfig(repository=repository, backend_env=backend_env, tritonserver=binary, host=host,
                            http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                            ready_timeout_s=ready_timeout, exit_timeout_s=exit_timeout, echo_logs=not quiet)
    server = TritonServer(cfg)
    stop_requested = []

    def forward(signum, _frame):
        stop_requested.append(signum)
        server.terminate()

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except Exception:
            if stop_requested:  # stopped while starting: not a failure to report
                sys.exit(0)
            raise
        click.echo(f"Triton ready: HTTP {server.http_url}, gRPC {host}:{grpc_port}, metrics "
                   f"http://{host}:{metrics_port}/metrics; models {sorted(server.models)}", err=True)
        code = server.wait()
        server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code)


COMMANDS = [triton_group]
