#!/usr/bin/env bash
# edgemp end to end on the embedded default (ONNX Runtime CPU), with real molecules:
# data -> train -> export (verified) -> quantize -> serve -> answer (curl + tritonclient) -> stop -> bench.
set -euo pipefail
OUT="${EDGEMP_OUT:-out/quickstart}"
mkdir -p "$OUT"
say() { printf '\n== %s\n' "$*"; }

say "1. data: the Huuskonen solubility molecules, featurised with rdkit"
edgemp data solubility --split train -o "$OUT/train.jsonl"
edgemp data solubility --split test -o "$OUT/test.jsonl"

say "2. train: Gilmer MPNN (edge network + shared GRU, K=3)"
edgemp train --family mpnn --train "$OUT/train.jsonl" -o "$OUT/ckpt" --no-progress
edgemp evaluate "$OUT/ckpt" "$OUT/test.jsonl"

say "3. export: ONNX with the 3 rounds unrolled, verified against PyTorch"
edgemp export graph "$OUT/ckpt" -o "$OUT/solubility.onnx" --report "$OUT/export_report.json"
edgemp evaluate "$OUT/solubility.onnx" "$OUT/test.jsonl"

say "4. quantize: int8 dynamic, accuracy measured on the test molecules"
edgemp quantize "$OUT/solubility.onnx" -o "$OUT/solubility_int8.onnx" --precision int8-dynamic \
  --eval "$OUT/test.jsonl" --report "$OUT/quantize_report.json" --max-metric-delta 0.05

say "5. serve: KServe V2 on 127.0.0.1 (no torch in this process)"
PORT="${EDGEMP_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
edgemp serve "$OUT/solubility.onnx" --port "$PORT" --no-access-log > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/v2/health/ready" > /dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/serve.log"; exit 1; }
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/v2/models/solubility" && echo

say "6. answer: curl on the graph endpoint, then the stock tritonclient"
printf '{"graphs": [%s]}' "$(head -n 1 "$OUT/test.jsonl")" \
  | curl -sf -X POST -H 'Content-Type: application/json' --data-binary @- \
    "http://127.0.0.1:$PORT/v1/models/solubility/predict"
echo
python "$(dirname "$0")/query_tritonclient.py" --url "127.0.0.1:$PORT" --model solubility --graphs "$OUT/test.jsonl" --limit 3

say "7. stop: SIGTERM drains accepted requests, exit code 0"
trap - EXIT
kill -TERM $SERVER
wait $SERVER && echo "server stopped cleanly"

say "8. bench: edgemp (ORT CPU fp32 / int8) vs PyTorch eager, same molecules, interleaved"
edgemp bench graphs "$OUT/solubility.onnx" "$OUT/solubility_int8.onnx" --checkpoint "$OUT/ckpt" \
  --graphs "$OUT/test.jsonl" --batch 1,64 --iterations 200 --quiet --summary --json "$OUT/bench.json"
