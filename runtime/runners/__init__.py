"""Execution backends behind one :class:`Runner` interface, chosen by name.

``onnxruntime`` runs ``.onnx`` files (CPU, CUDA or TensorRT execution providers);
``tensorrt`` runs serialized ``.plan`` engines. :func:`open_runner` is the one way the
runtime opens a model file: graph models and text models are input layouts over whatever
runner it returns. ``tensorrt`` and ``cuda-python`` are imported only when a ``.plan``
opens, so this package stays as light as onnxruntime + numpy.
"""
from __future__ import annotations

from pathlib import Path

from edgemp.errors import EdgempError
from edgemp.runtime.runners.base import InputLayout, Runner, RunnerOptions, one_line
from edgemp.runtime.runners.onnxruntime import OrtRunner
from edgemp.runtime.runners.tensorrt import TensorRTRunner

RUNNERS: dict[str, type[Runner]] = {cls.name: cls for cls in (OrtRunner, TensorRTRunner)}


def runner_class(name: str) -> type[Runner]:
    """The runner registered as ``name``; an unknown name is an error listing the valid ones."""
    try:
        return RUNNERS[name.lower()]
    except (KeyError, AttributeError) as e:
        raise EdgempError(f"could not resolve runner {name!r} among choices {sorted(RUNNERS)}") from e


def runner_name_for(path: str | Path) -> str:
    """The runner a model file needs: ``tensorrt`` for a ``.plan`` engine, else ``onnxruntime``."""
    return TensorRTRunner.name if Path(path).suffix == ".plan" else OrtRunner.name


def open_runner(path: str | Path, options: RunnerOptions = RunnerOptions(), runner: str | None = None) -> Runner:
    """Open ``path`` with the runner named ``runner`` (default: chosen by :func:`runner_name_for`)."""
    return runner_class(runner or runner_name_for(path)).open(path, options)


__all__ = ["RUNNERS", "InputLayout", "Runner", "RunnerOptions", "OrtRunner", "TensorRTRunner", "open_runner", "one_line",
           "runner_class", "runner_name_for"]
