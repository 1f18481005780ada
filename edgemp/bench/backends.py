"""In-process benchmark backends: one small class per engine, chosen by name.

Each backend times one inference in three stages (trtexec-style, so a slow number can be
attributed): ``collate`` (graphs -> batch tensors, dense padding included), ``run`` (the
engine call) and ``split`` (batch outputs -> one result per graph). Graphs are validated
once before timing, not per call: validation is input checking, not inference.

The interface lives in :mod:`edgemp.bench.backend_base`, which the torch backends import
without importing this module back. A backend that cannot run here raises
:class:`BackendUnavailable` with the reason; the row then says "unavailable" instead of
quietly measuring something else (onnxruntime-gpu on a CPU-only box lists CUDA but runs on
CPU, so the providers in use are checked).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from edgemp.bench.backend_base import Backend, BackendUnavailable, Timing
from edgemp.errors import EdgempError
from edgemp.graph import Graph, collate

logger = logging.getLogger(__name__)

ORT_BACKENDS: dict[str, str] = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-tensorrt": "tensorrt"}
TORCH_BACKENDS = ("torch-eager", "torch-compile")
BACKENDS: tuple[str, ...] = ("torch-eager", "torch-compile", "ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt")
BASELINE = "torch-eager"


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise EdgempError(f"could not resolve backend {', '.join(unknown) or text!r} among choices {list(BACKENDS)}")
    return names


class _RuntimeModelBackend(Backend):
    """A backend that times an :mod:`edgemp.runtime` model (``self.model``, set by the subclass)."""

    def prepare(self, graphs: Sequence[Graph]) -> None:
        self.model.validate(graphs)

    def infer(self, graphs: Sequence[Graph], keep: bool = False) -> Timing:
        return _time_model(self.model, graphs, keep)

    def close(self) -> None:
        self.model.close()


class OrtBackend(_RuntimeModelBackend):
    """An exported model through :func:`edgemp.runtime.load` with the backend's providers."""

    def __init__(self, name: str, path: Path, threads: int) -> None:
        from edgemp.runtime import load

        self.name, self.threads = name, threads
        choice = ORT_BACKENDS[name]
        if path.suffix == ".plan":
            raise BackendUnavailable(f"{path.name} is a TensorRT engine; use the 'tensorrt' backend for .plan files")
        try:
            self.model = load(path, providers=choice, threads=threads)
        except BackendUnavailable:
            raise
        except EdgempError as e:
            if choice != "cpu" and "not available" in str(e):
                raise BackendUnavailable(str(e)) from e
            raise
        if self.model.provider_fallbacks:
            fell = ", ".join(self.model.provider_fallbacks)
            self.model.close()
            raise BackendUnavailable(f"onnxruntime could not activate {fell} here (runs CPU only); not measured")
        self.providers = tuple(self.model.providers)


class TensorRTBackend(_RuntimeModelBackend):
    """A serialized TensorRT ``.plan`` engine (edgemp's own TensorRT runner)."""

    name = "tensorrt"

    def __init__(self, path: Path, threads: int) -> None:
        self.threads = threads
        if path.suffix != ".plan":
            raise BackendUnavailable(
                f"{path.name}: the 'tensorrt' backend runs .plan engines built from a tensorrt-target export; "
                "use 'ort-tensorrt' for an .onnx"
            )
        from edgemp.runtime import load

        try:
            self.model = load(path)
        except EdgempError as e:
            raise BackendUnavailable(str(e)) from e
        self.providers = ("TensorRT",)


def _time_model(model, graphs: Sequence[Graph], keep: bool) -> Timing:
    """collate (+ dense padding) / runner call / un-padding + split, timed separately."""
    from edgemp import dense_layout as dense

    t0 = time.perf_counter_ns()
    batch = collate(graphs)
    feeds = model.feeds(batch)
    t1 = time.perf_counter_ns()
    out = model.runner.infer(feeds)
    t2 = time.perf_counter_ns()
    if model.spec.form == "dense":
        out = dense.from_dense(out, batch, model.spec.model.output_levels)
    model.split(out, batch).dicts()  # what predict hands back: one dict per graph
    t3 = time.perf_counter_ns()
    return Timing(t1 - t0, t2 - t1, t3 - t2, t3 - t0, out if keep else None)


def make_backend(name: str, model_path: Path | None, checkpoint: Path | None, threads: int) -> Backend:
    """Build a backend by name; raises BackendUnavailable when it cannot run here."""
    if name in TORCH_BACKENDS:
        if checkpoint is None:
            raise BackendUnavailable(f"{name} needs the model's checkpoint: pass --checkpoint CKPT_DIR")
        from edgemp.bench.torch_backends import TorchBackend

        return TorchBackend(checkpoint, threads, compiled=name == "torch-compile")
    if model_path is None:
        raise EdgempError(f"backend {name} needs a model file")
    if name in ORT_BACKENDS:
        return OrtBackend(name, model_path, threads)
    if name == "tensorrt":
        return TensorRTBackend(model_path, threads)
    raise EdgempError(f"could not resolve backend {name!r} among choices {list(BACKENDS)}")
