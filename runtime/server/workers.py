"""``edgemp serve --workers N``: N server processes behind one port, for throughput on more cores.

One server process answers from one Python event loop, and that loop's work per request
caps it (benchmarks/results/server.md: ~70 µs a small request on the loop, so ~14k
requests/s at best, whatever the cores). N workers each run the whole server (models,
batchers, the HTTP and gRPC listeners) on one port:

- **Connections**: one listening socket per worker and protocol, all on the same port with
  ``SO_REUSEPORT``, so the kernel spreads new connections over the workers by their
  addresses. (One shared socket would not: asyncio accepts every queued connection in one
  go, so a burst of clients lands on whichever worker wakes first.) A keep-alive
  connection stays with its worker, and so does its batching. A replacement binds its
  sockets only once its models are loaded: the kernel hands a listening socket its share of
  new connections at once, so one bound while it still loads would hold those clients for the
  whole load (or for ever, if the load hangs), while the workers already serving take them.
  The first workers, and a replacement started while no worker serves, get sockets the
  supervisor bound before the fork: a port with no listener in its group could be taken by
  another server meanwhile (sockets that never listen do not keep a ``SO_REUSEADDR`` binder
  off it).
- **Statistics** (V2, gRPC and ``/metrics``) are summed over the workers when asked
  (:mod:`edgemp.runtime.server.peers`); health answers for the worker asked.
- **Start**: the supervisor logs ``serving ...`` once every worker is ready. A worker that
  fails to start stops the server with its error (exit 1): a bad model or setting would
  fail the same way in every replacement.
- **Failure**: a worker that dies while serving (OOM-killed, a crash in native code) is
  replaced by a new process with new sockets in the same groups; its open connections are
  lost with it, as with any crashed server, and the others keep serving meanwhile. Three
  deaths within a minute (or one per worker, if there are more) stop the server (the others
  drain; exit 1), so a crash loop reaches the process manager instead of spinning here. A
  replacement refuses to start if a model file changed since the server started: it would
  serve another model than the others under the same name.
- **Stuck**: a worker that is alive but no longer serves (stopped by SIGSTOP or a cgroup
  freezer, a deadlock, native code spinning with the GIL held, a model call that never
  returns) would keep its share of new connections and hang them. Each worker reports to the
  supervisor about once a second from its event loop, and skips the report while one of its
  models has run a single batch for longer than ``--worker-timeout-s``; a worker not heard
  from for that long is killed (SIGKILL) and replaced as a dead one is. Its requests in
  flight are lost with it, as with a crash; later ones are answered by the others and then by
  its replacement. Only silence while the supervisor itself runs counts, so pausing the
  whole service (Ctrl-Z, ``docker pause``) kills nothing. The same bound ends a stop that a
  stuck worker would hold forever, one that never got as far as serving included. A
  replacement that is not serving within the timeout, or 3 × the first start if that is
  longer, is killed and replaced in turn (its load hangs: a stuck file system, a deadlock in
  native code), and counts as a death; two in a row for the same worker stop the server
  (exit 1), since a load that hangs twice will hang again and the process manager should
  hear of it.
- **Stop**: SIGTERM/SIGINT to the supervisor drain every worker (each as a lone server
  does); exit 0 once all have.

POSIX only (``fork``). Each worker loads its own copy of the models: forking after ONNX
Runtime sessions exist is not safe (their thread pools do not survive it), so memory is
N times one server's. Limits such as ``max_connections`` and ``max_buffered_bytes`` are
per worker.
"""
from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgemp.errors import EdgempError
from edgemp.runtime.server.config import DEFAULT_WORKER_TIMEOUT_S, ServerConfig, check_worker_timeout
from edgemp.runtime.server.peers import Peers, fold_retired

if TYPE_CHECKING:
    from edgemp.runtime.server.state import ServerState

logger = logging.getLogger(__name__)

