"""The workers of one ``edgemp serve --workers N`` answer each other's statistics.

Each worker is a process with its own counters, and a statistics request or a Prometheus
scrape lands on whichever worker accepted its connection. Answered from that worker's
counters alone, ``edgemp_requests_total`` would jump between workers from scrape to scrape
(``rate()`` reads every drop as a counter reset) and the V2 statistics would cover a
random fraction of the traffic. So the worker that is asked collects the others' raw
counters, each over a Unix socket in a folder only this user can enter (the supervisor
makes it, mode 0700), and answers with the sums. Nothing here runs per inference request,
only per statistics request.

A worker that cannot be reached (it is gone or stuck) makes the statistics request fail
with 503 rather than answer a partial sum: a counter that silently loses a worker's share
is a wrong answer, a failed scrape is a visible gap.

A worker that died (and was replaced) keeps its share: every worker writes its counters to
a file in the same folder before it reports them (and when it stops), and when the supervisor
reaps a worker it folds that file into one sum of all the dead (:func:`fold_retired`), which
every total adds. So no total ever goes down, as Prometheus needs of a counter (any drop reads
as a reset, and ``rate()`` then counts the whole total again). A worker also writes its file
about once a second while its counters change, so what a worker killed outright served in its
last second at most is missing from the totals, never subtracted (one killed as stuck also
loses the batches its batcher ran while its event loop, which writes the file, was stuck).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemp.runtime.server.middleware import UnavailableError
from edgemp.runtime.server.stats import ModelStats

if TYPE_CHECKING:
    from edgemp.runtime.server.state import ServerState

logger = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 2.0  # a worker whose event loop cannot answer this fast is stuck
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a few KB per model in practice


class ModelView:
    """One model's statistics as a request should see them: the counters and the queue depth."""

    __slots__ = ("stats", "queue_depth")

    def __init__(self, stats: ModelStats, queue_depth: int) -> None:
        self.stats = stats
        self.queue_depth = queue_depth


RETIRED = "retired.json"  # the summed last counters of every worker that is gone
FOLDED_KEPT = 64  # the latest folded workers' tokens kept (a reader between a glob and a read needs them)


