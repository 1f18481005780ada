"""``edgemp serve --workers N``: N server processes behind one port, for throughput on more cores.

One server process answers from one Python event loop, and that loop's work per request
caps it (benchmarks/results/server.md: ~70 µs a small request on the loop, so ~14k
requests/s at best, whatever the cores). N workers each run the whole server (models,
batchers, the HTTP and gRPC listeners) on sockets this supervisor bound before forking them:

- **Connections**: one listening socket per worker and protocol, all on the same port with
  ``SO_REUSEPORT``, so the kernel spreads new connections over the workers by their
  addresses. (One shared socket would not: asyncio accepts every queued connection in one
  go, so a burst of clients lands on whichever worker wakes first.) A keep-alive
  connection stays with its worker, and so does its batching.
- **Statistics** (V2, gRPC and ``/metrics``) are summed over the workers when asked
  (:mod:`edgemp.runtime.server.peers`); health answers for the worker asked.
- **Start**: the supervisor logs ``serving ...`` once every worker is ready. A worker that
  fails to start stops the server with its error (exit 1).
- **Failure**: a worker that dies while serving stops the others (they drain) and the
  supervisor exits 1, so the process manager restarts the server whole instead of it
  running on at part capacity unnoticed.
- **Stop**: SIGTERM/SIGINT to the supervisor drain every worker (each as a lone server
  does); exit 0 once all have.

POSIX only (``fork``). Each worker loads its own copy of the models: forking after ONNX
Runtime sessions exist is not safe (their thread pools do not survive it), so memory is
N times one server's. Limits such as ``max_connections`` and ``max_buffered_bytes`` are
per worker.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgemp.errors import EdgempError
from edgemp.runtime.server.config import ServerConfig
from edgemp.runtime.server.peers import Peers

logger = logging.getLogger(__name__)

MAX_WORKERS = 256
BACKLOG = 1024


@dataclass
class Worker:
    """What one worker process serves on: its sockets and its peers."""

    index: int
    count: int
    http_sock: socket.socket
    grpc_sock: socket.socket | None
    peers: Peers


def check_workers(count: int) -> None:
    """Refuse a worker count this platform or this server cannot run, naming why."""
    if not 1 <= count <= MAX_WORKERS:
        raise EdgempError(f"--workers must be in 1..{MAX_WORKERS}, got {count}")
    if count > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
        raise EdgempError("--workers above 1 needs fork and SO_REUSEPORT (Linux, BSD, macOS); run one worker here")


def bind_group(host: str, port: int, count: int, what: str) -> list[socket.socket]:
    """``count`` listening sockets on one port (0: one picked for all), in one SO_REUSEPORT group."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise EdgempError(f"cannot listen{what} on {host}:{port}: {e.strerror}") from e
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
            address = (address[0], sock.getsockname()[1], *address[2:])  # port 0: the others join the first's
    except OSError as e:
        for sock in socks:
            sock.close()
        raise EdgempError(f"cannot listen{what} on {host}:{port}: {e.strerror}") from e
    return socks


def serve_workers(count: int, config: ServerConfig, serve_one: Callable[[Worker, Callable[[], None]], None],
                  started_at: float) -> None:
    """Run ``count`` workers until SIGTERM/SIGINT; raises EdgempError (exit 1) when one fails.

    ``serve_one(worker, ready)`` is a worker's whole life (load the models, serve until a
    signal, drain); it calls ``ready()`` once it accepts requests, and runs in a forked child.
    """
    check_workers(count)
    http = bind_group(config.host, config.port, count, "")
    grpc = bind_group(config.host, config.grpc_port, count, " for gRPC") if config.grpc_port is not None else None
    http_port, grpc_port = _port(http), _port(grpc)
    folder = Path(tempfile.mkdtemp(prefix="edgemp-workers-"))  # 0700: only this user reaches the peers' sockets
    read_fd, write_fd = os.pipe()
    children: dict[int, int] = {}  # pid -> worker index
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # the child never returns from here, whatever happens
                code = 1
                try:
                    os.close(read_fd)
                    mine = Worker(index, count, http[index], None if grpc is None else grpc[index],
                                  Peers(folder, index, count))
                    for sock in http + (grpc or []):
                        if sock is not mine.http_sock and sock is not mine.grpc_sock:
                            sock.close()
                    code = _child(mine, serve_one, write_fd)
                finally:
                    os._exit(code)
            children[pid] = index
    finally:
        if len(children) < count:  # a fork failed: stop the ones started
            for pid in children:
                _kill(pid, signal.SIGTERM)
        os.close(write_fd)
        for sock in http + (grpc or []):
            sock.close()  # each worker holds its own: a worker's socket leaves the group when it exits
    try:
        if len(children) < count:
            _reap_all(children)
            raise EdgempError(f"could not start {count} workers (fork failed)")
        _Supervisor(children, read_fd, config, count, http_port=http_port, grpc_port=grpc_port,
                    started_at=started_at).run()
    finally:
        os.close(read_fd)
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
        folder.rmdir()


