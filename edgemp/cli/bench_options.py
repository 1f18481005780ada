"""The options ``edgemp bench graphs`` and ``edgemp bench server`` share, and their value parsers.

Values arrive as text and are parsed here, so a bad one is an :class:`EdgempError` naming
the flag (one line, exit 1) rather than click's multi-line usage error.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable

import click

from edgemp.errors import EdgempError


# The largest value a flag takes: finite but huge ones overflow the nanosecond clock arithmetic
# (--duration 1e300) or size a send schedule past memory (--request-rate 1e300).
WEEK_S = 7 * 24 * 3600.0
MAXIMA = {"--duration": WEEK_S, "--timeout": WEEK_S, "--warmup-time": WEEK_S, "--p99-bound-ms": WEEK_S * 1e3,
          "--request-rate": 1e6}


def ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise EdgempError(f"{flag} takes integers separated by commas, got {text!r}") from e
    if not values or any(v < 1 for v in values):
        raise EdgempError(f"{flag} values must be >= 1, got {text!r}")
    return values


def floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise EdgempError(f"{flag} takes numbers separated by commas, got {text!r}") from e
    if not values or not all(math.isfinite(v) and v > 0 for v in values):  # float() takes "nan" and "inf"
        raise EdgempError(f"{flag} values must be finite numbers > 0, got {text!r}")
    _at_most(max(values), flag)
    return values


def _at_most(value: float, flag: str) -> None:
    if value > MAXIMA.get(flag, math.inf):
        raise EdgempError(f"{flag} must be at most {MAXIMA[flag]:g}, got {value:g}")


def seconds(text: str, flag: str) -> float:
    return _not_negative(text, flag, float, "seconds")


def nonneg(text: str, flag: str) -> int:
    return _not_negative(text, flag, int, "an integer")


def _not_negative(text: str, flag: str, convert: Callable[[str], float], what: str):
    try:
        v = convert(text)
    except ValueError as e:
        raise EdgempError(f"{flag} takes {what}, got {text!r}") from e
    finite = not isinstance(v, float) or math.isfinite(v)  # float() takes "nan" and "inf"; nan < 0 is False
    if not finite or v < 0:
        raise EdgempError(f"{flag} must be a finite number >= 0, got {text!r}")
    _at_most(v, flag)
    return v


def _options(*options: Callable) -> Callable:
    """One decorator applying ``options`` in the order they are listed (and shown in --help)."""
    def add(f: Callable) -> Callable:
        for option in reversed(options):
            f = option(f)
        return f

    return add


workload_options = _options(
    click.option("--graphs", "graphs_file", default=None, help="Graph file (.jsonl/.npz)."),
    click.option("--smiles", "smiles_file", default=None,
                 help="CSV of molecules (needs rdkit)."),
    click.option("--smiles-column", default="smiles", show_default=True, help="--smiles: the SMILES column."),
    click.option("--featurizer", default=None, help="--smiles: NAME/VERSION (default: MODEL's)."),
    click.option("--synthetic", multiple=True,
                 help="nodes=N[-M],edges=E[-F],graphs=G (repeat)."),
)

statistics_options = _options(
    click.option("--percentiles", default="50,90,95,99,99.9", show_default=True),
    click.option("--windows", default="3", show_default=True, help="Stability windows per result."),
    click.option("--stability-threshold", default="0.10", show_default=True,
                 help="Max p50 spread across windows."),
    click.option("--require-stable", is_flag=True, help="Exit 1 if any result is unstable."),
)

output_options = _options(
    click.option("--json", "json_path", default=None, help="Write every figure as JSON."),
    click.option("--csv", "csv_path", default=None, help="Write one CSV row per result."),
    click.option("--raw", is_flag=True, help="Keep per-request latencies."),
    click.option("--plot", "plot_path", default=None, help="Latency CDF PNG (needs matplotlib)."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
    click.option("--summary", is_flag=True, help="Terminal table: aggregate rows only."),
)


def workload_spec(graphs_file: str | None, smiles_file: str | None, smiles_column: str, featurizer: str | None,
                  synthetic: tuple[str, ...], models: tuple[str, ...]):
    """The :class:`~edgemp.bench.workload.WorkloadSpec` the workload options describe."""
    from edgemp.bench.workload import SyntheticSpec, WorkloadSpec

    if sum(bool(v) for v in (graphs_file, smiles_file, synthetic)) > 1:
        raise EdgempError("give one of --graphs, --smiles or --synthetic")
    if smiles_file:
        graphs_file = _featurize_smiles(smiles_file, smiles_column, featurizer, models)
    if graphs_file and not Path(graphs_file).exists():
        raise EdgempError(f"graph file {graphs_file} does not exist")
    return WorkloadSpec(Path(graphs_file) if graphs_file else None, tuple(SyntheticSpec.parse(s) for s in synthetic))


def statistics(percentiles: str, windows: str, stability_threshold: str, raw: bool) -> dict:
    """The statistics fields both benchmark configs take, parsed."""
    from edgemp.bench.stats import parse_percentiles

    return dict(percentiles=parse_percentiles(percentiles), windows=ints(windows, "--windows")[0],
                stability_threshold=floats(stability_threshold, "--stability-threshold")[0], raw=raw)


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


def run_with_progress(run: Callable, cfg, quiet: bool):
    """``run(cfg, on_progress)`` with a progress bar on a terminal (unless ``quiet``)."""
    update, bar = _progress(quiet)
    try:
        return run(cfg, update)
    finally:
        if bar is not None:
            bar.close()


def _progress(quiet: bool):
    """A tqdm bar on a terminal (tqdm is optional); ``(None, None)`` otherwise."""
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


def emit(report, json_path, csv_path, plot_path, raw: bool, summary: bool, require_stable: bool,
         stability_threshold: float) -> None:
    """Print the report, write the files asked for, and fail on instability when asked to."""
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
    if require_stable and report.unstable:
        raise EdgempError(f"{len(report.unstable)} result(s) unstable (window p50 spread above "
                          f"{stability_threshold * 100:.0f}%): --require-stable")
