"""Checkpoint → verified ONNX with the K message-passing rounds unrolled.

Uses the dynamo exporter (``torch.onnx.export(dynamo=True)``): the legacy TorchScript
exporter turns ``index_add_`` into ScatterElements *without* reduction, so duplicate
targets overwrite each other. Which scatter op the graph gets is chosen per target
(:data:`edgemp.export.config.SCATTER_IMPL_BY_TARGET`), and every export is verified.
"""
from __future__ import annotations

import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemp import __version__
from edgemp.errors import ExportError
from edgemp.export.config import ExportConfig
from edgemp.export.deps import require_torch_export
from edgemp.export.attention_logits import fold_attention_logits
from edgemp.export.edge_rows import edge_network_on_distinct_rows
from edgemp.export.encoder_fold import fold_bias_adds, fold_encoder_into_aggregation, fold_linear_chains
from edgemp.export.failures import explain_export_failure, quiet_tracer
from edgemp.export.pyg_translations import pyg_translations
from edgemp.export.onnx_file import staged_path, write_metadata
from edgemp.export.rewrite import scatter_elements_to_scatternd, scatter_into_addend
from edgemp.export.source import ExportSource, resolve_source
from edgemp.export.translations import custom_translations
from edgemp.export.verify import VerificationReport, compare, verification_cases
from edgemp.graph import GraphBatch, collate
from edgemp.spec import ExportedModelSpec

log = logging.getLogger(__name__)

DYNAMIC_AXES = {
    "x": {0: "num_nodes"},
    "edge_index": {1: "num_edges"},
    "edge_attr": {0: "num_edges"},
    "node_graph": {0: "num_nodes"},
    "graph_node_counts": {0: "num_graphs"},
}
DENSE_DYNAMIC_AXES = {
    "x": {0: "num_graphs", 1: "max_nodes"},
    "adjacency": {0: "num_graphs", 1: "max_nodes", 2: "max_nodes"},
    "node_mask": {0: "num_graphs", 1: "max_nodes"},
}


@dataclass
class ExportResult:
    path: Path
    spec: ExportedModelSpec
    report: VerificationReport | None
    checks: dict

    def to_dict(self) -> dict:
        d = {"path": str(self.path), "checks": self.checks, "passed": self.report.passed if self.report else None}
        if self.report:
            d.update(self.report.to_dict())
        return d


def _example_inputs(src: ExportSource, cfg: ExportConfig):
    """A small example batch whose sizes are all distinct and > 1 (0/1 sizes get specialised)."""
    import torch

    g = torch.Generator().manual_seed(0)
    spec = src.spec
    if cfg.form == "dense":
        m = min(cfg.max_nodes, 5) if cfg.max_nodes > 2 else 2
        x = torch.randn(3, m, spec.node_features, generator=g)
        adj = (torch.rand(3, m, m, generator=g) > 0.5).float()
        mask = torch.ones(3, m)
        return (x, adj, mask)
    n, e = 7, 12
    x = torch.randn(n, spec.node_features, generator=g)
    ei = torch.randint(0, n, (2, e), generator=g)
    args = [x, ei]
    if spec.edge_features:
        args.append(torch.randn(e, spec.edge_features, generator=g))
    args += [torch.tensor([0, 0, 0, 1, 1, 2, 2]), torch.tensor([3, 2, 2])]
    return tuple(args)


def _wrap(src: ExportSource, cfg: ExportConfig):
    from edgemp.export.wrappers import DenseExport, sparse_export

    names = tuple(o.name for o in src.spec.outputs)
    if cfg.form == "dense":
        if not src.supports_dense:
            raise ExportError(
                f"model family {src.spec.family!r} has no dense form (its messages read edge features); "
                "export it with --form sparse"
            )
        return DenseExport(src.module, names).eval()
    return sparse_export(src.module, names, bool(src.spec.edge_features)).eval()


