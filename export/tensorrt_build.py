"""Build a serialized TensorRT engine (``.plan``) from an exported edgemp ONNX file.

TensorRT 10 Python API, imported lazily (``pip install 'edgemp[tensorrt]'``; the PyPI
wheels fetch from NVIDIA's index, and a GPU is needed to build). The steps:

1. lint the graph for TensorRT's parser (no GPU needed; the usual trap is ScatterND
   with a reduction, which ``--target tensorrt`` exports avoid);
2. parse, listing every parser error with its node;
3. one optimization profile from node/edge/graph ranges
   (:mod:`edgemp.export.tensorrt_profiles`);
4. build with an optional timing cache that is read before and written after, so
   rebuilds (another precision, another profile) skip kernel timing;
5. write the plan plus ``<plan>.json`` (the :class:`ExportedModelSpec`
   :mod:`edgemp.runtime.tensorrt_engine` reads);
6. verify the engine against ONNX Runtime CPU on the same graphs, like export does.

``--int8`` takes QDQ models only (``edgemp quantize --precision int8-static``):
TensorRT's explicit quantization reads their scales, so no calibrator is involved.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgemp import __version__
from edgemp.errors import EdgempError, ExportError, MissingExtraError, VerificationError
from edgemp.export.onnx_file import load_edgemp_model, write_bytes_atomic
from edgemp.export.tensorrt_profiles import ProfileRange, input_shapes
from edgemp.graph import Graph, collate
from edgemp.spec import ExportedModelSpec

log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class EngineConfig:
    """How to build.

    Args:
        profiles: ranges for every dynamic dim of the model's form (required).
        fp16: allow fp16 kernels (scatter reductions then accumulate in fp16).
        int8: use the QDQ scales of an int8-static model.
        timing_cache: file to read kernel timings from and write them back to.
        workspace_bytes: builder scratch memory limit (default 1 GiB).
        optimization_level: TensorRT builder optimization level 0-5 (default 3).
        verify: compare the engine with ONNX Runtime CPU after building (default on).
        atol, rtol: verification tolerance; loose enough for fp32 TF32/reassociation
            (default 1e-3, 1e-3). Set wider for fp16/int8 engines.
    """

    profiles: tuple[ProfileRange, ...]
    fp16: bool = False
    int8: bool = False
    timing_cache: Path | None = None
    workspace_bytes: int = 1 << 30
    optimization_level: int = 3
    verify: bool = True
    atol: float = 1e-3
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        if not self.profiles:
            raise EdgempError("an engine needs optimization profiles: --profile DIM=MIN:OPT:MAX or --profile-from FILE")
        if not 0 <= self.optimization_level <= 5:
            raise EdgempError(f"optimization_level must be 0..5, got {self.optimization_level}")
        if self.workspace_bytes < 1 << 20:
            raise EdgempError(f"workspace_bytes {self.workspace_bytes} is below 1 MiB")

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.fp16 else "fp32"


@dataclass
class EngineResult:
    path: Path
    sidecar: Path
    spec: ExportedModelSpec
    report: Any = None  # VerificationReport when verified
    timing_cache: Path | None = None
    extra: dict = field(default_factory=dict)


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`MissingExtraError` with the install hint."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise MissingExtraError("tensorrt", "tensorrt", "to build TensorRT engines") from e
    return trt


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = ""
        name = getattr(err, "node_name", None)
        op = getattr(err, "node_operator", None)
        if callable(name) and name():
            node = f"{name()} ({op() if callable(op) else '?'}): "
        elif callable(getattr(err, "node", None)) and err.node() >= 0:
            node = f"node #{err.node()}: "
        errors.append(f"{node}{err.desc()}")
    return errors


def _check_model(model, spec: ExportedModelSpec, cfg: EngineConfig, path: Path) -> None:
    from edgemp.export.lint import lint_model

    lint = lint_model(model, "tensorrt")
    if not lint.ok:
        raise ExportError(f"{path} does not suit TensorRT: {lint.summary()}")
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    if cfg.int8 and not has_qdq:
        raise EdgempError(
            f"--int8 needs a QDQ model and {path} ({spec.precision}) has none: "
            "run `edgemp quantize --precision int8-static` first"
        )


def build_engine(
    onnx_path: str | Path,
    output: str | Path,
    cfg: EngineConfig,
    verify_graphs: Sequence[Graph] | None = None,
) -> EngineResult:
    """Build, save and (by default) verify a TensorRT engine for an edgemp ONNX file."""
    onnx_path, output = Path(onnx_path), Path(output)
    model, spec = load_edgemp_model(onnx_path)
    shapes = input_shapes(spec, cfg.profiles)  # validates profile dims before any GPU work
    _check_model(model, spec, cfg, onnx_path)
    del model
    trt = import_tensorrt()

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # ScatterElements reductions run as a plugin
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)  # owns the weights the network points to: keep it alive
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser)
        shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path}: {shown or 'no details'}")
    config = _builder_config(trt, builder, network, cfg, shapes)
    log.info("building TensorRT %s engine for %s (%s)", trt.__version__, onnx_path.name, cfg.precision)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError("TensorRT failed to build the engine; the TensorRT log above says why")
    result = _save_engine(bytes(plan), output, spec, cfg, onnx_path, str(trt.__version__))
    if cfg.timing_cache is not None:
        write_bytes_atomic(Path(cfg.timing_cache), bytes(config.get_timing_cache().serialize()))
    if cfg.verify:
        try:
            result.report = verify_engine(output, onnx_path, cfg, verify_graphs)
        except VerificationError:
            output.unlink(missing_ok=True)  # a wrong engine must not be served by accident
            result.sidecar.unlink(missing_ok=True)
            raise
    return result


def _builder_config(trt, builder, network, cfg: EngineConfig, shapes: dict):
    """Precision flags, workspace, one optimization profile over every input, the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    config.builder_optimization_level = cfg.optimization_level
    if cfg.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.int8:
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    network_inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    unknown = [n for n in network_inputs if n not in shapes]
    if unknown:
        raise ExportError(f"the network has input(s) {unknown} that the edgemp metadata does not list")
    for name in network_inputs:
        lo, opt, hi = shapes[name]
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if cfg.timing_cache is not None:
        cache_bytes = b""
        if Path(cfg.timing_cache).exists():
            cache_bytes = Path(cfg.timing_cache).read_bytes()
            log.info("reusing timing cache %s (%d bytes)", cfg.timing_cache, len(cache_bytes))
        config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    return config


