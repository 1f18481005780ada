"""Text-model benchmarking: workloads (texts from a file or synthetic token lengths) and engines.

Latency of a transformer encoder is set by the padded token count, so a workload is
described by token lengths, not characters: ``128`` (every text exactly 128 tokens, the
usual fixed-shape number), ``16-64`` (uniform), or ``realistic`` (a mix of search queries,
sentences and passages, see :data:`REALISTIC_MIX`). Synthetic texts are built from whole
words of the model's own vocabulary so each one tokenises to exactly its target length.

Engines are plain callables over a batch of texts, so ORT fp32, ORT int8 and PyTorch
eager run *interleaved* on the same batches in one process (a slow drift of the machine
then hits all of them alike), as benchmarks/bench_minilm.py and ``edgemp bench`` do.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgemp.bench.stats import summarize
from edgemp.errors import EdgempError, MissingExtraError

logger = logging.getLogger(__name__)

# (share, kind, parameter): queries ~ lognormal(median 10 tokens), sentences ~ lognormal(median 28),
# passages uniform 64-256. Mean ~40 tokens, p50 ~16, p90 ~130: the shape of a semantic-search
# workload (short queries against sentence/passage documents) rather than a single length.
REALISTIC_MIX: tuple[tuple[float, str, tuple[float, float]], ...] = (
    (0.50, "lognormal", (10.0, 0.5)),
    (0.35, "lognormal", (28.0, 0.4)),
    (0.15, "uniform", (64.0, 256.0)),
)


@dataclass(frozen=True)
class LengthMix:
    """Token lengths (special tokens included): ``"128"``, ``"16-64"`` or ``"realistic"``."""

    kind: str
    lo: int = 0
    hi: int = 0

    @property
    def label(self) -> str:
        if self.kind == "realistic":
            return "realistic"
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"

    @classmethod
    def parse(cls, text: str) -> "LengthMix":
        text = text.strip().lower()
        if text in ("realistic", "mix"):
            return cls("realistic")
        lo, sep, hi = text.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError as e:
            raise EdgempError(f"--synthetic-lengths takes N, A-B or 'realistic'; could not read {text!r}") from e
        if not 3 <= a <= b:
            raise EdgempError(f"--synthetic-lengths needs 3 <= A <= B (room for [CLS] word [SEP]), got {text!r}")
        return cls("uniform", a, b)

    def sample(self, n: int, max_length: int, seed: int = 0) -> np.ndarray:
        """``n`` token lengths, clipped to ``[3, max_length]``."""
        rng = np.random.default_rng(seed)
        if self.kind == "realistic":
            shares = np.array([s for s, _, _ in REALISTIC_MIX])
            which = rng.choice(len(REALISTIC_MIX), size=n, p=shares / shares.sum())
            out = np.empty(n)
            for k, (_, kind, (a, b)) in enumerate(REALISTIC_MIX):
                m = which == k
                out[m] = rng.lognormal(np.log(a), b, m.sum()) if kind == "lognormal" else rng.uniform(a, b, m.sum())
        else:
            out = rng.integers(self.lo, self.hi + 1, size=n)
        return np.clip(np.rint(out), 3, max_length).astype(int)


def _whole_words(tokenizer: Any) -> list[str]:
    vocab = tokenizer.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.isascii() and w.islower() and len(w) >= 3)
    if len(words) < 10:
        raise EdgempError("the tokenizer's vocabulary has too few whole words to build synthetic texts")
    return words


def synthetic_texts(tokenizer: Any, lengths: Sequence[int], seed: int = 0) -> list[str]:
    """Texts that tokenise to exactly ``lengths`` tokens (special tokens included).

    ``tokenizer`` is a ``tokenizers.Tokenizer`` with truncation off. Whole vocabulary
    words are one token each; the rare miss is corrected word by word.
    """
    rng = np.random.default_rng(seed + 99)
    words = _whole_words(tokenizer)
    specials = len(tokenizer.encode("").ids)
    out = []
    for target in lengths:
        k = max(int(target) - specials, 1)
        chosen = list(rng.choice(words, size=k))
        for _ in range(8):
            n = len(tokenizer.encode(" ".join(chosen)).ids)
            if n == target or (n > target and len(chosen) == 1):
                break
            if n > target:
                chosen.pop()
            else:
                chosen.append(str(rng.choice(words)))
        out.append(" ".join(chosen))
    return out


def workload_texts(model: Any, texts_file: str | Path | None, lengths: str | None, count: int,
                   seed: int = 0) -> list[str]:
    """``count`` texts for ``model`` (a :class:`~edgemp.runtime.text.TextModel`): from a file
    (cycled) or synthetic at the given lengths."""
    if (texts_file is None) == (lengths is None):
        raise EdgempError("give either --texts FILE or --synthetic-lengths N|A-B|realistic for a text model")
    if texts_file is not None:
        from edgemp.runtime.text import read_texts

        texts, _ = read_texts(texts_file)
        return [texts[i % len(texts)] for i in range(count)]
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(model.tokenizer.to_str())
    plain.no_truncation()
    plain.no_padding()
    mix = LengthMix.parse(lengths)
    return synthetic_texts(plain, mix.sample(count, model.spec.max_length, seed), seed)


# -- engines --------------------------------------------------------------------------------

@dataclass
class TextEngine:
    """A named callable over a batch of texts (outputs are discarded by the timing loop)."""

    name: str
    run: Callable[[list[str]], Any]
    close: Callable[[], None] = lambda: None
    info: dict = field(default_factory=dict)


def ort_engine(name: str, model_dir: str | Path, threads: int | None = None, providers: str = "cpu") -> TextEngine:
    """The edgemp runtime end to end: tokenizers + bucketing + ONNX Runtime + pooling."""
    from edgemp.runtime.text import load_text_model

    m = load_text_model(model_dir, providers=providers, threads=threads)
    return TextEngine(name, m.predict, m.close, {"precision": m.spec.precision, "providers": list(m.providers)})


def length_sorted(run_batch: Callable[[list[str]], Any], batch_size: int = 32) -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers' ``encode`` recipe around ``run_batch``: sort the texts by length
    (longest first), run them ``batch_size`` at a time (each batch padded to its longest),
    and put the outputs back in the caller's order."""

    def run(texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        outs = [np.asarray(run_batch([texts[i] for i in order[k: k + batch_size]]))
                for k in range(0, len(texts), batch_size)]
        out = np.concatenate(outs)
        return out[np.argsort(order, kind="stable")]

    return run


def torch_engine(name: str, hf_model_dir: str | Path, task: str = "feature-extraction", pooling: str = "mean",
                 normalize: bool = True, max_length: int = 256, threads: int | None = None,
                 batch_size: int = 32) -> TextEngine:
    """PyTorch eager baseline: transformers fast tokenizer + AutoModel + mean pooling (+ L2),
    batched as sentence-transformers batches (:func:`length_sorted`)."""
    try:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    except ImportError as e:
        raise MissingExtraError(e.name or "transformers", "transformers", "the PyTorch baseline") from e
    if threads:
        torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(hf_model_dir), local_files_only=True)
    auto = AutoModel if task == "feature-extraction" else AutoModelForSequenceClassification
    model = auto.from_pretrained(str(hf_model_dir), local_files_only=True).eval()

    @torch.inference_mode()
    def run_batch(texts: list[str]):
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model(**enc)[0]
        if task != "feature-extraction":
            return torch.softmax(out, -1).numpy()
        m = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        emb = (out * m).sum(1) / torch.clamp(m.sum(1), min=1e-9) if pooling == "mean" else out[:, 0]
        return (torch.nn.functional.normalize(emb, p=2, dim=1) if normalize else emb).numpy()

    return TextEngine(name, length_sorted(run_batch, batch_size),
                      info={"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "attn_implementation": getattr(model.config, "_attn_implementation", None)})


def sentence_transformers_engine(name: str, model_dir: str | Path, backend: str = "torch", onnx_file: str | None = None,
                                 compile_model: bool = False, threads: int | None = None,
                                 batch_size: int = 32) -> TextEngine:
    """``SentenceTransformer.encode`` as its users run it: PyTorch eager, ``torch.compile``
    (``dynamic=True``: text lengths vary), or ``backend="onnx"`` (optimum's
    ``ORTModelForFeatureExtraction`` on ``onnx_file``, e.g. ``onnx/model_qint8_avx512_vnni.onnx``)."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise MissingExtraError(e.name or "sentence-transformers", "dev", "the sentence-transformers peer") from e
    if threads:
        torch.set_num_threads(threads)
    kwargs: dict[str, Any] = {}
    if backend == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        kwargs = {"file_name": onnx_file or "onnx/model.onnx", "session_options": opts, "provider": "CPUExecutionProvider"}
    model = SentenceTransformer(str(model_dir), device="cpu", backend=backend, model_kwargs=kwargs,
                                local_files_only=True)
    if compile_model:
        if backend != "torch":
            raise EdgempError("torch.compile applies to the torch backend only")
        model[0].auto_model = torch.compile(model[0].auto_model, dynamic=True)

    def run(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)

    return TextEngine(name, run, info={"backend": backend, "file": onnx_file, "compile": compile_model})


# -- timing -------------------------------------------------------------------------------------

@dataclass
class TextCase:
    """One workload cell: a label and the batches every engine runs, in order."""

    label: str
    batches: list[list[str]]


def make_case(label: str, texts: Sequence[str], batch_size: int, iterations: int) -> TextCase:
    """``iterations`` batches of ``batch_size`` texts, cycling through ``texts``."""
    texts = list(texts)
    if not texts:
        raise EdgempError(f"case {label}: no texts")
    batches = [[texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)] for i in range(iterations)]
    return TextCase(label, batches)


def run_interleaved(engines: Sequence[TextEngine], cases: Sequence[TextCase], warmup: int = 5,
                    on_progress: Callable[[str], None] | None = None) -> dict[tuple[str, str], np.ndarray]:
    """Latencies (ns) per (case, engine): each batch runs on every engine before the next batch."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for case in cases:
        for e in engines:
            for b in case.batches[: max(warmup, 1)]:
                e.run(b)
        lat = {e.name: np.empty(len(case.batches), np.int64) for e in engines}
        for i, batch in enumerate(case.batches):
            order = engines if i % 2 == 0 else list(reversed(engines))  # alternate who runs first
            for e in order:
                t0 = time.perf_counter_ns()
                e.run(batch)
                lat[e.name][i] = time.perf_counter_ns() - t0
        for name, v in lat.items():
            out[(case.label, name)] = v
        if on_progress:
            on_progress(case.label)
    return out


def markdown_table(latencies: dict[tuple[str, str], np.ndarray], baseline: str | None = None,
                   batch_sizes: dict[str, int] | None = None, peers: Sequence[str] = ()) -> str:
    """Median / p99 (ms), texts/s and median ratio vs ``baseline`` per (case, engine); with
    ``peers``, also the ratio vs the fastest of them in that case (the best real peer)."""
    p50 = {k: summarize(v, (50.0,)).p(50) / 1e3 for k, v in latencies.items()}
    head = "| case | engine | p50 ms | p99 ms | texts/s | p50 speed-up vs " + (baseline or "-") + " |"
    rule = "|---|---|---:|---:|---:|---:|"
    if peers:
        head, rule = head + " vs best peer |", rule + "---:|"
    rows = [head, rule]
    for (case, engine), v in latencies.items():
        p99 = summarize(v, (99.0,)).p(99) / 1e3
        ms = p50[(case, engine)]
        bs = (batch_sizes or {}).get(case, 1)
        ratio = f"{p50[(case, baseline)] / ms:.2f}x" if baseline and (case, baseline) in p50 else ""
        row = f"| {case} | {engine} | {ms:.2f} | {p99:.2f} | {bs / (ms / 1e3):.0f} | {ratio} |"
        if peers:
            best = min((p50[(case, e)], e) for e in peers if (case, e) in p50)
            row += f" {best[0] / ms:.2f}x ({best[1]}) |" if engine not in peers else f" {'best' if engine == best[1] else ''} |"
        rows.append(row)
    return "\n".join(rows)


# -- the `edgemp bench` entry for text models ---------------------------------------------------

@dataclass(frozen=True)
class TextBenchConfig:
    """In-process text benchmark: each model dir on ORT (+ PyTorch eager from ``hf_checkpoint``).

    Args:
        models: exported text model directories.
        texts_file / lengths: the workload (exactly one): a text file, or ``N``/``A-B``/``realistic``.
        batches: texts per inference, one result row per (batch, engine).
        threads: intra-op threads for ORT and torch alike.
        hf_checkpoint: the Hugging Face directory for a ``torch-eager`` baseline (optional).
    """

    models: tuple[Path, ...]
    texts_file: Path | None = None
    lengths: str | None = None
    batches: tuple[int, ...] = (1,)
    threads: int = 1
    warmup: int = 5
    iterations: int = 100
    hf_checkpoint: Path | None = None
    seed: int = 0


@dataclass
class TextBenchReport:
    config: TextBenchConfig
    latencies: dict[tuple[str, str], np.ndarray]
    batch_sizes: dict[str, int]
    environment: dict
    baseline: str | None

    def markdown(self) -> str:
        return markdown_table(self.latencies, self.baseline, self.batch_sizes)

    def to_dict(self) -> dict:
        rows = [{"case": c, "engine": e, "batch": self.batch_sizes[c], **summarize(v).to_dict()}
                for (c, e), v in self.latencies.items()]
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.config.__dict__.items()}
        cfg["models"] = [str(m) for m in self.config.models]
        return {"config": cfg, "environment": self.environment, "results": rows}


def run_text_bench(cfg: TextBenchConfig, argv: list[str] | None = None) -> TextBenchReport:
    """Build the workload once, run every engine interleaved on it, return the latencies."""
    from edgemp.bench.env import capture_environment
    from edgemp.runtime.text import load_text_model

    if not cfg.models:
        raise EdgempError("give at least one text model directory")
    engines = [ort_engine(f"ort:{m.name}" if len(cfg.models) > 1 else "ort-cpu", m, cfg.threads) for m in cfg.models]
    first = load_text_model(cfg.models[0], providers="cpu", threads=1)
    baseline = None
    if cfg.hf_checkpoint is not None:
        s = first.spec
        engines.insert(0, torch_engine("torch-eager", cfg.hf_checkpoint, s.task, s.pooling if s.pooling != "none"
                                       else "mean", s.normalize, s.max_length, cfg.threads))
        baseline = "torch-eager"
    count = max(cfg.batches) * max(cfg.iterations, 1)
    texts = workload_texts(first, cfg.texts_file, cfg.lengths, min(count, 4096), cfg.seed)
    label = cfg.lengths if cfg.lengths else Path(cfg.texts_file).name  # type: ignore[arg-type]
    cases = [make_case(f"{label} b{b}", texts, b, cfg.iterations) for b in cfg.batches]
    lat = run_interleaved(engines, cases, cfg.warmup)
    env = capture_environment(argv)
    env["threads"] = cfg.threads
    return TextBenchReport(cfg, lat, {c.label: len(c.batches[0]) for c in cases}, env, baseline)
