"""Hugging Face checkpoint directory → verified ONNX text model directory (optimum's exporter).

A BERT-style encoder is message passing on the complete graph of tokens, and the rest of
edgemp (quantize, runtime, server, bench) serves it like a graph model once it is an ONNX
file with edgemp metadata. The steps:

1. read the checkpoint's ``config.json`` (and sentence-transformers' pooling files, if any)
   to decide task, pooling, normalisation, labels and ``max_length``;
2. export with ``optimum.exporters.onnx.main_export`` (offline, optimum's own validation
   off: it downgrades a tolerance miss to a warning);
3. write a :class:`~edgemp.text_spec.TextModelSpec` into ``metadata_props`` and the fast
   tokenizer files beside the graph;
4. load the result with the torch-free runtime and verify it against PyTorch
   (:mod:`edgemp.export.hf_verify`); only a passing model is moved into ``OUT_DIR``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgemp import __version__
from edgemp.errors import ExportError, VerificationError
from edgemp.export.deps import require_hf_export
from edgemp.export.hf_verify import TextVerificationReport, failure_message, verify_text_model
from edgemp.export.onnx_file import staged_path, write_metadata
from edgemp.jsonio import read_json
from edgemp.text_spec import MODEL_FILE, POOLINGS, TEXT_TASKS, TextModelSpec

log = logging.getLogger(__name__)

# edgemp task → optimum task name and the transformers Auto class that loads the reference.
OPTIMUM_TASKS = {
    "feature-extraction": ("feature-extraction", "AutoModel"),
    "sequence-classification": ("text-classification", "AutoModelForSequenceClassification"),
    "token-classification": ("token-classification", "AutoModelForTokenClassification"),
}
OUTPUT_NAMES = {"feature-extraction": "last_hidden_state", "sequence-classification": "logits",
                "token-classification": "logits"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
NOISY_LOGGERS = ("optimum", "transformers", "torch.onnx")


@dataclass(frozen=True)
class TextExportConfig:
    """How to export a Hugging Face text model.

    Args:
        task: ``feature-extraction``, ``sequence-classification`` or ``token-classification``
            (default: from ``config.json``'s ``architectures``).
        max_length: tokens per text, special tokens included (default: sentence-transformers'
            ``max_seq_length``, else the tokenizer's ``model_max_length`` capped at the
            position embeddings).
        pooling: ``mean``, ``cls`` or ``max`` for embeddings (default: sentence-transformers'
            ``1_Pooling`` config, else ``mean``).
        normalize: L2-normalise embeddings (default: whether sentence-transformers'
            ``modules.json`` lists a Normalize module).
        opset: ONNX opset (default: optimum's choice for the architecture).
        verify: compare against PyTorch on unseen texts (default: on).
        atol, rtol: raw outputs pass if ``|ort - torch| <= atol + rtol·|torch|`` on real tokens
            (default 1e-4, 1e-4: float32 over 6-12 layers of reassociated sums).
        min_cosine: final embeddings / probability vectors must reach this cosine (0.9999).
        seed: seed for the verification texts.
        fuse_attention: replace each self-attention block with ONNX Runtime's ``Attention`` op
            (:func:`edgemp.export.ort_fusions.fuse_attention`; default: off). On CPU the fused fp32
            model is the faster one (MiniLM-L6, 1 thread, 128 tokens: 0.4-2.5% across six
            interleaved runs on a shared machine), but it runs only on ONNX Runtime, and
            optimum's int8 presets cannot quantize it; ``edgemp quantize`` (``ort`` preset) fuses
            the int8 graph itself either way. The fused nodes skip the attention mask when no token
            is padding (:func:`edgemp.export.ort_fusions.skip_unpadded_attention_mask`; MiniLM-L6,
            1 thread, 128 tokens: 30.49 -> 30.21 ms), as the int8 graph's do.
    """

    task: str | None = None
    max_length: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    opset: int | None = None
    verify: bool = True
    atol: float = 1e-4
    rtol: float = 1e-4
    min_cosine: float = 0.9999
    seed: int = 0
    fuse_attention: bool = False

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TEXT_TASKS:
            raise ExportError(f"unknown task {self.task!r}; expected one of {list(TEXT_TASKS)}")
        if self.pooling is not None and self.pooling not in POOLINGS[:-1]:
            raise ExportError(f"unknown pooling {self.pooling!r}; expected one of {list(POOLINGS[:-1])}")
        if self.max_length is not None and self.max_length < 2:
            raise ExportError(f"max_length must be >= 2, got {self.max_length}")


@dataclass
class TextExportResult:
    output_dir: Path
    spec: TextModelSpec
    report: TextVerificationReport | None

    @property
    def path(self) -> Path:
        return self.output_dir / MODEL_FILE

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"path": str(self.path), "spec": json.loads(self.spec.to_json())}
        d["verification"] = self.report.to_dict() if self.report else None
        return d

    def summary(self) -> str:
        s = self.spec
        what = f"pooling={s.pooling}, normalize={s.normalize}" if s.task == "feature-extraction" else f"labels={list(s.labels)}"
        verified = (f"verification passed (max_abs_error={self.report.max_abs_error:.2e}, "
                    f"min_cosine={self.report.min_cosine:.6f})" if self.report else "verification skipped")
        return f"wrote {self.path} + tokenizer (task={s.task}, {s.model_type}, max_length={s.max_length}, {what}); {verified}"


def is_hf_model_dir(path: str | Path) -> bool:
    """A directory whose ``config.json`` names a ``model_type`` (a Hugging Face checkpoint)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = read_json(cfg, ExportError)
    except ExportError:
        return False
    return isinstance(data, dict) and isinstance(data.get("model_type"), str)


def _read_json(path: Path) -> Any:
    return read_json(path, ExportError)  # deep nesting and huge ints too: one line, no traceback


def _sentence_transformers_defaults(model_dir: Path) -> dict[str, Any]:
    """Pooling / normalisation / max length from sentence-transformers' files, if present."""
    found: dict[str, Any] = {}
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        modules = _read_json(modules_path)
        types = [m.get("type", "") for m in modules if isinstance(m, dict)]
        found["normalize"] = any(t.endswith("Normalize") for t in types)
        for m in modules:
            if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
                pool_cfg = model_dir / m.get("path", "") / "config.json"
                if pool_cfg.is_file():
                    p = _read_json(pool_cfg)
                    keys = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                            "max": "pooling_mode_max_tokens"}
                    modes = [k for k, key in keys.items() if p.get(key)]
                    other = [k for k, v in p.items() if k.startswith("pooling_mode_") and v and k not in keys.values()]
                    if len(modes) != 1 or other:
                        raise ExportError(f"{pool_cfg}: pooling modes {modes + other or 'none'} — edgemp supports exactly one of mean, cls, max")
                    found["pooling"] = modes[0]
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        length = _read_json(st_cfg).get("max_seq_length")
        if isinstance(length, int):
            found["max_length"] = length
    return found


def _resolve_task(cfg: TextExportConfig, hf_config: dict) -> str:
    if cfg.task:
        return cfg.task
    archs = hf_config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "sequence-classification"
    if any(a.endswith("ForTokenClassification") for a in archs):
        return "token-classification"
    return "feature-extraction"


def _max_length(cfg: TextExportConfig, st: dict, tokenizer: Any, hf_config: dict) -> int:
    positions = hf_config.get("max_position_embeddings")
    length = cfg.max_length or st.get("max_length")
    if length is None:
        tok_max = getattr(tokenizer, "model_max_length", None)
        length = tok_max if isinstance(tok_max, int) and tok_max < 100_000 else (positions or 512)
        if positions:
            length = min(length, positions)
    if positions and length > positions:
        raise ExportError(f"max_length {length} exceeds the model's {positions} position embeddings; pass --max-length <= {positions}")
    return int(length)


def _labels(task: str, hf_config: dict) -> tuple[str, ...]:
    if task == "feature-extraction":
        return ()
    id2label = hf_config.get("id2label") or {}
    try:
        return tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except (ValueError, TypeError) as e:
        raise ExportError(f"config.json id2label has non-integer keys: {list(id2label)[:5]}") from e


@contextlib.contextmanager
def quiet_exporter_output():
    """optimum/transformers print tracer warnings and progress; keep the CLI output ours."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _optimum_export(model_dir: Path, out: Path, task: str, opset: int | None) -> None:
    from optimum.exporters.onnx import main_export

    try:
        with quiet_exporter_output():
            main_export(
                str(model_dir), output=str(out), task=OPTIMUM_TASKS[task][0], opset=opset, device="cpu",
                library_name="transformers", do_validation=False, local_files_only=True,
            )
    except Exception as e:  # optimum raises ValueError/KeyError/RuntimeError/torch errors for unsupported models
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise ExportError(f"optimum could not export {model_dir} as {task}: {type(e).__name__}: {first}") from e
    if not (out / MODEL_FILE).is_file():
        raise ExportError(f"optimum wrote no {MODEL_FILE} for {model_dir} (task {task})")


def load_reference(model_dir: Path, task: str):
    """The PyTorch model the export is verified against (eval mode, float32)."""
    import transformers

    auto = getattr(transformers, OPTIMUM_TASKS[task][1])
    try:
        with quiet_exporter_output():
            return auto.from_pretrained(str(model_dir), local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise ExportError(f"transformers cannot load {model_dir} as {task}: {str(e).splitlines()[0][:300]}") from e


def load_hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        with quiet_exporter_output():
            tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot load the tokenizer of {model_dir}: {str(e).splitlines()[0][:300]}") from e
    if not getattr(tok, "is_fast", False):
        raise ExportError(f"{model_dir} has no fast tokenizer (tokenizer.json), and edgemp's runtime reads only that")
    return tok


def _write_model(src: Path, dst: Path, spec: TextModelSpec) -> None:
    """Copy the ONNX graph with the spec in ``metadata_props`` (weights inline below 2 GB)."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    write_metadata(model, spec)
    large = model.ByteSize() > 1_900_000_000
    onnx.save(model, str(dst), save_as_external_data=large, location=dst.name + ".data" if large else None)


def export_text_model(model_dir: str | Path, output_dir: str | Path,
                      cfg: TextExportConfig = TextExportConfig()) -> TextExportResult:
    """Export, verify and write ``output_dir/model.onnx`` plus tokenizer files.

    Raises :class:`VerificationError` (with ``.report``) on a tolerance miss; nothing is
    written to ``output_dir`` then.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not is_hf_model_dir(model_dir):
        raise ExportError(f"{model_dir} is not a Hugging Face model directory (no config.json with a model_type)")
    if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise ExportError(f"{model_dir} holds no weights ({' or '.join(WEIGHT_FILES[:2])})")
    require_hf_export()
    hf_config = _read_json(model_dir / "config.json")
    task = _resolve_task(cfg, hf_config)
    tokenizer = load_hf_tokenizer(model_dir)
    if tokenizer.pad_token_id is None:
        raise ExportError(f"the tokenizer of {model_dir} has no pad token; batching texts needs one")
    with tempfile.TemporaryDirectory(prefix="edgemp-hf-") as tmp:
        raw_dir, stage = Path(tmp) / "raw", Path(tmp) / "stage"
        stage.mkdir()
        log.info("exporting %s as %s with optimum", model_dir, task)
        _optimum_export(model_dir, raw_dir, task, cfg.opset)
        spec = _text_spec(raw_dir / MODEL_FILE, model_dir, hf_config, task, tokenizer, cfg)
        if cfg.fuse_attention:
            fused, skipped = _fuse_attention(raw_dir / MODEL_FILE, tokenizer, spec, cfg.seed)
            spec = replace(spec, extra={**spec.extra, "fused_attention": fused, "attention_mask_skip": skipped})
        spec = pool_in_graph(raw_dir / MODEL_FILE, spec)
        _write_model(raw_dir / MODEL_FILE, stage / MODEL_FILE, spec)
        with quiet_exporter_output():
            tokenizer.save_pretrained(str(stage))
        report = None
        if cfg.verify:
            spec, report = _verify_staged(stage, spec, model_dir, tokenizer, cfg, output_dir)
        _publish(stage, output_dir)
    return TextExportResult(output_dir, spec, report)


def _text_spec(onnx_path: Path, model_dir: Path, hf_config: dict, task: str, tokenizer,
               cfg: TextExportConfig) -> TextModelSpec:
    """What the runtime needs to know about the exported text model: inputs, pooling, labels, limits."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False)
    opset = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=0)
    st = _sentence_transformers_defaults(model_dir) if task == "feature-extraction" else {}
    return TextModelSpec(
        task=task,
        model_type=str(hf_config["model_type"]),
        input_names=tuple(i.name for i in graph.graph.input),
        output_name=OUTPUT_NAMES[task],
        max_length=_max_length(cfg, st, tokenizer, hf_config),
        pad_token_id=int(tokenizer.pad_token_id),
        hidden_size=int(hf_config.get("hidden_size") or hf_config.get("dim") or 0),
        pooling=(cfg.pooling or st.get("pooling", "mean")) if task == "feature-extraction" else "none",
        normalize=bool(cfg.normalize if cfg.normalize is not None else st.get("normalize", False)),
        labels=_labels(task, hf_config),
        multi_label=hf_config.get("problem_type") == "multi_label_classification",
        opset=int(opset),
        source=str(hf_config.get("_name_or_path") or model_dir.name),
        edgemp_version=__version__,
    )


