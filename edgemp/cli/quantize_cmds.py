"""``edgemp quantize``, ``edgemp optimize`` and ``edgemp engine`` (no torch; onnx inside the commands)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from edgemp.errors import EdgempError

logger = logging.getLogger(__name__)

_MODEL = click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
_OUT = click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                    help="Output file.")


def _write_json(path: Path, data: dict) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise EdgempError(f"cannot write {path}: {e.strerror}") from e


@click.command("quantize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output file (a directory for a text model).")
@click.option("--precision", type=click.Choice(["int8-dynamic", "int8-static", "fp16"]), required=True,
              help="int8-dynamic: fast CPU default. int8-static: calibrated QDQ (also feeds TensorRT). "
                   "fp16: a GPU precision.")
@click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Representative graphs (.jsonl/.npz) for int8-static.")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--calibration-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Graphs per calibration batch.")
@click.option("--per-channel", is_flag=True, help="Per-channel weight scales.")
@click.option("--no-preprocess", is_flag=True, help="Skip onnxruntime's quant_pre_process.")
@click.option("--full-range", is_flag=True,
              help="int8-dynamic: 8-bit weights instead of 7 (only for CPUs with VNNI, or ARM: ORT's int8 "
                   "kernels on AVX2 / AVX-512 without VNNI can saturate with full-range weights).")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Graphs with targets: compare fp32 and quantized outputs and task metric.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the accuracy report as JSON.")
@click.option("--max-metric-delta", type=click.FloatRange(min=0), default=None,
              help="Fail (exit 1) if the metric gets worse by more than this fraction (0.02 = 2%).")
@click.option("--no-progress", is_flag=True, help="No calibration progress bar.")
def quantize_cmd(model, output, precision, calibration_file, calibration_method, calibration_batch, per_channel,
                 no_preprocess, full_range, eval_file, report_path, max_metric_delta, no_progress):
    """Write MODEL (an fp32 edgemp export) at a lower precision, then measure what it cost.

    The accuracy report compares real outputs of both files on --eval graphs (or, without
    --eval, the calibration graphs: in-sample, so only a sanity check).

    A text model directory (from `edgemp export HF_DIR`) takes int8-dynamic only, always with
    per-channel weights; --eval is then a text file (one per line, or JSON lines with "text"
    and optional "label"), and the report gives embedding cosine or label agreement/accuracy.
    """
    from edgemp.runtime.text import text_model_files

    if model.is_dir() and text_model_files(model) is not None:
        return _quantize_text(model, output, precision, eval_file, report_path, max_metric_delta)
    from edgemp.export.accuracy import compare_models, require_budget
    from edgemp.export.quantize import QuantizeConfig, quantize
    from edgemp.graphio import read_graphs

    if (report_path or max_metric_delta is not None) and eval_file is None:
        raise EdgempError("--report and --max-metric-delta need --eval GRAPHS.jsonl (graphs with targets)")
    cfg = QuantizeConfig(precision, calibration_method=calibration_method, calibration_batch_graphs=calibration_batch,
                         per_channel=per_channel, preprocess=not no_preprocess, progress=not no_progress,
                         reduce_range=not full_range)
    calibration = read_graphs(calibration_file) if calibration_file else None
    if calibration_file and precision != "int8-static":
        click.echo(f"note: --calibration is only used by int8-static; {precision} ignores it", err=True)
    result = quantize(model, output, cfg, calibration)
    q = result.spec.extra["quantization"]
    click.echo(f"wrote {output} ({precision}; {len(result.quantized_nodes)} dense layers "
               f"quantized; kept in float: {q['float_ops_kept'] or 'none'})")
    graphs = read_graphs(eval_file) if eval_file else calibration
    if graphs is None:
        click.echo("no accuracy measured: pass --eval GRAPHS.jsonl (graphs with targets)", err=True)
        return
    if eval_file is None:
        click.echo("accuracy on the calibration graphs (in-sample); pass --eval for held-out graphs", err=True)
    report = compare_models(model, output, graphs, max_metric_delta=max_metric_delta)
    click.echo(report.table())
    if report_path:
        _write_json(report_path, report.to_dict())
    require_budget(report)


def _quantize_text(model, output, precision, eval_file, report_path, max_metric_delta):
    from edgemp.export.hf_quantize import TextAccuracyBudgetError, TextQuantizeConfig, quantize_text_model
    from edgemp.runtime.text import read_texts

    if precision != "int8-dynamic":
        raise EdgempError(f"text models are quantized with --precision int8-dynamic, not {precision}")
    texts, labels = read_texts(eval_file) if eval_file else (None, None)
    if eval_file is None:
        click.echo("accuracy on 1,000 built-in held-back texts (never used for calibration); pass --eval TEXTS for "
                   "your own", err=True)
    try:
        result = quantize_text_model(model, output, TextQuantizeConfig(), texts, labels, max_metric_delta)
    except TextAccuracyBudgetError as e:  # the model was written; show why it fails the budget
        click.echo(e.report.table(), err=True)
        if report_path:
            _write_json(report_path, e.report.to_dict())
        raise
    click.echo(f"wrote {result.path} + tokenizer ({result.method})")
    click.echo(result.report.table())
    if report_path:
        _write_json(report_path, result.report.to_dict())


@click.command("optimize")
@_MODEL
@_OUT
@click.option("--level", type=click.Choice(["basic", "extended", "all"]), default="basic", show_default=True,
              help="basic stays portable across execution providers; extended/all are CPU-specific.")
def optimize_cmd(model, output, level):
    """Save onnxruntime's optimized graph of MODEL (offline optimization), keeping its metadata."""
    from edgemp.export.optimize import OptimizeConfig, optimize

    optimize(model, output, OptimizeConfig(level=level))
    click.echo(f"wrote {output} (onnxruntime {level} optimization)")


