"""The serving process's garbage-collector policy: freeze what start-up built.

CPython's collector runs a full pass over every tracked object whenever enough objects
have survived into the oldest generation. A serving process holds ~50,000 long-lived
objects from start-up (modules, the ONNX Runtime session, the app) and, under load, the
requests in flight keep surviving the young passes, so a full pass came about every
0.3 s and took 13-19 ms with the GIL held: every request in flight waited for it, and it
alone set the p99 at 32 clients (benchmarks/results/server.md §0d). ``gc.freeze()`` moves
the start-up objects out of the collector's view; full passes then scan only what was
made since (about 1 ms). Nothing frozen is freed by the collector later, which suits a
process whose start-up state lives until it exits; the request path itself leaves no
cycles behind (tests/server/test_server_fastpath.py). No ``gc.collect()`` first: it cost
20 ms of every start for a few start-up cycles that may as well stay frozen.
"""
from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> None:
    """Exempt every object start-up made from later full collector passes (O(1): a list splice)."""
    gc.freeze()
    logger.debug("froze %d start-up objects", gc.get_freeze_count())
