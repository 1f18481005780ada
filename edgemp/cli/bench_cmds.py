"""``edgemp bench``: in-process backends side by side, or a live KServe V2 server under load.

Arguments are parsed here into the library's typed configs; every bad value is an
EdgempError, so the user sees one line and exit code 1 (click's own usage errors are
folded into the same shape). The library does the measuring and never prints.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from edgemp.errors import EdgempError


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise EdgempError(f"{flag} takes integers separated by commas, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise EdgempError(f"{flag} values must be >= 1, got {text!r}")
    return values


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise EdgempError(f"{flag} takes numbers separated by commas, got {text!r}") from e
    if not values or any(v <= 0 for v in values):
        raise EdgempError(f"{flag} values must be > 0, got {text!r}")
    return values


class _BenchCommand(click.Command):
    """Fold click's usage errors into edgemp's one-line error (exit 1)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise EdgempError(e.format_message().replace("\n", " ")) from e


def _progress(quiet: bool):
    """A tqdm bar on a terminal (tqdm is optional); None otherwise."""
    if quiet or not sys.stderr.isatty():
        return None, None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    bar = tqdm(total=0, unit="block", leave=False, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


@click.command("bench", cls=_BenchCommand)
@click.argument("models", nargs=-1)
@click.option("--backend", "backend", default=None,
              help="In-process backends, comma separated: torch-eager,torch-compile,ort-cpu,ort-cuda,ort-tensorrt,"
                   "tensorrt (default: torch-eager,ort-cpu).")
@click.option("--checkpoint", default=None, help="Checkpoint directory for the PyTorch baseline rows.")
@click.option("--graphs", "graphs_file", default=None, help="Graph file (.jsonl/.npz): sizes bucketed by node count.")
@click.option("--smiles", "smiles_file", default=None,
              help="CSV of molecules (--smiles-column) featurized into the graph workload with the model's recorded "
                   "featurizer (or --featurizer); invalid rows are skipped. Needs rdkit.")
@click.option("--smiles-column", default="smiles", show_default=True, help="--smiles: the column holding SMILES.")
@click.option("--featurizer", default=None,
              help="--smiles: featurizer NAME/VERSION (default: the first MODEL's; needed with --url).")
@click.option("--synthetic", multiple=True,
              help="Synthetic graphs nodes=N[-M],edges=E[-F],graphs=G (repeat for several size buckets; "
                   "default nodes=25,edges=54,graphs=1).")
@click.option("--batch", default="1", show_default=True, help="Graphs per inference (in-process) or per request.")
@click.option("--threads", default="1", show_default=True, help="Intra-op threads for torch and ORT, e.g. 1,2.")
@click.option("--scenario", default="single-stream", show_default=True, help="single-stream or offline.")
@click.option("--warmup", default="20", show_default=True, help="Warm-up inferences per configuration.")
@click.option("--duration", default=None, help="Seconds per configuration (in-process) or per load (server).")
@click.option("--iterations", default=None, help="Timed inferences per configuration (default 200 in-process).")
@click.option("--rounds", default="10", show_default=True, help="Interleaving rounds (in-process).")
@click.option("--percentiles", default="50,90,95,99,99.9", show_default=True)
@click.option("--windows", default="3", show_default=True, help="Stability windows per result.")
@click.option("--stability-threshold", default="0.10", show_default=True,
              help="Max window-to-window p50 spread (0.10 = 10%).")
@click.option("--require-stable", is_flag=True, help="Exit 1 if any result is unstable.")
@click.option("--url", default=None, help="Server mode: a KServe V2 endpoint, e.g. http://127.0.0.1:8000.")
@click.option("--model", "model_name", default=None, help="Server mode: model name on the server.")
@click.option("--protocol", default="binary", show_default=True,
              help="binary (V2 HTTP tensor extension), json, or grpc (KServe V2 gRPC; see --grpc-url).")
@click.option("--grpc-url", default=None, help="Server mode, --protocol grpc: HOST:PORT (default: --url's host, 8001).")
@click.option("--concurrency", default=None, help="Closed-loop concurrencies, e.g. 1,8,32,64.")
@click.option("--request-rate", default=None, help="Open-loop request rates per second, e.g. 100,500.")
@click.option("--distribution", default="poisson", show_default=True, help="poisson or constant arrivals.")
@click.option("--p99-bound-ms", default=None, help="Search the highest rate whose p99 stays under this bound.")
@click.option("--warmup-time", default="1", show_default=True, help="Server mode: seconds of unrecorded load first.")
@click.option("--timeout", "timeout_s", default="10", show_default=True, help="Per-request timeout, seconds.")
@click.option("--json", "json_path", default=None, help="Write every figure (and environment) as JSON.")
@click.option("--csv", "csv_path", default=None, help="Write one CSV row per result.")
@click.option("--raw", is_flag=True, help="Keep per-request latencies (JSON raw_us, CSV <stem>.raw.csv).")
@click.option("--plot", "plot_path", default=None, help="Latency CDF (+ throughput vs latency) PNG; needs matplotlib.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--summary", is_flag=True, help="Terminal table: aggregate rows only (files keep per-size rows).")
@click.option("--texts", "texts_file", default=None,
              help="Text models: texts, one per line (or JSON lines with \"text\"). MODELS are text model dirs.")
@click.option("--synthetic-lengths", default=None,
              help="Text models: synthetic texts of N tokens, A-B tokens, or 'realistic' (queries/sentences/passages).")
def bench(models, backend, checkpoint, graphs_file, smiles_file, smiles_column, featurizer, synthetic, batch, threads, scenario, warmup, duration,
          iterations, rounds, percentiles, windows, stability_threshold, require_stable, url, model_name, protocol,
          grpc_url, concurrency, request_rate, distribution, p99_bound_ms, warmup_time, timeout_s, json_path, csv_path, raw, plot_path,
          quiet, summary, texts_file, synthetic_lengths) -> None:
    """Benchmark MODEL files in-process (backends side by side, vs PyTorch eager), or a server with --url.

    \b
    edgemp bench model.onnx --checkpoint ckpt/ --batch 1,64
    edgemp bench --url http://127.0.0.1:8000 --model gin --concurrency 1,8,32
    edgemp bench --url http://127.0.0.1:8000 --model gin --request-rate 100,500 --distribution poisson
    edgemp bench minilm/ minilm-int8/ --synthetic-lengths realistic --batch 1,32 --checkpoint HF_DIR
    """
    if texts_file or synthetic_lengths:  # text models: edgemp.bench.text (interleaved, vs torch eager)
        return _text(models, checkpoint, texts_file, synthetic_lengths, batch, threads, warmup, iterations, json_path)
    from edgemp.bench.stats import parse_percentiles
    from edgemp.bench.workload import SyntheticSpec, WorkloadSpec

    common = dict(
        percentiles=parse_percentiles(percentiles),
        windows=_ints(windows, "--windows")[0],
        stability_threshold=_floats(stability_threshold, "--stability-threshold")[0],
        raw=raw,
    )
    if sum(bool(v) for v in (graphs_file, smiles_file, synthetic)) > 1:
        raise EdgempError("give one of --graphs, --smiles or --synthetic")
    if smiles_file:
        graphs_file = _featurize_smiles(smiles_file, smiles_column, featurizer, models)
    if graphs_file and not Path(graphs_file).exists():
        raise EdgempError(f"graph file {graphs_file} does not exist")
    workload = WorkloadSpec(Path(graphs_file) if graphs_file else None,
                            tuple(SyntheticSpec.parse(s) for s in synthetic))
    dur = _floats(duration, "--duration")[0] if duration else None
    if url is not None:
        report = _server(models, backend, checkpoint, url, model_name, protocol, grpc_url, concurrency, request_rate,
                         distribution, p99_bound_ms, warmup_time, timeout_s, batch, dur, iterations, workload, common,
                         quiet)
    else:
        for flag, value in (("--model", model_name), ("--concurrency", concurrency), ("--request-rate", request_rate),
                            ("--p99-bound-ms", p99_bound_ms), ("--grpc-url", grpc_url)):
            if value is not None:
                raise EdgempError(f"{flag} is a server-mode option: add --url http://HOST:PORT")
        report = _inprocess(models, backend, checkpoint, batch, threads, scenario, warmup, dur, iterations, rounds,
                            workload, common, quiet)
    _emit(report, json_path, csv_path, plot_path, raw, summary)
    if require_stable and report.unstable:
        raise EdgempError(
            f"{len(report.unstable)} result(s) unstable (window p50 spread above "
            f"{common['stability_threshold'] * 100:.0f}%): --require-stable"
        )


def _featurize_smiles(csv_file: str, column: str, featurizer_id: str | None, models) -> str:
    """The molecules of ``csv_file`` as a temporary graph file, featurized as the model was trained."""
    import atexit
    import tempfile

    from edgemp.chem import featurize_smiles, get_featurizer
    from edgemp.graphio import write_graphs
    from edgemp.runtime.smiles import model_featurizer, read_smiles_column

    if featurizer_id:
        f = get_featurizer(featurizer_id)
    elif models:
        from edgemp.runtime import load

        f = model_featurizer(load(Path(models[0])).spec, str(models[0]))
    else:
        raise EdgempError("--smiles with --url needs --featurizer NAME/VERSION (the served model's)")
    items = featurize_smiles(f, read_smiles_column(csv_file, column))
    graphs = [g for g in items if not isinstance(g, EdgempError)]
    if len(graphs) < len(items):
        click.echo(f"--smiles: skipped {len(items) - len(graphs)} rows that are not valid molecules", err=True)
    if not graphs:
        raise EdgempError(f"{csv_file}: no valid molecule in column {column!r}")
    fd, path = tempfile.mkstemp(suffix=".npz", prefix="edgemp-smiles-")
    os.close(fd)
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    write_graphs(graphs, path)
    return path


def _inprocess(models, backend, checkpoint, batch, threads, scenario, warmup, dur, iterations, rounds, workload,
               common, quiet):
    from edgemp.bench.backends import parse_backends
    from edgemp.bench.inprocess import InProcessConfig, run_inprocess

    paths = tuple(Path(m) for m in models)
    for p in paths:
        if not p.is_file():
            raise EdgempError(f"model file {p} does not exist")
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and not ckpt.is_dir():
        raise EdgempError(f"checkpoint directory {ckpt} does not exist")
    names = parse_backends(backend) if backend else (("torch-eager",) if ckpt else ()) + (("ort-cpu",) if paths else ())
    if not paths and not ckpt:
        raise EdgempError("give MODEL files to benchmark in-process, or --url for a server")
    its = _ints(iterations, "--iterations")[0] if iterations else (None if dur else 200)
    cfg = InProcessConfig(
        models=paths, backends=names, checkpoint=ckpt, workload=workload, batches=_ints(batch, "--batch"),
        threads=_ints(threads, "--threads"), scenario=scenario, warmup=_nonneg(warmup, "--warmup"),
        duration_s=dur, iterations=its, rounds=_ints(rounds, "--rounds")[0], **common,
    )
    update, bar = _progress(quiet)
    try:
        return run_inprocess(cfg, update)
    finally:
        if bar is not None:
            bar.close()


def _server(models, backend, checkpoint, url, model_name, protocol, grpc_url, concurrency, request_rate, distribution,
            p99_bound_ms, warmup_time, timeout_s, batch, dur, iterations, workload, common, quiet):
    from edgemp.bench.server import ServerBenchConfig, run_server_bench

    if models or backend or checkpoint or iterations:
        raise EdgempError("--url benchmarks a server: MODEL files, --backend, --checkpoint and --iterations are "
                          "in-process options")
    if not model_name:
        raise EdgempError("--url needs --model NAME (the model's name on the server)")
    cfg = ServerBenchConfig(
        url=url, model=model_name, protocol=protocol, grpc_url=grpc_url,
        concurrency=_ints(concurrency, "--concurrency") if concurrency else (),
        request_rates=_floats(request_rate, "--request-rate") if request_rate else (),
        distribution=distribution, duration_s=dur or 5.0, batch=_ints(batch, "--batch")[0], workload=workload,
        timeout_s=_floats(timeout_s, "--timeout")[0], warmup_s=_seconds(warmup_time, "--warmup-time"),
        p99_bound_ms=_floats(p99_bound_ms, "--p99-bound-ms")[0] if p99_bound_ms else None, **common,
    )
    update, bar = _progress(quiet)
    try:
        return run_server_bench(cfg, update)
    finally:
        if bar is not None:
            bar.close()


def _text(models, checkpoint, texts_file, lengths, batch, threads, warmup, iterations, json_path):
    import json

    from edgemp.bench.text import TextBenchConfig, run_text_bench

    cfg = TextBenchConfig(
        models=tuple(Path(m) for m in models), texts_file=Path(texts_file) if texts_file else None, lengths=lengths,
        batches=_ints(batch, "--batch"), threads=_ints(threads, "--threads")[0], warmup=_nonneg(warmup, "--warmup"),
        iterations=_ints(iterations, "--iterations")[0] if iterations else 100,
        hf_checkpoint=Path(checkpoint) if checkpoint else None,
    )
    report = run_text_bench(cfg, sys.argv)
    click.echo(report.markdown())
    click.echo(f"command: {report.environment['command']}")
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        click.echo(f"wrote {json_path}")


def _seconds(text: str, flag: str) -> float:
    try:
        v = float(text)
    except ValueError as e:
        raise EdgempError(f"{flag} takes seconds, got {text!r}") from e
    if v < 0:
        raise EdgempError(f"{flag} must be >= 0, got {v}")
    return v


def _nonneg(text: str, flag: str) -> int:
    try:
        v = int(text)
    except ValueError as e:
        raise EdgempError(f"{flag} takes an integer, got {text!r}") from e
    if v < 0:
        raise EdgempError(f"{flag} must be >= 0, got {v}")
    return v


def _emit(report, json_path, csv_path, plot_path, raw, summary=False) -> None:
    from edgemp.bench.report import environment_lines, format_report, write_csv, write_json

    click.echo(format_report(report, summary=summary))
    for line in environment_lines(report):
        click.echo(line)
    if json_path:
        write_json(report, json_path, raw=raw)
        click.echo(f"wrote {json_path}")
    if csv_path:
        write_csv(report, csv_path, raw=raw)
        click.echo(f"wrote {csv_path}" + (f" and {Path(csv_path).with_suffix('.raw.csv')}" if raw else ""))
    if plot_path:
        from edgemp.bench.plot import plot_report

        plot_report(report, plot_path)
        click.echo(f"wrote {plot_path}")


COMMANDS = [bench]