class Peers:
    """This worker's place among the server's workers: its socket, and the others' addresses."""

    def __init__(self, folder: Path, index: int, count: int) -> None:
        self.folder = folder
        self.index = index
        self.count = count
        self.supervisor = os.getppid()  # made in the worker just after its fork
        # This process's counters file: its pid (so the supervisor finds it when it reaps the pid)
        # and a random part (a later process given the same pid never takes it over).
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._server: asyncio.AbstractServer | None = None
        self._state: "ServerState | None" = None  # what it serves, set by start()
        self._kept: dict[str, Any] | None = None  # the counters last written to its file
        self._keep_failed = False

    def path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.sock"

    async def start(self, state: "ServerState") -> None:
        """Answer the other workers' requests for this one's counters (until :meth:`close`)."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                try:
                    counters = self._kept_counters(state)
                except UnavailableError as e:  # the asker's 503 says why
                    counters = {"error": str(e)}
                writer.write(json.dumps(counters).encode())
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the asking worker went away
            finally:
                writer.close()

        self._server = await asyncio.start_unix_server(answer, path=str(self.path(self.index)))
        self._state = state

    async def close(self, stopping: bool = True) -> None:
        """Stop answering, with this worker's final counters kept for the others' sums.

        ``stopping``: the server is being stopped. If the supervisor is gone (SIGKILL; its
        workers drain on Linux), the last worker out clears the folder, which it would have.
        """
        if self._server is not None:
            try:
                self._kept_counters(self._state)  # what it served since it was last asked counts too
            except UnavailableError:
                pass  # the last kept counters stay
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path(self.index).unlink(missing_ok=True)
            if stopping and self._supervisor_gone():
                self._clear_folder()

    def _supervisor_gone(self) -> bool:
        if os.getppid() != self.supervisor:
            return True
        # Linux: a SIGKILLed supervisor's threads die one by one, and the parent-death signal can
        # come before its workers are handed to another parent; the process is a zombie by then.
        try:
            stat = Path(f"/proc/{self.supervisor}/stat").read_text()
        except FileNotFoundError:
            return Path("/proc/self").exists()  # no such process (where /proc exists at all)
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[:1] in (["Z"], ["X"])

    def _clear_folder(self) -> None:
        if any(self.folder.glob("worker-*.sock")):
            return  # others still serve
        for path in self.folder.iterdir():
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # another worker cleared it first

    async def _read(self, index: int) -> bytes:
        reader, writer = await asyncio.open_unix_connection(str(self.path(index)))
        try:
            return await _read_all(reader)
        finally:
            writer.close()

    def _kept_counters(self, state: "ServerState") -> dict[str, Any]:
        """This worker's counters, written to its file first: a total a client saw never loses them."""
        return self._keep({"token": self.token, "models": own_counters(state)})

    def _keep(self, counters: dict[str, Any]) -> dict[str, Any]:
        try:
            _write_whole(self.folder / f"stats-{self.token}.json", counters)
        except OSError as e:
            raise UnavailableError(f"worker {self.index} cannot keep its statistics ({e}); the server's totals "
                                   "are not available") from e
        self._kept = counters
        return counters

    def keep_if_changed(self, state: "ServerState") -> None:
        """Write this worker's counters to its file if they changed since they were last written
        (on the event loop, as every write of the file is: a later write always holds more)."""
        if self._server is None:
            return  # not serving yet, or closed: close() kept the final ones
        counters = {"token": self.token, "models": own_counters(state)}
        kept = self._kept
        if kept is not None and _without_depths(kept) == _without_depths(counters):
            return  # nothing served since: the file holds these already
        try:
            self._keep(counters)
            self._keep_failed = False
        except UnavailableError as e:
            if not self._keep_failed:  # once per failing spell, not once a second
                logger.warning("%s", e)
            self._keep_failed = True

    def _retired(self, live: set[str]) -> list[dict[str, Any]]:
        """The last counters of workers that are gone: their own files until the supervisor folds
        them into one (:func:`fold_retired`), then that one. Files first: a file folded between
        the two reads is then found in the fold, and counted once."""
        files = []
        try:
            for path in self.folder.glob("stats-*.json"):
                try:
                    counters = json.loads(path.read_bytes())
                except FileNotFoundError:
                    continue  # folded meanwhile: read below
                if counters.get("token") not in live:
                    files.append(counters)
            folded = _read_retired(self.folder)
        except (OSError, ValueError, AttributeError) as e:
            raise UnavailableError(f"the statistics of workers that stopped could not be read ({e}); the "
                                   "server's totals are not available") from e
        tokens = set(folded["folded"])
        return [c for c in files if c.get("token") not in tokens] + [folded]

    async def gather(self, state: "ServerState") -> dict[str, ModelView]:
        """Every served model's statistics summed over all workers, gone ones included (this one's read last)."""
        others = await asyncio.gather(*(self._ask(i) for i in range(self.count) if i != self.index))
        mine = self._kept_counters(state)
        live = [mine, *others]
        retired = self._retired({c["token"] for c in live})
        folded = set(retired[-1]["folded"])  # the fold comes last
        # A worker that answered, then died and was folded before the fold was read, is in the fold
        # (as it last wrote, which is at least what it answered): counted there, not twice.
        live = [c for c in live if c["token"] not in folded]
        views = {}
        for name in state.models:
            parts = [c["models"][name] for c in live + retired if name in c["models"]]
            depth = sum(c["models"][name]["queue_depth"] for c in live if name in c["models"])
            views[name] = ModelView(ModelStats.merged([p["stats"] for p in parts]), depth)
        return views

    async def _ask(self, index: int) -> dict[str, Any]:
        try:
            answer = json.loads(await asyncio.wait_for(self._read(index), ANSWER_TIMEOUT_S))
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            reason = "did not answer in time" if isinstance(e, asyncio.TimeoutError) else f"could not be read ({e})"
            raise UnavailableError(f"statistics of worker {index} {reason}; the server's totals are "
                                   "not available until it is back") from e
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            raise UnavailableError(answer["error"])
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str) \
                or not isinstance(answer.get("models"), dict):
            raise UnavailableError(f"statistics of worker {index} could not be read (not a worker's counters); "
                                   "the server's totals are not available until it is back")
        return answer


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks, size = [], 0
    while chunk := await reader.read(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ValueError(f"answer over {MAX_ANSWER_BYTES} bytes")
    return b"".join(chunks)


def _write_whole(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so a reader in another process sees all of it or none."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(json.dumps(data).encode())
    os.replace(tmp, path)


def _read_retired(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / RETIRED).read_bytes())
    except FileNotFoundError:
        return {"token": "retired", "folded": [], "models": {}}


def fold_retired(folder: Path, pid: int) -> None:
    """The supervisor, reaping worker ``pid``: add its last counters to the retired sums and
    remove its file, before a new worker (which may get the same pid) starts.

    So a scrape reads one file per live worker and one for all the dead, however many died,
    and no total goes down: the fold is written whole before the worker's file goes.
    """
    for path in folder.glob(f"stats-{pid}-*.json.tmp"):  # a write it was killed in the middle of
        path.unlink(missing_ok=True)
    for path in folder.glob(f"stats-{pid}-*.json"):
        try:
            counters = json.loads(path.read_bytes())
            retired = _read_retired(folder)
            models = retired["models"]
            for name, part in counters["models"].items():
                raws = [part["stats"]] + ([models[name]["stats"]] if name in models else [])
                models[name] = {"stats": ModelStats.merged(raws).raw(), "queue_depth": 0}
            retired["folded"] = (retired["folded"] + [counters["token"]])[-FOLDED_KEPT:]
            _write_whole(folder / RETIRED, retired)
            path.unlink()
        except (OSError, ValueError, KeyError, TypeError) as e:  # left in place: still summed as it is
            logger.warning("could not fold the statistics of worker pid %d into the retired sums: %s", pid, e)


def _without_depths(counters: dict[str, Any]) -> dict[str, Any]:
    """The counters without the queue depths (a gauge, not a count: it changes with nothing served)."""
    return {name: part["stats"] for name, part in counters["models"].items()}


def own_counters(state: "ServerState") -> dict[str, Any]:
    """This worker's raw counters and queue depth, per model."""
    return {name: {"stats": served.stats.raw(), "queue_depth": served.queue_depth()}
            for name, served in state.models.items()}


async def model_views(state: "ServerState") -> dict[str, ModelView]:
    """The statistics a request should see: this process's, or all workers' summed."""
    peers = state.peers
    if peers is None:
        return {name: ModelView(s.stats, s.queue_depth()) for name, s in state.models.items()}
    return await peers.gather(state)
