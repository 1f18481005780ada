"""INT8 (dynamic) quantization of an exported text model, with an accuracy report.

Dynamic quantization suits transformer encoders on CPU: weights of every MatMul become
int8, activations are quantized per batch at run time. optimum's presets
(``AutoQuantizationConfig.avx2/avx512/avx512_vnni/arm64``) pick the operator set and
weight/activation formats per instruction set; without optimum,
``onnxruntime.quantization.quantize_dynamic`` does the same job with ORT's defaults.

Plain dynamic int8 moves some MiniLM embeddings far from fp32 (one activation scale per
tensor cannot fit the outlier channels), so SmoothQuant (:mod:`edgemp.export.smooth_quant`)
runs first: activation maxima from calibration texts (:func:`edgemp.export.text_corpus.text_split`)
set per-channel scales, and the strength ``alpha`` is *measured*: each candidate (and no
smoothing) is quantized and scored by its worst cosine to fp32 on the calibration texts. The
one or two channels per FFN down-projection that stay far above the rest even then leave int8
altogether: a small fp32 MatMul adds their contribution back (``outlier_ratio``). Only
LayerNorm outputs are smoothed (see :func:`edgemp.export.smooth_quant.layernorm_outputs`).
Before all that, the graph is prepared for int8 speed: self-attention is fused into ONNX
Runtime's ``Attention`` (``QAttention`` once quantized) and GELU takes its tanh form
(:mod:`edgemp.export.ort_fusions`); where attention does not fuse, biased MatMuls that read one
input (a layer's query, key and value) are merged into one MatMul three times as wide
(:mod:`edgemp.export.matmul_merge`). After quantization, chains of two activation Adds become one
``Sum`` (:func:`edgemp.export.ort_fusions.sum_add_chains`), each ``QAttention`` skips its mask when no
token is padding (:func:`edgemp.export.ort_fusions.skip_unpadded_attention_mask`), and mean pooling
runs at the end of the graph (:mod:`edgemp.export.text_pooling`), as in the fp32 export.

The report compares fp32 and int8 through the torch-free runtime on texts the calibration
never saw (1,000 held-back texts by default): embedding cosine (min, p1, mean) and top-10
neighbour overlap (does retrieval over those texts return the same neighbours?) for feature
extraction; label agreement (and accuracy, when the texts carry gold labels) for classifiers.
"""
from __future__ import annotations

import logging
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgemp import __version__
from edgemp.errors import EdgempError, ExportError
from edgemp.text_spec import MODEL_FILE, TextModelSpec

log = logging.getLogger(__name__)

PRESETS = ("auto", "avx2", "avx512", "avx512_vnni", "arm64", "ort")


class TextAccuracyBudgetError(EdgempError):
    """The int8 text model drifts from fp32 more than the user's budget allows."""


