"""Find and load the models to serve: one ``.onnx`` file or a model repository directory.

Layouts accepted (Triton's and a flatter one, so Triton repositories work unchanged)::

    <repo>/<name>/model.onnx               version "1"
    <repo>/<name>/<version>/model.onnx     highest numeric version wins
    <repo>/<name>/config.json              optional batching options (BatcherConfig fields,
                                           plus "providers" and "threads")
    <repo>/<name>/config.pbtxt             optional Triton config: parsed and checked (name,
                                           platform, dynamic_batching delay); a bad one is an error

A text model (``model.onnx`` + ``tokenizer.json``, from ``edgemp export HF_DIR``) sits in
the same places, or is served alone by passing its folder.

A repository entry that is not a model (a stray file, an empty folder) is skipped with a
warning; a model that fails to load stops the server, since serving a partial repository
silently is worse than not starting.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from edgemp.errors import EdgempError, ModelFormatError, clipped
from edgemp.jsonio import read_json
from edgemp.runtime.batcher import BatcherConfig
from edgemp.runtime.server import pbtxt
from edgemp.runtime.text import text_model_files

logger = logging.getLogger(__name__)

MODEL_FILES = ("model.onnx", "model.plan")
# '.' and '..' would name the repository itself or its parent; \Z, not $, which lets a trailing newline through.
NAME_RE = re.compile(r"(?!\.+\Z)[A-Za-z0-9_.-]{1,128}\Z")
NAME_RULE = "1-128 letters, digits, '_', '.' or '-', not only dots"
BATCHER_KEYS = frozenset(f.name for f in dataclasses.fields(BatcherConfig))
LOAD_KEYS = frozenset({"providers", "threads"})
# config.pbtxt platform / backend that fit each model file.
PLATFORMS = {".onnx": ("onnxruntime_onnx", "onnxruntime"), ".plan": ("tensorrt_plan", "tensorrt")}


@dataclass(frozen=True)
class ModelSource:
    """One model to serve: where it is and how to batch it."""

    name: str
    version: str
    path: Path
    batcher: BatcherConfig
    providers: str = "auto"
    threads: int | None = None


def _model_file(folder: Path) -> Path | None:
    for fname in MODEL_FILES:
        if (folder / fname).is_file():
            return folder / fname
    return None


def _is_version(name: str) -> bool:
    """A version folder's name: ASCII digits only (``str.isdigit`` takes '²', which ``int`` refuses)."""
    return re.fullmatch(r"[0-9]+", name) is not None


def _read_options(path: Path) -> dict:
    options = read_json(path, ModelFormatError)
    if not isinstance(options, dict):
        raise ModelFormatError(f"{path} must hold a JSON object")
    unknown = set(options) - BATCHER_KEYS - LOAD_KEYS
    if unknown:
        raise ModelFormatError(f"{path}: unknown option(s) {sorted(unknown)}; known: {sorted(BATCHER_KEYS | LOAD_KEYS)}")
    _check_types(options, path)
    return options


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(options: dict, where: Path) -> None:
    """config.json values of the wrong type are one error line, not a traceback at load."""
    for key, value in options.items():
        if key in BATCHER_KEYS and not (_is_int(value) and 0 <= value < 2**53):
            raise ModelFormatError(f"{where}: {key!r} must be a non-negative integer, got {clipped(value, 40)!r}")
    providers = options.get("providers")
    if providers is not None and not isinstance(providers, str):
        raise ModelFormatError(f"{where}: 'providers' must be a string such as \"cpu\" or \"auto\"")
    threads = options.get("threads")
    if threads is not None and not (_is_int(threads) and 0 <= threads <= 1024):
        raise ModelFormatError(
            f"{where}: 'threads' must be an integer in 0..1024 or null, got {clipped(threads, 40)!r}")


def _pbtxt_options(folder: Path, model_file: Path) -> dict:
    """What edgemp takes from a Triton ``config.pbtxt`` (when present): checked, never ignored.

    The name must be the folder's, the platform must match the model file, and
    ``dynamic_batching { max_queue_delay_microseconds }`` sets the batcher's delay.
    """
    path = folder / "config.pbtxt"
    if not path.is_file():
        return {}
    try:
        config = pbtxt.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"cannot read {path}: {e}") from e
    except pbtxt.PbtxtError as e:
        raise ModelFormatError(f"{path}: {e}") from e

    def one(msg: dict, key: str, kind: type | tuple, what: str) -> object:
        values = msg.get(key, [])
        if len(values) > 1:
            raise ModelFormatError(f"{path}: {key!r} is given {len(values)} times")
        if values and (not isinstance(values[0], kind) or isinstance(values[0], bool) and kind is not bool):
            raise ModelFormatError(f"{path}: {key!r} must be {what}")
        return values[0] if values else None

    name = one(config, "name", str, "a string")
    if name is not None and name != folder.name:
        raise ModelFormatError(f"{path}: name {name!r} does not match the model folder {folder.name!r}")
    platform = one(config, "platform", str, "a string")
    backend = one(config, "backend", str, "a string")
    want = PLATFORMS[model_file.suffix]
    if platform is not None and platform != want[0]:
        raise ModelFormatError(f"{path}: platform {platform!r} does not fit {model_file.name} (expected {want[0]!r})")
    if backend is not None and backend != want[1]:
        raise ModelFormatError(f"{path}: backend {backend!r} does not fit {model_file.name} (expected {want[1]!r})")
    max_batch = one(config, "max_batch_size", int, "an integer")
    if max_batch is not None and max_batch < 0:
        raise ModelFormatError(f"{path}: max_batch_size must be >= 0, got {max_batch}")
    batching = one(config, "dynamic_batching", dict, "a message")
    if batching is None:
        return {}
    delay = one(batching, "max_queue_delay_microseconds", int, "an integer")
    if delay is None:
        return {}
    if not 0 <= delay < 2**53:
        raise ModelFormatError(f"{path}: max_queue_delay_microseconds must be >= 0, got {delay}")
    return {"max_queue_delay_us": delay}


