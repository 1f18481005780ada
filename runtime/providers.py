"""Old import path of the ONNX Runtime runner; it lives in :mod:`edgemp.runtime.runners.onnxruntime`.

Kept so ``from edgemp.runtime.providers import OrtRunner, resolve_providers, ...`` keeps working.
Settings such as ``ARENA_POLICY`` must be changed on the new module: a name re-exported here is a copy.
"""
from __future__ import annotations

import onnxruntime as ort

from edgemp.runtime.runners.base import Runner, one_line
from edgemp.runtime.runners.onnxruntime import (
    ARENA_POLICY,
    CPU,
    CUDA,
    DEFAULT_THREADS,
    GPU_PROVIDERS,
    ORT_ERRORS,
    PROVIDER_CHOICES,
    SHRINK_ABOVE_BYTES,
    TENSORRT,
    OrtRunner,
    resolve_providers,
    session_options,
)


__all__ = ["ARENA_POLICY", "CPU", "CUDA", "DEFAULT_THREADS", "GPU_PROVIDERS", "ORT_ERRORS", "PROVIDER_CHOICES",
           "SHRINK_ABOVE_BYTES", "TENSORRT", "OrtRunner", "Runner", "one_line", "ort",
           "resolve_providers", "session_options"]