@dataclass(frozen=True)
class TextQuantizeConfig:
    """How to quantize a text model.

    Args:
        preset: optimum preset (``avx2``, ``avx512``, ``avx512_vnni``, ``arm64``), ``ort`` for
            plain ``onnxruntime.quantization.quantize_dynamic`` on weight MatMuls, or ``auto``
            (default): ``ort``. optimum's presets also quantize attention's two
            activation-by-activation MatMuls (QKᵀ and attention·V), which costs accuracy for
            little speed (MiniLM-L6 held-back top-10 overlap 0.952 vs 0.962 with ``ort``);
            ORT picks the VNNI/AVX2/NEON kernels at run time either way.
        per_channel: one weight scale per output channel (default: on; costs nothing at run
            time with dynamic quantization and keeps MiniLM's cosine higher).
        smooth_alphas: SmoothQuant strengths to try (default: 0.6, 0.7, 0.8); the best worst-case
            cosine on the calibration texts wins, no smoothing included as a candidate. ``()``
            turns it off. Measured on MiniLM-L6: 0.5 is far worse (min 0.956); 0.9 can win on
            300 calibration texts yet land below 0.99 on held-back ones (it trusts the calibration
            maxima most), so the grid stops at 0.8.
        calibration_texts: how many built-in calibration texts set and score the smoothing.
        outlier_ratio: input channels of a down-projection MatMul whose calibration maximum exceeds
            this many times the 99th percentile of its channels stay out of int8 (a small fp32
            MatMul adds them back; see :func:`edgemp.export.smooth_quant.smooth_model`). MiniLM-L6:
            one or two of 1,536 channels in four of six layers; held-back min cosine 0.9922 -> 0.996,
            top-10 overlap over all texts 0.943 -> 0.962. ``None`` turns it off.
        fuse_attention: replace each self-attention block with ONNX Runtime's ``Attention`` op
            before quantizing (``QAttention`` after; :mod:`edgemp.export.ort_fusions`), when
            the graph matches and the fused fp32 outputs stay within 1e-4 (default: on; MiniLM-L6
            int8 ~3% faster, same accuracy). The int8 model then needs ONNX Runtime's CPU kernels,
            as dynamic int8 does anyway. ``ort`` preset only (optimum's quantizer rejects
            com.microsoft ops), as is ``approximate_gelu``.
        approximate_gelu: the int8 model computes GELU in its tanh form (``FastGelu``, at most 5e-4
            from the exact erf form, far below int8 rounding; default: on; MiniLM-L6 int8 ~1.8%
            faster, held-back accuracy unchanged). The fp32 export always keeps the exact GELU.
    """

    preset: str = "auto"
    per_channel: bool = True
    smooth_alphas: tuple[float, ...] = (0.6, 0.7, 0.8)
    calibration_texts: int = 300
    outlier_ratio: float | None = 3.0
    fuse_attention: bool = True
    approximate_gelu: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ExportError(f"unknown quantization preset {self.preset!r}; expected one of {list(PRESETS)}")
        if any(not 0.0 <= a <= 1.0 for a in self.smooth_alphas):
            raise ExportError(f"smooth_alphas must lie in [0, 1], got {list(self.smooth_alphas)}")
        if (self.smooth_alphas or self.outlier_ratio is not None) and self.calibration_texts < 1:
            raise ExportError(f"calibration_texts must be >= 1 when smoothing or splitting outliers, "
                              f"got {self.calibration_texts}")
        if self.outlier_ratio is not None and not self.outlier_ratio > 1.0:
            raise ExportError(f"outlier_ratio must be > 1 (or None), got {self.outlier_ratio}")


@dataclass(frozen=True)
class TextAccuracyReport:
    """fp32 vs int8 on the same texts; classifier fields are None for embeddings and vice versa."""

    task: str
    num_texts: int
    mean_cosine: float  # embeddings, or probability vectors for classifiers
    min_cosine: float
    label_agreement: float | None
    fp32_accuracy: float | None
    int8_accuracy: float | None
    max_drop: float | None = None  # budget: 1 - mean_cosine (embeddings) or 1 - agreement
    p1_cosine: float | None = None  # 1st percentile: the tail that the mean hides
    top10_overlap: float | None = None  # embeddings: mean share of fp32's 10 nearest neighbours kept
    retrieval_texts: int | None = None  # the corpus top10_overlap retrieves over
    top10_overlap_all: float | None = None  # over every text (word soups too: near-ties, so lower)

    @property
    def drop(self) -> float:
        return 1.0 - (self.mean_cosine if self.label_agreement is None else self.label_agreement)

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop

    def to_dict(self) -> dict:
        return {**asdict(self), "drop": self.drop, "passed": self.passed}

    def table(self) -> str:
        rows = [f"{self.task}: {self.num_texts} texts, int8 vs fp32",
                f"  cosine mean={self.mean_cosine:.6f} p1={self.p1_cosine if self.p1_cosine is not None else float('nan'):.6f} "
                f"min={self.min_cosine:.6f}"]
        if self.top10_overlap is not None:
            rows.append(f"  top-10 neighbour overlap with fp32={self.top10_overlap:.4f} (retrieval over {self.retrieval_texts} texts)")
        if self.top10_overlap_all is not None:
            rows.append(f"  top-10 neighbour overlap over all {self.num_texts} texts={self.top10_overlap_all:.4f}")
        if self.label_agreement is not None:
            rows.append(f"  label agreement={self.label_agreement:.4f}")
        if self.fp32_accuracy is not None:
            rows.append(f"  accuracy fp32={self.fp32_accuracy:.4f} int8={self.int8_accuracy:.4f}")
        if self.max_drop is not None:
            rows.append(f"  drop={self.drop:.4g} (budget {self.max_drop}) {'ok' if self.passed else 'EXCEEDED'}")
        return "\n".join(rows)


