#!/usr/bin/env bash
# Issue 10's measurements on one GPU machine, in one call (docs/benchmarks.md, "Inferencer pool scaling"):
# host batch building and GPU encoding before/after, the broker merge for 1-8 shards, the 1M synthetic
# refresh with one worker, and the trainer's step rate with an inferencer on its GPU.
#   bash benchmarks/pool_suite.sh OUT_DIR   (device_env.sh sourced, or ance installed and MODEL/DATA set)
set -uo pipefail
OUT=${1:-runs/pool}; mkdir -p "$OUT"
MODEL=${ANCE_DEVICE_MODEL:-${MODEL:-all-MiniLM-L6-v2}}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 130 python benchmarks/bench_batches.py --docs 100000 --host-docs 40000 --tokenizer "$MODEL" \
    --device cuda 2>&1 | grep -v Warning | tee "$OUT/batches.txt"
timeout 90 python benchmarks/bench_merge.py --queries 100000 --depth 200 --shards 1 2 4 8 2>&1 | tee "$OUT/merge.txt"
timeout 200 python benchmarks/bench_refresh.py --synthetic-docs 1000000 --doc-tokens 128 \
    --synthetic-queries 100000 --model-config minilm --tokenizer "$MODEL" --device cuda --backend torch \
    --batch-size 1024 --chunk-queries 1024 --workers 1 --repeat 1 --timeout 150 \
    --out "$OUT/refresh_1m.txt" 2>&1 | tail -40
bash benchmarks/colocate.sh "$OUT/colocate" 2>&1 | tail -30
tar -C "$OUT" -czf "$OUT/colocate-metrics.tgz" colocate/static/metrics.jsonl colocate/async/metrics.jsonl \
    colocate/async-b64/metrics.jsonl 2>/dev/null || true
