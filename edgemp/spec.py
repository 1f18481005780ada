"""What a model consumes and produces, independent of torch.

A :class:`ModelSpec` travels in a checkpoint's ``config.json`` and, extended with export
details, inside the ONNX file's ``metadata_props`` so the runtime and the server can feed
a model without its checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from edgemp.errors import ModelFormatError
from edgemp.jsonio import load_json

FORMAT_VERSION = 1
TASKS = ("regression", "classification", "node_regression", "node_classification")
# "triton-ragged": one graph per request, flat tensors + Triton batch inputs (edgemp.ragged_layout).
FORMS = ("sparse", "dense", "triton-ragged")
METADATA_KEY = "edgemp"  # metadata_props key holding the JSON-encoded ExportedModelSpec


@dataclass(frozen=True)
class OutputSpec:
    """One model output: its name, level (``graph`` or ``node``) and width."""

    name: str
    level: str  # "graph" | "node"
    width: int


@dataclass(frozen=True)
class ModelSpec:
    """Inputs and outputs of a graph model.

    ``edge_features == 0`` means the model takes no ``edge_attr``.
    """

    family: str
    task: str
    node_features: int
    edge_features: int
    num_rounds: int
    outputs: tuple[OutputSpec, ...]
    target_mean: tuple[float, ...] = ()
    target_std: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()
    # The molecule featurizer (``NAME/VERSION``, edgemp.chem) that made the training inputs;
    # "" when the model takes graphs from elsewhere. Lets SMILES in featurize as training did.
    featurizer: str = ""

    @property
    def output_levels(self) -> dict[str, str]:
        return {o.name: o.level for o in self.outputs}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        try:
            kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
            kw["outputs"] = tuple(OutputSpec(**o) for o in d["outputs"])
            for k in ("target_mean", "target_std", "class_names"):
                if k in kw:
                    kw[k] = tuple(kw[k])
            spec = cls(**kw)
        except (KeyError, TypeError) as e:
            raise ModelFormatError(f"model spec is incomplete or malformed: {e}") from e
        if spec.task not in TASKS:
            raise ModelFormatError(f"model spec has unknown task {spec.task!r}; expected one of {TASKS}")
        return spec


@dataclass(frozen=True)
class ExportedModelSpec:
    """A :class:`ModelSpec` plus how it was exported: everything a runtime needs."""

    model: ModelSpec
    input_names: tuple[str, ...]
    form: str = "sparse"
    max_nodes: int = 0  # dense form: nodes per graph slot
    target: str = "ort-cpu"
    precision: str = "fp32"
    opset: int = 18
    checkpoint_sha256: str = ""
    edgemp_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # e.g. quantization calibration summary

    def to_json(self) -> str:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExportedModelSpec":
        d = load_json(text, "edgemp metadata is malformed", ModelFormatError)
        try:
            if not isinstance(d, dict):
                raise TypeError("metadata is not a JSON object")
            version = d.get("format_version")
            if version != FORMAT_VERSION:
                raise ModelFormatError(
                    f"edgemp model format version {version} is not supported (this edgemp reads {FORMAT_VERSION})"
                )
            d["model"] = ModelSpec.from_dict(d["model"])
            d["input_names"] = tuple(d["input_names"])
            if d.get("form", "sparse") not in FORMS:
                raise ModelFormatError(f"unknown graph form {d.get('form')!r}")
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ModelFormatError(f"edgemp metadata is malformed: {e}") from e


def metadata_entry(metadata: Mapping[str, str], where: object, how_to_export: str = "`edgemp export`") -> str:
    """The JSON text under :data:`METADATA_KEY`, or a :class:`ModelFormatError` naming the file.

    ``metadata`` is whatever map the caller has: an ONNX Runtime session's
    ``custom_metadata_map`` (the runtime, which never imports onnx) or an ``onnx.ModelProto``'s
    ``metadata_props`` as a dict (export). Both read the file through here, so they agree on
    what an edgemp model is and say the same thing when it is not one.
    """
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelFormatError(
            f"not an edgemp model: {where} has no {METADATA_KEY!r} metadata; export it with {how_to_export}"
        )
    return text


def spec_from_metadata(metadata: Mapping[str, str], where: object) -> ExportedModelSpec:
    """The :class:`ExportedModelSpec` a model file carries; errors name ``where`` (the file)."""
    text = metadata_entry(metadata, where)
    try:
        return ExportedModelSpec.from_json(text)
    except ModelFormatError as e:
        raise ModelFormatError(f"{where}: {e}") from e