MAX_WORKERS = 256
BACKLOG = 1024
MAX_DEATHS = 3  # this many deaths (at least one per worker) within RESTART_WINDOW_S stop the server
RESTART_WINDOW_S = 60.0
MAX_HUNG_IN_A_ROW = 2  # replacements of one worker killed in a row for a load that hangs stop the server
HEARTBEAT_S = 1.0  # how often a worker reports (more often for a timeout under 4 s)
TICK_S = 0.1  # the supervisor's loop: how long it waits for a worker's message at a time
# The supervisor's clock for silences advances by at most this between two looks: a longer gap
# means the supervisor itself was not running (the service paused, a starved host), and its
# workers most likely were not either. Above a loop turn (TICK_S and a reap); with the report
# period (a quarter of the timeout, at most 1 s) it stays under any allowed timeout (>= 1 s).
CLOCK_STEP_CAP_S = 0.5


@dataclass
class Worker:
    """What one worker process serves on: its sockets and its peers."""

    index: int
    count: int
    http: "_Address"  # where it listens: one socket per address, as a lone server listens
    grpc: "_Address | None"
    peers: Peers
    notify_fd: int = -1  # the supervisor's pipe: "ready", "alive", or why it could not start
    timeout_s: float = DEFAULT_WORKER_TIMEOUT_S  # 0: never reports (the supervisor does not watch)
    bound: "tuple[list[socket.socket], list[socket.socket] | None] | None" = None  # bound before the fork

    def bind_http(self) -> list[socket.socket]:
        """This worker's listening HTTP sockets in the port's groups (call once it can serve)."""
        return self.bound[0] if self.bound is not None else self.http.bind()

    def bind_grpc(self) -> list[socket.socket] | None:
        if self.bound is not None:
            return self.bound[1]
        return None if self.grpc is None else self.grpc.bind()

    def keep_reporting(self, state: "ServerState") -> None:
        """Tell the supervisor "alive" now and about every second, on the running event loop,
        until the loop stops. Only a loop that turns reports, and a worker one of whose models
        has run one batch for longer than the timeout stays silent: it answers nothing either.

        Each turn also keeps this worker's counters in its file when they changed, so a worker
        killed outright (OOM, a crash in native code) leaves at most the last second of its
        traffic out of the server's totals (:mod:`edgemp.runtime.server.peers`)."""
        loop = asyncio.get_running_loop()
        watched = self.timeout_s > 0
        period = min(HEARTBEAT_S, self.timeout_s / 4) if watched else HEARTBEAT_S
        message = f"H{self.index}"

        def report() -> None:
            if watched and not any(served.batcher.running_for_s() > self.timeout_s
                                   for served in state.models.values()):
                _tell(self.notify_fd, message)
            self.peers.keep_if_changed(state)
            loop.call_later(period, report)

        report()


def check_workers(count: int, timeout_s: float = DEFAULT_WORKER_TIMEOUT_S) -> None:
    """Refuse a worker count or timeout this platform or this server cannot run, naming why."""
    if not 1 <= count <= MAX_WORKERS:
        raise EdgempError(f"--workers must be in 1..{MAX_WORKERS}, got {count}")
    check_worker_timeout(timeout_s)
    if count > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
        raise EdgempError("--workers above 1 needs fork and SO_REUSEPORT (Linux, BSD, macOS); run one worker here")


