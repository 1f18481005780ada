"""The in-process benchmark backend interface, apart from the backends.

:mod:`edgemp.bench.backends` (the onnxruntime and TensorRT backends, and the by-name
factory) and :mod:`edgemp.bench.torch_backends` both build on this module, so neither
imports the other at module level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgemp.errors import EdgempError
from edgemp.graph import Graph


class BackendUnavailable(EdgempError):
    """This backend cannot run on this machine / with these packages (the reason is the message)."""


@dataclass
class Timing:
    """One inference: stage times in ns and the outputs when asked for."""

    collate_ns: int
    run_ns: int
    split_ns: int
    total_ns: int
    outputs: dict[str, np.ndarray] | None = None


class Backend:
    """Runs batches of graphs; subclasses set ``name``, ``providers`` and implement :meth:`infer`."""

    name: str = ""
    providers: tuple[str, ...] = ()
    threads: int = 1
    compiles: bool = False  # the first call of each config compiles (torch.compile): timed apart

    def prepare(self, graphs: Sequence[Graph]) -> None:
        """Validate graphs this backend will run (raises GraphValidationError)."""

    def activate(self) -> None:
        """Called before each timed block (e.g. to set torch's global thread count)."""

    def infer(self, graphs: Sequence[Graph], keep: bool = False) -> Timing:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine."""
