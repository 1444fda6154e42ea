#!/usr/bin/env bash
# Co-location: the trainer's step rate alone vs with an inferencer refreshing on the same GPU
# (docs/benchmarks.md, "Inferencer pool scaling"). SciFact, configs/scifact-minilm-gpu.yaml, STEPS steps
# (default 200), each run alone on the GPU, one after the other:
#   static    the trainer alone (static negatives, no inferencer)
#   async     `ance launch --trainer-gpus 0 --inferencer-gpus 0`, a refresh every 10 steps
#   async-ck25  the same with a refresh every 25 steps (max_gap 50)
#   mps-*     the same three under CUDA MPS (`ance launch --mps`: one MPS control daemon for the run,
#             so the two processes' kernels run side by side instead of time-sliced)
#   bash benchmarks/colocate.sh OUT_DIR      (needs device_env.sh sourced, or ance installed; MODEL, DATA)
set -uo pipefail
OUT=${1:-runs/colocate}; mkdir -p "$OUT"
MODEL=${ANCE_DEVICE_MODEL:-${MODEL:-all-MiniLM-L6-v2}}
DATA=${DATA:-../shared/data/scifact}
CFG=configs/scifact-minilm-gpu.yaml
common="model.name_or_path=$MODEL data.path=$DATA inferencer.backend=torch telemetry.tensorboard=false train.max_steps=${STEPS:-200}"
MODEL=$MODEL DATA=$DATA BACKEND=torch bash studies/mine_static.sh 0 30 "$OUT/static.tsv" 2>&1 | tail -2
runs=()
for mode in ${MODES:-plain mps}; do
  p=""; flag=""
  [ "$mode" = mps ] && { p="mps-"; flag="--mps on"; }
  timeout 150 ance launch $CFG $common run_dir=$OUT/${p}static negatives.source=static \
      negatives.static_file=$OUT/static.tsv --trainer-gpus 0 $flag --no-progress 2>&1 | tail -2
  timeout 150 ance launch $CFG $common run_dir=$OUT/${p}async --trainer-gpus 0 --inferencer-gpus 0 $flag \
      --no-progress 2>&1 | tail -2
  timeout 150 ance launch $CFG $common run_dir=$OUT/${p}async-ck25 train.checkpoint_every=25 negatives.max_gap=50 \
      --trainer-gpus 0 --inferencer-gpus 0 $flag --no-progress 2>&1 | tail -2
  runs+=("$OUT/${p}static" "$OUT/${p}async" "$OUT/${p}async-ck25")
done
python benchmarks/colocate_summary.py "${runs[@]}" | tee "$OUT/colocate.md"