def pool_in_graph(path: Path, spec: TextModelSpec) -> TextModelSpec:
    """Add the mean-pooled embedding output to the graph at ``path`` in place (mean-pooled
    feature extraction only; :mod:`edgemp.export.text_pooling`); returns the spec that names it."""
    import onnx

    from edgemp.export.text_pooling import pool_for_spec

    model, pooled = pool_for_spec(onnx.load(str(path), load_external_data=False), spec)  # large weights stay put
    if "pooled_output" in pooled.extra:
        onnx.save(model, str(path))
    return pooled


def _fuse_attention(path: Path, tokenizer, spec: TextModelSpec, seed: int) -> tuple[int, int]:
    """Fuse the exported graph's self-attention in place (checked on the verification texts, batched and
    one by one) and let it skip the mask on unpadded inputs; returns ``(blocks fused, blocks that skip
    the mask)`` (``(0, 0)``: the graph is left as exported)."""
    import numpy as np
    import onnx

    from edgemp.export.hf_verify import verification_texts
    from edgemp.export.ort_fusions import fuse_attention, skip_unpadded_attention_mask
    from edgemp.runtime.text import TEXT_DISABLED_OPTIMIZERS

    feeds = []
    groups = [texts for _, texts in verification_texts(spec.max_length, seed)]
    for texts in groups + [[t] for t in max(groups, key=len)[:4]]:  # one text alone: unpadded, as the runtime feeds it
        enc = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="np")
        ids = np.asarray(enc["input_ids"], np.int64)
        feeds.append({k: np.asarray(enc[k], np.int64) if k in enc else np.zeros_like(ids) for k in spec.input_names})
    model, fused = fuse_attention(onnx.load(str(path)), feeds)
    skipped = 0
    if fused:
        model, skipped = skip_unpadded_attention_mask(model, feeds, disabled_optimizers=TEXT_DISABLED_OPTIMIZERS)
        onnx.save(model, str(path))
    return fused, skipped