def _save_engine(plan: bytes, output: Path, spec: ExportedModelSpec, cfg: EngineConfig, onnx_path: Path,
                 trt_version: str) -> EngineResult:
    """Write the engine and its spec sidecar (the runtime reads the spec there: an engine has no metadata)."""
    from edgemp.runtime.tensorrt_engine import sidecar_path

    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, plan)
    extra = {
        "tensorrt": {
            "version": trt_version,
            "precision": cfg.precision,
            "source_precision": spec.precision,
            "profiles": [str(p) for p in cfg.profiles],
            "source_onnx": onnx_path.name,
        }
    }
    engine_spec = replace(spec, target="tensorrt", precision=cfg.precision, edgemp_version=__version__,
                          extra={**spec.extra, **extra})
    side = sidecar_path(output)
    write_bytes_atomic(side, engine_spec.to_json().encode("utf-8"))
    return EngineResult(output, side, engine_spec, timing_cache=cfg.timing_cache, extra=extra)


def _fits(graphs: Sequence[Graph], profiles: Sequence[ProfileRange], spec: ExportedModelSpec) -> bool:
    by_dim = {p.dim: p for p in profiles}
    within = lambda dim, v: by_dim[dim].min <= v <= by_dim[dim].max  # noqa: E731
    if not within("num_graphs", len(graphs)):
        return False
    if spec.form == "dense":
        from edgemp.dense_layout import pad_size

        return within("max_nodes", pad_size(max(g.num_nodes for g in graphs), spec.max_nodes))
    return within("num_nodes", sum(g.num_nodes for g in graphs)) and within("num_edges", sum(g.num_edges for g in graphs))


def verification_batches(
    spec: ExportedModelSpec, profiles: Sequence[ProfileRange], graphs: Sequence[Graph] | None = None, limit: int = 8
) -> list[tuple[str, list[Graph]]]:
    """Batches inside the profile: export's verification cases that fit, plus batches of ``graphs``."""
    from edgemp.export.verify import verification_cases

    cases = [(n, g) for n, g in verification_cases(spec.model, 0, spec.max_nodes) if _fits(g, profiles, spec)]
    if graphs:
        max_graphs = {p.dim: p for p in profiles}["num_graphs"].max
        for start in range(0, len(graphs), max_graphs):
            chunk = list(graphs[start : start + max_graphs])
            while chunk and not _fits(chunk, profiles, spec):
                chunk = chunk[: len(chunk) // 2]
            if chunk:
                cases.append((f"graphs_{start}", chunk))
            if len(cases) >= limit:
                break
    if not cases:
        raise EdgempError("no verification batch fits the engine's profiles; widen them or pass --no-verify")
    return cases[:limit]


def verify_engine(
    plan_path: Path, onnx_path: Path, cfg: EngineConfig, graphs: Sequence[Graph] | None = None
):
    """Engine vs ONNX Runtime CPU on the same batches; :class:`VerificationError` on a miss."""
    from edgemp.export.verify import VerificationReport, compare
    from edgemp.runtime import load

    report = VerificationReport(passed=True, atol=cfg.atol, rtol=cfg.rtol, reference="ONNX Runtime CPU",
                                candidate="the TensorRT engine")
    with load(plan_path) as engine, load(onnx_path, providers="cpu") as ref:
        for name, batch_graphs in verification_batches(ref.spec, cfg.profiles, graphs):
            batch_graphs = ref.validate(batch_graphs)
            batch = collate(batch_graphs)
            expected = ref.run_batch(batch)
            got = engine.run_batch(batch)
            compare(name, batch, expected, {k: np.asarray(v) for k, v in got.items()}, cfg.atol, cfg.rtol, report)
    # NaN/inf named as such (a max error over NaN reads 0.000), then the worst of the cases that differ
    report.require_passed("the TensorRT engine disagrees with ONNX Runtime CPU", "the engine was not kept")
    return report
