#!/usr/bin/env bash
# Refresh latency on the GPU machine (docs/benchmarks.md): SciFact with the real
# MiniLM, then a synthetic 1M-passage corpus (128 tokens) with 100k training
# queries and a MiniLM-shaped model. Called by gpu_suite.sh (PARTS=refresh);
# needs scripts/device_env.sh sourced, or ance installed and MODEL/DATA set.
#   bash benchmarks/refresh_suite.sh OUT_DIR
set -uo pipefail
OUT=${1:-runs/refresh}; mkdir -p "$OUT"
MODEL=${ANCE_DEVICE_MODEL:-${MODEL:-all-MiniLM-L6-v2}}
DATA=${DATA:-../shared/data/scifact}
BACKEND=${BACKEND:-torch}
timeout 200 python benchmarks/bench_refresh.py --data "$DATA" --model "$MODEL" --device cuda --backend "$BACKEND" \
    --passage-max-length 256 --batch-size 512 --repeat 3 --out "$OUT/bench_refresh_scifact.txt" 2>&1 | tail -25
timeout 420 python benchmarks/bench_refresh.py --synthetic-docs 1000000 --doc-tokens 128 \
    --synthetic-queries 100000 --model-config minilm --tokenizer "$MODEL" --device cuda --backend "$BACKEND" \
    --batch-size 1024 --chunk-queries 1024 --timeout 300 --out "$OUT/bench_refresh_1m.txt" 2>&1 | tail -25