def torch_export(wrapper, example, input_names, output_names, opset: int, path: Path, axes: dict) -> None:
    """``torch.onnx.export(dynamo=True)`` with edgemp's translations; ``axes`` names each input's dynamic dims."""
    import torch

    dynamic_shapes = tuple(axes[n] for n in input_names)
    # The exporter prints progress and, on failure, its traced graph; keep the CLI's output to our
    # own report. It also warns about optional torchvision ops and axis renames; our own checks
    # (loops, weights, lint, numerics) are what decide whether the export is good.
    sink = io.StringIO()
    try:
        with quiet_tracer(sink), torch.no_grad(), warnings.catch_warnings(), pyg_translations():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                example,
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
                custom_translation_table=custom_translations(),
            )
            program.save(str(path))
    except Exception as e:  # torch raises many exception types for untraceable models
        raise explain_export_failure(e, wrapper, sink.getvalue()) from e


def _torch_outputs(wrapper, feeds: dict[str, np.ndarray], input_names, output_names) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        outs = wrapper(*[torch.from_numpy(feeds[n]) for n in input_names])
    return {n: o.numpy() for n, o in zip(output_names, outs)}


def _feeds(batch: GraphBatch, cfg: ExportConfig, input_names) -> dict[str, np.ndarray]:
    if cfg.form == "dense":
        from edgemp.dense_layout import to_dense

        return to_dense(batch, cfg.max_nodes)
    tensors = batch.tensors()
    return {n: tensors[n] for n in input_names}


def verify_onnx_file(model_or_checkpoint, path: str | Path, cfg: ExportConfig = ExportConfig()) -> VerificationReport:
    """Verify any ONNX file in the edgemp layout against a PyTorch source (e.g. a legacy export)."""
    src = resolve_source(model_or_checkpoint)
    if hasattr(src.module, "set_scatter_impl"):  # GraphNet and the chemprop D-MPNN
        src.module.set_scatter_impl(cfg.scatter_impl)
    wrapper = _wrap(src, cfg)
    output_names = tuple(o.name for o in src.spec.outputs)
    return _verify(wrapper, src, cfg, Path(path), wrapper.input_names(), output_names)


def _verify(wrapper, src: ExportSource, cfg: ExportConfig, path: Path, input_names, output_names) -> VerificationReport:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    report = VerificationReport(passed=True, atol=cfg.atol, rtol=cfg.rtol)
    for name, graphs in verification_cases(src.spec, cfg.seed, cfg.max_nodes if cfg.form == "dense" else 0):
        batch = collate(graphs)
        feeds = _feeds(batch, cfg, input_names)
        expected = _torch_outputs(wrapper, feeds, input_names, output_names)
        got = dict(zip(output_names, sess.run(list(output_names), feeds)))
        compare(name, batch, expected, got, cfg.atol, cfg.rtol, report)
        if cfg.form == "dense" and src.is_graphnet:
            # The padded form must agree with the edge-list model the checkpoint defines.
            from edgemp.dense_layout import from_dense

            sparse = _sparse_reference(src, batch)
            levels = src.spec.output_levels
            compare(f"{name}:vs_sparse", batch, sparse, from_dense(got, batch, levels), cfg.atol, cfg.rtol, report)
    return report


def _sparse_reference(src: ExportSource, batch: GraphBatch) -> dict[str, np.ndarray]:
    import torch

    t = {k: torch.from_numpy(v) for k, v in batch.tensors().items()}
    with torch.no_grad():
        out = src.module(t["x"], t["edge_index"], t.get("edge_attr"), t["node_graph"], batch.num_graphs)
    return {k: v.numpy() for k, v in out.items()}


