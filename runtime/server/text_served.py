"""A text model behind the server: texts in as a V2 BYTES tensor (as Triton takes them), or
``POST /v1/models/{m}/predict {"texts": [...]}``; embeddings / labels out.

:class:`TextServedModel` is a :class:`~edgemp.runtime.server.served.ServedModel` whose
batcher is a :class:`~edgemp.runtime.text_batcher.TextBatcher`, so queueing, timeouts,
statistics, metrics and draining are the graph models' own. The V2 input is one tensor
``text`` (BYTES, shape ``[n]`` or ``[n, 1]``); outputs are ``embedding [n, H]`` for
feature extraction, ``logits`` / ``probabilities`` ``[n, C]`` and ``label [n]`` (INT64)
for sequence classification, and the same per token (``[n, T, C]`` / ``[n, T]``, padded
labels -1) for token classification.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from edgemp.runtime.server import jsoncodec
from edgemp.runtime.server.layout import TensorSpec
from edgemp.runtime.server.protocol import V1_BINARY_HINT, ProtocolError, json_values, parse_v1_body
from edgemp.runtime.server.repository import ModelSource
from edgemp.runtime.server.served import ServedModel
from edgemp.runtime.text import TextModel, load_text_model
from edgemp.runtime.text_batcher import TextBatcher

logger = logging.getLogger(__name__)

TEXT_INPUT = "text"


def output_tensor_specs(model: TextModel) -> list[TensorSpec]:
    spec = model.spec
    if spec.task == "feature-extraction":
        return [TensorSpec("embedding", "FP32", (-1, spec.hidden_size or -1))]
    c = spec.num_labels or -1
    if spec.task == "sequence-classification":
        label_shape = (-1, c) if spec.multi_label else (-1,)
        return [TensorSpec("logits", "FP32", (-1, c)), TensorSpec("probabilities", "FP32", (-1, c)),
                TensorSpec("label", "INT64", label_shape)]
    return [TensorSpec("logits", "FP32", (-1, -1, c)), TensorSpec("probabilities", "FP32", (-1, -1, c)),
            TensorSpec("label", "INT64", (-1, -1))]


class TextServedModel(ServedModel):
    """One text model: name, version, runtime model, text batcher, statistics and metrics."""

    def __init__(self, source: ModelSource, model: TextModel) -> None:  # noqa: D107
        # Not super().__init__: the graph version derives its tensors and batcher from a graph spec.
        self._setup(source, model, [TensorSpec(TEXT_INPUT, "BYTES", (-1,))], output_tensor_specs(model), TextBatcher)

    @classmethod
    def load(cls, source: ModelSource) -> "TextServedModel":
        start = time.perf_counter()
        model = load_text_model(source.path, providers=source.providers, threads=source.threads)
        served = cls(source, model)
        served.warm_up()
        logger.info("loaded text model %r version %s from %s in %.0f ms (task=%s, %s, providers=%s)",
                    source.name, source.version, source.path.parent, (time.perf_counter() - start) * 1e3,
                    model.spec.task, model.spec.precision, ",".join(model.providers))
        return served

    def warm_up(self) -> None:
        """Run one short text so the first client does not pay ORT's first-run cost."""
        self.model.predict(["warm up"])  # type: ignore[attr-defined]

    def describe(self) -> dict[str, str]:
        s = self.spec
        return {"edgemp_kind": "text", "edgemp_task": s.task, "edgemp_precision": s.precision,  # type: ignore[attr-defined]
                "edgemp_max_length": str(s.max_length), "edgemp_pooling": s.pooling,  # type: ignore[attr-defined]
                "edgemp_labels": ",".join(s.labels)}  # type: ignore[attr-defined]

    def to_items(self, tensors: dict[str, np.ndarray], memo: dict | None = None) -> list:
        """The V2 ``text`` tensor (``[n]`` or ``[n, 1]``) as a list of texts."""
        arr = tensors.get(TEXT_INPUT)
        if arr is None:
            raise ProtocolError(f"missing input {TEXT_INPUT!r} (BYTES, shape [n] or [n, 1])")
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ProtocolError(f"input {TEXT_INPUT!r} has shape {list(arr.shape)}; expected [n] or [n, 1]")
        return list(arr)

    def to_tensors(self, results: list, names: Sequence[str]) -> dict[str, np.ndarray]:
        if not results:
            return {t.name: np.zeros([0 if d == -1 else d for d in t.shape], np.int64 if t.datatype == "INT64"
                                     else np.float32) for t in self.outputs if t.name in names}
        return self.model.stack(results, names)  # type: ignore[attr-defined]


# -- /v1 predict ------------------------------------------------------------------------------

class V1TextCall:
    """``{"texts": [...]}`` → ``{"embeddings": [[...]]}`` or ``{"labels": [...], "probabilities": [...]}``."""

    __slots__ = ("served", "items", "timeout_us", "request_id")

    def __init__(self, served: TextServedModel, body: bytes) -> None:
        texts, self.timeout_us, self.request_id = parse_v1_body(
            body, "texts", '{"texts": ["first text", "second text", ...]}')
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ProtocolError(f"texts[{bad}] must be a string")
        self.items: Sequence = texts
        self.served = served

    def encode(self, results: list) -> bytes:
        model: TextModel = self.served.model  # type: ignore[assignment]
        out: dict[str, Any] = {"model_name": self.served.name}
        if self.request_id is not None:
            out["id"] = self.request_id
        if model.spec.task == "feature-extraction":
            out["embeddings"] = [json_values("embedding", r["embedding"], V1_BINARY_HINT) for r in results]
        else:
            out["labels"] = model.label_names(results)
            out["probabilities"] = [json_values("probabilities", r["probabilities"], V1_BINARY_HINT) for r in results]
        return jsoncodec.dumps(out)
