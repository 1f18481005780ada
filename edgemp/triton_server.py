"""Start a real Triton Inference Server on an edgemp repository: find it, set it up, stop it.

``edgemp triton serve`` is a thin layer over :class:`TritonServer`. Three things must be
right for the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel to run edgemp's
Python-backend models (each one seen failing here without it):

* **The backend stub's interpreter.** Triton starts ``triton_python_backend_stub`` for
  each model instance; it embeds CPython in isolated mode (``PYTHONPATH`` is ignored) and
  takes its ``sys.prefix`` from the first ``python3`` on ``PATH``. So the backend
  environment's ``bin/`` goes first on ``PATH``: that venv holds edgemp and numpy 1.x
  (the stub mis-sizes every output under numpy 2), built by ``scripts/build_triton_env.sh``.
* **Its libpython.** The stub links ``libpython3.X.so.1.0``; the system's copy may not
  match the environment's standard library (model init then fails inside ``threading``),
  so the environment interpreter's own ``LIBDIR`` goes first on ``LD_LIBRARY_PATH``.
* **The stub for that Python version.** The wheel keeps one per version under
  ``python_backend_stubs/3.X/``; the backend looks in its own directory. A private backend
  directory (symlinks + the right stub) is made per server, so the installed wheel is
  never modified.

A ``tritonserver`` from NVIDIA's containers (on ``PATH`` or ``--tritonserver``) runs with
its own backends; the backend environment still goes first on ``PATH``.
"""
from __future__ import annotations

import collections
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgemp.errors import EdgempError

log = logging.getLogger(__name__)

ENV_VAR = "EDGEMP_TRITON_ENV"
DEFAULT_ENV = ".venv-triton"
BUILD_HINT = "build one with: bash scripts/build_triton_env.sh [DIR]"
# The backend a model's config.pbtxt ``platform`` implies when ``backend`` is not given.
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "pytorch_libtorch": "pytorch"}
_PROBE = (
    "import json, sys, sysconfig\n"
    "info = {'version': '%d.%d' % sys.version_info[:2], 'libdir': sysconfig.get_config_var('LIBDIR') or '',\n"
    "        'site': sysconfig.get_paths()['purelib']}\n"
    "try:\n    import numpy; info['numpy'] = numpy.__version__\nexcept ImportError:\n    info['numpy'] = None\n"
    "try:\n    import edgemp.runtime; info['edgemp'] = True\nexcept ImportError:\n    info['edgemp'] = False\n"
    "print(json.dumps(info))\n"
)


@dataclass(frozen=True)
class TritonServeConfig:
    """How to start ``tritonserver`` on a model repository.

    Args:
        repository: the model repository (``edgemp export triton CKPT --repo DIR``).
        backend_env: the Python backend's environment, a venv with edgemp and numpy<2
            (default: ``$EDGEMP_TRITON_ENV``, else ``./.venv-triton``).
        tritonserver: the binary (default: ``tritonserver`` on ``PATH``, else the one the
            ``nvidia-pytriton`` wheel in ``backend_env`` bundles).
        host: address for HTTP, gRPC and metrics (default: ``127.0.0.1``, this machine only).
        http_port, grpc_port, metrics_port: Triton's defaults 8000, 8001, 8002.
        ready_timeout_s: how long to wait for ``/v2/health/ready`` (default: 120 s).
        exit_timeout_s: how long Triton drains in-flight requests after SIGTERM (default: 30 s).
        echo_logs: copy Triton's log lines to stderr (default: false; they go to logging).
    """

    repository: Path
    backend_env: Path | None = None
    tritonserver: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    ready_timeout_s: float = 120.0
    exit_timeout_s: int = 30
    echo_logs: bool = False

    def __post_init__(self) -> None:
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if not all(0 < p < 65536 for p in ports) or len(set(ports)) != 3:
            raise EdgempError(f"HTTP, gRPC and metrics ports must be three different ports in 1..65535, got {ports}")
        if self.ready_timeout_s <= 0 or self.exit_timeout_s < 0:
            raise EdgempError("ready timeout must be > 0 and exit timeout >= 0")


@dataclass(frozen=True)
class BackendEnv:
    """What the backend environment's interpreter reported about itself."""

    path: Path
    python_version: str
    libdir: Path
    site_packages: Path


