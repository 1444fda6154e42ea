#!/usr/bin/env bash
# The multi-GPU path on a 2-GPU machine (docs/deploy.md): `ance launch` with the trainer
# under torchrun over both GPUs (DDP over NCCL, cross-GPU negatives) and one inferencer on
# each GPU, a short async run on SciFact with MiniLM; then the run's summary.
#   . scripts/device_env.sh && bash benchmarks/multigpu_check.sh OUT_DIR [STEPS]
set -uo pipefail
OUT=${1:-runs/multigpu}; STEPS=${2:-30}; mkdir -p "$OUT"
M=${ANCE_DEVICE_MODEL:-all-MiniLM-L6-v2}
nvidia-smi --query-gpu=index,name --format=csv,noheader
run=/tmp/mg/run; rm -rf /tmp/mg; mkdir -p /tmp/mg
timeout 240 ance launch configs/scifact-minilm-gpu.yaml model.name_or_path="$M" data.path="$DATA" \
    inferencer.backend=${BACKEND:-torch} train.max_steps="$STEPS" train.checkpoint_every=10 run_dir="$run" \
    --trainer-gpus 0,1 --inferencer-gpus 0,1 --no-progress 2>&1 | grep -v "INFO\|it/s" | tail -15
echo "launch rc=$?"
grep -h "world\|rank\|nccl\|NCCL" "$run"/logs/trainer*.log 2>/dev/null | head -5
python studies/summarize_runs.py "$(dirname "$run")" > "$OUT/summary.json" 2>&1; head -c 1500 "$OUT/summary.json"
(cd "$run" && tar -czf "$OUT/multigpu-run.tgz" --exclude=checkpoints --exclude=cache .)
