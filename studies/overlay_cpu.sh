#!/usr/bin/env bash
# docs/results.md's `ance report` overlay on CPU: tiny-bert on a SQuAD subset, the same recipe with
# in-batch, static (mined by `ance mine` on the run's own subset) and async (ANCE) negatives, every
# run evaluated on the dev subset every 10 steps (eval.every), then one `ance report` over the three.
#   bash studies/overlay_cpu.sh [OUT=runs/overlay-cpu]
set -euo pipefail
OUT=${1:-runs/overlay-cpu}
DATA=${DATA:-../shared/data/squad}
COMMON=(configs/tiny-async-cpu.yaml "data.path=$DATA" data.max_docs=2000 data.max_queries=400 train.max_steps=80
        train.checkpoint_every=10 eval.every=10 train.lr=3e-4 negatives.max_gap=20 telemetry.tensorboard=false)
mkdir -p "$OUT"
ance train "${COMMON[@]}" "run_dir=$OUT/inbatch" negatives.source=inbatch
ance mine --model tiny-bert --data "$DATA" --split train --eval-split dev --max-docs 2000 --max-queries 400 \
  --max-length 64 --query-max-length 32 --depth 50 --rank-window 0 50 --n 10 --device cpu --quiet --out "$OUT/static.tsv"
ance train "${COMMON[@]}" "run_dir=$OUT/static" negatives.source=static "negatives.static_file=$OUT/static.tsv"
ance launch "${COMMON[@]}" "run_dir=$OUT/ance" --inferencers 1 --no-progress
ance report "$OUT/ance" "$OUT/static" "$OUT/inbatch" --label ANCE static in-batch --out "$OUT/report" \
  --format png pdf svg
