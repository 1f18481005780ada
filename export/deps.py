"""The optional packages each export step needs, checked in one place.

Export steps import heavy packages (onnx, torch, optimum) inside their functions so that
``import edgemp.export`` stays cheap; each step calls one of these first so a missing
extra is one readable line with the install command, not an ImportError deep in a step.
"""
from __future__ import annotations

from types import ModuleType

from edgemp.errors import MissingExtraError

# Package to import -> (name to pip install, edgemp extra that brings it).
_HF_EXPORT_PACKAGES = {
    "torch": ("torch", "export"),
    "onnx": ("onnx", "export"),
    "transformers": ("transformers", "transformers"),
    "optimum.exporters.onnx": ("optimum-onnx", "transformers"),
    "tokenizers": ("tokenizers", "transformers"),
}


def require_onnx(purpose: str = "ONNX file handling") -> ModuleType:
    """The ``onnx`` module, or :class:`MissingExtraError` saying ``pip install 'edgemp[export]'``."""
    try:
        import onnx
    except ImportError as e:
        raise MissingExtraError("onnx", "export", purpose) from e
    return onnx


def require_torch_export(purpose: str = "ONNX export") -> None:
    """torch and onnx: what tracing a PyTorch model to ONNX needs."""
    try:
        import onnx  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(e.name or "torch", "export", purpose) from e


def require_hf_export() -> None:
    """torch, onnx, transformers, optimum and tokenizers: what a Hugging Face export needs."""
    for module, (package, extra) in _HF_EXPORT_PACKAGES.items():
        try:
            __import__(module)
        except ImportError as e:
            raise MissingExtraError(package, extra, "Hugging Face export") from e