@dataclass
class TextQuantizeResult:
    output_dir: Path
    spec: TextModelSpec
    method: str
    report: TextAccuracyReport | None

    @property
    def path(self) -> Path:
        return self.output_dir / MODEL_FILE


def cpu_preset() -> str:
    """The optimum preset for this machine's instruction set (from /proc/cpuinfo or the arch)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "ort"


def _quantize_optimum(src_dir: Path, dst: Path, preset: str, per_channel: bool, exclude: Sequence[str]) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from edgemp.export.hf_export import quiet_exporter_output

    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=per_channel,
                                                       nodes_to_exclude=list(exclude))
    with tempfile.TemporaryDirectory(prefix="edgemp-q-") as tmp, quiet_exporter_output():
        try:
            quantizer = ORTQuantizer.from_pretrained(str(src_dir), file_name=MODEL_FILE)
            quantizer.quantize(save_dir=tmp, quantization_config=qconfig)
        except Exception as e:  # optimum/ORT raise many types on unsupported graphs
            raise ExportError(f"optimum {preset} quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
        outs = [p for p in Path(tmp).glob("*.onnx")]
        if len(outs) != 1:
            raise ExportError(f"optimum wrote {len(outs)} ONNX files, expected one")
        shutil.move(str(outs[0]), dst)


def _quantize_ort(src: Path, dst: Path, per_channel: bool, exclude: Sequence[str]) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing tip on the root logger at every call
    try:
        # reduce_range: 7-bit weights, so ORT's int8 kernels on x86 without VNNI cannot saturate
        # (see edgemp.export.quantize.QuantizeConfig.reduce_range)
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Attention"], nodes_to_exclude=list(exclude),
                         extra_options={"MatMulConstBOnly": True,
                                        # ONNX shape inference cannot type com.microsoft ops' outputs
                                        "DefaultTensorType": TensorProto.FLOAT})
    finally:
        root.setLevel(level)


HELDBACK_TEXTS = 1000
FUSION_CHECK_TEXTS = 64  # calibration texts the fused-attention graph must reproduce before it is used


def default_eval_texts(n: int = HELDBACK_TEXTS, words: Sequence[str] = ()) -> list[str]:
    """Held-back mixed texts (queries, sentences, passages; word soups of ``words``) that
    calibration never sees."""
    from edgemp.export.text_corpus import text_split

    return text_split("heldback", n, words)


def fluent_heldback(n: int, words: Sequence[str]) -> list[str]:
    """The fluent (non-soup) texts of ``default_eval_texts(n, words)``: the retrieval corpus."""
    from edgemp.export.text_corpus import MIN_SOUP_WORDS, text_split

    return text_split("heldback", n - (n // 4 if len(words) >= MIN_SOUP_WORDS else 0))


def model_words(model: Any) -> tuple[str, ...]:
    """Whole words of a :class:`~edgemp.runtime.text.TextModel`'s vocabulary (for word-soup texts)."""
    from edgemp.export.text_corpus import vocabulary_words

    return vocabulary_words(list(model.tokenizer.get_vocab()))


def _output_key(task: str) -> str:
    return "embedding" if task == "feature-extraction" else "probabilities"


def _cosines(a: Sequence[dict], b: Sequence[dict], key: str) -> np.ndarray:
    """Cosine per output row (per text, or per token for token classification)."""
    cos = []
    for x, y in zip(a, b):
        xv, yv = x[key].reshape(-1, x[key].shape[-1]), y[key].reshape(-1, y[key].shape[-1])
        num = (xv * yv).sum(-1)
        cos.extend((num / np.maximum(np.linalg.norm(xv, axis=-1) * np.linalg.norm(yv, axis=-1), 1e-30)).tolist())
    return np.asarray(cos)


