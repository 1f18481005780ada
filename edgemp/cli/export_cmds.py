"""``edgemp export`` and ``edgemp inspect`` (torch and onnx imported inside the commands)."""
from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from edgemp.errors import EdgempError, ExportError, VerificationError
from edgemp.text_spec import TEXT_TASKS


@click.command("export")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output .onnx file (or use --triton-repo).")
@click.option("--target", type=click.Choice(["ort-cpu", "ort-gpu", "tensorrt"]), default=None,
              help="Where the model will run; picks the scatter op and the lint. Default: ort-cpu "
                   "(tensorrt with --precision, ort-gpu with --instance-kind gpu).")
@click.option("--form", type=click.Choice(["sparse", "dense"]), default=None,
              help="sparse: edge list (default). dense: graphs padded to --max-nodes, no scatter ops.")
@click.option("--max-nodes", type=int, default=0, help="Node slots per graph for the dense form.")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the verification report as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip numerical verification (not recommended).")
@click.option("--model", "factory", help="Your own model: package.module:factory (with --weights).")
@click.option("--weights", type=click.Path(path_type=Path), help="Weights for --model: .safetensors or a state dict.")
@click.option("--output-name", "output_names", multiple=True, help="Output name(s) for --model (default: prediction).")
@click.option("--triton-repo", type=click.Path(path_type=Path),
              help="Write a Triton model repository (ragged batching) here instead of one .onnx file.")
@click.option("--name", default="edgemp", show_default=True, help="--triton-repo: model folder name.")
@click.option("--max-batch-size", type=int, default=64, show_default=True,
              help="--triton-repo: most requests (one graph each) Triton batches into one run.")
@click.option("--max-queue-delay-us", type=int, default=0, show_default=True,
              help="--triton-repo: how long Triton's dynamic batcher may hold a batch open (0 = greedy).")
@click.option("--instances", type=int, default=1, show_default=True, help="--triton-repo: model instances per device.")
@click.option("--triton-backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime", show_default=True,
              help="--triton-repo: onnxruntime (NVIDIA's full containers, GPUs) or python (model.py runs "
                   "edgemp.runtime; what `edgemp triton serve` runs here).")
@click.option("--max-queue-size", type=int, default=1024, show_default=True,
              help="--triton-repo: requests Triton queues before rejecting new ones (0 = unbounded).")
@click.option("--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="--triton-repo: KIND_CPU or KIND_GPU instances (default: cpu; gpu with --precision).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="--triton-repo: enable ONNX Runtime's TensorRT execution provider at this precision.")
@click.option("--trt-max-nodes", type=int, default=128, show_default=True,
              help="--triton-repo with --precision: largest graph (nodes) the TensorRT profile covers.")
@click.option("--trt-max-edges", type=int, default=512, show_default=True,
              help="--triton-repo with --precision: largest graph (directed edges) the TensorRT profile covers.")
