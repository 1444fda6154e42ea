#!/usr/bin/env bash
# Co-location: the trainer's step rate alone vs with an inferencer refreshing on the same GPU
# (docs/benchmarks.md, "Inferencer pool scaling"). SciFact, configs/scifact-minilm-gpu.yaml, 100 steps:
# static negatives (no inferencer) vs `ance launch --trainer-gpus 0 --inferencer-gpus 0` (async, a
# refresh every 10 steps), then async with smaller inferencer batches (INF_BATCH, default 64).
#   bash benchmarks/colocate.sh OUT_DIR      (needs device_env.sh sourced, or ance installed; MODEL, DATA)
set -uo pipefail
OUT=${1:-runs/colocate}; mkdir -p "$OUT"
MODEL=${ANCE_DEVICE_MODEL:-${MODEL:-all-MiniLM-L6-v2}}
DATA=${DATA:-../shared/data/scifact}
CFG=configs/scifact-minilm-gpu.yaml
common="model.name_or_path=$MODEL data.path=$DATA inferencer.backend=torch telemetry.tensorboard=false"
MODEL=$MODEL DATA=$DATA BACKEND=torch bash benchmarks/mine_static.sh 0 30 "$OUT/static.tsv" 2>&1 | tail -2
timeout 150 ance train $CFG $common run_dir=$OUT/static negatives.source=static \
    negatives.static_file=$OUT/static.tsv 2>&1 | tail -2
timeout 150 ance launch $CFG $common run_dir=$OUT/async --trainer-gpus 0 --inferencer-gpus 0 --no-progress 2>&1 | tail -2
timeout 150 ance launch $CFG $common run_dir=$OUT/async-b${INF_BATCH:-64} inferencer.batch_size=${INF_BATCH:-64} \
    --trainer-gpus 0 --inferencer-gpus 0 --no-progress 2>&1 | tail -2
python benchmarks/colocate_summary.py "$OUT/static" "$OUT/async" "$OUT/async-b${INF_BATCH:-64}" | tee "$OUT/colocate.md"
