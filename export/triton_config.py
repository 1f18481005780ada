"""Triton ``config.pbtxt`` for a Triton-ragged edgemp model: typed settings in, protobuf text out.

The text is rendered from frozen dataclasses (no string-keyed option dicts) and checked
against Triton's own ``ModelConfig`` protobuf (``tritonclient.grpc.model_config_pb2``)
with ``google.protobuf.text_format``, which rejects unknown fields and bad enum values.

What each part is for:

* ``max_batch_size`` > 0: every input and output gets an implicit leading batch dim, and
  the dynamic batcher may put up to that many requests (= graphs) into one execution.
* ``input`` with ``allow_ragged_batch: true`` and ``dims: [-1]``: a request sends
  ``[1, k]``; the ONNX Runtime backend concatenates the requests' elements into the
  model's 1-D ``[-1]`` input (it refuses to load a ragged input of any other ONNX shape).
* ``batch_input``: the offsets Triton computes once the batch is formed (INT32: Triton
  writes batch inputs as INT32 or FP32 only).
* ``output`` dims ``[W]``: the model answers ``[G, W]``, one row per request.
* ``optimization.execution_accelerators``: ONNX Runtime's TensorRT execution provider on
  GPU instances, with an optimisation profile sized from the batch and graph limits.

Two flavours (``TritonRepoConfig.backend``): ``onnxruntime`` (the ONNX Runtime backend of
NVIDIA's full containers computes the ``batch_input`` offsets itself) and ``python``
(Triton's Python backend hands ``model.py`` the list of batched requests; it joins them
itself with the torch-free ``edgemp.runtime``, so there are no ``batch_input`` entries).
Both declare the same ragged inputs, so clients send the same requests to either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from edgemp.errors import ExportError, MissingExtraError
from edgemp.ragged_layout import WIDTH_PARAMETERS, RaggedLayout
from edgemp.spec import ModelSpec

# What edgemp serve accepts as a model folder (runtime/server/repository.py has the same rule): '.' and
# '..' would name the repository itself or its parent; \Z, not $, which lets a trailing newline through.
NAME_RE = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.-]{1,128}\Z")
NAME_RULE = "1-128 letters, digits, '_', '.' or '-', not only dots"
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
PRECISIONS = {"fp32": "FP32", "fp16": "FP16"}
BACKENDS = ("onnxruntime", "python")


@dataclass(frozen=True)
class TensorRTSettings:
    """ONNX Runtime's TensorRT execution provider inside Triton (GPU instances only).

    The optimisation profile is derived from the limits, per 1-D ragged input:
    ``min`` = one smallest graph, ``opt`` = half the batch of half-size graphs,
    ``max`` = ``max_batch_size`` graphs of ``max_nodes_per_graph`` / ``max_edges_per_graph``.
    A batch outside the profile makes TensorRT rebuild or fall back, so size the limits to
    your largest graphs.

    Args:
        precision: ``"fp32"`` or ``"fp16"`` (default: ``"fp16"``). INT8 needs a calibration
            table and is not offered here.
        max_workspace_bytes: TensorRT scratch memory (default: 1 GiB).
        max_nodes_per_graph, max_edges_per_graph: the largest graph the profile covers
            (default: 128 nodes, 512 directed edges).
        engine_cache_path: where Triton caches built engines; "" = no cache (default).
    """

    precision: str = "fp16"
    max_workspace_bytes: int = 1 << 30
    max_nodes_per_graph: int = 128
    max_edges_per_graph: int = 512
    engine_cache_path: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"TensorRT precision {self.precision!r} is not one of {list(PRECISIONS)}")
        if self.max_nodes_per_graph < 1 or self.max_edges_per_graph < 0 or self.max_workspace_bytes < 1:
            raise ExportError("TensorRT profile limits must be positive (nodes >= 1, edges >= 0, workspace >= 1)")


@dataclass(frozen=True)
class TritonRepoConfig:
    """How the model repository is laid out and how Triton batches and places the model.

    Args:
        name: model folder name (default: ``"edgemp"``).
        version: version folder (default: 1).
        max_batch_size: most requests (one graph each) per execution (default: 64, the
            edgemp batcher's ``max_batch_graphs``).
        max_queue_delay_us: how long the dynamic batcher may hold a batch open (default:
            0, greedy — what edgemp's batcher measured best for closed-loop clients).
        instances: model instances per device (default: 1).
        instance_kind: ``"cpu"`` or ``"gpu"`` (default: ``"cpu"``).
        tensorrt: TensorRT accelerator settings, GPU instances only (default: none).
        backend: ``"onnxruntime"`` (Triton's ONNX Runtime backend, full containers) or
            ``"python"`` (Triton's Python backend running ``edgemp.runtime``; what the
            ``nvidia-pytriton`` wheel's ``tritonserver`` can load) (default: ``"onnxruntime"``).
        max_queue_size: requests the dynamic batcher queues before it rejects new ones
            (default: 1024, as ``edgemp serve``; 0 = unbounded).
        verify_mixes: random request mixes checked against the plain model (default: 24).
        seed: seed for those mixes (default: 0).
    """

    name: str = "edgemp"
    version: int = 1
    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    instances: int = 1
    instance_kind: str = "cpu"
    tensorrt: TensorRTSettings | None = None
    backend: str = "onnxruntime"
    max_queue_size: int = 1024
    verify_mixes: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ExportError(f"model name {self.name!r} must be {NAME_RULE} (a Triton model folder)")
        if self.version < 1:
            raise ExportError(f"model version must be >= 1, got {self.version}")
        if self.max_batch_size < 1:
            raise ExportError(
                f"--max-batch-size must be >= 1, got {self.max_batch_size}: ragged batching needs a batch dimension"
            )
        if self.max_queue_delay_us < 0:
            raise ExportError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if self.instances < 1:
            raise ExportError(f"--instances must be >= 1, got {self.instances}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ExportError(f"instance kind {self.instance_kind!r} is not one of {list(INSTANCE_KINDS)}")
        if self.verify_mixes < 0:
            raise ExportError(f"verify_mixes must be >= 0, got {self.verify_mixes}")
        if self.tensorrt is not None and self.instance_kind != "gpu":
            raise ExportError("TensorRT acceleration needs GPU instances: add --instance-kind gpu")
        if self.backend not in BACKENDS:
            raise ExportError(f"Triton backend {self.backend!r} is not one of {list(BACKENDS)}")
        if self.backend == "python" and (self.tensorrt is not None or self.instance_kind != "cpu"):
            raise ExportError("the python backend runs edgemp.runtime on CPU instances; --precision and "
                              "--instance-kind gpu need --triton-backend onnxruntime")
        if self.max_queue_size < 0:
            raise ExportError(f"--max-queue-size must be >= 0, got {self.max_queue_size}")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _profile(cfg: TritonRepoConfig, lay: RaggedLayout) -> dict[str, str]:
    """trt_profile_{min,opt,max}_shapes: ``name:dim`` per 1-D input, comma-separated."""
    trt = cfg.tensorrt
    b = cfg.max_batch_size
    opt_b = max(1, b // 2)
    opt_n, opt_e = max(1, trt.max_nodes_per_graph // 2), trt.max_edges_per_graph // 2
    per_graph = {  # (min, opt, max) elements of one graph, per ragged input
        "x": lambda n, e: n,
        "edge_index": lambda n, e: e,
        "edge_attr": lambda n, e: e,
    }
    shapes = {"min": [], "opt": [], "max": []}
    for r in lay.ragged:
        f = per_graph[r.name]
        shapes["min"].append(f"{r.name}:{f(1, 0) * r.per_item}")
        shapes["opt"].append(f"{r.name}:{opt_b * f(opt_n, opt_e) * r.per_item}")
        shapes["max"].append(f"{r.name}:{b * f(trt.max_nodes_per_graph, trt.max_edges_per_graph) * r.per_item}")
    for bi in lay.batch_inputs:
        shapes["min"].append(f"{bi.target_name}:2")
        shapes["opt"].append(f"{bi.target_name}:{opt_b + 1}")
        shapes["max"].append(f"{bi.target_name}:{b + 1}")
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in shapes.items()}


def render_config(cfg: TritonRepoConfig, spec: ModelSpec, lay: RaggedLayout) -> str:
    """``config.pbtxt`` text for the Triton-ragged model described by ``spec`` and ``lay``."""
    bad = [o.name for o in spec.outputs if o.level != "graph"]
    if bad:
        raise ExportError(f"node-level output(s) {bad} cannot be split per request by Triton")
    python = cfg.backend == "python"
    lines = [
        f"name: {_q(cfg.name)}",
        'backend: "python"' if python else 'platform: "onnxruntime_onnx"',
        f"max_batch_size: {cfg.max_batch_size}",
        "",
        "# One graph per request; Triton concatenates these flat (see edgemp.ragged_layout).",
    ]
    for r in lay.ragged:
        lines += ["input {", f"  name: {_q(r.name)}", f"  data_type: {r.data_type}", "  dims: [ -1 ]",
                  "  allow_ragged_batch: true", "}"]
    if python:
        lines.append("# model.py (edgemp.runtime) joins the batched requests itself: no batch_input.")
    else:
        lines.append("# Computed by Triton once the batch is formed: where each request's elements start.")
        for b in lay.batch_inputs:
            lines += ["batch_input {", f"  kind: {b.kind}", f"  target_name: {_q(b.target_name)}",
                      f"  data_type: {b.data_type}", f"  source_input: {_q(b.source_input)}", "}"]
    for o in spec.outputs:
        lines += ["output {", f"  name: {_q(o.name)}", "  data_type: TYPE_FP32", f"  dims: [ {o.width} ]", "}"]
    # Feature widths for clients: Triton's metadata shows the flat inputs as [-1, -1].
    for key, value in ((WIDTH_PARAMETERS[0], spec.node_features), (WIDTH_PARAMETERS[1], spec.edge_features)):
        lines.append(f"parameters {{ key: {_q(key)} value {{ string_value: {_q(str(value))} }} }}")
    lines += [
        "",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {cfg.max_queue_delay_us}",
        "  # A full queue rejects at once; a client may shorten its own timeout (request parameter).",
        "  default_queue_policy {",
        "    timeout_action: REJECT",
        f"    max_queue_size: {cfg.max_queue_size}",
        "    allow_timeout_override: true",
        "  }",
        "}",
        "instance_group {",
        f"  count: {cfg.instances}",
        f"  kind: {INSTANCE_KINDS[cfg.instance_kind]}",
        "}",
    ]
    if cfg.tensorrt is not None:
        trt = cfg.tensorrt
        params = {
            "precision_mode": PRECISIONS[trt.precision],
            "max_workspace_size_bytes": str(trt.max_workspace_bytes),
            **_profile(cfg, lay),
        }
        if trt.engine_cache_path:
            params["trt_engine_cache_enable"] = "1"
            params["trt_engine_cache_path"] = trt.engine_cache_path
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator {",
                  '      name: "tensorrt"']
        lines += [f"      parameters {{ key: {_q(k)} value: {_q(v)} }}" for k, v in params.items()]
        lines += ["    }", "  }", "}"]
    return "\n".join(lines) + "\n"


def parse_config(text: str):
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig`` (unknown fields are errors)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as e:  # tritonclient.grpc raises RuntimeError without grpcio
        raise MissingExtraError("tritonclient[grpc]", "dev", "checking config.pbtxt against Triton's schema") from e
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ExportError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from e


def declared_inputs(cfg: TritonRepoConfig, lay: RaggedLayout) -> tuple[str, ...]:
    """The inputs config.pbtxt must declare: ragged inputs, plus batch inputs for the ONNX Runtime backend."""
    return tuple(r.name for r in lay.ragged) if cfg.backend == "python" else lay.input_names


def check_config(text: str, input_names: tuple[str, ...], output_names: tuple[str, ...]):
    """Parse and cross-check: every declared input (config input or batch input) is expected, and vice versa.

    ``input_names`` is :func:`declared_inputs`: the ONNX model's inputs for the ONNX Runtime
    backend; only the ragged ones for the Python backend, whose ``model.py`` computes offsets.
    """
    msg = parse_config(text)
    declared = [i.name for i in msg.input] + [t for b in msg.batch_input for t in b.target_name]
    if msg.backend == "python" and msg.batch_input:
        raise ExportError("config.pbtxt: the python backend does not compute batch_input tensors; drop them")
    if sorted(declared) != sorted(input_names):
        raise ExportError(f"config.pbtxt declares inputs {sorted(declared)} but the ONNX model takes {sorted(input_names)}")
    outs = [o.name for o in msg.output]
    if sorted(outs) != sorted(output_names):
        raise ExportError(f"config.pbtxt declares outputs {outs} but the ONNX model gives {list(output_names)}")
    if msg.max_batch_size < 1 or not all(i.allow_ragged_batch and list(i.dims) == [-1] for i in msg.input):
        raise ExportError("config.pbtxt: ragged inputs need max_batch_size >= 1, dims [-1] and allow_ragged_batch")
    return msg