class _Address:
    """Where one protocol listens: every address the host resolves to (as a lone server binds
    them), on one port, resolved once so that every worker's sockets (a replacement's too) join
    the same SO_REUSEPORT groups."""

    def __init__(self, host: str, port: int, what: str) -> None:
        self.host, self.what = host, what
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise EdgempError(f"cannot listen{what} on {host}:{port}: {e.strerror}") from e
        self.targets = list(dict.fromkeys((family, kind, proto, address) for family, kind, proto, _, address in infos))
        self.port = port
        self.anchors: list[socket.socket] = []
        self._claim()

    def _claim(self) -> None:
        """Fail now, as a lone server would, if something listens there already.

        Linux lets any process of the same user join a SO_REUSEPORT group, so binding the
        group straight away would "succeed" beside a server started earlier on the same port
        and silently take half its connections. A plain bind (SO_REUSEADDR only, as a lone
        server binds) on every address is refused by any listener; port 0 picks the port here.
        """
        try:
            for probe in self._sockets(reuseport=False, listen=False):
                probe.close()
            # Then held until the server stops: group sockets that never listen (so they are never
            # given a connection) keep binders without SO_REUSEADDR off the port between and after
            # the workers' own binds.
            self.anchors = self._sockets(reuseport=True, listen=False)
        except OSError as e:
            self.close()
            raise EdgempError(f"cannot listen{self.what} on {self.host}:{self.port}: {e.strerror}") from e

    def close(self) -> None:
        for sock in self.anchors:
            sock.close()
        self.anchors = []

    def bind(self) -> list[socket.socket]:
        """New listening sockets in the groups, one per address."""
        try:
            return self._sockets(reuseport=True, listen=True)
        except OSError as e:
            raise EdgempError(f"cannot listen{self.what} on {self.host}:{self.port}: {e.strerror}") from e

    def _sockets(self, reuseport: bool, listen: bool) -> list[socket.socket]:
        """One socket per address, bound to the port (port 0: the first bind picks it for all)."""
        socks: list[socket.socket] = []
        try:
            for family, kind, proto, address in self.targets:
                sock = socket.socket(family, kind, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuseport:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # as asyncio binds: [::] does not take IPv4 from 0.0.0.0's socket
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], self.port, *address[2:]))
                self.port = sock.getsockname()[1]
                if listen:
                    sock.listen(BACKLOG)
                    sock.setblocking(False)
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return socks


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _Launcher:
    """Forks workers, each with its own new sockets in the port's groups (see :meth:`launch`)."""

    def __init__(self, config: ServerConfig, count: int, serve_one: Callable[[Worker, Callable[[], None]], None],
                 folder: Path, read_fd: int, write_fd: int, timeout_s: float = DEFAULT_WORKER_TIMEOUT_S) -> None:
        self.count = count
        self.timeout_s = timeout_s
        self.serve_one = serve_one
        self.folder = folder
        self.read_fd, self.write_fd = read_fd, write_fd
        if config.grpc_port == config.port != 0:  # SO_REUSEPORT would put both in one group, not refuse it
            raise EdgempError(f"cannot listen for gRPC on {config.host}:{config.port}: it is the HTTP port too")
        self.http = _Address(config.host, config.port, "")
        self.grpc: _Address | None = None
        try:
            for _ in range(8):  # port 0 for both: the kernel may hand gRPC the port just claimed for HTTP
                if config.grpc_port is None:
                    break
                if self.grpc is not None:
                    self.grpc.close()
                self.grpc = _Address(config.host, config.grpc_port, " for gRPC")
                if self.grpc.port != self.http.port:
                    break
            else:
                raise EdgempError(f"cannot listen for gRPC on {config.host}: no free port apart from HTTP's")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let the ports go (the workers' own sockets close with them)."""
        self.http.close()
        if getattr(self, "grpc", None) is not None:
            self.grpc.close()

    def launch(self, index: int, bind_first: bool) -> int:
        """Start worker ``index``; its pid. ``bind_first``: its sockets are bound here, before the
        fork (no worker serves: the port must have a listener); else it binds them once loaded."""
        bound = None
        if bind_first:
            http = self.http.bind()
            try:
                bound = (http, self.grpc.bind() if self.grpc is not None else None)
            except BaseException:
                for sock in http:
                    sock.close()
                raise
        # A stop signal must not reach the child while it still has the supervisor's handlers:
        # blocked across the fork, the child restores the defaults first (a signal while it loads
        # the models ends it; its server installs its own drain handlers once it serves).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the child never returns from here, whatever happens
                code = 1
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                    os.close(self.read_fd)
                    self.close()  # the supervisor's anchors: a worker must not hold the ports after it
                    code = _child(Worker(index, self.count, self.http, self.grpc, Peers(self.folder, index, self.count),
                                         self.write_fd, self.timeout_s, bound), self.serve_one)
                finally:
                    os._exit(code)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # the supervisor's pending signal runs now
            for sock in (bound[0] + (bound[1] or [])) if bound is not None else ():
                sock.close()  # the worker holds its own: its sockets leave the groups when it exits
        return pid


def serve_workers(count: int, config: ServerConfig, serve_one: Callable[[Worker, Callable[[], None]], None],
                  started_at: float, timeout_s: float = DEFAULT_WORKER_TIMEOUT_S) -> None:
    """Run ``count`` workers until SIGTERM/SIGINT; raises EdgempError (exit 1) when the server fails.

    ``serve_one(worker, ready)`` is a worker's whole life (load the models, serve until a
    signal, drain); it calls ``ready()`` once it accepts requests, and runs in a forked child.
    A worker not heard from for ``timeout_s`` (0: never checked) is killed and replaced.
    """
    check_workers(count, timeout_s)
    folder = Path(tempfile.mkdtemp(prefix="edgemp-workers-"))  # 0700: only this user reaches the peers' sockets
    read_fd, write_fd = os.pipe()
    # Workers write without blocking: one whose supervisor stopped reading (SIGSTOP) drops its
    # reports rather than freeze its event loop on a full pipe.
    os.set_blocking(write_fd, False)
    try:
        launcher = _Launcher(config, count, serve_one, folder, read_fd, write_fd, timeout_s)
        try:
            _Supervisor(launcher, config, started_at).run()
        finally:
            launcher.close()
    finally:
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(folder, ignore_errors=True)


def _child(worker: Worker, serve_one: Callable[[Worker, Callable[[], None]], None]) -> int:
    """A worker's process: its exit status. Tells the supervisor "ready" or why it could not start."""
    _die_with_parent()
    for handler in logging.getLogger().handlers:  # each line says which worker wrote it
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s worker-{worker.index} %(name)s: %(message)s"))
    started = False

    def ready() -> None:
        nonlocal started
        started = True
        _tell(worker.notify_fd, f"R{worker.index}")

    try:
        serve_one(worker, ready)
        return 0
    except KeyboardInterrupt:  # Ctrl-C before the server's own handlers were up: a stop, not a failure
        return 0
    except (EdgempError, OSError) as e:
        message = str(e)
    except BaseException as e:  # noqa: BLE001 - anything else: the traceback in the log, one line up
        logger.error("worker %d failed:\n%s", worker.index, traceback.format_exc())
        message = f"{type(e).__name__}: {e}"
    if not started:
        _tell(worker.notify_fd, f"E{worker.index} {message}")
    else:
        logger.error("worker %d stopped serving: %s", worker.index, message)
    return 1


def _tell(fd: int, line: str) -> None:
    data = (line.replace("\n", " ")[:3000] + "\n").encode("utf-8", "replace")  # under PIPE_BUF: one write
    try:
        os.write(fd, data)
    except OSError:
        pass  # the supervisor is gone (the worker stops with it), or not reading: the pipe is full


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


def _exit_reason(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class _Supervisor:
    """The parent's loop: start the workers, announce readiness, forward signals, replace a
    worker that dies, and stop the server when one cannot start or keeps dying."""

    def __init__(self, launcher: _Launcher, config: ServerConfig, started_at: float) -> None:
        self.launcher = launcher
        self.config = config
        self.count = launcher.count
        self.started_at = started_at
        self.children: dict[int, int] = {}  # pid -> worker index
        self.ready: set[int] = set()  # indexes whose current process serves
        self.announced = False
        self.deaths: list[float] = []  # when workers died unexpectedly
        self.stopping = False
        self.failure: str | None = None  # why the server stops with status 1
        # Silences are measured on the supervisor's own running clock (see _advance), not wall time.
        self.clock = 0.0
        self._last_look = time.monotonic()
        self.signalled: dict[int, float] = {}  # pid -> clock when it was sent SIGTERM
        self.heard: dict[int, float] = {}  # worker index -> clock when it last reported
        self.killed: set[int] = set()  # pids killed as stuck
        self.launched: dict[int, float] = {}  # pid -> clock when it was started
        self.first_start_s = 0.0  # how long the first workers took to serve, all of them
        self.hung: set[int] = set()  # replacements killed for not serving in time: deaths, not start failures
        self.hung_in_a_row: dict[int, int] = {}  # worker index -> its replacements killed as hung since one served
        self._buffer = b""

    def run(self) -> None:
        # Left installed after the loop: a stop signal in the last moments before exit is absorbed,
        # not the process's end by that signal (an exit status other than the server's).
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        for index in range(self.count):
            if self.stopping:
                break
            self._launch(index)
        while self.children:
            self._read_messages(TICK_S)
            self._reap()
            self._kill_stuck()
        if self.failure is not None:
            raise EdgempError(self.failure)
        logger.info("all %d workers stopped; shutdown complete", self.count)

    def _launch(self, index: int) -> None:
        try:
            pid = self.launcher.launch(index, bind_first=not self.ready)
        except (EdgempError, OSError) as e:  # a socket that cannot be bound, or no fork
            self._fail(str(e) if isinstance(e, EdgempError) else f"could not start worker {index}: {e}")
            return
        self.children[pid] = index
        self.launched[pid] = self._advance()
        if self.stopping:  # a stop signal came during the fork
            self._stop()

    def _fail(self, reason: str) -> None:
        if self.failure is None:  # the first failure is the one reported
            self.failure = reason
        self._stop()

    def _on_signal(self, sig: int, frame: object) -> None:
        if not self.stopping:
            logger.info("received %s: draining %d workers", signal.Signals(sig).name, len(self.children))
        self._stop()

    def _stop(self) -> None:
        """SIGTERM each worker once: a second signal would only repeat the drain it started."""
        self.stopping = True
        for pid in self.children:
            if pid not in self.signalled:
                self.signalled[pid] = self.clock
                _kill(pid, signal.SIGTERM)

    def _read_messages(self, wait_s: float) -> None:
        """Handle what the workers wrote (waiting up to ``wait_s`` for it)."""
        readable, _, _ = select.select([self.launcher.read_fd], [], [], wait_s)
        self._advance()  # before the reports are stamped: they are that fresh
        if not readable:
            return
        self._buffer += os.read(self.launcher.read_fd, 65536)
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode("utf-8", "replace").partition(" ")
            if kind.startswith("H"):
                self.heard[int(kind[1:])] = self.clock
            elif kind.startswith("R"):
                self._ready(int(kind[1:]))
            elif kind.startswith("E"):
                self._fail(rest or f"worker {kind[1:]} could not start")

    def _ready(self, index: int) -> None:
        self.ready.add(index)
        self.hung_in_a_row.pop(index, None)
        self.heard[index] = self.clock
        if self.stopping:
            return
        if self.announced:
            logger.info("worker %d serves again", index)
        elif len(self.ready) == self.count:
            self.announced = True
            self.first_start_s = self.clock
            since = (time.perf_counter() - self.started_at) * 1e3
            host = self.config.host
            if self.launcher.grpc is not None:
                logger.info("serving gRPC (inference.GRPCInferenceService) on %s:%d", host, self.launcher.grpc.port)
            logger.info("serving on http://%s:%d with %d workers (%.0f ms after start)", host,
                        self.launcher.http.port, self.count, since)

    def _advance(self) -> float:
        """The supervisor's running clock, now: wall time, except that a gap between two looks
        counts as CLOCK_STEP_CAP_S at most. After Ctrl-Z or ``docker pause`` the whole service
        resumes together, and the workers' overdue reports may come a moment after the
        supervisor looks; only silence while the supervisor ran counts against them."""
        now = time.monotonic()
        self.clock += min(now - self._last_look, CLOCK_STEP_CAP_S)
        self._last_look = now
        return self.clock

    def _kill_stuck(self) -> None:
        """SIGKILL a serving worker not heard from for the timeout, or any worker still there the
        timeout after it was asked to stop; it is then reaped (and replaced, unless stopping) as a
        worker that died."""
        timeout = self.launcher.timeout_s
        now = self._advance()
        if timeout <= 0:
            return
        for pid, index in self.children.items():
            if pid in self.killed:
                continue
            if index in self.ready:
                silent = now - self.heard.get(index, now)
                if silent <= timeout:
                    continue
                why = f"has not reported for {silent:.1f} s (its event loop, or a model run, is stuck)"
            elif pid in self.signalled and now - self.signalled[pid] > timeout:
                # Not serving yet, so it never reported: asked to stop, it is still loading after the
                # timeout (stopped, or hung in native code with the signal pending).
                why = f"did not stop within {now - self.signalled[pid]:.1f} s of SIGTERM before it was ready"
            elif self.announced and not self.stopping \
                    and now - self.launched.get(pid, now) > max(timeout, 3 * self.first_start_s):
                # A replacement still loading long after the first workers were all serving: its load
                # hangs. It holds no connections (it binds once loaded), but its share of the cores idles.
                why = (f"was not serving {now - self.launched[pid]:.1f} s after it was started (the first "
                       f"workers took {self.first_start_s:.1f} s; its load hangs)")
                self.hung.add(pid)
            else:
                continue
            self.killed.add(pid)
            logger.error("worker %d (pid %d) %s; killing it", index, pid, why)
            _kill(pid, signal.SIGKILL)

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
            self.killed.discard(pid)
            self.signalled.pop(pid, None)
            self.launched.pop(pid, None)
            hung = pid in self.hung
            self.hung.discard(pid)
            if index is None:
                continue
            fold_retired(self.launcher.folder, pid)  # before a replacement, which may get the same pid
            self._read_messages(0)  # what it wrote before it exited: "ready", or why it could not start
            was_ready = index in self.ready
            self.ready.discard(index)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if code not in (0, -signal.SIGTERM, -signal.SIGINT) and not hung:  # not as asked
                    self._fail(f"worker {index} (pid {pid}) {_exit_reason(status)} while stopping")
                continue
            what = f"worker {index} (pid {pid}) {_exit_reason(status)}"
            if not was_ready and not hung:
                self._fail(f"{what} before it was ready; the other workers were stopped")
                continue
            if hung:
                self.hung_in_a_row[index] = in_a_row = self.hung_in_a_row.get(index, 0) + 1
                if in_a_row >= MAX_HUNG_IN_A_ROW:  # slower than the restart window: counted on its own
                    self._fail(f"{what}; {in_a_row} replacements of worker {index} in a row were not serving in "
                               "time (their load hangs), so the other workers were stopped")
                    continue
            now = time.monotonic()
            self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
            if len(self.deaths) >= max(MAX_DEATHS, self.count):  # server-wide: deaths that rotate count too
                self._fail(f"{what}; {len(self.deaths)} workers died within {RESTART_WINDOW_S:.0f} s, "
                           "so the other workers were stopped")
                continue
            # Its connections are gone (their clients see a reset, as from any crashed server); new ones go
            # to the others until the replacement listens. Its counters stay in the sums as last reported (peers.py).
            logger.error("%s; starting a new one", what)
            self._launch(index)