@click.option("--task", type=click.Choice(TEXT_TASKS), default=None,
              help="Hugging Face models: what to export (default: from config.json's architectures).")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Hugging Face models: tokens per text (default: the checkpoint's).")
@click.option("--pooling", type=click.Choice(["mean", "cls", "max"]), default=None,
              help="Hugging Face embedding models: token pooling (default: sentence-transformers config, else mean).")
@click.option("-v", "--verbose", is_flag=True,
              help="On a failed export, print the exporter's full trace after the one-line reason.")
def export_cmd(verbose: bool, **options) -> None:
    """Export CHECKPOINT (a directory from `edgemp train`, or a chemprop v2 best.pt / .ckpt) to verified ONNX.

    A Hugging Face model directory (config.json with a model_type) is exported with optimum
    instead: -o is then a directory that receives model.onnx and the tokenizer files.
    """
    try:
        _export(**options)
    except ExportError as e:
        # The one-line reason is printed by the CLI group; the exporter's trace only when asked for.
        details = getattr(e, "details", "")
        if verbose and details:
            click.echo(details.rstrip(), err=True)
        raise


def _export(checkpoint, output, target, form, max_nodes, opset, report_path, no_verify, factory, weights, output_names,
            task, max_length, pooling, triton_repo, name, max_batch_size, max_queue_delay_us, instances, instance_kind,
            precision, trt_max_nodes, trt_max_edges, triton_backend, max_queue_size):
    if (output is None) == (triton_repo is None):
        raise EdgempError("give either -o/--output (a .onnx file) or --triton-repo DIR")
    from edgemp.export.hf_export import is_hf_model_dir

    if checkpoint is not None and is_hf_model_dir(checkpoint):
        explicit_opset = click.get_current_context().get_parameter_source("opset") != ParameterSource.DEFAULT
        return _export_text(checkpoint, output, task, max_length, pooling, opset if explicit_opset else None,
                            report_path, no_verify)
    from edgemp.export.config import ExportConfig
    from edgemp.export.onnx_export import export_model

    if (checkpoint is None) == (factory is None):
        raise EdgempError("give either a CHECKPOINT directory or --model package.module:factory")
    if triton_repo is None and (precision or instance_kind):
        raise EdgempError("--precision and --instance-kind configure a Triton repository; add --triton-repo DIR")
    if triton_repo is not None and (form == "dense" or max_nodes):
        raise EdgempError("a Triton repository holds the ragged sparse form; drop --form dense / --max-nodes")
    instance_kind = instance_kind or ("gpu" if precision else "cpu")
    target = target or ("tensorrt" if precision else "ort-gpu" if instance_kind == "gpu" else "ort-cpu")
    form = form or ("dense" if max_nodes else "sparse")
    cfg = ExportConfig(target=target, form=form, max_nodes=max_nodes, opset=opset, verify=not no_verify)
    if factory is not None:
        from edgemp.export.source import load_user_model

        source = load_user_model(factory, weights, tuple(output_names) or ("prediction",))
    else:
        source = checkpoint
    if triton_repo is not None:
        from edgemp.export.triton_config import TensorRTSettings, TritonRepoConfig

        trt = None
        if precision:
            trt = TensorRTSettings(precision=precision, max_nodes_per_graph=trt_max_nodes, max_edges_per_graph=trt_max_edges)
        repo_cfg = TritonRepoConfig(name=name, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                                    instances=instances, instance_kind=instance_kind, tensorrt=trt,
                                    backend=triton_backend, max_queue_size=max_queue_size)
        return _export_triton(source, triton_repo, repo_cfg, cfg, report_path)
    result = _reported(lambda: export_model(source, output, cfg), report_path)
    c = result.checks
    click.echo(
        f"wrote {result.path} (target={target}, form={form}, K unrolled, "
        f"{c['parameters_in_file']} weights in file for {c['parameters_in_model']} parameters, verification "
        f"{'passed' if result.report else 'skipped'})"
    )


def _export_text(model_dir, output, task, max_length, pooling, opset, report_path, no_verify):
    from edgemp.export.hf_export import TextExportConfig, export_text_model

    cfg = TextExportConfig(task=task, max_length=max_length, pooling=pooling, opset=opset, verify=not no_verify)
    result = _reported(lambda: export_text_model(model_dir, output, cfg), report_path)
    click.echo(result.summary())


def _export_triton(source, repo: Path, repo_cfg, cfg, report_path) -> None:
    from edgemp.export.triton_repo import export_triton_repo

    result = _reported(lambda: export_triton_repo(source, repo, repo_cfg, cfg), report_path)
    schema = "checked against Triton's ModelConfig" if result.checks["config_schema_checked"] else "NOT schema-checked"
    click.echo(
        f"wrote Triton model {result.model_dir} (config.pbtxt {schema}; max_batch_size={repo_cfg.max_batch_size}, "
        f"ragged verification {'passed' if result.report else 'skipped'})"
    )
    if repo_cfg.backend == "python":
        click.echo(f"serve it: edgemp triton serve {repo}   or   edgemp serve {repo}")
    else:
        click.echo(f"serve it: tritonserver --model-repository={repo.resolve()}   or   edgemp serve {repo}")


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_cmd(model, as_json):
    """Show an ONNX file's edgemp metadata, inputs/outputs, ops, size and target lints."""
    from edgemp.export.inspect_model import format_inspection, inspect_onnx

    info = inspect_onnx(model)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))


def _reported(run, report_path: Path | None):
    """Run an export; print its verification table and write ``--report`` JSON, also on failure."""
    try:
        result = run()
    except VerificationError as e:
        if report_path:  # a failed verification still leaves its evidence
            Path(report_path).write_text(json.dumps(e.report.to_dict(), indent=2) + "\n")
        click.echo(e.report.table(), err=True)
        raise
    if report_path:
        Path(report_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if result.report:
        click.echo(result.report.table())
    return result


COMMANDS = [export_cmd, inspect_cmd]
