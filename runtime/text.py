"""Text models without torch or transformers: ``tokenizers`` + ONNX Runtime + numpy.

An exported text model is a directory (``edgemp export HF_DIR -o DIR``)::

    DIR/model.onnx       graph, with a TextModelSpec under the "edgemp" metadata key
    DIR/tokenizer.json   the fast tokenizer (read with the `tokenizers` library only)

:class:`TextModel` tokenises, groups texts into length buckets and pads each bucket only
to its own longest text (never to ``max_length``: attention cost grows with the padded
length, and a batch of short queries padded to 128 or 256 tokens wastes most of its
compute), runs the model once per bucket, then pools / normalises / applies the
softmax as the metadata says and returns results in the caller's order.

Texts are an input layout over the same :class:`~edgemp.runtime.runners.base.Runner` as
graphs (:func:`~edgemp.runtime.runners.open_runner`): providers, session options, the GPU
fallback warning and memory-exhaustion handling are the graph models' own. What is
text-specific here is the tokenizer, the bucketed padding and the pooling.

The same object serves the dynamic batcher (:mod:`edgemp.runtime.text_batcher`):
:meth:`TextModel.validate` tokenises at submit time, so a bad request fails to its caller.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgemp.errors import MissingExtraError, ModelFormatError
from edgemp.jsonio import load_json
from edgemp.runtime.runners import InputLayout, Runner, RunnerOptions, one_line, open_runner
from edgemp.runtime.runners.onnxruntime import CPU, ORT_ERRORS, OrtRunner, resolve_providers
from edgemp.runtime.text_ascii import AsciiTokenizer, ascii_tokenizer  # noqa: F401 - part of this module's API
from edgemp.spec import metadata_entry
from edgemp.text_spec import MODEL_FILE, TOKENIZER_FILE, TextInputError, TextModelSpec, is_text_metadata

logger = logging.getLogger(__name__)

# Padded-length buckets: a text of n tokens joins the first bucket whose bound is >= n, and
# each run is padded to the longest text *in it*. Powers of two keep padding waste under 2x
# while a mixed batch costs only a handful of runs.
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)
# Transformer matmuls are large enough to split across cores, unlike the small graph models
# (runners.onnxruntime.DEFAULT_THREADS = 1): 0 lets ORT use one thread per physical core, as PyTorch
# does. On a machine shared with other busy processes pass threads=1 (oversubscribed pools
# stall at every barrier).
TEXT_DEFAULT_THREADS = 0
# ORT fuses residual Add + LayerNormalization into SkipLayerNormalization in int8 encoders (it does
# not in the fp32 export); on CPU that kernel is slower than the two ops it replaces: MiniLM-L6 int8,
# 1 thread, 128 tokens 13.0 -> 11.7 ms, 32x128 tokens 934 -> 852 ms without the fusion. Only on
# CPU-only sessions: the CUDA kernel is a fused one worth keeping.
TEXT_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MAX_TEXT_CHARS = 1_000_000  # far beyond any max_length; stops a runaway request early


@dataclass(frozen=True)
class TextRuntimeConfig:
    """How texts are tokenised and grouped into ONNX Runtime runs.

    Args:
        max_batch_texts: most rows in one run (default: 32).
        bucket_boundaries: ascending padded-length bounds (default: :data:`DEFAULT_BUCKETS`);
            ``()`` puts every text of a call into one bucket (padded to the longest).
        ascii_fast_path: ASCII texts skip the Rust BERT normalizer and, for BERT's usual layout, look
            each word's WordPiece up in a cache (:mod:`edgemp.runtime.text_ascii`; same token ids;
            default: on). Off runs every text through the tokenizer as written.
    """

    max_batch_texts: int = 32
    bucket_boundaries: tuple[int, ...] = DEFAULT_BUCKETS
    ascii_fast_path: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_texts < 1:
            raise TextInputError(f"max_batch_texts must be >= 1, got {self.max_batch_texts}")
        b = tuple(self.bucket_boundaries)
        if any(x < 1 for x in b) or list(b) != sorted(set(b)):
            raise TextInputError(f"bucket_boundaries must be ascending positive integers, got {list(b)}")


@dataclass(frozen=True)
class TokenizedText:
    """One text as token ids; ``num_nodes``/``num_edges`` let the graph batcher budget tokens."""

    ids: np.ndarray  # [T] int64
    type_ids: np.ndarray  # [T] int64

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def num_nodes(self) -> int:  # the batcher's node budget counts tokens for text models
        return self.num_tokens

    @property
    def num_edges(self) -> int:
        return 0


def text_model_files(path: str | Path) -> tuple[Path, Path] | None:
    """``(model.onnx, tokenizer.json)`` if ``path`` is a text model dir or its .onnx file, else None.

    Only file names are checked (cheap enough for :func:`edgemp.runtime.load` to dispatch on);
    the metadata is validated when the model loads.
    """
    p = Path(path)
    if p.is_dir():
        onnx_path, tok = p / MODEL_FILE, p / TOKENIZER_FILE
    elif p.suffix == ".onnx":
        onnx_path, tok = p, p.parent / TOKENIZER_FILE
    else:
        return None
    return (onnx_path, tok) if onnx_path.is_file() and tok.is_file() else None


def _load_tokenizer(path: Path, spec: TextModelSpec):
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise MissingExtraError("tokenizers", "transformers", "text models; a runtime alone needs `pip install tokenizers`") from e
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception for a malformed file
        raise ModelFormatError(f"cannot read tokenizer {path}: {one_line(e)}") from e
    tok.no_padding()  # we pad per bucket ourselves
    tok.enable_truncation(max_length=spec.max_length)
    return tok


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """Token states ``[B, T, H]`` and mask ``[B, T]`` → embeddings ``[B, H]`` (float32).

    ``mean`` is sentence-transformers' masked mean (sum over real tokens / their count);
    ``normalize`` divides by ``max(||e||, 1e-12)`` as ``torch.nn.functional.normalize`` does.
    """
    # Every numpy call here runs right after an ONNX Runtime run has evicted the caches, where each one
    # costs tens of microseconds rather than a few: hence few calls and no [B, T, H] temporaries.
    w = mask.astype(np.float32)  # [B, T]
    if pooling == "mean":
        out = np.matmul(w[:, None, :], hidden)[:, 0]  # [B, 1, T] @ [B, T, H]: the masked sum, [B, H]
        count = np.maximum(w.sum(axis=1, keepdims=True), np.float32(1e-9))  # [B, 1]
        if not normalize:
            out /= count
            return out.astype(np.float32, copy=False)
        # normalize(sum / n) == sum / max(||sum||, 1e-12 * n): the mean's division folds into the norm's
        out /= np.maximum(np.sqrt(np.einsum("bh,bh->b", out, out))[:, None], count * np.float32(1e-12))
        return out.astype(np.float32, copy=False)
    if pooling == "cls":
        out = hidden[:, 0]
    elif pooling == "max":
        out = np.where(w[:, :, None] > 0, hidden, np.float32(-1e9)).max(axis=1)
    else:
        raise ModelFormatError(f"pooling {pooling!r} cannot make an embedding")
    if normalize:
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32, copy=False)


def _require_unicode(text: str, index: int) -> None:
    """A str may hold lone surrogates (JSON's "\\ud800" decodes to one); the tokenizer takes only
    text that UTF-8 can encode, and would raise a TypeError on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TextInputError(f"text {index} is not valid Unicode (lone surrogate at character {e.start})") from e


class TextModel(InputLayout):
    """An exported text model ready to run; build it with :func:`load_text_model`."""

    def __init__(self, runner: Runner, tokenizer: Any, path: Path, config: TextRuntimeConfig | None = None,
                 spec: TextModelSpec | None = None) -> None:
        self.runner = runner
        self.spec = spec or read_text_spec(runner)
        self.tokenizer = tokenizer
        self.path = path
        self.config = config or TextRuntimeConfig()
        unknown = [n for n in runner.input_names if n not in TEXT_INPUTS]
        if unknown:
            raise ModelFormatError(f"{path}: text model input(s) {unknown} are not input_ids/attention_mask/token_type_ids")
        # embeddings pooled inside the graph (export/text_pooling.py): read while ORT still has them in cache
        pooled = self.spec.extra.get("pooled_output") if self.spec.task == "feature-extraction" else None
        self._pooled = pooled if isinstance(pooled, str) and pooled in runner.declared_outputs else None
        runner.fetch([self.spec.output_name, *([self._pooled] if self._pooled else [])])
        self._ascii = ascii_tokenizer(tokenizer) if self.config.ascii_fast_path else None
        self._bounds = list(self.config.bucket_boundaries)

    # -- what the model is (inputs, providers and lifetime: InputLayout) ----------------
    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.output_names

    # -- texts in -----------------------------------------------------------------------
    def validate(self, texts: Sequence[str | bytes]) -> list[TokenizedText]:
        """Tokenise (truncating to ``max_length``); raises :class:`TextInputError` on bad input."""
        if isinstance(texts, (str, bytes)):
            raise TextInputError("expected a list of texts, got a single string; wrap it in a list")
        decoded = []
        for i, t in enumerate(texts):
            if isinstance(t, (bytes, bytearray, np.bytes_)):
                try:
                    t = bytes(t).decode("utf-8")
                except UnicodeDecodeError as e:
                    raise TextInputError(f"text {i} is not valid UTF-8 (byte {e.start})") from e
            elif not isinstance(t, str):
                raise TextInputError(f"text {i}: expected a string, got {type(t).__name__}")
            if len(t) > MAX_TEXT_CHARS:
                raise TextInputError(f"text {i} has {len(t)} characters; the limit is {MAX_TEXT_CHARS}")
            if not t.isascii():
                _require_unicode(t, i)
            decoded.append(t)
        if not decoded:
            return []
        normalized = self._ascii.normalize(decoded) if self._ascii is not None else None
        if normalized is not None:  # ASCII: BERT's steps done where Python is cheaper (runtime/text_ascii.py)
            return [TokenizedText(ids, types) for ids, types in self._ascii.encode(normalized)]
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets nothing here reads:
        # 0.29 -> 0.23 ms for a 128-token text, a fixed cost that weighs most on int8 models
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(decoded)
        return [TokenizedText(np.asarray(e.ids, np.int64), np.asarray(e.type_ids, np.int64)) for e in encodings]

    tokenize = validate

    def buckets(self, items: Sequence[TokenizedText]) -> list[list[int]]:
        """Indices of ``items`` per ORT run: sorted by length, split at bucket bounds and row cap."""
        order = sorted(range(len(items)), key=lambda i: items[i].num_tokens)
        groups: list[list[int]] = []
        current: list[int] = []
        current_bucket = -1
        for i in order:
            b = bisect.bisect_left(self._bounds, items[i].num_tokens) if self._bounds else 0
            if current and (b != current_bucket or len(current) >= self.config.max_batch_texts):
                groups.append(current)
                current = []
            current.append(i)
            current_bucket = b
        if current:
            groups.append(current)
        return groups

    def padded(self, items: Sequence[TokenizedText]) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids ``[B, L]``, L = the longest text in ``items``."""
        if len(items) == 1:  # one text: nothing to pad, its own arrays are the feeds (no copies)
            it = items[0]
            return {"input_ids": np.asarray(it.ids, np.int64)[None],
                    "attention_mask": np.ones((1, it.num_tokens), np.int64),
                    "token_type_ids": np.asarray(it.type_ids, np.int64)[None]}
        length = max(it.num_tokens for it in items)
        ids = np.full((len(items), length), self.spec.pad_token_id, np.int64)
        types = np.zeros((len(items), length), np.int64)
        mask = np.zeros((len(items), length), np.int64)
        for row, it in enumerate(items):
            n = it.num_tokens
            ids[row, :n] = it.ids
            types[row, :n] = it.type_ids
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    # -- outputs ------------------------------------------------------------------------
    def _postprocess(self, outputs: dict[str, np.ndarray], items: Sequence[TokenizedText],
                     mask: np.ndarray) -> list[dict[str, np.ndarray]]:
        spec = self.spec
        raw = outputs[spec.output_name]
        if spec.task == "feature-extraction":
            if self._pooled:  # [B, H], pooled by the graph
                return [{"embedding": e} for e in outputs[self._pooled].astype(np.float32, copy=False)]
            emb = pool(raw, mask, spec.pooling, spec.normalize)  # [B, H]
            return [{"embedding": e} for e in emb]
        if spec.task == "sequence-classification":
            logits = raw.astype(np.float32, copy=False)  # [B, C]
            probs = _sigmoid(logits) if spec.multi_label else _softmax(logits)
            labels = (probs >= 0.5).astype(np.int64) if spec.multi_label else probs.argmax(axis=-1)
            return [{"logits": logits[r], "probabilities": probs[r], "label": np.asarray(labels[r], np.int64)}
                    for r in range(len(items))]
        out = []  # token-classification: [B, L, C] → each text's own tokens
        for r, it in enumerate(items):
            logits = raw[r, : it.num_tokens].astype(np.float32, copy=False)  # [T, C]
            probs = _softmax(logits)
            out.append({"logits": logits, "probabilities": probs, "label": probs.argmax(axis=-1).astype(np.int64)})
        return out

    def run_tokenized(self, items: Sequence[TokenizedText]) -> list[dict[str, np.ndarray]]:
        """Run validated texts bucket by bucket; one output dict per text, in order."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(items)
        for group in self.buckets(items) if len(items) != 1 else [[0]]:  # one text: one run, no sorting
            chunk = [items[i] for i in group]
            tensors = self.padded(chunk)
            try:
                outputs = self.runner.infer(tensors)
            except ORT_ERRORS as e:
                raise ModelFormatError(f"{self.path}: onnxruntime failed on a batch of {len(chunk)}: {one_line(e)}") from e
            for i, res in zip(group, self._postprocess(outputs, chunk, tensors["attention_mask"])):
                results[i] = res
        return results  # type: ignore[return-value]

    def predict(self, texts: Sequence[str | bytes]) -> list[dict[str, np.ndarray]]:
        """One output dict per text (``embedding``, or ``logits``/``probabilities``/``label``)."""
        items = self.validate(texts)
        return self.run_tokenized(items) if items else []

    def embed(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """Embeddings ``[n, H]`` of a feature-extraction model."""
        if self.spec.task != "feature-extraction":
            raise TextInputError(f"embed() needs a feature-extraction model; this one is {self.spec.task}")
        results = self.predict(texts)
        if not results:
            return np.zeros((0, self.spec.hidden_size), np.float32)
        return np.stack([r["embedding"] for r in results])

    def label_names(self, results: Sequence[dict[str, np.ndarray]]) -> list:
        """Class names per text: one name, a list per token (token classification), or the
        list of active classes (multi-label). Indices stand in when the model has no names."""
        names = self.spec.labels

        def name(i: int) -> str | int:
            return names[i] if 0 <= i < len(names) else i

        out: list = []
        for r in results:
            label = r["label"]
            if self.spec.multi_label:
                out.append([name(int(i)) for i in np.flatnonzero(label)])
            elif label.ndim:
                out.append([name(int(i)) for i in label])
            else:
                out.append(name(int(label)))
        return out

    def stack(self, results: Sequence[dict[str, np.ndarray]], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Per-text results as rectangular batch arrays (token outputs padded; padded labels are -1)."""
        names = list(names or self.output_names)
        out = {}
        for name in names:
            values = [r[name] for r in results]
            if self.spec.task == "token-classification" and values:
                length = max(v.shape[0] for v in values)
                fill = -1 if name == "label" else 0
                padded = np.full((len(values), length, *values[0].shape[1:]), fill, values[0].dtype)
                for row, v in enumerate(values):
                    padded[row, : v.shape[0]] = v
                out[name] = padded
            else:
                out[name] = np.stack(values) if values else np.zeros((0,), np.float32)
        return out

    def __repr__(self) -> str:
        return f"TextModel({self.path}, task={self.spec.task}, providers={list(self.providers)})"


def read_texts(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Texts from a file: one per line, or JSON lines ``{"text": ..., "label": ...}`` (label optional)."""
    p = Path(path)
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise TextInputError(f"cannot read texts from {p}: {e}") from e
    if not lines:
        raise TextInputError(f"{p} holds no texts")
    if not lines[0].lstrip().startswith("{"):
        return lines, None
    texts, labels = [], []
    for i, ln in enumerate(lines, 1):
        obj = load_json(ln, f"{p}:{i}", TextInputError)
        try:
            texts.append(str(obj["text"]))
        except (KeyError, TypeError) as e:
            raise TextInputError(f"{p}:{i}: expected a JSON object with a \"text\" field") from e
        labels.append(obj.get("label"))
    if all(lab is None for lab in labels):
        return texts, None
    if any(lab is None for lab in labels):
        raise TextInputError(f"{p}: some lines have a \"label\" and some do not; label all or none")
    return texts, [str(lab) for lab in labels]


def read_text_spec(runner: Runner) -> TextModelSpec:
    """The TextModelSpec from the runner's edgemp metadata."""
    text = metadata_entry(runner.metadata, runner.path, "`edgemp export HF_DIR`")
    if not is_text_metadata(text):
        raise ModelFormatError(f"{runner.path} is an edgemp graph model, not a text model; load the .onnx file itself")
    try:
        return TextModelSpec.from_json(text)
    except ModelFormatError as e:
        raise ModelFormatError(f"{runner.path}: {e}") from e


def load_text_model(
    path: str | Path,
    providers: str | Sequence[str] = "auto",
    threads: int | None = None,
    *,
    config: TextRuntimeConfig | None = None,
    allow_spinning: bool = False,
) -> TextModel:
    """Load a text model directory (or its ``model.onnx`` with ``tokenizer.json`` beside it).

    Args:
        providers: as for :func:`edgemp.runtime.load` (``auto``, ``cpu``, ``cuda``, ``tensorrt``).
        threads: ORT intra-op threads (default :data:`TEXT_DEFAULT_THREADS`: one per core).
        config: bucketing and run size (default :class:`TextRuntimeConfig`).
    """
    p = Path(path)
    if not p.exists():
        raise ModelFormatError(f"text model {p} does not exist")
    files = text_model_files(p)
    if files is None:
        raise ModelFormatError(
            f"{p} is not a text model: expected a directory with {MODEL_FILE} and {TOKENIZER_FILE} "
            "(from `edgemp export HF_MODEL_DIR -o DIR`)"
        )
    onnx_path, tok_path = files
    disabled = TEXT_DISABLED_OPTIMIZERS if resolve_providers(providers) == [CPU] else ()
    options = RunnerOptions(providers, TEXT_DEFAULT_THREADS if threads is None else threads, allow_spinning, disabled)
    runner = open_runner(onnx_path, options, OrtRunner.name)
    try:
        spec = read_text_spec(runner)
        return TextModel(runner, _load_tokenizer(tok_path, spec), onnx_path.parent, config, spec)
    except BaseException:
        runner.close()
        raise
