"""chemprop v2 checkpoints (``best.pt`` from ``chemprop train``, or a Lightning ``.ckpt``) → an
edgemp export source, without running any code from the file.

The file is read by :func:`edgemp.export.inert_pickle.load_inert`: chemprop's pickled classes
and modules arrive as inert records, and this module reads them like a document — which
message passing, depth, hidden size, bias, activation, undirected flag, aggregation, batch
norm and FFN predictor — to rebuild the same network as :class:`edgemp.models.dmpnn.DMPNN`,
then loads the weights strictly. What edgemp cannot reproduce exactly (extra atom/bond/molecule
descriptors, multi-component inputs, uncertainty heads, other featurizers) is refused by name.
"""
from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgemp.chem.chemprop_features import ATOM_SCHEMES, BOND_FEATURES
from edgemp.errors import CheckpointError
from edgemp.export.inert_pickle import InertObject, load_inert

logger = logging.getLogger(__name__)

# Globals a chemprop checkpoint may name; each becomes an inert record (never imported or run).
ALLOWED_PREFIXES = (
    "chemprop.", "torch.nn.modules.", "lightning.fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict", "torch.torch_version.TorchVersion",
)
_MP = {"BondMessagePassing": "bond", "AtomMessagePassing": "atom"}
_AGG = {"MeanAggregation": "mean", "SumAggregation": "sum", "NormAggregation": "norm"}
_PREDICTORS = {"RegressionFFN": "regression", "BinaryClassificationFFN": "binary",
               "MulticlassClassificationFFN": "multiclass"}
# torch activation modules and the constructor attributes that change their maths.
_ACTIVATIONS = {"ReLU": (), "LeakyReLU": ("negative_slope",), "PReLU": (), "Tanh": (), "ELU": ("alpha",),
                "SELU": (), "CELU": ("alpha",), "GELU": ("approximate",), "SiLU": (), "Mish": (),
                "Sigmoid": (), "ReLU6": (), "Softplus": ("beta", "threshold")}
# State-dict entries that only served training (loss and metric weights).
_TRAINING_ONLY = ("predictor.criterion.", "metrics.")


def is_chemprop_checkpoint(path: str | Path) -> bool:
    """A torch zip file whose pickle names chemprop classes (checked on the raw bytes, nothing loaded)."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
        return len(pkl) == 1 and b"chemprop." in z.read(pkl[0])


def _short(obj: Any) -> str:
    name = obj.global_name if isinstance(obj, (InertObject, type)) and hasattr(obj, "global_name") else repr(obj)
    return name.rsplit(".", 1)[-1]


def _plain(obj: Any, where: str) -> dict:
    """A hyper-parameter block (dict or Lightning AttributeDict record) as a dict."""
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, InertObject) and obj.global_name.endswith("AttributeDict"):
        return obj.items
    raise CheckpointError(f"chemprop checkpoint: {where} is {type(obj).__name__}, expected a hyper-parameter block")


def _activation(value: Any) -> tuple[str, tuple]:
    """An activation given as chemprop's name (``"relu"``) or as a pickled torch module record."""
    if isinstance(value, str):
        name = {"relu": "ReLU", "leakyrelu": "LeakyReLU", "prelu": "PReLU", "tanh": "Tanh", "elu": "ELU",
                "selu": "SELU"}.get(value.lower())
        if name is None:
            raise CheckpointError(f"chemprop checkpoint: activation {value!r} is not supported")
        # chemprop's own defaults for names (nn/utils.py::get_activation_function)
        return name, (("negative_slope", 0.1),) if name == "LeakyReLU" else ()
    if isinstance(value, InertObject) and value.global_name.startswith("torch.nn.modules.activation."):
        name = _short(value)
        if name not in _ACTIVATIONS:
            raise CheckpointError(
                f"chemprop checkpoint: activation {name} is not supported; supported: {sorted(_ACTIVATIONS)}")
        attrs = value.attrs
        return name, tuple((k, attrs[k]) for k in _ACTIVATIONS[name] if k in attrs)
    if isinstance(value, InertObject) and value.global_name == "chemprop.nn.utils.Activation":
        if len(value.args) == 1 and isinstance(value.args[0], str):  # the enum pickles as Activation("relu")
            return _activation(value.args[0])
    raise CheckpointError(f"chemprop checkpoint: cannot read the activation ({_short(value)})")


