"""The event loop the server runs on: uvloop where installed, else asyncio's own.

Measured in ``benchmarks/bench_server.py`` (see ``benchmarks/results/server.md``): uvloop
cuts the per-request cost of the event loop itself (polling, callbacks, socket writes),
which is a large share of a small request's server time. ``EDGEMP_EVENT_LOOP=asyncio``
forces the standard loop (for comparison, or where uvloop misbehaves).
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
LOOP_ENV = "EDGEMP_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's default."""
    choice = os.environ.get(LOOP_ENV, "auto").strip().lower()
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            logger.warning("%s=uvloop but uvloop is not installed (pip install uvloop); using asyncio", LOOP_ENV)
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop."""
    factory = loop_factory()
    if factory is None or not hasattr(asyncio, "Runner"):  # asyncio.Runner: Python >= 3.11
        logger.info("event loop: asyncio")
        return asyncio.run(main)
    logger.info("event loop: uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
