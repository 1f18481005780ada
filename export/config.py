"""Typed export settings."""
from __future__ import annotations

from dataclasses import dataclass

from edgemp.errors import ExportError

TARGETS = ("ort-cpu", "ort-gpu", "tensorrt")
# Which scatter op each target gets (see edgemp.models.graph_ctx):
# ORT CPU: ScatterND(add) measured ~2x faster than ScatterElements(add) here;
# TensorRT: its parser rejects ScatterND with a reduction, takes ScatterElements;
# ORT CUDA: ScatterElements reductions have CUDA kernels (ORT >= 1.17).
SCATTER_IMPL_BY_TARGET = {"ort-cpu": "index_add", "ort-gpu": "scatter", "tensorrt": "scatter"}


@dataclass(frozen=True)
class ExportConfig:
    """How to export.

    Args:
        target: where the model will run (default: ``"ort-cpu"``).
        form: ``"sparse"`` (edge list, any graph size) or ``"dense"`` (graphs padded to
            ``max_nodes`` slots, aggregation as batched matmul, no scatter ops).
        max_nodes: node slots per graph for the dense form (required there).
        opset: ONNX opset (default: 18).
        verify: compare ONNX Runtime against PyTorch on unseen graphs (default: on).
        atol, rtol: a verification element passes if ``|ort - torch| <= atol + rtol·|torch|``;
            rtol covers float32 reassociation in sums over many nodes (default 1e-5, 1e-5).
        seed: seed for the verification graphs.
        distinct_edge_rows: run an edge network once per distinct edge-feature row
            (:mod:`edgemp.export.edge_rows`; ONNX Runtime targets only). Off only to
            measure the per-edge form it replaces.
    """

    target: str = "ort-cpu"
    form: str = "sparse"
    max_nodes: int = 0
    opset: int = 18
    verify: bool = True
    atol: float = 1e-5
    rtol: float = 1e-5
    seed: int = 0
    distinct_edge_rows: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ExportError(f"unknown target {self.target!r}; expected one of {list(TARGETS)}")
        if self.form not in ("sparse", "dense"):
            raise ExportError(f"unknown form {self.form!r}; expected 'sparse' or 'dense'")
        if self.form == "dense" and self.max_nodes < 2:
            raise ExportError("the dense form needs --max-nodes N (N >= 2): graphs are padded to N node slots")
        if self.opset < 17:
            raise ExportError(f"opset {self.opset} is too old: scatter reductions need opset >= 17 (ScatterElements max/min)")

    @property
    def scatter_impl(self) -> str:
        return SCATTER_IMPL_BY_TARGET[self.target]