def export_model(model_or_checkpoint, output: str | Path, cfg: ExportConfig = ExportConfig()) -> ExportResult:
    """Export, check and verify; raise :class:`ExportError` on any failed check."""
    require_torch_export()
    import onnx

    src = resolve_source(model_or_checkpoint)
    if hasattr(src.module, "set_scatter_impl"):  # GraphNet and the chemprop D-MPNN
        src.module.set_scatter_impl(cfg.scatter_impl)
    wrapper = _wrap(src, cfg)
    input_names = wrapper.input_names()
    output_names = tuple(o.name for o in src.spec.outputs)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        axes = DENSE_DYNAMIC_AXES if cfg.form == "dense" else DYNAMIC_AXES
        torch_export(wrapper, _example_inputs(src, cfg), input_names, output_names, cfg.opset, raw, axes)
        model = onnx.load(str(raw))
    checks = finish_graph(model, src, cfg)
    spec = ExportedModelSpec(
        model=src.spec,
        input_names=tuple(input_names),
        form=cfg.form,
        max_nodes=cfg.max_nodes if cfg.form == "dense" else 0,
        target=cfg.target,
        precision="fp32",
        opset=cfg.opset,
        checkpoint_sha256=src.checkpoint_sha256,
        edgemp_version=__version__,
    )
    write_metadata(model, spec)
    report = None
    with staged_path(output) as staged:
        onnx.save(model, str(staged))
        if cfg.verify:
            report = _verify(wrapper, src, cfg, staged, input_names, output_names)
            report.require_passed("ONNX Runtime disagrees with PyTorch", "the file was not written")
    return ExportResult(output, spec, report, checks)


def finish_graph(model, src: ExportSource, cfg: ExportConfig) -> dict:
    """Post-export passes and checks shared by every exported form; returns the check summary.

    Merges duplicated constants, rewrites row scatters for ORT CPU, then requires a valid
    graph with no control flow, weights stored once, and ops the target accepts.
    """
    import onnx

    from edgemp.export.checks import control_flow_nodes, dedupe_initializers, require_unrolled, require_weights_once
    from edgemp.export.lint import lint_model

    dropped = dedupe_initializers(model)
    if dropped:
        log.info("merged %d duplicated constant(s) the exporter folded per use", dropped)
    rewritten = scatter_elements_to_scatternd(model) if cfg.scatter_impl == "index_add" else 0
    into_addend = scatter_into_addend(model) if cfg.scatter_impl == "index_add" else 0
    # TensorRT's parser has no Unique: only the ONNX Runtime targets get distinct-row edge networks.
    distinct = edge_network_on_distinct_rows(model) if cfg.distinct_edge_rows and cfg.target != "tensorrt" else 0
    params = sum(p.numel() for p in src.module.parameters())
    buffers = sum(b.numel() for b in src.module.buffers())
    in_file = require_weights_once(model, params, buffers)
    # After the weights check: these folds add small weights derived from parameters (not copies).
    # Measured on ONNX Runtime CPU only (benchmarks/results/pyg.md); TensorRT keeps the graph as exported.
    narrow = fold_encoder_into_aggregation(model) if into_addend and cfg.target != "tensorrt" else 0
    logits = fold_attention_logits(model) if cfg.target != "tensorrt" else 0
    chains = fold_linear_chains(model) if cfg.target != "tensorrt" else 0
    biases = fold_bias_adds(model) if cfg.target != "tensorrt" else 0
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported model fails onnx.checker: {str(e).splitlines()[0]}") from e
    require_unrolled(model)
    lint = lint_model(model, cfg.target)
    if not lint.ok:
        raise ExportError(f"the exported graph does not suit target {cfg.target}: {lint.summary()}")
    return {
        "onnx_checker": True,
        "control_flow_nodes": control_flow_nodes(model),
        "parameters_in_model": int(params),
        "parameters_in_file": int(in_file),
        "scatter_elements_rewritten_to_scatternd": rewritten,
        "edge_network_nodes_on_distinct_rows": distinct,
        "scatters_into_self_term": into_addend,
        "encoders_folded_into_aggregation": narrow,
        "attention_logits_as_matmul": logits,
        "linear_pairs_folded": chains,
        "bias_adds_folded_into_gemm": biases,
        "lint": {cfg.target: lint.problems},
    }


def export_onnx(model_or_checkpoint, output: str | Path, cfg: ExportConfig = ExportConfig()) -> Path:
    """Export and verify; return the path of the written ONNX file."""
    return export_model(model_or_checkpoint, output, cfg).path
