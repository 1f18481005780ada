"""``edgemp bench graphs|server|text``: one subcommand per benchmark, one typed config each.

``graphs`` measures exported graph models in-process (backends side by side, vs PyTorch),
``server`` a live KServe V2 server under load, ``text`` exported text models. The old flat
spelling (``edgemp bench MODEL ...``, ``edgemp bench --url ...``, ``--texts`` /
``--synthetic-lengths``) is routed to the subcommand it meant by :func:`route_flat_bench`.
Every bad value is an EdgempError, so the user sees one line and exit code 1 (click's own
usage errors are folded into the same shape). The library does the measuring and never prints.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from edgemp.cli.bench_options import (emit, floats, ints, nonneg, output_options, run_with_progress, seconds,
                                      statistics, statistics_options, workload_options, workload_spec)
from edgemp.cli.routing import RoutedGroup, has_option
from edgemp.errors import EdgempError


class _BenchCommand(click.Command):
    """Fold click's usage errors into edgemp's one-line error (exit 1)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise EdgempError(e.format_message().replace("\n", " ")) from e


def route_flat_bench(args: list[str]) -> tuple[str, list[str]]:
    """The subcommand an old ``edgemp bench ARGS`` meant: ``--url`` a server, ``--texts`` text models."""
    if has_option(args, "--url"):
        return "server", args
    if has_option(args, "--texts", "--synthetic-lengths"):
        return "text", args
    return "graphs", args


@click.group("bench", cls=RoutedGroup, route=route_flat_bench)
def bench_group() -> None:
    """Benchmark exported models in-process (`graphs`, `text`) or a live server (`server`).

    \b
    edgemp bench graphs model.onnx --checkpoint ckpt/ --batch 1,64
    edgemp bench server --url http://127.0.0.1:8000 --model gin --concurrency 1,8,32
    edgemp bench server --url http://127.0.0.1:8000 --model gin --request-rate 100,500
    edgemp bench text minilm/ minilm-int8/ --synthetic-lengths realistic --checkpoint HF_DIR
    The old flat spelling (edgemp bench model.onnx ..., edgemp bench --url ...) still works.
    """


@bench_group.command("graphs", cls=_BenchCommand, short_help="graph models in-process, backends side by side")
@click.argument("models", nargs=-1)
@click.option("--backend", default=None,
              help="torch-eager,torch-compile,ort-cpu,ort-cuda,ort-tensorrt,tensorrt (default: "
                   "torch-eager,ort-cpu).")
@click.option("--checkpoint", default=None, help="Checkpoint for the PyTorch rows.")
@workload_options
@click.option("--batch", default="1", show_default=True, help="Graphs per inference, e.g. 1,64.")
@click.option("--threads", default="1", show_default=True, help="Intra-op threads, e.g. 1,2.")
@click.option("--scenario", default="single-stream", show_default=True, help="single-stream or offline.")
@click.option("--warmup", default="20", show_default=True, help="Warm-up inferences per setting.")
@click.option("--duration", default=None, help="Seconds per setting (or --iterations).")
@click.option("--iterations", default=None, help="Timed inferences per setting (default 200).")
@click.option("--rounds", default="10", show_default=True, help="Interleaving rounds.")
@statistics_options
@output_options
def bench_graphs_cmd(models, backend, checkpoint, graphs_file, smiles_file, smiles_column, featurizer, synthetic,
                     batch, threads, scenario, warmup, duration, iterations, rounds, percentiles, windows,
                     stability_threshold, require_stable, json_path, csv_path, raw, plot_path, quiet, summary) -> None:
    """Benchmark exported graph MODELS in-process: backends side by side, vs PyTorch eager on --checkpoint."""
    from edgemp.bench.backends import parse_backends
    from edgemp.bench.inprocess import InProcessConfig, run_inprocess

    stats = statistics(percentiles, windows, stability_threshold, raw)
    workload = workload_spec(graphs_file, smiles_file, smiles_column, featurizer, synthetic, models)
    paths = tuple(Path(m) for m in models)
    for p in paths:
        if not p.is_file():
            raise EdgempError(f"model file {p} does not exist")
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and not ckpt.is_dir():
        raise EdgempError(f"checkpoint directory {ckpt} does not exist")
    if not paths and not ckpt:
        raise EdgempError("give MODEL files to benchmark in-process, or --url for a server")
    names = parse_backends(backend) if backend else (("torch-eager",) if ckpt else ()) + (("ort-cpu",) if paths else ())
    dur = floats(duration, "--duration")[0] if duration else None
    cfg = InProcessConfig(
        models=paths, backends=names, checkpoint=ckpt, workload=workload, batches=ints(batch, "--batch"),
        threads=ints(threads, "--threads"), scenario=scenario, warmup=nonneg(warmup, "--warmup"), duration_s=dur,
        iterations=ints(iterations, "--iterations")[0] if iterations else (None if dur else 200),
        rounds=ints(rounds, "--rounds")[0], **stats,
    )
    report = run_with_progress(run_inprocess, cfg, quiet)
    emit(report, json_path, csv_path, plot_path, raw, summary, require_stable, cfg.stability_threshold)