def neighbour_overlap(ref: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """Mean share of each text's ``k`` nearest neighbours under ``ref`` that ``other`` also ranks top-``k``
    (cosine retrieval over the same texts, the text itself excluded)."""
    k = min(k, len(ref) - 1)
    if k < 1:
        return 1.0

    def top(e: np.ndarray) -> np.ndarray:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
        sim = e @ e.T  # [n, n]
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k - 1, axis=1)[:, :k]

    a, b = top(ref), top(other)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def compare_text_models(fp32_dir: str | Path, int8_dir: str | Path, texts: Sequence[str],
                        labels: Sequence[str] | None = None, max_drop: float | None = None,
                        retrieval_corpus: Sequence[str] | None = None) -> TextAccuracyReport:
    """Run both models through the runtime on ``texts`` and measure how far int8 drifts.

    The top-10 neighbour overlap retrieves over ``retrieval_corpus`` (a subset of ``texts``;
    default: all of them). Random word soups make a poor corpus: their neighbours are
    near-ties that any rounding reorders, so the default eval set retrieves over its fluent
    texts and also reports the overlap over everything.
    """
    from edgemp.runtime.text import load_text_model

    ref, q = load_text_model(fp32_dir, providers="cpu"), load_text_model(int8_dir, providers="cpu")
    a, b = ref.predict(texts), q.predict(texts)
    cos = _cosines(a, b, _output_key(ref.spec.task))
    agreement = fp32_acc = int8_acc = overlap = None
    overlap_all = n_corpus = None
    if ref.spec.task == "feature-extraction" and len(texts) > 1:
        ea, eb = np.stack([r["embedding"] for r in a]), np.stack([r["embedding"] for r in b])
        overlap = overlap_all = neighbour_overlap(ea, eb)
        n_corpus = len(texts)
        if retrieval_corpus is not None:
            keep = set(retrieval_corpus)
            rows = [i for i, t in enumerate(texts) if t in keep]
            overlap, n_corpus = neighbour_overlap(ea[rows], eb[rows]), len(rows)
        else:
            overlap_all = None
    if ref.spec.task != "feature-extraction":
        same = np.concatenate([np.atleast_1d(x["label"] == y["label"]).reshape(-1) for x, y in zip(a, b)])
        agreement = float(same.mean())
        if labels is not None:
            if ref.spec.task != "sequence-classification":
                raise EdgempError("gold labels are supported for sequence-classification only")
            names = list(ref.spec.labels)
            fp32_acc = float(np.mean([str(n) == g for n, g in zip(ref.label_names(a), labels)]))
            int8_acc = float(np.mean([str(n) == g for n, g in zip(ref.label_names(b), labels)]))
            if names and not set(labels) <= set(names):
                log.warning("gold labels %s are not all model labels %s", sorted(set(labels))[:5], names[:5])
    return TextAccuracyReport(ref.spec.task, len(texts), float(np.mean(cos)), float(np.min(cos)), agreement,
                              fp32_acc, int8_acc, max_drop, float(np.percentile(cos, 1)), overlap, n_corpus,
                              overlap_all)


def _copy_aux_files(src_dir: Path, dst_dir: Path) -> None:
    """Tokenizer and config files beside the graph (everything but model.onnx and hidden files)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.is_file() and f.name != MODEL_FILE and not f.name.startswith("."):
            shutil.copy2(f, dst_dir / f.name)


def _quantize(src_dir: Path, dst: Path, preset: str, per_channel: bool) -> str:
    """Quantize ``src_dir/model.onnx`` into ``dst`` (the outlier side paths stay fp32); returns the method's name."""
    import onnx

    from edgemp.export.smooth_quant import FP32_SUFFIX

    graph = onnx.load(str(src_dir / MODEL_FILE), load_external_data=False).graph
    exclude = [n.name for n in graph.node if n.name.endswith(FP32_SUFFIX)]
    if preset == "ort":
        _quantize_ort(src_dir / MODEL_FILE, dst, per_channel, exclude)
        return "onnxruntime.quantize_dynamic"
    _quantize_optimum(src_dir, dst, preset, per_channel, exclude)
    return f"optimum ORTQuantizer {preset} (dynamic)"