def model_backends(repository: Path) -> dict[str, str]:
    """``{model name: backend}`` for every model folder; raises on a repository Triton would refuse."""
    repo = Path(repository)
    if not repo.is_dir():
        raise EdgempError(f"model repository {repo} is not a directory; export one with "
                          "`edgemp export triton CKPT --repo DIR --backend python`")
    models = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cfg = folder / "config.pbtxt"
        if not cfg.is_file():
            raise EdgempError(f"{folder} has no config.pbtxt; every folder of a Triton repository is a model")
        versions = [v for v in folder.iterdir() if v.is_dir() and v.name.isdigit() and any(v.iterdir())]
        if not versions:
            raise EdgempError(f"model {folder.name!r} has no non-empty numeric version folder (e.g. {folder}/1/)")
        backend = _config_field(cfg.read_text(encoding="utf-8", errors="replace"), "backend")
        if not backend:
            platform = _config_field(cfg.read_text(encoding="utf-8", errors="replace"), "platform")
            backend = PLATFORM_BACKENDS.get(platform or "", platform or "")
        if not backend:
            raise EdgempError(f"{cfg} names neither a backend nor a platform")
        if backend == "python" and not any((v / "model.py").is_file() for v in versions):
            raise EdgempError(f"model {folder.name!r} uses the python backend but has no <version>/model.py")
        models[folder.name] = backend
    if not models:
        raise EdgempError(f"model repository {repo} holds no model folders")
    return models


def _config_field(text: str, key: str) -> str | None:
    """A top-level ``key: "value"`` of config.pbtxt (enough to route a model to its backend)."""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(f"{key}:") and line[:1] not in (" ", "\t"):
            return s.split(":", 1)[1].strip().strip('"')
    return None