@bench_group.command("server", cls=_BenchCommand, short_help="a live KServe V2 server under load")
@click.option("--url", required=True, help="KServe V2 endpoint, http://HOST:PORT.")
@click.option("--model", "model_name", default=None, help="Model name on the server.")
@click.option("--protocol", default="binary", show_default=True, help="binary, json or grpc.")
@click.option("--grpc-url", default=None, help="grpc: HOST:PORT (default: --url's host:8001).")
@click.option("--concurrency", default=None, help="Closed loop: concurrencies, e.g. 1,8,32,64.")
@click.option("--request-rate", default=None, help="Open loop: requests per second, e.g. 100,500.")
@click.option("--distribution", default="poisson", show_default=True, help="poisson or constant.")
@click.option("--p99-bound-ms", default=None, help="Find the top rate with p99 under this.")
@click.option("--duration", default=None, help="Seconds per load (default 5).")
@click.option("--warmup-time", default="1", show_default=True, help="Unrecorded seconds first.")
@click.option("--timeout", "timeout_s", default="10", show_default=True, help="Per-request, seconds.")
@click.option("--batch", default="1", show_default=True, help="Graphs per request.")
@workload_options
@statistics_options
@output_options
def bench_server_cmd(url, model_name, protocol, grpc_url, concurrency, request_rate, distribution, p99_bound_ms,
                     duration, warmup_time, timeout_s, batch, graphs_file, smiles_file, smiles_column, featurizer,
                     synthetic, percentiles, windows, stability_threshold, require_stable, json_path, csv_path, raw,
                     plot_path, quiet, summary) -> None:
    """Benchmark a KServe V2 server (HTTP or gRPC) under closed- or open-loop load."""
    from edgemp.bench.server import ServerBenchConfig, run_server_bench

    stats = statistics(percentiles, windows, stability_threshold, raw)
    workload = workload_spec(graphs_file, smiles_file, smiles_column, featurizer, synthetic, ())
    if not model_name:
        raise EdgempError("--url needs --model NAME (the model's name on the server)")
    cfg = ServerBenchConfig(
        url=url, model=model_name, protocol=protocol, grpc_url=grpc_url,
        concurrency=ints(concurrency, "--concurrency") if concurrency else (),
        request_rates=floats(request_rate, "--request-rate") if request_rate else (),
        distribution=distribution, duration_s=floats(duration, "--duration")[0] if duration else 5.0,
        batch=ints(batch, "--batch")[0], workload=workload, timeout_s=floats(timeout_s, "--timeout")[0],
        warmup_s=seconds(warmup_time, "--warmup-time"),
        p99_bound_ms=floats(p99_bound_ms, "--p99-bound-ms")[0] if p99_bound_ms else None, **stats,
    )
    report = run_with_progress(run_server_bench, cfg, quiet)
    emit(report, json_path, csv_path, plot_path, raw, summary, require_stable, cfg.stability_threshold)


@bench_group.command("text", cls=_BenchCommand, short_help="text models in-process, vs PyTorch eager")
@click.argument("models", nargs=-1)
@click.option("--texts", "texts_file", default=None, help="Texts, one per line (or JSON lines with \"text\").")
@click.option("--synthetic-lengths", default=None, help="Synthetic texts of N or A-B tokens, or 'realistic'.")
@click.option("--checkpoint", default=None, help="Hugging Face directory for the PyTorch eager rows.")
@click.option("--batch", default="1", show_default=True, help="Texts per inference, e.g. 1,32.")
@click.option("--threads", default="1", show_default=True, help="Intra-op threads for torch and ORT.")
@click.option("--warmup", default="20", show_default=True, help="Warm-up inferences per configuration.")
@click.option("--iterations", default="100", show_default=True, help="Timed inferences per configuration.")
@click.option("--json", "json_path", default=None, help="Write every figure (and environment) as JSON.")
def bench_text_cmd(models, texts_file, synthetic_lengths, checkpoint, batch, threads, warmup, iterations,
                   json_path) -> None:
    """Benchmark exported text model directories (MODELS) in-process, interleaved."""
    import json

    from edgemp.bench.text import TextBenchConfig, run_text_bench

    cfg = TextBenchConfig(
        models=tuple(Path(m) for m in models), texts_file=Path(texts_file) if texts_file else None,
        lengths=synthetic_lengths, batches=ints(batch, "--batch"), threads=ints(threads, "--threads")[0],
        warmup=nonneg(warmup, "--warmup"), iterations=ints(iterations, "--iterations")[0],
        hf_checkpoint=Path(checkpoint) if checkpoint else None,
    )
    report = run_text_bench(cfg, sys.argv)
    click.echo(report.markdown())
    click.echo(f"command: {report.environment['command']}")
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path}")


COMMANDS = [bench_group]
