"""Reports: a terminal (or markdown) table, JSON with every figure, CSV, raw latencies.

The table shows what a deployment decision needs at a glance (tails, throughput, the
ratio against eager PyTorch, stability); JSON and CSV carry everything, including the
environment, so a number can always be traced back to its machine and command.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from edgemp.bench.results import BenchReport, ResultRow, flatten
from edgemp.bench.stats import percentile_key
from edgemp.errors import EdgempError


def fmt_us(v: float | None) -> str:
    """Latency with a unit a reader can compare at a glance (µs below 10 ms, else ms)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v < 10_000:
        return f"{v:.1f} µs" if v < 1000 else f"{v / 1000:.2f} ms"
    return f"{v / 1000:.1f} ms"


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}x"


def fmt_rate(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def floor_cell(metrics: dict) -> str:
    """``"244 M, 10% of 109 GFLOP/s"``: the call's GEMM work and its share of the same-run sgemm peak."""
    flops = metrics.get("gemm_flops_per_call")
    if flops is None:
        return "-"
    text = f"{flops / 1e9:.3g} G" if flops >= 1e9 else f"{flops / 1e6:.3g} M"
    share, peak = metrics.get("share_of_gemm_peak_p50"), metrics.get("gemm_peak_gflops")
    if share is not None and peak is not None and not math.isnan(share):
        text += f", {share * 100:.0f}% of {peak:.0f} GFLOP/s"
    return text


def _table_percentiles(report: BenchReport) -> list[float]:
    ps = [float(p) for p in report.settings.get("percentiles", [50, 90, 99])]
    keep = [p for p in ps if p in (50.0, 90.0, 99.0, 99.9)]
    return keep or ps[:3]


def _stable_cell(r: ResultRow) -> str:
    if r.stability is None:
        return "-"
    s = r.stability
    spread = "n/a" if math.isnan(s.spread) else f"{s.spread * 100:.0f}%"
    return spread if s.stable else f"{spread} UNSTABLE"


def inprocess_table(report: BenchReport, summary: bool = False) -> tuple[list[str], list[list[str]]]:
    ps = _table_percentiles(report)
    offline = report.settings.get("scenario") == "offline"
    head = ["model", "form", "prec", "backend", "thr", "batch", "bucket"]
    head += [percentile_key(p) for p in ps] + ["mean ± sd", "graphs/s", "vs eager", "collate/run/split µs",
                                                "GEMM FLOP/call, % of same-run peak", "spread"]
    body = []
    for r in report.rows:
        c = r.config
        cells = [str(c.get("model", "")), str(c.get("form") or "-"), str(c.get("precision") or "-"),
                 str(c.get("backend")), str(c.get("threads")), str(c.get("batch") if c.get("batch") else "-"),
                 str(c.get("bucket", "all"))]
        if not r.ok:
            continue  # listed under the table with the reason (see format_report)
        if summary and str(c.get("bucket", "all")) != "all":
            continue
        m = r.metrics
        ratio = m.get("throughput_ratio_vs_eager") if offline else m.get("speedup_p50_vs_eager")
        bd = m.get("breakdown_mean_us") or {}
        cells += [fmt_us(r.latency.p(p)) for p in ps]
        cells += [f"{fmt_us(r.latency.mean_us)} ± {fmt_us(r.latency.stdev_us)}", fmt_rate(m.get("graphs_per_s")),
                  fmt_ratio(ratio), "/".join(f"{bd.get(s, math.nan):.0f}" for s in ("collate", "run", "split")),
                  floor_cell(m), _stable_cell(r)]
        if r.note:
            cells[-1] += f" ({r.note})"
        body.append(cells)
    return head, body


def server_table(report: BenchReport) -> tuple[list[str], list[list[str]]]:
    ps = _table_percentiles(report)
    head = ["model", "protocol", "load", "requests", "errors", "req/s", "graphs/s"]
    head += [percentile_key(p) for p in ps] + ["server queue", "server compute", "mean batch", "spread"]
    body = []
    for r in report.rows:
        c, m = r.config, r.metrics
        cells = [str(c.get("model")), str(c.get("protocol")), str(c.get("load")), str(m.get("requests", "-")),
                 str(m.get("errors", "-")), fmt_rate(m.get("requests_per_s")), fmt_rate(m.get("graphs_per_s"))]
        if not r.ok:
            continue
        srv = m.get("server") or {}
        cells += [fmt_us(r.latency.p(p)) for p in ps]
        mb = srv.get("mean_batch_graphs")
        cells += [fmt_us(srv.get("queue_us")), fmt_us(srv.get("compute_infer_us")),
                  "-" if mb is None else f"{mb:.1f}", _stable_cell(r)]
        body.append(cells)
    return head, body


def render(head: list[str], body: list[list[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(row) for row in body])


def format_report(report: BenchReport, markdown: bool = False, summary: bool = False) -> str:
    """The terminal/markdown table; ``summary`` keeps only the all-sizes rows (in-process)."""
    head, body = inprocess_table(report, summary) if report.mode == "inprocess" else server_table(report)
    parts = [render(head, body, markdown)]
    for r in report.rows:
        if not r.ok:
            c = r.config
            what = " ".join(str(c[k]) for k in ("backend", "model", "load") if c.get(k))
            parts.append(f"{what}: {r.status}: {r.note}")
    for key, value in report.summary.items():
        parts.append(f"{key}: {value}")
    parts += [f"note: {n}" for n in report.notes]
    if report.unstable:
        parts.append(
            f"{len(report.unstable)} row(s) UNSTABLE: window-to-window p50 spread above "
            f"{report.settings.get('stability_threshold', 0) * 100:.0f}% (longer --duration, or a quieter machine)"
        )
    return "\n".join(parts)


def environment_lines(report: BenchReport) -> list[str]:
    e = report.environment
    return [
        f"command: {e.get('command')}",
        f"edgemp {e.get('edgemp')}, onnxruntime {e.get('onnxruntime')}, torch {e.get('torch') or 'not installed'}, "
        f"numpy {e.get('numpy')}, python {e.get('python')}",
        f"cpu: {e.get('cpu')} ({e.get('usable_cores')} usable cores of {e.get('cpu_count')}), {e.get('platform')}, "
        f"load average {e.get('load_average_1m')} at start",
    ]


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _safe(v: Any) -> Any:
    """NaN/inf are not JSON: write null instead, so any JSON parser can read the file."""
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_safe(x) for x in v]
    return v


def write_json(report: BenchReport, path: str | Path, raw: bool = True) -> None:
    try:
        Path(path).write_text(json.dumps(_safe(report.to_dict(raw)), indent=2, default=_json_default) + "\n")
    except OSError as e:
        raise EdgempError(f"cannot write {path}: {e.strerror}") from e


def csv_rows(report: BenchReport) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per result; environment and settings columns repeated so each row stands alone."""
    ctx = flatten({"env": report.environment})
    rows = [{**r.flat(), **ctx} for r in report.rows]
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    return columns, rows


def write_csv(report: BenchReport, path: str | Path, raw: bool = False) -> None:
    """The summary CSV; with ``raw`` also ``<stem>.raw.csv`` holding every latency sample."""
    columns, rows = csv_rows(report)
    p = Path(path)
    try:
        with p.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(row.get(k)) for k in columns})
        if raw:
            with p.with_suffix(".raw.csv").open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["row", "backend_or_load", "seq", "latency_us"])
                for i, r in enumerate(report.rows):
                    label = r.config.get("backend") or r.config.get("load")
                    for j, v in enumerate(r.raw_us or []):
                        w.writerow([i, label, j, v])
    except OSError as e:
        raise EdgempError(f"cannot write {p}: {e.strerror}") from e


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v