def _refuse_descriptors(mp: dict, hp: dict) -> None:
    if mp.get("d_vd"):
        raise CheckpointError(
            f"chemprop checkpoint uses {mp['d_vd']} extra atom descriptors (--atom-descriptors-path), which edgemp "
            "does not featurize; export a model trained without them")
    if mp.get("V_d_transform") is not None or mp.get("E_d_transform") is not None:
        raise CheckpointError("chemprop checkpoint scales extra atom/bond descriptors, which edgemp does not featurize")
    gt = mp.get("graph_transform")
    if isinstance(gt, InertObject):
        subs = gt.attrs.get("_modules", {})
        if any(not (isinstance(m, InertObject) and _short(m) == "Identity") for m in subs.values()):
            raise CheckpointError(
                "chemprop checkpoint scales extra atom/bond features (--atom-features-path / --bond-features-path), "
                "which edgemp does not featurize")
    if hp.get("X_d_transform") is not None:
        raise CheckpointError(
            "chemprop checkpoint uses extra molecule descriptors (--descriptors-path / --molecule-featurizers), "
            "which edgemp does not compute")


_REQUIRED = object()


def _hp(block: dict, key: str, where: str, default: Any) -> Any:
    if key in block:
        return block[key]
    if default is _REQUIRED:
        raise CheckpointError(f"chemprop checkpoint: {where}.{key} is missing")
    return default


