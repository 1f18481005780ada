"""The environment a benchmark ran in, recorded with every result.

Numbers without their machine are not comparable, so every report carries versions,
CPU, cores, thread settings, providers and the command line. Package versions come from
installed metadata, so recording torch's version never imports torch.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

from edgemp import __version__


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``edgemp bench ...``), shell-quoted so it can be re-run."""
    args = list(sys.argv if argv is None else argv)
    if args:
        name = Path(args[0]).name
        if name in ("main.py", "__main__.py", "-m", "edgemp", "-c"):
            args[0] = "edgemp"
        elif name.endswith(".py"):  # a benchmark script: keep its path, it is how to re-run it
            args[0:1] = ["python", args[0]]
        else:
            args[0] = name
    return shlex.join(args)


def footer(packages: tuple[str, ...] = ("torch", "torch_geometric", "onnxruntime")) -> str:
    """The two lines every benchmark result ends with: how to re-run it, and on what."""
    versions = ", ".join(f"{name} {package_version(name.replace('_', '-')) or 'absent'}" for name in packages)
    return (f"command: {command_line()}\n"
            f"{versions}, python {platform.python_version()}, {platform.machine()}")


def capture_environment(argv: list[str] | None = None) -> dict:
    """Versions, machine and command; thread and provider settings live with each result row."""
    ort_version, ort_providers = package_version("onnxruntime"), []
    try:
        import onnxruntime as ort

        ort_version, ort_providers = ort.__version__, list(ort.get_available_providers())
    except ImportError:
        pass
    return {
        "edgemp": __version__,
        "onnxruntime": ort_version,
        "onnxruntime_gpu": package_version("onnxruntime-gpu"),
        "ort_available_providers": ort_providers,
        "torch": package_version("torch"),
        "tensorrt": package_version("tensorrt"),
        "numpy": package_version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1m": _loadavg(),
        "command": command_line(argv),
    }


def _loadavg() -> float | None:
    """Other processes on a 2-core box move every number; record how busy it was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def model_info(path: str | Path, spec=None) -> dict:
    """File hash plus the precision/form/family an edgemp model declares in its metadata.

    ``spec`` is the loaded model's :class:`~edgemp.spec.ExportedModelSpec` (read by the
    runtime from the file's metadata), so no second parser is needed here.
    """
    p = Path(path)
    info: dict = {"path": str(p), "sha256": file_sha256(p), "precision": None, "form": None, "family": None,
                  "target": None, "checkpoint_sha256": None}
    if spec is not None:
        info.update(precision=spec.precision, form=spec.form, family=spec.model.family, target=spec.target,
                    checkpoint_sha256=spec.checkpoint_sha256 or None)
    return info