def _verify_staged(stage: Path, spec: TextModelSpec, model_dir: Path, tokenizer, cfg: TextExportConfig,
                   output_dir: Path) -> tuple[TextModelSpec, TextVerificationReport]:
    """Run the staged export in edgemp's runtime against the PyTorch model; record the result in its spec."""
    from edgemp.runtime.text import load_text_model

    runtime_model = load_text_model(stage, providers="cpu")
    report = verify_text_model(load_reference(model_dir, spec.task), tokenizer, runtime_model, atol=cfg.atol,
                               rtol=cfg.rtol, min_cosine=cfg.min_cosine, seed=cfg.seed)
    del runtime_model
    if not report.passed:
        err = VerificationError(failure_message(report, output_dir))
        err.report = report
        raise err
    spec = replace(spec, extra={**spec.extra, "verification": {"max_abs_error": report.max_abs_error,
                                                              "min_cosine": report.min_cosine}})
    with staged_path(stage / MODEL_FILE) as staged:
        _write_model(stage / MODEL_FILE, staged, spec)
    return spec, report


def _publish(stage: Path, output_dir: Path) -> None:
    """Move the verified files into ``output_dir``; the model file last, atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(stage.iterdir()):
        if f.name != MODEL_FILE:
            shutil.copy2(f, output_dir / f.name)
    with staged_path(output_dir / MODEL_FILE) as staged:
        shutil.copy2(stage / MODEL_FILE, staged)