def _hp_int(block: dict, key: str, where: str, default: Any = _REQUIRED) -> int:
    """A hyper-parameter that must be a whole number (chemprop pickles Python ints)."""
    value = _hp(block, key, where, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(f"chemprop checkpoint: {where}.{key} must be an integer, got {_brief(value)}")
    return int(value)


def _hp_float(block: dict, key: str, where: str, default: Any = _REQUIRED) -> float:
    value = _hp(block, key, where, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CheckpointError(f"chemprop checkpoint: {where}.{key} must be a number, got {_brief(value)}")
    return float(value)


def _hp_bool(block: dict, key: str, where: str, default: Any = _REQUIRED) -> bool:
    value = _hp(block, key, where, default)
    if not isinstance(value, (bool, np.bool_)):  # bool("False") is True: a string would flip silently
        raise CheckpointError(f"chemprop checkpoint: {where}.{key} must be true or false, got {_brief(value)}")
    return bool(value)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _ffn_widths(pred: dict) -> tuple[int, ...]:
    """The FFN's hidden widths: a list, or one width repeated ``n_layers`` times (chemprop's two spellings)."""
    hidden = _hp(pred, "hidden_dim", "predictor", 300)
    if isinstance(hidden, (list, tuple)):
        return tuple(_hp_int({"hidden_dim": h}, "hidden_dim", "predictor") for h in hidden)
    from edgemp.models.dmpnn import FFN_LAYERS_MAX

    n_layers = _hp_int(pred, "n_layers", "predictor", 1)
    if not 0 <= n_layers <= FFN_LAYERS_MAX:  # checked here: the tuple below would be built first
        raise CheckpointError(f"chemprop checkpoint: predictor.n_layers must be 0..{FFN_LAYERS_MAX}, got {n_layers}")
    return (_hp_int(pred, "hidden_dim", "predictor"),) * n_layers


def read_chemprop_checkpoint(path: str | Path):
    """Parse a chemprop v2 checkpoint into ``(DMPNNConfig, state dict of numpy arrays, output columns)``."""
    from edgemp.models.dmpnn import DMPNNConfig

    data = load_inert(path, ALLOWED_PREFIXES)
    if not isinstance(data, dict) or "hyper_parameters" not in data or "state_dict" not in data:
        raise CheckpointError(f"{path} is not a chemprop v2 model file (no hyper_parameters / state_dict)")
    hp = _plain(data["hyper_parameters"], "hyper_parameters")
    if "message_passing" not in hp or "predictor" not in hp or "agg" not in hp:
        blocks = "blocks" if "blocks" in hp else "the layout"
        raise CheckpointError(
            f"{path}: only single-molecule chemprop MPNNs convert; this checkpoint's {blocks} is not one "
            "(multi-component and atom/bond-target models are not supported)")
    mp, agg, pred = (_plain(hp[k], k) for k in ("message_passing", "agg", "predictor"))
    mp_kind = _MP.get(_short(mp.get("cls")))
    if mp_kind is None:
        raise CheckpointError(f"chemprop checkpoint: message passing {_short(mp.get('cls'))} is not supported "
                              f"(supported: {sorted(_MP)})")
    _refuse_descriptors(mp, hp)
    d_v, d_e, d_h = (_hp_int(mp, k, "message_passing") for k in ("d_v", "d_e", "d_h"))
    schemes = {s.width: s for s in ATOM_SCHEMES.values()}
    if d_v not in schemes or d_e != BOND_FEATURES:
        raise CheckpointError(
            f"chemprop checkpoint: atom/bond widths {d_v}/{d_e} match no chemprop featurizer edgemp has "
            f"(v2 72/14, v1 133/14, organic 44/14; extra atom or bond features are not supported)")
    agg_kind = _AGG.get(_short(agg.get("cls")))
    if agg_kind is None:
        raise CheckpointError(f"chemprop checkpoint: aggregation {_short(agg.get('cls'))} is not supported "
                              f"(supported: {sorted(_AGG)})")
    task = _PREDICTORS.get(_short(pred.get("cls")))
    if task is None:
        raise CheckpointError(f"chemprop checkpoint: predictor {_short(pred.get('cls'))} is not supported "
                              f"(supported: {sorted(_PREDICTORS)})")
    if _hp_int(pred, "input_dim", "predictor", d_h) != d_h:
        raise CheckpointError("chemprop checkpoint: the predictor reads more than the fingerprint (extra descriptors)")
    hidden = _ffn_widths(pred)
    transform = pred.get("output_transform")
    if transform is not None and _short(transform) != "UnscaleTransform":
        raise CheckpointError(f"chemprop checkpoint: output transform {_short(transform)} is not supported")
    act, act_args = _activation(mp.get("activation", "relu"))
    ffn_act, ffn_args = _activation(pred.get("activation", "relu"))
    cfg = DMPNNConfig(
        message_passing=mp_kind, node_features=d_v, edge_features=d_e, hidden=d_h,
        depth=_hp_int(mp, "depth", "message_passing", 3),
        bias=_hp_bool(mp, "bias", "message_passing", False), activation=act, activation_args=act_args,
        ffn_activation=ffn_act, ffn_activation_args=ffn_args,
        undirected=_hp_bool(mp, "undirected", "message_passing", False),
        aggregation=agg_kind, norm=_hp_float(agg, "norm", "agg", 100.0),
        batch_norm=_hp_bool(hp, "batch_norm", "hyper_parameters", False),
        ffn_hidden=hidden, task=task, unscale=transform is not None,
        n_tasks=_hp_int(pred, "n_tasks", "predictor", 1), n_classes=_hp_int(pred, "n_classes", "predictor", 1),
        featurizer=f"chemprop-{schemes[d_v].name}/1",
    )
    state = data["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointError(f"{path}: the state_dict is not a dict of tensors")
    state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY)}
    columns = data.get("output_columns") or []
    return cfg, state, [str(c) for c in columns] if isinstance(columns, (list, tuple)) else []


def load_chemprop_model(path: str | Path):
    """The eval-mode :class:`~edgemp.models.dmpnn.DMPNN` of a chemprop checkpoint, weights matched strictly."""
    import torch

    from edgemp.models.checkpoint import load_weights_strict, require_weights_fit
    from edgemp.models.dmpnn import DMPNN

    cfg, state, columns = read_chemprop_checkpoint(path)
    require_weights_fit(lambda: DMPNN(cfg), state, str(path))  # before d_h = 10**5 allocates anything
    model = DMPNN(cfg)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    load_weights_strict(model, tensors, str(path))
    logger.info("chemprop %s-MPNN: depth %d, d_h %d, %s aggregation, %s, outputs %s",
                cfg.message_passing, cfg.depth, cfg.hidden, cfg.aggregation, cfg.task, columns)
    return model.eval(), columns


def chemprop_source(path: str | Path):
    """An :class:`~edgemp.export.source.ExportSource` for ``edgemp export MODEL.pt``."""
    from edgemp.export.source import ExportSource

    model, _ = load_chemprop_model(path)
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return ExportSource(model, model.cfg.spec(), sha, supports_dense=False, is_graphnet=False)