def _runtime_feeds(runtime: Any, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """``texts`` as the runtime feeds them to ONNX Runtime (bucketed, padded)."""
    items = runtime.validate(texts)
    return [runtime.padded([items[i] for i in group]) for group in runtime.buckets(items)]


def _check_feeds(runtime: Any, texts: Sequence[str], single: int = 4) -> list[dict[str, np.ndarray]]:
    """Feeds a rewritten graph must reproduce: ``texts`` bucketed and padded as the runtime feeds
    them, plus the first ``single`` texts alone (unpadded, as the runtime feeds one text)."""
    return _runtime_feeds(runtime, texts) + [runtime.padded([it]) for it in runtime.validate(texts[:single])]


def _calibration_maxima(model: Any, runtime: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Activation maxima over ``texts`` fed exactly as the runtime feeds them."""
    from edgemp.export.smooth_quant import activation_maxima

    return activation_maxima(model, _runtime_feeds(runtime, texts))


def quantize_text_model(model_dir: str | Path, output_dir: str | Path, cfg: TextQuantizeConfig = TextQuantizeConfig(),
                        eval_texts: Sequence[str] | None = None, eval_labels: Sequence[str] | None = None,
                        max_drop: float | None = None) -> TextQuantizeResult:
    """Write an int8 copy of the text model in ``model_dir`` to ``output_dir`` and report its accuracy.

    With ``cfg.smooth_alphas`` each SmoothQuant strength (and none) is quantized and scored on
    the calibration texts; the candidate with the highest worst-case cosine is written. The
    report is measured on ``eval_texts`` (default: 1,000 held-back texts, disjoint from calibration).
    Raises :class:`TextAccuracyBudgetError` (after writing) when ``max_drop`` is exceeded.
    """
    import onnx

    from edgemp.export.matmul_merge import merge_shared_input_matmuls
    from edgemp.export.onnx_file import write_metadata
    from edgemp.export.ort_fusions import (approximate_gelu, fuse_attention, restore_attention_mask,
                                           skip_unpadded_attention_mask, sum_add_chains)
    from edgemp.export.smooth_quant import FP32_SUFFIX, layernorm_outputs, smooth_model
    from edgemp.export.text_corpus import text_split
    from edgemp.export.text_pooling import pool_for_spec, remove_pooled_output
    from edgemp.runtime.text import TEXT_DISABLED_OPTIMIZERS, load_text_model, text_model_files

    src_dir, output_dir = Path(model_dir), Path(output_dir)
    if text_model_files(src_dir) is None or not src_dir.is_dir():
        raise ExportError(f"{src_dir} is not a text model directory (model.onnx + tokenizer.json from `edgemp export`)")
    if src_dir.resolve() == output_dir.resolve():
        raise ExportError("the output directory must differ from the fp32 model's directory")
    fp32 = load_text_model(src_dir, providers="cpu")
    spec = fp32.spec
    if spec.precision != "fp32":
        raise ExportError(f"{src_dir} is already {spec.precision}; quantize the fp32 export")
    preset = cfg.preset
    if preset == "auto":
        preset = "ort"
    candidates: list[float | None] = [None, *cfg.smooth_alphas]
    words = model_words(fp32)
    calibrate = bool(cfg.smooth_alphas) or cfg.outlier_ratio is not None
    calibration = text_split("calibration", cfg.calibration_texts, words) if calibrate else []
    with tempfile.TemporaryDirectory(prefix="edgemp-q-") as tmp:
        fp32_model, fast_gelu = onnx.load(str(src_dir / MODEL_FILE)), 0
        # an export with fused attention may skip its mask on unpadded inputs: quantize the plain nodes
        fp32_model, _ = restore_attention_mask(fp32_model)
        fp32_model = remove_pooled_output(fp32_model)  # pooling is added back to the int8 graph at the end
        # optimum's quantizer cannot type com.microsoft ops' outputs, so its presets get the graph as exported
        check_feeds = _check_feeds(fp32, text_split("calibration", FUSION_CHECK_TEXTS, words))
        if cfg.fuse_attention and preset == "ort":
            fp32_model, _ = fuse_attention(fp32_model, check_feeds)
        if cfg.approximate_gelu and preset == "ort":
            fp32_model, fast_gelu = approximate_gelu(fp32_model)
        attention = sum(n.op_type == "Attention" and n.domain == "com.microsoft" for n in fp32_model.graph.node)
        if attention and preset != "ort":
            raise ExportError(f"{src_dir} holds fused com.microsoft.Attention, which optimum's {preset} preset cannot "
                              "quantize: use TextQuantizeConfig(preset='ort'), or export without fuse_attention")
        # int8 only: one GEMM three times as wide beats three (MiniLM-L6 int8 ~0.5% faster); in fp32
        # the merge measured 0.7% slower, so the export keeps them apart. Fused attention packs Q/K/V itself.
        fp32_model, merged = merge_shared_input_matmuls(fp32_model)
        maxima = _calibration_maxima(fp32_model, fp32, calibration) if calibration else {}
        smooth_only = layernorm_outputs(fp32_model)
        reference = fp32.predict(calibration) if calibration else []
        best: tuple[float, Path, TextModelSpec, str] | None = None
        for k, alpha in enumerate(candidates):
            src = Path(tmp) / f"fp32_{k}"
            _copy_aux_files(src_dir, src)
            smoothed = smooth_model(fp32_model, maxima, alpha, cfg.outlier_ratio, smooth_only)
            onnx.save(smoothed, str(src / MODEL_FILE))
            cand = Path(tmp) / f"int8_{k}"
            _copy_aux_files(src_dir, cand)
            method = _quantize(src, cand / MODEL_FILE, preset, cfg.per_channel)
            model, summed = sum_add_chains(onnx.load(str(cand / MODEL_FILE)), check_feeds,
                                           disabled_optimizers=TEXT_DISABLED_OPTIMIZERS)
            quant = {"method": method, "per_channel": cfg.per_channel, "smoothquant_alpha": alpha,
                     "outlier_ratio": cfg.outlier_ratio, "merged_matmul_groups": merged,
                     "fused_attention": attention, "fast_gelu": fast_gelu, "summed_add_chains": summed,
                     "fp32_outlier_matmuls": sum(n.name.endswith(FP32_SUFFIX) for n in smoothed.graph.node)}
            if calibration:
                quant["calibration_texts"] = len(calibration)
            q_spec = replace(spec, precision="int8", edgemp_version=__version__,
                             extra={**spec.extra, "quantization": quant})
            write_metadata(model, q_spec)
            onnx.save(model, str(cand / MODEL_FILE))
            score = 1.0
            if len(candidates) > 1:
                q = load_text_model(cand, providers="cpu")
                score = float(_cosines(reference, q.predict(calibration), _output_key(spec.task)).min())
                del q
                log.info("int8 candidate smoothquant_alpha=%s: calibration min cosine %.5f", alpha, score)
            if best is None or score > best[0]:
                best = (score, cand, q_spec, method)
        score, cand, q_spec, method = best  # type: ignore[misc]
        if len(candidates) > 1:
            q_spec.extra["quantization"]["calibration_min_cosine"] = score
        # after quantization (which sees top-level nodes only), on the written candidate alone
        model, skipped = skip_unpadded_attention_mask(onnx.load(str(cand / MODEL_FILE)), check_feeds,
                                                      disabled_optimizers=TEXT_DISABLED_OPTIMIZERS)
        q_spec.extra["quantization"]["attention_mask_skip"] = skipped
        model, q_spec = pool_for_spec(model, q_spec)
        write_metadata(model, q_spec)
        onnx.save(model, str(cand / MODEL_FILE))
        output_dir.mkdir(parents=True, exist_ok=True)
        for f in cand.iterdir():
            if f.name != MODEL_FILE:
                shutil.copy2(f, output_dir / f.name)
        shutil.copy2(cand / MODEL_FILE, output_dir / MODEL_FILE)
    alpha = q_spec.extra["quantization"]["smoothquant_alpha"]
    if alpha is not None:
        method = f"{method} + SmoothQuant alpha={alpha}"
    if q_spec.extra["quantization"].get("fp32_outlier_matmuls"):
        method = f"{method}, outlier channels fp32 in {q_spec.extra['quantization']['fp32_outlier_matmuls']} MatMuls"
    if q_spec.extra["quantization"]["fused_attention"]:
        method = f"{method}, fused attention (QAttention)"
    if q_spec.extra["quantization"]["fast_gelu"]:
        method = f"{method}, tanh GELU"
    log.info("wrote %s with %s", output_dir / MODEL_FILE, method)
    texts = list(eval_texts) if eval_texts is not None else default_eval_texts(words=words)
    corpus = None if eval_texts is not None else fluent_heldback(len(texts), words)
    report = compare_text_models(src_dir, output_dir, texts, eval_labels, max_drop, corpus)
    result = TextQuantizeResult(output_dir, q_spec, method, report)
    if not report.passed:
        err = TextAccuracyBudgetError(
            f"int8 drifts {report.drop:.4g} from fp32 (budget {max_drop}); {output_dir} was written — "
            "keep the fp32 model or widen the budget"
        )
        err.report = report
        raise err
    return result
