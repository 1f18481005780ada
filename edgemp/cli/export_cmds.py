"""``edgemp export graph|model|triton|hf`` and ``edgemp inspect`` (torch and onnx imported inside the commands).

One subcommand per exporter, each building one typed config (``ExportConfig``,
``TritonRepoConfig``, ``TextExportConfig``) and calling one library function. The old flat
spelling (``edgemp export CKPT -o m.onnx``, ``--model``, ``--triton-repo``, a Hugging Face
directory) is routed to the subcommand it meant by :func:`route_flat_export`.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import click

from edgemp.cli.routing import RoutedGroup, first_positional, has_option, option_value, rename_option
from edgemp.errors import ExportError, VerificationError
from edgemp.text_spec import TEXT_TASKS


def route_flat_export(args: list[str]) -> tuple[str, list[str]]:
    """The subcommand an old ``edgemp export ARGS`` meant, and ARGS spelled for it.

    The flat command's own mistakes keep their messages (scripts and docs quote them).
    """
    if has_option(args, "--triton-repo"):
        if has_option(args, "--max-nodes") or option_value(args, "--form") == "dense":
            raise ExportError("a Triton repository holds the ragged sparse form; drop --form dense / --max-nodes")
        return "triton", rename_option(rename_option(args, "--triton-repo", "--repo"), "--triton-backend", "--backend")
    if has_option(args, "--precision", "--instance-kind"):
        raise ExportError("--precision and --instance-kind configure a Triton repository; add --triton-repo DIR "
                          "(or use `edgemp export triton`)")
    if args and not has_option(args, "-o", "--output", "-h", "--help"):
        raise ExportError("give either -o/--output (a .onnx file) or --triton-repo DIR")
    if has_option(args, "--model"):
        at = next(i for i, a in enumerate(args) if a == "--model" or a.startswith("--model="))
        factory = args[at][len("--model="):] if "=" in args[at] else (args[at + 1] if at + 1 < len(args) else "")
        return "model", [factory, *args[:at], *args[at + (1 if "=" in args[at] else 2):]]
    source = first_positional(args, frozenset({"--no-verify", "-v", "--verbose"}))
    if source is not None:
        from edgemp.export.hf_export import is_hf_model_dir

        if is_hf_model_dir(source):
            return "hf", args
    return "graph", args


@click.group("export", cls=RoutedGroup, route=route_flat_export)
def export_group() -> None:
    """Export a model to verified ONNX: `graph` (edgemp/chemprop checkpoints), `model` (your nn.Module),
    `triton` (a Triton model repository) or `hf` (a Hugging Face text model).

    \b
    edgemp export graph ckpt/ -o model.onnx
    edgemp export model my_pkg.models:build --weights w.safetensors -o model.onnx
    edgemp export triton ckpt/ --repo triton-models/
    edgemp export hf minilm/ -o minilm-onnx/
    The old flat spelling (edgemp export ckpt/ -o model.onnx) still works.
    """


def _verification_options(default_opset: int | None) -> Callable:
    """Options every exporter shares: opset, the verification switch and its report, -v."""
    opset_help = "ONNX opset." if default_opset else "ONNX opset (default: optimum's for the architecture)."

    def add(f: Callable) -> Callable:
        for option in reversed((
            click.option("--opset", type=int, default=default_opset, show_default=default_opset is not None,
                         help=opset_help),
            click.option("--report", "report_path", type=click.Path(path_type=Path),
                         help="Write the verification report as JSON."),
            click.option("--no-verify", is_flag=True, help="Skip numerical verification."),
            click.option("-v", "--verbose", is_flag=True, help="On failure, print the exporter's trace."),
        )):
            f = option(f)
        return f

    return add


def _graph_form_options(f: Callable) -> Callable:
    for option in reversed((
        click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .onnx file."),
        click.option("--target", type=click.Choice(["ort-cpu", "ort-gpu", "tensorrt"]), default="ort-cpu",
                     show_default=True, help="Where the model will run; picks the scatter op and the lint."),
        click.option("--form", type=click.Choice(["sparse", "dense"]), default=None,
                     help="sparse: edge list (default). dense: padded to --max-nodes, no scatter ops."),
        click.option("--max-nodes", type=int, default=0, help="Node slots per graph for the dense form."),
    )):
        f = option(f)
    return f


def _user_model_options(f: Callable) -> Callable:
    for option in reversed((
        click.option("--weights", type=click.Path(path_type=Path), help="Weights: .safetensors or a state dict."),
        click.option("--output-name", "output_names", multiple=True,
                     help="Output name(s), in the order forward returns them (default: prediction)."),
    )):
        f = option(f)
    return f


@export_group.command("graph", short_help="edgemp or chemprop checkpoint -> verified .onnx")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@_graph_form_options
@_verification_options(18)
def export_graph_cmd(checkpoint: Path, output: Path, target: str, form: str | None, max_nodes: int, opset: int,
                     report_path: Path | None, no_verify: bool, verbose: bool) -> None:
    """Export CHECKPOINT (a directory from `edgemp train`, or a chemprop v2 best.pt / .ckpt) to verified ONNX."""
    with _exporter_trace(verbose):
        _export_onnx(checkpoint, output, _export_config(target, form, max_nodes, opset, no_verify), report_path)


@export_group.command("model", short_help="your nn.Module (package.module:factory) -> verified .onnx")
@click.argument("factory")
@_user_model_options
@_graph_form_options
@_verification_options(18)
def export_model_cmd(factory: str, weights: Path | None, output_names: tuple[str, ...], output: Path, target: str,
                     form: str | None, max_nodes: int, opset: int, report_path: Path | None, no_verify: bool,
                     verbose: bool) -> None:
    """Export your own nn.Module, built by FACTORY (package.module:factory), to verified ONNX."""
    with _exporter_trace(verbose):
        cfg = _export_config(target, form, max_nodes, opset, no_verify)
        _export_onnx(_user_source(factory, weights, output_names), output, cfg, report_path)


@export_group.command("triton", short_help="checkpoint or nn.Module -> Triton model repository")
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--model", "factory", help="Instead of CHECKPOINT: your model, package.module:factory.")
@_user_model_options
@click.option("-o", "--repo", type=click.Path(path_type=Path), required=True, help="Triton model repository to write.")
@click.option("--name", default="edgemp", show_default=True, help="Model folder name.")
@click.option("--backend", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime", show_default=True,
              help="python: model.py runs edgemp.runtime (what `edgemp triton serve` runs).")
@click.option("--max-batch-size", type=int, default=64, show_default=True, help="Requests per run.")
@click.option("--max-queue-delay-us", type=int, default=0, show_default=True, help="0 = greedy.")
@click.option("--max-queue-size", type=int, default=1024, show_default=True, help="Queued requests (0 = unbounded).")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances per device.")
@click.option("--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="KIND_CPU or KIND_GPU (default: cpu; gpu with --precision).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="Run with ONNX Runtime's TensorRT provider at this precision.")
@click.option("--trt-max-nodes", type=int, default=128, show_default=True, help="--precision: largest graph, nodes.")
@click.option("--trt-max-edges", type=int, default=512, show_default=True, help="--precision: largest graph, edges.")
@click.option("--target", type=click.Choice(["ort-cpu", "ort-gpu", "tensorrt"]), default=None,
              help="Scatter op and lint (default: tensorrt with --precision, ort-gpu on gpu, else ort-cpu).")
@_verification_options(18)
def export_triton_cmd(checkpoint: Path | None, factory: str | None, weights: Path | None,
                      output_names: tuple[str, ...], repo: Path, name: str, backend: str, max_batch_size: int,
                      max_queue_delay_us: int, max_queue_size: int, instances: int, instance_kind: str | None,
                      precision: str | None, trt_max_nodes: int, trt_max_edges: int, target: str | None, opset: int,
                      report_path: Path | None, no_verify: bool, verbose: bool) -> None:
    """Write a Triton model repository (ragged batching, verified) for CHECKPOINT or --model."""
    from edgemp.export.triton_config import TensorRTSettings, TritonRepoConfig

    if (checkpoint is None) == (factory is None):
        raise ExportError("give either a CHECKPOINT directory or --model package.module:factory")
    instance_kind = instance_kind or ("gpu" if precision else "cpu")
    target = target or ("tensorrt" if precision else "ort-gpu" if instance_kind == "gpu" else "ort-cpu")
    cfg = _export_config(target, "sparse", 0, opset, no_verify)
    trt = TensorRTSettings(precision=precision, max_nodes_per_graph=trt_max_nodes,
                           max_edges_per_graph=trt_max_edges) if precision else None
    repo_cfg = TritonRepoConfig(name=name, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                                instances=instances, instance_kind=instance_kind, tensorrt=trt, backend=backend,
                                max_queue_size=max_queue_size)
    with _exporter_trace(verbose):
        source = checkpoint if factory is None else _user_source(factory, weights, output_names)
        result = _export_triton(source, repo, repo_cfg, cfg, report_path)
    schema = "checked against Triton's ModelConfig" if result.checks["config_schema_checked"] else "NOT schema-checked"
    click.echo(
        f"wrote Triton model {result.model_dir} (config.pbtxt {schema}; max_batch_size={repo_cfg.max_batch_size}, "
        f"ragged verification {'passed' if result.report else 'skipped'})"
    )
    if repo_cfg.backend == "python":
        click.echo(f"serve it: edgemp triton serve {repo}   or   edgemp serve {repo}")
    else:
        click.echo(f"serve it: tritonserver --model-repository={repo.resolve()}   or   edgemp serve {repo}")


@export_group.command("hf", short_help="Hugging Face text model -> verified model.onnx + tokenizer")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output directory: receives model.onnx and the tokenizer files.")
@click.option("--task", type=click.Choice(TEXT_TASKS), default=None,
              help="What to export (default: from config.json's architectures).")
@click.option("--max-length", type=click.IntRange(min=2), default=None, help="Tokens per text (default: the model's).")
@click.option("--pooling", type=click.Choice(["mean", "cls", "max"]), default=None,
              help="Embedding models: token pooling (default: sentence-transformers config, else mean).")
@_verification_options(None)
def export_hf_cmd(model_dir: Path, output: Path, task: str | None, max_length: int | None, pooling: str | None,
                  opset: int | None, report_path: Path | None, no_verify: bool, verbose: bool) -> None:
    """Export a Hugging Face text model directory (config.json with a model_type) with optimum, verified."""
    from edgemp.export.hf_export import TextExportConfig, export_text_model

    cfg = TextExportConfig(task=task, max_length=max_length, pooling=pooling, opset=opset, verify=not no_verify)
    with _exporter_trace(verbose):
        click.echo(_reported(lambda: export_text_model(model_dir, output, cfg), report_path).summary())


def _export_config(target: str, form: str | None, max_nodes: int, opset: int, no_verify: bool):
    from edgemp.export.config import ExportConfig

    return ExportConfig(target=target, form=form or ("dense" if max_nodes else "sparse"), max_nodes=max_nodes,
                        opset=opset, verify=not no_verify)


def _user_source(factory: str, weights: Path | None, output_names: tuple[str, ...]):
    from edgemp.export.source import load_user_model

    return load_user_model(factory, weights, output_names or ("prediction",))


def _export_onnx(source, output: Path, cfg, report_path: Path | None) -> None:
    from edgemp.export.onnx_export import export_model

    result = _reported(lambda: export_model(source, output, cfg), report_path)
    c = result.checks
    click.echo(
        f"wrote {result.path} (target={cfg.target}, form={cfg.form}, K unrolled, "
        f"{c['parameters_in_file']} weights in file for {c['parameters_in_model']} parameters, verification "
        f"{'passed' if result.report else 'skipped'})"
    )


def _export_triton(source, repo: Path, repo_cfg, cfg, report_path: Path | None):
    from edgemp.export.triton_repo import export_triton_repo

    return _reported(lambda: export_triton_repo(source, repo, repo_cfg, cfg), report_path)


@contextlib.contextmanager
def _exporter_trace(verbose: bool) -> Iterator[None]:
    """A failed export's one-line reason is printed by the CLI group; the exporter's trace only with -v."""
    try:
        yield
    except ExportError as e:
        details = getattr(e, "details", "")
        if verbose and details:
            click.echo(details.rstrip(), err=True)
        raise


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


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_cmd(model, as_json):
    """Show an ONNX file's edgemp metadata, inputs/outputs, ops, size and target lints."""
    from edgemp.export.inspect_model import format_inspection, inspect_onnx

    info = inspect_onnx(model)
    click.echo(json.dumps(info, indent=2) if as_json else format_inspection(info))


COMMANDS = [export_group, inspect_cmd]
