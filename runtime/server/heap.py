"""The serving process's garbage-collector policy: freeze what start-up built.

CPython's collector runs a full pass over every tracked object whenever enough objects
have survived into the oldest generation. A serving process holds ~50,000 long-lived
objects from start-up (modules, the ONNX Runtime session, the app) and, under load, the
requests in flight keep surviving the young passes, so a full pass came about every
0.3 s and took 13-19 ms with the GIL held: every request in flight waited for it, and it
alone set the p99 at 32 clients (benchmarks/results/server.md §0d). ``gc.freeze()`` moves
the start-up objects out of the collector's view; full passes then scan only what was
made since (about 1 ms). Nothing frozen is freed by the collector until the server
returns, which suits start-up state that lives as long as the server; the request path itself leaves no
cycles behind (tests/server/test_server_fastpath.py). No ``gc.collect()`` first: it cost
20 ms of every start for a few start-up cycles that may as well stay frozen.
"""
from __future__ import annotations

import contextlib
import gc
import logging
from typing import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """Exempt every object made so far from full collector passes while the block runs.

    O(1) both ways (list splices). Unfrozen on the way out, so a process that serves
    more than once gets its earlier objects collected again.
    """
    gc.freeze()
    logger.debug("froze %d start-up objects", gc.get_freeze_count())
    try:
        yield
    finally:
        gc.unfreeze()