def _source(name: str, version: str, path: Path, options: dict, default: BatcherConfig,
            providers: str, threads: int | None) -> ModelSource:
    batching = {k: v for k, v in options.items() if k in BATCHER_KEYS}
    try:
        batcher = dataclasses.replace(default, **batching)
    except EdgempError as e:
        raise ModelFormatError(f"model {name!r}: {e}") from e
    return ModelSource(
        name=name,
        version=version,
        path=path,
        batcher=batcher,
        providers=options.get("providers", providers),
        threads=options.get("threads", threads),
    )


def _from_folder(folder: Path, default: BatcherConfig, providers: str, threads: int | None) -> ModelSource | None:
    options_path = folder / "config.json"
    options = _read_options(options_path) if options_path.is_file() else {}
    direct = _model_file(folder)
    if direct is not None:
        version, model_file = "1", direct
    else:
        versions = sorted(
            (int(p.name), p) for p in folder.iterdir() if p.is_dir() and _is_version(p.name) and _model_file(p)
        )
        if not versions:
            return None
        version, model_file = str(versions[-1][0]), _model_file(versions[-1][1])
    # config.json (edgemp's own options) overrides what config.pbtxt says.
    options = {**_pbtxt_options(folder, model_file), **options}
    return _source(folder.name, version, model_file, options, default, providers, threads)


def discover(
    path: str | Path,
    default: BatcherConfig,
    *,
    name: str | None = None,
    providers: str = "auto",
    threads: int | None = None,
) -> list[ModelSource]:
    """The models under ``path`` (a model file or a repository directory), sorted by name."""
    root = Path(path)
    if not root.exists():
        raise EdgempError(f"{root} does not exist; pass a model .onnx file or a model repository directory")
    if root.is_file():
        model_name = name or root.stem
        if not NAME_RE.match(model_name):
            raise EdgempError(f"model name {model_name!r} must be {NAME_RULE}; pass --name")
        return [ModelSource(model_name, "1", root, default, providers, threads)]
    if text_model_files(root) is not None:  # one text model's folder: model.onnx + tokenizer.json
        model_name = name or root.resolve().name
        if not NAME_RE.match(model_name):
            raise EdgempError(f"model name {model_name!r} must be {NAME_RULE}; pass --name")
        return [ModelSource(model_name, "1", root / "model.onnx", default, providers, threads)]
    if name is not None:
        raise EdgempError("--name applies to a single model file; a repository names models by folder")
    if _model_file(root) is not None or any(_is_version(p.name) for p in root.iterdir() if p.is_dir()):
        raise EdgempError(f"{root} looks like one model's folder; pass its parent (the repository) instead")
    sources = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not NAME_RE.match(folder.name):
            logger.warning("skipping %s: not a valid model name", folder)
            continue
        source = _from_folder(folder, default, providers, threads)
        if source is None:
            logger.warning("skipping %s: no model.onnx in it or in a numbered version folder", folder)
            continue
        sources.append(source)
    if not sources:
        raise EdgempError(f"model repository {root} holds no models (expected <name>/model.onnx or "
                          "<name>/<version>/model.onnx, <version> in digits 0-9)")
    return sources


FileState = tuple[int, int, int, int] | None  # size, mtime (ns), inode, device; None: missing


def model_files_state(sources: list[ModelSource]) -> dict[str, FileState]:
    """The files serving ``sources`` loads, as they are on disk now.

    A ``--workers`` replacement loads its models when it starts, maybe long after the
    others did; comparing this with the state at the server's start tells whether it
    would load something else (a file rewritten or replaced in place). The model file,
    files named after it (external data), a text model's tokenizer; a folder: its files.
    """
    from glob import escape

    from edgemp.text_spec import TOKENIZER_FILE

    paths: set[Path] = set()
    for source in sources:
        p = source.path
        if p.is_dir():
            paths.update(f for f in p.iterdir() if f.is_file())
        else:
            paths.update({p, p.parent / TOKENIZER_FILE, *p.parent.glob(escape(p.name) + "*")})
    state: dict[str, FileState] = {}
    for path in sorted(paths):
        try:
            st = path.stat()
        except OSError:
            state[str(path)] = None
            continue
        state[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    return state
