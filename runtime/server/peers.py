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
a file in the same folder before it reports them, and the sums add the files of workers no
longer there. So no total ever goes down, as Prometheus needs of a counter (any drop reads
as a reset, and ``rate()`` then counts the whole total again). What a dead worker served
after its counters were last asked for is missing from the totals, never subtracted.
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgemp.runtime.server.middleware import UnavailableError
from edgemp.runtime.server.stats import ModelStats

if TYPE_CHECKING:
    from edgemp.runtime.server.state import ServerState

ANSWER_TIMEOUT_S = 2.0  # a worker whose event loop cannot answer this fast is stuck
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a few KB per model in practice


class ModelView:
    """One model's statistics as a request should see them: the counters and the queue depth."""

    __slots__ = ("stats", "queue_depth")

    def __init__(self, stats: ModelStats, queue_depth: int) -> None:
        self.stats = stats
        self.queue_depth = queue_depth


class Peers:
    """This worker's place among the server's workers: its socket, and the others' addresses."""

    def __init__(self, folder: Path, index: int, count: int) -> None:
        self.folder = folder
        self.index = index
        self.count = count
        self._server: asyncio.AbstractServer | None = None

    def path(self, index: int) -> Path:
        return self.folder / f"worker-{index}.sock"

    async def start(self, state: "ServerState") -> None:
        """Answer the other workers' requests for this one's counters (until :meth:`close`)."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(json.dumps(self._kept_counters(state)).encode())
                await writer.drain()
            except (ConnectionError, OSError, UnavailableError):
                pass  # the asking worker went away, or this one cannot keep its counters: it gets nothing (503)
            finally:
                writer.close()

        self._server = await asyncio.start_unix_server(answer, path=str(self.path(self.index)))

    async def close(self, stopping: bool = True) -> None:
        """Stop answering. ``stopping``: the server is being stopped (the supervisor's SIGTERM, or
        its death on Linux): the last worker out then clears the folder, in case the supervisor
        cannot. A worker that ends by itself keeps its counters' file for the others' sums."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path(self.index).unlink(missing_ok=True)
            if stopping:
                self._clear_folder()

    def _clear_folder(self) -> None:
        if any(self.folder.glob("worker-*.sock")):
            return  # others still serve
        for path in self.folder.glob("stats-*"):
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

    def _stats_file(self, pid: int) -> Path:
        return self.folder / f"stats-{pid}.json"

    def _kept_counters(self, state: "ServerState") -> dict[str, Any]:
        """This worker's counters, written to its file first: a total a client saw never loses them."""
        counters = {"pid": os.getpid(), "models": own_counters(state)}
        path = self._stats_file(os.getpid())
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_bytes(json.dumps(counters).encode())
            os.replace(tmp, path)  # whole or not at all, for a reader in another worker
        except OSError as e:
            raise UnavailableError(f"worker {self.index} cannot keep its statistics ({e}); the server's totals "
                                   "are not available") from e
        return counters

    def _retired(self, live: set[int]) -> list[dict[str, Any]]:
        """The last counters of workers that are gone (their files; not the live ones')."""
        out = []
        for path in self.folder.glob("stats-*.json"):
            pid = path.stem.partition("-")[2]
            if not pid.isdigit() or int(pid) in live:
                continue
            try:
                out.append(json.loads(path.read_bytes()))
            except (OSError, ValueError) as e:
                raise UnavailableError(f"the statistics of a worker that stopped could not be read ({e}); the "
                                       "server's totals are not available") from e
        return out

    async def gather(self, state: "ServerState") -> dict[str, ModelView]:
        """Every served model's statistics summed over all workers, gone ones included (this one's read last)."""
        others = await asyncio.gather(*(self._ask(i) for i in range(self.count) if i != self.index))
        mine = self._kept_counters(state)
        live = [mine, *others]
        retired = self._retired({c["pid"] for c in live})
        views = {}
        for name in state.models:
            parts = [c["models"][name] for c in live + retired if name in c["models"]]
            depth = sum(c["models"][name]["queue_depth"] for c in live if name in c["models"])
            views[name] = ModelView(ModelStats.merged([p["stats"] for p in parts]), depth)
        return views

    async def _ask(self, index: int) -> dict[str, Any]:
        try:
            answer = json.loads(await asyncio.wait_for(self._read(index), ANSWER_TIMEOUT_S))
            if not isinstance(answer, dict) or not isinstance(answer.get("pid"), int) \
                    or not isinstance(answer.get("models"), dict):
                raise ValueError("not a worker's counters")
            return answer
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            reason = "did not answer in time" if isinstance(e, asyncio.TimeoutError) else f"could not be read ({e})"
            raise UnavailableError(f"statistics of worker {index} {reason}; the server's totals are "
                                   "not available until it is back") from e


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    chunks, size = [], 0
    while chunk := await reader.read(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ValueError(f"answer over {MAX_ANSWER_BYTES} bytes")
    return b"".join(chunks)


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
