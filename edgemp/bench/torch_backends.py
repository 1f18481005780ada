"""PyTorch backends (eager baseline and torch.compile); the only bench module importing torch.

The eager model of the checkpoint is the baseline every other row is a ratio against.
torch.compile is a peer, not a baseline: its compile time (seconds, per model and per
new shape class) is excluded from the latencies and reported on its own. It compiles
with ``dynamic=True`` because graph batches change shape on every call; static shapes
would recompile per graph size and fall back to eager after the recompile limit.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from edgemp.bench.backend_base import Backend, BackendUnavailable, Timing
from edgemp.graph import Graph, collate, split

logger = logging.getLogger(__name__)


class TorchBackend(Backend):
    def __init__(self, checkpoint: Path, threads: int, compiled: bool = False) -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable("torch is not installed (baseline needs it): pip install 'edgemp[export]'") from e
        from edgemp.models import load_checkpoint

        self.torch = torch
        self.name = "torch-compile" if compiled else "torch-eager"
        self.threads = threads
        self.providers = (f"torch {torch.__version__} CPU",)
        self.model = load_checkpoint(checkpoint)
        self.cfg = self.model.cfg
        self._levels = self.cfg.spec().output_levels
        self._fn = self.model
        self.compiles = compiled  # the runner times the first (compiling) call per shape class
        if compiled:
            logger.warning("torch.compile takes 10-20 s per model on a small CPU; compile time is reported, not timed")
            # Every GraphNet shares one forward code object, and dynamo caches compiled variants per
            # code object: after a few families (8 entries) it stops compiling and runs them eager,
            # so a suite's later "torch.compile" rows were eager. Each compiled backend starts clean.
            torch._dynamo.reset()
            self._fn = torch.compile(self.model, dynamic=True)

    def activate(self) -> None:
        if self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)

    def prepare(self, graphs: Sequence[Graph]) -> None:
        from edgemp.graph import validate_graph

        fe = self.cfg.edge_features if self.cfg.uses_edge_features else 0
        for i, g in enumerate(graphs):
            validate_graph(g, i, node_features=self.cfg.node_features, edge_features=fe)

    def infer(self, graphs: Sequence[Graph], keep: bool = False) -> Timing:
        torch = self.torch
        t0 = time.perf_counter_ns()
        batch = collate(graphs)
        x = torch.from_numpy(batch.x)
        ei = torch.from_numpy(batch.edge_index)
        ea = torch.from_numpy(batch.edge_attr) if self.cfg.uses_edge_features else None
        ng = torch.from_numpy(batch.node_graph)
        t1 = time.perf_counter_ns()
        with torch.inference_mode():
            out = self._fn(x, ei, ea, ng, batch.num_graphs)
        t2 = time.perf_counter_ns()
        arrays = {k: v.numpy() for k, v in out.items()}
        split(arrays, batch, self._levels)
        t3 = time.perf_counter_ns()
        return Timing(t1 - t0, t2 - t1, t3 - t2, t3 - t0, arrays if keep else None)
