"""ONNX Runtime offline graph optimization: optimize once, load fast, keep the metadata.

ORT re-runs its graph optimizations every time a session starts; saving the optimized
graph (``SessionOptions.optimized_model_filepath``) moves that work to build time.
``basic`` (constant folding, redundant-node removal) is the default because its output
is plain ONNX that any execution provider can load; ``extended``/``all`` add fusions
into contrib ops and layouts tuned for the EP and CPU that produced them, so such a file
must run on the same EP and hardware (ORT docs, graph-optimizations.md).
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from edgemp.errors import EdgempError, ModelFormatError
from edgemp.export.deps import require_onnx
from edgemp.export.onnx_file import load_edgemp_model, save_onnx, write_metadata

log = logging.getLogger(__name__)

LEVELS = ("basic", "extended", "all")


@dataclass(frozen=True)
class OptimizeConfig:
    """Args:
        level: ``basic`` (portable across EPs, default), ``extended`` or ``all``
            (CPU-specific fusions; the file then belongs to the CPU EP on this hardware).
    """

    level: str = "basic"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise EdgempError(f"unknown optimization level {self.level!r}; expected one of {list(LEVELS)}")


def optimize(model_path: str | Path, output: str | Path, cfg: OptimizeConfig = OptimizeConfig()) -> Path:
    """Write the ORT-optimized graph of ``model_path`` to ``output`` with its edgemp metadata."""
    import onnxruntime as ort

    from edgemp.runtime.providers import ORT_ERRORS, one_line

    onnx = require_onnx("graph optimization")
    model_path, output = Path(model_path), Path(output)
    source, spec = load_edgemp_model(model_path)
    before = len(source.graph.node)
    del source
    level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.level]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgemp-opt-") as tmp:
        raw = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.optimized_model_filepath = str(raw)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        except ORT_ERRORS as e:
            raise ModelFormatError(f"onnxruntime cannot load {model_path}: {one_line(e)}") from e
        model = onnx.load(str(raw))
    extra = {"optimization": {"level": cfg.level, "tool": f"onnxruntime {ort.__version__}",
                              "nodes_before": before, "nodes_after": len(model.graph.node)}}
    write_metadata(model, replace(spec, extra={**spec.extra, **extra}))
    save_onnx(model, output)
    if cfg.level != "basic":
        log.warning("%s: level %r fuses for the CPU EP; run this file on the same EP and hardware", output, cfg.level)
    log.info("wrote %s (%s: %d -> %d nodes)", output, cfg.level, before, len(model.graph.node))
    return output
