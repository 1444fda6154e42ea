#!/usr/bin/env bash
# Issue 26, the next GPU session's first job (prepared 2026-12-04, not yet run): what the last session
# changed or could not measure, in one detached job (about 9 minutes on one H200):
#  1. the MS MARCO-shaped refresh again, the worker now searching two 2,048-query chunks per call
#     (search_spans): against benchmarks/results/msmarco-shape-minilm-1gpu.json (133.5 s, k-NN 22.0 s);
#  2. where an encoder forward's time goes, MiniLM and BERT-base shapes (profile_encode.py);
#  3. a BERT-base-shaped refresh at 1M passages x 128 tokens, 100k queries (the 8.8M one takes ~9 min a refresh).
# On the GPU machine, after `. scripts/device_env.sh` (carry .device-model, .whl, .devdata):
#   bash scripts/detached.sh start /tmp/n26 env PYTHONPATH=$PYTHONPATH PATH=$PATH OUT_DIR=/tmp/n26/out bash benchmarks/issue26_next.sh
#   bash scripts/detached.sh follow /tmp/n26 540
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-runs/issue26}; mkdir -p "$OUT_DIR"
TOK=${ANCE_DEVICE_MODEL:?needs scripts/device_env.sh (the MiniLM pack) or ANCE_DEVICE_MODEL}
timeout 560 python benchmarks/bench_refresh.py --msmarco-shape --model-config minilm --tokenizer "$TOK" --device cuda \
    --backend torch --batch-size 1024 --chunk-queries 2048 --workers 1 --repeat 1 --work-dir /tmp/mmw \
    --start-timeout 600 --timeout 500 --out "$OUT_DIR/msmarco-shape-minilm-1gpu-spans.json" 2>&1 | tail -30
for shape in minilm bert-base; do
  python benchmarks/profile_encode.py --tokenizer "$TOK" --shape $shape --batch 1024 --length 128 \
      --out "$OUT_DIR/profile-encode-$shape-h200.json" 2>&1 | tail -22
done
timeout 400 python benchmarks/bench_refresh.py --synthetic-docs 1000000 --doc-tokens 128 --synthetic-queries 100000 \
    --model-config bert-base --tokenizer "$TOK" --device cuda --backend torch --batch-size 1024 --chunk-queries 2048 \
    --workers 1 --repeat 1 --work-dir /tmp/bbw --out "$OUT_DIR/refresh-1m-bert-base-1gpu.json" 2>&1 | tail -30
