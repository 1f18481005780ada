"""What an exported text (transformer) model consumes and produces, independent of torch.

A :class:`TextModelSpec` is stored as JSON under the ``edgemp`` key of the ONNX file's
``metadata_props`` (as :class:`edgemp.spec.ExportedModelSpec` is for graph models), with
``"kind": "text"`` so the two never get confused. It holds what the torch-free runtime
needs to turn texts into outputs: the task, the tokenizer file beside the model, the
pooling and normalisation the checkpoint was trained with, labels and the length limit.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgemp.errors import EdgempError, ModelFormatError
from edgemp.jsonio import load_json

TEXT_FORMAT_VERSION = 1
TEXT_KIND = "text"
TEXT_TASKS = ("feature-extraction", "sequence-classification", "token-classification")
POOLINGS = ("mean", "cls", "max", "none")
# The files a text model directory holds: the graph and the tokenizer the runtime reads.
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


# Token ids, widths and lengths fit an int32: the tokenizer and ONNX Runtime take them as fixed-width
# integers (2**64 overflows there), and metadata is input, so each is bounded here. The minimum per
# field; max_length's own check (>= 2, with its reason) follows in __post_init__.
MAX_INT = 2**31 - 1
INT_FIELDS = {"max_length": 0, "pad_token_id": 0, "hidden_size": 0, "opset": 0, "format_version": 0}
BOOL_FIELDS = ("normalize", "multi_label")
STR_FIELDS = ("task", "model_type", "output_name", "pooling", "precision", "tokenizer_file", "source",
              "edgemp_version", "kind")


def _check_types(spec: "TextModelSpec") -> None:
    """Every field of the type it is declared with, ints in range: a spec comes from a file's metadata."""
    for name, minimum in INT_FIELDS.items():
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_INT:
            raise ModelFormatError(
                f"text metadata {name!r} must be an integer in {minimum}..{MAX_INT}, got {value!r:.40}"
            )
    for name in BOOL_FIELDS:
        if not isinstance(getattr(spec, name), bool):
            raise ModelFormatError(f"text metadata {name!r} must be true or false, got {getattr(spec, name)!r:.40}")
    for name in STR_FIELDS:
        if not isinstance(getattr(spec, name), str):
            raise ModelFormatError(f"text metadata {name!r} must be a string, got {getattr(spec, name)!r:.40}")
    for name in ("input_names", "labels"):
        value = getattr(spec, name)
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise ModelFormatError(f"text metadata {name!r} must be a list of strings, got {value!r:.40}")
    if not isinstance(spec.extra, dict):
        raise ModelFormatError(f"text metadata 'extra' must be a JSON object, got {spec.extra!r:.40}")


@dataclass(frozen=True)
class TextModelSpec:
    """Inputs, outputs and pre/post-processing of an exported text model.

    Args:
        task: one of :data:`TEXT_TASKS`.
        model_type: the Hugging Face ``model_type`` (``bert``, ``distilbert``, ...).
        input_names: ONNX inputs, a subset of input_ids / attention_mask / token_type_ids.
        output_name: the raw ONNX output (``last_hidden_state`` or ``logits``).
        max_length: texts are truncated to this many tokens, special tokens included.
        pad_token_id: id used to pad a batch to its longest text.
        hidden_size: embedding width (feature-extraction).
        pooling: how token states become one embedding: ``mean`` over real tokens
            (sentence-transformers' default), ``cls`` (first token), ``max``; ``none``
            for classifiers.
        normalize: L2-normalise embeddings (sentence-transformers' Normalize module).
        labels: class names in logit order (classifiers; empty otherwise).
        multi_label: independent sigmoid per class instead of a softmax.
        precision: ``fp32`` or ``int8``.
    """

    task: str
    model_type: str
    input_names: tuple[str, ...]
    output_name: str
    max_length: int
    pad_token_id: int = 0
    hidden_size: int = 0
    pooling: str = "none"
    normalize: bool = False
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    precision: str = "fp32"
    opset: int = 0
    tokenizer_file: str = TOKENIZER_FILE
    source: str = ""  # the checkpoint's name or path, for provenance only
    edgemp_version: str = ""
    kind: str = TEXT_KIND
    format_version: int = TEXT_FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # e.g. verification / quantization summary

    def __post_init__(self) -> None:
        _check_types(self)
        if self.task not in TEXT_TASKS:
            raise ModelFormatError(f"unknown text task {self.task!r}; expected one of {list(TEXT_TASKS)}")
        if self.pooling not in POOLINGS:
            raise ModelFormatError(f"unknown pooling {self.pooling!r}; expected one of {list(POOLINGS)}")
        if self.task == "feature-extraction" and self.pooling == "none":
            raise ModelFormatError("a feature-extraction model needs a pooling (mean, cls or max)")
        if self.max_length < 2:
            raise ModelFormatError(f"max_length must be >= 2 (room for the special tokens), got {self.max_length}")
        if "input_ids" not in self.input_names:
            raise ModelFormatError(f"a text model must take input_ids; it declares {list(self.input_names)}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def output_names(self) -> tuple[str, ...]:
        """What the runtime returns per text (after pooling / softmax)."""
        if self.task == "feature-extraction":
            return ("embedding",)
        return ("logits", "probabilities", "label")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TextModelSpec":
        d = load_json(text, "edgemp text metadata", ModelFormatError)
        if not isinstance(d, dict) or d.get("kind") != TEXT_KIND:
            raise ModelFormatError("the edgemp metadata does not describe a text model (no \"kind\": \"text\")")
        version = d.get("format_version")
        if version != TEXT_FORMAT_VERSION:
            raise ModelFormatError(
                f"edgemp text model format version {version} is not supported (this edgemp reads "
                f"{TEXT_FORMAT_VERSION}); re-export the model"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelFormatError(f"edgemp text metadata has unknown field(s) {sorted(unknown)}; upgrade edgemp")
        try:
            d["input_names"] = tuple(d["input_names"])
            d["labels"] = tuple(d.get("labels", ()))
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ModelFormatError(f"edgemp text metadata is incomplete or malformed: {e}") from e


def is_text_metadata(text: str | None) -> bool:
    """Whether an ``edgemp`` metadata value describes a text model (cheap, no validation)."""
    if not text:
        return False
    try:
        d: Any = json.loads(text)
    except (ValueError, RecursionError):  # not JSON at all: the graph-model reader says why
        return False
    return isinstance(d, dict) and d.get("kind") == TEXT_KIND


class TextInputError(EdgempError, ValueError):
    """A text request is malformed (not a string, not UTF-8, empty batch)."""
