"""Execution backends: the :class:`Runner` interface and the ONNX Runtime runner.

A runner turns named numpy feeds into named numpy outputs and knows nothing about
graphs; :class:`edgemp.runtime.model.Model` does the graph work on top. Provider choice
lives here because it is the one thing that differs between machines: ``auto`` takes the
fastest provider the installed onnxruntime offers, and what actually runs is read back
from the session (onnxruntime-gpu on a CPU-only machine lists CUDA but falls back).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from edgemp.errors import EdgempError, InternalError, ModelFormatError, ResourceExhaustedError
from edgemp.spec import ExportedModelSpec, spec_from_metadata

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


def one_line(e: BaseException, limit: int = 200) -> str:
    """onnxruntime messages span lines and repeat the path: keep the first useful line."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    """Session options for serving many small graphs.

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


class Runner:
    """Named numpy feeds in, named numpy outputs out. Subclasses implement :meth:`_infer`."""

    spec: ExportedModelSpec
    input_names: tuple[str, ...]  # inputs the backend declares; only these are fed
    output_names: tuple[str, ...]
    providers: tuple[str, ...] = ()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            chosen = {name: feeds[name] for name in self.input_names}
        except KeyError as e:
            raise InternalError(f"no feed for model input {e.args[0]!r}") from e
        return self._infer(chosen)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources (a no-op unless the backend holds device memory)."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrtRunner(Runner):
    """An ONNX Runtime session plus the edgemp spec read from its metadata."""

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        allow_spinning: bool = False,
    ) -> None:
        path = Path(path)
        requested = resolve_providers(providers)
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads, allow_spinning), providers=requested)
        except ORT_ERRORS as e:
            raise ModelFormatError(f"{path} is not a loadable ONNX model: {one_line(e)}") from e
        self.spec = read_spec(self.session, path)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.spec.model.outputs)
        self._output_list = list(self.output_names)
        declared_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.output_names if n not in declared_outputs]
        if missing:
            raise ModelFormatError(f"{path}: metadata lists output(s) {missing} that the ONNX graph does not produce")
        self.providers = tuple(self.session.get_providers())
        self.fallbacks = tuple(p for p in requested if p in GPU_PROVIDERS and p not in self.providers)
        if self.fallbacks:
            logger.warning(
                "%s: requested %s but onnxruntime runs %s (no usable GPU/driver?)",
                path.name, ", ".join(self.fallbacks), ", ".join(self.providers),
            )

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


def _is_allocation_failure(e: BaseException) -> bool:
    text = str(e).lower()
    return "failed to allocate" in text or "bad_alloc" in text or "out of memory" in text


def read_spec(session: ort.InferenceSession, path: Path) -> ExportedModelSpec:
    """The ExportedModelSpec stored under the ``edgemp`` metadata key (parsed as export reads it)."""
    return spec_from_metadata(session.get_modelmeta().custom_metadata_map, path)
