"""Lower an exported fp32 model's precision: int8 dynamic, int8 static (QDQ) or fp16.

Only the dense layers are quantized — Gemm/MatMul nodes that multiply by a weight
initializer. Aggregation (ScatterND/ScatterElements, the dense form's adjacency MatMul,
MPNN's per-edge MatMul) and everything else whose size depends on node or edge counts
stays float: in message passing, high in-degree nodes sum many messages, so int8
rounding there dominates the error (Degree-Quant, ICLR'21), while the GEMMs are where
the time and the weights are.

Needs onnx and onnxruntime only (no torch); onnx is imported inside the functions.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgemp.errors import ExportError
from edgemp.export.attention_logits import LOGIT_NODE_SUFFIX
from edgemp.export.deps import require_onnx
from edgemp.export.onnx_file import load_edgemp_model, save_onnx, with_precision, write_metadata
from edgemp.graph import Graph
from edgemp.spec import ExportedModelSpec

log = logging.getLogger(__name__)

PRECISIONS = ("int8-dynamic", "int8-static", "fp16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DENSE_OP_TYPES = ("MatMul", "Gemm")
# fp16 blocks: ORT CPU has no fp16 kernels for scatter reductions (ort#18864), and IsInf/IsNaN
# only take fp16 from opset 20 (GAT's softmax uses IsInf). Blocked ops run in fp32 between Casts.
FP16_EXTRA_BLOCKED_OPS = ("ScatterND", "ScatterElements", "IsInf", "IsNaN")


class QuantizationError(ExportError):
    """Quantization could not produce a valid model from the input."""


@dataclass(frozen=True)
class QuantizeConfig:
    """How to lower precision.

    Args:
        precision: ``int8-dynamic`` (weights int8, activations quantized at run time;
            the fast CPU default), ``int8-static`` (calibrated QDQ, symmetric int8: the
            file also feeds TensorRT) or ``fp16`` (a GPU precision; see module notes).
        calibration_method: ``minmax``, ``entropy`` or ``percentile`` (int8-static only).
        calibration_batch_graphs: graphs per calibration batch (default: 32).
        per_channel: per-output-channel weight scales (default: off — measured worse on
            small MPNNs with dynamic int8).
        preprocess: run ORT's ``quant_pre_process`` (shape inference + basic fusions)
            first; falls back to the raw file if it fails (default: on).
        progress: show a progress bar over calibration batches (default: off).
        reduce_range: int8-dynamic weights in 7 bits (ORT's ``reduce_range``; default: on).
            ORT's int8 kernels on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) add
            pairs of u8 x s8 products in 16 bits, which full-range weights can saturate: on
            an AVX2 host the GIN and MPNN test models were off by up to 0.42 (outputs up to
            1.2) where a VNNI host stayed within 0.03. Turn it off only when every CPU the
            model will run on has VNNI or is ARM.
    """

    precision: str
    calibration_method: str = "minmax"
    calibration_batch_graphs: int = 32
    per_channel: bool = False
    preprocess: bool = True
    progress: bool = False
    reduce_range: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise QuantizationError(f"unknown precision {self.precision!r}; expected one of {list(PRECISIONS)}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise QuantizationError(
                f"unknown calibration method {self.calibration_method!r}; expected one of {list(CALIBRATION_METHODS)}"
            )
        if self.calibration_batch_graphs < 1:
            raise QuantizationError(f"calibration_batch_graphs must be >= 1, got {self.calibration_batch_graphs}")


@dataclass
class QuantizeResult:
    path: Path
    spec: ExportedModelSpec
    quantized_nodes: list[str]
    float_ops_kept: dict[str, int] = field(default_factory=dict)  # aggregation ops left in float
    preprocessed: bool = False

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "precision": self.spec.precision,
            "quantized_nodes": len(self.quantized_nodes),
            "float_ops_kept": self.float_ops_kept,
            "preprocessed": self.preprocessed,
            "summary": self.spec.extra.get("quantization", {}),
        }


def dense_layer_nodes(model) -> list[str]:
    """Names of Gemm/MatMul nodes with a weight initializer as an operand.

    Matmuls between two activations (the dense form's ``adjacency @ h``, MPNN's per-edge
    ``h_j @ W_e``) depend on node/edge counts and are excluded by construction; GAT's folded
    attention logits (:mod:`edgemp.export.attention_logits`) are excluded by name.
    """
    inits = {i.name: i for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.name.endswith(LOGIT_NODE_SUFFIX):
            continue  # GAT's folded attention logits stay float, as before the fold
        if node.op_type == "MatMul" and node.input[1] in inits and _is_selection(inits[node.input[1]]):
            continue  # a 0/1 copy (GAT's per-head widening): exact in float, nothing for int8 to gain
        if node.op_type in DENSE_OP_TYPES and any(i in inits for i in node.input[:2]):
            if not node.name:
                raise QuantizationError(f"a {node.op_type} node has no name; re-export the model with edgemp")
            names.append(node.name)
    return names


def _is_selection(initializer) -> bool:
    """A 2-D 0/1 weight with exactly one 1 per column: ``x @ W`` only copies columns of ``x``."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(initializer)
    return w.ndim == 2 and bool(np.isin(w, (0.0, 1.0)).all()) and bool((w.sum(0) == 1).all())


def _float_ops_kept(model, quantized: set[str]) -> dict[str, int]:
    kept = Counter(
        n.op_type for n in model.graph.node
        if n.op_type in ("ScatterND", "ScatterElements") or (n.op_type in DENSE_OP_TYPES and n.name not in quantized)
    )
    return dict(sorted(kept.items()))


def _preprocess(src: Path, dst: Path) -> bool:
    """ORT's pre-quantization pass; returns False (and logs why) when it does not apply."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # When symbolic shape inference gives up (it cannot see through Unique, which MPNN's
    # distinct-edge-rows export uses), ORT dumps its temporary model and uuid-named external
    # data into the working directory; run it from a scratch directory so nothing leaks.
    cwd, src, dst = os.getcwd(), Path(src).resolve(), Path(dst).resolve()  # resolved before the chdir
    # Symbolic inference is only a refinement: without it ONNX's own shape inference and the
    # basic fusions still run, so retry without it before quantizing the model as exported.
    failure: Exception | None = None
    for skip_symbolic in (False, True):
        try:
            with tempfile.TemporaryDirectory(prefix="edgemp-preprocess-") as scratch:
                os.chdir(scratch)
                try:
                    quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
                finally:
                    os.chdir(cwd)
            return True
        except Exception as e:  # third-party pass over arbitrary graphs: many exception types; fall back
            failure = e
            log.debug("quant_pre_process (skip_symbolic_shape=%s) failed: %s", skip_symbolic, e)
    log.warning("quant_pre_process failed (%s: %s); quantizing the model as exported", type(failure).__name__, failure)
    return False


def _quantize_dynamic(src: Path, dst: Path, nodes: list[str], cfg: QuantizeConfig) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT rewrites each Gemm to MatMul "<name>_MatMul" + Add before quantizing, so list both names.
    quantize_dynamic(
        str(src), str(dst),
        op_types_to_quantize=list(DENSE_OP_TYPES),
        nodes_to_quantize=nodes + [f"{n}_MatMul" for n in nodes],
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )


def _quantize_static(src: Path, dst: Path, nodes: list[str], cfg: QuantizeConfig, reader) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration_method]
    extra = {
        # Symmetric S8S8 QDQ: what TensorRT's explicit quantization takes.
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        # Each quantized node gets its own Q/DQ pair, so a tensor that also feeds aggregation
        # (h -> adjacency @ h, h -> scatter) reaches it unrounded: aggregation stays float.
        "DedicatedQDQPair": True,
        # Only GEMM *inputs* are int8; their outputs stay float, so what flows on into
        # aggregation (bias, activation, scatter / adjacency matmul) was never rounded to int8.
        "OpTypesToExcludeOutputQuantization": list(DENSE_OP_TYPES),
        # Float bias: TensorRT does not take int32 DequantizeLinear for biases, and one file
        # should serve ORT CPU and TensorRT alike.
        "QuantizeBias": False,
        # One calibrator call per batch: graph batches differ in shape (see edgemp.export.calibration).
        "CalibStridedMinMax": 1,
    }
    sink = io.StringIO()  # ORT's calibrators print() their histogram settings
    with contextlib.redirect_stdout(sink):
        quantize_static(
            str(src), str(dst), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(DENSE_OP_TYPES),
            nodes_to_quantize=nodes,
            per_channel=cfg.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"],
            extra_options=extra,
        )
    log.debug("calibration output: %s", sink.getvalue().strip())


def _to_fp16(src: Path, dst: Path) -> None:
    onnx = require_onnx("quantization")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_EXTRA_BLOCKED_OPS))
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)
    # The converter appends its Cast nodes at the end of the graph; ONNX requires topological order.
    from onnxruntime.quantization.onnx_model import ONNXModel

    ONNXModel(converted).topological_sort()
    onnx.save(converted, str(dst))


@contextlib.contextmanager
def _ort_errors(step: str):
    """onnxruntime's quantization tools raise plain ValueError/RuntimeError: name the step."""
    from edgemp.runtime.providers import ORT_ERRORS, one_line

    try:
        yield
    except ORT_ERRORS as e:
        raise QuantizationError(f"{step} failed in onnxruntime: {type(e).__name__}: {one_line(e)}") from e


def quantize(
    model_path: str | Path,
    output: str | Path,
    cfg: QuantizeConfig,
    calibration_graphs: Sequence[Graph] | None = None,
) -> QuantizeResult:
    """Write ``output``: the fp32 edgemp model at ``model_path`` at ``cfg.precision``.

    The output keeps the edgemp metadata with ``precision`` updated and a
    ``quantization`` summary in ``extra`` (tool version, nodes quantized, calibration).
    """
    onnx = require_onnx("quantization")
    import onnxruntime as ort

    model_path, output = Path(model_path), Path(output)
    _, spec = load_edgemp_model(model_path)
    if spec.precision != "fp32":
        raise QuantizationError(
            f"{model_path} is already {spec.precision}; quantize the fp32 export instead"
        )
    if cfg.precision == "int8-static" and not calibration_graphs:
        raise QuantizationError("int8-static needs calibration graphs: pass --calibration GRAPHS.jsonl")

    output.parent.mkdir(parents=True, exist_ok=True)
    summary: dict = {"precision": cfg.precision, "tool": f"onnxruntime {ort.__version__}"}
    with tempfile.TemporaryDirectory(prefix="edgemp-quant-") as tmp:
        work = model_path
        preprocessed = False
        if cfg.precision != "fp16" and cfg.preprocess:
            pre = Path(tmp) / "pre.onnx"
            preprocessed = _preprocess(model_path, pre)
            work = pre if preprocessed else model_path
        nodes = dense_layer_nodes(onnx.load(str(work)))
        raw = Path(tmp) / "quantized.onnx"
        if cfg.precision == "fp16":
            with _ort_errors("fp16 conversion"):
                _to_fp16(work, raw)
            nodes = []
            summary.update(format="fp16", keep_io_types=True, blocked_ops=list(FP16_EXTRA_BLOCKED_OPS))
        elif not nodes:
            raise QuantizationError(f"{model_path} has no Gemm/MatMul with weights to quantize")
        elif cfg.precision == "int8-dynamic":
            with _ort_errors("int8-dynamic quantization"):
                _quantize_dynamic(work, raw, nodes, cfg)
            summary.update(format="dynamic (MatMulInteger)", weight_type="int8",
                           per_channel=cfg.per_channel, reduce_range=cfg.reduce_range)
        else:
            summary.update(_calibrate_and_quantize(work, raw, nodes, cfg, spec, calibration_graphs))
        model = onnx.load(str(raw))
    summary.update(quantized_nodes=len(nodes), preprocessed=preprocessed)
    return _publish(model, output, spec, cfg, nodes, summary)


def _calibrate_and_quantize(work: Path, raw: Path, nodes: list[str], cfg: QuantizeConfig, spec: ExportedModelSpec,
                            calibration_graphs: Sequence[Graph]) -> dict:
    """int8-static: calibrate activation ranges on real graphs, write QDQ; the summary fields."""
    from edgemp.export.calibration import GraphCalibrationReader

    reader = GraphCalibrationReader(
        calibration_graphs, spec.input_names, form=spec.form, max_nodes=spec.max_nodes,
        batch_graphs=cfg.calibration_batch_graphs, progress=cfg.progress,
    )
    try:
        with _ort_errors("int8-static calibration/quantization"):
            _quantize_static(work, raw, nodes, cfg, reader)
    finally:
        reader.close()
    if reader.graphs_fed != len(reader.graphs):
        raise QuantizationError(
            f"calibration saw {reader.graphs_fed} of {len(reader.graphs)} graphs; "
            "this onnxruntime calibrates differently than edgemp expects"
        )
    return dict(format="QDQ", activation_type="int8", weight_type="int8", symmetric=True,
                per_channel=cfg.per_channel, calibration=reader.summary(cfg.calibration_method).to_dict())


def _publish(model, output: Path, spec: ExportedModelSpec, cfg: QuantizeConfig, nodes: list[str],
             summary: dict) -> QuantizeResult:
    """Record what stayed float, store the updated spec, check the graph and save it atomically."""
    onnx = require_onnx("quantization")
    if cfg.precision == "fp16":
        kept = dict(sorted(Counter(n.op_type for n in model.graph.node if n.op_type in FP16_EXTRA_BLOCKED_OPS).items()))
    else:
        kept = _float_ops_kept(model, set(nodes) | {f"{n}_MatMul" for n in nodes})
    summary["float_ops_kept"] = kept
    new_spec = with_precision(spec, cfg.precision, {"quantization": summary})
    write_metadata(model, new_spec)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise QuantizationError(f"the {cfg.precision} model fails onnx.checker: {str(e).splitlines()[0]}") from e
    save_onnx(model, output)
    log.info("wrote %s (%s, %d dense layers quantized)", output, cfg.precision, len(nodes))
    return QuantizeResult(output, new_spec, nodes, kept, summary["preprocessed"])
