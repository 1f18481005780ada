"""Safe checkpoints: ``config.json`` + ``model.safetensors``; nothing is ever unpickled.

The config carries a format version, the edgemp version, the model hyperparameters and
the input spec (feature widths, K, task, outputs, target normalisation), so loading
rebuilds the model with no user code.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgemp import __version__
from edgemp.errors import CheckpointError
from edgemp.jsonio import read_json
from edgemp.models.config import ModelConfig
from edgemp.models.net import GraphNet

CHECKPOINT_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def build_model(cfg: ModelConfig) -> GraphNet:
    return GraphNet(cfg)


def save_checkpoint(model: GraphNet, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "edgemp_version": __version__,
        "model": model.cfg.to_dict(),
        "spec": model.cfg.spec().to_dict(),
    }
    if extra:
        config["training"] = extra
    (d / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS_FILE))
    return d


def read_config(directory: str | Path) -> ModelConfig:
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    path = d / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{d} is not an edgemp checkpoint: {CONFIG_FILE} is missing")
    config = read_json(path, CheckpointError)
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} has no 'model' section")
    version = config.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is not supported (expected {CHECKPOINT_FORMAT_VERSION})"
        )
    return ModelConfig.from_dict(config["model"])


def load_state_dict_safely(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights without executing code: safetensors, or a ``weights_only`` torch file.

    A pickle that would construct arbitrary objects (e.g. call ``os.system``) is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p} is not a valid safetensors file: {e}") from e
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {p}: it contains Python objects beyond tensors (a pickle that could run code); "
            "save plain state dicts or safetensors"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{p} is not a loadable PyTorch weights file: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p} does not hold a state dict of tensors")
    return state


def load_weights_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error."""
    check_weights_match(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def require_weights_fit(build: Callable[[], nn.Module], state: dict, source: str) -> None:
    """Check ``state`` against the model ``build()`` makes, built on the meta device (no memory).

    A config is input: one claiming hidden=16384 for an MPNN would allocate terabytes of
    parameters before the weights refused it. Built shapes-only, it costs nothing.
    """
    with torch.device("meta"):
        own = build().state_dict()
    check_weights_match(own, state, source)


def check_weights_match(own: dict, state: dict, source: str) -> None:
    """Any missing, unexpected or mis-shaped key between ``own`` and ``state`` is a :class:`CheckpointError`."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        raise CheckpointError(f"{source}: weights do not match the model: " + "; ".join(parts))
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: weight {k!r} has shape {list(v.shape)} but the model expects {list(own[k].shape)}"
            )


def load_checkpoint(directory: str | Path) -> GraphNet:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` strictly (eval mode)."""
    d = Path(directory)
    cfg = read_config(d)
    state = load_state_dict_safely(d / WEIGHTS_FILE)
    require_weights_fit(lambda: build_model(cfg), state, str(d))
    model = build_model(cfg)
    load_weights_strict(model, state, str(d))
    return model.eval()


def checkpoint_sha256(directory: str | Path) -> str:
    """Hash of the config and weights, recorded in exported models for provenance."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        h.update((Path(directory) / name).read_bytes())
    return h.hexdigest()