def _port(socks: list[socket.socket] | None) -> int | None:
    return None if not socks else socks[0].getsockname()[1]


def _child(worker: Worker, serve_one: Callable[[Worker, Callable[[], None]], None], notify_fd: int) -> int:
    """A worker's process: its exit status. Tells the supervisor "ready" or why it could not start."""
    _die_with_parent()
    for handler in logging.getLogger().handlers:  # each line says which worker wrote it
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s worker-{worker.index} %(name)s: %(message)s"))
    started = False

    def ready() -> None:
        nonlocal started
        started = True
        _tell(notify_fd, f"R{worker.index}")

    try:
        serve_one(worker, ready)
        return 0
    except KeyboardInterrupt:  # Ctrl-C before the server's own handlers were up: a stop, not a failure
        return 0
    except EdgempError as e:
        message = str(e)
    except OSError as e:
        message = str(e)
    except BaseException as e:  # noqa: BLE001 - anything else: the traceback in the log, one line up
        logger.error("worker %d failed:\n%s", worker.index, traceback.format_exc())
        message = f"{type(e).__name__}: {e}"
    if not started:
        _tell(notify_fd, f"E{worker.index} {message}")
    else:
        logger.error("worker %d stopped serving: %s", worker.index, message)
    return 1


def _tell(fd: int, line: str) -> None:
    data = (line.replace("\n", " ")[:3000] + "\n").encode("utf-8", "replace")  # under PIPE_BUF: one write
    try:
        os.write(fd, data)
    except OSError:
        pass  # the supervisor is gone; the worker stops with it


def _die_with_parent() -> None:
    """Linux: SIGTERM (drain) this worker when the supervisor dies, even by SIGKILL."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # not Linux: a supervisor killed by SIGKILL leaves its workers serving
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap_all(children: dict[int, int]) -> None:
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        children.pop(pid, None)


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class _Supervisor:
    """The parent's loop: announce readiness, forward signals, watch the workers."""

    def __init__(self, children: dict[int, int], read_fd: int, config: ServerConfig, count: int, *,
                 http_port: int | None, grpc_port: int | None, started_at: float) -> None:
        self.children = children
        self.read_fd = read_fd
        self.config = config
        self.count = count
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.started_at = started_at
        self.ready: set[int] = set()
        self.stopping = False
        self.failure: str | None = None  # why the server stops with status 1
        self._buffer = b""
        self._pipe_closed = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while self.children:
                self._read_messages(0.1)
                self._reap()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failure is not None:
            raise EdgempError(self.failure)
        logger.info("all %d workers stopped; shutdown complete", self.count)

    def _on_signal(self, sig: int, frame: object) -> None:
        if not self.stopping:
            logger.info("received %s: draining %d workers", signal.Signals(sig).name, len(self.children))
        self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for pid in self.children:
            _kill(pid, signal.SIGTERM)

    def _read_messages(self, wait_s: float) -> None:
        """Handle what the workers wrote (waiting up to ``wait_s`` for it)."""
        if self._pipe_closed:  # every worker has exited: only the reaping is left
            time.sleep(wait_s)
            return
        readable, _, _ = select.select([self.read_fd], [], [], wait_s)
        if not readable:
            return
        data = os.read(self.read_fd, 65536)
        if not data:
            self._pipe_closed = True
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace")
            kind, _, rest = text.partition(" ")
            if kind.startswith("R"):
                self.ready.add(int(kind[1:]))
                if len(self.ready) == self.count and not self.stopping:
                    self._announce()
            elif kind.startswith("E") and self.failure is None:
                self.failure = rest or f"worker {kind[1:]} could not start"
                self._stop()

    def _announce(self) -> None:
        since = (time.perf_counter() - self.started_at) * 1e3
        host = self.config.host
        if self.grpc_port is not None:
            logger.info("serving gRPC (inference.GRPCInferenceService) on %s:%d", host, self.grpc_port)
        logger.info("serving on http://%s:%d with %d workers (%.0f ms after start)", host, self.http_port,
                    self.count, since)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            index = self.children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping and code in (0, -signal.SIGTERM, -signal.SIGINT):
                continue  # stopped as asked (before its own handlers were up, a signal ends it at once)
            self._read_messages(0)  # a worker that could not start wrote why before it exited
            if self.failure is None:  # the first failure is the one reported
                self.failure = (f"worker {index} (pid {pid}) {_exit_reason(status)}"
                                + ("" if self.stopping else "; the other workers were stopped"))
                if not self.stopping:
                    logger.error("%s", self.failure)
            self._stop()
