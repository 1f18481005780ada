"""The ONNX Runtime runner, and the one place ORT sessions are configured.

Provider choice lives here because it is the one thing that differs between machines:
``auto`` takes the fastest provider the installed onnxruntime offers, and what actually
runs is read back from the session (onnxruntime-gpu on a CPU-only machine lists CUDA but
falls back). Graph and text models both run through :class:`OrtRunner`, so they share
providers, session options, the fallback warning and the allocation-failure handling.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edgemp.errors import EdgempError, ModelFormatError, ResourceExhaustedError
from edgemp.runtime.runners.base import Runner, RunnerOptions, one_line

logger = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
PROVIDER_CHOICES: dict[str, str] = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
GPU_PROVIDERS = (TENSORRT, CUDA)

# Measured on the 2-core dev box (ORT 1.32, H=64 2-round fixture MPNN, medians / p99):
#   1 graph (25 nodes):  1 thread 34 us / 75 us;  2 threads 61 us / 134 us;  2 + spinning 35 us / 214 us
#   64 graphs (~1.5k nodes): 1 thread 864 us / 1.26 ms;  2 threads 983 us / 1.35 ms;  2 + spinning 913 us / 5.2 ms
# (dense form alike). A second thread never paid for its synchronisation on graphs this small, and
# spinning pool threads fight the batcher / HTTP loop for the other core (p99 x4-x10). So: 1 thread.
DEFAULT_THREADS = 1

# ORT's CPU arena keeps every block it grows to: one outsized batch would pin its peak for the
# process's life. "shrink-big" (arena on; a run whose feeds exceed SHRINK_ABOVE_BYTES asks ORT
# to shrink the arena when it ends) was chosen by benchmarks/bench_arena.py: see
# benchmarks/results/arena.md. "arena" (ORT's default) and "no-arena" are the alternatives measured.
ARENA_POLICY = "shrink-big"
SHRINK_ABOVE_BYTES = 2 * 1024 * 1024  # default batch budgets (4096 nodes, 8192 edges) feed well under this

# Everything onnxruntime's C++ layer raises (they derive from Exception directly).
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(_ort_state, name)
    for name in dir(_ort_state)
    if isinstance(getattr(_ort_state, name), type) and issubclass(getattr(_ort_state, name), Exception)
) + (RuntimeError, ValueError)


def resolve_providers(choice: str | Sequence[str] = "auto", available: Sequence[str] | None = None) -> list[str]:
    """The ORT provider list for a user choice (``auto``, ``cpu``, ``cuda``, ``tensorrt``).

    A sequence of ORT provider names is passed through after checking they are installed.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if not isinstance(choice, str):
        missing = [p for p in choice if p not in available]
        if missing:
            raise EdgempError(f"execution provider(s) {missing} not available; installed: {available}")
        return list(choice)
    key = choice.lower()
    if key == "auto":
        return [p for p in GPU_PROVIDERS if p in available] + [CPU]
    if key not in PROVIDER_CHOICES:
        raise EdgempError(f"unknown providers {choice!r}; choose from auto, {', '.join(PROVIDER_CHOICES)}")
    wanted = PROVIDER_CHOICES[key]
    if wanted not in available:
        raise EdgempError(
            f"{wanted} is not available in the installed onnxruntime (it has {', '.join(available)}): "
            "pip uninstall onnxruntime && pip install 'edgemp[gpu]'"
        )
    # TensorRT hands the subgraphs it cannot build to CUDA, then CPU (ORT's recommended order).
    tail = [CUDA] if key == "tensorrt" and CUDA in available else []
    return [wanted] + tail + ([CPU] if wanted != CPU else [])


def session_options(threads: int | None = None, allow_spinning: bool = False) -> ort.SessionOptions:
    """Session options for serving: the only place an edgemp runtime session is configured.

    ``allow_spinning=False`` by default: on a box with few cores, spinning pool threads
    steal the core the batcher and HTTP loop need (p99 blows up), and with one thread
    there is no pool to spin anyway.
    """
    threads = DEFAULT_THREADS if threads is None else threads
    if threads < 0:
        raise EdgempError(f"threads must be >= 0 (0 = onnxruntime's default), got {threads}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    so.enable_cpu_mem_arena = ARENA_POLICY != "no-arena"
    so.log_severity_level = 3  # ORT warnings about unused initializers etc. are not the user's concern
    return so


class OrtRunner(Runner):
    """An ONNX Runtime session plus the edgemp metadata stored in the model."""

    name = "onnxruntime"
    outputs_origin = "the ONNX graph"

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        allow_spinning: bool = False,
        disabled_optimizers: Sequence[str] = (),
    ) -> None:
        self.path = path = Path(path)
        requested = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, allow_spinning),
                                                providers=requested, disabled_optimizers=list(disabled_optimizers))
        except ORT_ERRORS as e:
            raise ModelFormatError(f"{path} is not a loadable ONNX model: {one_line(e)}") from e
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.declared_outputs = tuple(o.name for o in self.session.get_outputs())
        self.input_shapes = _static_dims(self.session.get_inputs())
        self.output_shapes = _static_dims(self.session.get_outputs())
        self._output_list: list[str] = []
        self.providers = tuple(self.session.get_providers())
        self.fallbacks = tuple(p for p in requested if p in GPU_PROVIDERS and p not in self.providers)
        if self.fallbacks:
            logger.warning(
                "%s: requested %s but onnxruntime runs %s (no usable GPU/driver?)",
                path.name, ", ".join(self.fallbacks), ", ".join(self.providers),
            )

    @classmethod
    def open(cls, path: str | Path, options: RunnerOptions) -> "OrtRunner":
        return cls(path, options.providers, options.threads, options.allow_spinning, options.disabled_optimizers)

    def fetch(self, names: Sequence[str]) -> None:
        super().fetch(names)
        self._output_list = list(self.output_names)  # built once, not per call

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        options = None
        if ARENA_POLICY == "shrink-big" and sum(v.nbytes for v in feeds.values()) > SHRINK_ABOVE_BYTES:
            options = ort.RunOptions()  # give an outsized batch's arena growth back when it ends
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # Plain ``run`` is the cheapest call here: for a 23-atom molecule through the default MPNN
        # (1 thread, 600 interleaved calls each) run 243 us p50, IOBinding 253 us, and
        # run_with_ort_values 307 us (wrapping each numpy feed in an OrtValue costs more than it saves).
        try:
            values = self.session.run(self._output_list, feeds, options)
        except ORT_ERRORS as e:
            if _is_allocation_failure(e):  # exhaustion, not a bug: the server answers 507 with one line
                logger.warning("onnxruntime could not allocate memory: %s", one_line(e, 400))
                raise ResourceExhaustedError(
                    "the model ran out of memory on this batch; send fewer or smaller graphs") from e
            raise
        return dict(zip(self.output_names, values))


def _static_dims(args: Sequence) -> dict[str, tuple[int | None, ...]]:
    """Each graph input's or output's dims (None where symbolic); left out where ONNX has no shape."""
    return {a.name: tuple(d if isinstance(d, int) else None for d in a.shape)
            for a in args if isinstance(a.shape, (list, tuple))}


def _is_allocation_failure(e: BaseException) -> bool:
    text = str(e).lower()
    return "failed to allocate" in text or "bad_alloc" in text or "out of memory" in text
