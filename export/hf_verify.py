"""Numerical verification of an exported text model against its PyTorch checkpoint.

Two paths are compared on texts the export never saw, in batches that mix lengths (so
padding, truncation at ``max_length``, empty strings and non-ASCII text are all covered):

* the reference: the Hugging Face tokenizer + the PyTorch model + pooling / softmax in
  torch (sentence-transformers' masked mean, ``F.normalize``);
* what users run: the edgemp text runtime (``tokenizers`` + ONNX Runtime + numpy,
  bucketed by length).

Per case it checks token ids (the runtime's tokenizer must agree with transformers'), raw
outputs on real tokens (``|ort - torch| <= atol + rtol·|torch|``) and the final outputs
(embedding cosine, or probabilities and label agreement). A miss is an error, never a warning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WORDS = (
    "the graph of tokens passes messages along every edge while attention weighs each one "
    "a molecule is a small graph and a sentence is a complete graph over its words "
    "edge devices run quantized encoders for search ranking and intent detection "
    "Zürich naïve café résumé Tōkyō 東京 😀 — «quoted» don't can't it's 3.14 1,000 2025-01-01 "
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic"
).split()


@dataclass
class TextCaseResult:
    name: str
    num_texts: int
    max_tokens: int
    max_abs_error: float  # raw ONNX output vs PyTorch, real tokens only
    min_cosine: float  # final embeddings (or probability vectors) runtime vs PyTorch
    max_prob_error: float  # classifiers: probabilities, runtime vs PyTorch (0 for embeddings)
    label_agreement: float  # classifiers: share of equal argmax labels (1 for embeddings)
    tokens_match: bool
    passed: bool


@dataclass
class TextVerificationReport:
    passed: bool
    atol: float
    rtol: float
    min_cosine_required: float
    cases: list[TextCaseResult] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs_error for c in self.cases), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((c.min_cosine for c in self.cases), default=1.0)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed, "atol": self.atol, "rtol": self.rtol,
            "min_cosine_required": self.min_cosine_required,
            "max_abs_error": self.max_abs_error, "min_cosine": self.min_cosine,
            "cases": [asdict(c) for c in self.cases],
        }

    def table(self) -> str:
        rows = ["case                texts  tokens   max_abs   min_cos    prob_err  labels  tok  ok"]
        for c in self.cases:
            rows.append(
                f"{c.name:<18} {c.num_texts:>6} {c.max_tokens:>7} {c.max_abs_error:9.2e} {c.min_cosine:9.6f} "
                f"{c.max_prob_error:10.2e} {c.label_agreement:7.3f}  {'yes' if c.tokens_match else 'NO':<3}  "
                f"{'yes' if c.passed else 'NO'}"
            )
        rows.append(f"overall: max_abs_error={self.max_abs_error:.3e} min_cosine={self.min_cosine:.6f}")
        return "\n".join(rows)


def _sentence(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words)) if n_words else ""


def verification_texts(max_length: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Deterministic cases: single short text, edge strings, a mixed-length batch, truncation."""
    rng = np.random.default_rng(seed + 4242)
    long_words = max(2 * max_length, 16)  # certainly more tokens than max_length
    return [
        ("single_short", ["hello world"]),
        ("edge_strings", ["", "?!", "😀 naïve café — 東京", "   spaces   around   "]),
        ("mixed_lengths", [_sentence(rng, int(k)) for k in rng.integers(1, max(4, max_length // 3), size=17)]),
        ("truncated", [_sentence(rng, long_words), "short one", _sentence(rng, max_length // 4 + 1)]),
        ("one_long", [_sentence(rng, max(1, max_length // 2))]),
    ]


def _torch_final(task: str, raw, mask, pooling: str, normalize: bool, multi_label: bool):
    """The reference post-processing in torch (sentence-transformers' pooling, HF heads)."""
    import torch
    import torch.nn.functional as F

    if task == "feature-extraction":
        m = mask.unsqueeze(-1).to(raw.dtype)  # [B, T, 1]
        if pooling == "mean":
            emb = (raw * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
        elif pooling == "cls":
            emb = raw[:, 0]
        else:  # max
            emb = raw.masked_fill(m == 0, -1e9).max(1).values
        return F.normalize(emb, p=2, dim=1) if normalize else emb
    return torch.sigmoid(raw) if multi_label else torch.softmax(raw, dim=-1)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return num / den


def verify_text_model(torch_model: Any, hf_tokenizer: Any, text_model: Any, *, atol: float, rtol: float,
                      min_cosine: float, seed: int = 0) -> TextVerificationReport:
    """Compare the PyTorch reference with an edgemp :class:`~edgemp.runtime.text.TextModel`."""
    import torch

    spec = text_model.spec
    report = TextVerificationReport(passed=True, atol=atol, rtol=rtol, min_cosine_required=min_cosine)
    for name, texts in verification_texts(spec.max_length, seed):
        enc = hf_tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="np")
        mask = enc["attention_mask"].astype(np.int64)  # [B, T]
        items = text_model.validate(texts)
        tokens_match = all(
            np.array_equal(it.ids, enc["input_ids"][r][mask[r] == 1]) for r, it in enumerate(items)
        )
        feeds = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(mask) for n in text_model.input_names}
        with torch.no_grad():
            out = torch_model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            ref_raw = out[0]
            ref_final = _torch_final(spec.task, ref_raw, torch.from_numpy(mask), spec.pooling, spec.normalize,
                                     spec.multi_label).numpy()
        ref_raw = ref_raw.numpy()
        ort_raw = text_model.runner.infer(feeds)[spec.output_name]
        if spec.task == "sequence-classification":
            real = np.ones(ort_raw.shape, bool)
        else:
            real = np.broadcast_to((mask == 1)[..., None], ort_raw.shape)
        diff = np.abs(ort_raw.astype(np.float64) - ref_raw)[real]
        max_abs = float(diff.max()) if diff.size else 0.0
        raw_ok = bool(np.all(np.isfinite(ort_raw[real]))) and bool(np.all(diff <= atol + rtol * np.abs(ref_raw[real])))

        results = text_model.run_tokenized(items)
        if spec.task == "feature-extraction":
            got = np.stack([r["embedding"] for r in results])
            cos = float(_cosine_rows(got, ref_final).min())
            prob_err, agree = 0.0, 1.0
        elif spec.task == "sequence-classification":
            got = np.stack([r["probabilities"] for r in results])
            cos = float(_cosine_rows(got, ref_final).min())
            prob_err = float(np.abs(got - ref_final).max())
            if spec.multi_label:
                agree = float(np.mean(np.all((got >= 0.5) == (ref_final >= 0.5), axis=1)))
            else:
                agree = float(np.mean(got.argmax(-1) == ref_final.argmax(-1)))
        else:  # token-classification: compare each text's real tokens
            cos, prob_err, hits, total = 1.0, 0.0, 0, 0
            for r, res in enumerate(results):
                ref = ref_final[r][mask[r] == 1]
                cos = min(cos, float(_cosine_rows(res["probabilities"], ref).min()))
                prob_err = max(prob_err, float(np.abs(res["probabilities"] - ref).max()))
                hits += int((res["label"] == ref.argmax(-1)).sum())
                total += ref.shape[0]
            agree = hits / max(total, 1)
        ok = tokens_match and raw_ok and cos >= min_cosine
        report.cases.append(TextCaseResult(name, len(texts), int(mask.sum(1).max()), max_abs, cos, prob_err, agree,
                                           tokens_match, ok))
        report.passed = report.passed and ok
    return report


def failure_message(report: TextVerificationReport, where: str | Path) -> str:
    bad = [c for c in report.cases if not c.passed]
    worst = bad[0]
    why = []
    if not worst.tokens_match:
        why.append("the tokenizers-only token ids differ from transformers'")
    if worst.min_cosine < report.min_cosine_required:
        why.append(f"cosine {worst.min_cosine:.6f} < {report.min_cosine_required}")
    why.append(f"max_abs_error={report.max_abs_error:.3e} (atol={report.atol}, rtol={report.rtol})")
    return (f"exported text model disagrees with PyTorch on {len(bad)} case(s), first {worst.name}: "
            f"{'; '.join(why)}; {where} was not written")
