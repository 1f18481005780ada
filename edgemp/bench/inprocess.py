"""In-process benchmark: backends side by side on the same batches, interleaved in rounds.

Machine drift (thermal, a neighbour process, frequency scaling) hits every backend alike
because the run is cut into rounds and each round gives every configuration a short
block, in a rotating order. PyTorch eager of the checkpoint is the baseline each row is a
ratio against; it is measured in the same run, never taken from a file.

Scenarios (MLPerf LoadGen names): ``single-stream`` issues one inference after the
previous one completes and headlines latency (p90 is LoadGen's metric); ``offline``
runs the same loop and headlines throughput (graphs/s).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgemp.bench import env as envmod
from edgemp.bench.backends import BASELINE, Backend, BackendUnavailable, make_backend
from edgemp.bench.floor import GemmPeak, gemm_profile, share_of_peak
from edgemp.bench.results import BenchReport, ResultRow
from edgemp.bench.stats import DEFAULT_PERCENTILES, stability, summarize
from edgemp.bench.workload import Bucket, Schedule, WorkloadSpec, build_buckets, make_schedule
from edgemp.errors import EdgempError, GraphValidationError

logger = logging.getLogger(__name__)

SCENARIOS = ("single-stream", "offline")
STAGES = ("collate", "run", "split")


@dataclass(frozen=True)
class InProcessConfig:
    """What to measure. ``duration_s`` / ``iterations`` are per configuration (one wins; duration if both)."""

    models: tuple[Path, ...] = ()
    backends: tuple[str, ...] = ("torch-eager", "ort-cpu")
    checkpoint: Path | None = None
    workload: WorkloadSpec = WorkloadSpec()
    batches: tuple[int, ...] = (1,)
    threads: tuple[int, ...] = (1,)
    scenario: str = "single-stream"
    warmup: int = 20
    duration_s: float | None = None
    iterations: int | None = 200
    rounds: int = 10
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    windows: int = 3
    stability_threshold: float = 0.10
    raw: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise EdgempError(f"unknown scenario {self.scenario!r}; choose from {list(SCENARIOS)}")
        if not self.models and not self.checkpoint:
            raise EdgempError("nothing to benchmark: give MODEL files and/or --checkpoint")
        if self.duration_s is None and self.iterations is None:
            raise EdgempError("give --duration or --iterations")
        if self.duration_s is not None and self.duration_s <= 0:
            raise EdgempError(f"--duration must be > 0 seconds, got {self.duration_s}")
        if self.iterations is not None and self.iterations < 1:
            raise EdgempError(f"--iterations must be >= 1, got {self.iterations}")
        if self.warmup < 0 or self.rounds < 1:
            raise EdgempError("--warmup must be >= 0 and rounds >= 1")
        if any(t < 1 for t in self.threads):
            raise EdgempError(f"--threads must be >= 1, got {list(self.threads)}")


@dataclass
class _Unit:
    """One measured configuration: a backend at a batch size, and its samples."""

    backend: Backend
    model: dict
    batch: int
    schedule: Schedule
    pos: int = 0
    total: list[int] = field(default_factory=list)
    stages: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in STAGES})
    bucket: list[int] = field(default_factory=list)
    graphs: int = 0
    compile_s: float | None = None
    reference: dict | None = None
    failed: str = ""
    gemm_flops: float | None = None  # mean GEMM FLOPs per call (ORT CPU rows; see edgemp.bench.floor)
    peak: GemmPeak | None = None  # same-run sgemm of the model's largest GEMM shape

    def step(self) -> None:
        i = self.pos % len(self.schedule)
        self.pos += 1
        t = self.backend.infer(self.schedule.batches[i])
        self.total.append(t.total_ns)
        self.stages["collate"].append(t.collate_ns)
        self.stages["run"].append(t.run_ns)
        self.stages["split"].append(t.split_ns)
        self.bucket.append(self.schedule.bucket[i])
        self.graphs += len(self.schedule.batches[i])


def _spec_widths(models: dict[Path, Backend], checkpoint: Path | None) -> tuple[int, int]:
    widths = set()
    for b in models.values():
        spec = getattr(b, "model").spec.model
        widths.add((spec.node_features, spec.edge_features))
    if checkpoint is not None and not widths:
        from edgemp.models.checkpoint import read_config  # needs torch only for the baseline row

        cfg = read_config(checkpoint)
        widths.add((cfg.node_features, cfg.edge_features if cfg.uses_edge_features else 0))
    if len(widths) != 1:
        raise EdgempError(f"the models take different feature widths {sorted(widths)}; bench them separately")
    return widths.pop()


def _check_checkpoint(spec, checkpoint: Path, model_path: Path) -> None:
    """A baseline from a different checkpoint would make every ratio meaningless."""
    if not spec.checkpoint_sha256:
        return
    got = _ckpt_hash(checkpoint)
    if got != spec.checkpoint_sha256:
        raise EdgempError(
            f"{model_path.name} was exported from checkpoint {spec.checkpoint_sha256[:12]} but --checkpoint "
            f"{checkpoint} hashes to {got[:12]}; pass the checkpoint it came from"
        )


def run_inprocess(cfg: InProcessConfig, on_progress: Callable[[int, int], None] | None = None,
                  argv: list[str] | None = None) -> BenchReport:
    """Measure every (backend, model, threads, batch) configuration; one report with all rows."""
    report = BenchReport("inprocess", envmod.capture_environment(argv), _settings(cfg))
    backends: list[tuple[Backend, dict]] = []
    unavailable: list[ResultRow] = []
    ort_first: dict[Path, Backend] = {}
    try:
        for threads in cfg.threads:
            for name in cfg.backends:
                targets = [None] if name.startswith("torch-") else list(cfg.models)
                for path in targets:
                    ident = {"model": path.name if path else "checkpoint", "backend": name, "threads": threads}
                    try:
                        b = make_backend(name, path, cfg.checkpoint, threads)
                    except BackendUnavailable as e:
                        note = str(e)
                        status = "skipped" if name.startswith("torch-") else "unavailable"
                        unavailable.append(ResultRow({**ident, "batch": None, "bucket": "all"}, status, note))
                        logger.info("%s: %s", name, note)
                        continue
                    info = {"model": ident["model"], "model_sha256": None, "precision": "fp32", "form": "sparse"}
                    if path is not None:
                        mi = envmod.model_info(path, b.model.spec)
                        info = {"model": path.name, "model_sha256": mi["sha256"], "precision": mi["precision"],
                                "form": mi["form"]}
                        if cfg.checkpoint is not None and name in ("ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt"):
                            _check_checkpoint(b.model.spec, cfg.checkpoint, path)
                        ort_first.setdefault(path, b)
                    else:
                        info["model_sha256"] = _ckpt_hash(cfg.checkpoint)
                    backends.append((b, info))
        if BASELINE not in cfg.backends:
            report.notes.append("no torch-eager baseline requested: ratio columns are empty")
        if not backends:
            report.rows = unavailable
            report.notes.append("no backend could run on this machine")
            return report
        nf, ef = _spec_widths(ort_first, cfg.checkpoint)
        buckets = build_buckets(cfg.workload, nf, ef)
        units = _make_units(cfg, backends, buckets, report)
        _warm_up(cfg, units)
        _measure(cfg, [u for u in units if not u.failed], on_progress)
        report.rows = _rows(cfg, units, buckets) + unavailable
        _add_ratios(cfg, report)
    finally:
        for b, _ in backends:
            b.close()
    return report


def _ckpt_hash(checkpoint: Path | None) -> str | None:
    """Same hash as ``edgemp.models.checkpoint.checkpoint_sha256``, without importing torch."""
    if checkpoint is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        p = checkpoint / name
        if not p.is_file():
            raise EdgempError(f"{checkpoint} is not an edgemp checkpoint: {name} is missing")
        h.update(p.read_bytes())
    return h.hexdigest()


def _settings(cfg: InProcessConfig) -> dict:
    return {
        "models": [str(m) for m in cfg.models], "backends": list(cfg.backends),
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None, "workload": cfg.workload.describe(),
        "batches": list(cfg.batches), "threads": list(cfg.threads), "scenario": cfg.scenario,
        "warmup": cfg.warmup, "duration_s": cfg.duration_s, "iterations": cfg.iterations, "rounds": cfg.rounds,
        "percentiles": list(cfg.percentiles), "windows": cfg.windows,
        "stability_threshold": cfg.stability_threshold, "interleaved": True,
        "timed_stages": "collate (+dense padding) / run / split; validation excluded",
    }


def _make_units(cfg: InProcessConfig, backends, buckets: list[Bucket], report: BenchReport) -> list[_Unit]:
    schedules = {b: make_schedule(buckets, b) for b in cfg.batches}
    peaks: dict = {}  # one GemmPeak per (shape, threads), shared by the units that compare with it
    units = []
    for backend, info in backends:
        for bs in cfg.batches:
            u = _Unit(backend, info, bs, schedules[bs])
            try:
                backend.prepare([g for batch in u.schedule.batches for g in batch])
            except GraphValidationError as e:
                u.failed = f"graphs do not fit this model: {e}"
            if not u.failed and backend.name == "ort-cpu":
                _attach_floor(u, peaks)
            units.append(u)
    return units


FLOOR_PROFILED_BATCHES = 3


def _attach_floor(u: _Unit, peaks: dict) -> None:
    """GEMM FLOPs per call (mean over a few of the unit's batches) and the peak to compare with."""
    from edgemp.graph import collate

    model = u.backend.model
    if model.path is None or model.path.suffix != ".onnx":
        return
    try:
        profiles = [gemm_profile(model.path, model.feeds(collate(batch)), u.backend.threads)
                    for batch in u.schedule.batches[:FLOOR_PROFILED_BATCHES]]
        u.gemm_flops = float(np.mean([p.flops for p in profiles]))
        largest = max(profiles, key=lambda p: p.largest[0] * p.largest[1] * p.largest[2]).largest
        if u.gemm_flops and all(largest):
            key = (largest, u.backend.threads)
            if key not in peaks:
                peaks[key] = GemmPeak(*largest, threads=u.backend.threads)
            u.peak = peaks[key]
    except EdgempError as e:  # e.g. onnx missing for the peak model: the row keeps its latency, without a floor
        logger.info("no FLOPs / peak column for %s: %s", model.path.name, e)


def _warm_up(cfg: InProcessConfig, units: list[_Unit]) -> None:
    """Warm every unit; the first call of a compiling backend is its compile time, reported apart."""
    for u in units:
        if u.failed:
            continue
        u.backend.activate()
        try:
            first = u.backend.infer(u.schedule.batches[0], keep=True)
            if u.backend.compiles:
                u.compile_s = first.total_ns / 1e9
            u.reference = first.outputs
            for i in range(max(cfg.warmup, len(u.schedule) if u.backend.compiles else 0)):
                u.backend.infer(u.schedule.batches[i % len(u.schedule)])
        except Exception as e:  # noqa: BLE001 - an engine error becomes a failed row, not a crash of the run
            logger.warning("%s failed in warm-up: %s", u.backend.name, e)
            u.failed = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _measure(cfg: InProcessConfig, units: list[_Unit], on_progress) -> None:
    if not units:
        return
    per_round = None if cfg.duration_s else max(1, math.ceil(cfg.iterations / cfg.rounds))
    slice_ns = int(cfg.duration_s * 1e9 / cfg.rounds) if cfg.duration_s else 0
    total = cfg.rounds * len(units)
    done = 0
    for r in range(cfg.rounds):
        shift = r % len(units)
        for u in units[shift:] + units[:shift]:  # rotating order: nobody always runs right after X
            u.backend.activate()
            if per_round is not None:
                for _ in range(min(per_round, cfg.iterations - len(u.total))):
                    u.step()
            else:
                end = time.perf_counter_ns() + slice_ns
                u.step()
                while time.perf_counter_ns() < end:
                    u.step()
            if u.peak is not None:
                u.peak.sample(2)  # in the same rounds as the rows it is compared with
            done += 1
            if on_progress:
                on_progress(done, total)


def _row(cfg: InProcessConfig, u: _Unit, label: str, mask: np.ndarray | None) -> ResultRow:
    ident = {**u.model, "backend": u.backend.name, "providers": list(u.backend.providers),
             "threads": u.backend.threads, "batch": u.batch, "bucket": label, "scenario": cfg.scenario}
    total = np.asarray(u.total, np.int64)
    sel = total if mask is None else total[mask]
    lat = summarize(sel, cfg.percentiles)
    graphs = u.batch * sel.size
    busy_s = sel.sum() / 1e9
    metrics = {
        "graphs_per_s": graphs / busy_s if busy_s else math.nan,
        "inferences_per_s": sel.size / busy_s if busy_s else math.nan,
        "breakdown_mean_us": {
            s: float(np.asarray(v, np.int64)[mask].mean() / 1e3 if mask is not None else np.mean(v) / 1e3)
            for s, v in u.stages.items()
        },
        "compile_s": u.compile_s,
        "max_abs_diff_vs_eager": None,
        "speedup_p50_vs_eager": None,
        "speedup_p99_vs_eager": None,
        "throughput_ratio_vs_eager": None,
    }
    if u.gemm_flops is not None and mask is None:
        metrics["gemm_flops_per_call"] = u.gemm_flops
        if u.peak is not None:
            metrics["gemm_peak_gflops"] = u.peak.gflops
            metrics["gemm_peak_shape"] = u.peak.label()
            metrics["share_of_gemm_peak_p50"] = share_of_peak(u.gemm_flops, lat.p(50) * 1e3, u.peak.gflops)
    row = ResultRow(ident, "ok", "", lat, stability(sel, cfg.windows, cfg.stability_threshold), metrics)
    if cfg.raw:
        row.raw_us = [round(v / 1e3, 3) for v in sel.tolist()]
    if u.compile_s is not None:
        row.note = f"compile {u.compile_s:.1f} s excluded"
    return row


def _rows(cfg: InProcessConfig, units: list[_Unit], buckets: list[Bucket]) -> list[ResultRow]:
    rows = []
    for u in units:
        if u.failed:
            ident = {**u.model, "backend": u.backend.name, "providers": list(u.backend.providers),
                     "threads": u.backend.threads, "batch": u.batch, "bucket": "all", "scenario": cfg.scenario}
            rows.append(ResultRow(ident, "failed", u.failed))
            continue
        agg = _row(cfg, u, "all", None)
        agg.metrics["_reference"] = u.reference  # first batch's outputs, compared with eager's later
        rows.append(agg)
        if len(buckets) > 1:
            b = np.asarray(u.bucket)
            for i, bucket in enumerate(buckets):
                if np.any(b == i):
                    rows.append(_row(cfg, u, bucket.label, b == i))
    return rows


def _add_ratios(cfg: InProcessConfig, report: BenchReport) -> None:
    """Each row against torch-eager at the same threads, batch and bucket (same batches, same run)."""
    base = {
        (r.config["threads"], r.config["batch"], r.config["bucket"]): r
        for r in report.rows if r.ok and r.config["backend"] == BASELINE
    }
    refs = {(r.config["threads"], r.config["batch"]): r.metrics.get("_reference")
            for r in base.values() if r.config["bucket"] == "all"}
    for r in report.rows:
        ref_out = r.metrics.pop("_reference", None)
        if not r.ok:
            continue
        b = base.get((r.config["threads"], r.config["batch"], r.config["bucket"]))
        if b is None:
            continue
        r.metrics["speedup_p50_vs_eager"] = b.latency.p(50) / r.latency.p(50)
        if 99.0 in cfg.percentiles:
            r.metrics["speedup_p99_vs_eager"] = b.latency.p(99) / r.latency.p(99)
        r.metrics["throughput_ratio_vs_eager"] = r.metrics["graphs_per_s"] / b.metrics["graphs_per_s"]
        want = refs.get((r.config["threads"], r.config["batch"]))
        if ref_out is not None and want is not None:
            diffs = [float(np.max(np.abs(np.asarray(ref_out[k]) - np.asarray(want[k]))))
                     for k in want if k in ref_out and np.asarray(ref_out[k]).shape == np.asarray(want[k]).shape]
            r.metrics["max_abs_diff_vs_eager"] = max(diffs) if diffs else None
    for r in report.rows:
        r.metrics.pop("_reference", None)
    if not base and BASELINE in cfg.backends:
        report.notes.append("torch-eager baseline did not run (see its row): no ratios")