@click.command("engine")
@_MODEL
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Output .plan (a <output>.json spec sidecar is written beside it).")
@click.option("--fp16", is_flag=True, help="Allow fp16 kernels.")
@click.option("--int8", is_flag=True, help="Use the QDQ scales of an int8-static model.")
@click.option("--profile", "profiles", multiple=True, metavar="DIM=MIN:OPT:MAX",
              help="Range of num_nodes / num_edges / num_graphs (dense: num_graphs / max_nodes); repeatable.")
@click.option("--profile-from", type=click.Path(dir_okay=False, path_type=Path),
              help="Derive ranges from the graph sizes in this file (also used for verification).")
@click.option("--max-batch-graphs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Largest batch the engine must take (with --profile-from).")
@click.option("--opt-batch-graphs", type=click.IntRange(min=1), default=None,
              help="Batch size TensorRT tunes for (default: --max-batch-graphs).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Timing cache file, read before and written after the build.")
@click.option("--workspace-mib", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the engine vs ONNX Runtime CPU check.")
@click.option("--atol", type=float, default=None, help="Verification tolerance (default 1e-3 fp32, 5e-2 fp16/int8).")
@click.option("--ort-options", "ort_options", is_flag=True,
              help="Print ONNX Runtime TensorRT-EP provider options for these ranges as JSON and exit "
                   "(no TensorRT needed).")
@click.option("--engine-cache", type=click.Path(file_okay=False, path_type=Path),
              help="With --ort-options: trt_engine_cache_path (and timing cache) directory.")
def engine_cmd(model, output, fp16, int8, profiles, profile_from, max_batch_graphs, opt_batch_graphs, timing_cache,
               workspace_mib, no_verify, atol, ort_options, engine_cache):
    """Build a TensorRT engine for MODEL, or print the ORT TensorRT-EP options (--ort-options)."""
    from edgemp.export.onnx_file import load_edgemp_model
    from edgemp.export.tensorrt_profiles import derive_profiles, merge_profiles, ort_tensorrt_options, parse_profile

    _, spec = load_edgemp_model(model)
    graphs = None
    derived: tuple = ()
    if profile_from:
        from edgemp.graphio import read_graphs

        graphs = read_graphs(profile_from)
        derived = derive_profiles(graphs, spec.form, max_batch_graphs=max_batch_graphs,
                                  opt_batch_graphs=opt_batch_graphs, max_nodes=spec.max_nodes)
    ranges = merge_profiles(derived, [parse_profile(p) for p in profiles], spec.form)
    if ort_options:
        opts = ort_tensorrt_options(spec, ranges, fp16=fp16, int8=int8 or None, engine_cache_dir=engine_cache,
                                    timing_cache_dir=engine_cache, max_workspace_bytes=workspace_mib << 20)
        click.echo(json.dumps(opts, indent=2))
        return
    if output is None:
        raise EdgempError("give -o MODEL.plan (or --ort-options to print provider options)")
    from edgemp.export.tensorrt_build import EngineConfig, build_engine

    tol = atol if atol is not None else (5e-2 if (fp16 or int8) else 1e-3)
    cfg = EngineConfig(profiles=ranges, fp16=fp16, int8=int8, timing_cache=timing_cache,
                       workspace_bytes=workspace_mib << 20, verify=not no_verify, atol=tol, rtol=tol)
    result = build_engine(model, output, cfg, graphs)
    if result.report is not None:
        click.echo(result.report.table())
    click.echo(f"wrote {result.path} and {result.sidecar.name} ({cfg.precision}; "
               f"profiles {', '.join(str(p) for p in ranges)}; verification "
               f"{'passed' if result.report else 'skipped'})")


COMMANDS = [quantize_cmd, optimize_cmd, engine_cmd]