def probe_backend_env(explicit: Path | None) -> BackendEnv:
    """Find the backend environment and check it can run edgemp models under the stub."""
    env = explicit or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else Path.cwd() / DEFAULT_ENV)
    python = env / "bin" / "python3"
    if not python.exists():
        where = "--backend-env" if explicit else f"${ENV_VAR} or ./{DEFAULT_ENV}"
        raise EdgempError(f"no Python backend environment at {env} ({where}): {BUILD_HINT}")
    try:
        out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        raise EdgempError(f"the backend environment's interpreter {python} did not run: {e}") from e
    if not info["edgemp"]:
        raise EdgempError(f"edgemp is not installed in the backend environment {env}: {BUILD_HINT}")
    if info["numpy"] is None or int(info["numpy"].split(".")[0]) >= 2:
        raise EdgempError(f"the backend environment {env} has numpy {info['numpy']}; Triton's bundled Python "
                          f"backend stub needs numpy<2: {BUILD_HINT}")
    return BackendEnv(env.absolute(), info["version"], Path(info["libdir"]), Path(info["site"]))


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` binary and, for the pip wheel, what must be set up around it."""

    binary: Path
    wheel_root: Path | None  # .../pytriton/tritonserver when it is the nvidia-pytriton build

    @property
    def libs_dir(self) -> Path | None:
        return self.wheel_root.parent.parent / "nvidia_pytriton.libs" if self.wheel_root else None


def find_tritonserver(explicit: Path | None, env: BackendEnv) -> TritonInstall:
    """``explicit``, else ``tritonserver`` on PATH, else the nvidia-pytriton wheel in the backend env."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        on_path = shutil.which("tritonserver")
        if on_path:
            candidates.append(Path(on_path))
        candidates.append(env.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver")
    for binary in candidates:
        if binary.is_file() and os.access(binary, os.X_OK):
            root = binary.resolve().parent.parent
            return TritonInstall(binary, root if (root / "python_backend_stubs").is_dir() else None)
    if explicit:
        raise EdgempError(f"--tritonserver {explicit} is not an executable file")
    raise EdgempError(f"no tritonserver found on PATH or in the backend environment {env.path}: {BUILD_HINT} "
                      "(it installs the nvidia-pytriton wheel, which bundles tritonserver)")


def prepare_backends(install: TritonInstall, env: BackendEnv, workdir: Path) -> Path | None:
    """A private backend directory with the stub built for ``env``'s Python (wheel builds only)."""
    if install.wheel_root is None:
        return None
    stub = install.wheel_root / "python_backend_stubs" / env.python_version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (install.wheel_root / "python_backend_stubs").iterdir())
        raise EdgempError(f"this tritonserver has no Python backend stub for Python {env.python_version} "
                          f"(it has {have}); build the backend environment with one of those")
    backends = workdir / "backends"
    for src in (install.wheel_root / "backends").iterdir():
        dst = backends / src.name
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.name != "__pycache__":
                (dst / f.name).symlink_to(f)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def _message(line: str) -> str:
    """A Triton log line without its prefix (``E1201 04:59:43.28 31032 file.cc:642] "...``) or Python traceback."""
    if '] "' in line:
        line = line.split('] "', 1)[1].rstrip('"')
    return line.split("\\n", 1)[0].strip()


def _die_with_parent() -> None:
    """Child-side: SIGTERM the server if this process dies without stopping it (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class TritonServer:
    """A running ``tritonserver``; a context manager that waits for ready and stops on exit.

    ``start()`` raises :class:`EdgempError` with Triton's own error lines when the server
    exits before it is ready (a model that fails to load stops it: ``--exit-on-error``).
    """

    def __init__(self, cfg: TritonServeConfig) -> None:
        self.cfg = cfg
        self.models = model_backends(cfg.repository)
        self.env = probe_backend_env(cfg.backend_env)
        self.install = find_tritonserver(cfg.tritonserver, self.env)
        self.proc: subprocess.Popen | None = None
        self.log_tail: collections.deque[str] = collections.deque(maxlen=400)
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._reader: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.http_port}"

    def command(self, backends: Path | None) -> list[str]:
        c = self.cfg
        cmd = [str(self.install.binary), f"--model-repository={Path(c.repository).resolve()}",
               f"--http-address={c.host}", f"--http-port={c.http_port}",
               f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
               f"--metrics-address={c.host}", f"--metrics-port={c.metrics_port}",
               f"--exit-timeout-secs={c.exit_timeout_s}", "--exit-on-error=true", "--strict-readiness=true"]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.env.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = [str(self.env.libdir)] + ([str(self.install.libs_dir)] if self.install.libs_dir else [])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
        env.pop("PYTHONPATH", None)  # the stub ignores it; do not let it leak into anything else Triton runs
        env.pop("PYTHONHOME", None)
        return env

    def _check_backends(self, backends: Path | None) -> None:
        if backends is None:
            return
        missing = {m: b for m, b in self.models.items() if not (backends / b).is_dir()}
        if missing:
            raise EdgempError(
                f"model(s) {missing} need Triton backend(s) this tritonserver lacks (it has "
                f"{sorted(p.name for p in backends.iterdir())}); the nvidia-pytriton build has the python backend "
                "only: export with --triton-backend python, or run NVIDIA's tritonserver container"
            )

    def start(self) -> "TritonServer":
        self._workdir = tempfile.TemporaryDirectory(prefix="edgemp-triton-")
        try:
            backends = prepare_backends(self.install, self.env, Path(self._workdir.name))
            self._check_backends(backends)
            cmd = self.command(backends)
            log.info("starting %s", " ".join(cmd))
            self.proc = subprocess.Popen(cmd, env=self.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True, errors="replace",
                                         preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
            self._reader = threading.Thread(target=self._pump, name="tritonserver-log", daemon=True)
            self._reader.start()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log_tail.append(line.rstrip("\n"))
            if self.cfg.echo_logs:
                sys.stderr.write(line)
            else:
                log.debug("tritonserver: %s", line.rstrip("\n"))

    def errors(self) -> list[str]:
        """Triton's error lines so far (``E…`` log lines and its final ``error:`` line)."""
        return [line for line in self.log_tail if line.startswith("E") or line.startswith("error:")]

    def reason(self) -> str:
        """Why the server stopped, in one line: the model load failure if there is one, else its last errors."""
        lines = [line for line in self.log_tail if "failed to load '" in line][:1] or self.errors()[-2:] \
            or list(self.log_tail)[-3:]
        return "; ".join(_message(line) for line in lines)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.ready_timeout_s
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                raise EdgempError(f"tritonserver exited with code {self.proc.returncode} before it was ready: "
                                  f"{self.reason()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        log.info("tritonserver ready at %s (models %s)", self.http_url, sorted(self.models))
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise EdgempError(f"tritonserver was not ready at {url} within {self.cfg.ready_timeout_s:.0f} s: "
                          f"{self.reason()}")

    def terminate(self) -> None:
        """Ask Triton to drain and exit (SIGTERM), without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self) -> int | None:
        """SIGTERM, wait for the drain (exit timeout + margin), then kill; remove the private backends."""
        code = None
        try:
            if self.proc is not None:
                self.terminate()
                try:
                    code = self.wait(self.cfg.exit_timeout_s + 15)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not exit after SIGTERM; killing it")
                    self.proc.kill()
                    code = self.wait()
        finally:
            if self._workdir is not None:
                self._workdir.cleanup()
                self._workdir = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
