"""The ONNX file every export step reads and writes.

One place for: loading a file with an error that names it, the edgemp spec in its
``metadata_props`` (parsed by :func:`edgemp.spec.spec_from_metadata`, the same function the
runtime reads a session's metadata with), and the atomic save. Every step (export,
optimize, quantize, TensorRT build, Triton repository, Hugging Face export) publishes
through :func:`staged_path`: it writes ``.NAME.tmpPID`` beside the target and renames it
over the target only when the step's checks pass, so a reader never sees a half-written
file and a model that failed verification never replaces a good one.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from edgemp import __version__
from edgemp.errors import ModelFormatError
from edgemp.export.deps import require_onnx
from edgemp.spec import METADATA_KEY, ExportedModelSpec, spec_from_metadata


def load_onnx(path: str | Path, load_external_data: bool = True):
    """The ``onnx.ModelProto`` at ``path``; :class:`ModelFormatError` if missing or unreadable."""
    onnx = require_onnx()
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"model file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (OSError, ValueError, DecodeError) as e:
        raise ModelFormatError(f"{path} is not a readable ONNX file: {e}") from e


def metadata(model) -> dict[str, str]:
    """A model's ``metadata_props`` as a plain dict."""
    return {p.key: p.value for p in model.metadata_props}


def read_model_spec(model, where: str | Path = "model") -> ExportedModelSpec:
    """The edgemp spec stored in an ``onnx.ModelProto``'s metadata."""
    return spec_from_metadata(metadata(model), where)


def load_edgemp_model(path: str | Path):
    """``(onnx.ModelProto, ExportedModelSpec)`` for an exported edgemp ``.onnx`` file."""
    model = load_onnx(path)
    return model, read_model_spec(model, path)


def write_metadata(model, spec) -> None:
    """Store ``spec`` (anything with ``to_json``) in ``metadata_props``, replacing an older edgemp entry."""
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    model.producer_name = "edgemp"
    model.producer_version = __version__


def with_precision(spec: ExportedModelSpec, precision: str, extra: dict | None = None) -> ExportedModelSpec:
    """``spec`` for the same model at another precision, with ``extra`` merged in."""
    return replace(spec, precision=precision, extra={**spec.extra, **(extra or {})})


@contextlib.contextmanager
def staged_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on a clean exit it replaces ``target``.

    Write (and check) the file at the yielded path inside the ``with``; an exception leaves
    ``target`` as it was and removes the temporary file. The name starts with a dot so
    Triton and ``edgemp serve`` skip it while it exists.
    """
    target = Path(target)
    staged = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        yield staged
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)


def save_onnx(model, target: str | Path) -> Path:
    """Save ``model`` to ``target`` atomically."""
    onnx = require_onnx()
    target = Path(target)
    with staged_path(target) as staged:
        onnx.save(model, str(staged))
    return target


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (engines, their sidecars, timing caches)."""
    target = Path(target)
    with staged_path(target) as staged:
        staged.write_bytes(data)
    return target
