"""Target lints: does every node of an ONNX graph run where the user wants to deploy it?

Runs without a GPU. The TensorRT lint encodes the parser's documented restrictions, in
particular the trap every message-passing export hits: ScatterND with a reduction
(what ``index_add`` exports to) is rejected, ScatterElements with one is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgemp.export.onnx_graph import node_attr, walk_nodes
from edgemp.export.tensorrt_ops import TENSORRT_SUPPORTED_OPS

LINT_TARGETS = ("ort-cpu", "ort-gpu", "tensorrt")
LOOP_OPS = frozenset({"Loop", "If", "Scan", "SequenceMap"})
QUANT_INTEGER_OPS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv"})


@dataclass
class LintResult:
    target: str
    problems: list[str] = field(default_factory=list)  # "node_name (OpType): why"

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.target}: ok"
        more = f" (+{len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        return f"{self.target}: {len(self.problems)} problem(s): " + "; ".join(self.problems[:3]) + more


def lint_model(model, target: str) -> LintResult:
    """Check an ``onnx.ModelProto`` against ``target``'s documented op support."""
    result = LintResult(target)
    for node in walk_nodes(model.graph):
        label = f"{node.name or '<unnamed>'} ({node.op_type})"
        if node.op_type in LOOP_OPS:
            result.problems.append(f"{label}: control flow; edgemp models unroll the K rounds")
        if target != "tensorrt" or node.domain not in ("", "ai.onnx"):
            if target == "tensorrt" and node.domain not in ("", "ai.onnx"):
                result.problems.append(f"{label}: custom-domain op {node.domain!r} is unknown to TensorRT's parser")
            continue
        if node.op_type not in TENSORRT_SUPPORTED_OPS:
            why = " (dynamic int8: use static QDQ quantization for TensorRT)" if node.op_type in QUANT_INTEGER_OPS else ""
            result.problems.append(f"{label}: not supported by TensorRT's ONNX parser{why}")
        elif node.op_type == "ScatterND" and node_attr(node, "reduction", b"none") not in (b"none", "none"):
            result.problems.append(
                f"{label}: ScatterND with reduction={node_attr(node, 'reduction').decode()} is rejected by TensorRT; "
                "export with --target tensorrt (ScatterElements)"
            )
    return result
